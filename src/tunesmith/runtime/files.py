"""Atomic artifact writes (a crash never leaves a half-written file or folder that looks complete), and free names for
outputs that must not replace an existing file."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace`` (never half-written)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not exc.filename:
            exc.filename = str(path)  # a full disk fails in write(), which names no file
        raise


def atomic_write_json(path: str | Path, obj) -> None:
    """Write ``obj`` as indented JSON atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def atomic_write_jsonl(path: str | Path, rows) -> None:
    """Write an iterable of dicts as JSON Lines atomically."""
    atomic_write_text(path, "".join(json.dumps(r, default=str, ensure_ascii=False) + "\n" for r in rows))


def atomic_save_dir(final: str | Path, save_fn) -> Path:
    """Call ``save_fn(tmp_dir)`` then rename ``tmp_dir`` to ``final``: a crash leaves no complete-looking folder."""
    final = Path(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        save_fn(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def free_name(path: Path) -> Path:
    """``path`` when it does not exist, else the first free ``<stem>-2<suffix>``, ``<stem>-3<suffix>``, ..."""
    k = 2
    out = path
    while out.exists():
        out = path.with_name(f"{path.stem}-{k}{path.suffix}")
        k += 1
    return out
