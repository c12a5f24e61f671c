"""The processes ``tunesmith ui`` starts: training, baseline, eval, merge and export, each a ``tunesmith`` command in
its own process, started from an argument list (never a shell string) in its own session.

A job outlives the page that started it and the server too: closing the page or stopping ``tunesmith ui`` leaves it
running. Each job leaves ``<root>/.tunesmith-ui/jobs/<id>.json`` (its argument list, process id, target folder, and
the exit code once the server saw it end) and ``<id>.log`` (everything it printed), so any page reads the same
state.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tunesmith.errors import Problem, TunesmithError
from tunesmith.runtime.files import atomic_write_json
from tunesmith.use.ui.runs import COMPLETE, INCOMPLETE, RESUMABLE, RUNNING, read_run

TRAIN_KINDS = ("sft", "classify", "dpo")
"""The training commands the page starts."""


def tunesmith_argv(*args: str | Path) -> list[str]:
    """``[python, "-m", "tunesmith", *args]`` with every argument a string: the same interpreter as the server."""
    return [sys.executable, "-m", "tunesmith", *(str(a) for a in args)]


def cli_line(argv: list[str]) -> str:
    """The command a user types to run ``argv`` from a shell (``tunesmith sft cfg.yaml ...``), quoted."""
    return shlex.join(["tunesmith", *argv[3:]] if argv[1:3] == ["-m", "tunesmith"] else argv)


def train_argv(kind: str, config: str | Path, *, resume: bool = False, overwrite: bool = False) -> list[str]:
    """The argument list of a training command.

    Args:
        kind: ``sft``, ``classify`` or ``dpo``.
        config: the YAML config file.
        resume: continue from the newest checkpoint (``--resume latest``). overwrite: replace the run folder.

    Raises:
        TunesmithError: an unknown command.
    """
    if kind not in TRAIN_KINDS:
        raise TunesmithError("Unknown command", [Problem("command", repr(kind), "choose sft, classify or dpo")])
    return tunesmith_argv(kind, config, *(["--resume", "latest"] if resume else []), *(["--overwrite"] * overwrite))


def resume_argv(run_dir: str | Path) -> list[str]:
    """The argument list that resumes ``run_dir`` from its newest checkpoint with the run's own ``config.yaml``.

    Raises:
        TunesmithError: the run is running, complete, or has no complete checkpoint.
    """
    state = read_run(run_dir)
    if state.status != RESUMABLE:
        fix = {
            RUNNING: "it is still running",
            COMPLETE: "it is complete; start a new run",
            INCOMPLETE: "it stopped before its first checkpoint; start it again (tick overwrite)",
        }[state.status]
        raise TunesmithError("Cannot resume this run", [Problem(str(run_dir), f"status: {state.status}", fix)])
    return train_argv(state.kind, Path(run_dir) / "config.yaml", resume=True)


@dataclass
class Job:
    """One started process, as ``<id>.json`` records it.

    Attributes:
        id: ``<time>-<kind>-<random>``. kind: the command (``sft``, ``baseline``, ``merge``, ...).
        argv: the argument list. pid: its process id. target: the folder it writes (run dir, output).
        started / ended: epoch seconds. returncode: the exit code once the server saw it end (None before).
    """

    id: str
    kind: str
    argv: list[str]
    pid: int
    target: str
    started: float
    ended: float | None = None
    returncode: int | None = None

    @property
    def cli(self) -> str:
        """The equivalent shell command."""
        return cli_line(self.argv)


def jobs_dir(state_dir: Path) -> Path:
    """``<state_dir>/jobs`` (created)."""
    folder = Path(state_dir) / "jobs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def launch(state_dir: Path, argv: list[str], *, kind: str, target: str | Path, cwd: str | Path) -> Job:
    """Start ``argv`` in its own process and session, its output in ``<state_dir>/jobs/<id>.log``.

    Args:
        state_dir: the page's state folder (``<root>/.tunesmith-ui``).
        argv: the argument list; a string (which a shell would split) is refused.
        kind: the command, for the record. target: the folder it writes. cwd: its working folder (the root).

    Returns:
        The :class:`Job`, recorded in ``<id>.json``; a thread waits for it and records its exit code.

    Raises:
        TypeError: ``argv`` is not a list of strings.
    """
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise TypeError("argv must be a non-empty list of strings (no shell strings)")
    folder = jobs_dir(state_dir)
    job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}-{secrets.token_hex(3)}"
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200")
    with open(folder / f"{job_id}.log", "ab") as log:
        proc = subprocess.Popen(  # an argument list, no shell: user text stays one argument each
            argv, cwd=str(cwd), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )  # fmt: skip
    job = Job(job_id, kind, list(argv), proc.pid, str(target), time.time())
    atomic_write_json(folder / f"{job_id}.json", asdict(job))

    def reap() -> None:
        job.returncode, job.ended = proc.wait(), time.time()
        atomic_write_json(folder / f"{job_id}.json", asdict(job))

    threading.Thread(target=reap, name=f"reap-{job_id}", daemon=True).start()
    return job


def list_jobs(state_dir: Path, *, target: str | Path | None = None, kinds: tuple[str, ...] = ()) -> list[Job]:
    """The recorded jobs, newest first; only those writing ``target`` and of ``kinds`` when given."""
    jobs = []
    for path in sorted(jobs_dir(state_dir).glob("*.json"), reverse=True):
        try:
            job = Job(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            continue
        if (target is None or Path(job.target) == Path(target)) and (not kinds or job.kind in kinds):
            jobs.append(job)
    return jobs


def job_status(job: Job) -> str:
    """``running``, ``finished`` (exit 0), ``failed (exit N)``, ``stopped (exit 143)`` or ``ended`` (it ended while no
    server watched it)."""
    if job.returncode is not None:
        if job.returncode == 0:
            return "finished"
        return f"{'stopped' if job.returncode in (130, 143) else 'failed'} (exit {job.returncode})"
    try:
        os.kill(job.pid, 0)
        cmd = Path(f"/proc/{job.pid}/cmdline").read_bytes()
    except (OSError, ProcessLookupError):
        return "ended"
    return "running" if b"tunesmith" in cmd else "ended"


def tail_text(path: Path, max_bytes: int) -> str:
    """The last ``max_bytes`` of the file at ``path``, decoded as UTF-8 (bad bytes replaced); "" when unreadable."""
    try:
        with path.open("rb") as f:
            f.seek(max(path.stat().st_size - max_bytes, 0))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def log_tail(state_dir: Path, job: Job, *, max_bytes: int = 12000) -> str:
    """The last ``max_bytes`` of the job's log, as text."""
    return tail_text(jobs_dir(state_dir) / f"{job.id}.log", max_bytes)
