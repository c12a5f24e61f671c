"""Atomic artifact writes (a crash never leaves a half-written file or folder that looks complete) with the
permissions the user's umask gives (0644 files, 0755 folders under umask 022, not the owner-only 0600/0700 of the
temporary files they are written through), failed writes turned into clear errors, and free names for outputs that
must not replace an existing file."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from tunesmith.errors import Problem, TunesmithError


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


_NO_SPACE = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
_WRITE_ERRNOS = _NO_SPACE | {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.EIO}
_OS_ERROR_CODE = re.compile(r"\(os error (\d+)\)|code: (\d+)|errno (\d+)", re.IGNORECASE)


def io_error_code(exc: BaseException) -> int | None:
    """The ``errno`` of an I/O failure: an ``OSError``'s own, or the one a Rust library (tokenizers, safetensors)
    puts in its message (``No space left on device (os error 28)``); torch's checkpoint writer failing counts as
    ``ENOSPC``. None for anything else."""
    if isinstance(exc, OSError):
        return exc.errno
    text = str(exc)
    if "failed writing file" in text or "file write failed" in text:
        return errno.ENOSPC
    m = _OS_ERROR_CODE.search(text)
    return int(next(g for g in m.groups() if g)) if m else None


@contextmanager
def write_errors(run_dir: str | Path, *, resume: Callable[[], str | None] | str | None = None):
    """Turn a failed write (disk full, file too large, read-only, no permission; any I/O error on a file under
    ``run_dir``) into a
    :class:`TunesmithError` naming the file (or, when the library that failed does not say which, the folder); a run
    stopped this way has no ``metrics.json``, so it never looks complete.

    Args:
        run_dir: the folder being written.
        resume: the command that continues the run (``--resume latest``), shown in the fix; a callable is asked at
            error time (None when no checkpoint was completed: then the fix says to run the command again).

    Other errors pass through unchanged.
    """
    try:
        yield
    except Exception as exc:
        code = io_error_code(exc)
        filename = getattr(exc, "filename", None) if isinstance(exc, OSError) else None
        inside = filename is not None and Path(run_dir).resolve() in Path(str(filename)).resolve().parents
        if code is None or isinstance(exc, TunesmithError) or (code not in _WRITE_ERRNOS and not inside):
            raise
        where = filename or _newest_file(Path(run_dir))
        reason = (exc.strerror if isinstance(exc, OSError) else None) or os.strerror(code)
        if not isinstance(exc, OSError):
            reason += f" ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        fix = (
            "free disk space or lower the run's size"
            if code in _NO_SPACE
            else "make the folder writable or choose another output folder"
        )
        command = resume() if callable(resume) else resume
        then = f"; then resume with: {command}" if command else "; then run the same command again"
        raise TunesmithError(
            "Cannot write the run's files; the run is incomplete (no metrics.json)",
            [Problem(str(where), reason, fix + then)],
        ) from None


def _newest_file(folder: Path) -> Path:
    """The newest file under ``folder`` (what was being written when a library failed), else the folder."""
    try:
        files = [p for p in folder.rglob("*") if p.is_file()]
        return max(files, key=lambda p: p.stat().st_mtime_ns) if files else folder
    except OSError:
        return folder


def free_name(path: Path) -> Path:
    """``path`` when it does not exist, else the first free ``<stem>-2<suffix>``, ``<stem>-3<suffix>``, ..."""
    k = 2
    out = path
    while out.exists():
        out = path.with_name(f"{path.stem}-{k}{path.suffix}")
        k += 1
    return out
