"""Label data for classification: read text/label columns, build the label set, clean, split.

Sources: CSV/TSV (read with the ``csv`` module, so CRLF endings and quoted newlines work and line
numbers are physical), JSONL/JSON (``data.read_records``), Parquet and saved Hugging Face datasets,
and the bundled ``chatterbot-topics`` (each chatterbot conversation's first user message, labelled
with its topic).  Every record gets a stable id (``file:line`` or the bundled source), which the
predictions of every model evaluated on the same eval set share.
"""

from __future__ import annotations

import html
import re
from collections import Counter
from pathlib import Path

from tunesmith.data.bundled import load_bundled
from tunesmith.data.readers import read_records
from tunesmith.data.records import TOO_LONG_FIX, LabelRecord, too_long
from tunesmith.data.split import stratified_split, subsample
from tunesmith.errors import DataError, Problem

_C1 = re.compile("[\u0080-\u009f]")


def clean(text: str) -> str:
    """Normalise line endings (CRLF -> LF), strip whitespace, unescape HTML entities and map C1 control
    characters through Windows-1252 (``"\\x92"`` -> ``"’"``), the usual mojibake of SMS/web corpora."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _C1.sub(lambda m: bytes([ord(m.group())]).decode("cp1252", errors="ignore"), text)
    return html.unescape(text).strip()


def read_table(path: str | Path, labels_cfg) -> list[tuple[str, dict]]:
    """Read a data file into (``"path:line"``, row dict) pairs through :func:`tunesmith.data.readers.read_records`.

    Args:
        path: CSV/TSV/JSONL/JSON/Parquet file, or a folder saved with ``datasets.Dataset.save_to_disk``.
        labels_cfg: the ``labels`` section (file_format, column_names, encoding).

    Returns:
        One pair per record; CSV/TSV/JSONL line numbers are physical and 1-based, Parquet/HF rows are ``path#index``.

    Raises:
        DataError: an unreadable file or line (each with its ``path:line``), or an unknown format.
    """
    records, problems = read_records(
        path, file_type=labels_cfg.file_format, column_names=labels_cfg.column_names, encoding=labels_cfg.encoding
    )
    if problems:
        raise DataError(f"Cannot read {path}", problems)
    return [(where, r if isinstance(r, dict) else {}) for where, r in records]


def to_records(rows: list[tuple[str, dict]], labels_cfg) -> list[LabelRecord]:
    """Turn (id, row) pairs into :class:`LabelRecord`, checking that every column is present and non-empty.

    Raises:
        DataError: every row with a missing or empty text/label column, with its ``file:line``.
    """
    out, problems = [], []
    cols = [("text", labels_cfg.text_column), ("label", labels_cfg.label_column)]
    if labels_cfg.text_pair_column:
        cols.append(("text_pair", labels_cfg.text_pair_column))
    for where, row in rows:
        vals = {}
        for field, col in cols:
            value = row.get(col)
            value = "" if value is None else str(value)
            value = clean(value) if labels_cfg.clean_text else value
            reason = too_long(value, f"column {col!r}")
            if reason:
                problems.append(Problem(where, reason, TOO_LONG_FIX))
            elif not value.strip():
                have = ", ".join(map(str, list(row)[:8])) or "nothing"
                problems.append(
                    Problem(
                        where,
                        f"column {col!r} is missing or empty (row has: {have})",
                        f"set labels.{field}_column to the right column name",
                    )
                )
            vals[field] = value
        out.append(LabelRecord(where, vals["text"], vals["label"], vals.get("text_pair")))
    if problems:
        raise DataError(f"{len(problems)} record(s) with a missing, empty or too long text or label", problems[:50])
    return out


def deduplicate(records: list[LabelRecord]) -> tuple[list[LabelRecord], int]:
    """Keep the first record of each (text, text_pair); returns (records, number dropped)."""
    seen, out = set(), []
    for r in records:
        key = (r.text, r.text_pair)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out, len(records) - len(out)


def label_set(records: list[LabelRecord], labels_cfg) -> list[str]:
    """The label names in id order: ``labels.names``, else the sorted labels with at least ``min_examples`` records.

    Raises:
        DataError: fewer than two labels.
    """
    if labels_cfg.names:
        return list(labels_cfg.names)
    counts = Counter(r.label for r in records)
    names = sorted(k for k, v in counts.items() if v >= labels_cfg.min_examples)
    if len(names) < 2:
        raise DataError(
            "Need at least two labels",
            [Problem("labels", f"found {dict(counts)}", "check labels.label_column and labels.min_examples")],
        )
    return names


def check_labels(records: list[LabelRecord], names: list[str], policy: str) -> tuple[list[LabelRecord], int]:
    """Keep records whose label is in ``names``.

    Args:
        policy: ``"error"`` raises for records outside the set, ``"drop"`` skips them.

    Returns:
        (kept records, number dropped).

    Raises:
        DataError: with ``policy="error"``, one problem per record outside the label set, naming its ``file:line``.
    """
    allowed = set(names)
    bad = [r for r in records if r.label not in allowed]
    if bad and policy == "error":
        shown = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")
        raise DataError(
            f"{len(bad)} record(s) have a label outside the label set",
            [
                Problem(
                    r.id,
                    f"label {r.label!r} is not one of the {len(names)} labels",
                    f"use one of: {shown}; or add it to labels.names, or set labels.unknown_labels=drop",
                )
                for r in bad[:50]
            ],
        )
    return [r for r in records if r.label in allowed], len(bad)


def _rows_from(data_cfg, labels_cfg, path: str | None) -> list[tuple[str, dict]]:
    if path:
        return read_table(path, labels_cfg)
    return load_bundled(data_cfg.name, "labels")


def load_label_data(cfg) -> tuple[list[LabelRecord], list[LabelRecord], list[str], dict]:
    """Load, clean, de-duplicate, check and split the data of a :class:`~tunesmith.config.classify.ClassifyConfig`.

    Returns:
        (train records, eval records, label names in id order, a report dict of counts).

    Raises:
        DataError: unreadable files, missing columns, labels outside the label set (``file:line`` each).
    """
    report: dict = {}
    records = to_records(_rows_from(cfg.data, cfg.labels, cfg.data.path), cfg.labels)
    report["rows_read"] = len(records)
    eval_records = None
    if cfg.data.eval_path:
        eval_records = to_records(read_table(cfg.data.eval_path, cfg.labels), cfg.labels)
    if cfg.labels.deduplicate:
        records, report["duplicates_dropped"] = deduplicate(records)
        if eval_records is not None:
            seen = {(r.text, r.text_pair) for r in records}
            eval_records, _ = deduplicate(eval_records)
            before = len(eval_records)
            eval_records = [r for r in eval_records if (r.text, r.text_pair) not in seen]
            report["eval_overlap_dropped"] = before - len(eval_records)
    names = label_set(records, cfg.labels)
    policy = "drop" if (cfg.labels.names is None and cfg.labels.min_examples > 1) else cfg.labels.unknown_labels
    records, report["unknown_label_dropped"] = check_labels(records, names, policy)
    if eval_records is not None:
        eval_records, report["eval_unknown_label_dropped"] = check_labels(eval_records, names, policy)
        train = records
    else:
        train, eval_records = stratified_split(
            records, cfg.data.eval_fraction, cfg.data.split_seed, cfg.labels.stratify
        )
    train = subsample(train, cfg.data.max_train_examples, cfg.data.split_seed)
    eval_records = subsample(eval_records, cfg.data.max_eval_examples, cfg.data.split_seed)
    report.update(
        train=len(train),
        eval=len(eval_records),
        labels=len(names),
        train_counts=dict(Counter(r.label for r in train)),
        eval_counts=dict(Counter(r.label for r in eval_records)),
    )
    return train, eval_records, names, report
