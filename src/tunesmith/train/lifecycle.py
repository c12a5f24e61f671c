"""Checks that run before any model loads, so bad input fails in about a second with exit code 2.

    tunesmith sft CONFIG        # the CLI calls check_sft_inputs() before importing torch

Order: secrets in the config, the resume target, the data (every record validated, locations
``file:line``), then the output directory (refuse to mix runs) where the resolved ``config.yaml``
is written first.  Nothing here imports torch or transformers.
"""
from __future__ import annotations

import errno
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.data.conversations import LoadReport, load_conversations
from tunesmith.data.split import split
from tunesmith.errors import ConfigError, DataError, Problem, TunesmithError
from tunesmith.config.load import dump_config
from tunesmith.runtime.distributed import is_rank_zero
from tunesmith.runtime.rundir import lock_run_dir, prepare_run_dir, write_errors
from tunesmith.runtime.secrets import is_secret_key
from tunesmith.runtime.files import atomic_write_text
from tunesmith.train.checkpoints import check_same_run, resolve_resume

@dataclass
class CheckedInputs:
    """What :func:`check_sft_inputs` verified and loaded.

    Attributes:
        run_dir: the output directory, created and writable.
        checkpoint: the checkpoint folder to resume from, or None for a fresh run.
        train_convs / eval_convs: the conversations after the split and the ``max_*_examples`` caps.
        report: what loading read, kept and skipped.
    """

    run_dir: Path
    checkpoint: Path | None
    train_convs: list = field(default_factory=list)
    eval_convs: list = field(default_factory=list)
    report: LoadReport = field(default_factory=LoadReport)


def check_secrets(cfg) -> None:
    """Refuse tokens/passwords inside the config (they would end up in config.yaml and checkpoints).

    Raises:
        ConfigError: naming each ``train.*token*`` style field that has a value.
    """
    extras = cfg.train.model_extra or {}
    bad = [k for k, v in extras.items() if is_secret_key(k) and v not in (None, "", False)]
    if bad:
        raise ConfigError("Secrets do not belong in a run config", [Problem(
            f"train.{k}", "a secret here would be written to config.yaml, manifest.json and every checkpoint",
            "remove it; tunesmith never pushes to a hub, and huggingface_hub reads HF_TOKEN from the environment") for k in bad])


def load_data(cfg) -> tuple[list, list, LoadReport]:
    """Load, validate and split the data (``data.path``/``data.eval_path`` or a bundled ``data.name``).

    Returns:
        (train conversations, eval conversations, load report).

    Raises:
        DataError: unreadable or invalid records (``file:line``), a path that is a folder, or no training record.
    """
    try:
        convs, report = load_conversations(cfg.data)
        if cfg.data.eval_path:
            train, (evals, _) = convs, load_conversations(cfg.data.model_copy(update={"path": cfg.data.eval_path}))
        else:
            train, evals = split(convs, cfg.data.eval_fraction, cfg.data.split_seed)
    except OSError as exc:
        field_name = "data.eval_path" if exc.filename and cfg.data.eval_path and str(exc.filename) == cfg.data.eval_path else "data.path"
        reason = "is a folder, not a data file" if exc.errno == errno.EISDIR else (exc.strerror or str(exc))
        raise DataError("Cannot read the data", [Problem(f"{field_name}={exc.filename}", reason, "point it at a .jsonl or .json file")]) from None
    train = train[: cfg.data.max_train_examples] if cfg.data.max_train_examples else train
    evals = evals[: cfg.data.max_eval_examples] if cfg.data.max_eval_examples else evals
    if not train:
        where = f"data.path={cfg.data.path}" if cfg.data.path else f"data.name={cfg.data.name}"
        raise DataError("No training records", [Problem(where, f"{report.rows_read} records read, {len(train)} left for training after the eval split",
                                                        "give more records, or lower data.eval_fraction")])
    return train, evals, report


def check_sft_inputs(cfg, *, overwrite: bool = False, resume: str | bool | None = None) -> CheckedInputs:
    """Validate everything an SFT run needs that does not need the model.

    Args:
        cfg: the validated :class:`tunesmith.config.sft.RunConfig`.
        overwrite: replace a non-empty ``train.output_dir``.
        resume: ``latest``/True or a checkpoint path.

    Returns:
        :class:`CheckedInputs`.

    Raises:
        ConfigError, DataError, TunesmithError: each problem with its location; nothing is trained.
    """
    check_secrets(cfg)
    run_dir = Path(cfg.train.output_dir)
    checkpoint = resolve_resume(run_dir, resume, overwrite=overwrite)
    if checkpoint is not None:
        check_same_run(run_dir, cfg.model_dump(mode="json"))
    train, evals, report = load_data(cfg)
    try:
        with write_errors(run_dir):
            main = is_rank_zero()  # under accelerate/torchrun only rank 0 owns the folder and its lock
            if run_dir.is_dir() and main:
                lock_run_dir(run_dir)  # a live run in this folder is refused before --overwrite deletes anything
            run_dir = prepare_run_dir(run_dir, overwrite=overwrite, resume=checkpoint is not None)
            if main:
                lock_run_dir(run_dir)  # (re)claim it: --overwrite deleted the folder and its lock
    except TunesmithError as exc:
        for p in exc.problems:
            p.where = f"train.output_dir={p.where}"
        raise
    if checkpoint is None and is_rank_zero():
        with write_errors(run_dir):
            atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
    return CheckedInputs(run_dir, checkpoint, train, evals, report)
