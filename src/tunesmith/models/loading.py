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

from dataclasses import dataclass, field
from pathlib import Path

import torch

from tunesmith.errors import ModelError, Problem
from tunesmith.models.adapters import (
    adapter_base_name,
    adapter_home,
    check_generative,
    find_adapter,
    fit_base_to_adapter,
    require_adapter,
)
from tunesmith.models.serving import ServingContract, apply_generation_defaults, read_contract
from tunesmith.models.sources import ModelSource, hub_error, resolve_model
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
            :func:`tunesmith.models.adapters.untie_output_embeddings`).
        serving: the serving contract saved with the adapter or model (:mod:`tunesmith.models.serving`), or None.
        home: the folder the tokenizer, generation config and contract came from (adapter home or model folder).
    """

    model: object
    tokenizer: object
    generation_config: object
    base_name: str
    base_location: str
    adapter_dir: Path | None = None
    notes: list[str] = field(default_factory=list)
    untied: bool = False
    serving: ServingContract | None = None
    home: Path | None = None

    def system_prompt(self, override: str | None = None) -> str | None:
        """The system prompt to serve with: ``override`` (a user's ``--system``) when given, else the trained one from
        the serving contract (None without a contract: the template's own default applies)."""
        return self.serving.system_for(override) if self.serving is not None else override


def _tokenizer_dir(home: Path | None) -> Path | None:
    if home is not None and any((home / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json")):
        return home
    return None


def _home(source: ModelSource, adapter_dir: Path | None) -> Path | None:
    """Where the tokenizer, generation config and serving contract of what is loaded live: the adapter's home, else
    the model folder."""
    if adapter_dir is not None:
        return adapter_home(adapter_dir)
    loc = Path(source.location)
    return loc if loc.is_dir() else None


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
) -> Loaded:
    """Load base (+ adapter) with tokenizer and a generation config that stops at the end-of-turn token.

    Args:
        model: embedded name, hub id, checkpoint folder, ``.gguf`` file, or a ``tunesmith sft`` run/adapter folder
            (then the adapter is taken from it); None with an adapter: the adapter's base.
        adapter: a PEFT adapter folder or a run folder holding ``adapter/`` (a named adapter one level down too).
        dtype: weights dtype (fp32 for exact merge checks).
        chat_template: ``model.chat_template`` option (built-in name or .jinja path) overriding the saved template.
        untie: untie tied embeddings when the adapter trains them (see module doc); False refuses such an adapter.
        tokenizer_from: load the tokenizer from this model instead (``tunesmith eval`` scores every model with the
            config's tokenizer, so prompt token ids are identical across runs).
        allow_pickle, attn_implementation, trust_remote_code, revision: the ``model.*`` options of a run config.

    Returns:
        :class:`Loaded`; its ``serving`` is the contract saved with the adapter or model folder (the tokenizer's chat
        template and the generation defaults follow it unless ``chat_template``/``tokenizer_from`` say otherwise).

    Raises:
        ModelError: nothing to load, an unreadable ``serving.json``, a missing adapter, an adapter that trains tied
            embeddings with ``untie=False``, or an adapter that does not fit its base.
    """
    from tunesmith.render.chat_templates import apply_chat_template_option
    from tunesmith.render.checks import fix_generation_config

    adapter_dir = _resolve_adapter(model, adapter)
    if adapter_dir is not None and (model is None or find_adapter(model) == adapter_dir):
        model = adapter_base_name(adapter_dir)
    if model is None:
        raise ModelError(
            "No model given",
            [Problem("--model", "neither --model nor --adapter was given", "pass --model NAME_OR_PATH")],
        )
    source = resolve_model(model)
    home = _home(source, adapter_dir)
    serving = read_contract(home)
    notes: list[str] = []
    remote = dict(trust_remote_code=trust_remote_code, revision=revision)
    tok_dir = _tokenizer_dir(home if adapter_dir is not None else None)
    if tokenizer_from is not None:
        tokenizer = load_tokenizer(resolve_model(tokenizer_from), **remote)
    elif tok_dir is not None:
        tokenizer = load_tokenizer(ModelSource(str(tok_dir), str(tok_dir), "local"))
    else:
        tokenizer = load_tokenizer(source, **remote)
    if chat_template is None and tokenizer_from is None and serving is not None and serving.chat_template:
        if tokenizer.chat_template != serving.chat_template:
            notes.append("chat template taken from serving.json (the saved tokenizer carried another)")
        tokenizer.chat_template = serving.chat_template
    apply_chat_template_option(
        tokenizer, chat_template, require=tokenizer_from is not None and chat_template is not None
    )
    base = load_causal_lm(
        source, dtype=dtype, attn_implementation=attn_implementation, allow_pickle=allow_pickle, **remote
    )
    untied = False
    if adapter_dir is not None:
        untied = fit_base_to_adapter(base, adapter_dir, notes, untie)
        base = _attach_adapter(base, adapter_dir)
    gen = _generation_config(base, home if adapter_dir is not None else None)
    if serving is not None:
        apply_generation_defaults(gen, serving)
    if tokenizer.chat_template:
        added = fix_generation_config(gen, tokenizer)
        if added is not None:
            notes.append(
                f"added end-of-turn id {added} ({tokenizer.convert_ids_to_tokens(added)!r}) to "
                "generation_config.eos_token_id"
            )
    base.generation_config = gen
    return Loaded(base.eval(), tokenizer, gen, source.name, source.location, adapter_dir, notes, untied, serving, home)


def serving_contract(model: str | None = None, adapter: str | None = None) -> ServingContract | None:
    """The serving contract :func:`load_for_use` applies for these arguments, read without loading any weights (an
    adapter's home, else a model folder's ``serving.json``), or None.

    Raises:
        ModelError: a missing adapter, an unreadable ``serving.json``.
    """
    adapter_dir = _resolve_adapter(model, adapter)
    if adapter_dir is not None:
        return read_contract(adapter_home(adapter_dir))
    folder = Path(model).expanduser() if model else None
    return read_contract(folder) if folder is not None and folder.is_dir() else None


def _resolve_adapter(model: str | None, adapter: str | None) -> Path | None:
    if adapter is not None:
        return require_adapter(adapter, f"--adapter {adapter}")
    found = find_adapter(model) if model is not None and Path(model).expanduser().is_dir() else None
    if found is not None:
        check_generative(found, f"--model {model}")
    return found


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


def _attach_adapter(base, adapter_dir: Path):
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


def _generation_config(model, adapter_dir: Path | None):
    """The adapter's saved generation_config.json (it carries the end-of-turn id), else the base's."""
    import copy

    from transformers import GenerationConfig

    if adapter_dir is not None and (adapter_dir / "generation_config.json").is_file():
        return GenerationConfig.from_pretrained(str(adapter_dir))
    gen = getattr(model, "generation_config", None)
    return copy.deepcopy(gen) if gen is not None else GenerationConfig.from_model_config(model.config)


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
    **kwargs,
):
    """The one gate every model load goes through: ``auto_cls.from_pretrained`` with safetensors only (unless
    ``allow_pickle``), no remote code (unless ``trust_remote_code``), and a clear error instead of a traceback.

    Args:
        auto_cls: a transformers auto class (``AutoModelForCausalLM``, ``AutoModelForSequenceClassification``) or a
            model class.
        source: the resolved source (its ``location`` is a folder or a cached hub id).
        allow_pickle: allow ``.bin``/``.pt`` pickle weights (unpickling can run code).
        attn_implementation: ``sdpa``, ``eager``, ``flash_attention_2``...; ``auto`` picks flash-attention 2 on CUDA
            when installed, else SDPA (:func:`choose_attention`).
        **kwargs: passed on (``dtype``, ``config``, ...).

    Returns:
        The loaded ``PreTrainedModel``.

    Raises:
        ModelError: pickle-only weights without ``allow_pickle`` (naming the files), or any load failure.
    """
    check_weight_format(source, allow_pickle)
    if attn_implementation == "auto":
        attn_implementation = choose_attention("auto", "cuda" if torch.cuda.is_available() else "cpu")
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    try:
        return auto_cls.from_pretrained(
            source.location,
            trust_remote_code=trust_remote_code,
            revision=revision,
            use_safetensors=None if allow_pickle else True,
            **kwargs,
        )
    except Exception as exc:  # noqa: BLE001 - a failed load is reported as the user's model problem
        raise hub_error(source, exc) from None


def load_causal_lm(
    source: ModelSource,
    *,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    revision: str | None = None,
):
    """Load a causal LM (``AutoModelForCausalLM``) from a resolved source through :func:`from_pretrained`.

    Returns:
        ``PreTrainedModel`` in ``dtype``, in eval mode.

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
    ).eval()


def choose_attention(requested: str, device: str) -> str:
    """The attention kernel: ``auto`` is flash-attention 2 on CUDA when ``flash_attn`` is installed (varlen:
    padding-free batches cost the sum of squared sample lengths), else SDPA; any other value is used as given."""
    if requested != "auto":
        return requested
    return "flash_attention_2" if device == "cuda" and is_installed("flash_attn") else "sdpa"
