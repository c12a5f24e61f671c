"""The Train tab's form: built from the typed config, filled in, turned into a YAML config, validated by
:func:`tunesmith.config.load.load_config` (the same :class:`~tunesmith.errors.ConfigError` problems as the CLI, each
shown beside its field), and written to a file the CLI runs as it is.

    form texts --form_to_raw--> {section: {key: value}} --check--> (config, problems) --write_config--> config YAML
        --tunesmith.use.ui.jobs.train_argv--> [python, -m, tunesmith, sft, <config YAML>]

A field's text is read like a ``--set`` value (YAML: numbers, booleans, lists, ``null``); an empty field means
``null``. Only fields that differ from their default go into the YAML. Every path field is resolved inside the
workspace root and written absolute, so the YAML runs the same from any folder.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from tunesmith.config.classify import ClassifyConfig
from tunesmith.config.dpo import DPORunConfig
from tunesmith.config.load import load_config
from tunesmith.config.problems import parse_override
from tunesmith.config.reference import describe_fields
from tunesmith.config.sft import RunConfig
from tunesmith.errors import ConfigError, Problem, TunesmithError
from tunesmith.runtime.files import atomic_write_text
from tunesmith.use.ui.workspace import Workspace

KINDS = {"sft": RunConfig, "classify": ClassifyConfig, "dpo": DPORunConfig}
"""Training command -> its config class."""
PATHS = ("data.path", "data.eval_path", "train.output_dir", "model.adapter")
"""Fields that always name a path (resolved inside the root)."""
MAYBE_PATHS = ("model.name", "model.chat_template", "eval.json_schema")
"""Fields that name a path unless they are a model name, a built-in template or an inline schema."""


@dataclass(frozen=True)
class FormField:
    """One field of the form: ``section.key``, its default as YAML text, and its documentation."""

    key: str
    default: str
    doc: str


def form_fields(kind: str) -> list[FormField]:
    """Every field of ``kind``'s config class, in section order (:func:`tunesmith.config.reference.describe_fields`)."""
    return [FormField(k, d, doc) for k, d, doc in describe_fields(KINDS[kind])]


def as_text(value) -> str:
    """A config value as the form shows it: YAML flow style (``null``, ``0.0002``, ``[q_proj, v_proj]``)."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).removesuffix("...\n").strip()


def config_texts(kind: str, cfg) -> dict[str, str]:
    """A validated config as form texts, field by field."""
    values = cfg.model_dump(mode="json")
    return {f.key: as_text(values[f.key.split(".")[0]][f.key.split(".", 1)[1]]) for f in form_fields(kind)}


def load_texts(ws: Workspace, kind: str, path: str) -> dict[str, str]:
    """Read a YAML config file under the root into form texts.

    Raises:
        TunesmithError: a path outside the root; ConfigError: the file's problems.
    """
    return config_texts(kind, load_config(ws.path(path, "config file"), model_cls=KINDS[kind]))


def _is_path(key: str, value, ws: Workspace) -> bool:
    if not isinstance(value, str) or not value:
        return False
    if key in PATHS or key == "eval.json_schema":
        return True
    if key == "model.chat_template":
        from tunesmith.render.chat_templates import builtin_templates

        return value not in builtin_templates()
    # model.name: a folder or .gguf file, not an embedded name or a hub id
    return value.startswith(("/", ".", "~")) or value.endswith(".gguf") or (ws.root / value).exists()


def _value(key: str, text: str):
    """A field's text read as ``--set key=text`` reads it; an empty text is None."""
    return None if not text.strip() else parse_override(f"{key}={text.strip()}")[1]


def _looks_like_path(value) -> bool:
    """A value of any field (a library field given as an extra line, say ``train.logging_dir``) that is plainly a
    path: absolute, from ``~``, or climbing with ``..``; such a value is held to the root like a path field."""
    return isinstance(value, str) and (value.startswith(("/", "~")) or ".." in Path(value).parts)


def _set(tree: dict, key: str, value) -> None:
    section, name = key.split(".", 1)
    tree.setdefault(section, {})[name] = value


def form_to_raw(ws: Workspace, kind: str, texts: dict[str, str], extra: str = "") -> tuple[dict, list[Problem]]:
    """Turn form texts into the raw config mapping: only fields that differ from their default, paths resolved.

    Args:
        texts: ``section.key`` -> text; missing keys keep their default.
        extra: more ``section.key=value`` lines (library fields the form does not list, e.g. ``train.beta``).

    Returns:
        (``{section: {key: value}}`` with ``train.output_dir`` always set, absolute; problems: paths outside the root
        and malformed extra lines, by field).
    """
    raw: dict = {}
    problems: list[Problem] = []
    fields = {f.key for f in form_fields(kind)}
    pairs = [
        (f.key, texts[f.key])
        for f in form_fields(kind)
        if f.key in texts and _value(f.key, texts[f.key]) != _value(f.key, f.default)
    ]
    for line in (x.strip() for x in extra.splitlines()):
        if line and not line.startswith("#"):
            key, sep, text = line.partition("=")
            if not sep or key.count(".") != 1:
                problems.append(Problem(line, "expected section.key=value", "e.g. train.beta=0.1"))
                continue
            pairs.append((key.strip(), text))
    for key, text in pairs:
        value = _value(key, text)
        if (key in PATHS + MAYBE_PATHS and _is_path(key, value, ws)) or (key not in fields and _looks_like_path(value)):
            try:
                value = str(ws.path(value, key))
            except TunesmithError as exc:
                problems += [Problem(key, p.reason, p.fix) for p in exc.problems]
                continue
        _set(raw, key, value)
    if "output_dir" not in raw.get("train", {}):  # the default run folder, under the root and written out
        default = next(f.default for f in form_fields(kind) if f.key == "train.output_dir")
        _set(raw, "train.output_dir", str(ws.path(default, "train.output_dir")))
    return raw, problems


def config_yaml(raw: dict) -> str:
    """The raw mapping as the YAML file the run starts from."""
    return yaml.safe_dump(raw, sort_keys=False, allow_unicode=True) if raw else "{}\n"


def check(ws: Workspace, kind: str, raw: dict):
    """Validate ``raw`` exactly as ``tunesmith <kind> CONFIG`` loads a file.

    Returns:
        (the validated config or None, every :class:`~tunesmith.errors.Problem` of the ``ConfigError``).
    """
    ws.state_dir.mkdir(exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=ws.state_dir, delete=False, encoding="utf-8") as f:
        f.write(config_yaml(raw))
    try:
        return load_config(f.name, model_cls=KINDS[kind]), []
    except ConfigError as exc:
        return None, list(exc.problems)
    finally:
        Path(f.name).unlink(missing_ok=True)


def by_field(problems: list[Problem], keys: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Sort problems to the field they name (``train.learning_rate (from ...)`` -> ``train.learning_rate``).

    Returns:
        (field key -> messages ``reason (fix: ...)``, messages of problems that name no form field).
    """
    fields: dict[str, list[str]] = {}
    other: list[str] = []
    for p in problems:
        where = p.where.split(" (", 1)[0].strip()
        text = p.reason + (f" (fix: {p.fix})" if p.fix else "")
        if where in keys:
            fields.setdefault(where, []).append(text)
        else:
            other.append(f"{p.where}: {text}")
    return fields, other


def write_config(ws: Workspace, kind: str, raw: dict) -> Path:
    """Write ``raw`` to ``<root>/.tunesmith-ui/configs/<kind>-<run folder name>-<time>.yaml`` (a new file each time,
    headed by the command that runs it).

    Returns:
        The file's path.
    """
    run = Path(str((raw.get("train") or {}).get("output_dir") or kind)).name
    folder = ws.state_dir / "configs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{kind}-{run}-{time.strftime('%Y%m%d-%H%M%S')}.yaml"
    k = 0
    while path.exists():
        k += 1
        path = path.with_name(f"{kind}-{run}-{time.strftime('%Y%m%d-%H%M%S')}-{k}.yaml")
    atomic_write_text(path, f"# written by tunesmith ui; run it with: tunesmith {kind} {path}\n" + config_yaml(raw))
    return path
