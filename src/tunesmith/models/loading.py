"""Load a model for use: a base (embedded name, hub id, folder, .gguf) plus an optional LoRA adapter.

Used by ``tunesmith chat``, ``generate``, ``merge`` and ``export``::

    tunesmith generate prompts.jsonl --model runs/sft          # a run folder: its adapter/ on its base
    tunesmith chat --model smollm2-135m-instruct --adapter runs/sft/adapter

The adapter folder is the one ``tunesmith sft`` writes (``<run>/adapter``); a run folder is accepted too.
Its base comes from ``--model``, else the run's ``config.yaml`` (``model.name``), else
``adapter_config.json``'s ``base_model_name_or_path``.  The tokenizer (and chat template) is the
adapter's when it saved one.  An adapter trained with added tokens carries resized embeddings; the
stock base is resized to that vocabulary size before the adapter loads (no manual step).
Tied embeddings: when the adapter trains ``embed_tokens`` or ``lm_head`` (LoRA on them,
``modules_to_save`` or a saved full matrix) on a model whose output layer shares the input
embedding matrix, the two are untied first, so each keeps exactly the weights the adapter forward uses.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tunesmith.errors import ModelError, Problem

EMBEDDING_NAMES = ("embed_tokens", "lm_head")
"""Module names of the input embedding and output layer in Llama-family checkpoints (PEFT's ``EMBEDDING_LAYER_NAMES``)."""


@dataclass
class Loaded:
    """A model ready for generation.

    Attributes:
        model: ``PreTrainedModel`` or ``peft.PeftModel``, fp32 by default, in eval mode.
        tokenizer: the tokenizer (the adapter's when it saved one), ``pad_token_id`` set.
        generation_config: ``transformers.GenerationConfig`` whose ``eos_token_id`` includes the template's end-of-turn id.
        base_name: what the base resolved from (embedded name, path, hub id).
        base_location: the folder or hub id ``from_pretrained`` loaded.
        adapter_dir: the adapter folder, or None.
        notes: what was done on the way (resize, untie, end-of-turn id added), one sentence each.
        untied: True when ``lm_head`` was given its own copy of the tied input embedding (see :func:`untie_output_embeddings`).
    """

    model: object
    tokenizer: object
    generation_config: object
    base_name: str
    base_location: str
    adapter_dir: Path | None = None
    notes: list[str] = field(default_factory=list)
    untied: bool = False


def find_adapter(path: str | Path) -> Path | None:
    """Return the adapter folder for ``path``: itself when it holds ``adapter_config.json``, ``path/adapter`` for a run folder, else None."""
    p = Path(path).expanduser()
    if (p / "adapter_config.json").is_file():
        return p
    if (p / "adapter" / "adapter_config.json").is_file():
        return p / "adapter"
    return None


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
        raise ModelError("The adapter does not name its base model", [Problem(
            str(adapter_dir / "adapter_config.json"), "base_model_name_or_path is empty", "pass the base with --model")])
    return str(name)


def adapter_tensor_shapes(adapter_dir: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors in ``adapter_model.safetensors`` (read from the header, no weights loaded)."""
    from safetensors import safe_open

    path = adapter_dir / "adapter_model.safetensors"
    if not path.is_file():
        raise ModelError("Adapter weights missing", [Problem(str(adapter_dir), "no adapter_model.safetensors",
                                                             "pass a folder written by `tunesmith sft` (or PeftModel.save_pretrained)")])
    with safe_open(str(path), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def adapter_vocab_size(shapes: dict[str, tuple[int, ...]]) -> int | None:
    """Rows of a full embedding/output matrix saved with the adapter (added tokens), else None."""
    rows = [s[0] for k, s in shapes.items() if k.endswith(("embed_tokens.weight", "lm_head.weight")) and "lora_" not in k and len(s) == 2]
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


def _tokenizer_dir(adapter_dir: Path | None) -> Path | None:
    if adapter_dir is not None and any((adapter_dir / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json")):
        return adapter_dir
    return None


def load_for_use(model: str | None = None, adapter: str | None = None, *, dtype: torch.dtype = torch.float32,
                 chat_template: str | None = None, untie: bool = True) -> Loaded:
    """Load base (+ adapter) with tokenizer and a generation config that stops at the end-of-turn token.

    Args:
        model: embedded name, hub id, checkpoint folder, ``.gguf`` file, or a ``tunesmith sft`` run/adapter folder
            (then the adapter is taken from it); None with an adapter: the adapter's base.
        adapter: a PEFT adapter folder or a run folder holding ``adapter/``.
        dtype: weights dtype (fp32 for exact merge checks).
        chat_template: ``model.chat_template`` option (built-in name or .jinja path) overriding the saved template.
        untie: untie tied embeddings when the adapter trains them (see module doc); False refuses such an adapter.

    Returns:
        :class:`Loaded`.

    Raises:
        ModelError: nothing to load, a missing adapter, an adapter that trains tied embeddings with ``untie=False``,
            or an adapter that does not fit its base.
    """
    from tunesmith.models.sources import load_causal_lm, load_tokenizer, resolve_model
    from tunesmith.render.checks import fix_generation_config
    from tunesmith.render.templates import apply_chat_template_option

    adapter_dir = _resolve_adapter(model, adapter)
    if adapter_dir is not None and (model is None or find_adapter(model) == adapter_dir):
        model = adapter_base_name(adapter_dir)
    if model is None:
        raise ModelError("No model given", [Problem("--model", "neither --model nor --adapter was given", "pass --model NAME_OR_PATH")])
    source = resolve_model(model)
    notes: list[str] = []
    tok_dir = _tokenizer_dir(adapter_dir)
    if tok_dir is not None:
        from tunesmith.models.sources import ModelSource

        tokenizer = load_tokenizer(ModelSource(str(tok_dir), str(tok_dir), "local"))
    else:
        tokenizer = load_tokenizer(source)
    apply_chat_template_option(tokenizer, chat_template, require=False)
    base = load_causal_lm(source, dtype=dtype)
    untied = False
    if adapter_dir is not None:
        untied = _prepare_base(base, adapter_dir, notes, untie)
        base = _attach_adapter(base, adapter_dir)
    gen = _generation_config(base, adapter_dir)
    if tokenizer.chat_template:
        added = fix_generation_config(gen, tokenizer)
        if added is not None:
            notes.append(f"added end-of-turn id {added} ({tokenizer.convert_ids_to_tokens(added)!r}) to generation_config.eos_token_id")
    base.generation_config = gen
    return Loaded(base.eval(), tokenizer, gen, source.name, source.location, adapter_dir, notes, untied)


def _resolve_adapter(model: str | None, adapter: str | None) -> Path | None:
    if adapter is not None:
        found = find_adapter(adapter)
        if found is None:
            raise ModelError("Adapter not found", [Problem(f"--adapter {adapter}", "no adapter_config.json there or in its adapter/ folder",
                                                           "pass the adapter/ folder of a `tunesmith sft` run, or the run folder")])
        return found
    return find_adapter(model) if model is not None and Path(model).expanduser().is_dir() else None


def _prepare_base(base, adapter_dir: Path, notes: list[str], untie: bool) -> bool:
    """Resize the base to the adapter's vocabulary and untie embeddings the adapter trains. Returns True when untied."""
    shapes = adapter_tensor_shapes(adapter_dir)
    vocab = adapter_vocab_size(shapes)
    rows = base.get_input_embeddings().weight.shape[0]
    if vocab is not None and vocab != rows:
        base.resize_token_embeddings(vocab, mean_resizing=False)
        notes.append(f"resized the base embeddings from {rows} to {vocab} rows (the adapter was trained with added tokens)")
    trained = adapter_trains_embeddings(shapes)
    tied = base.get_output_embeddings() is not None and base.get_output_embeddings().weight is base.get_input_embeddings().weight
    if not (trained and tied):
        return False
    if not untie:
        raise ModelError("The adapter trains tied embeddings", [Problem(
            str(adapter_dir), f"the base ties lm_head to embed_tokens and the adapter changes them ({trained[0]}, ...)",
            "allow untying (the merged checkpoint then stores lm_head and embed_tokens separately), or train without embed_tokens/lm_head")])
    untie_output_embeddings(base)
    notes.append("untied lm_head from embed_tokens (the adapter trains " + ", ".join(sorted({n for k in trained for n in EMBEDDING_NAMES if n in k})) + ")")
    return True


def _attach_adapter(base, adapter_dir: Path):
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
    except Exception as exc:  # noqa: BLE001 - a mismatched adapter is a user input problem
        raise ModelError("The adapter does not fit the base model", [Problem(
            str(adapter_dir), f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
            "pass the base it was trained on with --model (see adapter_config.json base_model_name_or_path)")]) from None


def _generation_config(model, adapter_dir: Path | None):
    """The adapter's saved generation_config.json (it carries the end-of-turn id), else the base's."""
    import copy

    from transformers import GenerationConfig

    if adapter_dir is not None and (adapter_dir / "generation_config.json").is_file():
        return GenerationConfig.from_pretrained(str(adapter_dir))
    gen = getattr(model, "generation_config", None)
    return copy.deepcopy(gen) if gen is not None else GenerationConfig.from_model_config(model.config)


def stop_ids(loaded: Loaded) -> set[int]:
    """Token ids generation stops at: :func:`tunesmith.render.templates.end_of_turn_ids` of the tokenizer and generation config."""
    from tunesmith.render.templates import end_of_turn_ids

    return end_of_turn_ids(loaded.tokenizer, loaded.generation_config)
