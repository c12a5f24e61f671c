"""Read data files into ``(where, record)`` pairs, keeping the physical line of every record.

Formats: JSON Lines (``.jsonl``/``.ndjson``, and ``.json`` files that are really JSON Lines), a
JSON array or object (``.json``), CSV/TSV (``.csv``/``.tsv``), Parquet (``.parquet``) and a
Hugging Face dataset saved with ``Dataset.save_to_disk`` (a folder).  ``where`` is
``"path:line"`` (1-based physical line) for JSONL, CSV (the line the record starts on, from the
``csv`` module's ``line_num``, so quoted newlines are counted) and JSON (the line where the
array element starts); ``"path#row"`` (0-based) for Parquet and saved datasets.  A gzip-compressed text file (``.jsonl.gz``,
``.json.gz``, ``.csv.gz``, ...) is read as the file inside it, with the same line numbers.

Undecodable records (invalid UTF-8, malformed JSON) are returned as :class:`Problem` entries,
never raised one by one, so the caller can report them all or skip them.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from tunesmith.errors import DataError, Problem

TEXT_SUFFIXES = {".jsonl", ".ndjson", ".json", ".csv", ".tsv"}


def read_records(path: str | Path) -> tuple[list[tuple[str, object]], list[Problem]]:
    """Read every record of a data file or saved dataset folder.

    Args:
        path: the file or folder.

    Returns:
        (records, problems): ``records`` is a list of (``where``, record) with ``record`` a
        dict (or whatever JSON value the line holds); ``problems`` lists every unreadable line.

    Raises:
        DataError: when the path does not exist or its type is not supported.
    """
    p = Path(path)
    if p.is_dir():
        return _read_saved_dataset(p), []
    if not p.is_file():
        raise DataError("Data file not found", [Problem(str(p), "no such file or folder", "check data.path")])
    suffix = p.suffix.lower()
    if suffix == ".gz":
        suffix = Path(p.stem).suffix.lower()  # data.jsonl.gz reads as data.jsonl
    if suffix == ".parquet":
        return _read_parquet(p), []
    if suffix in (".csv", ".tsv"):
        return _read_csv(p, "\t" if suffix == ".tsv" else ",")
    if suffix == ".json":
        return _read_json(p)
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(p)
    raise DataError("Unsupported data file", [Problem(str(p), f"unknown file type {suffix or '(none)'!r}",
                                                      "use .jsonl, .json, .csv, .tsv, .parquet or a saved dataset folder")])


def _read_bytes(p: Path) -> bytes:
    """The file's bytes, decompressed when the name ends in ``.gz`` (gzip)."""
    if p.suffix.lower() != ".gz":
        return p.read_bytes()
    import gzip

    try:
        return gzip.decompress(p.read_bytes())
    except (OSError, EOFError) as exc:
        raise DataError("Cannot decompress data file", [Problem(str(p), f"not a valid gzip file ({exc})", "re-compress it with gzip, or give the uncompressed file")]) from None


def _decode_lines(p: Path) -> tuple[list[tuple[int, str]], list[Problem]]:
    """Split into physical lines (``\\n``), decoding each as UTF-8; bad lines become problems."""
    lines, problems = [], []
    raw = _read_bytes(p)
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        try:
            lines.append((lineno, line.decode("utf-8")))
        except UnicodeDecodeError as exc:
            problems.append(Problem(f"{p}:{lineno}", f"invalid UTF-8 at byte {exc.start} of the line", "re-save the file as UTF-8"))
    return lines, problems


def _read_jsonl(p: Path) -> tuple[list, list[Problem]]:
    lines, problems = _decode_lines(p)
    records = []
    for lineno, line in lines:
        if not line.strip():
            continue
        try:
            records.append((f"{p}:{lineno}", json.loads(line)))
        except json.JSONDecodeError as exc:
            problems.append(Problem(f"{p}:{lineno}", f"malformed JSON: {exc.msg} (column {exc.colno})",
                                    "fix this line; each line must be one JSON object"))
        except RecursionError:
            problems.append(Problem(f"{p}:{lineno}", "JSON nested too deeply to parse", "flatten this record; each line must be one JSON object"))
    problems.sort(key=lambda pr: int(pr.where.rsplit(":", 1)[1]))
    return records, problems


def _read_json(p: Path) -> tuple[list, list[Problem]]:
    raw = _read_bytes(p)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        return [], [Problem(f"{p}:{line}", f"invalid UTF-8 at byte {exc.start}", "re-save the file as UTF-8")]
    try:
        data = json.loads(text)
    except RecursionError:
        return [], [Problem(f"{p}:1", "JSON nested too deeply to parse", "flatten the records")]
    except json.JSONDecodeError as exc:
        first = text.lstrip()[:1]
        if first == "{" and exc.msg.startswith("Extra data"):
            return _read_jsonl(p)  # a .json file that is really JSON Lines (e.g. BFCL)
        return [], [Problem(f"{p}:{exc.lineno}", f"malformed JSON: {exc.msg} (column {exc.colno})",
                            "fix the JSON (or use .jsonl, one record per line)")]
    if not isinstance(data, list):
        return [(f"{p}:1", data)], []
    starts = _element_lines(text, len(data))
    return [(f"{p}:{starts[i]}" if starts else f"{p}#{i}", r) for i, r in enumerate(data)], []


def _element_lines(text: str, n: int) -> list[int] | None:
    """Physical line (1-based) where each top-level array element starts, via ``raw_decode``."""
    dec = json.JSONDecoder()
    pos = text.index("[") + 1
    out = []
    newline_count, counted_to = 0, 0
    while len(out) < n:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        newline_count += text.count("\n", counted_to, pos)
        counted_to = pos
        out.append(newline_count + 1)
        try:
            _, pos = dec.raw_decode(text, pos)
        except json.JSONDecodeError:
            return None
    return out


def _read_csv(p: Path, delimiter: str) -> tuple[list, list[Problem]]:
    raw = _read_bytes(p)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        return [], [Problem(f"{p}:{line}", f"invalid UTF-8 at byte {exc.start}", "re-save the file as UTF-8")]
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    reader.fieldnames  # reads the header row, so line_num points past it
    records, start = [], reader.line_num + 1
    for row in reader:
        # line_num is the last physical line read; the record started after the previous one ended
        records.append((f"{p}:{start}", {k: v for k, v in row.items() if k is not None}))
        start = reader.line_num + 1
    return records, []


def _read_parquet(p: Path) -> list:
    from datasets import Dataset

    ds = Dataset.from_parquet(str(p))
    return [(f"{p}#{i}", row) for i, row in enumerate(ds)]


def _read_saved_dataset(p: Path) -> list:
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(p))
    except (FileNotFoundError, ValueError) as exc:
        raise DataError("Cannot read dataset folder", [Problem(str(p), f"not a saved Hugging Face dataset ({exc})",
                                                               "save it with Dataset.save_to_disk, or point data.path at a file")]) from None
    if isinstance(ds, DatasetDict):
        split = "train" if "train" in ds else next(iter(ds))
        ds, p = ds[split], p / split
    return [(f"{p}#{i}", row) for i, row in enumerate(ds)]
