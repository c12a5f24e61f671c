"""`--overwrite` replaces only a folder tunesmith made, and moves it aside instead of deleting it.

Every refusal runs the real CLI (`python -m tunesmith sft ... --overwrite`) against real folders in a temporary home
(HOME and the current folder point into it), and hashes the whole home before and after: a refused overwrite changes
nothing at all (not even a lock file), an accepted one changes nothing outside the run folder.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import run_tunesmith, tree_hash
from tunesmith.errors import TunesmithError
from tunesmith.runtime.lock import LOCK
from tunesmith.runtime.paths import tunesmith_home
from tunesmith.runtime.rundir import RUN_MARKER, is_run_file, never_trained, prepare_run_dir, refusals, write_marker

OK = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]}


def _run_folder(path: Path, *extra: str) -> Path:
    """A folder as a finished `tunesmith sft` run leaves it (marker, config, metrics, adapter), plus ``extra`` files."""
    path.mkdir(parents=True)
    write_marker(path, "sft")
    (path / "config.yaml").write_text("train: {max_steps: 1}\n")
    (path / "metrics.json").write_text("{}\n")
    (path / "adapter").mkdir()
    (path / "adapter" / "adapter_config.json").write_text("{}\n")
    for name in extra:
        (path / name).write_text("mine\n")
    return path


@pytest.fixture
def home(tmp_path, tiny_llama_dir) -> Path:
    """A user's home: work/ (the current folder, with data, a config and notes), a git checkout, a folder of notes,
    and two folders tunesmith made (runs/old, runs/other)."""
    home = tmp_path / "home"
    work = home / "work"
    work.mkdir(parents=True)
    (work / "d.jsonl").write_text("".join(json.dumps(OK) + "\n" for _ in range(6)))
    (work / "notes.txt").write_text("my notes\n")
    (work / "cfg.yaml").write_text(f"model: {{name: {tiny_llama_dir}}}\ntrain: {{max_steps: 1}}\n")
    (home / "repo" / ".git").mkdir(parents=True)
    (home / "repo" / "README.md").write_text("a checkout\n")
    (home / "notes").mkdir()
    (home / "notes" / "todo.txt").write_text("buy tea\n")
    _run_folder(home / "runs" / "old")
    return home


def _sft(home: Path, *args: str, cwd: Path | None = None):
    env = {
        "HOME": str(home),
        "TUNESMITH_HOME": str(tunesmith_home()),
        "HF_HOME": str(home.parent / "hf"),
        "MPLCONFIGDIR": str(home.parent / "mpl"),
    }
    return run_tunesmith("sft", *args, cwd=cwd or home / "work", env=env)


CASES = [
    # (id, arguments after `sft`, setup(home) -> None, text the error names)
    ("root-folder", ["--set", "train.output_dir=/"], None, "it is the root folder"),
    ("home-folder", ["--set", "train.output_dir=~/"], None, "it is the home folder"),
    ("current-folder", ["--set", "train.output_dir=."], None, "it is the current folder"),
    ("ancestor-of-current", ["--set", "train.output_dir=.."], None, "an ancestor of the current folder"),
    ("git-checkout", ["--set", "train.output_dir=../repo"], None, "holds a git repository"),
    ("no-run-marker", ["--set", "train.output_dir=../notes"], None, f"no {RUN_MARKER} inside"),
    (
        "foreign-files",
        ["--set", "train.output_dir=../runs/old"],
        lambda h: (h / "runs" / "old" / "my-notes.txt").write_text("mine\n"),
        "files no tunesmith run writes: my-notes.txt",
    ),
    (
        "holds-the-data-file",
        ["--set", "train.output_dir=../runs/old", "--set", "data.path=../runs/old/samples.jsonl"],
        lambda h: shutil.copy(h / "work" / "d.jsonl", h / "runs" / "old" / "samples.jsonl"),
        "/home/runs/old/samples.jsonl",
    ),
    (
        "holds-the-eval-file",
        ["--set", "train.output_dir=../runs/old", "--set", "data.eval_path=../runs/old/predictions.jsonl"],
        lambda h: shutil.copy(h / "work" / "d.jsonl", h / "runs" / "old" / "predictions.jsonl"),
        "/home/runs/old/predictions.jsonl",
    ),
    (
        "holds-the-config-file",
        ["../runs/old/config.yaml", "--set", "train.output_dir=../runs/old"],
        None,
        "/home/runs/old/config.yaml",
    ),
    (
        "holds-the-model-folder",
        ["--set", "train.output_dir=../runs/old", "--set", "model.name=../runs/old/model"],
        None,
        "/home/runs/old/model",
    ),
    (
        "is-a-symlink",
        ["--set", "train.output_dir=../runs/link"],
        lambda h: (h / "runs" / "link").symlink_to(h / "runs" / "old"),
        "it is a symbolic link",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_overwrite_refusal_changes_nothing(home, tiny_llama_dir, case):
    _id, args, setup, text = case
    if setup:
        setup(home)
    if _id == "holds-the-model-folder":
        shutil.copytree(tiny_llama_dir, home / "runs" / "old" / "model")
        (home / "runs" / "old" / "model" / RUN_MARKER).unlink(missing_ok=True)
    base = ["cfg.yaml", "--set", "data.path=d.jsonl"] if not args[0].endswith(".yaml") else []
    before = tree_hash(home)
    res = _sft(home, *base, *args, "--overwrite")
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr and "Refusing to replace" in res.stderr, res.stderr[-3000:]
    assert text in res.stderr, res.stderr[-3000:]
    assert "train.output_dir=" in res.stderr  # located: the field that chose the folder
    assert tree_hash(home) == before, "a refused --overwrite changed files"


def test_overwrite_moves_a_tunesmith_run_aside_and_touches_nothing_else(home):
    old = home / "runs" / "old"
    before_old = tree_hash(old)
    before_rest = tree_hash(home, skip=(old,))
    res = _sft(home, "cfg.yaml", "--set", "data.path=d.jsonl", "--set", "train.output_dir=../runs/old", "--overwrite")
    assert res.returncode == 0, res.stderr[-3000:]
    moved = [p for p in (home / "runs").iterdir() if p.name.startswith("old.old-")]
    assert len(moved) == 1 and f"moved the previous run ../runs/old to ../runs/{moved[0].name}" in res.stderr
    assert tree_hash(moved[0]) == before_old, "the previous run was changed, not just moved"
    assert (old / "metrics.json").is_file() and (old / RUN_MARKER).is_file() and not (old / LOCK).exists()
    assert json.loads((old / RUN_MARKER).read_text())["kind"] == "sft"
    assert tree_hash(home, skip=(old, moved[0])) == before_rest, "files outside the run folder changed"


def test_a_run_stopped_before_training_is_rerun_without_overwrite(home):
    """SIGTERM while the data or model loads leaves config.yaml, run.log, the marker and a dead process's lock."""
    run = home / "runs" / "stopped"
    run.mkdir()
    write_marker(run, "sft")
    for name in ("config.yaml", "run.log", "manifest.json"):
        (run / name).write_text("x\n")
    (run / LOCK).write_text("999999999")  # no such process
    (run / "checkpoints" / "checkpoint-1").mkdir(parents=True)  # cut short: no trainer_state.json
    assert never_trained(run)
    res = _sft(home, "cfg.yaml", "--set", "data.path=d.jsonl", "--set", "train.output_dir=../runs/stopped")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "stopped before its first checkpoint" in res.stderr and (run / "metrics.json").is_file()
    assert not list((home / "runs").glob("stopped.old-*"))


def test_prepare_run_dir_marks_what_it_creates_and_only_that(tmp_path):
    fresh = prepare_run_dir(tmp_path / "new", kind="baseline")
    assert json.loads((fresh / RUN_MARKER).read_text())["kind"] == "baseline"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "data.csv").write_text("x\n")
    with pytest.raises(TunesmithError, match="already holds a run"):
        prepare_run_dir(mine)
    assert not (mine / RUN_MARKER).exists()
    with pytest.raises(TunesmithError) as exc:
        prepare_run_dir(mine, overwrite=True)
    assert f"no {RUN_MARKER} inside" in exc.value.render() and (mine / "data.csv").read_text() == "x\n"


def test_refusals_collect_every_reason(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = _run_folder(tmp_path / "run", "mine.txt")
    (run / ".git").mkdir()
    reasons = " | ".join(p.reason for p in refusals(tmp_path, inputs=(str(run / "config.yaml"),)))
    assert "current folder" in reasons and "git" not in reasons  # the git checkout is inside, not this folder
    reasons = " | ".join(p.reason for p in refusals(run, inputs=(str(run / "config.yaml"),)))
    assert "git repository" in reasons and "own input" in reasons


@pytest.mark.parametrize(
    "name,ok",
    [
        ("metrics.json", True),
        (".metrics.json.abc123", True),  # an atomic write's temporary file
        (".adapter.tmp-x1", True),
        ("baseline-3shot", True),
        ("model-00001-of-00002.safetensors", True),
        (RUN_MARKER, True),
        (".git", False),
        ("notes.txt", False),
        ("metrics.json.old-20260101-000000", False),
        (".bashrc", False),
    ],
)
def test_run_file_names(name, ok):
    assert is_run_file(name) is ok


def test_lock_of_another_live_process_still_refuses_overwrite(tmp_path):
    """A running run is never moved aside under it: the lock is checked before anything moves."""
    from tunesmith.runtime.lock import lock_run_dir

    run = _run_folder(tmp_path / "run")
    (run / LOCK).write_text(str(os.getppid()))
    with pytest.raises(TunesmithError, match="Another process"):
        lock_run_dir(run)
    assert (run / "metrics.json").is_file()
