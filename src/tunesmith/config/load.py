"""Load a run config: YAML plus ``--set section.key=value`` overrides, validated once, every problem collected.

Every problem found is raised once as :class:`~tunesmith.errors.ConfigError` (exit code 2 from the CLI), each with
its field path, where the value came from (file or ``--set``) and a fix."""

from __future__ import annotations

import difflib
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from tunesmith.config.problems import _check_paths, _field_names, _fix_for, _problems_from, _set_path, parse_override  # noqa: F401 (parse_override stays importable from here)
from tunesmith.config.sft import RunConfig
from tunesmith.config.yamltext import check_values, load_yaml
from tunesmith.errors import ConfigError, Problem


def _check_train_keys(raw: dict, origin: dict[str, str], model_cls: type[BaseModel] = None) -> list[Problem]:
    """Report (and drop) unknown ``train`` keys up front, so they are listed even when other fields fail."""
    train = raw.get("train")
    if not isinstance(train, dict):
        return []
    section = model_cls.model_fields["train"].annotation
    library = section.library_fields() if hasattr(section, "library_fields") else frozenset()
    known = set(section.model_fields) | library
    problems = []
    for key in [k for k in train if k not in known]:
        near = difflib.get_close_matches(str(key), sorted(known), n=1)
        src = origin.get(f"train.{key}")
        where = f"train.{key}" + (f" (from {src})" if src else "")
        problems.append(
            Problem(
                where,
                f"unknown key (not a {getattr(section, 'library_name', 'train')} field)",
                f"did you mean 'train.{near[0]}'?" if near else "remove it; `tunesmith config` lists every field",
            )
        )
        del train[key]
    return problems


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, *, model_cls: type[BaseModel] = RunConfig
) -> BaseModel:
    """Load a run config from YAML (optional) plus ``--set`` overrides, validated once.

    Args:
        path: YAML file, or None to start from the defaults.
        overrides: ``["section.key=value", ...]``, applied in order after the file.
        model_cls: the config class (RunConfig, or a command's own subclass).

    Returns:
        A validated config; relative ``data.path`` values are resolved against the YAML file's folder.

    Raises:
        ConfigError: listing every problem (unknown keys with a "did you mean", wrong types,
            missing data files), each with its field path and a fix.
    """
    raw: dict = {}
    origin: dict[str, str] = {}
    base = Path.cwd()
    if path is not None:
        raw, base = _read_file(Path(path))
    problems: list[Problem] = []
    for text in overrides or []:
        keys, value = parse_override(text)
        _set_path(raw, keys, value)
        origin[".".join(keys)] = f"--set {text}"
    for sec, key in (("data", "path"), ("data", "eval_path"), ("eval", "json_schema")):
        data = raw.get(sec)
        if (
            isinstance(data, dict)
            and isinstance(data.get(key), str)
            and data[key]
            and not Path(data[key]).expanduser().is_absolute()
        ):
            origin_is_cli = f"{sec}.{key}" in origin
            data[key] = str((Path.cwd() if origin_is_cli else base) / data[key])
    problems += check_values(raw, "--set") if overrides else []
    problems += _check_paths(raw, base)
    problems += _check_train_keys(raw, origin, model_cls)
    cfg = None
    try:
        cfg = model_cls.model_validate(raw)
    except ValidationError as exc:
        problems = _problems_from(exc, model_cls, origin) + problems
    if problems:
        src = f" in {path}" if path else ""
        raise ConfigError(f"Invalid configuration{src} ({len(problems)} problem{'s' * (len(problems) > 1)}):", problems)
    if path is not None:
        cfg._source_file = str(Path(path).resolve())
    return cfg


def config_file(cfg: BaseModel) -> Path | None:
    """The YAML file ``cfg`` was loaded from (None for defaults plus ``--set`` only)."""
    source = getattr(cfg, "_source_file", None)
    return Path(source) if source else None


def config_inputs(cfg: BaseModel) -> tuple[str, ...]:
    """Every file or folder ``cfg`` names that exists (data, eval data, chat template, model or adapter folder, JSON
    schema), plus the config file itself: an output folder holding one of them is never replaced by ``--overwrite``.
    ``train.output_dir`` is left out."""
    found: list[str] = []
    stack: list[tuple[str, object]] = [("", cfg.model_dump(mode="json"))]
    while stack:
        key, node = stack.pop()
        if isinstance(node, dict):
            stack.extend((f"{key}.{k}" if key else str(k), v) for k, v in node.items())
        elif isinstance(node, str) and node and key != "train.output_dir" and len(node) < 4096:
            try:
                if Path(node).expanduser().exists():
                    found.append(node)
            except (OSError, ValueError):  # not a path
                pass
    source = config_file(cfg)
    return tuple(found + ([str(source)] if source else []))


def _read_file(p: Path) -> tuple[dict, Path]:
    """The mapping in YAML file ``p`` and the folder its relative paths start from.

    Raises:
        ConfigError: a missing or unreadable file, invalid YAML (with its line), a top level that is not a mapping.
    """
    try:
        is_file = p.is_file()
        text = p.read_text(encoding="utf-8") if is_file else None
    except (OSError, ValueError) as exc:  # no permission, a name too long, an embedded NUL, not UTF-8
        reason = "is not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else getattr(exc, "strerror", None)
        raise ConfigError(
            "Cannot read config", [Problem(str(p), reason or str(exc), "pass the path of a readable UTF-8 YAML file")]
        ) from None
    if text is None:
        raise ConfigError(
            "Cannot read config",
            [
                Problem(
                    str(p),
                    "no such file" if not p.exists() else "is a directory, not a YAML file",
                    "pass the path of a .yaml config file",
                )
            ],
        )
    loaded = load_yaml(text, str(p)) or {}
    if not isinstance(loaded, dict):
        raise ConfigError(
            "Config must be a mapping",
            [Problem(str(p), f"top level is a {type(loaded).__name__}", "write `section: {key: value}` pairs")],
        )
    return loaded, p.resolve().parent


def dump_config(cfg: BaseModel) -> str:
    """Return the resolved config as YAML text (every field, defaults included)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
