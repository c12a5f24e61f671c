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

from dataclasses import dataclass, field

from tunesmith.data.records import Conversation
from tunesmith.errors import ConversationRefused, Problem
from tunesmith.render.chat_templates import missing_template_error
from tunesmith.render.features import require_features
from tunesmith.render.guard import render_text

IGNORE_INDEX = -100
"""Label value ignored by ``torch.nn.CrossEntropyLoss`` (its default ``ignore_index``)."""

KNOWN_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>", "<|end_of_text|>")
"""End-of-turn markers of common templates (ChatML, Llama 3, Phi-3, Gemma, ...)."""


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
    dropped_reasoning: list[int] = field(default_factory=list)
    """Assistant turns whose reasoning the template left out of this rendering (past turns, Qwen3-style)."""

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


@dataclass
class _Reply:
    """Where one assistant reply sits in the full rendering (character offsets) and what of it is trained."""

    start: int
    end: int
    train: bool
    masked: tuple[int, int] | None = None
    """Characters inside the reply (absolute offsets) masked although the reply is trained: its reasoning."""
    dropped: bool = False
    """The full rendering leaves out this turn's reasoning (a template that drops past reasoning)."""


def _inconsistent(conv: Conversation, name: str, turn: int, text: str, full_text: str) -> ConversationRefused:
    return ConversationRefused(
        "Chat template renders history inconsistently",
        [
            Problem(
                conv.source or "conversation",
                f"the {name} prefix up to turn {turn} is not a prefix of the full rendering "
                f"(diverges at char {_diverge(text, full_text)})",
                "use a template that renders earlier turns the same way (model.chat_template), "
                "or split the conversation",
            )
        ],
    )


def _locate_reply(tokenizer, conv: Conversation, i: int, full_text: str, *, chat_template, train_reasoning) -> _Reply:
    """Find assistant turn ``i`` in ``full_text``: between the rendering of the turns before it with the generation
    prompt and the rendering through it. A template that drops the reasoning of past turns (Qwen3) renders the turn
    without it in the full conversation: then the prefix through it is rendered without its reasoning too."""
    msgs, m = conv.to_template(), conv.messages[i]

    def render(turns, gen: bool) -> str:
        return render_text(
            tokenizer,
            turns,
            add_generation_prompt=gen,
            chat_template=chat_template,
            tools=conv.tools,
            where=conv.source or "conversation",
        )

    prompt_text = render(msgs[:i], True)
    if not full_text.startswith(prompt_text):
        raise _inconsistent(conv, "prompt", i, prompt_text, full_text)
    through_text = render(msgs[: i + 1], False)
    bare_text = render(msgs[:i] + [m.to_template(reasoning=False)], False) if m.reasoning_content else through_text
    kept = full_text.startswith(through_text)
    if not kept and not full_text.startswith(bare_text):
        raise _inconsistent(conv, "reply", i, through_text, full_text)
    last = max(k for k, x in enumerate(conv.messages) if x.role == "assistant")
    train = m.weight != 0 and (conv.kind != "prompt_completion" or i == last)
    reply = _Reply(len(prompt_text), len(through_text if kept else bare_text), train, dropped=not kept)
    if kept and train_reasoning is False and bare_text != through_text:
        a, b = through_text[reply.start :], bare_text[reply.start :]
        head = _diverge(a, b)
        stop = len(a) - _diverge(a[head:][::-1], b[head:][::-1])
        # of the equal alignments of the inserted text, take the leftmost: "<think>...\n\n", not "think>...\n\n<"
        while head > 0 and a[head - 1] == a[stop - 1]:
            head, stop = head - 1, stop - 1
        reply.masked = (reply.start + head, reply.start + stop)
    return reply


def _reply_labels(tokenizer, text: str, offset: int, reply: _Reply, eot_ids: set[int]) -> tuple[list[int], list[int]]:
    """Token ids of one reply and their labels: trained through its last end-of-turn token, except tokens that
    overlap ``reply.masked`` (tokenised as one piece, so masking never changes the ids)."""
    if reply.masked is None:
        ids, spans = _encode(tokenizer, text), None
    else:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, spans = enc["input_ids"], enc["offset_mapping"]
    last_eot = max((k for k, t in enumerate(ids) if t in eot_ids), default=len(ids) - 1)
    labels = []
    for k, t in enumerate(ids):
        hidden = spans is not None and spans[k][0] + offset < reply.masked[1] and spans[k][1] + offset > reply.masked[0]
        labels.append(t if reply.train and k <= last_eot and not hidden else IGNORE_INDEX)
    return ids, labels


def render_conversation(
    tokenizer,
    conv: Conversation,
    *,
    eot_ids: set[int] | None = None,
    chat_template: str | None = None,
    train_reasoning: bool | None = None,
) -> Rendered:
    """Render one conversation to ``input_ids`` and assistant-only ``labels``.

    Tool specs (``conv.tools``) are passed to the template as ``tools=``; an assistant turn's tool calls are part of
    its reply and trained; tool results, system and user turns are masked.

    Args:
        tokenizer: a transformers tokenizer with a chat template (or ``chat_template`` given).
        conv: the conversation; assistant turns with ``weight == 0`` are masked.
        eot_ids: end-of-turn token ids (default: :func:`end_of_turn_ids`).
        chat_template: optional Jinja template overriding the tokenizer's.
        train_reasoning: ``data.train_reasoning``: False masks the reasoning the template renders inside a reply
            (None and True train it; a template that drops past reasoning renders those turns without it).

    Returns:
        :class:`Rendered` with ``input_ids: list[int][seq]`` and ``labels: list[int][seq]``; ``dropped_reasoning``
        lists the assistant turns whose reasoning the template dropped from this rendering.

    Raises:
        TemplateError: when there is no chat template, or it is broken (see :func:`tunesmith.render.guard.render_text`);
            when the template does not render the conversation's tool specs, tool calls or tool results (``where`` is
            ``model.chat_template``: never dropped silently).
        ConversationRefused: the template refuses this record (its own ``raise_exception``, e.g. "roles must
            alternate"), or a prefix rendering is not a prefix of the full rendering (the template renders history
            differently from the final turn); the problem names the record.
    """
    if conv.kind in ("text", "completion"):
        return _render_plain(tokenizer, conv)
    if not (chat_template or tokenizer.chat_template):
        raise missing_template_error()
    require_features(tokenizer, conv, chat_template, train_reasoning)
    eot_ids = eot_ids if eot_ids is not None else end_of_turn_ids(tokenizer)
    full_text = render_text(
        tokenizer,
        conv.to_template(),
        add_generation_prompt=False,
        chat_template=chat_template,
        tools=conv.tools,
        where=conv.source or "conversation",
    )
    turns = [i for i, m in enumerate(conv.messages) if m.role == "assistant"]
    replies = [
        _locate_reply(tokenizer, conv, i, full_text, chat_template=chat_template, train_reasoning=train_reasoning)
        for i in turns
    ]
    ids: list[int] = []
    labels: list[int] = []
    pos = 0
    for reply in replies:
        context = _encode(tokenizer, full_text[pos : reply.start])
        ids += context
        labels += [IGNORE_INDEX] * len(context)
        reply_ids, reply_labels = _reply_labels(
            tokenizer, full_text[reply.start : reply.end], reply.start, reply, eot_ids
        )
        ids += reply_ids
        labels += reply_labels
        pos = reply.end
    tail = _encode(tokenizer, full_text[pos:])
    dropped = [i for i, reply in zip(turns, replies) if reply.dropped]
    return Rendered(ids + tail, labels + [IGNORE_INDEX] * len(tail), conv.source, dropped)


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
    ``add_generation_prompt=True`` (and ``tools=conv.tools``).  A plain ``completion`` record gives its prompt tokens.

    Raises:
        MissingFeatures: the template does not render the conversation's tools, tool calls or tool results.
    """
    if conv.kind in ("text", "completion"):
        return _encode_plain(tokenizer, conv.messages[0].content) if conv.kind == "completion" else []
    require_features(tokenizer, conv, chat_template, None)  # never drop the conversation's tools silently
    msgs = conv.to_template()
    if msgs and msgs[-1]["role"] == "assistant":
        msgs = msgs[:-1]
    return _encode(
        tokenizer,
        render_text(
            tokenizer,
            msgs,
            add_generation_prompt=True,
            chat_template=chat_template,
            tools=conv.tools,
            where=conv.source or "conversation",
        ),
    )
