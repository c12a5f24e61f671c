"""Tool calling in the data: tool schemas, assistant tool calls, typed content parts and BFCL question files.

Shapes read (every problem names the record's ``file:line``):

- ``tools``: a list, or a JSON string holding one (glaive, LLaMA-Factory), of function specs, either OpenAI's
  ``{"type": "function", "function": {"name", "description", "parameters"}}`` or the bare ``{"name", "description",
  "parameters"}``; normalised to OpenAI's shape (what transformers' ``apply_chat_template(tools=...)`` expects).
- a tool call: ``{"name", "arguments"}`` or OpenAI's ``{"id"?, "type": "function", "function": {"name",
  "arguments"}}``, the whole call or its arguments as an object or a JSON string (OpenAI writes arguments as a string).
- typed content parts: ``[{"type": "text"|"reasoning"|"thinking"|"tool_call", "value"|"text"|...: ...}]``
  (``reason_tool_use_demo``): text parts are joined, reasoning parts become ``reasoning_content``, tool_call parts
  become tool calls.
- BFCL question files (Berkeley Function Calling Leaderboard, ``{"id", "question": [[messages]], "function":
  [specs]}``): the question turn and the functions, whose BFCL types (``dict``, ``float``, ``tuple``, ``any``) are
  cast to JSON Schema as BFCL's own OpenAI handler does; with its ``possible_answer`` ground truth (``{"id",
  "ground_truth": [{function: {param: [acceptable values]}}]}``) the reference turn is a call with the first
  acceptable value of each parameter, and the whole ground truth is kept in ``meta["ground_truth"]`` for the
  ``tool_call_ast`` metric.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from tunesmith.data.records import Conversation, Message, ToolCall
from tunesmith.errors import Problem

REASONING_PARTS = ("reasoning", "thinking", "reasoning_content")
"""Content part types (and message keys) read as the assistant's reasoning."""

BFCL_TO_JSON_SCHEMA = {
    "integer": "integer",
    "number": "number",
    "float": "number",
    "double": "number",
    "string": "string",
    "char": "string",
    "any": "string",
    "boolean": "boolean",
    "bool": "boolean",
    "array": "array",
    "list": "array",
    "tuple": "array",
    "dict": "object",
    "object": "object",
}
"""BFCL parameter type -> JSON Schema type (BFCL's ``GORILLA_TO_OPENAPI``, Python subset; unknown types -> string)."""

TOOLS_FIX = 'write tools as a list of {"type": "function", "function": {"name", "description", "parameters"}}'


def _json(value, where: str, label: str, fix: str) -> tuple[object, list[Problem]]:
    """``value`` itself, or the JSON it holds when it is a string."""
    if not isinstance(value, str):
        return value, []
    try:
        return json.loads(value), []
    except ValueError as exc:
        return None, [Problem(where, f"{label} is a string but not JSON ({exc})", fix)]


def normalise_tools(value, where: str, label: str = "tools") -> tuple[list[dict] | None, list[Problem]]:
    """Read a ``tools`` field (a list or a JSON string) into OpenAI-shaped function specs.

    Returns:
        (tools or None when the field is absent or an empty list, problems).
    """
    if value is None:
        return None, []
    value, problems = _json(value, where, label, TOOLS_FIX)
    if problems:
        return None, problems
    if not isinstance(value, list):
        return None, [Problem(where, f"{label} is {type(value).__name__}, not a list of function specs", TOOLS_FIX)]
    out = []
    for k, spec in enumerate(value):
        fn = spec.get("function") if isinstance(spec, dict) and spec.get("type") == "function" else spec
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"].strip():
            problems.append(Problem(where, f"{label}[{k}] has no function name", TOOLS_FIX))
            continue
        if not isinstance(fn.get("parameters", {}), dict):
            problems.append(Problem(where, f"{label}[{k}].parameters is not an object", "give a JSON Schema object"))
            continue
        out.append({"type": "function", "function": fn})
    return (out or None), problems


def parse_tool_call(value, where: str, label: str) -> tuple[ToolCall | None, list[Problem]]:
    """Read one tool call (``{"name", "arguments"}`` or OpenAI's ``{"function": {...}}``; object or JSON string)."""
    fix = 'write the call as {"name": "fn", "arguments": {"arg": "value"}}'
    value, problems = _json(value, where, label, fix)
    if problems:
        return None, problems
    if not isinstance(value, dict):
        return None, [Problem(where, f"{label} is {type(value).__name__}, not a call object", fix)]
    fn = value.get("function") if isinstance(value.get("function"), dict) else value
    name = fn.get("name")
    if not isinstance(name, str) or not name.strip():
        return None, [Problem(where, f"{label} has no function name", fix)]
    args, problems = _json(fn.get("arguments", fn.get("parameters", {})), where, f"{label}.arguments", fix)
    if problems:
        return None, problems
    if not isinstance(args, dict):
        return None, [Problem(where, f"{label}.arguments is {type(args).__name__}, not an object", fix)]
    call_id = value.get("id")
    return ToolCall(name, args, str(call_id) if call_id is not None else None), []


def parse_tool_calls(value, where: str, label: str) -> tuple[list[ToolCall], list[Problem]]:
    """Read a list of tool calls (or one call, or a JSON string of either)."""
    value, problems = _json(value, where, label, 'write [{"name": "fn", "arguments": {...}}]')
    if problems:
        return [], problems
    calls, items = [], value if isinstance(value, list) else [value]
    for k, item in enumerate(items):
        call, probs = parse_tool_call(item, where, f"{label}[{k}]" if isinstance(value, list) else label)
        problems += probs
        calls += [call] if call else []
    return calls, problems


def typed_parts(content: list, where: str, label: str) -> tuple[str, str | None, list[ToolCall], list[Problem]]:
    """Split a list of typed content parts into (text, reasoning or None, tool calls, problems).

    Text parts are joined as they are; several reasoning parts are joined with a blank line. Any other part type
    (``image_url``, ``audio``, ...) is a problem: tunesmith never drops part of a record silently.
    """
    texts, reasoning, calls, problems = [], [], [], []
    for k, part in enumerate(content):
        kind = part.get("type")
        value = next((part[key] for key in ("value", "text", kind, "content") if isinstance(part.get(key), str)), None)
        if kind == "tool_call":
            call, probs = parse_tool_call(
                part.get("value", part.get("tool_call", part)), where, f"{label}[{k}].tool_call"
            )
            problems += probs
            calls += [call] if call else []
        elif kind in ("text", *REASONING_PARTS) and value is None:
            problems.append(
                Problem(where, f"{label}[{k}] ({kind}) has no string value", "give the part a string value")
            )
        elif kind == "text":
            texts.append(value)
        elif kind in REASONING_PARTS:
            reasoning.append(value)
        else:
            problems.append(
                Problem(
                    where,
                    f"{label}[{k}] is a content part of type {kind!r}; tunesmith trains text, reasoning and tool calls",
                    "keep text, reasoning and tool_call parts only, or use --skip-invalid",
                )
            )
    return "".join(texts), ("\n\n".join(reasoning) if reasoning else None), calls, problems


def cast_bfcl_schema(params: dict) -> dict:
    """A copy of a BFCL ``parameters`` object with JSON Schema types (``dict`` -> ``object``, ``float`` -> ``number``
    plus BFCL's note "This is a float type value." in the description, ``tuple`` -> ``array``, ``any`` -> ``string``),
    recursively through ``properties`` and ``items``."""
    out = copy.deepcopy(params)

    def cast(node: dict) -> None:
        kind = node.get("type")
        if kind == "float":
            node["format"] = "float"
            node["description"] = (node.get("description") or "") + " This is a float type value."
        if kind is not None or node is not out:
            node["type"] = BFCL_TO_JSON_SCHEMA.get(kind, "string")
        for child in (node.get("properties") or {}).values():
            if isinstance(child, dict):
                cast(child)
        if isinstance(node.get("items"), dict):
            cast(node["items"])

    cast(out)
    return out


def _first_value(values: list) -> tuple[bool, object]:
    """(found, value): the first acceptable value that is neither ``""`` (may be omitted) nor None, made concrete."""
    for v in values:
        if v != "" and v is not None:
            return True, _concrete(v)
    return False, None


def _concrete(value):
    """An acceptable value as a call would pass it: BFCL writes a dictionary value as ``{key: [acceptable values]}``
    (and a list of them for a list of dictionaries)."""
    if isinstance(value, dict):
        picked = {k: _first_value(v) if isinstance(v, list) else (True, v) for k, v in value.items()}
        return {k: v for k, (found, v) in picked.items() if found}
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return [_concrete(v) for v in value]
    return value


def bfcl_reference_call(ground_truth: list) -> list[ToolCall]:
    """The calls of a BFCL ground truth, each parameter set to its first acceptable value that is neither ``""`` nor
    None (dictionary values built the same way, key by key); a parameter with no such value (optional, or a few
    live_simple answers that list none) is left out."""
    calls = []
    for entry in ground_truth:
        for name, params in entry.items():
            picked = {p: _first_value(values) for p, values in params.items()}
            calls.append(ToolCall(name, {p: v for p, (found, v) in picked.items() if found}))
    return calls


def check_ground_truth(value, where: str) -> list[Problem]:
    """Problems of a BFCL ``ground_truth`` value: a list of ``{function: {param: [acceptable values]}}``."""
    fix = 'write ground_truth as [{"function_name": {"param": [value, ...]}}]'
    if not isinstance(value, list) or not value:
        return [Problem(where, "ground_truth is not a non-empty list", fix)]
    for k, entry in enumerate(value):
        if not isinstance(entry, dict) or len(entry) != 1:
            return [Problem(where, f"ground_truth[{k}] is not an object with one function name", fix)]
        params = next(iter(entry.values()))
        if not isinstance(params, dict) or not all(isinstance(v, list) for v in params.values()):
            return [Problem(where, f"ground_truth[{k}] does not map each parameter to a list of values", fix)]
    return []


def from_bfcl(record: dict, where: str, columns: dict) -> tuple[Conversation | None, list[Problem]]:
    """Convert one BFCL question record (with ``ground_truth`` merged in from the answer file, when given)."""
    question, functions = record.get("question"), record.get("function")
    fix = 'a BFCL record is {"id", "question": [[{"role", "content"}]], "function": [{"name", "parameters"}]}'
    if not isinstance(question, list) or not question or not all(isinstance(t, list) for t in question):
        return None, [Problem(where, "question is not a list of turns (each a list of messages)", fix)]
    if len(question) > 1:
        return None, [
            Problem(
                where,
                f"question has {len(question)} turns; multi-turn BFCL categories need the functions executed between "
                "turns, which tunesmith does not do",
                "use single-turn categories (simple, multiple, parallel, live_*)",
            )
        ]
    if not isinstance(functions, list) or not functions:
        return None, [Problem(where, "function is not a non-empty list of function specs", fix)]
    specs = [
        {**f, "parameters": cast_bfcl_schema(f["parameters"])}
        if isinstance(f, dict) and isinstance(f.get("parameters"), dict)
        else f
        for f in functions
    ]
    tools, problems = normalise_tools(specs, where, "function")
    msgs = []
    for k, m in enumerate(question[0]):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            problems.append(Problem(where, f"question[0][{k}] has no string content", fix))
            continue
        msgs.append(Message(str(m.get("role")), m["content"]))
    meta = {"id": record.get("id")}
    truth = record.get("ground_truth")
    if truth is not None:
        problems += check_ground_truth(truth, where)
        if not problems:
            msgs.append(Message("assistant", "", tool_calls=bfcl_reference_call(truth)))
            meta["ground_truth"] = truth
    return Conversation(msgs, where, meta, tools=tools), problems


def answers_path_for(path: str | Path) -> Path:
    """Where BFCL keeps the answers of a question file: ``possible_answer/<same name>`` beside it."""
    p = Path(path)
    return p.parent / "possible_answer" / p.name


def attach_bfcl_answers(records: list[tuple[str, object]], answers: list[tuple[str, object]], answers_name: str):
    """Merge each answer record's ``ground_truth`` into the question record with the same ``id``.

    Args:
        records: ``(where, question record)`` pairs.
        answers: ``(where, answer record)`` pairs of the answer file.
        answers_name: the answer file's path, for messages.

    Returns:
        (records with ``ground_truth`` merged into copies, problems: malformed answer lines and questions without an
        answer, each with its ``file:line``).
    """
    truth, problems = {}, []
    for where, obj in answers:
        if not isinstance(obj, dict) or "id" not in obj or "ground_truth" not in obj:
            problems.append(
                Problem(where, "an answer record needs id and ground_truth", 'write {"id", "ground_truth"}')
            )
            continue
        truth[obj["id"]] = obj["ground_truth"]
    out = []
    for where, obj in records:
        if isinstance(obj, dict) and obj.get("id") in truth:
            obj = {**obj, "ground_truth": truth[obj["id"]]}
        elif isinstance(obj, dict) and "ground_truth" not in obj:
            problems.append(
                Problem(where, f"no ground truth for id {obj.get('id')!r} in {answers_name}", "add its answer line")
            )
        out.append((where, obj))
    return out, problems
