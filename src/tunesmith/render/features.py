"""What a chat template renders beyond plain text: tool specs, tool calls, tool results, reasoning.

A template that ignores ``tools=`` or a message's ``tool_calls`` (SmolLM2's ChatML template is one) would silently
train a model on conversations with their tools cut out. Each feature is probed by rendering a small conversation
holding a unique marker and looking for the marker in the text; a conversation that needs a feature the template lacks
is refused (:func:`require_features`), naming the built-in tool-capable template ``chatml-tools``.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunesmith.data.records import Conversation, Message, ToolCall
from tunesmith.errors import Problem, TemplateError

TOOL_TEMPLATE = "chatml-tools"
"""The built-in tool-capable template (ChatML with the Hermes / Qwen2.5 ``<tool_call>`` layout)."""

_FN, _ARG, _RESULT, _THINK = "probe_fn_5c1e", "probe_arg_9a4d", "PROBE-RESULT-3b7f", "PROBE-REASONING-e2d8"
_PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": _FN,
        "description": "probe",
        "parameters": {"type": "object", "properties": {_ARG: {"type": "string"}}, "required": [_ARG]},
    },
}


@dataclass(frozen=True)
class Features:
    """Which parts of a tool / reasoning conversation the template renders.

    Attributes:
        tools: the ``tools=`` specs.
        tool_calls: an assistant turn's ``tool_calls`` (name and arguments).
        tool_results: ``tool`` role messages.
        reasoning: an assistant turn's ``reasoning_content`` (as the last turn).
    """

    tools: bool
    tool_calls: bool
    tool_results: bool
    reasoning: bool


_CACHE: dict[tuple[int, str], Features] = {}


def _renders(tokenizer, chat_template, messages: list[Message], marker: str, tools=None) -> bool:
    try:
        text = tokenizer.apply_chat_template(
            [m.to_template() for m in messages], tools=tools, tokenize=False, chat_template=chat_template
        )
    except Exception:  # a template may refuse the role or the field: then it does not render it
        return False
    return marker in text


def template_features(tokenizer, chat_template: str | None = None) -> Features:
    """Probe the tokenizer's (or the given) chat template for each :class:`Features` field (cached per template)."""
    key = (id(tokenizer), chat_template or tokenizer.chat_template or "")
    if key not in _CACHE:
        user = Message("user", "What is the probe?")
        call = Message("assistant", "", tool_calls=[ToolCall(_FN, {_ARG: "x"})])
        _CACHE[key] = Features(
            tools=_renders(tokenizer, chat_template, [user], _FN, [_PROBE_TOOL]),
            tool_calls=_renders(tokenizer, chat_template, [user, call], _ARG, [_PROBE_TOOL]),
            tool_results=_renders(tokenizer, chat_template, [user, call, Message("tool", _RESULT)], _RESULT),
            reasoning=_renders(
                tokenizer, chat_template, [user, Message("assistant", "ok", reasoning_content=_THINK)], _THINK
            ),
        )
    return _CACHE[key]


def needed(conv: Conversation, train_reasoning: bool | None = None) -> set[str]:
    """The :class:`Features` field names ``conv`` needs rendered (reasoning only with ``train_reasoning=True``)."""
    out = {"tools"} if conv.tools else set()
    out |= {"tool_calls" for m in conv.messages if m.tool_calls}
    out |= {"tool_results" for m in conv.messages if m.role == "tool"}
    if train_reasoning:
        out |= {"reasoning" for m in conv.messages if m.reasoning_content}
    return out


LABELS = {
    "tools": "tool specs (tools=)",
    "tool_calls": "assistant tool calls",
    "tool_results": "tool results (role tool)",
    "reasoning": "reasoning (reasoning_content, data.train_reasoning: true)",
}
"""What each feature is called in messages."""


class MissingFeatures(TemplateError):
    """Data needs tool specs, tool calls, tool results or reasoning that the chat template does not render
    (``where`` is ``model.chat_template``; the fix names :data:`TOOL_TEMPLATE`)."""

    @classmethod
    def of(cls, missing: list[str], records: int, example: str) -> MissingFeatures:
        """The error for ``records`` records (the first is ``example``) needing the ``missing`` features."""
        return cls(
            "The chat template would drop part of the data",
            [
                Problem(
                    "model.chat_template",
                    f"the chat template does not render {', '.join(LABELS[f] for f in missing)}; {records} record(s) "
                    f"hold them (first: {example}), and they would be cut out of training silently",
                    f"set model.chat_template={TOOL_TEMPLATE} (ChatML with <tool_call>{{json}}</tool_call> and "
                    "<tool_response>, the Hermes / Qwen2.5 layout), or a .jinja template that renders them"
                    + ("; or set data.train_reasoning to null/false" if "reasoning" in missing else ""),
                )
            ],
        )


def require_features(tokenizer, conv: Conversation, chat_template: str | None, train_reasoning: bool | None) -> None:
    """Raise when the template cannot render what ``conv`` holds.

    Raises:
        MissingFeatures: naming the missing features and the fix (``where`` is ``model.chat_template``).
    """
    want = needed(conv, train_reasoning)
    if not want:
        return
    have = template_features(tokenizer, chat_template)
    missing = sorted(f for f in want if not getattr(have, f))
    if missing:
        raise MissingFeatures.of(missing, 1, conv.source or "conversation")
