"""Tool calls in generated text: parse them back out, and write them in a template's layout.

The one parser behind ``tunesmith generate``, ``chat --tools``, ``eval`` (the ``tool_call_*`` metrics) and the export
check. Two layouts:

- ``hermes``: templates that write calls as ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (the built-in
  ``chatml-tools``, Qwen2.5, Hermes). Every block is one call; text outside the blocks is the reply's content; a
  ``<think>...</think>`` block is its reasoning. A block that is not a JSON object with a string ``name`` and an
  object (or JSON-string) ``arguments`` is an invalid call; so is a ``<tool_call>`` left open at the end.
- ``json``: templates without call markup: the whole reply is a call object, or a list of them, or plain content.

    tunesmith chat --model runs/tools-glaive --tools tools.json     # prints each parsed call
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from tunesmith.data.records import ToolCall

_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.S)
_THINK = re.compile(r"<think>(.*?)(?:</think>|\Z)", re.S)


@dataclass
class ParsedReply:
    """A generated reply split into content, reasoning and tool calls.

    Attributes:
        content: the text outside tool-call and reasoning blocks, stripped.
        calls: the well-formed calls, in order.
        invalid: the raw payloads of malformed call blocks.
        reasoning: the text of a ``<think>`` block, or None.
    """

    content: str
    calls: list[ToolCall] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    reasoning: str | None = None

    @property
    def attempted(self) -> int:
        """Call blocks found, well-formed or not."""
        return len(self.calls) + len(self.invalid)

    def to_json(self) -> list[dict]:
        """The calls as ``[{"name", "arguments"}]`` (for JSONL output)."""
        return [{"name": c.name, "arguments": c.arguments} for c in self.calls]


def call_format(chat_template: str | None) -> str:
    """``hermes`` when the template writes ``<tool_call>`` blocks, else ``json``."""
    return "hermes" if chat_template and "<tool_call>" in chat_template else "json"


def _as_call(payload) -> ToolCall | None:
    """A call object (``{"name", "arguments"|"parameters"}``, arguments an object or a JSON string), else None."""
    if not isinstance(payload, dict) or not isinstance(payload.get("name"), str):
        return None
    args = payload.get("arguments", payload.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    return ToolCall(payload["name"], args) if isinstance(args, dict) else None


def _loads(text: str):
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def parse_reply(text: str, fmt: str = "hermes") -> ParsedReply:
    """Split a generated reply (special tokens already removed) into content, reasoning and tool calls.

    Args:
        text: the decoded reply.
        fmt: ``hermes`` or ``json`` (:func:`call_format` of the chat template).

    Returns:
        :class:`ParsedReply`.
    """
    think = _THINK.search(text)
    reasoning = think.group(1).strip() if think else None
    rest = _THINK.sub("", text) if think else text
    if fmt == "json":
        value = _loads(rest.strip())
        items = value if isinstance(value, list) and value else [value]
        calls = [_as_call(v) for v in items]
        if value is not None and all(calls):
            return ParsedReply("", calls, [], reasoning)
        return ParsedReply(rest.strip(), [], [], reasoning)
    calls, invalid = [], []
    for block in _BLOCK.findall(rest):
        call = _as_call(_loads(block.strip()))
        if call is None:
            invalid.append(block.strip())
        else:
            calls.append(call)
    return ParsedReply(_BLOCK.sub("", rest).strip(), calls, invalid, reasoning)


def format_calls(calls: list[ToolCall], fmt: str = "hermes") -> str:
    """The calls written in a layout (for display, and as reference text): ``hermes`` blocks, or one JSON object
    (a list for several calls)."""
    objs = [{"name": c.name, "arguments": c.arguments} for c in calls]
    if fmt == "json":
        return json.dumps(objs[0] if len(objs) == 1 else objs, ensure_ascii=False)
    return "\n".join(f"<tool_call>\n{json.dumps(o, ensure_ascii=False)}\n</tool_call>" for o in objs)
