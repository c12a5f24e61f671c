"""The one loader of a data file: read every record (:func:`tunesmith.data.readers.read_records`), settle the format,
convert each record and collect every problem."""

from __future__ import annotations

from pathlib import Path

from tunesmith.data.readers import read_records
from tunesmith.errors import DataError, Problem


def read_and_convert(
    path: str | Path,
    fmt: str,
    *,
    formats: tuple[str, ...],
    detect,
    convert,
    what: str = "data",
    field: str = "data.path",
    prepare=None,
) -> tuple[list, list[Problem], str, int]:
    """The one loader of a data file: read every record (:func:`read_records`), settle the format (``auto``: detected
    from the first record), convert each record, and collect every problem instead of stopping at the first.

    Args:
        path: the data file or saved dataset folder.
        fmt: a name in ``formats``, or ``auto``.
        formats: the format names this kind of data knows.
        detect: ``record -> format name | None``.
        convert: ``(record, fmt, where) -> (item | None, problems)``; an item with problems is not kept.
        what: how to call the data in messages (``data``, ``preference data``).
        field: the config field that named ``path`` (``data.path`` or ``data.eval_path``), for messages.
        prepare: ``(records, fmt) -> (records, problems)`` run on all records once the format is settled, before
            conversion (BFCL questions get their answer file's ground truth here); None for none.

    Returns:
        (items, problems of unreadable and invalid records with ``path:line``, the format used, records read).

    Raises:
        DataError: an empty file, a file with no readable record, an undetectable or unknown format.
    """
    records, problems = read_records(path)
    read = len(records) + len({p.where for p in problems})
    if not records:  # nothing readable: report why (unreadable lines, or an empty file) rather than "unknown format"
        empty = Problem(
            f"{field}={path}",
            "the file holds no records (it is empty or has only blank lines)",
            f"point {field} at a file with one record per line (JSONL) or a list of records (JSON)",
        )
        raise DataError(f"{path}: no readable record" if problems else f"{path} is empty", problems or [empty])
    if fmt == "auto":
        first = next((r for _, r in records if isinstance(r, dict)), None)
        fmt = detect(first) if first is not None else None
        if fmt is None:
            keys = sorted(first)[:12] if isinstance(first, dict) else []
            raise DataError(
                f"Cannot tell the {what} format of {path}",
                [
                    Problem(
                        records[0][0],
                        f"no known {what} format matches the record keys {keys}",
                        f"set data.format to one of {', '.join(formats)} (and data.columns where a column has "
                        "another name, e.g. --set data.columns.output=response)",
                    )
                ],
            )
    elif fmt not in formats:
        raise DataError(
            f"Unsupported {what} format",
            [Problem("data.format", f"{fmt!r} is not a {what} format", f"use one of {', '.join(formats)} (or auto)")],
        )
    if prepare is not None:
        records, more = prepare(records, fmt)
        problems += more
    items = []
    for where, obj in records:
        item, probs = convert(obj, fmt, where)
        problems += probs
        if item is not None and not probs:
            items.append(item)
    return items, problems, fmt, read
