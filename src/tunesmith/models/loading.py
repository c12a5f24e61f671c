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

from dataclasses import dataclass, field
from pathlib import Path

import torch

from tunesmith.errors import ModelError, Problem
from tunesmith.models.adapters import adapter_base_name, find_adapter, prepare_base_for_adapter, require_adapter
from tunesmith.models.quantization import adapter_quantization, keep_training_layout, quantized_load_kwargs
from tunesmith.models.quantization import dequantize as dequantize_model
from tunesmith.models.sources import ModelSource, resolve_model
from tunesmith.render.rows import MAX_SANE_LENGTH
from tunesmith.runtime.hardware import is_installed


@dataclass
class Loaded:
    """A model ready for generation.

    Attributes:
        model: ``PreTrainedModel`` or ``peft.PeftModel``, fp32 by default, in eval mode.
        tokenizer: the tokenizer (the adapter's when it saved one), ``pad_token_id`` set.
        generation_config: ``transformers.GenerationConfig`` whose ``eos_token_id`` includes the template's end-of-turn
            id.
        base_name: what the base resolved from (embedded name, path, hub id).
        base_location: the folder or hub id ``from_pretrained`` loaded.
        adapter_dir: the adapter folder, or None.
        notes: what was done on the way (resize, untie, end-of-turn id added), one sentence each.
        untied: True when ``lm_head`` was given its own copy of the tied input embedding (see
            :func:`untie_output_embeddings`).
        quantization: ``nf4``/``int8`` when the adapter was trained on a quantised base (QLoRA), else None; the base is
            loaded that way unless it was dequantised (``dequantized``).
        dequantized: True when the quantised base was dequantised to fp32 (the base a QLoRA adapter merges into).
    """

    model: object
    tokenizer: object
    generation_config: object
    base_name: str
    base_location: str
    adapter_dir: Path | None = None
    notes: list[str] = field(default_factory=list)
    untied: bool = False
    quantization: str | None = None
    dequantized: bool = False


def _tokenizer_dir(adapter_dir: Path | None) -> Path | None:
    if adapter_dir is not None and any(
        (adapter_dir / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json")
    ):
        return adapter_dir
    return None


def load_for_use(
    model: str | None = None,
    adapter: str | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    chat_template: str | None = None,
    untie: bool = True,
    tokenizer_from: str | None = None,
    allow_pickle: bool = False,
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
    revision: str | None = None,
    as_trained: bool = True,
    dequantize: bool = False,
) -> Loaded:
    """Load base (+ adapter) with tokenizer and a generation config that stops at the end-of-turn token.

    Args:
        model: embedded name, hub id, checkpoint folder, ``.gguf`` file, or a ``tunesmith sft`` run/adapter folder
            (then the adapter is taken from it); None with an adapter: the adapter's base.
        adapter: a PEFT adapter folder or a run folder holding ``adapter/``.
        dtype: weights dtype (fp32 for exact merge checks).
        chat_template: ``model.chat_template`` option (built-in name or .jinja path) overriding the saved template.
        untie: untie tied embeddings when the adapter trains them (see module doc); False refuses such an adapter.
        tokenizer_from: load the tokenizer from this model instead (``tunesmith eval`` scores every model with the
            config's tokenizer, so prompt token ids are identical across runs).
        allow_pickle, attn_implementation, trust_remote_code, revision: the ``model.*`` options of a run config.
        as_trained: load the base of a QLoRA adapter quantised as it was trained (train = serve; its
            ``tunesmith_quantization.json``); False loads the unquantised base.
        dequantize: with ``as_trained``, dequantise that quantised base to fp32 before the adapter attaches: the
            weights the adapter was trained against, in full precision (what ``tunesmith merge`` merges into).

    Returns:
        :class:`Loaded`.

    Raises:
        ModelError: nothing to load, a missing adapter, an adapter that trains tied embeddings with ``untie=False``,
            or an adapter that does not fit its base.
    """
    from tunesmith.render.checks import fix_generation_config
    from tunesmith.render.templates import apply_chat_template_option

    adapter_dir = _resolve_adapter(model, adapter)
    if adapter_dir is not None and (model is None or find_adapter(model) == adapter_dir):
        model = adapter_base_name(adapter_dir)
    if model is None:
        raise ModelError(
            "No model given",
            [Problem("--model", "neither --model nor --adapter was given", "pass --model NAME_OR_PATH")],
        )
    source = resolve_model(model)
    notes: list[str] = []
    remote = dict(trust_remote_code=trust_remote_code, revision=revision)
    tok_dir = _tokenizer_dir(adapter_dir)
    if tokenizer_from is not None:
        tokenizer = load_tokenizer(resolve_model(tokenizer_from), **remote)
    elif tok_dir is not None:
        tokenizer = load_tokenizer(ModelSource(str(tok_dir), str(tok_dir), "local"))
    else:
        tokenizer = load_tokenizer(source, **remote)
    apply_chat_template_option(
        tokenizer, chat_template, require=tokenizer_from is not None and chat_template is not None
    )
    quant = adapter_quantization(adapter_dir) if adapter_dir is not None and as_trained else None
    base = load_causal_lm(
        source,
        dtype=dtype,
        attn_implementation=attn_implementation,
        allow_pickle=allow_pickle,
        quantization=quant,
        **remote,
    )
    if quant is not None:
        if dequantize:
            base = dequantize_model(base)
        notes.append(
            f"the adapter was trained on a {quant}-quantised base (QLoRA): "
            + ("dequantised it to fp32" if dequantize else f"loaded the base in {quant}")
        )
    untied = False
    if adapter_dir is not None:
        untied = prepare_base_for_adapter(base, adapter_dir, notes, untie)
        base = _attach_adapter(base, adapter_dir)
    gen = _generation_config(base, adapter_dir)
    if tokenizer.chat_template:
        added = fix_generation_config(gen, tokenizer)
        if added is not None:
            notes.append(
                f"added end-of-turn id {added} ({tokenizer.convert_ids_to_tokens(added)!r}) to "
                "generation_config.eos_token_id"
            )
    base.generation_config = gen
    return Loaded(
        base.eval(),
        tokenizer,
        gen,
        source.name,
        source.location,
        adapter_dir,
        notes,
        untied,
        quant,
        bool(dequantize and quant),
    )


def _resolve_adapter(model: str | None, adapter: str | None) -> Path | None:
    if adapter is not None:
        return require_adapter(adapter, f"--adapter {adapter}")
    return find_adapter(model) if model is not None and Path(model).expanduser().is_dir() else None


def _attach_adapter(base, adapter_dir: Path):
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
    except Exception as exc:  # noqa: BLE001 - a mismatched adapter is a user input problem
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


def _generation_config(model, adapter_dir: Path | None):
    """The adapter's saved generation_config.json (it carries the end-of-turn id), else the base's."""
    import copy

    from transformers import GenerationConfig

    if adapter_dir is not None and (adapter_dir / "generation_config.json").is_file():
        return GenerationConfig.from_pretrained(str(adapter_dir))
    gen = getattr(model, "generation_config", None)
    return copy.deepcopy(gen) if gen is not None else GenerationConfig.from_model_config(model.config)


def stop_ids(loaded: Loaded) -> set[int]:
    """Token ids generation stops at: :func:`tunesmith.render.templates.end_of_turn_ids` of the tokenizer and generation
    config."""
    from tunesmith.render.templates import end_of_turn_ids

    return end_of_turn_ids(loaded.tokenizer, loaded.generation_config)


def hub_error(source: ModelSource, exc: Exception) -> ModelError:
    """The load failure of ``source`` as a :class:`ModelError` naming the model, the cause and the offline fix."""
    return ModelError(
        "Cannot load model",
        [
            Problem(
                f"model.name={source.name}",
                f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
                "for a hub id, download it once on a connected machine (`hf download ID`) so it is in the local cache; "
                "otherwise pass a local checkpoint folder, a .gguf file, or an embedded name from `tunesmith models`",
            )
        ],
    )


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


def check_weight_format(source: ModelSource, allow_pickle: bool = False) -> None:
    """Refuse a local checkpoint whose weights exist only as pickle files, unless ``allow_pickle``.

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
                    "set model.allow_pickle: true if you trust this checkpoint",
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
