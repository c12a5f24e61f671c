"""Checkpoint bookkeeping without training: which checkpoint `--resume latest` picks, refusals that keep two runs
apart, the resume command printed on SIGINT/SIGTERM, and the graceful-stop callback's effect on the Trainer."""

from __future__ import annotations

import json
import signal

import pytest

from tunesmith.errors import ConfigError
from tunesmith.train.checkpoints import (
    CHECKPOINT_FILES,
    check_same_run,
    latest_checkpoint,
    resolve_resume,
    resume_command,
)


def _ckpt(run, step, complete=True, state='{"global_step": 1}'):
    d = run / "checkpoints" / f"checkpoint-{step}"
    d.mkdir(parents=True)
    (d / "adapter_model.safetensors").write_bytes(b"x")
    for f in CHECKPOINT_FILES:
        if f != "trainer_state.json" or complete:
            (d / f).write_text(state if f == "trainer_state.json" else "x")
    return d


def test_latest_skips_checkpoints_cut_short(tmp_path):
    _ckpt(tmp_path, 2)
    good = _ckpt(tmp_path, 10)
    _ckpt(tmp_path, 12, complete=False)  # killed before trainer_state.json
    _ckpt(tmp_path, 14, state='{"global_st')  # killed while writing trainer_state.json
    (tmp_path / "checkpoints" / "checkpoint-x").mkdir()
    assert latest_checkpoint(tmp_path) == good  # numeric order: 10 > 2 although "10" < "2" as text
    assert resolve_resume(tmp_path, "latest") == good and resolve_resume(tmp_path, True) == good
    assert resolve_resume(tmp_path, str(tmp_path / "checkpoints" / "checkpoint-2")).name == "checkpoint-2"
    assert resolve_resume(tmp_path, None) is None


@pytest.mark.parametrize(
    "setup,resume,overwrite,where",
    [
        (lambda d: None, "latest", False, "checkpoints"),
        (lambda d: _ckpt(d, 4, complete=False), "latest", False, "checkpoints"),
        (lambda d: _ckpt(d, 4, complete=False), "{d}/checkpoints/checkpoint-4", False, "--resume"),
        (lambda d: (_ckpt(d, 4), (d / "metrics.json").write_text("{}")), "latest", False, "metrics.json"),
        (lambda d: _ckpt(d, 4), "latest", True, "--resume/--overwrite"),
    ],
)
def test_resume_refusals(tmp_path, setup, resume, overwrite, where):
    setup(tmp_path)
    with pytest.raises(ConfigError) as exc:
        resolve_resume(tmp_path, resume.format(d=tmp_path), overwrite=overwrite)
    assert exc.value.problems and where in exc.value.problems[0].where


def test_resume_with_other_config_is_refused_but_more_steps_are_allowed(tmp_path):
    (tmp_path / "config.yaml").write_text("lora: {r: 8}\ntrain: {max_steps: 10, learning_rate: 0.001}\n")
    check_same_run(tmp_path, {"lora": {"r": 8}, "train": {"max_steps": 20, "learning_rate": 0.001}})
    with pytest.raises(ConfigError) as exc:
        check_same_run(tmp_path, {"lora": {"r": 4}, "train": {"max_steps": 10, "learning_rate": 0.002}})
    assert [p.where for p in exc.value.problems] == ["lora.r", "train.learning_rate"]


def test_resume_command_drops_overwrite_and_old_resume():
    assert (
        resume_command(["sft", "my cfg.yaml", "--overwrite", "--set", "train.max_steps=5"])
        == "tunesmith sft 'my cfg.yaml' --set train.max_steps=5 --resume latest"
    )
    assert (
        resume_command(["sft", "c.yaml", "--resume", "runs/x/checkpoints/checkpoint-4"])
        == "tunesmith sft c.yaml --resume latest"
    )


def test_graceful_stop_saves_and_stops_after_the_step():
    from transformers import TrainerControl

    from tunesmith.errors import TrainingStopped
    from tunesmith.train.callbacks import GracefulStop

    cb, control = GracefulStop(), TrainerControl()
    before = signal.getsignal(signal.SIGTERM)
    cb.on_train_begin(None, None, control)
    try:
        assert signal.getsignal(signal.SIGTERM) == cb._handle
        cb.on_step_end(None, None, control)
        assert not control.should_save and not control.should_training_stop
        signal.raise_signal(signal.SIGTERM)  # handled: the process keeps running
        assert cb.signum == signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) == before  # a second signal would act at once
        cb.on_step_end(None, None, control)
        assert control.should_save and control.should_training_stop
    finally:
        cb.on_train_end(None, None, control)
    assert signal.getsignal(signal.SIGTERM) == before
    err = TrainingStopped(signal.SIGINT, "runs/x/checkpoints/checkpoint-3", "tunesmith sft c.yaml --resume latest")
    assert err.exit_code == 130 and "SIGINT" in err.render() and "--resume latest" in err.render()
    assert TrainingStopped(signal.SIGTERM, None, "x").exit_code == 143
    json.dumps(err.render())


def test_run_dir_lock_refuses_a_live_writer_and_takes_over_a_dead_one(tmp_path):
    import os
    import subprocess
    import sys

    from tunesmith.errors import TunesmithError
    from tunesmith.runtime.lock import LOCK, lock_run_dir
    from tunesmith.runtime.rundir import prepare_run_dir

    (tmp_path / LOCK).write_text(str(os.getppid()))  # a live process that is not us
    with pytest.raises(TunesmithError) as exc:
        lock_run_dir(tmp_path)
    assert str(os.getppid()) in exc.value.render()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    (tmp_path / LOCK).write_text(dead)  # left behind by a SIGKILLed run
    assert lock_run_dir(tmp_path).read_text() == str(os.getpid())
    assert prepare_run_dir(tmp_path) == tmp_path  # our own lock does not make the folder "used"


def test_write_errors_name_the_file_and_never_swallow_other_errors(tmp_path):
    import errno

    from tunesmith.errors import TunesmithError
    from tunesmith.runtime.files import write_errors

    with pytest.raises(TunesmithError) as exc:
        with write_errors(tmp_path):
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "checkpoints" / "optimizer.pt"))
    assert exc.value.problems[0].where.endswith("optimizer.pt") and "No space left" in exc.value.render()
    with pytest.raises(TunesmithError) as exc:  # the tokenizers library (Rust) reports a full disk in its own words
        with write_errors(tmp_path, resume=lambda: "tunesmith sft c.yaml --resume latest"):
            raise Exception("No space left on device (os error 28)")
    assert "No space left on device" in exc.value.render() and "resume with: tunesmith sft c.yaml" in exc.value.render()
    with pytest.raises(TunesmithError, match="incomplete"):  # how torch.save reports a full disk
        with write_errors(tmp_path):
            raise RuntimeError(
                "[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file "
                "data/3: file write failed"
            )
    with pytest.raises(FileNotFoundError):  # not a write failure: a bug, keep the traceback
        with write_errors(tmp_path):
            raise FileNotFoundError(errno.ENOENT, "gone", "x")
    with pytest.raises(RuntimeError, match="shape"):
        with write_errors(tmp_path):
            raise RuntimeError("shape mismatch")
