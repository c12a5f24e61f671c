"""Run state as the run folders record it, for the Train, Decide and Runs tabs of ``tunesmith ui``.

Nothing here is kept in the web server's memory: every answer is read from the folder each time, so a page opened
later (or after the server restarted) sees the runs already going, and closing a page changes nothing. A run folder
holds ``config.yaml`` (written first), ``.tunesmith.lock`` (the id of the live process training it), ``run.log``
(the console, with one ``train: N/M steps (..%), loss .., eval_loss .., elapsed .., ETA ..`` line per log event),
``checkpoints/checkpoint-N/`` and, when the run is complete, ``log_history.jsonl`` and ``metrics.json`` (last).

Status: ``running`` (a live process holds the lock), ``complete`` (``metrics.json``), ``interrupted: resumable`` (no
live process, a complete checkpoint: ``--resume latest`` continues it) or ``incomplete`` (stopped before its first
checkpoint).
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.errors import Problem, TunesmithError
from tunesmith.runtime.checkpoint_files import latest_checkpoint
from tunesmith.runtime.console import parse_progress_line
from tunesmith.runtime.lock import LOCK, lock_holder

RUNNING, COMPLETE, RESUMABLE, INCOMPLETE = "running", "complete", "interrupted: resumable", "incomplete"
"""The statuses :func:`read_run` reports."""
ARTIFACT_DIRS = frozenset({"checkpoints", "adapter", "model", "logs", "uploads", ".tunesmith-ui", ".git", ".venv"})
"""Folders :func:`find_runs` never enters."""


@dataclass
class Progress:
    """Training progress of one run.

    Attributes:
        points: ``{"step": int, "series": "loss" | "eval_loss", "value": float}`` in step order (a resumed run's
            repeated steps keep their latest value).
        step / max_steps: the last step logged and the run's ``train.max_steps``.
        eta_seconds: the estimate of the last line (None when not running or unknown).
    """

    points: list[dict] = field(default_factory=list)
    step: int = 0
    max_steps: int | None = None
    eta_seconds: int | None = None


@dataclass
class RunState:
    """What a run folder says about its run.

    Attributes:
        path: the folder. kind: ``sft``, ``classify``, ``dpo``, ``baseline`` or ``eval``.
        status: one of :data:`RUNNING`, :data:`COMPLETE`, :data:`RESUMABLE`, :data:`INCOMPLETE`.
        pid: the live training process (running only). checkpoint: the newest complete checkpoint, if any.
        metrics: ``metrics.json`` (complete runs). updated: the newest modification time of its files (epoch s).
    """

    path: Path
    kind: str
    status: str
    pid: int | None = None
    checkpoint: Path | None = None
    metrics: dict = field(default_factory=dict)
    updated: float = 0.0


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _read_config(run_dir: Path) -> dict:
    import yaml

    try:
        value = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return value if isinstance(value, dict) else {}


def run_kind(run_dir: Path, metrics: dict | None = None) -> str:
    """The command that wrote ``run_dir``: ``manifest.json``'s ``command_kind``, else ``metrics.json``'s ``kind``,
    else the config's shape (a ``labels`` section: classify; ``model.adapter``: dpo; otherwise sft)."""
    manifest = _read_json(run_dir / "manifest.json")
    if manifest.get("command_kind"):
        return str(manifest["command_kind"])
    metrics = _read_json(run_dir / "metrics.json") if metrics is None else metrics
    if metrics.get("kind"):
        return str(metrics["kind"])
    cfg = _read_config(run_dir)
    if "labels" in cfg:
        return "classify"
    return "dpo" if "adapter" in (cfg.get("model") or {}) else "sft"


def read_run(run_dir: str | Path) -> RunState:
    """Read one run folder's kind, status, live process, newest checkpoint and metrics."""
    run_dir = Path(run_dir)
    metrics = _read_json(run_dir / "metrics.json")
    pid = lock_holder(run_dir)
    ckpt = latest_checkpoint(run_dir)
    if pid is not None:
        status = RUNNING
    elif metrics:
        status = COMPLETE
    else:
        status = RESUMABLE if ckpt is not None else INCOMPLETE
    try:
        updated = max(p.stat().st_mtime for p in run_dir.iterdir())
    except (OSError, ValueError):
        updated = 0.0
    return RunState(run_dir, run_kind(run_dir, metrics), status, pid, ckpt, metrics, updated)


def find_runs(root: str | Path, *, max_depth: int = 4) -> list[Path]:
    """Run folders under ``root`` (folders holding ``config.yaml`` or a run lock), newest first.

    Artifact folders (:data:`ARTIFACT_DIRS`) and hidden folders are not entered; runs inside runs (an SFT run's
    ``baseline/`` and ``eval/``) are found too.
    """
    root = Path(root)
    found = []
    for folder, dirs, names in os.walk(root):
        depth = len(Path(folder).relative_to(root).parts)
        dirs[:] = [] if depth >= max_depth else [d for d in dirs if d not in ARTIFACT_DIRS and not d.startswith(".")]
        if "config.yaml" in names or LOCK in names:
            found.append(Path(folder))
    return sorted(found, key=lambda p: read_run(p).updated, reverse=True)


def read_progress(run_dir: str | Path) -> Progress:
    """Loss and eval_loss per step, the last step, ``max_steps`` and the ETA.

    A complete run is read from ``log_history.jsonl``; a running or stopped one from the ``train: N/M steps ..``
    progress lines of ``run.log`` (:func:`tunesmith.runtime.console.parse_progress_line`); a resumed run's log
    continues the first attempt's, so a repeated step keeps its latest value.
    """
    run_dir = Path(run_dir)
    prog = Progress(max_steps=(_read_config(run_dir).get("train") or {}).get("max_steps"))
    values: dict[tuple[int, str], float] = {}
    history = run_dir / "log_history.jsonl"
    if history.is_file():
        for line in history.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            for series in ("loss", "eval_loss"):
                if series in entry and "step" in entry:
                    values[(int(entry["step"]), series)] = float(entry[series])
                    prog.step = max(prog.step, int(entry["step"]))
    else:
        try:
            text = (run_dir / "run.log").read_text(encoding="utf-8", errors="replace")
        except OSError:
            text = ""
        for line in text.splitlines():
            m = parse_progress_line(line)
            if m is None or m["label"] != "train":
                continue
            step = m["done"]
            for series in ("loss", "eval_loss"):
                if series in m["fields"]:
                    values[(step, series)] = float(m["fields"][series])
            prog.step, prog.max_steps, prog.eta_seconds = step, m["total"] or prog.max_steps, m["eta_s"]
    prog.points = [{"step": s, "series": k, "value": v} for (s, k), v in sorted(values.items())]
    return prog


def is_tunesmith_command(argv: list[str]) -> bool:
    """True for the argument list of a ``tunesmith`` command: ``python -m tunesmith ...`` or the ``tunesmith`` console
    script (a path merely containing "tunesmith", such as a checkout's own Python, does not count)."""
    if any(a == "-m" and b == "tunesmith" for a, b in zip(argv, argv[1:])):
        return True
    return any(Path(a).name == "tunesmith" for a in argv[:2])


def stop_run(run_dir: str | Path) -> int:
    """Send SIGTERM to the process training ``run_dir``: it finishes the current step, saves a checkpoint and exits
    with 143 (``--resume latest`` continues it).

    Returns:
        The process id signalled.

    Raises:
        TunesmithError: no live process holds the run (it ended, or was never started), or the lock names a process
            that is not a tunesmith command.
    """
    pid = lock_holder(run_dir)
    if pid is None:
        raise TunesmithError(
            "Nothing to stop", [Problem(str(run_dir), "no live process is training this run", "refresh the page")]
        )
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        argv = ["tunesmith"]  # no /proc here: trust the lock file
    if not is_tunesmith_command(argv):
        raise TunesmithError(
            "Not stopping an unknown process",
            [Problem(str(Path(run_dir) / LOCK), f"process {pid} is not a tunesmith command", "stop it yourself")],
        )
    os.kill(pid, signal.SIGTERM)
    return pid


KEY_METRICS = ("train_loss", "eval_loss_before", "eval_loss", "accuracy", "macro_f1", "reward_accuracy")
"""Top-level ``metrics.json`` numbers the Runs tab shows first (then ``task_metrics``)."""


def key_metrics(metrics: dict, *, limit: int = 5) -> dict[str, float]:
    """The few numbers a runs table shows: :data:`KEY_METRICS` present in ``metrics``, then its ``task_metrics``."""
    out: dict[str, float] = {}
    task = metrics.get("task_metrics") if isinstance(metrics.get("task_metrics"), dict) else {}
    for key, value in [(k, metrics.get(k)) for k in KEY_METRICS] + list(task.items()):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in out:
            out[key] = float(value)
    return dict(list(out.items())[:limit])


def age(seconds_since_epoch: float) -> str:
    """``"12s ago"``, ``"5 min ago"``, ``"3 h ago"`` or ``"2 d ago"``."""
    s = max(time.time() - seconds_since_epoch, 0)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s / size:.0f} {unit} ago"
    return f"{s:.0f}s ago"
