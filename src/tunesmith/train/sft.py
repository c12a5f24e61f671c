"""Supervised fine-tuning (SFT) with LoRA on TRL's SFTTrainer.

Run it::

    tunesmith sft                       # embedded SmolLM2-135M-Instruct on the chatterbot corpus
    tunesmith sft configs/sft/chatterbot.yaml --set train.max_steps=200

Path: the run lifecycle (:mod:`tunesmith.train.lifecycle`: config, data, run folder) -> model and tokenizer ->
render through the chat template (assistant-only labels) -> truncate -> TRL SFTTrainer (packing, padding-free) with a
LoRA adapter -> eval_loss and perplexity before/after -> artifacts in ``train.output_dir``, ``metrics.json`` last.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from tunesmith.config.metric_names import is_custom_metric
from tunesmith.config.sft import RunConfig
from tunesmith.evaluate.loss import perplexity
from tunesmith.evaluate.metrics import describe_custom_metric
from tunesmith.models.adapters import apply_lora, count_parameters, lora_errors
from tunesmith.models.loading import load_causal_lm, load_tokenizer
from tunesmith.models.quantization import ADAPTER_RECORD, adapter_record, prepare_for_training
from tunesmith.models.sources import resolve_model
from tunesmith.render.chat_templates import apply_chat_template_option
from tunesmith.render.checks import check_template, fix_generation_config
from tunesmith.render.rows import TokenStats, render_all, resolve_max_length, to_dataset, truncation_warning
from tunesmith.render.templates import end_of_turn_ids
from tunesmith.runtime.console import console
from tunesmith.runtime.distributed import gather_sum, is_main_process, main_first, params_sharded, save_trained_model
from tunesmith.runtime.files import atomic_write_jsonl
from tunesmith.train.callbacks import CountingTrainerMixin, TokenCounter
from tunesmith.train.common import (
    install_progress,
    library_args,
    plot_loss_curve,
    run_precision,
    run_train_loss,
    serving_files,
    write_adapter_card,
    write_log_history,
)
from tunesmith.train.lifecycle import Run, start_run
from tunesmith.train.rundata import require_rows
from tunesmith.train.sft_eval import (
    OneLossEvalMixin,
    measure_before,
    print_plan,
    print_summary,
    samples,
    write_reload_check,
)
from tunesmith.train.speed.plan import (
    FastLossTrainerMixin,
    SpeedPlan,
    apply_threads,
    attach,
    build_datasets,
    detach,
    plan_speed,
    sft_overrides,
)
from tunesmith.train.speed.precision import Precision, fast_lora_inputs

_OURS = {"bf16", "max_length", "packing", "packing_strategy"}
"""``train`` fields this recipe sets itself rather than passing through."""


def build_sft_config(
    cfg: RunConfig, run_dir: Path, use_bf16: bool, max_length: int | None = None, overrides: dict | None = None
):
    """Translate the ``train`` section into ``trl.SFTConfig`` (checkpoints under ``<run>/checkpoints``).

    Args:
        run_dir: the run folder (checkpoints go to ``<run_dir>/checkpoints``).
        max_length: the resolved maximum row length (``train.max_length`` capped at the model's context), used for
            rendering, packing and TRL alike; None takes ``train.max_length``.

    Precision comes from the hardware (``bf16`` only where it measured faster), not from TRL's default; gradient
    checkpointing is off unless asked for; the dataset arrives pre-tokenised, so TRL only packs it.
    Under several processes (DDP/FSDP/DeepSpeed) the loss of each optimizer step is the sum of token losses over
    the global batch (all processes, all accumulation micro-batches) divided by its trained-token count:
    ``average_tokens_across_devices`` makes transformers all-gather that count (``num_items_in_batch``).
    """
    from trl import SFTConfig

    kwargs = library_args(cfg, run_dir, SFTConfig, bf16=use_bf16, ours=_OURS)
    kwargs.update(
        max_length=max_length or cfg.train.max_length,
        packing=cfg.train.packing,
        packing_strategy=cfg.train.packing_strategy,
        padding_free=cfg.train.packing and cfg.train.packing_strategy != "wrapped",
        dataset_num_proc=None,
        average_tokens_across_devices=True,
    )
    kwargs.update(overrides or {})  # the speed plan (tunesmith.train.speed.plan.sft_overrides)
    return SFTConfig(**kwargs)


def _make_trainer(model, tokenizer, args, train_ds, eval_ds, plan: SpeedPlan | None = None, eval_rows=None):
    from trl import SFTTrainer

    cls = type(
        "TunesmithSFTTrainer",
        (CountingTrainerMixin, OneLossEvalMixin, FastLossTrainerMixin, SFTTrainer),
        {"tunesmith_eval_rows": list(eval_rows or [])},
    )
    collator = None
    if plan is not None:  # packed rows and their collator
        train_ds, eval_ds, collator = build_datasets(plan, train_ds, eval_ds, args.max_length, tokenizer.pad_token_id)
    trainer = cls(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        callbacks=[TokenCounter()],
        data_collator=collator,
    )
    for note in attach(trainer, plan) if plan is not None else []:
        console.print(note)
    install_progress(trainer)
    return trainer


def load_sft_model(cfg: RunConfig, source, attn_implementation: str, precision: Precision, *, lora: bool = True):
    """The model an SFT run trains: the base in the precision's weight dtype (fp32, or bf16 for LoRA on bf16; bf16
    autocast comes from the trainer), or for QLoRA (``model.quantization``) quantised by bitsandbytes and computing in
    bf16 where native, else fp32; then the LoRA adapter (:func:`with_adapter`) when ``lora``.

    Returns:
        ``PreTrainedModel`` or ``peft.PeftModel``.

    Raises:
        ModelError: the model cannot be loaded (or bitsandbytes is missing for a quantization).
    """
    model = load_causal_lm(
        source,
        dtype=torch.bfloat16 if cfg.model.quantization and precision.autocast else precision.weights,
        attn_implementation=attn_implementation,
        trust_remote_code=cfg.model.trust_remote_code,
        allow_pickle=cfg.model.allow_pickle,
        revision=cfg.model.revision,
        quantization=cfg.model.quantization,
    )
    return with_adapter(model, cfg) if lora else model


def with_adapter(model, cfg: RunConfig):
    """Add the ``lora`` adapter (when enabled); a quantised base is first prepared the PEFT way
    (:func:`tunesmith.models.quantization.prepare_for_training`: frozen, non-quantised weights in fp32)."""
    if cfg.model.quantization:
        model = prepare_for_training(model, cfg.train.gradient_checkpointing)
    return apply_lora(model, cfg.lora) if cfg.lora.enabled else model


def run_sft(
    cfg: RunConfig, *, overwrite: bool = False, resume: str | bool | None = None, run: Run | None = None
) -> dict:
    """Run SFT end to end and write every artifact; ``metrics.json`` is written last (its presence means "complete").

    Args:
        cfg: the validated run config.
        overwrite: replace a run folder tunesmith made before.
        resume: ``"latest"``/True (newest complete checkpoint) or a checkpoint path to continue from.
        run: the run :func:`tunesmith.train.lifecycle.start_run` already claimed (the CLI starts it before torch loads).

    Returns:
        The metrics dict also written to ``metrics.json``.

    Raises:
        TunesmithError (ConfigError, DataError, ModelError, TemplateError): bad input, before training starts.
        TrainingStopped: SIGINT/SIGTERM during training (a checkpoint was saved; exit code 130/143).
    """
    run = run or start_run(cfg, "sft", overwrite=overwrite, resume=resume)
    with run.guard():
        return _run(cfg, run)


@dataclass
class _Prepared:
    """The model side of an SFT run: source, tokenizer, model (with LoRA), rows and what was decided."""

    source: object
    tokenizer: object
    model: object
    gen_config: object
    eot: set[int]
    plan: SpeedPlan
    precision: Precision
    max_length: int
    train_rows: list
    eval_rows: list
    train_stats: TokenStats
    eval_stats: TokenStats


def _prepare(cfg: RunConfig, run: Run) -> _Prepared:
    """Load tokenizer and model, check the template, render the rows, add LoRA."""
    torch.manual_seed(cfg.train.seed)
    source = main_first(resolve_model, cfg.model.name)  # the main process converts/caches once
    tokenizer = load_tokenizer(source, trust_remote_code=cfg.model.trust_remote_code, revision=cfg.model.revision)
    apply_chat_template_option(tokenizer, cfg.model.chat_template, require=False)
    plan = plan_speed(cfg.train, cfg.model.attn_implementation)
    apply_threads(plan)
    precision = run_precision(cfg, plan)
    model = load_sft_model(cfg, source, plan.attn_implementation, precision, lora=False)
    max_length, why = resolve_max_length(cfg.train.max_length, tokenizer, model.config)
    if is_main_process():
        console.print(
            f"max_length: {why}; precision {precision.name} ({precision.why}); speed: {'; '.join(plan.notes)}"
        )
    if tokenizer.chat_template:
        for f in check_template(tokenizer, model.generation_config):
            if f.level == "warning" and not (f.code == "default_system_prompt" and cfg.data.system_prompt):
                console.print(f"[yellow]template warning:[/] {f.message}", highlight=False)
        fix_generation_config(model.generation_config, tokenizer)  # generation stops at the end-of-turn token
    eot = end_of_turn_ids(tokenizer, model.generation_config)
    render = dict(
        generation_config=model.generation_config,
        skip_invalid=cfg.data.skip_invalid,
        train_reasoning=cfg.data.train_reasoning,
        truncation=cfg.data.truncation,
    )
    train_rows, train_stats = render_all(tokenizer, run.data.train, max_length, **render)
    eval_rows, eval_stats = render_all(tokenizer, run.data.eval, max_length, **render)
    warning = truncation_warning(train_stats, max_length, cfg.data.truncation)
    if warning and is_main_process():
        console.print(f"[bold yellow]truncation warning:[/] {warning}", highlight=False, soft_wrap=True)
    require_rows(cfg, max_length, (train_rows, train_stats), (eval_rows, eval_stats), bool(run.data.eval))
    gen_config = model.generation_config
    model = with_adapter(model, cfg)
    return _Prepared(
        source,
        tokenizer,
        model,
        gen_config,
        eot,
        plan,
        precision,
        max_length,
        train_rows,
        eval_rows,
        train_stats,
        eval_stats,
    )


def _run(cfg: RunConfig, run: Run) -> dict:
    p = _prepare(cfg, run)
    if is_main_process():
        console.print(
            f"[bold]tunesmith sft[/] model={p.source.name} ({p.source.kind}) "
            f"precision={p.precision.name} train={len(p.train_rows)} eval={len(p.eval_rows)} "
            f"examples, {p.train_stats.trained_tokens} trained tokens; "
            f"max_length={p.max_length} (dropped {p.train_stats.dropped_empty}, trained tokens lost to truncation "
            f"{p.train_stats.trained_tokens_lost})" + (f"; resuming from {run.checkpoint}" if run.resumed else "")
        )
    run.write_manifest(
        tokenizer=p.tokenizer,
        records=run.data.train + run.data.eval,
        extra={
            "model_source": dataclasses.asdict(p.source),
            "custom_metrics": [describe_custom_metric(m) for m in cfg.eval.metrics if is_custom_metric(m)],
        },
    )
    overrides = sft_overrides(p.plan, cfg.train) | ({"eval_strategy": "no"} if not p.eval_rows else {})
    args = build_sft_config(cfg, run.run_dir, p.precision.autocast, p.max_length, overrides)
    train_ds, eval_ds = to_dataset(p.train_rows), to_dataset(p.eval_rows) if p.eval_rows else None
    with lora_errors(cfg.lora):  # TRL refuses some target modules (lm_head) only here
        trainer = _make_trainer(p.model, p.tokenizer, args, train_ds, eval_ds, p.plan, p.eval_rows)
    sample_convs = run.data.eval[: cfg.eval.num_samples]
    measure_before(cfg, run, trainer, p, sample_convs)
    print_plan(cfg, run, trainer, p)
    fast_lora_inputs(p.model, p.precision.name == "bf16")  # under autocast only: off again before anything else
    try:
        result, seconds = run.train(trainer)
    finally:
        fast_lora_inputs(p.model, False)
        detach(trainer)
    after = trainer.evaluate() if p.eval_rows else {}
    samples_after = samples(p.model, p.tokenizer, sample_convs, p.eot, cfg.eval.max_new_tokens, "samples after")
    # all processes (FSDP/ZeRO-3 gather); the main process writes. PEFT's save skips generation_config.json (the
    # end-of-turn id among eos_token_id): written with serving.json into the folder before its atomic rename.
    extra = serving_files(run, p.tokenizer, p.gen_config, run.data.eval or run.data.train)
    if cfg.model.quantization:  # the adapter remembers its base's quantisation (serving and merge load it so)
        extra[ADAPTER_RECORD] = adapter_record(
            cfg.model.quantization, torch.bfloat16 if p.precision.autocast else torch.float32
        )
    save_trained_model(trainer, run.run_dir / ("adapter" if cfg.lora.enabled else "model"), extra_files=extra)
    metrics = _metrics(cfg, run, trainer, p, after, result, seconds)
    if not is_main_process():  # only the main process writes artifacts and prints the summary
        return metrics
    if not params_sharded():
        # without accelerate's bf16 autocast wrapper: a fresh process reloads the adapter in fp32
        write_reload_check(
            run.run_dir,
            trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False),
            p.tokenizer,
            sample_convs or run.data.eval[:1] or run.data.train[:1],
        )
    write_log_history(run.run_dir, trainer.state.log_history)
    plot_loss_curve(run.run_dir, trainer.state.log_history, before_eval_loss=metrics["eval_loss_before"])
    samples_before = run.state.get("samples_before", [])
    atomic_write_jsonl(
        run.run_dir / "samples.jsonl",
        [
            {
                "source": c.source,
                "prompt": c.messages[-2].content if len(c.messages) > 1 else "",
                "reference": c.messages[-1].content,
                "before": samples_before[i] if i < len(samples_before) else None,
                "after": samples_after[i] if i < len(samples_after) else None,
            }
            for i, c in enumerate(sample_convs)
        ],
    )
    run.finish(metrics)
    write_adapter_card(run, run.run_dir / ("adapter" if cfg.lora.enabled else "model"))
    print_summary(run.run_dir, metrics)
    return metrics


def _metrics(cfg: RunConfig, run: Run, trainer, p: _Prepared, after: dict, result, seconds: float) -> dict:
    """The run's ``metrics.json`` content (token counts summed over processes)."""
    before = run.state.get("before", {})
    counter = trainer._counter()
    # per-process counts summed over processes (a resume across process counts restores the main process's count only)
    tokens_seen, trained_tokens = gather_sum(counter.tokens_seen), gather_sum(counter.trained_tokens)
    process_tokens = gather_sum(trainer.process_tokens)
    trainable, total = count_parameters(p.model)
    report = run.data.report
    return {
        "kind": "sft",
        "model": p.source.name,
        "eval_loss_before": before.get("eval_loss"),
        "perplexity_before": perplexity(before.get("eval_loss")),
        "eval_loss": after.get("eval_loss"),
        "perplexity": perplexity(after.get("eval_loss")),
        "task_metrics": {
            k: v
            for k, v in (("eval_loss", after.get("eval_loss")), ("perplexity", perplexity(after.get("eval_loss"))))
            if v is not None
        },
        "train_loss": run_train_loss(trainer.state.log_history)
        if run.resumed or result is None
        else result.training_loss,
        "global_step": trainer.state.global_step,
        "resumed_from": str(run.checkpoint) if run.resumed else None,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "tokens_seen": tokens_seen,
        "trained_tokens": trained_tokens,
        "num_processes": trainer.args.world_size,
        "train_seconds": seconds,
        "tokens_per_second": process_tokens / max(seconds, 1e-9),
        "max_length": p.max_length,
        "precision": p.precision.name,
        "quantization": cfg.model.quantization,
        "speed": {
            "layout": p.plan.layout,
            "chunked_loss": trainer.tunesmith_chunked_loss,
            "attn_implementation": p.plan.attn_implementation,
        },
        "data": {
            "load": {
                "rows_read": report.rows_read,
                "kept": report.kept,
                "skipped": report.skipped_records,
                "format": report.format,
            },
            "train": p.train_stats.summary(),
            "eval": p.eval_stats.summary(),
        },
    }
