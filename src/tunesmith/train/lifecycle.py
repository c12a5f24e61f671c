"""The one run lifecycle every training command (``sft``, ``classify``, ``dpo``) goes through.

    tunesmith sft CONFIG [--resume latest|PATH] [--overwrite]   # likewise classify and dpo

:func:`start_run` runs before any model loads (nothing here imports torch), so bad input fails in about a second
with exit code 2. In order: secrets in the config, the ``train.report_to`` integrations, the resume target (and
that the config matches the run's), the data (every record validated, ``file:line``), then the output directory
(lock, refuse to mix runs), where the resolved ``config.yaml`` is written first and ``run.log`` starts.

The recipe then works through the :class:`Run` it gets back: :meth:`Run.guard` turns a failed write into a clear
error, :meth:`Run.write_manifest` records the run (a resume appends itself), :meth:`Run.train` trains with
checkpoints and graceful SIGINT/SIGTERM stops (exit 130/143 with the resume command), and :meth:`Run.finish`
writes ``metrics.json`` last: its presence means "complete".
"""

from __future__ import annotations

import json
import logging
import sys
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.config.load import config_inputs, dump_config
from tunesmith.errors import ConfigError, Problem, TrainingStopped, TunesmithError
from tunesmith.runtime.console import Timer, log_to_file
from tunesmith.runtime.distributed import is_main_process, is_rank_zero
from tunesmith.runtime.files import atomic_write_json, atomic_write_text, write_errors
from tunesmith.runtime.hardware import is_installed
from tunesmith.runtime.lock import lock_run_dir
from tunesmith.runtime.manifest import write_manifest
from tunesmith.runtime.rundir import overwrite_refusals, prepare_run_dir
from tunesmith.runtime.secrets import is_secret_key, redact_argv
from tunesmith.train.checkpoints import RUN_STATE, check_same_run, latest_checkpoint, resolve_resume, resume_command
from tunesmith.train.rundata import LOADERS, RunData

INTEGRATION_PACKAGES = {
    "tensorboard": ("tensorboard", "tensorboardX"),
    "trackio": ("trackio",),
    "wandb": ("wandb",),
    "mlflow": ("mlflow",),
    "comet_ml": ("comet_ml",),
    "clearml": ("clearml",),
    "dvclive": ("dvclive",),
    "swanlab": ("swanlab",),
}
"""``train.report_to`` value -> the packages that provide it (any one will do)."""


@dataclass
class Run:
    """A run folder claimed for one training command, and what :func:`start_run` checked and loaded for it.

    Attributes:
        cfg: the validated config (``RunConfig``, ``ClassifyConfig`` or ``DPORunConfig``).
        kind: ``sft``, ``classify`` or ``dpo``.
        run_dir: the output directory, created, locked and writable.
        checkpoint: the checkpoint folder to resume from, or None for a fresh run.
        data: the split data.
        state: what the main process measured before training (``run_state.json``; restored on resume).
        after_training: what the decision order runs after training, for the plan printed before it:
            ``[(description, estimated seconds or None)]`` (set by :mod:`tunesmith.pipeline`).
    """

    cfg: object
    kind: str
    run_dir: Path
    checkpoint: Path | None
    data: RunData
    state: dict = field(default_factory=dict)
    after_training: list = field(default_factory=list)

    @property
    def resumed(self) -> bool:
        """True when this run continues from a checkpoint."""
        return self.checkpoint is not None

    def guard(self) -> AbstractContextManager:
        """Context in which a failed write under the run folder (disk full, read-only) becomes a clear error naming
        the file and, when a checkpoint was completed, the command that resumes the run (see
        :func:`tunesmith.runtime.files.write_errors`)."""
        return write_errors(self.run_dir, resume=lambda: resume_command() if latest_checkpoint(self.run_dir) else None)

    def remember(self, **values) -> None:
        """Keep values measured before training (eval_loss before, samples, start generations) in ``run_state.json``,
        so a resumed run reports them without measuring again. Only the main process writes."""
        self.state.update(values)
        if is_main_process():
            atomic_write_json(self.run_dir / RUN_STATE, self.state)

    def write_manifest(self, *, tokenizer=None, records: list | None = None, extra: dict | None = None) -> None:
        """Write ``manifest.json`` before training (main process only); a resume appends itself to ``resumes``
        (command line and checkpoint) instead.

        Args:
            tokenizer: the tokenizer trained with (its chat template is hashed).
            records: every record of the run, for the data fingerprint.
            extra: more keys (model source, labels, ...).
        """
        from tunesmith.data.split import fingerprint

        if not is_main_process():
            return
        path = self.run_dir / "manifest.json"
        if self.resumed and path.is_file():
            manifest = json.loads(path.read_text())
            manifest.setdefault("resumes", []).append({"from": str(self.checkpoint), "command": redact_argv(sys.argv)})
            atomic_write_json(path, manifest)
            return
        write_manifest(
            self.run_dir,
            config=self.cfg.model_dump(mode="json"),
            seed=self.cfg.train.seed,
            dataset_fingerprint=fingerprint(records) if records else None,
            tokenizer=tokenizer,
            extra={"command_kind": self.kind, **(extra or {})},
        )

    def train(self, trainer) -> tuple[object | None, float]:
        """Train, resuming from :attr:`checkpoint` when set, with a graceful stop on SIGINT/SIGTERM and a stop at the
        first NaN or infinite loss, gradient or weight.

        A checkpoint at or past ``max_steps`` (the run was killed after its last step, while writing the final
        artifacts) is only restored: weights, trainer state and callback state, and no step runs (transformers'
        ``train`` would run one extra step there).

        Returns:
            (``TrainOutput``, or None when a finished checkpoint was only restored; training seconds).

        Raises:
            TrainingStopped: a signal arrived; a checkpoint was saved (exit code 130/143, the resume command).
            TrainingDiverged: the loss, gradients or weights turned non-finite (exit code 2; no checkpoint of the
                diverged step, no ``metrics.json``).
        """
        from tunesmith.train.callbacks import GracefulStop, NonFiniteStop

        stopper = GracefulStop()
        trainer.add_callback(stopper)
        trainer.add_callback(NonFiniteStop(getattr(self.cfg.train, "learning_rate", None)))
        try:
            with Timer() as t:
                result = _train_or_restore(trainer, self.checkpoint)
        finally:
            stopper.restore()
        if stopper.signum is not None:
            last = latest_checkpoint(self.run_dir)
            raise TrainingStopped(stopper.signum, str(last) if last else None, resume_command())
        return result, t.seconds

    def finish(self, metrics: dict) -> dict:
        """Write ``metrics.json``, the last artifact (main process only).

        Returns:
            ``metrics``, unchanged.
        """
        if is_main_process():
            atomic_write_json(self.run_dir / "metrics.json", metrics)
        return metrics


def check_secrets(cfg) -> None:
    """Refuse tokens/passwords inside the config (they would end up in config.yaml and checkpoints).

    Raises:
        ConfigError: naming each ``train.*token*`` style field that has a value.
    """
    extras = cfg.train.model_extra or {}
    bad = [k for k, v in extras.items() if is_secret_key(k) and v not in (None, "", False)]
    if bad:
        raise ConfigError(
            "Secrets do not belong in a run config",
            [
                Problem(
                    f"train.{k}",
                    "a secret here would be written to config.yaml, manifest.json and every checkpoint",
                    "remove it; tunesmith never pushes to a hub, and huggingface_hub reads HF_TOKEN from "
                    "the environment",
                )
                for k in bad
            ],
        )


def check_report_to(cfg) -> None:
    """Refuse a ``train.report_to`` integration whose package is not installed (transformers would fail later).

    Raises:
        ConfigError: naming the integration and the package to install.
    """
    wanted = cfg.train.report_to
    wanted = [wanted] if isinstance(wanted, str) else list(wanted)
    missing = [
        w for w in wanted if w in INTEGRATION_PACKAGES and not any(is_installed(p) for p in INTEGRATION_PACKAGES[w])
    ]
    if missing:
        raise ConfigError(
            "Logging integration not installed",
            [
                Problem(
                    f"train.report_to={w}",
                    f"the package {INTEGRATION_PACKAGES[w][0]!r} is not installed",
                    f"pip install {INTEGRATION_PACKAGES[w][0]}, or set train.report_to=none",
                )
                for w in missing
            ],
        )


def start_run(cfg, kind: str, *, overwrite: bool = False, resume: str | bool | None = None) -> Run:
    """Check everything a training run needs that does not need the model, then claim the run folder.

    Args:
        cfg: the validated config of the command.
        kind: ``sft``, ``classify`` or ``dpo`` (its data loader is ``LOADERS[kind]``; every record is validated).
        overwrite: replace a run folder tunesmith made before.
        resume: ``latest``/True or a checkpoint path.

    Returns:
        The :class:`Run`, with ``config.yaml`` written (fresh runs) and ``run.log`` started.

    Raises:
        ConfigError, DataError, TunesmithError: each problem with its location; nothing is trained.
    """
    from tunesmith.models.adapters import require_adapter
    from tunesmith.models.targets import check_lora_targets

    check_secrets(cfg)
    check_report_to(cfg)
    check_lora_targets(cfg, kind)
    if getattr(cfg.model, "adapter", None):  # DPO starting from an SFT adapter: it must be one, and generative
        require_adapter(cfg.model.adapter, f"model.adapter={cfg.model.adapter}")
    run_dir = Path(cfg.train.output_dir).expanduser()
    checkpoint = resolve_resume(run_dir, resume, overwrite=overwrite)
    if checkpoint is not None:
        check_same_run(run_dir, cfg.model_dump(mode="json"))
    data = LOADERS[kind](cfg)
    run_dir = _claim(run_dir, overwrite=overwrite, resumed=checkpoint is not None, inputs=config_inputs(cfg), kind=kind)
    state: dict = {}
    if checkpoint is not None and (run_dir / RUN_STATE).is_file():
        state = json.loads((run_dir / RUN_STATE).read_text())
    if is_rank_zero():
        with write_errors(run_dir):
            if checkpoint is None:
                atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
            log_to_file(run_dir / "run.log")
        logging.getLogger("tunesmith").info("tunesmith %s %s", kind, " ".join(redact_argv(sys.argv[1:])))
        if data.eval_off:
            from tunesmith.runtime.console import console

            console.print(f"[yellow]warning:[/] {data.eval_off}", highlight=False, soft_wrap=True)
    return Run(cfg, kind, run_dir, checkpoint, data, state)


def _claim(run_dir: Path, *, overwrite: bool, resumed: bool, inputs: tuple, kind: str) -> Path:
    """Lock, check and create the run folder; under accelerate/torchrun only rank 0 owns the folder and its lock.

    ``--overwrite`` is checked first (:func:`tunesmith.runtime.rundir.overwrite_refusals`: links, home/current/root
    folders, git checkouts, folders holding the run's own inputs, folders tunesmith did not make), so a refused folder
    is never touched, not even by the lock."""
    try:
        with write_errors(run_dir):
            main = is_rank_zero()
            problems = overwrite_refusals(run_dir, inputs=inputs) if overwrite and main else []
            if problems:
                raise TunesmithError(f"Refusing to replace {run_dir} (--overwrite)", problems)
            if run_dir.is_dir() and main:
                lock_run_dir(run_dir)  # a live run in this folder is refused before --overwrite moves anything
            run_dir = prepare_run_dir(run_dir, overwrite=overwrite, resume=resumed, inputs=inputs, kind=kind)
            if main:
                lock_run_dir(run_dir)  # (re)claim it: --overwrite moved the folder and its lock aside
    except TunesmithError as exc:
        for p in exc.problems:
            p.where = f"train.output_dir={p.where}"
        raise
    return run_dir


def _train_or_restore(trainer, ckpt: Path | None):
    """``trainer.train()``, resuming from ``ckpt``; a checkpoint at or past ``max_steps`` is only restored."""
    if ckpt is not None and trainer.args.max_steps > 0:
        state = json.loads((Path(ckpt) / "trainer_state.json").read_text())
        if state.get("global_step", 0) >= trainer.args.max_steps:
            from transformers.trainer_callback import TrainerState

            trainer._load_from_checkpoint(str(ckpt))
            trainer.state = TrainerState.load_from_json(str(Path(ckpt) / "trainer_state.json"))
            trainer._load_callback_state()
            return None
    return trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)


def trainer_args(cfg, run_dir: Path) -> dict:
    """The ``TrainingArguments`` fields every recipe sets the same way: checkpoints under ``<run_dir>/checkpoints``,
    ``report_to`` honoured (TensorBoard event files under ``<run_dir>/logs``), callback state restored on resume,
    tunesmith's own progress display instead of tqdm."""
    import os

    report_to = cfg.train.report_to
    if "tensorboard" in ([report_to] if isinstance(report_to, str) else report_to):
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(Path(run_dir) / "logs")
    return {
        "output_dir": str(Path(run_dir) / "checkpoints"),
        "report_to": report_to,
        "disable_tqdm": True,
        "restore_callback_states_from_checkpoint": True,
    }
