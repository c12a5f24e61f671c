"""One benchmark run in a fresh process: plain TRL (as shipped / at its best) or tunesmith's SFT path.

    python bench/variants.py VARIANT --data DIR --out RESULT.json   # called by bench/bench_sft.py

Every variant trains the same LoRA on the same pre-tokenised rows (``DIR/train``, ``DIR/eval``: input_ids and
assistant-only labels rendered by tunesmith) for the same number of optimizer steps, then scores eval_loss with
the same function (:func:`eval_loss`), so only the training path differs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

VARIANTS = {
    "trl_shipped": "plain TRL SFTTrainer, defaults: bf16 autocast, gradient checkpointing, padded batches, no packing",
    "trl_best": "plain TRL SFTTrainer at its best on CPU: fp32, no gradient checkpointing, packing (BFD, padding-free)",
    "tunesmith": (
        "tunesmith sft path, defaults (precision from a timed probe, packed rows, per-sample attention, chunked loss)"
    ),
    "tunesmith_fp32": "tunesmith sft path, fp32 (train.bf16=false)",
    "tunesmith_bf16": "tunesmith sft path, bf16 base weights + fp32 LoRA (model.dtype=bfloat16)",
    "tunesmith_mixed": "tunesmith sft path, fp32 weights + bf16 autocast (model.dtype=float32, train.bf16=true)",
    "tunesmith_sdpa": "tunesmith sft path, SDPA with the dense packed mask (train.varlen_attention=false)",
    "tunesmith_dropout": "tunesmith sft path, lora_dropout=0.05",
    "tunesmith_compile": "tunesmith sft path, torch.compile on each decoder layer (train.compile=true)",
    "tunesmith_trl_loss": "tunesmith sft path, TRL's loss (train.chunked_loss=false)",
    "tunesmith_flat": "tunesmith sft path, TRL's padding-free flat layout (train.packing_layout=flat)",
    "tunesmith_micro1": "tunesmith sft path, one packed row per forward/backward (train.micro_batch_size=1)",
    "tunesmith_micro2": "tunesmith sft path, two packed rows per forward/backward (train.micro_batch_size=2)",
    "tunesmith_whole_batch": (
        "tunesmith sft path, the whole batch in one forward/backward (train.micro_batch_size=batch)"
    ),
    "tunesmith_ckpt": "tunesmith sft path with gradient checkpointing (train.gradient_checkpointing=true)",
}


class StepClock:
    """A TrainerCallback recording wall time (perf_counter) and this process's CPU time (all threads, process_time) at
    each optimizer step's end, in seconds: CPU time is the load-robust measure on a shared machine."""

    def __init__(self):
        from transformers import TrainerCallback

        outer = self
        self.times: list[float] = []
        self.cpu: list[float] = []

        class _CB(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                outer.times.append(time.perf_counter())
                outer.cpu.append(time.process_time())

            def on_step_end(self, args, state, control, **kw):
                outer.times.append(time.perf_counter())
                outer.cpu.append(time.process_time())

        self.callback = _CB()


def eval_loss(model, rows, batch_size: int = 8) -> float:
    """Token-mean cross-entropy (nats) over the trained positions of ``rows`` (dicts with input_ids/labels), fp32,
    padded batches with an attention mask; the same function scores every variant."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        for i in range(0, len(rows), batch_size):
            chunk = rows[i : i + batch_size]
            n = max(len(r["input_ids"]) for r in chunk)
            ids = torch.tensor([r["input_ids"] + [0] * (n - len(r["input_ids"])) for r in chunk])
            lab = torch.tensor([r["labels"] + [-100] * (n - len(r["labels"])) for r in chunk])
            mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (n - len(r["input_ids"])) for r in chunk])
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits.float()
            tgt = lab[:, 1:].to(model.device)
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=-100, reduction="sum"
            )
            total, count = total + float(loss), count + int((tgt != -100).sum())
    return total / max(count, 1)


def common_args(a) -> dict:
    """Trainer arguments every variant shares (steps, batch, constant learning rate, no saving or evaluation); the
    GPU worker uses them too."""
    return dict(
        output_dir=str(Path(a.out).parent / f"ckpt-{a.variant}"),
        max_steps=a.steps,
        per_device_train_batch_size=a.batch,
        learning_rate=2e-4,
        lr_scheduler_type="constant",
        warmup_steps=0,
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=42,
        max_length=a.max_length,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
    )


def _trl(a, train_ds, lora_cfg, tokenizer, model_dir):
    from trl import SFTConfig, SFTTrainer

    from tunesmith.models.adapters import to_peft_config

    kw = common_args(a)
    if a.variant == "trl_best":
        kw.update(bf16=False, gradient_checkpointing=False, packing=True, packing_strategy="bfd")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    clock = StepClock()
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(**kw),
        train_dataset=train_ds,
        processing_class=tokenizer,
        peft_config=to_peft_config(lora_cfg),
        callbacks=[clock.callback],
    )
    return trainer, clock, "bf16-mixed" if trainer.args.bf16 else "fp32"


def _tunesmith(a, train_ds, cfg, tokenizer, source):
    from tunesmith.train.common import run_precision
    from tunesmith.train.sft import _make_trainer, build_sft_config, load_sft_model
    from tunesmith.train.speed.plan import apply_threads, plan_speed, sft_overrides
    from tunesmith.train.speed.precision import fast_lora_inputs

    sets = {
        "tunesmith_fp32": {"bf16": False},
        "tunesmith_mixed": {"bf16": True},
        "tunesmith_sdpa": {"varlen_attention": False},
        "tunesmith_compile": {"compile": True},
        "tunesmith_trl_loss": {"chunked_loss": False},
        "tunesmith_flat": {"packing_layout": "flat"},
        "tunesmith_micro1": {"micro_batch_size": 1},
        "tunesmith_micro2": {"micro_batch_size": 2},
        "tunesmith_whole_batch": {"micro_batch_size": a.batch},
        "tunesmith_ckpt": {"gradient_checkpointing": True},
    }
    for k, v in {**common_args(a), **sets.get(a.variant, {})}.items():
        if k in type(cfg.train).model_fields:
            setattr(cfg.train, k, v)
    cfg.model.dtype = {"tunesmith_bf16": "bfloat16", "tunesmith_mixed": "float32"}.get(a.variant, "auto")
    plan = plan_speed(cfg.train, cfg.model.attn_implementation)
    apply_threads(plan)
    prec = run_precision(cfg, plan)
    model = load_sft_model(cfg, source, plan.attn_implementation, prec)
    fast_lora_inputs(model, prec.name == "bf16")
    args = build_sft_config(
        cfg, Path(a.out).parent / f"ckpt-{a.variant}", prec.autocast, overrides=sft_overrides(plan, cfg.train)
    )
    args.save_strategy, args.eval_strategy, args.disable_tqdm = "no", "no", True
    trainer = _make_trainer(model, tokenizer, args, train_ds, None, plan)
    clock = StepClock()
    trainer.add_callback(clock.callback)
    return trainer, clock, prec.name


def run(a) -> dict:
    """Train one variant for ``a.steps`` optimizer steps and return its measurements (see bench_sft.py for the
    fields)."""
    from datasets import load_from_disk

    from tunesmith.config.sft import RunConfig
    from tunesmith.models.loading import load_tokenizer
    from tunesmith.models.sources import resolve_model

    cfg = RunConfig()
    if a.variant == "tunesmith_dropout":
        cfg.lora.lora_dropout = 0.05
    source = resolve_model(cfg.model.name)
    tokenizer = load_tokenizer(source)
    train_ds, eval_rows = (
        load_from_disk(str(Path(a.data) / "train")),
        json.loads((Path(a.data) / "eval.json").read_text()),
    )
    torch.manual_seed(42)
    if a.variant.startswith("trl"):
        trainer, clock, precision = _trl(a, train_ds, cfg.lora, tokenizer, source.location)
    else:
        trainer, clock, precision = _tunesmith(a, train_ds, cfg, tokenizer, source)
    return {
        "variant": a.variant,
        "description": VARIANTS[a.variant],
        "precision": precision,
        **train_and_measure(trainer, clock, eval_rows, a.warmup, fp32_scorer(cfg, source), profile=a.profile),
    }


def fp32_scorer(cfg, source):
    """The model eval_loss is scored on: the trained model itself, or, when its base was trained in bf16, the trained
    adapter on the fp32 base (as ``tunesmith eval --adapter``, chat and merge load it), so every variant's eval_loss is
    the served model's."""

    def pick(model):
        frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
        if torch.bfloat16 not in frozen:
            return model
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        from tunesmith.models.adapters import apply_lora
        from tunesmith.models.loading import load_causal_lm
        from tunesmith.train.speed.precision import fast_lora_inputs

        fast_lora_inputs(model, False)
        fresh = apply_lora(load_causal_lm(source, dtype=torch.float32), cfg.lora)
        set_peft_model_state_dict(fresh, get_peft_model_state_dict(model))
        return fresh

    return pick


def train_and_measure(
    trainer, clock: StepClock, eval_rows: list[dict], warmup: int, scorer=None, profile: bool = False
) -> dict:
    """Train ``trainer`` (its max_steps), summing the real (non-pad) tokens of its micro-batches per optimizer step,
    then score eval_loss.

    Args:
        scorer: maps the trained model to the model eval_loss is scored on (default: itself).
        profile: record the steps after the warm-up with ``torch.profiler`` and return its top operators by self
            CPU time (``"profile"``: the table as text); the timings then include the profiler's overhead.

    Returns:
        ``{"steps", "warmup_steps", "step_seconds", "real_tokens_per_step", "tokens_per_second" (real tokens per wall
        second after ``warmup`` steps), "tokens_per_cpu_second", "cpu_share", "peak_rss_bytes", "peak_gpu_bytes" (CUDA
        ``max_memory_allocated``, None on CPU), "train_losses", "eval_loss", "parameters", "trainable_parameters",
        "threads", "loadavg_end"}``.
    """
    from benchlib import StepCounter
    from tunesmith.models.adapters import count_parameters

    def real_tokens(inputs):
        n, m = inputs.get("num_real_tokens"), inputs.get("attention_mask")
        return (int(n) if n is not None else int(m.sum()) if m is not None else int(inputs["input_ids"].numel()),)

    counter = StepCounter(trainer, real_tokens)
    prof = _profile_after(trainer, warmup) if profile else None
    trainer.train()
    table = prof.stop() if prof else None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # training peak (load included), before scoring
    gpu_peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    trainable, total = count_parameters(trainer.model)
    t = clock.times
    warm = min(warmup, len(t) - 2)
    measured_tokens = counter.after(warm)
    seconds = t[-1] - t[warm]
    cpu_seconds = clock.cpu[-1] - clock.cpu[warm]
    return {
        "steps": len(t) - 1,
        "warmup_steps": warm,
        "step_seconds": [round(y - x, 3) for x, y in zip(t, t[1:])],
        "real_tokens_per_step": counter.per_step(),
        "tokens_per_second": measured_tokens / seconds,
        "tokens_per_cpu_second": measured_tokens / cpu_seconds,
        "cpu_share": cpu_seconds / seconds / torch.get_num_threads(),
        "peak_rss_bytes": peak,
        "peak_gpu_bytes": gpu_peak,
        "train_losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
        "eval_loss": eval_loss((scorer or (lambda m: m))(trainer.model), eval_rows),
        "parameters": total,
        "trainable_parameters": trainable,
        "threads": torch.get_num_threads(),
        "loadavg_end": os.getloadavg(),
        **({"profile": table} if table else {}),
    }


def _profile_after(trainer, warmup: int):
    """Start ``torch.profiler`` when optimizer step ``warmup`` begins; ``.stop()`` returns the top-ops table."""
    from torch.profiler import ProfilerActivity, profile
    from transformers import TrainerCallback

    class _Prof(TrainerCallback):
        p = None

        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == warmup and self.p is None:
                self.p = profile(activities=[ProfilerActivity.CPU])
                self.p.__enter__()

        def stop(self):
            if self.p is None:
                return None
            self.p.__exit__(None, None, None)
            return self.p.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=50)

    cb = _Prof()
    trainer.add_callback(cb)
    return cb


def main(argv=None) -> int:
    """Entry point of one benchmark child process: writes the result JSON to ``--out``."""
    p = argparse.ArgumentParser()
    p.add_argument("variant", choices=sorted(VARIANTS))
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--profile", action="store_true", help="torch.profiler's top operators after the warm-up steps")
    a = p.parse_args(argv)
    result = run(a)
    Path(a.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
