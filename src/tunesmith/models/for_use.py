"""A model ready to use (chat, generate, eval, merge, export): base + adapter through the one loader, the tokenizer and
chat template it was trained with, the serving contract and a generation config that stops at the end-of-turn token."""

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
from tunesmith.models.loading import attach_adapter, load_causal_lm, load_tokenizer
from tunesmith.models.quantization import adapter_quantization
from tunesmith.models.quantization import dequantize as dequantize_model
from tunesmith.models.serving import ServingContract, apply_generation_defaults, read_contract
from tunesmith.models.sources import ModelSource, resolve_model


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


def _use_tokenizer(source, tok_dir, serving, tokenizer_from, chat_template, remote: dict, notes: list[str]):
    """The tokenizer :func:`load_for_use` serves with: ``tokenizer_from``'s, else the one saved beside the adapter,
    else the base's; its chat template from the serving contract unless ``chat_template`` or ``tokenizer_from``
    says otherwise (each change noted in ``notes``)."""
    from tunesmith.render.chat_templates import apply_chat_template_option

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
    return tokenizer


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
        adapter: a PEFT adapter folder or a run folder holding ``adapter/`` (a named adapter one level down too).
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
        :class:`Loaded`; its ``serving`` is the contract saved with the adapter or model folder (the tokenizer's chat
        template and the generation defaults follow it unless ``chat_template``/``tokenizer_from`` say otherwise).

    Raises:
        ModelError: nothing to load, an unreadable ``serving.json``, a missing adapter, an adapter that trains tied
            embeddings with ``untie=False``, or an adapter that does not fit its base.
    """
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
    tokenizer = _use_tokenizer(source, tok_dir, serving, tokenizer_from, chat_template, remote, notes)
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
        untied = fit_base_to_adapter(base, adapter_dir, notes, untie)
        base = attach_adapter(base, adapter_dir)
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
    return Loaded(
        base.eval(),
        tokenizer,
        gen,
        source.name,
        source.location,
        adapter_dir,
        notes,
        untied,
        quantization=quant,
        dequantized=bool(dequantize and quant),
        serving=serving,
        home=home,
    )


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


def _generation_config(model, adapter_dir: Path | None):
    """The adapter's saved generation_config.json (it carries the end-of-turn id), else the base's."""
    import copy

    from transformers import GenerationConfig

    if adapter_dir is not None and (adapter_dir / "generation_config.json").is_file():
        return GenerationConfig.from_pretrained(str(adapter_dir))
    gen = getattr(model, "generation_config", None)
    return copy.deepcopy(gen) if gen is not None else GenerationConfig.from_model_config(model.config)
