"""Run state as the web page reads it from run folders (config.yaml, metrics.json, checkpoints/, .tunesmith.lock,
run.log, log_history.jsonl), never from the server's memory; Stop signals only a live tunesmith process; the
processes the page starts are argument lists in their own session, outlive the server, and are seen by any later
reader. No gradio needed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tunesmith.errors import TunesmithError
from tunesmith.runtime.checkpoint_files import CHECKPOINT_FILES
from tunesmith.runtime.lock import LOCK
from tunesmith.use.ui import jobs, runs

LOG = """2026-12-06 20:52:31,949 INFO tunesmith: tunesmith sft cfg.yaml
train: 1/4 steps (25%), loss 10.7760, 512.0 tokens/s, elapsed 6s, ETA 19s
train: 2/4 steps (50%), loss 10.7691, elapsed 12s, ETA 12s
train: 2/4 steps (50%), eval_loss 10.7164, elapsed 12s, ETA 12s
error: Training stopped by SIGTERM; a checkpoint was saved
2026-12-06 20:53:40,001 INFO tunesmith: tunesmith sft cfg.yaml --resume latest
train: 3/4 steps (75%), loss 10.7000, elapsed 5s, ETA 5s
"""


def _run(tmp_path, name="r", *, kind_config=None, checkpoint=None, metrics=None, log=None):
    run = tmp_path / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(kind_config or {"model": {"name": "m"}, "train": {"max_steps": 4}}))
    if checkpoint is not None:
        ck = run / "checkpoints" / f"checkpoint-{checkpoint}"
        ck.mkdir(parents=True)
        (ck / "adapter_model.safetensors").write_bytes(b"x")
        for f in CHECKPOINT_FILES:
            (ck / f).write_text('{"global_step": 2}' if f.endswith(".json") else "x")
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps(metrics))
    if log is not None:
        (run / "run.log").write_text(log)
    return run


@pytest.fixture
def sleeper(tmp_path_factory):
    """A live process whose command line is a tunesmith command's (``python .../bin/tunesmith sft``, as the console
    script runs), sleeping instead of training."""
    script = tmp_path_factory.mktemp("bin") / "tunesmith"
    script.write_text("import time\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, str(script), "sft", "cfg.yaml"])
    yield proc
    proc.kill()
    proc.wait()


def test_status_running_complete_resumable_incomplete(tmp_path, sleeper):
    running = _run(tmp_path, "running", checkpoint=2)
    (running / LOCK).write_text(str(sleeper.pid))
    complete = _run(tmp_path, "complete", checkpoint=4, metrics={"kind": "sft", "eval_loss": 1.5})
    resumable = _run(tmp_path, "resumable", checkpoint=2)
    (resumable / LOCK).write_text("999999999")  # left by a killed process: not running
    incomplete = _run(tmp_path, "incomplete")
    states = {p.name: runs.read_run(p) for p in (running, complete, resumable, incomplete)}
    assert {k: s.status for k, s in states.items()} == {
        "running": runs.RUNNING,
        "complete": runs.COMPLETE,
        "resumable": runs.RESUMABLE,
        "incomplete": runs.INCOMPLETE,
    }
    assert states["running"].pid == sleeper.pid and states["resumable"].pid is None
    assert states["resumable"].checkpoint.name == "checkpoint-2"
    assert states["complete"].metrics["eval_loss"] == 1.5


def test_an_exited_unreaped_child_is_not_running(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    time.sleep(1.0)  # it has exited; nobody has waited for it yet (a zombie still answers kill(pid, 0))
    run = _run(tmp_path, checkpoint=1)
    (run / LOCK).write_text(str(proc.pid))
    assert runs.read_run(run).status == runs.RESUMABLE
    proc.wait()


def test_kind_comes_from_manifest_metrics_or_the_config_shape(tmp_path):
    assert runs.run_kind(_run(tmp_path, "a")) == "sft"
    assert runs.run_kind(_run(tmp_path, "b", kind_config={"labels": {}, "model": {}})) == "classify"
    assert runs.run_kind(_run(tmp_path, "c", kind_config={"model": {"adapter": None}})) == "dpo"
    assert runs.run_kind(_run(tmp_path, "d", metrics={"kind": "baseline"})) == "baseline"
    e = _run(tmp_path, "e", kind_config={"labels": {}})
    (e / "manifest.json").write_text(json.dumps({"command_kind": "dpo"}))
    assert runs.run_kind(e) == "dpo"


def test_progress_from_run_log_keeps_the_latest_value_of_a_repeated_step(tmp_path):
    run = _run(tmp_path, log=LOG + "train: 2/4 steps (50%), loss 10.6000, elapsed 9s, ETA 9s\n")
    prog = runs.read_progress(run)
    assert prog.step == 2 and prog.max_steps == 4 and prog.eta_seconds == 9
    assert prog.points == [
        {"step": 1, "series": "loss", "value": 10.776},
        {"step": 2, "series": "eval_loss", "value": 10.7164},
        {"step": 2, "series": "loss", "value": 10.6},
        {"step": 3, "series": "loss", "value": 10.7},
    ]


def test_progress_of_a_complete_run_comes_from_log_history(tmp_path):
    run = _run(tmp_path, log=LOG, metrics={"kind": "sft"})
    history = [{"step": 2, "loss": 3.0}, {"step": 4, "loss": 2.0}, {"step": 4, "eval_loss": 2.5}, {"train_runtime": 1}]
    (run / "log_history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    prog = runs.read_progress(run)
    assert prog.step == 4 and prog.max_steps == 4
    assert [(p["step"], p["series"], p["value"]) for p in prog.points] == [
        (2, "loss", 3.0),
        (4, "eval_loss", 2.5),
        (4, "loss", 2.0),
    ]


def test_find_runs_skips_artifact_folders_and_finds_nested_runs(tmp_path):
    top = _run(tmp_path, "runs/sft", checkpoint=2)
    (top / "checkpoints" / "checkpoint-2" / "config.yaml").write_text("{}")  # never listed as a run
    inner = _run(tmp_path, "runs/sft/baseline", metrics={"kind": "baseline"})
    (tmp_path / ".tunesmith-ui" / "x").mkdir(parents=True)
    (tmp_path / ".tunesmith-ui" / "x" / "config.yaml").write_text("{}")
    assert sorted(runs.find_runs(tmp_path)) == sorted([top, inner])


def test_key_metrics_picks_numbers(tmp_path):
    m = {"train_loss": 2.0, "eval_loss": 1.5, "resumed_from": None, "task_metrics": {"exact_match": 0.25, "ok": True}}
    assert runs.key_metrics(m) == {"train_loss": 2.0, "eval_loss": 1.5, "exact_match": 0.25}


def test_stop_signals_the_live_tunesmith_process_only(tmp_path, sleeper):
    run = _run(tmp_path, checkpoint=1)
    with pytest.raises(TunesmithError, match="Nothing to stop"):
        runs.stop_run(run)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # not a tunesmith command
    try:
        (run / LOCK).write_text(str(other.pid))
        with pytest.raises(TunesmithError, match="unknown process"):
            runs.stop_run(run)
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()
    (run / LOCK).write_text(str(sleeper.pid))
    assert runs.stop_run(run) == sleeper.pid
    assert sleeper.wait(timeout=10) == -signal.SIGTERM


def test_argument_lists_never_shell_strings(tmp_path):
    cfg = tmp_path / "a b; touch PWNED $(id).yaml"
    argv = jobs.train_argv("sft", cfg, resume=True)
    assert argv == [sys.executable, "-m", "tunesmith", "sft", str(cfg), "--resume", "latest"]
    assert jobs.cli_line(argv) == f"tunesmith sft '{cfg}' --resume latest"
    assert jobs.train_argv("dpo", "c.yaml", overwrite=True)[-2:] == ["c.yaml", "--overwrite"]
    with pytest.raises(TunesmithError, match="Unknown command"):
        jobs.train_argv("rm -rf /", "c.yaml")
    with pytest.raises(TypeError, match="no shell strings"):
        jobs.launch(tmp_path, "tunesmith sft c.yaml", kind="sft", target=tmp_path, cwd=tmp_path)


def test_user_text_stays_one_argument(tmp_path):
    """An argument holding shell syntax reaches the process as one argument; no shell runs it."""
    evil = "x; touch PWNED; $(touch PWNED2)"
    job = jobs.launch(
        tmp_path / "state",
        [sys.executable, "-c", "import sys, json; print(json.dumps(sys.argv[1:]))", evil],
        kind="probe",
        target=tmp_path,
        cwd=tmp_path,
    )
    _wait(lambda: jobs.list_jobs(tmp_path / "state")[0].returncode is not None)
    assert json.loads(jobs.log_tail(tmp_path / "state", job).strip()) == [evil]
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "PWNED2").exists()


def test_resume_argv_uses_the_runs_own_config_and_refuses_other_states(tmp_path):
    run = _run(tmp_path, checkpoint=2)
    assert jobs.resume_argv(run)[3:] == ["sft", str(run / "config.yaml"), "--resume", "latest"]
    for bad, status in ((_run(tmp_path, "done", metrics={"kind": "sft"}), "complete"), (_run(tmp_path, "new"), "")):
        with pytest.raises(TunesmithError, match="Cannot resume") as exc:
            jobs.resume_argv(bad)
        assert status in exc.value.problems[0].reason


def _wait(cond, timeout=60.0):
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def test_a_job_outlives_its_server_and_any_reader_sees_it(tmp_path):
    """The job runs in its own session (a signal to the server's process group does not reach it); its record is a
    file, so a fresh reader (another page, a restarted server) sees it running and then its exit code."""
    state = tmp_path / "state"
    flag = tmp_path / "go"
    script = f"import pathlib, time\nwhile not pathlib.Path({str(flag)!r}).exists(): time.sleep(0.05)\nprint('done')"
    job = jobs.launch(state, [sys.executable, "-c", script, "tunesmith"], kind="sft", target=tmp_path, cwd=tmp_path)
    assert os.getsid(job.pid) == job.pid != os.getsid(0)  # a session of its own
    (seen,) = jobs.list_jobs(state)  # read back from disk, not from the launcher's memory
    assert seen.pid == job.pid and seen.argv[-1] == "tunesmith" and jobs.job_status(seen) == "running"
    flag.write_text("")
    _wait(lambda: jobs.list_jobs(state)[0].returncode is not None)
    (seen,) = jobs.list_jobs(state, target=tmp_path, kinds=("sft",))
    assert seen.returncode == 0 and jobs.job_status(seen) == "finished" and "done" in jobs.log_tail(state, seen)
    assert jobs.list_jobs(state, kinds=("eval",)) == []


def test_a_start_that_fails_shows_why_on_the_page(tmp_path):
    """Start refuses nothing the CLI would accept and overwrites nothing: a run folder holding someone's file makes
    the training process exit 2 before any model loads, and the page shows that process's own error."""
    from tunesmith.use.ui import actions
    from tunesmith.use.ui.workspace import Workspace

    ws = Workspace(tmp_path)
    (tmp_path / "runs" / "sft").mkdir(parents=True)
    (tmp_path / "runs" / "sft" / "notes.txt").write_text("mine")
    result = actions.start_training(ws, "sft", {"train.max_steps": "2"})
    assert result.ok and result.run == "runs/sft" and result.cli.startswith("tunesmith sft ")
    _wait(lambda: jobs.list_jobs(ws.state_dir)[0].returncode is not None, timeout=240)
    view = actions.run_view(ws, "runs/sft")
    assert "failed (exit 2)" in view.status and "already holds a run" in view.log and "Traceback" not in view.log
    assert (tmp_path / "runs" / "sft" / "notes.txt").read_text() == "mine"


def test_only_a_tunesmith_command_line_counts_as_one():
    assert runs.is_tunesmith_command(["/x/.venv/bin/python", "-m", "tunesmith", "sft", "c.yaml"])
    assert runs.is_tunesmith_command(["/x/.venv/bin/python", "/x/.venv/bin/tunesmith", "sft"])
    # a checkout named tunesmith holds its own Python: that path alone is not a tunesmith command
    assert not runs.is_tunesmith_command(["/home/me/tunesmith/.venv/bin/python", "-c", "import time"])
    assert not runs.is_tunesmith_command(["sleep", "60", "tunesmith"])
