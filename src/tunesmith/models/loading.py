"""Load a model for use: a base (embedded name, hub id, folder, .gguf) plus an optional LoRA adapter.

Used by ``tunesmith chat``, ``generate``, ``eval``, ``merge`` and ``export``::

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
The serving contract (``serving.json``, :mod:`tunesmith.models.serving`) saved with the adapter or model is read here
and only here: the system prompt, chat template, end-of-turn id and generation defaults it was trained with.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tunesmith.errors import ModelError, Problem
from tunesmith.models.quantization import keep_training_layout, quantized_load_kwargs
from tunesmith.models.sources import ModelSource, hub_error
from tunesmith.render.rows import MAX_SANE_LENGTH
from tunesmith.runtime.hardware import is_installed


def load_adapter(base, folder: str | Path, *, allow_pickle: bool = False, is_trainable: bool = False):
    """The one gate every LoRA adapter loads through: ``peft.PeftModel.from_pretrained`` from
    ``adapter_model.safetensors`` only, unless ``allow_pickle`` (PEFT would otherwise unpickle ``adapter_model.bin``).

    Returns:
        The ``PeftModel`` wrapping ``base``.

    Raises:
        ModelError: the folder has no safetensors adapter weights (naming the pickle files and the two ways out).
    """
    from peft import PeftModel

    folder = Path(folder)
    if not allow_pickle and not (folder / "adapter_model.safetensors").is_file():
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES) if folder.is_dir() else []
        raise ModelError(
            "Refusing to unpickle adapter weights" if pickles else "Adapter weights missing",
            [
                Problem(
                    str(folder),
                    f"the adapter weights are only in pickle files ({', '.join(pickles[:3])}); unpickling can run "
                    "arbitrary code"
                    if pickles
                    else "no adapter_model.safetensors",
                    "save the adapter with safetensors (PeftModel.save_pretrained does by default), or set "
                    "model.allow_pickle: true if you trust it",
                )
            ],
        )
    return PeftModel.from_pretrained(base, str(folder), is_trainable=is_trainable)


def attach_adapter(base, adapter_dir: Path):
    """:func:`load_adapter` for inference, a mismatch with ``base`` turned into a clear error.

    Raises:
        ModelError: pickle-only weights (see :func:`load_adapter`), or the adapter does not fit ``base`` (naming the
            fix: the base it was trained on).
    """
    try:
        return load_adapter(base, adapter_dir)
    except ModelError:
        raise
    except Exception as exc:  # a mismatched adapter is a user input problem
        raise ModelError(
            "The adapter does not fit the base model",
            [
                Problem(
                    str(adapter_dir),
                    f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
                    "pass the base it was trained on with --model (see adapter_config.json base_model_name_or_path)",
                )
            ],
        ) from None


def load_tokenizer(source: ModelSource, *, trust_remote_code: bool = False, revision: str | None = None):
    """Load the tokenizer of a resolved source; a placeholder ``model_max_length`` (1e30) is capped.

    Raises:
        ModelError: when it cannot be loaded (hub id not cached offline, bad folder).
    """
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source.location, trust_remote_code=trust_remote_code, revision=revision)
    except Exception as exc:  # noqa: BLE001
        raise hub_error(source, exc) from None
    if tok.model_max_length is None or tok.model_max_length > MAX_SANE_LENGTH:
        tok.model_max_length = MAX_SANE_LENGTH
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
"""Weight files that are Python pickles: loading one can run arbitrary code."""


def check_weight_format(source: ModelSource, allow_pickle: bool = False, *, option: str = "model.allow_pickle") -> None:
    """Refuse a local checkpoint whose weights exist only as pickle files, unless ``allow_pickle``.

    Args:
        option: the setting that allows pickles, named in the fix (``model.allow_pickle``, ``--allow-pickle``).

    Raises:
        ModelError: naming the folder and the pickle files, with the two ways out.
    """
    loc = Path(source.location)
    if allow_pickle or not loc.is_dir() or any(loc.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in loc.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ModelError(
            "Refusing to unpickle model weights",
            [
                Problem(
                    str(loc),
                    f"the weights are only in pickle files ({', '.join(pickles[:3])}); unpickling can run "
                    "arbitrary code",
                    "convert them to safetensors (model.save_pretrained(dir, safe_serialization=True)), or "
                    f"set {option} if you trust this checkpoint",
                )
            ],
        )


def from_pretrained(
    auto_cls,
    source: ModelSource,
    *,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    revision: str | None = None,
    attn_implementation: str | None = None,
    quantization: str | None = None,
    **kwargs,
):
    """The one gate every model load goes through: ``auto_cls.from_pretrained`` with safetensors only (unless
    ``allow_pickle``), no remote code (unless ``trust_remote_code``), optionally quantised by bitsandbytes, and a
    clear error instead of a traceback.

    Args:
        auto_cls: a transformers auto class (``AutoModelForCausalLM``, ``AutoModelForSequenceClassification``) or a
            model class.
        source: the resolved source (its ``location`` is a folder or a cached hub id).
        allow_pickle: allow ``.bin``/``.pt`` pickle weights (unpickling can run code).
        attn_implementation: ``sdpa``, ``eager``, ``flash_attention_2``...; ``auto`` picks flash-attention 2 on CUDA
            when installed, else SDPA (:func:`choose_attention`).
        quantization: ``model.quantization`` (``nf4``/``int8``): quantise the weights while loading
            (:func:`tunesmith.models.quantization.quantized_load_kwargs`; computed in ``kwargs["dtype"]``, fp32 by
            default); None loads them as stored.
        **kwargs: passed on (``dtype``, ``config``, ...).

    Returns:
        The loaded ``PreTrainedModel``.

    Raises:
        ModelError: pickle-only weights without ``allow_pickle`` (naming the files), bitsandbytes missing for a
            quantization, or any load failure.
    """
    check_weight_format(source, allow_pickle)
    kwargs.update(quantized_load_kwargs(quantization, kwargs.get("dtype") or torch.float32))
    if attn_implementation == "auto":
        attn_implementation = choose_attention("auto", "cuda" if torch.cuda.is_available() else "cpu")
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = auto_cls.from_pretrained(
            source.location,
            trust_remote_code=trust_remote_code,
            revision=revision,
            use_safetensors=None if allow_pickle else True,
            **kwargs,
        )
    except Exception as exc:  # noqa: BLE001 - a failed load is reported as the user's model problem
        raise hub_error(source, exc) from None
    if quantization is not None:
        keep_training_layout(model)
    return model


def load_causal_lm(
    source: ModelSource,
    *,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    revision: str | None = None,
    quantization: str | None = None,
):
    """Load a causal LM (``AutoModelForCausalLM``) from a resolved source through :func:`from_pretrained`.

    Args:
        quantization: ``nf4``/``int8`` loads the linear layers quantised by bitsandbytes, computing in ``dtype``.

    Returns:
        ``PreTrainedModel`` in ``dtype`` (quantised layers excepted), in eval mode.

    Raises:
        ModelError: when loading fails (pickle-only weights, not cached offline, ...).
    """
    from transformers import AutoModelForCausalLM

    return from_pretrained(
        AutoModelForCausalLM,
        source,
        dtype=dtype,
        attn_implementation=attn_implementation,
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
        revision=revision,
        quantization=quantization,
    ).eval()


def choose_attention(requested: str, device: str) -> str:
    """The attention kernel: ``auto`` is flash-attention 2 on CUDA when ``flash_attn`` is installed (varlen:
    padding-free batches cost the sum of squared sample lengths), else SDPA; any other value is used as given."""
    if requested != "auto":
        return requested
    return "flash_attention_2" if device == "cuda" and is_installed("flash_attn") else "sdpa"
