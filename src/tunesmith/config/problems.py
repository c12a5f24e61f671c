"""Parsing ``--set`` overrides and turning pydantic validation errors into :class:`~tunesmith.errors.Problem` entries
(field path, where the value came from, and a fix). Used by :func:`tunesmith.config.sft.load_config`."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from tunesmith.config.yamltext import load_yaml
from tunesmith.errors import ConfigError, Problem


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"train.learning_rate=1e-4"`` into (["train", "learning_rate"], 1e-4).

    The value is parsed as YAML, so numbers, booleans, lists and null work; an unquoted text keeps a `` #`` in it
    (YAML would cut it off as a comment).

    Raises:
        ConfigError: when the text has no ``=`` or an empty key.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(
            "Invalid --set override",
            [Problem(f"--set {text}", "expected KEY=VALUE", "write e.g. --set train.learning_rate=1e-4")],
        )
    try:
        value = load_yaml(raw, f"--set {text}") if raw.strip() else raw
    except ConfigError:  # not YAML (or a number too long to read): the text itself
        value = raw
    if isinstance(value, str) and not raw.strip().startswith(("'", '"')) and value != raw.strip():
        value = raw.strip()  # YAML drops " # ..." as a comment: "End with #### <number>." is text, kept whole
    if raw.strip().lower() in ("no", "yes", "on", "off", "y", "n"):
        # YAML 1.1 reads `no` as False; keep the word
        # (eval_strategy=no; pydantic reads it as a bool where one is expected)
        value = raw.strip()
    if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string; users mean a number
        try:
            value = (
                float(value) if any(c in value.lower() for c in ".e") and value.lower() not in ("inf", "nan") else value
            )
        except ValueError:
            pass
    return key.strip().split("."), value


def _set_path(tree: dict, path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[path[-1]] = value


def _field_names(model_cls: type[BaseModel], loc: tuple) -> list[str]:
    cls: Any = model_cls
    for part in loc[:-1]:
        field = cls.model_fields.get(part) if hasattr(cls, "model_fields") else None
        if field is None:
            return []
        cls = field.annotation
    names = list(getattr(cls, "model_fields", {}))
    if hasattr(cls, "library_fields"):  # a train section whose extra keys are a library's config fields
        names += sorted(cls.library_fields())
    return names


def _problems_from(exc: ValidationError, model_cls: type[BaseModel], origin: dict[str, str]) -> list[Problem]:
    problems = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        where = ".".join(loc) or "(top level)"
        src = origin.get(where)
        where_txt = f"{where} (from {src})" if src else where
        if err["type"] == "extra_forbidden":
            near = difflib.get_close_matches(loc[-1], _field_names(model_cls, loc), n=1)
            fix = (
                f"did you mean {'.'.join(loc[:-1] + (near[0],))!r}?"
                if near
                else "remove it; `tunesmith config` lists every field"
            )
            problems.append(Problem(where_txt, "unknown key", fix))
        elif err["type"] == "value_error":
            msg = err["msg"].removeprefix("Value error, ")
            fix = "give a finite number that fits in 64 bits" if "finite" in msg or "64 bits" in msg else ""
            problems.append(Problem(where_txt, msg, fix or "`tunesmith config` lists every field"))
        else:
            got = _short(err.get("input"))
            problems.append(Problem(where_txt, f"{err['msg']} (got {got})", _fix_for(err)))
    return problems


def _short(value, limit: int = 200) -> str:
    """``repr(value)``, cut to ``limit`` characters (a config value can be megabytes long)."""
    try:
        text = repr(value)
    except ValueError:  # an int too long to print
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + f"... ({len(text):,} characters)"


def _fix_for(err: dict) -> str:
    kind = err["type"]
    if kind.startswith(("float", "int")):
        return "give a number, e.g. 2e-4 or 8"
    if kind.startswith("bool"):
        return "give true or false"
    if kind == "literal_error":
        return f"use one of the allowed values: {err.get('ctx', {}).get('expected', '')}"
    if kind.startswith(("greater", "less")):
        return "choose a value inside the allowed range"
    return "see `tunesmith config` for the expected type"


def _check_paths(raw: dict, base: Path) -> list[Problem]:
    problems = []
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    for key in ("path", "eval_path"):
        value = data.get(key)
        if isinstance(value, str) and value:
            try:
                p = Path(value).expanduser()
                p = p if p.is_absolute() else base / p
                reason = None if p.exists() else f"file not found: {_short(str(p))}"
            except (OSError, ValueError) as exc:  # a name too long for the file system, an embedded NUL byte
                reason = f"not a usable path ({getattr(exc, 'strerror', None) or exc})"
            if reason:
                problems.append(
                    Problem(
                        f"data.{key}",
                        reason,
                        "check the path (relative paths are resolved from the config file's folder)",
                    )
                )
    return problems
