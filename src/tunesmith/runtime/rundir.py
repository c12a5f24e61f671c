"""Run directories: refuse to mix runs, the run lock, write errors as clear messages, and which checkpoint is the
newest complete one (what ``--resume latest`` and ``tunesmith ui`` read)."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

from tunesmith.errors import Problem, TunesmithError

FINAL_ARTIFACTS = ("metrics.json", "adapter", "model", "manifest.json")
"""Files whose presence marks a finished run; a new run never writes over them without ``--overwrite``."""


def prepare_run_dir(path: str | Path, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Create (or check) a run directory.

    In a multi-process run only the main process checks and creates it; the others wait for it (and exit with the same
    code when it fails).  A directory that already holds a finished run (any of :data:`FINAL_ARTIFACTS`) or another
    run's checkpoints is refused unless ``overwrite`` (which deletes it) or ``resume`` is given.

    Returns:
        The directory, created.

    Raises:
        TunesmithError: when the directory would mix two runs, or is not writable.
    """
    from tunesmith.runtime.distributed import on_main

    return on_main(_prepare_run_dir, Path(path), overwrite=overwrite, resume=resume)


def _prepare_run_dir(out: Path, *, overwrite: bool, resume: bool) -> Path:
    if out.exists() and not out.is_dir():
        raise TunesmithError(
            "Output path is a file",
            [Problem(str(out), "train.output_dir must be a directory", "choose another train.output_dir")],
        )
    if out.is_dir() and any(p.name != LOCK for p in out.iterdir()) and not resume:
        if not overwrite:
            raise TunesmithError(
                "Output directory already holds a run",
                [
                    Problem(
                        str(out),
                        "it is not empty; writing here would overwrite or mix two runs' files",
                        "pass --overwrite to replace it, --resume to continue it, or set train.output_dir "
                        "to a new folder",
                    )
                ],
            )
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise TunesmithError(
            "Cannot write to the output directory",
            [Problem(str(out), exc.strerror or str(exc), "choose a writable train.output_dir with free space")],
        ) from None
    return out


_WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.ENOTDIR}


@contextmanager
def write_errors(run_dir: str | Path):
    """Turn a failed write under ``run_dir`` (disk full, file too large, read-only, no permission) into a
    :class:`TunesmithError` naming the file; a run stopped this way has no ``metrics.json``, so it never looks complete.

    torch's checkpoint writer reports a full disk as ``RuntimeError("... PytorchStreamWriter failed writing file
    ...")``; that is converted too.  Other errors pass through unchanged.
    """
    try:
        yield
    except OSError as exc:
        if exc.errno not in _WRITE_ERRNOS:
            raise
        where = str(exc.filename or run_dir)
        raise TunesmithError(
            "Cannot write the run's files; the run is incomplete (no metrics.json)",
            [
                Problem(
                    where,
                    exc.strerror or str(exc),
                    "free disk space or choose a writable train.output_dir, then run again (--resume latest "
                    "keeps saved checkpoints)",
                )
            ],
        ) from None
    except RuntimeError as exc:
        if "failed writing file" not in str(exc) and "file write failed" not in str(exc):
            raise
        raise TunesmithError(
            "Cannot write a checkpoint; the run is incomplete (no metrics.json)",
            [
                Problem(
                    str(run_dir),
                    str(exc).splitlines()[0][:200],
                    "free disk space or choose a writable train.output_dir",
                )
            ],
        ) from None


LOCK = ".tunesmith.lock"
"""File in a run dir holding the id of the process writing it."""


def lock_run_dir(run_dir: str | Path) -> Path:
    """Claim ``run_dir`` for this process, so two processes never write (or resume) the same run at once.

    A lock left by a process that no longer exists (killed with SIGKILL) is taken over; the lock is
    removed when this process exits.

    Returns:
        The lock file path.

    Raises:
        TunesmithError: when a live process (another pid) holds the lock.
    """
    import atexit

    lock = Path(run_dir) / LOCK
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid == os.getpid():
                return lock
            if pid > 0 and _alive(pid):
                raise TunesmithError(
                    "Another process is writing this run",
                    [
                        Problem(
                            str(run_dir),
                            f"process {pid} holds {LOCK}",
                            "wait for it to finish (or stop it), or choose another train.output_dir",
                        )
                    ],
                ) from None
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        atexit.register(
            lambda: (
                lock.unlink(missing_ok=True)
                if lock.is_file() and lock.read_text().strip() == str(os.getpid())
                else None
            )
        )
        return lock
    raise TunesmithError(
        "Cannot lock the run directory",
        [Problem(str(lock), "another process keeps re-creating the lock", "choose another train.output_dir")],
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # an exited child its parent has not reaped yet (a zombie) still answers kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def lock_holder(run_dir: str | Path) -> int | None:
    """The id of the live process holding ``run_dir``'s :data:`LOCK` (the process training that run), or None when
    nobody holds it (no lock, or one left by a process that has ended)."""
    try:
        pid = int((Path(run_dir) / LOCK).read_text().strip() or 0)
    except (OSError, ValueError):
        return None
    return pid if pid > 0 and _alive(pid) else None


CHECKPOINT_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt", "rng_state.pth")
"""Files every resumable checkpoint holds besides the weights (``rng_state.pth`` is ``rng_state_<rank>.pth`` in a
checkpoint written by several processes)."""


def checkpoint_step(path: Path) -> int:
    """Global step of a ``checkpoint-N`` folder (N), or -1 for another name."""
    m = re.fullmatch(r"checkpoint-(\d+)", path.name)
    return int(m.group(1)) if m else -1


def is_complete(ckpt: Path) -> bool:
    """True when ``ckpt`` holds weights plus every file of :data:`CHECKPOINT_FILES` and a readable trainer state."""
    if not ckpt.is_dir() or not all((ckpt / f).is_file() for f in CHECKPOINT_FILES if f != "rng_state.pth"):
        return False
    if not (ckpt / "rng_state.pth").is_file() and not any(ckpt.glob("rng_state_*.pth")):
        return False
    if not any(ckpt.rglob("*.safetensors")):
        return False
    try:
        json.loads((ckpt / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return True


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The complete ``checkpoint-N`` under ``run_dir/checkpoints`` with the largest N, or None."""
    root = Path(run_dir) / "checkpoints"
    found = (
        sorted((p for p in root.glob("checkpoint-*") if checkpoint_step(p) >= 0), key=checkpoint_step, reverse=True)
        if root.is_dir()
        else []
    )
    return next((p for p in found if is_complete(p)), None)
