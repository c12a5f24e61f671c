"""The canonical conversation type every data format is normalised to.

A :class:`Conversation` is a list of role-tagged :class:`Message` objects plus where it came
from (``file:line``) so that every later error can point back at the user's record.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant", "tool")
"""Roles tunesmith accepts (OpenAI chat roles; ``tool`` for tool results)."""


@dataclass
class Message:
    """One turn of a conversation.

    Attributes:
        role: ``system``, ``user``, ``assistant`` or ``tool``.
        content: the text of the turn.
        weight: for assistant turns, 1 (trained, default) or 0 (kept as context, masked from the loss),
            as in OpenAI's fine-tuning format.
        name: optional speaker name (OpenAI ``name`` field); passed to the template when set.
    """

    role: str
    content: str
    weight: int | None = None
    name: str | None = None

    def to_template(self) -> dict[str, Any]:
        """Return the dict passed to ``tokenizer.apply_chat_template`` (role, content, and name if set)."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.name:
            out["name"] = self.name
        return out


@dataclass
class Conversation:
    """A normalised training/eval record.

    Attributes:
        messages: the turns, in order.
        source: where it came from, ``"path:line"`` (physical line, 1-based) or ``"name#index"``.
        meta: extra fields kept from the record (e.g. a category label), never trained on.
        kind: ``messages`` (assistant-only loss through the chat template), ``prompt_completion``
            (chat template, loss on the last assistant turn only), ``completion`` (plain prompt and
            completion strings in ``messages[0]``/``messages[-1]``, no chat template, loss on the
            completion plus one EOS) or ``text`` (loss on every token; the text is in ``messages[0].content``).
    """

    messages: list[Message]
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    kind: str = "messages"

    def to_template(self) -> list[dict[str, Any]]:
        """Return the messages as the list of dicts ``apply_chat_template`` takes."""
        return [m.to_template() for m in self.messages]
