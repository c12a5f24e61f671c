"""Checkpoints, exact resume and graceful stops for every training command.

    tunesmith sft CONFIG                      # checkpoints every train.save_steps under <output_dir>/checkpoints
    tunesmith sft CONFIG --resume latest      # continue from the newest complete checkpoint (or --resume PATH)

A checkpoint (written by ``transformers.Trainer``) holds the adapter, ``optimizer.pt``,
``scheduler.pt``, ``rng_state.pth`` (Python, NumPy and torch RNG states: data order and LoRA
dropout) and ``trainer_state.json`` (global step, so the data position is recovered by skipping
the batches already trained).  ``trainer_state.json`` is written last, so a checkpoint without a
readable one was cut short by a crash and is never resumed from.

On SIGINT or SIGTERM, :class:`tunesmith.train.callbacks.GracefulStop` lets the current optimizer step finish, saves a
checkpoint, stops, and the command exits with 130 (SIGINT) or 143 (SIGTERM) and says how to resume.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from tunesmith.errors import ConfigError, Problem
from tunesmith.runtime.checkpoint_files import CHECKPOINT_FILES, is_complete, latest_checkpoint

RUN_STATE = "run_state.json"
"""Small file in the run dir carrying what the first process measured (eval_loss before training, samples)."""
RESUMABLE_CHANGES = (
    "train.max_steps",
    "train.num_train_epochs",
    "train.save_steps",
    "train.save_total_limit",
    "train.logging_steps",
    "train.eval_steps",
    "train.eval_strategy",
    "eval.num_samples",
    "eval.max_new_tokens",
)
"""Config fields that may differ between a run and its resume; any other difference would mix two runs."""


def resolve_resume(run_dir: Path, resume: str | bool | None, *, overwrite: bool = False) -> Path | None:
    """Turn ``--resume`` (``latest``/True or a path) into a complete checkpoint folder.

    Returns:
        The checkpoint folder, or None when ``resume`` is falsy.

    Raises:
        ConfigError: ``--resume`` with ``--overwrite``, a finished run, no checkpoint, or an incomplete one.
    """
    if not resume:
        return None
    if overwrite:
        raise ConfigError(
            "Conflicting options",
            [
                Problem(
                    "--resume/--overwrite",
                    "--overwrite would delete the checkpoints --resume continues from",
                    "pass only one of them",
                )
            ],
        )
    run_dir = Path(run_dir)
    if (run_dir / "metrics.json").exists():
        raise ConfigError(
            "Nothing to resume: the run is complete",
            [
                Problem(
                    str(run_dir / "metrics.json"),
                    "this run finished",
                    "choose a new train.output_dir, or --overwrite to train again",
                )
            ],
        )
    if resume is True or resume == "latest":
        ckpt = latest_checkpoint(run_dir)
        if ckpt is None:
            raise ConfigError(
                "No checkpoint to resume from",
                [
                    Problem(
                        str(run_dir / "checkpoints"),
                        "no complete checkpoint-N folder",
                        "run without --resume (add --overwrite to discard this folder)",
                    )
                ],
            )
        return ckpt
    ckpt = Path(resume).expanduser()
    if not is_complete(ckpt):
        raise ConfigError(
            "Not a resumable checkpoint",
            [
                Problem(
                    f"--resume {resume}",
                    f"needs a folder with adapter/model weights and {', '.join(CHECKPOINT_FILES)}",
                    "pass a checkpoints/checkpoint-N folder, or `latest`",
                )
            ],
        )
    return ckpt


def check_same_run(run_dir: Path, current: dict) -> None:
    """Refuse to resume with a config that differs from the run's saved ``config.yaml`` (outside
    :data:`RESUMABLE_CHANGES`).

    Args:
        current: the resolved config as a JSON-able dict (``cfg.model_dump(mode="json")``).

    Raises:
        ConfigError: listing every field that differs.
    """
    import yaml

    saved_path = Path(run_dir) / "config.yaml"
    if not saved_path.is_file():
        return
    saved = yaml.safe_load(saved_path.read_text(encoding="utf-8")) or {}
    problems = []
    for key in sorted(set(_flatten(saved)) | set(_flatten(current))):
        a, b = _flatten(saved).get(key), _flatten(current).get(key)
        if a != b and key not in RESUMABLE_CHANGES:
            problems.append(
                Problem(
                    key,
                    f"the run was started with {a!r}, now {b!r}",
                    "resume with the original config, or start a new train.output_dir",
                )
            )
    if problems:
        raise ConfigError("Resuming with a different config would mix two runs", problems)


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and k in ("model", "data", "labels", "lora", "train", "eval") and not prefix:
            out.update(_flatten(v, f"{k}."))
        else:
            out[prefix + str(k)] = v
    return out


def resume_command(argv: list[str] | None = None) -> str:
    """The command line that resumes this run: the current one without ``--overwrite``/``--resume``, plus ``--resume
    latest``."""
    args = list(sys.argv[1:] if argv is None else argv)
    keep, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a == "--overwrite" or a.startswith("--resume="):
            continue
        if a == "--resume":
            skip = True
            continue
        keep.append(a)
    return shlex.join(["tunesmith", *keep, "--resume", "latest"])
