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

from tunesmith.config.sft import RunConfig
from tunesmith.errors import DataError, Problem
from tunesmith.models.adapters import apply_lora, count_parameters
from tunesmith.models.generation import decode_reply, generate_ids
from tunesmith.models.loading import load_causal_lm, load_tokenizer
from tunesmith.models.quantization import ADAPTER_RECORD, adapter_record, prepare_for_training
from tunesmith.models.sources import resolve_model
from tunesmith.render.checks import check_template, fix_generation_config
from tunesmith.render.rows import TokenStats, render_all, resolve_max_length, to_dataset
from tunesmith.render.templates import apply_chat_template_option, end_of_turn_ids, render_prompt
from tunesmith.runtime.console import console
from tunesmith.runtime.distributed import gather_sum, is_main_process, main_first, params_sharded, save_trained_model
from tunesmith.runtime.files import atomic_write_json, atomic_write_jsonl
from tunesmith.train.callbacks import CountingTrainerMixin, TokenCounter
from tunesmith.train.common import (
    install_progress,
    library_args,
    mixed_precision,
    perplexity,
    plot_loss_curve,
    run_train_loss,
    write_log_history,
)
from tunesmith.train.lifecycle import Run, start_run
from tunesmith.train.speed.plan import (
    FastLossTrainerMixin,
    SpeedPlan,
    apply_threads,
    attach,
    build_datasets,
    plan_speed,
    sft_overrides,
)

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


def _make_trainer(model, tokenizer, args, train_ds, eval_ds, plan: SpeedPlan | None = None):
    from trl import SFTTrainer

    cls = type("TunesmithSFTTrainer", (CountingTrainerMixin, FastLossTrainerMixin, SFTTrainer), {})
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


def load_sft_model(cfg: RunConfig, source, attn_implementation: str, use_bf16: bool, *, lora: bool = True):
    """The model an SFT run trains: the base in fp32 (bf16 autocast comes from the trainer), or for QLoRA
    (``model.quantization``) quantised by bitsandbytes and computing in bf16 where native, else fp32; then the
    LoRA adapter (:func:`with_adapter`) when ``lora``.

    Returns:
        ``PreTrainedModel`` or ``peft.PeftModel``.

    Raises:
        ModelError: the model cannot be loaded (or bitsandbytes is missing for a quantization).
    """
    model = load_causal_lm(
        source,
        dtype=torch.bfloat16 if cfg.model.quantization and use_bf16 else torch.float32,
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


def _samples(model, tokenizer, convs, eot, max_new_tokens: int) -> list[str]:
    if not convs or not is_main_process() or params_sharded():  # main process only; not with sharded weights
        return []
    prompts = [render_prompt(tokenizer, c) for c in convs]
    model.eval()
    outs = generate_ids(model, tokenizer, prompts, max_new_tokens=max_new_tokens, eos_ids=eot)
    return [decode_reply(tokenizer, o) for o in outs]


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
    use_bf16: bool
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
    use_bf16 = mixed_precision(cfg)
    plan = plan_speed(cfg.train, cfg.model.attn_implementation)
    apply_threads(plan)
    model = load_sft_model(cfg, source, plan.attn_implementation, use_bf16, lora=False)
    max_length, why = resolve_max_length(cfg.train.max_length, tokenizer, model.config)
    if is_main_process():
        console.print(f"max_length: {why}; speed: {'; '.join(plan.notes)}")
    if tokenizer.chat_template:
        for f in check_template(tokenizer, model.generation_config):
            if f.level == "warning" and not (f.code == "default_system_prompt" and cfg.data.system_prompt):
                console.print(f"[yellow]template warning:[/] {f.message}", highlight=False)
        fix_generation_config(model.generation_config, tokenizer)  # generation stops at the end-of-turn token
    eot = end_of_turn_ids(tokenizer, model.generation_config)
    render = dict(generation_config=model.generation_config, skip_invalid=cfg.data.skip_invalid)
    train_rows, train_stats = render_all(tokenizer, run.data.train, max_length, **render)
    eval_rows, eval_stats = render_all(tokenizer, run.data.eval, max_length, **render)
    if not train_rows:
        raise DataError(
            "No training example has a trained token",
            [
                Problem(
                    f"train.max_length={cfg.train.max_length}",
                    f"all {train_stats.examples} training conversations ({cfg.data.path or cfg.data.name}) "
                    "lose every assistant token to truncation",
                    "raise train.max_length or check the assistant turns",
                )
            ],
        )
    gen_config = model.generation_config
    model = with_adapter(model, cfg)
    return _Prepared(
        source,
        tokenizer,
        model,
        gen_config,
        eot,
        plan,
        use_bf16,
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
            f"dtype={'bf16-mixed' if p.use_bf16 else 'fp32'} train={len(p.train_rows)} eval={len(p.eval_rows)} "
            f"examples, {p.train_stats.trained_tokens} trained tokens; "
            f"max_length={p.max_length} (dropped {p.train_stats.dropped_empty}, trained tokens lost to truncation "
            f"{p.train_stats.trained_tokens_lost})" + (f"; resuming from {run.checkpoint}" if run.resumed else "")
        )
    run.write_manifest(
        tokenizer=p.tokenizer,
        records=run.data.train + run.data.eval,
        extra={"model_source": dataclasses.asdict(p.source)},
    )
    args = build_sft_config(cfg, run.run_dir, p.use_bf16, p.max_length, sft_overrides(p.plan, cfg.train))
    trainer = _make_trainer(
        p.model, p.tokenizer, args, to_dataset(p.train_rows), to_dataset(p.eval_rows) if p.eval_rows else None, p.plan
    )
    sample_convs = run.data.eval[: cfg.eval.num_samples]
    _before(cfg, run, trainer, p, sample_convs)
    result, seconds = run.train(trainer)
    after = trainer.evaluate() if p.eval_rows else {}
    samples_after = _samples(p.model, p.tokenizer, sample_convs, p.eot, cfg.eval.max_new_tokens)
    # all processes (FSDP/ZeRO-3 gather); the main process writes. PEFT's save skips generation_config.json, which
    # carries the end-of-turn id among eos_token_id: written into the folder before its atomic rename.
    extra = {"generation_config.json": p.gen_config.to_json_string()}
    if cfg.model.quantization:  # the adapter remembers its base's quantisation (serving and merge load it so)
        extra[ADAPTER_RECORD] = adapter_record(cfg.model.quantization, torch.bfloat16 if p.use_bf16 else torch.float32)
    save_trained_model(trainer, run.run_dir / ("adapter" if cfg.lora.enabled else "model"), extra_files=extra)
    metrics = _metrics(cfg, run, trainer, p, after, result, seconds)
    if not is_main_process():  # only the main process writes artifacts and prints the summary
        return metrics
    if not params_sharded():
        # without accelerate's bf16 autocast wrapper: a fresh process reloads the adapter in fp32
        _write_reload_check(
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
    _summary(run.run_dir, metrics)
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
        "precision": "bf16-mixed" if p.use_bf16 else "fp32",
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


def _write_reload_check(run_dir: Path, model, tokenizer, convs) -> None:
    """Record the trained model's last-position logits (first 512 vocab entries) on a fixed probe prompt, so a
    reload of the saved adapter/model can be checked against the model as it was at the end of training."""
    ids = render_prompt(tokenizer, convs[0])
    model.eval()
    with torch.no_grad():
        logits = (
            model(input_ids=torch.tensor([ids], device=next(model.parameters()).device))
            .logits[0, -1, :512]
            .float()
            .cpu()
        )
    atomic_write_json(run_dir / "reload_check.json", {"input_ids": ids, "logits_last_first512": logits.tolist()})


def _before(cfg: RunConfig, run: Run, trainer, p: _Prepared, sample_convs) -> None:
    """Measure eval_loss and samples before training (every process evaluates; the main one keeps them in
    ``run_state.json``). A resumed run already has them."""
    if run.resumed:
        return
    before, samples = {}, []
    if cfg.eval.before_training and p.eval_rows:
        before = {k: v for k, v in trainer.evaluate(metric_key_prefix="eval").items() if isinstance(v, (int, float))}
        samples = _samples(p.model, p.tokenizer, sample_convs, p.eot, cfg.eval.max_new_tokens)
    run.remember(before=before, samples_before=samples)


def _summary(run_dir: Path, m: dict) -> None:
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    console.print(
        f"\n[bold green]done[/] in {m['train_seconds']:.0f}s: "
        f"eval_loss {fmt(m['eval_loss_before'])} -> {fmt(m['eval_loss'])}, "
        f"perplexity {fmt(m['perplexity_before'])} -> {fmt(m['perplexity'])}; {m['tokens_per_second']:.0f} tokens/s; "
        f"trainable {m['trainable_parameters']:,} of {m['total_parameters']:,} parameters\n  artifacts: {run_dir}/"
    )
