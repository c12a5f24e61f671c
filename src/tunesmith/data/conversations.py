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
from tunesmith.data.loader import read_and_convert
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
    path: str | Path,
    fmt: str = "auto",
    columns: dict[str, str] | None = None,
    *,
    field: str = "data.path",
    answers: str | Path | None = None,
) -> tuple[list[Conversation], LoadReport]:
    """Read a data file (any :mod:`tunesmith.data.readers` type) and convert every record of format ``fmt``.

    Args:
        path: data file or saved dataset folder.
        fmt: one of :data:`tunesmith.data.formats.FORMATS`, or ``auto`` (detected from the first record).
        columns: ``data.columns`` mapping (canonical field -> column name).
        field: the config field that named ``path`` (``data.path`` or ``data.eval_path``), for messages.
        answers: for ``bfcl``, the ``possible_answer`` file (default: ``possible_answer/<name>`` beside ``path`` when
            it exists); its ground truth becomes each record's reference call.

    Returns:
        (valid conversations, report); ``report.skipped`` lists every invalid record's problems
        (``where`` is ``path:line``), ``report.format`` the format used.

    Raises:
        DataError: when no record can be read (each unreadable line with its ``path:line``, or an empty file),
            or the format cannot be detected or is unknown.
    """
    convs, problems, fmt, read = read_and_convert(
        path,
        fmt,
        formats=FORMATS,
        detect=lambda r: detect_format(r, columns),
        convert=lambda obj, f, where: to_conversation(obj, f, where, columns),
        field=field,
        prepare=lambda records, f: _with_answers(path, records, answers, f),
    )
    return convs, LoadReport(rows_read=read, kept=len(convs), skipped=problems, format=fmt)


def _with_answers(path, records, answers, fmt: str) -> tuple[list, list[Problem]]:
    """BFCL question records with the ground truth of their answer file merged in (none when there is no file, or
    when ``fmt`` is not ``bfcl``)."""
    if fmt != "bfcl":
        return records, []
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


def load_conversations(
    data_cfg, *, log_skipped: bool = True, field: str = "data.path"
) -> tuple[list[Conversation], LoadReport]:
    """Load the records ``data_cfg`` names (``path`` first, else bundled ``name``), validated.

    Args:
        data_cfg: a :class:`tunesmith.config.sft.DataSection` (uses path, name, format, columns, answers_path, tools,
            skip_invalid, system_prompt).
        log_skipped: log a warning per skipped problem (``tunesmith.data.conversations`` logger).
        field: the config field ``data_cfg.path`` came from (``data.eval_path`` for the eval file), for messages.

    Returns:
        (conversations, report).  With ``skip_invalid`` each invalid record is left out, and
        logged and counted in ``report.skipped``.

    Raises:
        DataError: every invalid record with its ``file:line``, reason and fix (unless
            ``skip_invalid``); an unknown format or bundled name.
    """
    if data_cfg.path:
        convs, report = load_file(
            data_cfg.path, data_cfg.format, dict(data_cfg.columns), field=field, answers=data_cfg.answers_path
        )
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
        DataError: unreadable or invalid records (``file:line``), a path that is a folder, no training record, or an
            empty eval set although one was asked for (``data.eval_path``, or ``data.eval_fraction`` > 0 of too few
            records); ``data.eval_fraction: 0`` gives no eval set, and training says so.
    """
    try:
        convs, report = load_conversations(cfg.data)
        if cfg.data.eval_path:
            eval_cfg = cfg.data.model_copy(update={"path": cfg.data.eval_path, "answers_path": None})
            train, (evals, _) = convs, load_conversations(eval_cfg, field="data.eval_path")
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
    if not evals and (cfg.data.eval_path or cfg.data.eval_fraction > 0):  # eval_fraction 0: no eval, on purpose
        raise empty_eval_error(cfg, len(train))
    return train, evals, report


def empty_eval_error(cfg, n_train: int) -> DataError:
    """The error for a run whose eval set is empty (training measures eval_loss before and after on it)."""
    where = (
        f"data.eval_path={cfg.data.eval_path}" if cfg.data.eval_path else f"data.eval_fraction={cfg.data.eval_fraction}"
    )
    return DataError(
        "The eval set is empty",
        [
            Problem(
                where,
                f"0 eval records ({n_train} for training); the run measures eval_loss before and after training on "
                "held-out records",
                "set data.eval_fraction > 0 (e.g. 0.1), or data.eval_path to a file of held-out records",
            )
        ],
    )
