"""A small Python emulation of Go's ``text/template``, as far as the Ollama TEMPLATEs tunesmith writes use it
(:mod:`tunesmith.export.ollama`), so the export's consistency check can render them without Ollama.

Emulated: text and ``{{ ... }}`` actions with ``{{-``/``-}}`` whitespace trimming; ``if``/``else if``/``else``,
``range`` (``$i, $x :=`` / ``$x :=``), ``with``, ``end``; variables (``$x := ...``, ``$x = ...``, ``$``); fields
(``.Messages``, ``.Function.Name``, ``(index .Messages 0).Role``) looked up in dicts by their Go name, else its
snake_case (``ToolCalls`` -> ``tool_calls``); string and integer literals; the functions ``eq ne and or not len index
slice`` and Ollama's ``json``. Go's truth (false, 0, nil and empty strings/lists/maps are false) and the lazy
``and``/``or`` of Go 1.18. Not emulated: pipes with ``|``, ``define``/``template``/``block``, other functions; they
raise ``ValueError``.

``json`` approximates Go's ``encoding/json`` on maps (compact, keys sorted, ``<>&`` escaped); Ollama marshals its own
structs (field order, dropped unknown fields), which the emulation does not reproduce.
"""

from __future__ import annotations

import json
import re

_ACTION = re.compile(r"\{\{(-\s)?\s*(.*?)\s*(\s-)?\}\}", re.S)
_TOKEN = re.compile(
    r'\s*("(?:[^"\\]|\\.)*"|\(|\)|[-+]?\d+|\$\w*(?:\.[A-Za-z_]\w*)*|\.(?:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)?|[A-Za-z_]\w*)'
)


def go_json(value) -> str:
    """Ollama's template function ``json``, approximated: compact, map keys sorted, ``<``, ``>``, ``&`` escaped."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _truth(v) -> bool:
    return v is not None and v is not False and v != 0 and not (isinstance(v, (str, list, tuple, dict)) and not v)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _field(obj, name: str):
    if obj is None:
        return None
    if isinstance(obj, dict):
        for key in (name, _snake(name)):
            if key in obj:
                return obj[key]
        return None
    raise ValueError(f"field .{name} of a {type(obj).__name__}")


def _lex(template: str) -> list:
    """Text (str) and action (tuple of the action's words) items, whitespace trimmed as the dashes say."""
    items, pos, trim_next = [], 0, False
    for m in _ACTION.finditer(template):
        text = template[pos : m.start()]
        text = text.lstrip() if trim_next else text
        items.append(text.rstrip() if m.group(1) else text)
        items.append(m.group(2))
        pos, trim_next = m.end(), bool(m.group(3))
    tail = template[pos:]
    items.append(tail.lstrip() if trim_next else tail)
    return items


def _tokens(expr: str) -> list[str]:
    out, pos = [], 0
    expr = expr.strip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None or not m.group(1):
            raise ValueError(f"cannot read {expr[pos:]!r} in a Go template action")
        out.append(m.group(1))
        pos = m.end()
        while pos < len(expr) and expr[pos].isspace():
            pos += 1
    return out


def _parse_body(items: list, k: int, stop: tuple[str, ...]) -> tuple[list, int, str]:
    """Nodes up to an action starting with one of ``stop``; returns (nodes, index after it, that action)."""
    nodes = []
    while k < len(items):
        item = items[k]
        if k % 2 == 0:  # text
            nodes.append(("text", item))
            k += 1
            continue
        head = item.split(None, 1)[0] if item else ""
        if item == "end" or head == "else":
            if not stop:
                raise ValueError(f"unexpected {{{{ {item} }}}}")
            return nodes, k + 1, item
        if head in ("if", "with", "range"):
            node, k = _parse_block(items, k, head, item[len(head) :].strip())
            nodes.append(node)
        elif head in ("define", "template", "block"):
            raise ValueError(f"{{{{ {head} }}}} is not emulated")
        else:
            nodes.append(("action", item))
            k += 1
    if stop:
        raise ValueError("missing {{ end }}")
    return nodes, k, ""


def _parse_block(items: list, k: int, kind: str, pipe: str) -> tuple[tuple, int]:
    branches = []
    while True:
        body, k, closer = _parse_body(items, k + 1, ("end", "else"))
        branches.append((pipe, body))
        if closer == "end":
            return (kind, branches, []), k
        rest = closer[len("else") :].strip()
        if rest.startswith(kind + " ") and kind != "range":  # else if / else with
            pipe, k = rest[len(kind) :].strip(), k - 1
            continue
        if rest:
            raise ValueError(f"{{{{ {closer} }}}} is not emulated")
        other, k, closer = _parse_body(items, k, ("end",))
        if closer != "end":
            raise ValueError("{{ else }} after {{ else }}")
        return (kind, branches, other), k


class _Scope:
    def __init__(self, root):
        self.frames: list[dict] = [{"$": root}]

    def get(self, name: str):
        for frame in reversed(self.frames):
            if name in frame:
                return frame[name]
        raise ValueError(f"undefined variable {name}")

    def set(self, name: str, value) -> None:
        for frame in reversed(self.frames):
            if name in frame:
                frame[name] = value
                return
        raise ValueError(f"undefined variable {name}")


_FUNCS = {
    "eq": lambda a, *bs: any(a == b for b in bs),
    "ne": lambda a, b: a != b,
    "not": lambda a: not _truth(a),
    "len": lambda a: len(a or []),
    "index": lambda a, *ks: _index(a, ks),
    "slice": lambda a, i=0, j=None: list(a or [])[i:j],
    "json": go_json,
}


def _index(a, keys):
    for key in keys:
        a = a[key]
    return a


class _Eval:
    def __init__(self, root):
        self.scope, self.out = _Scope(root), []

    def operand(self, toks: list[str], k: int, dot) -> tuple:
        """One operand at ``toks[k]`` (with a field chain after a parenthesised pipeline); returns (value, next k)."""
        tok = toks[k]
        if tok == "(":
            depth, j = 1, k + 1
            while depth:
                depth += {"(": 1, ")": -1}.get(toks[j], 0)
                j += 1
            value = self.command(toks[k + 1 : j - 1], dot)
            while j < len(toks) and toks[j].startswith(".") and toks[j] != ".":
                for name in toks[j][1:].split("."):
                    value = _field(value, name)
                j += 1
            return value, j
        if tok.startswith('"'):
            return json.loads(tok), k + 1
        if re.fullmatch(r"[-+]?\d+", tok):
            return int(tok), k + 1
        if tok in ("true", "false", "nil"):
            return {"true": True, "false": False, "nil": None}[tok], k + 1
        if tok.startswith("$") or tok.startswith("."):
            var, _, chain = tok.partition(".") if tok.startswith("$") else ("", "", tok[1:])
            value = self.scope.get(var) if var else dot
            for name in filter(None, chain.split(".")):
                value = _field(value, name)
            return value, k + 1
        raise ValueError(f"{tok!r} is not emulated")

    def command(self, toks: list[str], dot):
        """A command: a function with its arguments (``and``/``or`` evaluated lazily), or one operand."""
        if not toks:
            raise ValueError("empty Go template command")
        if toks[0] in ("and", "or"):
            k, value = 1, None
            while k < len(toks):
                value, k = self.operand(toks, k, dot)
                if _truth(value) == (toks[0] == "or"):
                    return value
            return value
        if toks[0] in _FUNCS:
            args, k = [], 1
            while k < len(toks):
                value, k = self.operand(toks, k, dot)
                args.append(value)
            return _FUNCS[toks[0]](*args)
        value, k = self.operand(toks, 0, dot)
        if k != len(toks):
            raise ValueError(f"cannot evaluate {' '.join(toks)!r} (function not emulated)")
        return value

    def pipe(self, text: str, dot):
        """A pipeline without ``|``; ``$x := ...`` declares, ``$x = ...`` assigns (both print nothing)."""
        if "|" in re.sub(r'"(?:[^"\\]|\\.)*"', "", text):
            raise ValueError("pipes with | are not emulated")
        m = re.fullmatch(r"(\$\w*)\s*(:?=)\s*(.*)", text, re.S)
        if m is None:
            return self.command(_tokens(text), dot), None
        value = self.command(_tokens(m.group(3)), dot)
        if m.group(2) == ":=":
            self.scope.frames[-1][m.group(1)] = value
        else:
            self.scope.set(m.group(1), value)
        return value, m.group(1)

    def run(self, nodes: list, dot) -> None:
        """Execute ``nodes`` with ``dot`` as ``.``, appending the text to ``self.out``."""
        for node in nodes:
            if node[0] == "text":
                self.out.append(node[1])
            elif node[0] == "action":
                value, assigned = self.pipe(node[1], dot)
                if assigned is None:
                    self.out.append(self.show(value))
            elif node[0] == "range":
                self.range(node, dot)
            else:
                self.branch(node, dot)

    def show(self, value) -> str:
        """How Go prints a value: strings as they are, numbers and booleans as Go writes them, None (a field the dict
        lacks: the zero value of an Ollama struct field) as nothing."""
        if value is None:
            return ""
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (str, int, float)):
            return str(value)
        raise ValueError(f"printing a {type(value).__name__} is not emulated")

    def branch(self, node, dot) -> None:
        kind, branches, other = node
        self.scope.frames.append({})
        try:
            for pipe, body in branches:
                value, _ = self.pipe(pipe, dot)
                if _truth(value):
                    self.run(body, value if kind == "with" else dot)
                    return
            self.run(other, dot)
        finally:
            self.scope.frames.pop()

    def range(self, node, dot) -> None:
        _, [(pipe, body)], other = node
        m = re.fullmatch(r"(\$\w*)(?:\s*,\s*(\$\w*))?\s*:=\s*(.*)", pipe, re.S)
        names, expr = ((m.group(1), m.group(2)), m.group(3)) if m else ((None, None), pipe)
        items = self.command(_tokens(expr), dot)
        pairs = list(items.items()) if isinstance(items, dict) else list(enumerate(items or []))
        if not pairs:
            self.scope.frames.append({})
            self.run(other, dot)
            self.scope.frames.pop()
        for key, item in pairs:
            frame = {names[0]: key, names[1]: item} if names[1] else {names[0]: item} if names[0] else {}
            self.scope.frames.append(frame)
            self.run(body, item)
            self.scope.frames.pop()


def execute(template: str, data: dict) -> str:
    """Render ``template`` on ``data`` (``.`` and ``$``) as Go's ``text/template`` would, within the emulated subset.

    Raises:
        ValueError: for a construct outside the subset, or a template that does not parse.
    """
    nodes, _, _ = _parse_body(_lex(template), 0, ())
    ev = _Eval(data)
    ev.run(nodes, data)
    return "".join(ev.out)
