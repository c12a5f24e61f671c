"""Render conversations through the model's own chat template into ``input_ids`` + ``labels``.

Assistant-only loss works for any chat template, including the many that have no
``{% generation %}`` markers (SmolLM2's ChatML template is one: TRL refuses
``assistant_only_loss`` for it).  The method: render the conversation once in full and, for each
assistant turn, render the prefix up to its generation prompt and the prefix through the
turn; the text between them is that reply.  Each prefix is checked to be a text prefix of the
full rendering and its tokenisation a token prefix of the full tokenisation, so the tokens
trained are exactly the tokens the template produces at inference time.  The reply and the
end-of-turn token that closes it are trained; template glue after the end-of-turn token, the
system and user turns and the generation-prompt header are masked (label -100).

Example::

    tunesmith data preview -n 2
"""
from __future__ import annotations

from dataclasses import dataclass

from tunesmith.errors import Problem, TemplateError
from tunesmith.messages import Conversation

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
    for e in (eos if isinstance(eos, (list, tuple)) else [eos]):
        if e is not None:
            ids.add(int(e))
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in KNOWN_END_OF_TURN if t in vocab)
    return ids


def _render_text(tokenizer, messages, *, add_generation_prompt: bool, chat_template: str | None = None) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         chat_template=chat_template)


def _encode(tokenizer, text: str) -> list[int]:
    # Chat templates already write any BOS they want as text; adding special tokens again
    # would double the BOS (transformers' apply_chat_template also encodes without them).
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def render_conversation(tokenizer, conv: Conversation, *, eot_ids: set[int] | None = None,
                        chat_template: str | None = None) -> Rendered:
    """Render one conversation to ``input_ids`` and assistant-only ``labels``.

    Args:
        tokenizer: a transformers tokenizer with a chat template (or ``chat_template`` given).
        conv: the conversation; assistant turns with ``weight == 0`` are masked.
        eot_ids: end-of-turn token ids (default: :func:`end_of_turn_ids`).
        chat_template: optional Jinja template overriding the tokenizer's.

    Returns:
        :class:`Rendered` with ``input_ids: list[int][seq]`` and ``labels: list[int][seq]``.

    Raises:
        TemplateError: when a prefix rendering is not a prefix of the full rendering (the template
            renders history differently from the final turn), naming the record.
    """
    if conv.kind == "text":
        ids = _encode(tokenizer, conv.messages[0].content)
        eos = tokenizer.eos_token_id
        if eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)
        return Rendered(ids, list(ids), conv.source)
    eot_ids = eot_ids if eot_ids is not None else end_of_turn_ids(tokenizer)
    msgs = conv.to_template()
    full_text = _render_text(tokenizer, msgs, add_generation_prompt=False, chat_template=chat_template)
    enc = tokenizer(full_text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [IGNORE_INDEX] * len(ids)
    trained_turns = [i for i, m in enumerate(conv.messages) if m.role == "assistant"]
    if conv.kind == "prompt_completion":
        trained_turns = trained_turns[-1:]
    for i in trained_turns:
        if conv.messages[i].weight == 0:
            continue
        prompt_text = _render_text(tokenizer, msgs[:i], add_generation_prompt=True, chat_template=chat_template)
        through_text = _render_text(tokenizer, msgs[: i + 1], add_generation_prompt=False, chat_template=chat_template)
        for name, text in (("prompt", prompt_text), ("reply", through_text)):
            if not full_text.startswith(text):
                raise TemplateError("Chat template renders history inconsistently", [Problem(
                    conv.source or "conversation", f"the {name} prefix up to turn {i} is not a prefix of the full rendering "
                    f"(diverges at char {_diverge(text, full_text)})",
                    "use a template that renders earlier turns the same way (model.chat_template), or split the conversation")])
        prompt_ids = _encode(tokenizer, prompt_text)
        if ids[: len(prompt_ids)] != prompt_ids:
            raise TemplateError("Training tokens would differ from inference tokens", [Problem(
                conv.source or "conversation", f"the generation prompt before turn {i} tokenises differently inside the full text "
                f"(token {_diverge(prompt_ids, ids)})", "end the generation prompt on a token boundary (e.g. a newline) in the chat template")])
        start_tok, end_char = len(prompt_ids), len(through_text)
        end_tok = start_tok
        while end_tok < len(ids) and offsets[end_tok][0] < end_char:
            end_tok += 1
        span = range(start_tok, end_tok)
        last_eot = max((t for t in span if ids[t] in eot_ids), default=None)
        stop = last_eot + 1 if last_eot is not None else end_tok
        for t in range(start_tok, stop):
            labels[t] = ids[t]
    return Rendered(list(ids), labels, conv.source)


def _diverge(a, b) -> int:
    n = min(len(a), len(b))
    return next((k for k in range(n) if a[k] != b[k]), n)


def render_prompt(tokenizer, conv: Conversation, *, chat_template: str | None = None) -> list[int]:
    """Token ids of the conversation's context up to and including the generation prompt of its
    last assistant turn (what the model sees at inference), as ``list[int][seq]``.

    The last assistant turn, if present, is dropped; the rest is rendered with
    ``add_generation_prompt=True``.
    """
    msgs = conv.to_template()
    if msgs and msgs[-1]["role"] == "assistant":
        msgs = msgs[:-1]
    return _encode(tokenizer, _render_text(tokenizer, msgs, add_generation_prompt=True, chat_template=chat_template))
