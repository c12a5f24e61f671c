"""One translation from tunesmith's ``lora`` section into ``peft.LoraConfig`` (Hu et al. 2021, LoRA)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tunesmith.errors import ModelError, Problem


def to_peft_config(lora_cfg, task_type: str = "CAUSAL_LM"):
    """Build a ``peft.LoraConfig`` from a :class:`tunesmith.config.sft.LoraSection`.

    Args:
        lora_cfg: the ``lora`` section (r, lora_alpha, lora_dropout, target_modules, ...).
        task_type: ``CAUSAL_LM`` for SFT/DPO, ``SEQ_CLS`` for classification.

    Returns:
        ``peft.LoraConfig``; ``target_modules="all-linear"`` adapts every linear layer except the output head
        (PEFT's documented behaviour).
    """
    from peft import LoraConfig

    return LoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.lora_alpha,
        lora_dropout=lora_cfg.lora_dropout,
        target_modules=lora_cfg.target_modules,
        bias=lora_cfg.bias,
        modules_to_save=lora_cfg.modules_to_save,
        use_rslora=lora_cfg.use_rslora,
        task_type=task_type,
    )


def apply_lora(model, lora_cfg, task_type: str = "CAUSAL_LM"):
    """Wrap ``model`` in a ``peft.PeftModel`` with the configured adapter (named ``lora_cfg.adapter_name``).

    Returns:
        The PEFT model; only adapter (and ``modules_to_save``) parameters require grad.
    """
    from peft import get_peft_model

    return get_peft_model(model, to_peft_config(lora_cfg, task_type), adapter_name=lora_cfg.adapter_name)


def count_parameters(model) -> tuple[int, int]:
    """Return (trainable, total) parameter counts; tied weights are counted once."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


EMBEDDING_NAMES = ("embed_tokens", "lm_head")
"""Module names of the input embedding and output layer in Llama-family checkpoints (PEFT's
``EMBEDDING_LAYER_NAMES``)."""


def find_adapter(path: str | Path) -> Path | None:
    """The one adapter finder: the PEFT adapter folder that ``path`` names, or None.

    Rules, in order: ``path`` itself when it holds ``adapter_config.json``; ``path/adapter`` (a run folder of
    ``tunesmith sft``/``classify``/``dpo``); then a named adapter, which PEFT saves one level down
    (``<folder>/<adapter_name>/adapter_config.json``): the single such sub-folder of ``path`` or of ``path/adapter``.

    Returns:
        The folder holding ``adapter_config.json``, or None (no adapter, or several named ones to choose from).
    """
    p = Path(path).expanduser()
    for folder in (p, p / "adapter"):
        if (folder / "adapter_config.json").is_file():
            return folder
    for folder in (p / "adapter", p):
        named = sorted(c.parent for c in folder.glob("*/adapter_config.json")) if folder.is_dir() else []
        if len(named) == 1:
            return named[0]
    return None


def require_adapter(path: str | Path, where: str) -> Path:
    """:func:`find_adapter`, or a clear error naming the option it came from.

    Args:
        path: the folder the user gave.
        where: the option, for the message (``--adapter runs/x``, ``model.adapter=runs/x``).

    Raises:
        ModelError: when no adapter folder is found there.
    """
    found = find_adapter(path)
    if found is None:
        raise ModelError(
            "Adapter not found",
            [
                Problem(
                    where,
                    "no adapter_config.json there, in its adapter/ folder, or in a single named sub-folder",
                    "pass a run folder of `tunesmith sft`/`dpo` (or its adapter/ folder), or a PEFT adapter folder",
                )
            ],
        )
    return found


def adapter_base_name(adapter_dir: Path) -> str:
    """The base model of an adapter: the run's ``config.yaml`` ``model.name`` when the adapter sits in a run folder,
    else ``adapter_config.json``'s ``base_model_name_or_path``.

    Raises:
        ModelError: when neither names a base (pass ``--model``).
    """
    import yaml

    run_cfg = adapter_dir.parent / "config.yaml"
    if run_cfg.is_file():
        name = ((yaml.safe_load(run_cfg.read_text()) or {}).get("model") or {}).get("name")
        if name:
            return str(name)
    name = json.loads((adapter_dir / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not name:
        raise ModelError(
            "The adapter does not name its base model",
            [
                Problem(
                    str(adapter_dir / "adapter_config.json"),
                    "base_model_name_or_path is empty",
                    "pass the base with --model",
                )
            ],
        )
    return str(name)


def adapter_tensor_shapes(adapter_dir: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors in ``adapter_model.safetensors`` (read from the header, no weights loaded)."""
    from safetensors import safe_open

    path = adapter_dir / "adapter_model.safetensors"
    if not path.is_file():
        raise ModelError(
            "Adapter weights missing",
            [
                Problem(
                    str(adapter_dir),
                    "no adapter_model.safetensors",
                    "pass a folder written by `tunesmith sft` (or PeftModel.save_pretrained)",
                )
            ],
        )
    with safe_open(str(path), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def adapter_vocab_size(shapes: dict[str, tuple[int, ...]]) -> int | None:
    """Rows of a full embedding/output matrix saved with the adapter (added tokens), else None."""
    rows = [
        s[0]
        for k, s in shapes.items()
        if k.endswith(("embed_tokens.weight", "lm_head.weight")) and "lora_" not in k and len(s) == 2
    ]
    return max(rows) if rows else None


def adapter_trains_embeddings(shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """Adapter tensors that change ``embed_tokens`` or ``lm_head`` beyond a plain copy of the input embedding:
    LoRA on either, ``modules_to_save`` copies, or a saved full ``lm_head`` matrix."""
    out = []
    for k in shapes:
        if not any(n in k for n in EMBEDDING_NAMES):
            continue
        if "lora_" in k or "modules_to_save" in k or k.endswith("lm_head.weight"):
            out.append(k)
    return out


def untie_output_embeddings(model) -> None:
    """Give the output layer its own copy of the (tied) input embedding matrix and set ``tie_word_embeddings=False``.

    Values are unchanged; afterwards training or merging one matrix leaves the other alone, and
    ``save_pretrained`` writes both (``lm_head.weight`` and ``model.embed_tokens.weight``).
    """
    head = model.get_output_embeddings()
    head.weight = torch.nn.Parameter(model.get_input_embeddings().weight.detach().clone())
    model.config.tie_word_embeddings = False
    text_cfg = getattr(model.config, "get_text_config", lambda: None)()
    if text_cfg is not None:
        text_cfg.tie_word_embeddings = False


def prepare_base_for_adapter(base, adapter_dir: Path, notes: list[str], untie: bool) -> bool:
    """Resize the base to the adapter's vocabulary (added tokens) and untie the embeddings the adapter trains (see
    :func:`untie_output_embeddings`); each step done is appended to ``notes`` as a sentence.

    Returns:
        True when ``lm_head`` was untied.

    Raises:
        ModelError: the adapter trains tied embeddings and ``untie`` is False.
    """
    shapes = adapter_tensor_shapes(adapter_dir)
    vocab = adapter_vocab_size(shapes)
    rows = base.get_input_embeddings().weight.shape[0]
    if vocab is not None and vocab != rows:
        base.resize_token_embeddings(vocab, mean_resizing=False)
        notes.append(
            f"resized the base embeddings from {rows} to {vocab} rows (the adapter was trained with added tokens)"
        )
    trained = adapter_trains_embeddings(shapes)
    tied = (
        base.get_output_embeddings() is not None
        and base.get_output_embeddings().weight is base.get_input_embeddings().weight
    )
    if not (trained and tied):
        return False
    if not untie:
        raise ModelError(
            "The adapter trains tied embeddings",
            [
                Problem(
                    str(adapter_dir),
                    f"the base ties lm_head to embed_tokens and the adapter changes them ({trained[0]}, ...)",
                    "allow untying (the merged checkpoint then stores lm_head and embed_tokens separately), "
                    "or train without embed_tokens/lm_head",
                )
            ],
        )
    untie_output_embeddings(base)
    notes.append(
        "untied lm_head from embed_tokens (the adapter trains "
        + ", ".join(sorted({n for k in trained for n in EMBEDDING_NAMES if n in k}))
        + ")"
    )
    return True
