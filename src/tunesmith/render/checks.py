"""Checks of a chat template before training: the silent failures that make a fine-tune misbehave.

- a default system prompt the template injects into every conversation without one
  (SmolLM2: "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
- the end-of-turn token that closes an assistant reply is not an EOS id of the tokenizer or the
  generation config, so generation would not stop (:func:`fix_generation_config` repairs it);
- a doubled BOS at the start of a rendering;
- pad token equal to the end-of-turn token (safe here: padding is masked by the attention mask
  and ``-100`` labels, never by token id).
"""

from __future__ import annotations

from dataclasses import dataclass

from tunesmith.errors import ConversationRefused
from tunesmith.render.guard import render_text
from tunesmith.render.templates import _encode

_PROBE_USER = "Hello there, how are you?"
_PROBE_REPLY = "Fine, thanks."
_SYS_MARK = "SYSTEM-MARKER-7f3a"


@dataclass
class Finding:
    """One observation about the chat template.

    Attributes:
        level: ``info`` or ``warning``.
        code: a short stable id (``default_system_prompt``, ``eot_not_eos``, ``double_bos``, ``pad_is_eot``, ``eot``).
        message: one sentence for the user.
        value: the detail (the injected text, a token id, ...), JSON-able.
    """

    level: str
    code: str
    message: str
    value: object = None


def _probe(tokenizer, messages: list[dict], *, generation_prompt: bool, chat_template: str | None) -> str | None:
    """Render a probe conversation; None when the template refuses it (a broken template still raises
    :class:`~tunesmith.errors.TemplateError`)."""
    try:
        return render_text(
            tokenizer,
            messages,
            add_generation_prompt=generation_prompt,
            chat_template=chat_template,
            where="a probe conversation",
        )
    except ConversationRefused:
        return None


def default_system_prompt(tokenizer, chat_template: str | None = None) -> str | None:
    """Return the system prompt the template adds when a conversation has none, else None.

    Method: render ``[user]`` and ``[system=MARK, user]``; when the first rendering equals the
    second with MARK replaced by some text, that text is the injected default.
    """
    user = [{"role": "user", "content": _PROBE_USER}]
    plain = _probe(tokenizer, user, generation_prompt=False, chat_template=chat_template)
    marked = _probe(  # a template may refuse system turns
        tokenizer,
        [{"role": "system", "content": _SYS_MARK}] + user,
        generation_prompt=False,
        chat_template=chat_template,
    )
    if plain is None or marked is None or _SYS_MARK not in marked:
        return None
    pre, post = marked.split(_SYS_MARK, 1)
    if plain.startswith(pre) and plain.endswith(post) and len(plain) > len(pre) + len(post):
        text = plain[len(pre) : len(plain) - len(post)]
        return text if text.strip() else None
    return None


def template_eot_id(tokenizer, chat_template: str | None = None) -> int | None:
    """The token id right after an assistant reply in the rendering (the end-of-turn token), or None.

    Returns None when the template writes no single token there (e.g. the marker is not in the vocabulary).
    """
    msgs = [{"role": "user", "content": _PROBE_USER}, {"role": "assistant", "content": _PROBE_REPLY}]
    text = _probe(tokenizer, msgs, generation_prompt=False, chat_template=chat_template)
    if text is None:
        return None
    end = text.rfind(_PROBE_REPLY)
    if end < 0:
        return None
    end += len(_PROBE_REPLY)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    special = set(tokenizer.all_special_ids) | {int(i) for i in getattr(tokenizer, "added_tokens_decoder", {})}
    for tok, (start, _stop) in zip(enc["input_ids"], enc["offset_mapping"]):
        if start >= end and text[end:start].strip() == "":
            return int(tok) if tok in special else None
    return None


def eos_ids(tokenizer, generation_config=None) -> set[int]:
    """EOS ids generation stops at: the tokenizer's EOS plus the generation config's ``eos_token_id``(s)."""
    ids = {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
    eos = getattr(generation_config, "eos_token_id", None)
    ids.update(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None)
    return ids


def fix_generation_config(generation_config, tokenizer, chat_template: str | None = None) -> int | None:
    """Add the template's end-of-turn id to ``generation_config.eos_token_id`` when it is missing.

    Call it before saving a model/adapter so that ``generate`` stops at the end of a turn.

    Returns:
        The id added, or None when nothing changed.
    """
    eot = template_eot_id(tokenizer, chat_template)
    if eot is None or generation_config is None or eot in eos_ids(tokenizer, generation_config):
        return None
    eos = generation_config.eos_token_id
    current = list(eos) if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else [])
    generation_config.eos_token_id = current + [eot]
    return eot


def check_template(tokenizer, generation_config=None, chat_template: str | None = None) -> list[Finding]:
    """Run every check on the tokenizer's (or the given) chat template.

    Returns:
        Findings, warnings first.
    """
    out: list[Finding] = []
    default = default_system_prompt(tokenizer, chat_template)
    if default:
        out.append(
            Finding(
                "warning",
                "default_system_prompt",
                "the template injects a default system prompt into every "
                f"conversation without one: {default.strip()!r}; set data.system_prompt (or add system turns) "
                "to train with your own",
                default,
            )
        )
    eot = template_eot_id(tokenizer, chat_template)
    if eot is None:
        out.append(
            Finding(
                "warning",
                "eot",
                "no end-of-turn token follows an assistant reply in the template; "
                "generation will stop only at max_new_tokens unless EOS is trained",
            )
        )
    else:
        tok = tokenizer.convert_ids_to_tokens(eot)
        if eot not in eos_ids(tokenizer, generation_config):
            out.append(
                Finding(
                    "warning",
                    "eot_not_eos",
                    f"end-of-turn token {tok!r} (id {eot}) is not the tokenizer EOS nor in the "
                    "generation config's eos ids; tunesmith adds it to the saved generation_config.json",
                    eot,
                )
            )
        else:
            out.append(
                Finding("info", "eot", f"end-of-turn token {tok!r} (id {eot}) is trained and stops generation", eot)
            )
        if tokenizer.pad_token_id == eot:
            out.append(
                Finding(
                    "info",
                    "pad_is_eot",
                    f"pad token == end-of-turn token (id {eot}); safe: padding is masked "
                    "by attention mask and -100 labels, not by token id",
                    eot,
                )
            )
    prompt = _probe(
        tokenizer, [{"role": "user", "content": _PROBE_USER}], generation_prompt=True, chat_template=chat_template
    )
    ids = _encode(tokenizer, prompt) if prompt is not None else []
    bos = tokenizer.bos_token_id
    if bos is not None and len(ids) > 1 and ids[0] == bos and ids[1] == bos:
        out.append(
            Finding(
                "warning", "double_bos", "the rendering starts with two BOS tokens; remove bos_token from the template"
            )
        )
    return sorted(out, key=lambda f: f.level != "warning")
