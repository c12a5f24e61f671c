"""Function-calling metrics: BFCL's AST check, the called names, well-formed calls.

    tunesmith baseline configs/sft/bfcl-live-simple.yaml --set data.path=.../BFCL_v4_live_simple.json

The reference of an example is a ground truth in BFCL's ``possible_answer`` shape, ``[{function: {param:
[acceptable values]}}]``: read from the BFCL answer file, or built from the reference turn's own calls (each value its
only acceptable value). An empty list means no call is expected.

``tool_call_ast`` follows the AST checker of the Berkeley Function Calling Leaderboard
(``bfcl_eval/eval_checker/ast_eval/ast_checker.py``, gorilla, Python rules), re-implemented here:

- one expected call: the reply holds exactly one call, with the expected function name; every parameter the
  function's schema lists as ``required`` is present; no parameter outside the schema's properties or the ground
  truth; each value has the schema's type (an integer is accepted for ``number``/``float``; ``array``/``tuple`` items
  are type-checked one level deep) and is among the acceptable values; a parameter left out must have ``""`` among
  its acceptable values;
- several expected calls (parallel): as many calls, each expected call matched by a distinct one, in any order;
- no expected call: the reply makes no call.

Strings compare after BFCL's normalisation (:func:`standardize`: spaces and ``,./-_*^`` removed, lower case, ``'`` ->
``"``), also inside lists and dictionaries; a dictionary value is checked key by key against each acceptable
dictionary. Where this differs from BFCL's own checker is written in ``docs/tools.md``.
"""

from __future__ import annotations

import re

from tunesmith.data.records import ToolCall

PY_TYPES = {
    "string": str,
    "any": str,
    "integer": int,
    "number": float,
    "float": float,
    "boolean": bool,
    "array": list,
    "tuple": list,
    "object": dict,
    "dict": dict,
}
"""Schema type (JSON Schema or BFCL) -> the Python type of a JSON value that has it."""

_STRIP = re.compile(r"[ ,./\-_*^]")


def standardize(text: str) -> str:
    """BFCL's string normalisation: ``"April 1, 2024"`` -> ``"april12024"``."""
    return _STRIP.sub("", text).lower().replace("'", '"')


def _str(value):
    """A string normalised, anything else as it is (dictionary values)."""
    return standardize(value) if isinstance(value, str) else value


def _norm(value):
    """Strings normalised, also inside a list (one level), for value comparison."""
    if isinstance(value, str):
        return standardize(value)
    if isinstance(value, list):
        return [standardize(v) if isinstance(v, str) else v for v in value]
    return value


def expected_from_calls(calls: list[ToolCall] | None) -> list[dict]:
    """A ground truth in BFCL's shape from reference calls: each argument value is its only acceptable value."""
    return [{c.name: {k: [v] for k, v in c.arguments.items()}} for c in calls or []]


def _spec(tools: list[dict] | None, name: str) -> dict | None:
    for t in tools or []:
        fn = t.get("function", t)
        if fn.get("name") == name:
            return fn.get("parameters") or {}
    return None


def _type_ok(value, want: type | None, items: type | None, answer: list) -> tuple[bool, bool]:
    """(type is acceptable, value is a "variable"): BFCL accepts a value whose type is that of the acceptable values
    when these differ from the schema type (a variable name passed as a string), compared as it is."""
    first = next((a for a in answer if a != ""), None)
    if want is None or type(value) is want:
        if items is not None and isinstance(value, list):
            return all(type(v) is items or (items is float and type(v) is int) for v in value), False
        return True, False
    return (first is not None and type(first) is not want and type(value) is type(first)), True


def _dict_ok(value: dict, answer: list) -> bool:
    for option in (a for a in answer if a != ""):
        if not isinstance(option, dict):
            continue
        keys_ok = all(k in option and _str(v) in [_str(x) for x in option[k]] for k, v in value.items())
        if keys_ok and all(k in value or "" in vals for k, vals in option.items()):
            return True
    return False


def _value_ok(value, want: type | None, items: type | None, answer: list) -> bool:
    if want is dict and isinstance(value, dict):
        return _dict_ok(value, answer)
    if want is list and items is dict and isinstance(value, list):
        return any(
            isinstance(option, list)
            and len(option) == len(value)
            and all(_dict_ok(v, [o]) for v, o in zip(value, option))
            for option in answer
        )
    if isinstance(value, (str, list)):
        return _norm(value) in [_norm(a) for a in answer if type(a) is type(value)]
    return value in answer


def check_call(call: ToolCall, expected: dict, tools: list[dict] | None) -> str | None:
    """BFCL's check of one call against one expected call ``{function: {param: [acceptable values]}}``.

    Returns:
        None when the call passes, else the reason (``wrong function name``, ``missing required parameter 'x'``, ...).
    """
    name, answer = next(iter(expected.items()))
    if call.name != name:
        return f"wrong function name {call.name!r} (expected {name!r})"
    spec = _spec(tools, name)
    props = (spec or {}).get("properties") or {p: {} for p in answer}
    for param in (spec or {}).get("required") or []:
        if param not in call.arguments:
            return f"missing required parameter {param!r}"
    for param, value in call.arguments.items():
        if param not in props or param not in answer:
            return f"unexpected parameter {param!r}"
        kind = props[param].get("type")
        want = PY_TYPES.get(kind)
        items = PY_TYPES.get((props[param].get("items") or {}).get("type")) if want is list else None
        if want is float and type(value) is int:
            value = float(value)
        ok, variable = _type_ok(value, want, items, answer[param])
        if not ok:
            return f"wrong type for {param!r}: {type(value).__name__} (expected {kind})"
        if not (value in answer[param] if variable else _value_ok(value, want, items, answer[param])):
            return f"wrong value for {param!r}: {value!r} (acceptable: {answer[param]})"
    for param, values in answer.items():
        if param not in call.arguments and "" not in values:
            return f"missing parameter {param!r} (no default is acceptable)"
    return None


def ast_check(calls: list[ToolCall], expected: list[dict], tools: list[dict] | None) -> str | None:
    """BFCL's AST check of a reply's calls against the expected calls (simple, parallel in any order, or none).

    Returns:
        None when the reply passes, else the first reason it fails.
    """
    if len(calls) != len(expected):
        return f"{len(calls)} call(s), expected {len(expected)}"
    free = list(range(len(calls)))
    for want in expected:
        reasons = [(k, check_call(calls[k], want, tools)) for k in free]
        match = next((k for k, why in reasons if why is None), None)
        if match is None:
            return reasons[0][1] if len(expected) == 1 else f"no call matches {next(iter(want))!r}"
        free.remove(match)
    return None


def tool_scores(parsed, expected: list[dict], tools: list[dict] | None, metrics) -> dict[str, float]:
    """Per-example ``tool_call_ast``, ``tool_name_accuracy`` and ``tool_call_valid_json`` (those in ``metrics``).

    Args:
        parsed: :class:`tunesmith.render.tool_calls.ParsedReply` of the prediction.
        expected: the ground truth (``[]``: no call expected).
        tools: the example's tool specs (types and required parameters of the AST check).

    Returns:
        ``{metric: 1.0 | 0.0}``: ``tool_name_accuracy`` is 1 when the reply calls exactly the expected functions (any
        order); ``tool_call_valid_json`` is 1 when every call block is a JSON object with a name and object
        arguments, and there is at least one when a call is expected.
    """
    out = {}
    if "tool_call_ast" in metrics:
        out["tool_call_ast"] = float(not parsed.invalid and ast_check(parsed.calls, expected, tools) is None)
    if "tool_name_accuracy" in metrics:
        out["tool_name_accuracy"] = float(
            sorted(c.name for c in parsed.calls) == sorted(next(iter(e)) for e in expected)
        )
    if "tool_call_valid_json" in metrics:
        out["tool_call_valid_json"] = float(not parsed.invalid and (parsed.attempted > 0 or not expected))
    return out
