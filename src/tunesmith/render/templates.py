"""Render conversations through the model's own chat template into ``input_ids`` + ``labels``.

Assistant-only loss works for any chat template, including the many that have no
``{% generation %}`` markers (SmolLM2's ChatML template is one: TRL refuses
``assistant_only_loss`` for it).  The method: render the conversation once in full and, for each
assistant turn, render the prefix up to its generation prompt and the prefix through the
turn; the text between them is that reply.  Each prefix is checked to be a text prefix of the
full rendering (else :class:`TemplateError`).  The text is then tokenised piecewise, cut at the
start and end of every reply: the context before a reply encodes exactly as the inference-time
prompt (``render_prompt``: the same text, the same tokenizer call), and the reply encodes as the
model must generate it, with no BPE merge across the generation-prompt boundary (Llama-3's
``\n\n`` header end would merge with the reply's first characters under some tokenizers).  The reply and the
end-of-turn token that closes it are trained; template glue after the end-of-turn token, the
system and user turns and the generation-prompt header are masked (label -100).

Example::

    tunesmith data preview -n 2
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunesmith.data.records import Conversation
from tunesmith.errors import ConversationRefused, Problem, TemplateError
from tunesmith.render.guard import render_text

IGNORE_INDEX = -100
"""Label value ignored by ``torch.nn.CrossEntropyLoss`` (its default ``ignore_index``)."""

KNOWN_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>", "<|end_of_text|>")
"""End-of-turn markers of common templates (ChatML, Llama 3, Phi-3, Gemma, ...)."""


BUILTIN_DIR = Path(__file__).parent / "jinja"
"""Folder of the built-in chat templates (``<name>.jinja``)."""


def builtin_templates() -> list[str]:
    """Names of the built-in chat templates (``chatml``, ``llama3``)."""
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.jinja"))


MAX_TEMPLATE_BYTES = 1_000_000
"""Largest chat template file read (real ones are a few kilobytes)."""


def resolve_chat_template(option: str | None) -> str | None:
    """Turn ``model.chat_template`` into Jinja text.

    Args:
        option: None (keep the model's), a built-in name (:func:`builtin_templates`), a path to a Jinja file, or
            Jinja text itself.

    Returns:
        The template text, or None for None.

    Raises:
        TemplateError: when the option is neither a built-in name nor a readable file, or the file is not a chat
            template (not UTF-8 text, larger than :data:`MAX_TEMPLATE_BYTES`, or never reading ``messages``:
            ``/etc/passwd`` is not a template).
    """
    if option is None:
        return None
    if option in builtin_templates():
        return (BUILTIN_DIR / f"{option}.jinja").read_text(encoding="utf-8")
    where = f"model.chat_template={option}"
    try:
        path = Path(option).expanduser()
        is_file = path.is_file()
    except (OSError, ValueError):  # Jinja text too long to be a file name, or holding a NUL byte
        is_file = False
    if is_file:
        try:
            if path.stat().st_size > MAX_TEMPLATE_BYTES:
                raise _not_a_template(where, f"the file is {path.stat().st_size:,} bytes; a chat template is a few KB")
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise _not_a_template(where, "the file is not UTF-8 text") from None
        except OSError as exc:
            raise _not_a_template(where, f"cannot read the file ({exc.strerror or exc})") from None
        if not ("{%" in text or "{{" in text) or "messages" not in text:
            raise _not_a_template(where, "the file is not a chat template: it never reads `messages` in {% %} or {{ }}")
        return text
    if "{%" in option or "{{" in option:
        return option
    raise TemplateError(
        "Unknown chat template",
        [
            Problem(
                "model.chat_template",
                f"{option!r} is neither a built-in template nor a file",
                f"use one of {', '.join(builtin_templates())} or the path of a .jinja file",
            )
        ],
    )


def _not_a_template(where: str, reason: str) -> TemplateError:
    return TemplateError(
        "Not a chat template",
        [Problem(where, reason, f"use one of {', '.join(builtin_templates())} or the path of a .jinja chat template")],
    )


def apply_chat_template_option(tokenizer, option: str | None, *, require: bool = True) -> None:
    """Install ``model.chat_template`` on the tokenizer (so saved artifacts carry it).

    Args:
        require: raise when, after this, the tokenizer has no chat template (plain ``text`` and
            ``completion`` data need none: pass False and let rendering raise if a conversation needs one).

    Raises:
        TemplateError: when the option is invalid, the template is broken (a probe conversation renders it once:
            syntax errors, runaway loops and blocked sandbox escapes show here), or (``require``) when neither the
            option nor the model gives a chat template.
    """
    text = resolve_chat_template(option)
    if text is not None:
        tokenizer.chat_template = text
        tokenizer.tunesmith_template_source = f"model.chat_template={option}"
    if require and not tokenizer.chat_template:
        raise missing_template_error()
    if tokenizer.chat_template:
        probe = [{"role": "user", "content": "Hello"}]
        try:  # a broken template (syntax, runaway, sandbox escape) fails here, before any data is rendered
            render_text(tokenizer, probe, add_generation_prompt=True, where="a probe conversation")
        except ConversationRefused:  # a template may refuse this probe (no system turn, ...); records decide
            pass


def missing_template_error() -> TemplateError:
    """The error for a model without a chat template, naming the option that sets one."""
    return TemplateError(
        "The model has no chat template, so conversations cannot be rendered",
        [
            Problem(
                "model.chat_template",
                "the tokenizer has no chat_template (base models often have none)",
                f"set model.chat_template to a built-in ({', '.join(builtin_templates())}) or a .jinja file, "
                "e.g. --set model.chat_template=chatml; or use data.format=text / plain prompt_completion data",
            )
        ],
    )


@dataclass
class Rendered:
    """A conversation rendered for training.

    Attributes:
        input_ids: token ids, ``list[int]`` of length seq.
        labels: same length; the token id where trained, -100 where masked.
        source: the record's location (``file:line``).
    """

    input_ids: list[int]
    labels: list[int]
    source: str = ""

    @property
    def num_trained(self) -> int:
        """Number of tokens that carry loss."""
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


def end_of_turn_ids(tokenizer, generation_config=None) -> set[int]:
    """Token ids that end an assistant turn: the tokenizer's EOS, the generation config's eos ids,
    and known end-of-turn markers present in the vocabulary."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    eos = getattr(generation_config, "eos_token_id", None)
    for e in eos if isinstance(eos, (list, tuple)) else [eos]:
        if e is not None:
            ids.add(int(e))
    for marker in KNOWN_END_OF_TURN:  # one lookup each: get_vocab() would copy the whole vocabulary
        i = tokenizer.convert_tokens_to_ids(marker)
        if isinstance(i, int) and tokenizer.convert_ids_to_tokens(i) == marker:
            ids.add(i)
    return ids


def _encode(tokenizer, text: str) -> list[int]:
    # Chat templates already write any BOS they want as text; adding special tokens again
    # would double the BOS (transformers' apply_chat_template also encodes without them).
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def render_conversation(
    tokenizer, conv: Conversation, *, eot_ids: set[int] | None = None, chat_template: str | None = None
) -> Rendered:
    """Render one conversation to ``input_ids`` and assistant-only ``labels``.

    Args:
        tokenizer: a transformers tokenizer with a chat template (or ``chat_template`` given).
        conv: the conversation; assistant turns with ``weight == 0`` are masked.
        eot_ids: end-of-turn token ids (default: :func:`end_of_turn_ids`).
        chat_template: optional Jinja template overriding the tokenizer's.

    Returns:
        :class:`Rendered` with ``input_ids: list[int][seq]`` and ``labels: list[int][seq]``.

    Raises:
        TemplateError: when there is no chat template, or it is broken (see :func:`tunesmith.render.guard.render_text`).
        ConversationRefused: the template refuses this record (its own ``raise_exception``, e.g. "roles must
            alternate"), or a prefix rendering is not a prefix of the full rendering (the template renders history
            differently from the final turn); the problem names the record.
    """
    if conv.kind in ("text", "completion"):
        return _render_plain(tokenizer, conv)
    if not (chat_template or tokenizer.chat_template):
        raise missing_template_error()
    eot_ids = eot_ids if eot_ids is not None else end_of_turn_ids(tokenizer)
    msgs = conv.to_template()
    where = conv.source or "conversation"
    full_text = render_text(tokenizer, msgs, add_generation_prompt=False, chat_template=chat_template, where=where)
    trained = [i for i, m in enumerate(conv.messages) if m.role == "assistant"]
    if conv.kind == "prompt_completion":
        trained = trained[-1:]
    replies = []  # (start char, end char, trained?) of each assistant reply in full_text
    for i, m in enumerate(conv.messages):
        if m.role != "assistant":
            continue
        prompt_text = render_text(
            tokenizer, msgs[:i], add_generation_prompt=True, chat_template=chat_template, where=where
        )
        through_text = render_text(
            tokenizer, msgs[: i + 1], add_generation_prompt=False, chat_template=chat_template, where=where
        )
        for name, text in (("prompt", prompt_text), ("reply", through_text)):
            if not full_text.startswith(text):
                raise ConversationRefused(
                    "Chat template renders history inconsistently",
                    [
                        Problem(
                            where,
                            f"the {name} prefix up to turn {i} is not a prefix of the full rendering "
                            f"(diverges at char {_diverge(text, full_text)})",
                            "use a template that renders earlier turns the same way (model.chat_template), "
                            "or split the conversation",
                        )
                    ],
                )
        replies.append((len(prompt_text), len(through_text), i in trained and m.weight != 0))
    ids: list[int] = []
    labels: list[int] = []
    pos = 0
    for start, end, train in replies:
        context = _encode(tokenizer, full_text[pos:start])
        ids += context
        labels += [IGNORE_INDEX] * len(context)
        reply = _encode(tokenizer, full_text[start:end])
        last_eot = max((k for k, t in enumerate(reply) if t in eot_ids), default=len(reply) - 1)
        ids += reply
        labels += [t if train and k <= last_eot else IGNORE_INDEX for k, t in enumerate(reply)]
        pos = end
    tail = _encode(tokenizer, full_text[pos:])
    return Rendered(ids + tail, labels + [IGNORE_INDEX] * len(tail), conv.source)


def _encode_plain(tokenizer, text: str) -> list[int]:
    """Encode raw text with the tokenizer's own special tokens (a BOS where it adds one), never two BOS."""
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    bos = tokenizer.bos_token_id
    while bos is not None and len(ids) > 1 and ids[0] == bos and ids[1] == bos:
        ids = ids[1:]
    return ids


def _render_plain(tokenizer, conv: Conversation) -> Rendered:
    """``text``: loss on every token; ``completion``: prompt masked, completion trained.

    The prompt and the completion are encoded separately (as TRL does), so the completion tokens
    are the ones the model generates after the prompt; EOS is appended exactly once (not when
    the text already ends with it).
    """
    eos = tokenizer.eos_token_id
    if conv.kind == "text":
        ids = _encode_plain(tokenizer, conv.messages[0].content)
        if eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)
        return Rendered(ids, list(ids), conv.source)
    prompt = _encode_plain(tokenizer, conv.messages[0].content)
    completion = _encode(tokenizer, conv.messages[-1].content)
    if eos is not None and (not completion or completion[-1] != eos):
        completion.append(eos)
    return Rendered(prompt + completion, [IGNORE_INDEX] * len(prompt) + completion, conv.source)


def _diverge(a, b) -> int:
    n = min(len(a), len(b))
    return next((k for k in range(n) if a[k] != b[k]), n)


def render_prompt(tokenizer, conv: Conversation, *, chat_template: str | None = None) -> list[int]:
    """Token ids of the conversation's context up to and including the generation prompt of its
    last assistant turn (what the model sees at inference), as ``list[int][seq]``.

    The last assistant turn, if present, is dropped; the rest is rendered with
    ``add_generation_prompt=True``.  A plain ``completion`` record gives its prompt tokens.
    """
    if conv.kind in ("text", "completion"):
        return _encode_plain(tokenizer, conv.messages[0].content) if conv.kind == "completion" else []
    msgs = conv.to_template()
    if msgs and msgs[-1]["role"] == "assistant":
        msgs = msgs[:-1]
    text = render_text(
        tokenizer, msgs, add_generation_prompt=True, chat_template=chat_template, where=conv.source or "conversation"
    )
    return _encode(tokenizer, text)
