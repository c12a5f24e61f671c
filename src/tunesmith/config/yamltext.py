"""Read YAML text (a config file, a ``--set`` value) safely: every problem a ConfigError, never a traceback.

PyYAML's ``safe_load`` silently keeps the last of two equal keys, raises ``ValueError`` for an integer of more than
4,300 digits (Python's limit on converting text to int), ``RecursionError`` for deep nesting, and turns a few aliases
into billions of values (``&a [*b, *b]`` chains). Here a duplicate key is an error with its line, and so are those.
"""

from __future__ import annotations

import yaml

from tunesmith.errors import ConfigError, Problem

MAX_VALUES = 200_000
"""Most values (after YAML aliases are expanded) a config may hold; a real one holds a few hundred."""


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that records every duplicate mapping key with its line."""

    def __init__(self, stream):
        super().__init__(stream)
        self.duplicates: list[tuple[str, int]] = []

    def construct_mapping(self, node, deep=False):
        """Build the mapping and note each key that appears twice in it (YAML keeps only the last)."""
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode):
                    key = (key_node.tag, key_node.value)
                    if key in seen:
                        self.duplicates.append((str(key_node.value)[:100], key_node.start_mark.line + 1))
                    seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, where: str) -> object:
    """Parse YAML ``text`` (from ``where``: a file or ``--set KEY=VALUE``).

    Returns:
        The value (``dict``, ``list``, scalar or None).

    Raises:
        ConfigError: invalid YAML (with its line), duplicate keys (each with its line), an integer too long to
            convert, nesting too deep, more than :data:`MAX_VALUES` values, or text that is not valid Unicode.
    """
    loader = None
    try:
        loader = _Loader(text)  # the reader refuses control characters (a NUL byte) right here
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(
            "Config is not valid YAML",
            [Problem(f"{where}{line}", str(exc).splitlines()[0][:300], "fix the YAML syntax")],
        ) from None
    except (ValueError, RecursionError) as exc:  # a >4300-digit integer; nesting deeper than Python's stack
        what = "nested too deeply" if isinstance(exc, RecursionError) else "holds a number too long to read"
        raise ConfigError("Config cannot be read", [Problem(where, what, "write plain values")]) from None
    finally:
        if loader is not None:
            loader.dispose()
    if loader.duplicates:
        raise ConfigError(
            "Config repeats a key (YAML would silently keep only the last value)",
            [
                Problem(f"{where}:{line}", f"key {key!r} appears twice", "keep one of them")
                for key, line in loader.duplicates
            ],
        )
    problems = check_values(data, where)
    if problems:
        raise ConfigError("Config cannot be read", problems)
    return data


def check_values(data: object, where: str) -> list[Problem]:
    """Problems of a parsed config tree: more than :data:`MAX_VALUES` values (YAML aliases expand), or keys/strings
    that are not valid Unicode (an unpaired surrogate from a ``\\ud800`` escape or from a command-line argument that
    is not UTF-8). Walks without recursion, and stops early.

    Returns:
        The problems (empty when the tree is fine), each naming the key path.
    """
    stack: list[tuple[str, object]] = [("", data)]
    count = 0
    problems: list[Problem] = []
    while stack and len(problems) < 10:
        path, node = stack.pop()
        count += 1
        if count > MAX_VALUES:
            return [Problem(where, f"it expands to more than {MAX_VALUES:,} values (YAML aliases?)", "write it out")]
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            name = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and not _is_text(key):
                problems.append(_not_text(where, ascii(key)))
            stack.append((name, value))
        if isinstance(node, str) and not _is_text(node):
            problems.append(_not_text(where, ascii(path) if not _is_text(path) else path))
    return problems


def _is_text(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _not_text(where: str, key: str) -> Problem:
    return Problem(
        f"{where}: {key}" if key else where,
        "is not valid Unicode text (an unpaired surrogate, e.g. a \\ud800 escape or bytes that are not UTF-8)",
        "write it as UTF-8 text",
    )
