"""Which checkpoints of a run folder are complete and resumable: the files every checkpoint holds, its step, the newest
complete one. Read by the training lifecycle and by the run list of the web page."""

from __future__ import annotations

import json
import re
from pathlib import Path

CHECKPOINT_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt", "rng_state.pth")
"""Files every resumable checkpoint holds besides the weights (``rng_state.pth`` is ``rng_state_<rank>.pth`` in a
checkpoint written by several processes)."""


def checkpoint_step(path: Path) -> int:
    """Global step of a ``checkpoint-N`` folder (N), or -1 for another name."""
    m = re.fullmatch(r"checkpoint-(\d+)", path.name)
    return int(m.group(1)) if m else -1


def is_complete(ckpt: Path) -> bool:
    """True when ``ckpt`` holds weights plus every file of :data:`CHECKPOINT_FILES` and a readable trainer state."""
    if not ckpt.is_dir() or not all((ckpt / f).is_file() for f in CHECKPOINT_FILES if f != "rng_state.pth"):
        return False
    if not (ckpt / "rng_state.pth").is_file() and not any(ckpt.glob("rng_state_*.pth")):
        return False
    if not any(ckpt.rglob("*.safetensors")):
        return False
    try:
        json.loads((ckpt / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return True


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The complete ``checkpoint-N`` under ``run_dir/checkpoints`` with the largest N, or None."""
    root = Path(run_dir) / "checkpoints"
    found = (
        sorted((p for p in root.glob("checkpoint-*") if checkpoint_step(p) >= 0), key=checkpoint_step, reverse=True)
        if root.is_dir()
        else []
    )
    return next((p for p in found if is_complete(p)), None)
