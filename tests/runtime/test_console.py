"""The one progress display: plain lines when stderr is not a terminal (counts, tokens/s, ETA), a bar otherwise."""

import re

import pytest

from tunesmith.runtime import console as console_mod
from tunesmith.runtime.console import Progress, eta_seconds


@pytest.fixture
def clock(monkeypatch):
    """A fake monotonic clock the test advances by hand."""
    now = [1000.0]
    monkeypatch.setattr(console_mod.time, "monotonic", lambda: now[0])
    return now


def test_eta_is_elapsed_per_item_times_items_left():
    assert eta_seconds(10.0, 2, 8) == pytest.approx(40.0)
    assert eta_seconds(10.0, 0, 8) is None and eta_seconds(5.0, 5, -1) == 0.0


def test_lines_at_every_tenth_and_at_the_end_when_not_a_terminal(clock, capsys):
    with Progress("generate", 20, unit="prompts") as bar:
        assert bar.lines  # pytest's captured stderr is no terminal
        for _ in range(5):
            clock[0] += 2.0
            bar.advance(4, tokens=40)
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == "generate: 4/20 prompts (20%), 20.0 tokens/s, elapsed 2s, ETA 8s"
    assert lines[-1] == "generate: 20/20 prompts (100%), 20.0 tokens/s, elapsed 10s, ETA 0s"
    assert len(lines) == 5  # one per batch: each completes another tenth; the end is not printed twice


def test_a_slow_step_prints_after_the_interval_and_minutes_read_as_minutes(clock, capsys):
    with Progress("eval_loss", 1000, unit="rows", interval=30.0) as bar:
        clock[0] += 31.0
        bar.advance(1)  # under a tenth, but 30 s passed
        clock[0] += 1.0
        bar.advance(1)  # neither: no line
    out = capsys.readouterr().err.splitlines()
    assert re.fullmatch(r"eval_loss: 1/1000 rows \(0%\), elapsed 31s, ETA \d+m\d\ds", out[0]), out[0]
    assert out[-1].startswith("eval_loss: 2/1000 rows") and len(out) == 2  # the last line at the end


def test_an_aborted_step_prints_no_final_line(clock, capsys):
    with pytest.raises(RuntimeError), Progress("export", 3, unit="steps") as bar:
        bar.advance(step="loaded")
        raise RuntimeError("boom")
    assert capsys.readouterr().err.splitlines() == ["export: 1/3 steps (33%), step loaded, elapsed 0s, ETA 0s"]


def test_training_lines_reuse_the_progress_eta(clock, capsys):
    """The training callback prints one line per log event through the same Progress (ETA from this run's steps)."""
    from types import SimpleNamespace

    from tunesmith.train.common import RichProgress

    cb = RichProgress()
    state = SimpleNamespace(is_world_process_zero=True, max_steps=30, global_step=10)  # resumed at step 10
    cb.on_train_begin(None, state, None)
    clock[0] += 20.0
    state.global_step = 15
    cb.on_step_end(None, state, None)
    cb.on_log(None, state, None, logs={"loss": 1.23456, "eval_loss": 2.5})
    cb.on_train_end(None, state, None)
    # 5 steps in 20 s, 15 to go: 60 s
    assert (
        capsys.readouterr().err.strip()
        == "train: 15/30 steps (50%), loss 1.2346, eval_loss 2.5000, elapsed 20s, ETA 1m00s"
    )


def test_a_progress_line_reads_back():
    """What :class:`Progress` writes, :func:`parse_progress_line` reads (the web page follows runs through run.log)."""
    from tunesmith.runtime.console import Progress, parse_progress_line

    bar = Progress("train", 30, unit="steps", lines=True, auto_lines=False)
    bar.start()
    bar.update(10, tokens=0, loss="1.1081", eval_loss="1.0")
    got = parse_progress_line(bar.line())
    assert got["label"] == "train" and (got["done"], got["total"], got["unit"]) == (10, 30, "steps")
    assert got["fields"] == {"loss": "1.1081", "eval_loss": "1.0"} and got["elapsed_s"] == 0
    line = "generate: 8/60 examples (13%), 22.5 tokens/s, elapsed 1m04s, ETA ?"
    assert parse_progress_line(line) == {
        "label": "generate",
        "done": 8,
        "total": 60,
        "unit": "examples",
        "fields": {"tokens/s": "22.5"},
        "elapsed_s": 64,
        "eta_s": None,
    }
    assert parse_progress_line("error: Training stopped by SIGTERM") is None


def test_library_deprecations_are_told_apart_by_their_installed_package():
    """A checkout folder named tunesmith must not make a library's warning look like tunesmith's own."""
    from tunesmith.runtime.console import _from_package

    lib = "/home/me/tunesmith/.venv/lib/python3.11/site-packages/transformers/modeling_utils.py"
    assert _from_package(lib)
    assert _from_package("/usr/lib/python3/dist-packages/torch/nn/modules/module.py")
    assert not _from_package("/home/me/tunesmith/src/tunesmith/train/sft.py")
    assert not _from_package("/home/me/tunesmith/.venv/lib/python3.11/site-packages/rich/console.py")
