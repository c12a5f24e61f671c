"""The run lock: one process writes (or resumes) a run folder at a time; a lock left by a killed process is taken
over."""

from __future__ import annotations

import os
from pathlib import Path

from tunesmith.errors import Problem, TunesmithError

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
        atexit.register(_release, lock)
        return lock
    raise TunesmithError(
        "Cannot lock the run directory",
        [Problem(str(lock), "another process keeps re-creating the lock", "choose another train.output_dir")],
    )


def _release(lock: Path) -> None:
    """Remove this process's lock at exit; a folder gone read-only or missing by then is left as it is (a lock of a
    dead process is taken over by the next run)."""
    try:
        if lock.is_file() and lock.read_text().strip() == str(os.getpid()):
            lock.unlink()
    except OSError:
        pass


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
    return True


def lock_holder(run_dir: str | Path) -> int | None:
    """The id of the live process holding ``run_dir``'s :data:`LOCK` (the process training that run), or None when
    nobody holds it (no lock, or one left by a process that has ended)."""
    try:
        pid = int((Path(run_dir) / LOCK).read_text().strip() or 0)
    except (OSError, ValueError):
        return None
    return pid if pid > 0 and _alive(pid) else None
