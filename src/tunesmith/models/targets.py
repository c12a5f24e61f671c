"""LoRA target modules checked against a checkpoint before it loads: the weight names come from the safetensors
headers (a few kilobytes read, no torch import), so ``lora.target_modules=[nonexistent_proj]`` fails in a second
with the module names the model does have, instead of after the model loaded.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from tunesmith.errors import ConfigError, Problem
from tunesmith.runtime.paths import tunesmith_home

HEADS = {"causal": ("lm_head",), "classify": ("score", "classifier")}
"""Output modules a task's model has even when the checkpoint stores no weight for them (a tied ``lm_head``, a new
classification head)."""


def checkpoint_folder(name: str) -> Path | None:
    """The local checkpoint folder ``model.name`` loads from, when it is already on disk (a folder, or an embedded
    model converted before); None otherwise (a hub id, a GGUF file not converted yet)."""
    candidates = [Path(name).expanduser()]
    if "/" not in name and name:
        candidates.append(tunesmith_home() / "models" / name)
    for folder in candidates:
        try:
            if (folder / "config.json").is_file():
                return folder
        except (OSError, ValueError):
            pass
    return None


def weight_module_names(folder: Path) -> set[str] | None:
    """Names of the modules that hold weights in the checkpoint at ``folder`` (``model.layers.0.self_attn.q_proj``),
    read from ``model.safetensors.index.json`` or the safetensors headers; None when there are none to read."""
    keys: list[str] = []
    try:
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            keys = list(json.loads(index.read_text())["weight_map"])
        for file in [] if keys else sorted(folder.glob("*.safetensors")):
            with file.open("rb") as f:
                (size,) = struct.unpack("<Q", f.read(8))
                if size > 100_000_000:
                    return None
                keys += [k for k in json.loads(f.read(size)) if k != "__metadata__"]
    except (OSError, ValueError, KeyError, struct.error):
        return None
    return {k.rsplit(".", 1)[0] for k in keys if "." in k} or None


def check_lora_targets(cfg, kind: str) -> None:
    """Refuse ``lora.target_modules`` entries the model does not have (or that cannot be trained), before it loads.

    A list entry matches a module whose name is the entry or ends with ``.<entry>`` (PEFT's rule); a string other than
    ``all-linear`` is a regular expression and is left to PEFT. Nothing is checked when the checkpoint is not on disk
    yet, when LoRA is off, or when DPO continues an SFT adapter (its modules are the adapter's).

    Raises:
        ConfigError: naming each missing module and listing the ones the model has; ``lm_head`` for SFT and DPO
            (TRL computes log-probabilities from ``lm_head.weight`` directly, so an adapter there would never train).
    """
    targets = cfg.lora.target_modules
    if not cfg.lora.enabled or isinstance(targets, str) or getattr(cfg.model, "adapter", None):
        return
    where = f"lora.target_modules={targets}"
    problems = []
    if kind in ("sft", "dpo") and "lm_head" in targets:
        problems.append(
            Problem(
                where,
                "LoRA on lm_head is never trained: TRL computes log-probabilities from lm_head.weight directly",
                "remove lm_head (to train the output layer, use lora.modules_to_save=[lm_head])",
            )
        )
    folder = checkpoint_folder(cfg.model.name)
    names = weight_module_names(folder) if folder else None
    if names is not None:
        names |= set(HEADS["classify" if kind == "classify" else "causal"])
        leaves = sorted({n.rsplit(".", 1)[-1] for n in names if not n.rsplit(".", 1)[-1].isdigit()})
        missing = [t for t in targets if t != "lm_head" and not any(n == t or n.endswith(f".{t}") for n in names)]
        if missing:
            problems.append(
                Problem(
                    where,
                    f"the model {cfg.model.name} has no module named {', '.join(map(repr, missing))}",
                    f"use module names it has ({', '.join(leaves[:20])}), or all-linear",
                )
            )
    if problems:
        raise ConfigError("LoRA target modules do not fit the model", problems)
