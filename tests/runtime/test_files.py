"""Atomic writes give artifacts the permissions the user's umask gives (0644 files, 0755 folders under umask 022), not
the owner-only modes of the temporary files they are written through.

    .venv/bin/python -m pytest -q tests/runtime/test_files.py
"""

import os
import stat
from contextlib import contextmanager

import pytest


@contextmanager
def umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize(("mask", "fmode", "dmode"), [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_atomic_writes_follow_the_umask(tmp_path, mask, fmode, dmode):
    from tunesmith.runtime.files import atomic_save_dir, atomic_write_json, atomic_write_text, current_umask

    with umask(mask):
        assert current_umask() == mask and current_umask() == mask  # reading it leaves it as it was
        atomic_write_text(tmp_path / "a.txt", "hello")
        atomic_write_json(tmp_path / "b.json", {"x": 1})

        def save(folder):
            (folder / "sub").mkdir()
            w = folder / "sub" / "model.safetensors"
            w.write_bytes(b"\0" * 8)
            os.chmod(w, 0o600)  # as safetensors/PEFT write it

        atomic_save_dir(tmp_path / "merged", save)
    assert (tmp_path / "a.txt").read_text() == "hello"
    assert mode(tmp_path / "a.txt") == fmode and mode(tmp_path / "b.json") == fmode
    assert mode(tmp_path / "merged") == dmode and mode(tmp_path / "merged" / "sub") == dmode
    assert mode(tmp_path / "merged" / "sub" / "model.safetensors") == fmode
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_share_leaves_symlinks_alone(tmp_path):
    from tunesmith.runtime.files import share

    target = tmp_path / "elsewhere.txt"
    target.write_text("x")
    os.chmod(target, 0o600)
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "link").symlink_to(target)
    with umask(0o022):
        share(folder)
    assert mode(target) == 0o600 and mode(folder) == 0o755
