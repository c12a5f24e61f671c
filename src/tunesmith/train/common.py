"""Pieces every training recipe shares: progress display, log/plot artifacts, precision choice."""

from __future__ import annotations

from pathlib import Path

from transformers import TrainerCallback

from tunesmith.runtime.console import Progress
from tunesmith.runtime.files import atomic_write_jsonl


class RichProgress(TrainerCallback):
    """Training progress through the one progress display (:class:`tunesmith.runtime.console.Progress`): a rich bar
    with step count, last train loss, last eval_loss and ETA on a terminal; without one (CI, a log file) a plain line
    ``train: 10/30 steps (33%), loss 1.2345, eval_loss 1.3456, elapsed 40s, ETA 1m20s`` per log event."""

    def __init__(self):
        self.progress: Progress | None = None

    def on_train_begin(self, args, state, control, **kw):
        """Start at ``state.global_step`` (non-zero when resuming); only the main process shows progress."""
        if not state.is_world_process_zero:
            return
        self.progress = Progress("train", state.max_steps, unit="steps", done=state.global_step, auto_lines=False)
        self.progress.start()

    def on_step_end(self, args, state, control, **kw):
        """Advance to the current step."""
        if self.progress:
            self.progress.update(state.global_step)

    def on_log(self, args, state, control, logs=None, **kw):
        """Show the latest ``loss`` and ``eval_loss`` (without a terminal: print the line)."""
        if not self.progress or not logs or not ("loss" in logs or "eval_loss" in logs):
            return
        self.progress.update(state.global_step, **{k: f"{logs[k]:.4f}" for k in ("loss", "eval_loss") if k in logs})
        if self.progress.lines:
            self.progress.print_line()

    def on_train_end(self, args, state, control, **kw):
        """Stop the bar."""
        if self.progress:
            self.progress.finish()
            self.progress = None


def install_progress(trainer) -> None:
    """Replace transformers' tqdm progress and log printer with :class:`RichProgress`."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(RichProgress())


def write_log_history(run_dir: Path, log_history: list[dict]) -> None:
    """Write ``log_history.jsonl`` (one Trainer log entry per line)."""
    atomic_write_jsonl(run_dir / "log_history.jsonl", log_history)


def plot_loss_curve(
    run_dir: Path, log_history: list[dict], *, before_eval_loss: float | None = None, filename: str = "loss_curve.png"
) -> Path:
    """Plot train loss and eval_loss against optimizer step into a PNG (matplotlib, Agg backend).

    Returns:
        The PNG path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    evals = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e and "step" in e]
    if before_eval_loss is not None:
        evals = [(0, before_eval_loss)] + [p for p in evals if p[0] != 0]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train loss", color="#1f77b4")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval_loss", color="#d62728")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats per trained token)")
    ax.set_title("Training and evaluation loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = run_dir / filename
    tmp = out.with_name("." + out.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out)
    return out


def mixed_precision(cfg) -> bool:
    """bf16 mixed precision for this run: ``train.bf16`` when set, else what ``model.dtype`` resolves to on this
    machine (``auto``: bf16 only where a measured bf16 matmul beats fp32, see
    :func:`tunesmith.runtime.hardware.choose_dtype`)."""
    import torch

    from tunesmith.runtime.hardware import choose_dtype

    if cfg.train.bf16 is not None:
        return bool(cfg.train.bf16)
    return choose_dtype(cfg.model.dtype) == torch.bfloat16


def run_precision(cfg, plan=None):
    """The precision of an SFT, DPO or classify run (:func:`tunesmith.train.speed.precision.resolve_precision`; QLoRA
    keeps its quantised weights and computes in bf16 where :func:`mixed_precision` says so).

    Args:
        cfg: the run config.
        plan: the SFT speed plan (its rows per pass size the probe step), or None (one row).

    Returns:
        :class:`tunesmith.train.speed.precision.Precision`.
    """
    from tunesmith.train.speed.precision import Precision, resolve_precision

    if getattr(cfg.model, "quantization", None):
        bf16 = mixed_precision(cfg)
        return Precision("bf16-mixed" if bf16 else "fp32", f"{cfg.model.quantization} base weights")
    seq = getattr(cfg.train, "max_length", None) or 512
    rows = max(1, min((getattr(plan, "rows_per_pass", None) or 1), 4096 // seq))
    return resolve_precision(cfg, seq_len=min(seq, 2048), rows=rows)


def library_args(cfg, run_dir, library_cls, *, bf16: bool, ours: set[str]) -> dict:
    """Keyword arguments of a library trainer config (``trl.SFTConfig``, ``trl.DPOConfig``, ``TrainingArguments``):
    the ``train`` fields that class has (minus ``ours``, which the recipe sets), plus what every recipe sets the same
    way: the run's checkpoint folder and ``report_to`` (:func:`tunesmith.train.lifecycle.trainer_args`), the
    precision, CPU when no GPU, gradient checkpointing without re-entrant autograd, and no DDP unused-parameter search
    (every LoRA weight gets a gradient).

    Returns:
        ``dict`` to pass as ``library_cls(**kwargs)`` after recipe-specific additions.
    """
    import dataclasses

    import torch

    valid = {f.name for f in dataclasses.fields(library_cls)}
    kwargs = {k: v for k, v in cfg.train.model_dump().items() if k in valid and k not in ours and k != "output_dir"}
    from tunesmith.train.lifecycle import trainer_args

    kwargs.update(
        trainer_args(cfg, run_dir),
        bf16=bf16,
        fp16=False,
        use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing_kwargs={"use_reentrant": False} if kwargs.get("gradient_checkpointing") else None,
    )
    kwargs.setdefault("ddp_find_unused_parameters", False)
    return kwargs


def run_train_loss(log_history: list[dict]) -> float | None:
    """Mean of the logged train losses over the whole run (a resumed Trainer's own ``training_loss`` covers only its
    own steps)."""
    losses = [e["loss"] for e in log_history if "loss" in e]
    return sum(losses) / len(losses) if losses else None


def serving_files(run, tokenizer, generation_config, records: list) -> dict[str, str]:
    """What a recipe saves beside its trained weights so every serving path uses what training used:
    ``serving.json`` (:mod:`tunesmith.models.serving`) and ``generation_config.json`` with its generation defaults.

    Args:
        run: the :class:`tunesmith.train.lifecycle.Run` (its config's ``data.system_prompt``, ``eval.max_new_tokens``;
            the data fingerprint from ``manifest.json``).
        tokenizer / generation_config: as trained (chat template installed, end-of-turn id among the eos ids).
        records: the run's eval records (conversations or preference pairs), as trained; their prompts become the
            contract's probes (:func:`tunesmith.models.serving.training_prompts`).

    Returns:
        File name -> text, for :func:`tunesmith.runtime.distributed.save_trained_model`'s ``extra_files``.
    """
    import json

    from tunesmith.models.serving import build_contract, contract_files, training_prompts

    manifest = run.run_dir / "manifest.json"
    fingerprint = json.loads(manifest.read_text()).get("dataset_fingerprint") if manifest.is_file() else None
    contract = build_contract(
        tokenizer,
        generation_config,
        system_prompt=run.cfg.data.system_prompt,
        prompts=training_prompts(records),
        max_new_tokens=run.cfg.eval.max_new_tokens,
        trained_with={"command": run.kind, "model": run.cfg.model.name, "dataset_fingerprint": fingerprint},
    )
    return contract_files(contract, generation_config)


def write_adapter_card(run, folder: Path) -> None:
    """Write the model card (``README.md``) of the trained adapter or model ``folder`` from the run's files (main
    process only; the card reads ``metrics.json``, so call it after :meth:`Run.finish`)."""
    from tunesmith.export.card import write_model_card
    from tunesmith.models.adapters import adapter_home, find_adapter
    from tunesmith.runtime.distributed import is_main_process

    if not is_main_process() or not folder.is_dir():
        return
    adapter = find_adapter(folder)
    home = adapter_home(adapter) if adapter is not None else folder
    write_model_card(home, run.run_dir, base=str(run.cfg.model.name), library="peft" if adapter else "transformers")
