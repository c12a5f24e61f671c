"""Read data files into ``(where, record)`` pairs, keeping the physical line of every record.

Formats: JSON Lines (``.jsonl``/``.ndjson``, and ``.json`` files that are really JSON Lines), a
JSON array or object (``.json``), CSV/TSV (``.csv``/``.tsv``), Parquet (``.parquet``) and a
Hugging Face dataset saved with ``Dataset.save_to_disk`` (a folder).  ``where`` is
``"path:line"`` (1-based physical line) for JSONL, CSV (the line the record starts on, from the
``csv`` module's ``line_num``, so quoted newlines are counted) and JSON (the line where the
array element starts); ``"path#row"`` (0-based) for Parquet and saved datasets.  A gzip-compressed text file
(``.jsonl.gz``, ``.json.gz``, ``.csv.gz``, ...) is read as the file inside it, with the same line numbers.

Undecodable records (invalid UTF-8, malformed JSON) are returned as :class:`Problem` entries,
never raised one by one, so the caller can report them all or skip them.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from tunesmith.errors import DataError, Problem

SUFFIX_TYPES = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
}
"""File suffix -> file type (``.gz`` is looked through: ``data.jsonl.gz`` is ``jsonl``)."""


def read_records(
    path: str | Path, *, file_type: str = "auto", column_names: list[str] | None = None, encoding: str = "utf-8"
) -> tuple[list[tuple[str, object]], list[Problem]]:
    """Read every record of a data file or saved dataset folder: the one reader of every command's data.

    Args:
        path: the file or folder.
        file_type: ``auto`` (by suffix; a folder is a saved dataset), ``jsonl``, ``json``, ``csv``, ``tsv``,
            ``parquet`` or ``hf``.
        column_names: CSV/TSV only: the column names of a file without a header row (None: the first row is the header).
        encoding: CSV/TSV only: the text encoding (JSON is always UTF-8).

    Returns:
        (records, problems): ``records`` is a list of (``where``, record) with ``record`` a
        dict (or whatever JSON value the line holds); ``problems`` lists every unreadable line.

    Raises:
        DataError: when the path does not exist or its type is not supported.
    """
    p = Path(path)
    if file_type == "auto":
        suffix = p.suffix.lower()
        if suffix == ".gz":
            suffix = Path(p.stem).suffix.lower()  # data.jsonl.gz reads as data.jsonl
        file_type = "hf" if p.is_dir() else SUFFIX_TYPES.get(suffix, "")
        if not file_type and p.is_file():
            raise DataError(
                "Unsupported data file",
                [
                    Problem(
                        str(p),
                        f"unknown file type {suffix or '(none)'!r}",
                        "use .jsonl, .json, .csv, .tsv, .parquet or a saved dataset folder",
                    )
                ],
            )
    if file_type == "hf" and p.is_dir():
        return _read_saved_dataset(p), []
    if not p.is_file():
        raise DataError("Data file not found", [Problem(str(p), "no such file or folder", "check data.path")])
    if file_type == "parquet":
        return _read_parquet(p), []
    if file_type in ("csv", "tsv"):
        return _read_csv(p, "\t" if file_type == "tsv" else ",", column_names, encoding)
    if file_type == "json":
        return _read_json(p)
    if file_type == "jsonl":
        return _read_jsonl(p)
    raise DataError(
        "Unsupported data file",
        [
            Problem(
                str(p),
                f"file type {file_type!r} does not fit this path",
                "use .jsonl, .json, .csv, .tsv, .parquet or a saved dataset folder",
            )
        ],
    )


def read_text_input(source: str) -> tuple[str, str]:
    """The text of an input file, or of stdin for ``-`` (``generate`` and ``predict`` inputs).

    Returns:
        (its name for messages: the path or ``stdin``, the text).

    Raises:
        DataError: a missing file, a folder, an unreadable file, or text that is not UTF-8 (naming the byte).
    """
    import sys

    name = "stdin" if source == "-" else source
    try:
        if source == "-":
            return name, sys.stdin.read()
        return name, Path(source).read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(
            "Input is not UTF-8 text",
            [Problem(name, f"invalid UTF-8 at byte {exc.start}", "re-save the file as UTF-8")],
        ) from None
    except (OSError, ValueError) as exc:
        reason = "no such file" if isinstance(exc, FileNotFoundError) else getattr(exc, "strerror", None) or str(exc)
        raise DataError(
            "Cannot read the input", [Problem(name, reason, "check the path, or pass - to read stdin")]
        ) from None


def _read_bytes(p: Path) -> bytes:
    """The file's bytes, decompressed when the name ends in ``.gz`` (gzip)."""
    if p.suffix.lower() != ".gz":
        return p.read_bytes()
    import gzip

    try:
        return gzip.decompress(p.read_bytes())
    except (OSError, EOFError) as exc:
        raise DataError(
            "Cannot decompress data file",
            [
                Problem(
                    str(p), f"not a valid gzip file ({exc})", "re-compress it with gzip, or give the uncompressed file"
                )
            ],
        ) from None


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
            problems.append(
                Problem(f"{p}:{lineno}", f"invalid UTF-8 at byte {exc.start} of the line", "re-save the file as UTF-8")
            )
    return lines, problems


def _read_jsonl(p: Path) -> tuple[list, list[Problem]]:
    lines, problems = _decode_lines(p)
    records = []
    for lineno, line in lines:
        if not line.strip():
            continue
        where = f"{p}:{lineno}"
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as exc:
            problems.append(_json_problem(where, exc, "fix this line; each line must be one JSON object"))
            continue
        bad = bad_text(record) if _has_surrogate_escape(line) else None
        if bad is not None:
            problems.append(_surrogate_problem(where, bad))
        else:
            records.append((where, record))
    problems.sort(key=lambda pr: int(pr.where.rsplit(":", 1)[1]))
    return records, problems


def _json_problem(where: str, exc: Exception, fix: str) -> Problem:
    """The problem of a JSON text ``json.loads`` refused: malformed, nested too deeply, or a number too long."""
    if isinstance(exc, json.JSONDecodeError):
        return Problem(where, f"malformed JSON: {exc.msg} (column {exc.colno})", fix)
    if isinstance(exc, RecursionError):
        return Problem(where, "JSON nested too deeply to parse", "flatten this record; " + fix.split("; ", 1)[-1])
    return Problem(  # ValueError: Python reads integers of at most 4,300 digits
        where, "holds an integer too long to read (more than 4,300 digits)", "write the number as a string"
    )


def _has_surrogate_escape(text: str) -> bool:
    """True when JSON ``text`` holds a ``\\uD800``-``\\uDFFF`` escape (the only way JSON makes a lone surrogate)."""
    return "\\ud" in text or "\\uD" in text


def bad_text(obj) -> str | None:
    """The first string (key or value) in ``obj`` that is not valid Unicode (a lone surrogate such as ``\\ud800``,
    which no tokenizer or file can take), as an ASCII snippet; None when every string is fine. No recursion."""
    stack = [obj]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            try:
                node.encode("utf-8")
            except UnicodeEncodeError as exc:
                return ascii(node[max(0, exc.start - 20) : exc.start + 20])
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return None


def _surrogate_problem(where: str, snippet: str) -> Problem:
    return Problem(
        where,
        f"holds text that is not valid Unicode (an unpaired surrogate escape) near {snippet}",
        "remove the \\ud800-\\udfff escape (a surrogate must come in a high/low pair), or re-export the data as UTF-8",
    )


def _read_json(p: Path) -> tuple[list, list[Problem]]:
    raw = _read_bytes(p)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        return [], [Problem(f"{p}:{line}", f"invalid UTF-8 at byte {exc.start}", "re-save the file as UTF-8")]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        first = text.lstrip()[:1]
        if first == "{" and exc.msg.startswith("Extra data"):
            return _read_jsonl(p)  # a .json file that is really JSON Lines (e.g. BFCL)
        return [], [_json_problem(f"{p}:{exc.lineno}", exc, "fix the JSON (or use .jsonl, one record per line)")]
    except (ValueError, RecursionError) as exc:
        return [], [_json_problem(f"{p}:1", exc, "fix the JSON (or use .jsonl, one record per line)")]
    if not isinstance(data, list):
        data, starts = [data], [1]
    else:
        starts = _element_lines(text, len(data))
    records = [(f"{p}:{starts[i]}" if starts else f"{p}#{i}", r) for i, r in enumerate(data)]
    if not _has_surrogate_escape(text):
        return records, []
    bad = [(where, bad_text(r)) for where, r in records]
    return [rec for rec, (_, b) in zip(records, bad) if b is None], [_surrogate_problem(w, b) for w, b in bad if b]


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


def _read_csv(
    p: Path, delimiter: str, column_names: list[str] | None = None, encoding: str = "utf-8"
) -> tuple[list, list[Problem]]:
    """CSV (quoted fields may hold newlines) or TSV (no quoting: a tab separates, quotes are text, as IANA's TSV)."""
    raw = _read_bytes(p)
    try:
        text = raw.decode("utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding)
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        return [], [
            Problem(
                f"{p}:{line}",
                f"invalid {encoding} at byte {exc.start}",
                "re-save the file as UTF-8, or set its encoding (labels.encoding, e.g. latin-1)",
            )
        ]
    except LookupError:
        raise DataError(
            "Unknown text encoding",
            [Problem(str(p), f"{encoding!r} is not a Python codec", "use e.g. utf-8 or latin-1")],
        ) from None
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.DictReader(
        io.StringIO(text, newline=""), fieldnames=column_names, delimiter=delimiter, quoting=quoting
    )
    _ = reader.fieldnames  # reads the header row (when there is one), so line_num points past it
    records, start = [], reader.line_num + 1
    try:
        for row in reader:
            # line_num is the last physical line read; the record started after the previous one ended
            if any((v or "").strip() for k, v in row.items() if k is not None and isinstance(v, str)):
                records.append((f"{p}:{start}", {k: v for k, v in row.items() if k is not None}))
            start = reader.line_num + 1
    except csv.Error as exc:  # the record that failed starts at `start`
        return records, [Problem(f"{p}:{start}", str(exc), "fix the CSV quoting (or split the field)")]
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
        raise DataError(
            "Cannot read dataset folder",
            [
                Problem(
                    str(p),
                    f"not a saved Hugging Face dataset ({exc})",
                    "save it with Dataset.save_to_disk, or point data.path at a file",
                )
            ],
        ) from None
    if isinstance(ds, DatasetDict):
        split = "train" if "train" in ds else next(iter(ds))
        ds, p = ds[split], p / split
    return [(f"{p}#{i}", row) for i, row in enumerate(ds)]
