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


def test_library_deprecations_go_to_the_log_not_the_console(caplog):
    """A FutureWarning raised inside transformers is logged (INFO, tunesmith.warnings: into run.log during a run);
    one raised elsewhere is still shown (passed on to the display that was there before)."""
    import logging
    import warnings

    from tunesmith.runtime.console import quiet_library_warnings

    saved, shown = warnings.showwarning, []
    warnings.showwarning = lambda message, *args, **kw: shown.append(str(message))
    try:
        quiet_library_warnings()
        quiet_library_warnings()  # idempotent
        with caplog.at_level(logging.INFO, logger="tunesmith.warnings"):
            lib = "/x/site-packages/transformers/training_args.py"
            warnings.showwarning("`gradient_checkpointing` is deprecated", FutureWarning, lib, 1)
            warnings.showwarning("mine is deprecated", FutureWarning, "/x/myproject/code.py", 2)
            warnings.showwarning("a real problem", UserWarning, lib, 3)
        assert "gradient_checkpointing" in caplog.text and "mine" not in caplog.text
        assert shown == ["mine is deprecated", "a real problem"]
    finally:
        warnings.showwarning = saved
