"""Atomic artifact writes: a crash never leaves a half-written file or folder that looks complete, and what is
written gets the permissions the user's umask gives (0644 files, 0755 folders under umask 022), not the owner-only
0600/0700 of the temporary files it is written through."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path


def current_umask() -> int:
    """The process's file-mode creation mask (``os.umask`` can only be read by setting it: set and restored)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode of a new file under the current umask: ``0o666 & ~umask`` (0644 under umask 022)."""
    return 0o666 & ~current_umask()


def share(path: str | Path) -> Path:
    """Give ``path``, and everything under it when it is a folder, the modes a plain ``open``/``mkdir`` would have
    under the current umask (files ``0o666 & ~umask``, folders ``0o777 & ~umask``; symbolic links are left alone).

    Temporary files and folders (``mkstemp``/``mkdtemp``) are owner-only, and so are the safetensors files
    transformers and PEFT write; artifacts renamed from them would keep that, unreadable by a server running as
    another user.

    Returns:
        ``path``.
    """
    path = Path(path)
    mask = current_umask()
    fmode, dmode = 0o666 & ~mask, 0o777 & ~mask
    items = [path, *path.rglob("*")] if path.is_dir() else [path]
    for item in items:
        if not item.is_symlink():
            os.chmod(item, dmode if item.is_dir() else fmode)
    return path


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace`` (never half-written), with the umask's
    file mode (:func:`file_mode`)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), file_mode())
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
    """Call ``save_fn(tmp_dir)`` then rename ``tmp_dir`` to ``final``: a crash leaves no complete-looking folder.
    The folder and its files get the umask's modes (:func:`share`) before the rename."""
    final = Path(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        save_fn(tmp)
        share(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
