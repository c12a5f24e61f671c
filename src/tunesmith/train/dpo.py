"""Preference tuning (DPO, Rafailov et al. 2023) with LoRA on TRL's DPOTrainer: the stage after SFT.

Run it::

    tunesmith dpo configs/dpo/chatterbot-pairs.yaml                   # bundled chatterbot-pairs, ~3 min on 2 CPU cores
    tunesmith dpo configs/dpo/hh-rlhf.yaml --set model.adapter=runs/sft

Path: config -> preference pairs (load, validate, split) -> model (base, merged SFT model, or base + SFT adapter)
-> TRL DPOTrainer with ``ref_model=None``: with a LoRA policy the reference is the same weights with the adapter
disabled (or, continuing an SFT adapter, TRL's frozen LoRA-sized ``ref`` copy of it), so the base weights are never
held twice -> held-out reward accuracy (bootstrap CI), margins, log-probs -> win rate against the starting model
-> ``metrics.json`` (kind ``dpo``), ``predictions.jsonl``, ``adapter/`` in ``train.output_dir``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from transformers import TrainerCallback

from tunesmith.config.dpo import DPORunConfig
from tunesmith.data.records import PreferencePair
from tunesmith.evaluate.preference import pair_logps, start_generations, write_dpo_artifacts
from tunesmith.models.adapters import count_parameters, lora_errors, require_adapter, to_peft_config
from tunesmith.models.loading import load_adapter, load_causal_lm, load_tokenizer
from tunesmith.models.sources import resolve_model
from tunesmith.render.chat_templates import apply_chat_template_option
from tunesmith.render.checks import fix_generation_config
from tunesmith.render.guard import template_errors
from tunesmith.render.templates import end_of_turn_ids
from tunesmith.runtime.console import console
from tunesmith.runtime.distributed import save_trained_model
from tunesmith.runtime.memory import reset_peak_memory
from tunesmith.train.common import (
    install_progress,
    library_args,
    mixed_precision,
    plot_loss_curve,
    run_train_loss,
    serving_files,
    write_adapter_card,
    write_log_history,
)
from tunesmith.train.lifecycle import Run, start_run

_OURS = {"bf16", "precompute_ref_log_probs", "fast_path"}


def build_dpo_config(cfg: DPORunConfig, run_dir: Path, use_bf16: bool, *, precompute: bool):
    """Translate the ``train`` section into ``trl.DPOConfig`` (checkpoints under ``<run>/checkpoints``).

    Precision comes from the hardware (bf16 only where it measured faster), gradient checkpointing is off unless
    asked for (TRL defaults it on).
    """
    from trl import DPOConfig

    return DPOConfig(
        **library_args(cfg, run_dir, DPOConfig, bf16=use_bf16, ours=_OURS), precompute_ref_log_probs=precompute
    )


def build_policy(cfg: DPORunConfig, model):
    """Prepare the starting policy and the PEFT config TRL should add.

    Returns:
        (model, peft_config): a fresh LoRA (no adapter, or ``adapter_mode=merge`` after merging the SFT adapter into the
        base weights) is added by TRL from ``peft_config``; ``adapter_mode=continue`` returns a trainable ``PeftModel``
        holding the SFT adapter (TRL then copies it into a frozen ``ref`` adapter) and ``peft_config=None``.
    """
    if cfg.model.adapter:
        folder = require_adapter(cfg.model.adapter, f"model.adapter={cfg.model.adapter}")
        if cfg.model.adapter_mode == "continue":
            return load_adapter(model, folder, allow_pickle=cfg.model.allow_pickle, is_trainable=True), None
        model = load_adapter(model, folder, allow_pickle=cfg.model.allow_pickle).merge_and_unload()
    return model, (to_peft_config(cfg.lora) if cfg.lora.enabled else None)


def make_trainer(
    cfg: DPORunConfig,
    model,
    peft_config,
    tokenizer,
    train_pairs,
    eval_pairs,
    run_dir: Path,
    *,
    use_bf16: bool = False,
    precompute: bool = False,
):
    """Build TRL's ``DPOTrainer`` (with ``train.fast_path``: tunesmith's
    :class:`~tunesmith.train.speed.dpo_fast.FastDPOTrainer`, one packed pass per micro-batch and log-probs only at
    completion positions) with ``ref_model=None`` and tunesmith's progress display.

    With a LoRA policy TRL takes the reference from the same module with the adapter disabled (a fresh adapter) or
    from its frozen ``ref`` copy of a pretrained adapter (LoRA-sized), so the base weights exist once in memory.
    Without LoRA, ``precompute`` must be True: the reference log-probs are computed before training, so TRL does not
    load a second copy of the model.

    Returns:
        The trainer; its ``train_dataset``/``eval_dataset`` are tokenised (pairs whose prompt fills ``max_length``
        dropped).
    """
    from trl import DPOTrainer

    from tunesmith.train.speed.dpo_fast import FastDPOTrainer

    args = build_dpo_config(cfg, run_dir, use_bf16, precompute=precompute)
    with lora_errors(cfg.lora), template_errors(tokenizer):  # TRL applies LoRA and renders the pairs here
        trainer = (FastDPOTrainer if cfg.train.fast_path else DPOTrainer)(
            model=model,
            ref_model=None,
            args=args,
            train_dataset=_dataset(train_pairs),
            eval_dataset=_dataset(eval_pairs),
            processing_class=tokenizer,
            peft_config=peft_config,
        )
    if getattr(trainer, "fast_path", "on") != "on":
        console.print(f"[yellow]note:[/] packed DPO pass {trainer.fast_path}; using TRL's forward", highlight=False)
    install_progress(trainer)
    if not console.is_terminal:
        trainer.add_callback(_LogLines())
    return trainer


class _LogLines(TrainerCallback):
    """Print one line per Trainer log (step, loss, reward accuracy and margin) when stderr is not a terminal (the
    progress bar is not drawn there)."""

    def on_log(self, args, state, control, logs=None, **kw):
        """Print the step's DPO loss and batch reward statistics."""
        if logs and "loss" in logs and state.is_world_process_zero:
            console.print(
                f"step {state.global_step}/{state.max_steps}: loss {logs['loss']:.4f} "
                f"rewards/accuracies {logs.get('rewards/accuracies', float('nan')):.3f} "
                f"rewards/margins {logs.get('rewards/margins', float('nan')):.4f}",
                highlight=False,
            )


def run_dpo(
    cfg: DPORunConfig, *, overwrite: bool = False, resume: str | bool | None = None, run: Run | None = None
) -> dict:
    """Run DPO end to end and write every artifact; ``metrics.json`` is written last (its presence means "complete").

    Args:
        cfg: the validated :class:`~tunesmith.config.dpo.DPORunConfig`.
        overwrite: replace a run folder tunesmith made before.
        resume: ``"latest"``/True or a checkpoint path to continue from.
        run: the run :func:`tunesmith.train.lifecycle.start_run` already claimed.

    Returns:
        The metrics dict also written to ``metrics.json`` (shared contract: ``kind="dpo"``, ``task_metrics``, ``cost``).

    Raises:
        ConfigError, DataError, ModelError, TemplateError: bad input, before training starts.
        TrainingStopped: SIGINT/SIGTERM during training (a checkpoint was saved; exit code 130/143).
    """
    run = run or start_run(cfg, "dpo", overwrite=overwrite, resume=resume)
    with run.guard():
        return _run(cfg, run)


def _load_policy(cfg: DPORunConfig, report: dict):
    """Tokenizer, starting policy (+ the PEFT config TRL adds), end-of-turn ids and generation config."""
    source = resolve_model(cfg.model.name)
    tokenizer = load_tokenizer(source, trust_remote_code=cfg.model.trust_remote_code, revision=cfg.model.revision)
    apply_chat_template_option(tokenizer, cfg.model.chat_template, require=report["conversational"])
    base = load_causal_lm(
        source,
        dtype=torch.float32,
        attn_implementation=cfg.model.attn_implementation,
        trust_remote_code=cfg.model.trust_remote_code,
        allow_pickle=cfg.model.allow_pickle,
        revision=cfg.model.revision,
    )
    if tokenizer.chat_template:
        fix_generation_config(base.generation_config, tokenizer)
    eot = end_of_turn_ids(tokenizer, base.generation_config)
    gen_config = base.generation_config
    model, peft_config = build_policy(cfg, base)
    return source, tokenizer, model, peft_config, eot, gen_config


def _run(cfg: DPORunConfig, run: Run) -> dict:
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()  # TRL's tokenising maps; the training bar is tunesmith's
    torch.manual_seed(cfg.train.seed)
    train_pairs, eval_pairs, report = run.data.train, run.data.eval, run.data.report
    source, tokenizer, model, peft_config, eot, gen_config = _load_policy(cfg, report)
    use_bf16 = mixed_precision(cfg)
    precompute = cfg.train.precompute_ref_log_probs or not (peft_config is not None or _is_peft(model))
    console.print(
        f"[bold]tunesmith dpo[/] model={source.name} ({source.kind})"
        + (f" + adapter {cfg.model.adapter} ({cfg.model.adapter_mode})" if cfg.model.adapter else "")
        + f" precision={'bf16-mixed' if use_bf16 else 'fp32'} pairs: train={len(train_pairs)} eval={len(eval_pairs)} "
        f"({report['format']}, {report['skipped']} skipped); beta={cfg.train.beta} loss={','.join(cfg.train.loss_type)}"
        + (f"; resuming from {run.checkpoint}" if run.resumed else "")
    )
    run.write_manifest(
        tokenizer=tokenizer, records=train_pairs + eval_pairs, extra={"model_source": dataclasses.asdict(source)}
    )
    trainer = make_trainer(
        cfg,
        model,
        peft_config,
        tokenizer,
        train_pairs,
        eval_pairs,
        run.run_dir,
        use_bf16=use_bf16,
        precompute=precompute,
    )
    dropped = {
        "train": len(train_pairs) - len(trainer.train_dataset),
        "eval": len(eval_pairs) - len(trainer.eval_dataset),
    }
    if not run.resumed:
        console.print(
            f"generating {min(cfg.eval.win_rate_prompts, len(eval_pairs))} held-out replies with the "
            "starting model (for the win rate)"
        )
        run.remember(
            start=start_generations(cfg, trainer, tokenizer, eval_pairs, eot)
        )  # the starting model = the reference
    result, seconds = run.train(trainer)
    console.print(f"scoring {len(trainer.eval_dataset)} held-out pairs (policy and reference log-probs)")
    reset_peak_memory()  # the eval cost is the eval's own
    eval_rows = list(trainer.eval_dataset)
    lp = pair_logps(trainer, eval_rows, cfg.train.per_device_eval_batch_size)
    trainable, total = count_parameters(trainer.model)
    extra = {
        "train_seconds": seconds,
        "global_step": trainer.state.global_step,
        "train_loss": run_train_loss(trainer.state.log_history)
        if run.resumed or result is None
        else result.training_loss,
        "resumed_from": str(run.checkpoint) if run.resumed else None,
        "precision": "bf16-mixed" if use_bf16 else "fp32",
        "beta": cfg.train.beta,
        "loss_type": cfg.train.loss_type,
        "reference": _reference_kind(cfg, peft_config, precompute),
        "fast_path": getattr(trainer, "fast_path", "off: train.fast_path=false"),
        "start": {"model": source.name, "adapter": cfg.model.adapter, "adapter_mode": cfg.model.adapter_mode},
        "data": {
            **report,
            "train_pairs": len(train_pairs),
            "eval_pairs": len(eval_pairs),
            "dropped_prompt_too_long": dropped,
        },
        "trainable_parameters": trainable,
        "total_parameters": total,
    }
    metrics = write_dpo_artifacts(
        run.run_dir, cfg, trainer, tokenizer, eval_pairs, eval_rows, lp, run.state["start"], eot, extra
    )
    _drop_ref_adapter(
        trainer.model
    )  # after every reference log-prob: continuing an SFT adapter, 'ref' is the reference
    save_trained_model(
        trainer,
        run.run_dir / ("adapter" if _is_peft(trainer.model) else "model"),
        extra_files=serving_files(run, tokenizer, gen_config, eval_pairs or train_pairs),
    )
    write_log_history(run.run_dir, trainer.state.log_history)
    plot_loss_curve(run.run_dir, trainer.state.log_history)
    run.finish(metrics)
    write_adapter_card(run, run.run_dir / ("adapter" if _is_peft(trainer.model) else "model"))
    _summary(run.run_dir, metrics)
    return metrics


def _dataset(pairs: list[PreferencePair]):
    """TRL rows plus ``pair_id`` (the record's ``file:line``), so evaluated rows map back to their pairs."""
    from datasets import Dataset

    return Dataset.from_list([{**p.to_trl(), "pair_id": p.source} for p in pairs])


def _is_peft(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def _drop_ref_adapter(model) -> None:
    """Delete TRL's frozen ``ref`` adapter copy (continuing an SFT adapter) so only the trained adapter is saved."""
    if _is_peft(model) and "ref" in model.peft_config:
        model.set_adapter("default")
        model.delete_adapter("ref")


def _reference_kind(cfg: DPORunConfig, peft_config, precompute: bool) -> str:
    if cfg.model.adapter and cfg.model.adapter_mode == "continue":
        return "base + frozen copy of the SFT adapter (TRL 'ref' adapter; base weights shared)"
    if peft_config is not None:
        return "policy with the LoRA adapter disabled (same weights)" + (
            " (log-probs precomputed)" if precompute else ""
        )
    return "starting model, log-probs precomputed before training (full fine-tuning)"


def _summary(run_dir: Path, m: dict) -> None:
    tm = m["task_metrics"]
    lo, hi = m["held_out"]["reward_accuracy_ci"]
    win = m.get("win_rate") or {}
    console.print(
        f"\n[bold green]done[/] in {m['train_seconds']:.0f}s: held-out reward accuracy {tm['reward_accuracy']:.3f} "
        f"({m['eval']['confidence']:.0%} CI {lo:.3f}-{hi:.3f}, {m['held_out']['pairs']} pairs), "
        f"margin {tm['reward_margin']:.3f}"
        + (f"; win rate vs start {win['win_rate']:.3f} ({win['metric']})" if win.get("win_rate") is not None else "")
        + f"\n  artifacts: {run_dir}/"
    )
