"""The web page's workspace root: every path it accepts resolves inside ``--root`` (``..``, absolute paths elsewhere
and symlinks that lead out are refused with a message naming the root); uploads land in ``<root>/uploads`` under a
clean name, never over a file, and above the size limit are refused. No gradio needed."""

from __future__ import annotations

import os

import pytest

from tunesmith.errors import TunesmithError
from tunesmith.use.ui.workspace import UPLOADS, Workspace


@pytest.fixture
def ws(tmp_path):
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    (root / "data" / "train.jsonl").write_text('{"text": "x"}\n')
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jsonl").write_text('{"text": "secret"}\n')
    os.symlink(outside / "secret.jsonl", root / "data" / "link.jsonl")  # a file link leading out
    os.symlink(outside, root / "escape")  # a folder link leading out
    os.symlink(root / "data" / "train.jsonl", root / "inner.jsonl")  # a link that stays inside
    return Workspace(root)


def test_paths_inside_the_root_resolve(ws):
    assert ws.path("data/train.jsonl") == ws.root / "data" / "train.jsonl"
    assert ws.path(str(ws.root / "data" / "train.jsonl")) == ws.root / "data" / "train.jsonl"  # absolute, inside
    assert ws.path("runs/new/run") == ws.root / "runs" / "new" / "run"  # need not exist yet
    assert ws.path("data/../data/train.jsonl") == ws.root / "data" / "train.jsonl"
    assert ws.path("inner.jsonl") == ws.root / "data" / "train.jsonl"  # a link inside stays allowed
    assert ws.rel(ws.root / "data" / "train.jsonl") == "data/train.jsonl"


@pytest.mark.parametrize("value", ["../outside/secret.jsonl", "/etc/passwd", "data/../../outside", "~/x.jsonl"])
def test_paths_outside_the_root_are_refused(ws, value):
    with pytest.raises(TunesmithError) as exc:
        ws.path(value, "data file")
    (p,) = exc.value.problems
    assert p.where == "data file" and "outside the workspace root" in p.reason and str(ws.root) in p.fix


@pytest.mark.parametrize("value", ["data/link.jsonl", "escape/secret.jsonl", "escape"])
def test_symlinks_leading_out_are_refused_and_named(ws, value):
    with pytest.raises(TunesmithError) as exc:
        ws.path(value)
    reason = exc.value.problems[0].reason
    assert "symlink" in reason and "outside the workspace root" in reason and "outside" in reason


@pytest.mark.parametrize("value", ["", "   ", "a\x00b"])
def test_empty_or_nul_paths_are_refused(ws, value):
    with pytest.raises(TunesmithError, match="Not a path"):
        ws.path(value)


def test_the_file_list_shows_data_files_inside_only(ws):
    (ws.root / ".tunesmith-ui" / "configs").mkdir(parents=True)
    (ws.root / ".tunesmith-ui" / "configs" / "x.json").write_text("{}")
    (ws.root / "runs" / "r" / "checkpoints" / "checkpoint-1").mkdir(parents=True)
    (ws.root / "runs" / "r" / "checkpoints" / "checkpoint-1" / "trainer_state.json").write_text("{}")
    (ws.root / "runs" / "r" / "metrics.json").write_text("{}")
    (ws.root / "notes.md").write_text("x")
    files = ws.files()
    assert files == ["data/train.jsonl", "inner.jsonl", "runs/r/metrics.json"], files


def test_uploads_go_to_root_uploads_with_a_clean_name_and_never_overwrite(ws, tmp_path):
    src = tmp_path / "browser-tmp"
    src.write_text('{"text": "a"}\n')
    first = ws.save_upload(src, "../../my data;rm -rf.jsonl")
    assert first == ws.root / UPLOADS / "my_data_rm_-rf.jsonl" and first.read_text() == '{"text": "a"}\n'
    second = ws.save_upload(src, "my data;rm -rf.jsonl")
    assert second.name == "my_data_rm_-rf-1.jsonl" and first.read_text() == '{"text": "a"}\n'
    hidden = ws.save_upload(src, ".bashrc")
    assert hidden.parent == ws.root / UPLOADS and not hidden.name.startswith(".")


def test_uploads_above_the_limit_are_refused(ws, tmp_path):
    src = tmp_path / "big.jsonl"
    src.write_bytes(b"x" * 2048)
    with pytest.raises(TunesmithError, match="too large") as exc:
        ws.save_upload(src, "big.jsonl", max_bytes=1024)
    assert "limit" in exc.value.problems[0].reason
    assert not (ws.root / UPLOADS / "big.jsonl").exists()
    assert ws.save_upload(src, "big.jsonl", max_bytes=4096).stat().st_size == 2048


def test_an_uploads_folder_that_leads_out_is_refused(ws, tmp_path):
    os.symlink(tmp_path / "outside", ws.root / UPLOADS)
    src = tmp_path / "u.jsonl"
    src.write_text("{}\n")
    with pytest.raises(TunesmithError, match="Path refused"):
        ws.save_upload(src, "u.jsonl")
    assert not (tmp_path / "outside" / "u.jsonl").exists()


def test_a_root_that_is_not_a_folder_is_refused(tmp_path):
    with pytest.raises(TunesmithError, match="not a folder"):
        Workspace(tmp_path / "nope")
