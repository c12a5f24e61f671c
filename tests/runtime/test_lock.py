"""The run lock: a second writer is refused, a dead writer's lock is taken over, and releasing it never prints a
traceback (a folder that turned read-only, or vanished, during the run)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tunesmith.runtime.lock import LOCK, _release, lock_run_dir


def _immutable(folder, on: bool) -> bool:
    """chattr +i / -i (root ignores permission bits); False when the file system does not support it."""
    if shutil.which("chattr") is None:
        return False
    return subprocess.run(["chattr", "+i" if on else "-i", str(folder)], capture_output=True).returncode == 0


def test_release_survives_a_read_only_or_missing_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lock = lock_run_dir(run)
    assert lock.read_text() == str(os.getpid())
    if os.geteuid() == 0 and not _immutable(run, True):
        pytest.skip("cannot make a folder read-only for root here (chattr +i unsupported)")
    if os.geteuid() != 0:
        run.chmod(0o500)
    try:
        _release(lock)  # the unlink fails (read-only): no exception, the lock stays for the next run to take over
        assert lock.is_file()
    finally:
        if os.geteuid() == 0:
            _immutable(run, False)
        run.chmod(0o700)
    _release(lock)
    assert not lock.exists()
    shutil.rmtree(run)
    _release(lock)  # the folder is gone: nothing to do, nothing raised


def test_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.run(["python3", "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / LOCK).write_text(dead.stdout.strip())
    assert lock_run_dir(tmp_path).read_text() == str(os.getpid())
