"""Load, normalise and split SFT data into :class:`~tunesmith.messages.Conversation` records.

Sources: a JSONL/JSON file of role-tagged ``messages`` (``data.path``) or a bundled dataset by
name (``data.name``).  Bundled: ``chatterbot`` (the English dialogue corpus in the PyPI package
``chatterbot-corpus``, BSD licence, read from the installed package).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tunesmith.errors import DataError, Problem
from tunesmith.messages import ROLES, Conversation, Message


@dataclass
class LoadReport:
    """What loading read, kept and skipped.

    Attributes:
        rows_read: records read from the source.
        kept: records that passed validation.
        skipped: invalid records skipped (only with ``skip_invalid``), each as a :class:`Problem`.
    """

    rows_read: int = 0
    kept: int = 0
    skipped: list[Problem] = field(default_factory=list)


def chatterbot_dir() -> Path:
    """Return the folder of English YAML files of the installed ``chatterbot-corpus`` package.

    Raises:
        DataError: when the package is not installed.
    """
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("Bundled dataset 'chatterbot' is not installed", [Problem(
            "data.name=chatterbot", "the PyPI package chatterbot-corpus is missing", "pip install --no-deps chatterbot-corpus")])
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "english"


def load_chatterbot() -> list[Conversation]:
    """Turn the chatterbot English corpus into multi-turn user/assistant conversations.

    Each corpus conversation is a list of statements, each answering the one before; they
    alternate user/assistant starting with the user, and a trailing user statement is dropped.
    ``meta["topic"]`` holds the file's first category (e.g. ``computers``).

    Returns:
        About 2,000 conversations, in file order (sorted file names) for determinism.
    """
    out = []
    for path in sorted(chatterbot_dir().glob("*.yml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        topic = str(doc.get("categories", [path.stem])[0]).lower()
        for idx, turns in enumerate(doc.get("conversations", [])):
            turns = [str(t).strip() for t in turns if t is not None and str(t).strip()]
            if len(turns) % 2:
                turns = turns[:-1]
            if len(turns) < 2:
                continue
            msgs = [Message("user" if k % 2 == 0 else "assistant", t) for k, t in enumerate(turns)]
            out.append(Conversation(msgs, f"chatterbot/{path.name}#{idx}", {"topic": topic}))
    return out


BUNDLED = {"chatterbot": load_chatterbot}
"""Bundled dataset name -> loader returning ``list[Conversation]``."""


def _parse_messages(obj, where: str) -> tuple[Conversation | None, list[Problem]]:
    problems: list[Problem] = []
    if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list):
        return None, [Problem(where, "record has no 'messages' list", 'write {"messages": [{"role": "user", "content": "..."}, ...]}')]
    msgs = []
    for k, m in enumerate(obj["messages"]):
        if not isinstance(m, dict):
            problems.append(Problem(where, f"messages[{k}] is not an object", "each message is {role, content}"))
            continue
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            problems.append(Problem(where, f"messages[{k}] has unknown role {role!r}", f"use one of {', '.join(ROLES)}"))
        if not isinstance(content, str):
            problems.append(Problem(where, f"messages[{k}].content is {type(content).__name__}, not a string", "write the content as a string"))
        elif not content.strip():
            problems.append(Problem(where, f"messages[{k}].content is empty", "remove the turn or give it text"))
        msgs.append(Message(str(role), content if isinstance(content, str) else "", m.get("weight"), m.get("name")))
    if not any(m.role == "assistant" for m in msgs):
        problems.append(Problem(where, "conversation has no assistant turn, so nothing would be trained", "add an assistant reply"))
    return (Conversation(msgs, where, {k: v for k, v in obj.items() if k != "messages"}) if not problems else None), problems


def read_records(path: Path) -> list[tuple[str, object]]:
    """Read a JSONL or JSON file into (``"path:line"``, record) pairs; line numbers are physical, 1-based.

    Raises:
        DataError: listing every undecodable line (invalid UTF-8 or malformed JSON).
    """
    raw = path.read_bytes()
    problems, records = [], []
    if path.suffix == ".json":
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            line = getattr(exc, "lineno", 1)
            raise DataError(f"Cannot read {path}", [Problem(f"{path}:{line}", str(exc), "fix the JSON (or use .jsonl, one record per line)")]) from None
        data = data if isinstance(data, list) else [data]
        return [(f"{path}#{i}", r) for i, r in enumerate(data)]
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            records.append((where, json.loads(line.decode("utf-8"))))
        except UnicodeDecodeError as exc:
            problems.append(Problem(where, f"invalid UTF-8 at byte {exc.start}", "re-save the file as UTF-8"))
        except json.JSONDecodeError as exc:
            problems.append(Problem(where, f"malformed JSON: {exc.msg} (column {exc.colno})", "fix this line; each line must be one JSON object"))
        except RecursionError:
            problems.append(Problem(where, "JSON nested too deeply to parse", "flatten this record; each line must be one JSON object"))
    if problems:
        raise DataError(f"{path}: {len(problems)} unreadable line(s)", problems)
    return records


def load_conversations(data_cfg) -> tuple[list[Conversation], LoadReport]:
    """Load the records ``data_cfg`` names (``path`` first, else bundled ``name``).

    Args:
        data_cfg: a :class:`tunesmith.config.DataSection`.

    Returns:
        (conversations, report).

    Raises:
        DataError: every invalid record with its ``file:line``, unless ``skip_invalid`` is set.
    """
    report = LoadReport()
    if data_cfg.path:
        convs, problems = [], []
        for where, obj in read_records(Path(data_cfg.path)):
            report.rows_read += 1
            conv, probs = _parse_messages(obj, where)
            if probs:
                problems += probs
            else:
                convs.append(conv)
        if problems and not data_cfg.skip_invalid:
            raise DataError(f"{data_cfg.path}: {len(problems)} problem(s); nothing was trained", problems)
        report.skipped = problems
    elif data_cfg.name in BUNDLED:
        convs = BUNDLED[data_cfg.name]()
        report.rows_read = len(convs)
    else:
        raise DataError("No data", [Problem("data", f"unknown bundled dataset {data_cfg.name!r}" if data_cfg.name else "neither data.path nor data.name is set",
                                            f"set data.path to a file or data.name to one of {sorted(BUNDLED)}")])
    if data_cfg.system_prompt:
        for c in convs:
            if c.messages[0].role != "system":
                c.messages.insert(0, Message("system", data_cfg.system_prompt))
    report.kept = len(convs)
    return convs, report


def split(convs: list, eval_fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic train/eval split: shuffle indices with ``random.Random(seed)``, hold out a fraction.

    Returns:
        (train, eval) lists; eval has ``round(len * eval_fraction)`` records (at least 1 when the fraction > 0).
    """
    idx = list(range(len(convs)))
    random.Random(seed).shuffle(idx)
    n_eval = max(1, round(len(convs) * eval_fraction)) if eval_fraction > 0 and len(convs) > 1 else 0
    held = set(idx[:n_eval])
    return [c for i, c in enumerate(convs) if i not in held], [c for i, c in enumerate(convs) if i in held]


def fingerprint(convs: list[Conversation]) -> str:
    """SHA-256 (hex, 16 chars) of the conversations' roles and contents, for the manifest and caches."""
    h = hashlib.sha256()
    for c in convs:
        for m in c.messages:
            h.update(f"{m.role}\x00{m.content}\x00{m.weight}\x01".encode())
        h.update(b"\x02")
    return h.hexdigest()[:16]
