"""The canonical conversation type every data format is normalised to.

A :class:`Conversation` is a list of role-tagged :class:`Message` objects plus where it came
from (``file:line``) so that every later error can point back at the user's record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant", "tool")
"""Roles tunesmith accepts (OpenAI chat roles; ``tool`` for tool results)."""

MAX_TEXT_CHARS = 1_000_000
"""Longest text one message (or one text to classify) may hold, in characters: about 250,000 tokens, beyond any
context length trained here. Longer records are refused with their location before anything is tokenized (a 50 MB
line would otherwise take minutes to tokenize only to be truncated to ``train.max_length`` tokens)."""


def too_long(text: str, label: str) -> str | None:
    """The reason ``text`` (named ``label``) is refused for its length, or None when it fits :data:`MAX_TEXT_CHARS`."""
    if len(text) <= MAX_TEXT_CHARS:
        return None
    return f"{label} is {len(text):,} characters long; at most {MAX_TEXT_CHARS:,} are accepted"


TOO_LONG_FIX = "split the text into several records, or remove it (training keeps only train.max_length tokens)"
"""The fix of every :func:`too_long` problem."""


@dataclass
class ToolCall:
    """One function call an assistant turn makes.

    Attributes:
        name: the function name (one of the conversation's ``tools`` when it declares any).
        arguments: the arguments as a JSON object (``dict``; a JSON string in the source is parsed).
        id: the call id a ``tool`` message answers (OpenAI ``tool_calls[].id``), when the source gives one.
    """

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    id: str | None = None

    def to_template(self) -> dict[str, Any]:
        """The OpenAI / transformers shape ``{"type": "function", "function": {"name", "arguments"}}`` (+ ``id``)."""
        out: dict[str, Any] = {"type": "function", "function": {"name": self.name, "arguments": self.arguments}}
        if self.id:
            out["id"] = self.id
        return out


@dataclass
class Message:
    """One turn of a conversation.

    Attributes:
        role: ``system``, ``user``, ``assistant`` or ``tool``.
        content: the text of the turn (may be empty for an assistant turn that only calls tools).
        weight: for assistant turns, 1 (trained, default) or 0 (kept as context, masked from the loss),
            as in OpenAI's fine-tuning format.
        name: optional speaker name (OpenAI ``name`` field), or the function name of a ``tool`` result; passed to the
            template when set.
        tool_calls: for assistant turns, the function calls it makes (trained like its text).
        tool_call_id: for ``tool`` turns, the id of the call this result answers.
        reasoning_content: for assistant turns, the thinking before the reply (OpenAI/TRL/Qwen3
            ``reasoning_content``); trained or masked by ``data.train_reasoning``.
    """

    role: str
    content: str
    weight: int | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None

    def to_template(self, *, reasoning: bool = True) -> dict[str, Any]:
        """Return the dict passed to ``tokenizer.apply_chat_template``: role, content, and name, tool_calls,
        tool_call_id and reasoning_content when set (``reasoning=False`` leaves the reasoning out)."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.name:
            out["name"] = self.name
        if self.tool_calls:
            out["tool_calls"] = [c.to_template() for c in self.tool_calls]
        if self.tool_call_id:
            out["tool_call_id"] = self.tool_call_id
        if reasoning and self.reasoning_content:
            out["reasoning_content"] = self.reasoning_content
        return out


@dataclass
class Conversation:
    """A normalised training/eval record.

    Attributes:
        messages: the turns, in order.
        source: where it came from, ``"path:line"`` (physical line, 1-based) or ``"name#index"``.
        meta: extra fields kept from the record (e.g. a category label), never trained on.
        tools: the JSON-schema function specs the assistant may call, each ``{"type": "function", "function": {name,
            description, parameters}}`` (passed to the template as ``tools=``), or None.
        kind: ``messages`` (assistant-only loss through the chat template), ``prompt_completion``
            (chat template, loss on the last assistant turn only), ``completion`` (plain prompt and
            completion strings in ``messages[0]``/``messages[-1]``, no chat template, loss on the
            completion plus one EOS) or ``text`` (loss on every token; the text is in ``messages[0].content``).
    """

    messages: list[Message]
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    kind: str = "messages"
    tools: list[dict[str, Any]] | None = None

    def to_template(self) -> list[dict[str, Any]]:
        """Return the messages as the list of dicts ``apply_chat_template`` takes."""
        return [m.to_template() for m in self.messages]

    @property
    def has_tool_data(self) -> bool:
        """True when the conversation declares tools, calls one, or holds a tool result."""
        return bool(self.tools) or any(m.tool_calls or m.role == "tool" for m in self.messages)


@dataclass
class LabelRecord:
    """One classification example.

    Attributes:
        id: stable id, ``"path:line"`` (physical, 1-based) or a bundled source name.
        text: the text to classify.
        label: the label name.
        text_pair: optional second text.
    """

    id: str
    text: str
    label: str
    text_pair: str | None = None


@dataclass
class PreferencePair:
    """One preference pair in canonical form.

    Attributes:
        prompt: ``list[Message]`` (conversational: rendered through the chat template with the generation prompt)
            or ``str`` (text: prompt and response are concatenated as they are, EOS appended by TRL).
        chosen: the preferred response text.
        rejected: the dispreferred response text.
        source: where it came from, ``"path:line"`` (physical line, 1-based) or ``"name#index"``.
        meta: extra fields kept from the record (never trained on).
    """

    prompt: list[Message] | str
    chosen: str
    rejected: str
    source: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def conversational(self) -> bool:
        """True when the prompt is a list of messages."""
        return not isinstance(self.prompt, str)

    def to_trl(self) -> dict:
        """Return the row TRL's ``DPOTrainer`` takes: ``{"prompt", "chosen", "rejected"}`` as strings, or
        conversational (``prompt`` a list of ``{role, content}`` dicts, each response a one-message list)."""
        if not self.conversational:
            return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}
        return {
            "prompt": [m.to_template() for m in self.prompt],
            "chosen": [{"role": "assistant", "content": self.chosen}],
            "rejected": [{"role": "assistant", "content": self.rejected}],
        }

    def prompt_text(self) -> str:
        """The last user turn (conversational) or the prompt string, for reports."""
        if not self.conversational:
            return self.prompt
        return next((m.content for m in reversed(self.prompt) if m.role == "user"), self.prompt[-1].content)
