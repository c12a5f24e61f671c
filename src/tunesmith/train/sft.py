"""Supervised fine-tuning (SFT) with LoRA on TRL's SFTTrainer.

Run it::

    tunesmith sft                       # embedded SmolLM2-135M-Instruct on the chatterbot corpus
    tunesmith sft configs/sft.yaml --set train.max_steps=200

Path: config -> data (load, validate, split) -> render through the chat template (assistant-only
labels) -> truncate -> TRL SFTTrainer (packing, padding-free) with a LoRA adapter -> eval_loss
and perplexity before/after -> artifacts in ``train.output_dir``.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from tunesmith.render.rows import render_all, resolve_max_length, to_dataset
from tunesmith.config.sft import RunConfig
from tunesmith.data.split import fingerprint
from tunesmith.runtime.distributed import gather_sum, is_main_process, main_first, params_sharded, save_trained_model
from tunesmith.errors import DataError, Problem
from tunesmith.models.generation import decode_reply, generate_ids
from tunesmith.models.adapters import apply_lora, count_parameters
from tunesmith.models.sources import resolve_model
from tunesmith.models.loading import load_causal_lm, load_tokenizer
from tunesmith.runtime.hardware import choose_dtype
from tunesmith.train.lifecycle import CheckedInputs, check_sft_inputs
from tunesmith.train.speed.plan import FastLossTrainerMixin, apply_threads, attach, build_datasets, plan_speed, sft_overrides
from tunesmith.runtime.rundir import write_errors
from tunesmith.runtime.manifest import write_manifest
from tunesmith.runtime.secrets import redact_argv
from tunesmith.runtime.files import atomic_write_json, atomic_write_jsonl
from tunesmith.render.checks import check_template, fix_generation_config
from tunesmith.render.templates import apply_chat_template_option, end_of_turn_ids, render_prompt
from tunesmith.train.callbacks import GracefulStop, TokenCounter, TrainingStopped
from tunesmith.train.checkpoints import RUN_STATE, latest_checkpoint, resume_command
from tunesmith.train.common import install_progress, perplexity, plot_loss_curve, write_log_history
from tunesmith.runtime.console import Timer, console

_OURS = {"output_dir", "bf16", "max_length", "packing", "packing_strategy"}


def build_sft_config(cfg: RunConfig, run_dir: Path, use_bf16: bool, overrides: dict | None = None):
    """Translate the ``train`` section into ``trl.SFTConfig`` (checkpoints under ``run_dir/checkpoints``).

    Precision comes from the hardware (``bf16`` only where native), not from TRL's default; gradient
    checkpointing is off unless asked for; the dataset arrives pre-tokenised, so TRL only packs it.
    Under several processes (DDP/FSDP/DeepSpeed) the loss of each optimizer step is the sum of token losses over
    the global batch (all processes, all accumulation micro-batches) divided by its trained-token count:
    ``average_tokens_across_devices`` makes transformers all-gather that count (``num_items_in_batch``).
    """
    from trl import SFTConfig

    train = cfg.train.model_dump()
    valid = {f.name for f in dataclasses.fields(SFTConfig)}
    kwargs = {k: v for k, v in train.items() if k in valid and k not in _OURS}
    kwargs.update(
        output_dir=str(run_dir / "checkpoints"), bf16=use_bf16, fp16=False, max_length=cfg.train.max_length,
        packing=cfg.train.packing, packing_strategy=cfg.train.packing_strategy,
        padding_free=cfg.train.packing and cfg.train.packing_strategy != "wrapped",
        use_cpu=not torch.cuda.is_available(), report_to="none", disable_tqdm=True,
        eval_strategy=cfg.train.eval_strategy, dataset_num_proc=None, restore_callback_states_from_checkpoint=True,
        gradient_checkpointing_kwargs={"use_reentrant": False} if cfg.train.gradient_checkpointing else None,
        average_tokens_across_devices=True,
    )
    kwargs.setdefault("ddp_find_unused_parameters", False)  # every LoRA weight gets a gradient: skip DDP's graph search
    kwargs.update(overrides or {})  # the speed plan (tunesmith.train.speed.plan.sft_overrides)
    return SFTConfig(**kwargs)


class _CountingTrainerMixin:
    """Counts real (non-pad) and trained tokens of every training micro-batch, run-wide (see :class:`TokenCounter`);
    ``process_tokens`` counts only this process's (for tokens/second)."""

    process_tokens = 0

    def _counter(self) -> TokenCounter:
        # a resumed Trainer replaces the callback by one rebuilt from the checkpoint: look it up each time
        return next(c for c in self.callback_handler.callbacks if isinstance(c, TokenCounter))

    def training_step(self, model, inputs, num_items_in_batch=None):  # noqa: D102
        mask = inputs.get("attention_mask")
        counter = self._counter()
        real = inputs.get("num_real_tokens")  # packed rows (tunesmith.train.speed.packrows) carry their non-pad count
        seen = int(real) if real is not None else int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
        counter.tokens_seen += seen
        self.process_tokens += seen
        counter.trained_tokens += int((inputs["labels"] != -100).sum())
        return super().training_step(model, inputs, num_items_in_batch)


def _make_trainer(model, tokenizer, args, train_ds, eval_ds, plan=None):
    from trl import SFTTrainer

    cls = type("TunesmithSFTTrainer", (_CountingTrainerMixin, FastLossTrainerMixin, SFTTrainer), {})
    collator = None
    if plan is not None:  # performance (issue 10): packed rows and their collator
        train_ds, eval_ds, collator = build_datasets(plan, train_ds, eval_ds, args.max_length, tokenizer.pad_token_id)
    trainer = cls(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer,
                  callbacks=[TokenCounter()], data_collator=collator)
    for note in attach(trainer, plan) if plan is not None else []:
        console.print(note)
    install_progress(trainer)
    return trainer


def _samples(model, tokenizer, convs, eot, max_new_tokens: int) -> list[str]:
    if not convs or not is_main_process() or params_sharded():  # main process only; not with sharded weights
        return []
    prompts = [render_prompt(tokenizer, c) for c in convs]
    model.eval()
    outs = generate_ids(model, tokenizer, prompts, max_new_tokens=max_new_tokens, eos_ids=eot)
    return [decode_reply(tokenizer, o) for o in outs]


def run_sft(cfg: RunConfig, *, overwrite: bool = False, resume: str | bool | None = None, checked: CheckedInputs | None = None) -> dict:
    """Run SFT end to end and write every artifact; ``metrics.json`` is written last (its presence means "complete").

    Args:
        cfg: the validated run config.
        overwrite: replace an existing, non-empty ``train.output_dir``.
        resume: ``"latest"``/True (newest complete checkpoint) or a checkpoint path to continue from.
        checked: the result of :func:`tunesmith.train.lifecycle.check_sft_inputs` when the caller already ran it.

    Returns:
        The metrics dict also written to ``metrics.json``.

    Raises:
        TunesmithError (ConfigError, DataError, ModelError, TemplateError): bad input, before training starts.
        TrainingStopped: SIGINT/SIGTERM during training (a checkpoint was saved; exit code 130/143).
    """
    checked = checked or check_sft_inputs(cfg, overwrite=overwrite, resume=resume)
    with write_errors(checked.run_dir):
        if cfg.eval.baseline and is_main_process():  # decision order (issue 4): baseline -> SFT -> eval -> report
            from tunesmith.evaluate.baseline import sft_baseline, sft_compare

            sft_baseline(cfg, checked)
        metrics = _run(cfg, checked)
        if cfg.eval.baseline and is_main_process():
            sft_compare(cfg, checked)
        return metrics


def _run(cfg: RunConfig, checked: CheckedInputs) -> dict:
    run_dir, ckpt = checked.run_dir, checked.checkpoint
    train_convs, eval_convs = checked.train_convs, checked.eval_convs
    torch.manual_seed(cfg.train.seed)
    source = main_first(resolve_model, cfg.model.name)  # the main process converts/caches once
    tokenizer = load_tokenizer(source, trust_remote_code=cfg.model.trust_remote_code, revision=cfg.model.revision)
    apply_chat_template_option(tokenizer, cfg.model.chat_template, require=False)
    dtype = choose_dtype(cfg.model.dtype)
    use_bf16 = cfg.train.bf16 if cfg.train.bf16 is not None else dtype == torch.bfloat16
    plan = plan_speed(cfg.train, cfg.model.attn_implementation)
    apply_threads(plan)
    model = load_causal_lm(source, dtype=torch.float32, attn_implementation=plan.attn_implementation,
                           trust_remote_code=cfg.model.trust_remote_code, allow_pickle=cfg.model.allow_pickle, revision=cfg.model.revision)
    max_length, why = resolve_max_length(cfg.train.max_length, tokenizer, model.config)
    if is_main_process():
        console.print(f"max_length: {why}; speed: {'; '.join(plan.notes)}")
    if tokenizer.chat_template:
        for f in check_template(tokenizer, model.generation_config):
            if f.level == "warning" and not (f.code == "default_system_prompt" and cfg.data.system_prompt):
                console.print(f"[yellow]template warning:[/] {f.message}", highlight=False)
        fix_generation_config(model.generation_config, tokenizer)  # generation stops at the end-of-turn token
    eot = end_of_turn_ids(tokenizer, model.generation_config)
    train_rows, train_stats = render_all(tokenizer, train_convs, max_length, generation_config=model.generation_config, skip_invalid=cfg.data.skip_invalid)
    eval_rows, eval_stats = render_all(tokenizer, eval_convs, max_length, generation_config=model.generation_config, skip_invalid=cfg.data.skip_invalid)
    if not train_rows:
        raise DataError("No training example has a trained token", [Problem(
            f"train.max_length={cfg.train.max_length}", f"all {train_stats.examples} training conversations ({cfg.data.path or cfg.data.name}) lose every assistant token to truncation",
            "raise train.max_length or check the assistant turns")])
    if is_main_process():
        console.print(f"[bold]tunesmith sft[/] model={source.name} ({source.kind}) dtype={'bf16-mixed' if use_bf16 else 'fp32'} "
                      f"train={len(train_rows)} eval={len(eval_rows)} examples, {train_stats.trained_tokens} trained tokens; "
                      f"max_length={max_length} (dropped {train_stats.dropped_empty}, trained tokens lost to truncation {train_stats.trained_tokens_lost})"
                      + (f"; resuming from {ckpt}" if ckpt else ""))
        _manifest(run_dir, cfg, train_convs + eval_convs, tokenizer, source, ckpt)
    gen_config = model.generation_config
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora)
    trainable, total = count_parameters(model)
    args = build_sft_config(cfg, run_dir, use_bf16, sft_overrides(plan, cfg.train))
    trainer = _make_trainer(model, tokenizer, args, to_dataset(train_rows), to_dataset(eval_rows) if eval_rows else None, plan)
    sample_convs = eval_convs[: cfg.eval.num_samples]
    state = _before(cfg, run_dir, ckpt, trainer, model, tokenizer, sample_convs, eot, bool(eval_rows))
    stopper = GracefulStop()
    trainer.add_callback(stopper)
    with Timer() as t:
        result = _train_or_restore_finished(trainer, ckpt)
    if stopper.signum is not None:
        last = latest_checkpoint(run_dir)
        raise TrainingStopped(stopper.signum, str(last) if last else None, resume_command())
    after = trainer.evaluate() if eval_rows else {}
    samples_after = _samples(model, tokenizer, sample_convs, eot, cfg.eval.max_new_tokens)

    # all processes (FSDP/ZeRO-3 gather); the main process writes. PEFT's save skips generation_config.json, which
    # carries the end-of-turn id among eos_token_id: written into the folder before its atomic rename.
    save_trained_model(trainer, run_dir / ("adapter" if cfg.lora.enabled else "model"), extra_files={"generation_config.json": gen_config.to_json_string()})
    before, samples_before = state.get("before", {}), state.get("samples_before", [])
    counter = trainer._counter()
    # per-process counts summed over processes (a resume across process counts restores the main process's count only)
    tokens_seen, trained_tokens = gather_sum(counter.tokens_seen), gather_sum(counter.trained_tokens)
    process_tokens = gather_sum(trainer.process_tokens)
    metrics = {
        "kind": "sft", "model": source.name,
        "eval_loss_before": before.get("eval_loss"), "perplexity_before": perplexity(before.get("eval_loss")),
        "eval_loss": after.get("eval_loss"), "perplexity": perplexity(after.get("eval_loss")),
        "task_metrics": {k: v for k, v in (("eval_loss", after.get("eval_loss")), ("perplexity", perplexity(after.get("eval_loss")))) if v is not None},
        "train_loss": _run_train_loss(trainer.state.log_history) if ckpt else result.training_loss, "global_step": trainer.state.global_step,
        "resumed_from": str(ckpt) if ckpt else None,
        "trainable_parameters": trainable, "total_parameters": total,
        "tokens_seen": tokens_seen, "trained_tokens": trained_tokens, "num_processes": trainer.args.world_size,
        "train_seconds": t.seconds, "tokens_per_second": process_tokens / max(t.seconds, 1e-9),
        "precision": "bf16-mixed" if use_bf16 else "fp32", "speed": {"layout": plan.layout, "chunked_loss": trainer.tunesmith_chunked_loss, "attn_implementation": plan.attn_implementation},
        "data": {"load": {"rows_read": checked.report.rows_read, "kept": checked.report.kept, "skipped": checked.report.skipped_records, "format": checked.report.format},
                 "train": train_stats.summary(), "eval": eval_stats.summary()},
    }
    if not is_main_process():  # only the main process writes artifacts and prints the summary
        return metrics
    if not params_sharded():
        # without accelerate's bf16 autocast wrapper: a fresh process reloads the adapter in fp32
        _write_reload_check(run_dir, trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False), tokenizer, sample_convs or eval_convs[:1] or train_convs[:1])
    write_log_history(run_dir, trainer.state.log_history)
    plot_loss_curve(run_dir, trainer.state.log_history, before_eval_loss=metrics["eval_loss_before"])
    atomic_write_jsonl(run_dir / "samples.jsonl", [
        {"source": c.source, "prompt": c.messages[-2].content if len(c.messages) > 1 else "", "reference": c.messages[-1].content,
         "before": samples_before[i] if i < len(samples_before) else None, "after": samples_after[i] if i < len(samples_after) else None}
        for i, c in enumerate(sample_convs)])
    atomic_write_json(run_dir / "metrics.json", metrics)
    _summary(run_dir, metrics)
    return metrics


def _train_or_restore_finished(trainer, ckpt):
    """``trainer.train()``, resuming from ``ckpt`` when given. A checkpoint at or past ``max_steps`` (the run was killed
    after its last step, while writing the final artifacts) is only loaded: weights, trainer state and callback state
    (token counts), and no step is run; transformers' ``train`` would run one extra step there.

    Returns:
        ``TrainOutput`` from ``trainer.train``, or None when the finished checkpoint was only restored.
    """
    import json

    if ckpt is not None and trainer.args.max_steps > 0:
        state = json.loads((Path(ckpt) / "trainer_state.json").read_text())
        if state.get("global_step", 0) >= trainer.args.max_steps:
            from transformers.trainer_callback import TrainerState

            trainer._load_from_checkpoint(str(ckpt))
            trainer.state = TrainerState.load_from_json(str(Path(ckpt) / "trainer_state.json"))
            trainer._load_callback_state()
            return None
    return trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)


def _write_reload_check(run_dir: Path, model, tokenizer, convs) -> None:
    """Record the trained model's last-position logits (first 512 vocab entries) on a fixed probe prompt, so a
    reload of the saved adapter/model can be checked against the model as it was at the end of training."""
    ids = render_prompt(tokenizer, convs[0])
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids], device=next(model.parameters()).device)).logits[0, -1, :512].float().cpu()
    atomic_write_json(run_dir / "reload_check.json", {"input_ids": ids, "logits_last_first512": logits.tolist()})


def _manifest(run_dir: Path, cfg: RunConfig, convs, tokenizer, source, ckpt) -> None:
    """Write manifest.json before training; a resume appends itself to ``resumes`` (command line and checkpoint)."""
    import json
    import sys

    path = run_dir / "manifest.json"
    if ckpt and path.is_file():
        manifest = json.loads(path.read_text())
        manifest.setdefault("resumes", []).append({"from": str(ckpt), "command": redact_argv(sys.argv)})
        atomic_write_json(path, manifest)
        return
    write_manifest(run_dir, config=cfg.model_dump(mode="json"), seed=cfg.train.seed, dataset_fingerprint=fingerprint(convs),
                   tokenizer=tokenizer, extra={"model_source": dataclasses.asdict(source)})


def _before(cfg, run_dir, ckpt, trainer, model, tokenizer, sample_convs, eot, has_eval) -> dict:
    """Measure eval_loss and samples before training (first process only) and keep them in run_state.json."""
    import json

    path = run_dir / RUN_STATE
    if ckpt:
        return json.loads(path.read_text()) if path.is_file() else {}
    state = {"before": {}, "samples_before": []}
    if cfg.eval.before_training and has_eval:
        state["before"] = {k: v for k, v in trainer.evaluate(metric_key_prefix="eval").items() if isinstance(v, (int, float))}
        state["samples_before"] = _samples(model, tokenizer, sample_convs, eot, cfg.eval.max_new_tokens)
    if is_main_process():  # every process evaluates (a distributed eval); only the main one writes
        atomic_write_json(path, state)
    return state


def _run_train_loss(log_history: list[dict]) -> float | None:
    """Mean of the logged train losses over the whole run: a resumed Trainer's own ``training_loss`` covers only its own steps."""
    losses = [e["loss"] for e in log_history if "loss" in e]
    return sum(losses) / len(losses) if losses else None


def _summary(run_dir: Path, m: dict) -> None:
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    console.print(f"\n[bold green]done[/] in {m['train_seconds']:.0f}s: eval_loss {fmt(m['eval_loss_before'])} -> {fmt(m['eval_loss'])}, "
                  f"perplexity {fmt(m['perplexity_before'])} -> {fmt(m['perplexity'])}; {m['tokens_per_second']:.0f} tokens/s; "
                  f"trainable {m['trainable_parameters']:,} of {m['total_parameters']:,} parameters\n  artifacts: {run_dir}/")
