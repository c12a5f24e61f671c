"""Load, normalise and split SFT data into :class:`~tunesmith.data.records.Conversation` records.

Sources: a data file in any common format (``data.path``: JSONL, JSON, CSV, Parquet or a saved
Hugging Face dataset; formats in :mod:`tunesmith.data.formats`, files in :mod:`tunesmith.data.readers`) or a
bundled dataset by name (``data.name``).  Bundled: ``chatterbot`` (the English dialogue corpus in the PyPI package
``chatterbot-corpus``, BSD licence, read from the installed package).
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.data.bundled import load_bundled
from tunesmith.data.formats import FORMATS, detect_format, to_conversation
from tunesmith.data.readers import read_records
from tunesmith.data.records import Conversation, Message
from tunesmith.data.split import split
from tunesmith.errors import DataError, Problem

log = logging.getLogger("tunesmith.data.conversations")


@dataclass
class LoadReport:
    """What loading read, kept and skipped.

    Attributes:
        rows_read: records read from the source.
        kept: records that passed validation.
        skipped: every problem of every invalid record, as :class:`Problem` (several per record possible).
        format: the record format used (detected or set).
    """

    rows_read: int = 0
    kept: int = 0
    skipped: list[Problem] = field(default_factory=list)
    format: str = ""

    @property
    def skipped_records(self) -> int:
        """Number of distinct records (``file:line``) that were skipped."""
        return len({p.where for p in self.skipped})


def load_file(
    path: str | Path, fmt: str = "auto", columns: dict[str, str] | None = None, *, answers: str | Path | None = None
) -> tuple[list[Conversation], LoadReport]:
    """Read a data file (any :mod:`tunesmith.data.readers` type) and convert every record of format ``fmt``.

    Args:
        path: data file or saved dataset folder.
        fmt: one of :data:`tunesmith.data.formats.FORMATS`, or ``auto`` (detected from the first record).
        columns: ``data.columns`` mapping (canonical field -> column name).
        answers: for ``bfcl``, the ``possible_answer`` file (default: ``possible_answer/<name>`` beside ``path`` when
            it exists); its ground truth becomes each record's reference call.

    Returns:
        (valid conversations, report); ``report.skipped`` lists every invalid record's problems
        (``where`` is ``path:line``), ``report.format`` the format used.

    Raises:
        DataError: when no record can be read (each unreadable line with its ``path:line``, or an empty file),
            or the format cannot be detected or is unknown.
    """
    records, problems = read_records(path)
    report = LoadReport(rows_read=len(records) + len({p.where for p in problems}))
    if not records:  # nothing readable: report why (unreadable lines, or an empty file) rather than "unknown format"
        raise DataError(
            f"{path}: no readable record" if problems else f"{path} is empty",
            problems
            or [
                Problem(
                    f"data.path={path}",
                    "the file holds no records (it is empty or has only blank lines)",
                    "point data.path at a file with one record per line (JSONL) or a list of records (JSON)",
                )
            ],
        )
    if fmt == "auto":
        first = next((r for _, r in records if isinstance(r, dict)), None)
        fmt = detect_format(first, columns) if first is not None else None
        if fmt is None:
            keys = sorted(first)[:12] if isinstance(first, dict) else []
            raise DataError(
                f"Cannot tell the format of {path}",
                [
                    Problem(
                        records[0][0] if records else str(path),
                        f"no known format matches the record keys {keys}",
                        "set data.format (messages, sharegpt, alpaca, prompt_completion, text, oasst, bfcl) and "
                        "data.columns, e.g. --set data.columns.output=response",
                    )
                ],
            )
    elif fmt not in FORMATS:
        raise DataError(
            "Unsupported data format",
            [
                Problem(
                    "data.format", f"{fmt!r} is not a conversation format", f"use one of {', '.join(FORMATS)} (or auto)"
                )
            ],
        )
    report.format = fmt
    if fmt == "bfcl":
        records, probs = _with_answers(path, records, answers)
        problems += probs
    convs = []
    for where, obj in records:
        conv, probs = to_conversation(obj, fmt, where, columns)
        if probs:
            problems += probs
        else:
            convs.append(conv)
    report.skipped = problems
    report.kept = len(convs)
    return convs, report


def _with_answers(path, records, answers) -> tuple[list, list[Problem]]:
    """BFCL question records with the ground truth of their answer file merged in (none when there is no file)."""
    from tunesmith.data.tool_formats import answers_path_for, attach_bfcl_answers

    found = Path(answers) if answers else answers_path_for(path)
    if not found.is_file():
        if answers:
            raise DataError(
                "BFCL answer file not found",
                [Problem(f"data.answers_path={answers}", "no such file", "point it at the possible_answer file")],
            )
        return records, []
    rows, problems = read_records(found)
    records, more = attach_bfcl_answers(records, rows, str(found))
    return records, problems + more


def file_tools(spec) -> list[dict] | None:
    """The ``data.tools`` of a config: a list of function specs, or the path of a JSON file holding one.

    Returns:
        OpenAI-shaped specs, or None when ``spec`` is None.

    Raises:
        DataError: an unreadable file, or specs that are not function specs (with the problem).
    """
    import json

    from tunesmith.data.tool_formats import normalise_tools

    if spec is None:
        return None
    where = f"data.tools={spec}" if isinstance(spec, str) else "data.tools"
    if isinstance(spec, str):
        try:
            spec = json.loads(Path(spec).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(
                "Cannot read the tools file",
                [Problem(where, getattr(exc, "strerror", None) or str(exc), "give a JSON file with a list of specs")],
            ) from None
        spec = spec.get("tools", spec) if isinstance(spec, dict) else spec
    tools, problems = normalise_tools(spec, where, "data.tools")
    if problems:
        raise DataError("Invalid data.tools", problems)
    return tools


def load_conversations(data_cfg, *, log_skipped: bool = True) -> tuple[list[Conversation], LoadReport]:
    """Load the records ``data_cfg`` names (``path`` first, else bundled ``name``), validated.

    Args:
        data_cfg: a :class:`tunesmith.config.sft.DataSection` (uses path, name, format, columns, answers_path, tools,
            skip_invalid, system_prompt).
        log_skipped: log a warning per skipped problem (``tunesmith.data.conversations`` logger).

    Returns:
        (conversations, report).  With ``skip_invalid`` each invalid record is left out, and
        logged and counted in ``report.skipped``.

    Raises:
        DataError: every invalid record with its ``file:line``, reason and fix (unless
            ``skip_invalid``); an unknown format or bundled name.
    """
    if data_cfg.path:
        convs, report = load_file(data_cfg.path, data_cfg.format, dict(data_cfg.columns), answers=data_cfg.answers_path)
        if report.skipped and not data_cfg.skip_invalid:
            bad = len({p.where for p in report.skipped})
            raise DataError(
                f"{data_cfg.path}: {bad} invalid record(s) of {report.rows_read}; nothing was trained "
                "(fix them, or pass --skip-invalid / data.skip_invalid=true to skip them)",
                report.skipped,
            )
    else:
        convs = load_bundled(data_cfg.name, "conversations")
        report = LoadReport(rows_read=len(convs), kept=len(convs), format="messages")
    for p in report.skipped if log_skipped else []:
        log.warning("skipped %s: %s", p.where, p.reason)
    tools = file_tools(data_cfg.tools)
    for c in convs if tools else []:
        if c.kind not in ("text", "completion") and not c.tools:
            c.tools = tools
    if data_cfg.system_prompt:
        for c in convs:
            if c.kind not in ("text", "completion") and c.messages[0].role != "system":
                c.messages.insert(0, Message("system", data_cfg.system_prompt))
    return convs, report


def load_sft_data(cfg) -> tuple[list, list, LoadReport]:
    """Load, validate and split the data (``data.path``/``data.eval_path`` or a bundled ``data.name``).

    Returns:
        (train conversations, eval conversations, load report).

    Raises:
        DataError: unreadable or invalid records (``file:line``), a path that is a folder, or no training record.
    """
    try:
        convs, report = load_conversations(cfg.data)
        if cfg.data.eval_path:
            train, (evals, _) = (
                convs,
                load_conversations(cfg.data.model_copy(update={"path": cfg.data.eval_path, "answers_path": None})),
            )
        else:
            train, evals = split(convs, cfg.data.eval_fraction, cfg.data.split_seed)
    except OSError as exc:
        field_name = (
            "data.eval_path"
            if exc.filename and cfg.data.eval_path and str(exc.filename) == cfg.data.eval_path
            else "data.path"
        )
        reason = "is a folder, not a data file" if exc.errno == errno.EISDIR else (exc.strerror or str(exc))
        raise DataError(
            "Cannot read the data",
            [Problem(f"{field_name}={exc.filename}", reason, "point it at a .jsonl or .json file")],
        ) from None
    train = train[: cfg.data.max_train_examples] if cfg.data.max_train_examples else train
    evals = evals[: cfg.data.max_eval_examples] if cfg.data.max_eval_examples else evals
    if not train:
        where = f"data.path={cfg.data.path}" if cfg.data.path else f"data.name={cfg.data.name}"
        raise DataError(
            "No training records",
            [
                Problem(
                    where,
                    f"{report.rows_read} records read, {len(train)} left for training after the eval split",
                    "give more records, or lower data.eval_fraction",
                )
            ],
        )
    return train, evals, report
