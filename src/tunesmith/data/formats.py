"""Convert records of every common SFT data format into the canonical :class:`Conversation`.

Formats (``data.format``; ``auto`` detects from the record's keys):

- ``messages``: OpenAI chat fine-tuning JSONL, ``{"messages": [{"role", "content", "weight"?, "name"?}], "tools"?}``,
  with assistant ``tool_calls`` and ``reasoning_content``, and ``tool`` turns with ``tool_call_id``/``name``.
  Content may also be a list of typed parts (``text``, ``reasoning``, ``tool_call``: ``reason_tool_use_demo``);
  any other part type (``image_url``, ...) is reported, never silently dropped.
- ``sharegpt``: ``{"conversations": [{"from": "human"|"gpt"|"system"|..., "value": "..."}], "tools"?}``
  (roles mapped by :data:`SHAREGPT_ROLES`; glaive's ``function_call`` turns are assistant tool calls, its
  ``observation`` turns tool results, ``tools`` may be a JSON string); an optional record-level ``system`` string.
- ``alpaca``: ``{"instruction", "input"?, "output"}`` (``response`` accepted for ``output``);
  the user turn is the instruction, plus a blank line and the input when the input is non-empty.
- ``prompt_completion``: ``{"prompt", "completion"}``.  Plain strings give a ``completion``
  record (completion-only loss, EOS appended once, no chat template, as TRL does); lists of
  messages give a conversation whose prompt turns are masked (completion-only loss).
- ``text``: ``{"text"}``, language-modelling loss on every token (EOS appended once).
- ``oasst``: an OpenAssistant message tree (``prompt`` with nested ``replies``), linearised along
  the best-ranked reply (``rank == 0``, else the first non-deleted one).
- ``bfcl``: a Berkeley Function Calling Leaderboard question record (``question`` + ``function``); the reference is
  the ground-truth call of its ``possible_answer`` file (:mod:`tunesmith.data.tool_formats`).

Tool schemas, tool calls and reasoning are read by :mod:`tunesmith.data.tool_formats`.

``data.columns`` maps a canonical field to your column name, e.g. ``{output: response, system: sys}``.
A ``system`` column, when present, adds a system turn to conversations that have none.
"""

from __future__ import annotations

from tunesmith.data.records import ROLES, TOO_LONG_FIX, Conversation, Message, too_long
from tunesmith.data.tool_formats import (
    REASONING_PARTS,
    from_bfcl,
    normalise_tools,
    parse_tool_calls,
    typed_parts,
)
from tunesmith.errors import Problem

FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion", "text", "oasst", "bfcl")
"""Formats :func:`to_conversation` understands."""

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "system": "system",
    "function_call": "assistant",
    "tool": "tool",
    "observation": "tool",
    "function_response": "tool",
}
"""ShareGPT ``from`` value -> canonical role (``function_call`` is the assistant calling a tool,
``observation`` the tool's result, as in glaive / LLaMA-Factory data)."""

ALIASES = {"output": ("response", "answer"), "instruction": ("question", "query")}
"""Column names accepted for a canonical field when the canonical one is absent."""


def _col(record: dict, name: str, columns: dict[str, str]):
    """Value of canonical field ``name`` (mapped through ``columns``, then aliases), or None."""
    if name in columns:
        return record.get(columns[name])
    if name in record:
        return record[name]
    return next((record[a] for a in ALIASES.get(name, ()) if a in record), None)


def detect_format(record, columns: dict[str, str] | None = None) -> str | None:
    """Guess the format of one record from its keys (after the column mapping).

    Returns:
        One of :data:`FORMATS`, or None when no format matches.
    """
    if not isinstance(record, dict):
        return None
    columns = columns or {}
    has = lambda name: _col(record, name, columns) is not None  # noqa: E731
    if has("messages"):
        return "messages"
    if has("conversations"):
        return "sharegpt"
    if has("prompt") and has("completion"):
        return "prompt_completion"
    if has("instruction") and has("output"):
        return "alpaca"
    if "message_tree_id" in record and isinstance(record.get("prompt"), dict):
        return "oasst"
    if "question" in record and "function" in record:
        return "bfcl"
    if has("text"):
        return "text"
    return None


def to_conversation(
    record, fmt: str, where: str, columns: dict[str, str] | None = None
) -> tuple[Conversation | None, list[Problem]]:
    """Convert one record of format ``fmt`` and validate it.

    Args:
        record: the parsed record (a dict).
        fmt: one of :data:`FORMATS`.
        where: ``"path:line"`` of the record, put on every problem.
        columns: the ``data.columns`` mapping.

    Returns:
        (conversation, problems): the conversation is None when there is any problem.
    """
    columns = columns or {}
    if not isinstance(record, dict):
        return None, [
            Problem(where, f"record is a {type(record).__name__}, not an object", "write one JSON object per record")
        ]
    conv, problems = _CONVERTERS[fmt](record, where, columns)
    if conv is not None and not problems:
        problems = validate(conv)
    return (conv if not problems else None), problems


def _content(content, where: str, label: str) -> tuple[str | None, str | None, list, list[Problem]]:
    """(text, reasoning, tool calls, problems) of a message's content: a string, or a list of typed parts."""
    if isinstance(content, str):
        return content, None, [], []
    if isinstance(content, list) and content and all(isinstance(p, dict) for p in content):
        return typed_parts(content, where, label)
    return (
        None,
        None,
        [],
        [Problem(where, f"{label} is {type(content).__name__}, not a string", "write the content as a string")],
    )


def message_from(m: dict, where: str, label: str) -> tuple[Message, list[Problem]]:
    """One OpenAI-style message: content (string or typed parts), weight, name, tool_calls, tool_call_id, reasoning."""
    role = str(m.get("role"))
    calls_raw = m.get("tool_calls")
    no_content = m.get("content") is None and bool(calls_raw)  # OpenAI writes content null beside tool_calls
    content, reasoning, calls, problems = _content("" if no_content else m.get("content"), where, f"{label}.content")
    if calls_raw is not None:
        more, probs = parse_tool_calls(calls_raw, where, f"{label}.tool_calls")
        calls, problems = calls + more, problems + probs
    for key in REASONING_PARTS:
        if isinstance(m.get(key), str) and m[key].strip():
            reasoning = m[key] if reasoning is None else f"{m[key]}\n\n{reasoning}"
    weight = m.get("weight")
    if weight is not None and weight not in (0, 1):
        problems.append(Problem(where, f"{label}.weight is {weight!r}", "weight is 0 (masked) or 1 (trained)"))
    call_id = m.get("tool_call_id")
    msg = Message(
        role,
        content or "",
        weight,
        m.get("name"),
        tool_calls=calls or None,
        tool_call_id=str(call_id) if call_id is not None else None,
        reasoning_content=reasoning,
    )
    return msg, problems


def _from_messages(
    record: dict, where: str, columns: dict, key: str = "messages"
) -> tuple[Conversation | None, list[Problem]]:
    raw = _col(record, key, columns)
    if not isinstance(raw, list):
        return None, [
            Problem(
                where,
                f"'{columns.get(key, key)}' is not a list of messages",
                'write {"messages": [{"role": "user", "content": "..."}, ...]}',
            )
        ]
    msgs, problems = [], []
    for k, m in enumerate(raw):
        label = f"{key}[{k}]"
        if not isinstance(m, dict):
            problems.append(Problem(where, f"{label} is not an object", "each message is {role, content}"))
            continue
        msg, probs = message_from(m, where, label)
        msgs.append(msg)
        problems += probs
    tools, probs = normalise_tools(_col(record, "tools", columns), where)
    conv = Conversation(msgs, where, _meta(record, columns, key, "tools"), tools=tools)
    return _with_system(conv, record, columns), problems + probs


def _from_sharegpt(record: dict, where: str, columns: dict) -> tuple[Conversation | None, list[Problem]]:
    raw = _col(record, "conversations", columns)
    if not isinstance(raw, list):
        return None, [
            Problem(
                where,
                "'conversations' is not a list",
                'write {"conversations": [{"from": "human", "value": "..."}, ...]}',
            )
        ]
    msgs, problems = [], []
    for k, m in enumerate(raw):
        if not isinstance(m, dict):
            problems.append(Problem(where, f"conversations[{k}] is not an object", "each turn is {from, value}"))
            continue
        who = m.get("from", m.get("role"))
        role = SHAREGPT_ROLES.get(str(who).lower())
        if role is None:
            problems.append(
                Problem(
                    where,
                    f"conversations[{k}] has unknown role {who!r}",
                    f"use one of {', '.join(sorted(SHAREGPT_ROLES))}",
                )
            )
            role = str(who)
        value, label = m.get("value", m.get("content")), f"conversations[{k}].value"
        if str(who).lower() == "function_call":
            calls, probs = parse_tool_calls(value, where, label)
            msgs.append(Message("assistant", "", m.get("weight"), tool_calls=calls or None))
        else:
            content, reasoning, calls, probs = _content(value, where, label)
            msgs.append(
                Message(role, content or "", m.get("weight"), tool_calls=calls or None, reasoning_content=reasoning)
            )
        problems += probs
    tools, probs = normalise_tools(_col(record, "tools", columns), where)
    conv = Conversation(msgs, where, _meta(record, columns, "conversations", "tools"), tools=tools)
    return _with_system(conv, record, columns), problems + probs


def _from_alpaca(record: dict, where: str, columns: dict) -> tuple[Conversation | None, list[Problem]]:
    problems = []
    fields = {}
    for name in ("instruction", "input", "output"):
        value = _col(record, name, columns)
        if value is not None and not isinstance(value, str):
            problems.append(Problem(where, f"{name} is {type(value).__name__}, not a string", "write it as a string"))
        fields[name] = value if isinstance(value, str) else ""
    user = fields["instruction"] + (f"\n\n{fields['input']}" if fields["input"].strip() else "")
    conv = Conversation(
        [Message("user", user), Message("assistant", fields["output"])],
        where,
        _meta(record, columns, "instruction", "input", "output"),
    )
    return _with_system(conv, record, columns), problems


def _from_prompt_completion(record: dict, where: str, columns: dict) -> tuple[Conversation | None, list[Problem]]:
    prompt, completion = _col(record, "prompt", columns), _col(record, "completion", columns)
    meta = _meta(record, columns, "prompt", "completion")
    if isinstance(prompt, str) and isinstance(completion, str):
        return Conversation(
            [Message("user", prompt), Message("assistant", completion)], where, meta, kind="completion"
        ), []
    if isinstance(prompt, list) and isinstance(completion, list):
        p, probs1 = _from_messages({"messages": prompt}, where, {}, "messages")
        c, probs2 = _from_messages({"messages": completion}, where, {}, "messages")
        if probs1 or probs2:
            return None, [
                Problem(pr.where, pr.reason.replace("messages[", f"{part}[", 1), pr.fix)
                for part, probs in (("prompt", probs1), ("completion", probs2))
                for pr in probs
            ]
        for m in p.messages:
            if m.role == "assistant":
                m.weight = 0  # completion-only loss: assistant turns of the prompt are context
        return _with_system(Conversation(p.messages + c.messages, where, meta), record, columns), []
    return None, [
        Problem(
            where,
            f"prompt is {type(prompt).__name__} and completion is {type(completion).__name__}",
            "give both as strings (plain) or both as lists of messages (conversational)",
        )
    ]


def _from_text(record: dict, where: str, columns: dict) -> tuple[Conversation | None, list[Problem]]:
    text = _col(record, "text", columns)
    if not isinstance(text, str):
        return None, [Problem(where, f"text is {type(text).__name__}, not a string", "write the text as a string")]
    return Conversation([Message("assistant", text)], where, _meta(record, columns, "text"), kind="text"), []


def _from_oasst(record: dict, where: str, columns: dict) -> tuple[Conversation | None, list[Problem]]:
    node, msgs = record.get("prompt"), []
    while isinstance(node, dict):
        role = {"prompter": "user", "assistant": "assistant"}.get(node.get("role"), str(node.get("role")))
        msgs.append(Message(role, node.get("text") if isinstance(node.get("text"), str) else ""))
        replies = [r for r in node.get("replies") or [] if isinstance(r, dict) and not r.get("deleted")]
        node = min(replies, key=lambda r: r.get("rank") if r.get("rank") is not None else 1e9, default=None)
    while msgs and msgs[-1].role != "assistant":
        msgs.pop()
    return Conversation(msgs, where, {"message_tree_id": record.get("message_tree_id")}), []


_CONVERTERS = {
    "messages": _from_messages,
    "sharegpt": _from_sharegpt,
    "alpaca": _from_alpaca,
    "prompt_completion": _from_prompt_completion,
    "text": _from_text,
    "oasst": _from_oasst,
    "bfcl": from_bfcl,
}


def _meta(record: dict, columns: dict, *used: str) -> dict:
    skip = (
        {columns.get(u, u) for u in used}
        | {a for u in used for a in ALIASES.get(u, ())}
        | {columns.get("system", "system")}
    )
    return {k: v for k, v in record.items() if k not in skip}


def _with_system(conv: Conversation, record: dict, columns: dict) -> Conversation:
    system = _col(record, "system", columns)
    if isinstance(system, str) and system.strip() and not (conv.messages and conv.messages[0].role == "system"):
        conv.messages.insert(0, Message("system", system))
    return conv


def validate(conv: Conversation) -> list[Problem]:
    """Check roles, contents and that something is trained; every problem names ``conv.source``.

    Returns:
        Problems (empty when valid): a message longer than :data:`~tunesmith.data.records.MAX_TEXT_CHARS`, unknown
        role, empty content (an assistant turn may be only tool calls), tool calls outside assistant turns or naming
        an undeclared tool, a tool result after no call, no assistant turn, every assistant turn weighted 0.
        Consecutive same-role turns are checked later by rendering through the chat template
        (:func:`tunesmith.render.rows.render_all`), since only some templates refuse them.
    """
    where = conv.source
    problems = [
        Problem(where, reason, TOO_LONG_FIX)
        for k, m in enumerate(conv.messages)
        if (reason := too_long(m.content, "text" if conv.kind == "text" else f"turn {k} ({m.role})"))
    ]
    if problems:
        return problems
    if conv.kind == "text":
        return (
            []
            if conv.messages[0].content.strip()
            else [Problem(where, "text is empty", "remove the record or give it text")]
        )
    declared = {t["function"]["name"] for t in conv.tools or []}
    for k, m in enumerate(conv.messages):
        if m.role not in ROLES:
            problems.append(Problem(where, f"turn {k} has unknown role {m.role!r}", f"use one of {', '.join(ROLES)}"))
        if not m.content.strip() and not m.tool_calls:
            problems.append(Problem(where, f"turn {k} ({m.role}) has empty content", "remove the turn or give it text"))
        if m.tool_calls and m.role != "assistant":
            problems.append(Problem(where, f"turn {k} ({m.role}) has tool calls", "only assistant turns call tools"))
        for c in m.tool_calls or []:
            if declared and c.name not in declared:
                problems.append(
                    Problem(
                        where,
                        f"turn {k} calls {c.name!r}, which is not among the conversation's tools "
                        f"({', '.join(sorted(declared))})",
                        "add its spec to tools, or fix the call's name",
                    )
                )
        if m.role == "tool" and not (k and (conv.messages[k - 1].tool_calls or conv.messages[k - 1].role == "tool")):
            problems.append(
                Problem(
                    where, f"turn {k} is a tool result that follows no tool call", "put it after the call it answers"
                )
            )
    assistants = [m for m in conv.messages if m.role == "assistant"]
    if not assistants:
        problems.append(
            Problem(where, "conversation has no assistant turn, so nothing would be trained", "add an assistant reply")
        )
    elif all(m.weight == 0 for m in assistants):
        problems.append(
            Problem(
                where,
                "every assistant turn has weight 0, so nothing would be trained",
                "set weight 1 on the replies to learn",
            )
        )
    return problems
