"""DPO throughput and memory: ``tunesmith dpo``'s trainer against plain TRL ``DPOTrainer``, side by side.

    make bench-dpo               # python bench/bench_dpo.py: 6 steps, batch 4, max_length 96, 1 thread
    python bench/bench_dpo.py --steps 8 --threads 0 --rounds 2 --out runs/bench   # torch's threads, two rounds

Every variant trains the same LoRA (``tunesmith.models.adapters.to_peft_config`` of the shipped DPO config) on the
same chatterbot pairs (``configs/dpo/chatterbot-pairs.yaml``: tunesmith's split and system prompt), for the same
steps, batch, ``max_length``, learning rate (constant) and seed, with the reference = the same weights with the
adapter disabled (``ref_model=None``).  Each run is a fresh process; variants alternate (TRL, tunesmith, TRL, ...).

Reported per variant, over the steps after warm-up: pairs/s and real tokens/s (TRL's token count: prompt+chosen plus
prompt+rejected, after truncation, the same numerator for every variant) per wall second and per CPU second
(``time.process_time``: the load-robust measure on a shared machine, best with ``--threads 1``), peak RSS, the DPO
loss and reward accuracy of the last step, and the ratios to ``trl``.  Writes ``<out>/bench-dpo.json`` and
``<out>/bench-dpo.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from benchlib import StepCounter, optional, run_rounds, table, write_report  # noqa: E402

CONFIG = HERE.parent / "configs" / "dpo" / "chatterbot-pairs.yaml"
VARIANTS = {
    "trl": "plain TRL DPOTrainer, shipped defaults (bf16 autocast, gradient checkpointing, padded [chosen; rejected])",
    "trl_fp32": "plain TRL DPOTrainer at its best on CPU: fp32, no gradient checkpointing",
    "tunesmith": "tunesmith dpo's trainer (packed pass, log-probs at completion positions; precision from the config)",
    "tunesmith_trl_forward": "tunesmith dpo's trainer with train.fast_path=false (TRL's forward)",
    "tunesmith_pair_rows": "tunesmith dpo's trainer, one packed row per pair (no prompt prefix shared across pairs)",
    "tunesmith_bf16": "tunesmith dpo's trainer under bf16 autocast",
}
DEFAULTS = {"steps": 6, "warmup": 2, "batch": 4, "max_length": 96, "rounds": 1, "variants": "trl,tunesmith,trl_fp32"}


def parse_args(argv=None) -> argparse.Namespace:
    """Command line of the benchmark (and of its per-variant child process, ``--child VARIANT``)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=DEFAULTS["steps"], help="optimizer steps per variant")
    p.add_argument("--warmup", type=int, default=DEFAULTS["warmup"], help="first steps left out of the rates")
    p.add_argument("--batch", type=int, default=DEFAULTS["batch"], help="pairs per step")
    p.add_argument("--max-length", type=int, default=DEFAULTS["max_length"], help="tokens of prompt + reply")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per process; 1 (default): load-robust CPU time on a shared machine; 0: torch's default",
    )
    p.add_argument("--rounds", type=int, default=DEFAULTS["rounds"], help="runs of every variant, alternated")
    p.add_argument("--variants", default=DEFAULTS["variants"], help=f"comma-separated, of: {', '.join(VARIANTS)}")
    p.add_argument("--out", default="runs/bench", help="folder for bench-dpo.json and bench-dpo.md")
    p.add_argument("--timeout", type=float, default=900, help="seconds per variant run")
    p.add_argument("--child", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    for v in a.variants.split(","):
        if v not in VARIANTS:
            p.error(f"unknown variant {v!r} (choose from {', '.join(VARIANTS)})")
    if a.steps <= a.warmup:
        p.error("--steps must be larger than --warmup")
    return a


def _load(a):
    """The shipped DPO config with the benchmark's settings, its train pairs, tokenizer and fp32 base model."""
    import torch

    from tunesmith.config.dpo import DPORunConfig
    from tunesmith.config.load import load_config
    from tunesmith.data.preference import load_pair_data
    from tunesmith.models.loading import load_causal_lm, load_tokenizer
    from tunesmith.models.sources import resolve_model

    cfg = load_config(str(CONFIG), [], model_cls=DPORunConfig)
    t = cfg.train
    t.max_steps, t.per_device_train_batch_size, t.max_length = a.steps, a.batch, a.max_length
    t.lr_scheduler_type, t.warmup_steps, t.logging_steps = "constant", 0, 1
    t.save_strategy, t.eval_strategy, t.report_to = "no", "no", "none"
    train, evals, _ = load_pair_data(cfg)
    source = resolve_model(cfg.model.name)
    torch.manual_seed(t.seed)
    return cfg, train, evals, load_tokenizer(source), load_causal_lm(source, dtype=torch.float32)


def _trainer(a, work: Path):
    """Build the variant's trainer (the same pairs, LoRA, steps, learning rate and seed for every variant)."""
    from tunesmith.models.adapters import to_peft_config
    from tunesmith.train.dpo import _dataset, build_policy, make_trainer

    cfg, train, evals, tok, base = _load(a)
    v = a.child
    if v.startswith("trl"):
        from trl import DPOConfig, DPOTrainer

        t = cfg.train
        kw = dict(
            output_dir=str(work / f"ckpt-{v}"),
            max_steps=t.max_steps,
            per_device_train_batch_size=t.per_device_train_batch_size,
            learning_rate=t.learning_rate,
            lr_scheduler_type="constant",
            warmup_steps=0,
            beta=t.beta,
            max_length=t.max_length,
            logging_steps=1,
            save_strategy="no",
            eval_strategy="no",
            report_to="none",
            disable_tqdm=True,
            seed=t.seed,
            use_cpu=True,
        )
        if v == "trl_fp32":
            kw.update(bf16=False, gradient_checkpointing=False)
        return DPOTrainer(
            model=base,
            ref_model=None,
            args=DPOConfig(**kw),
            train_dataset=_dataset(train),
            processing_class=tok,
            peft_config=to_peft_config(cfg.lora),
        )
    cfg.train.fast_path = v != "tunesmith_trl_forward"
    cfg.train.bf16 = True if v == "tunesmith_bf16" else cfg.train.bf16
    from tunesmith.train.common import mixed_precision

    model, peft_config = build_policy(cfg, base)
    trainer = make_trainer(
        cfg, model, peft_config, tok, train, evals[:8], work / f"run-{v}", use_bf16=mixed_precision(cfg)
    )
    trainer.args.disable_tqdm = True
    if v == "tunesmith_pair_rows":
        trainer.data_collator.row_tokens = 1
    return trainer


def run_child(a) -> dict:
    """Train one variant in this process and return its measurements (seconds, tokens, bytes, nats)."""
    import torch
    from transformers import TrainerCallback

    torch.set_num_threads(a.threads or torch.get_num_threads())
    with tempfile.TemporaryDirectory(prefix="tunesmith-bench-dpo-") as tmp:
        trainer = _trainer(a, Path(tmp))
        marks = []

        class Clock(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                marks.append((time.perf_counter(), time.process_time()))

            def on_step_end(self, args, state, control, **kw):
                marks.append((time.perf_counter(), time.process_time()))

        trainer.add_callback(Clock())
        counter = StepCounter(trainer, lambda inputs: (int(inputs["attention_mask"].sum()),))  # TRL's rows: no pad
        trainer.train()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        logs = [e for e in trainer.state.log_history if "loss" in e]
    w = a.warmup
    wall, cpu = marks[-1][0] - marks[w][0], marks[-1][1] - marks[w][1]
    pairs, real = a.batch * (len(marks) - 1 - w), counter.after(w)
    return {
        "variant": a.child,
        "description": VARIANTS[a.child],
        "precision": "bf16-mixed" if trainer.args.bf16 else "fp32",
        "gradient_checkpointing": bool(trainer.args.gradient_checkpointing),
        "fast_path": getattr(trainer, "fast_path", None),
        "steps": len(marks) - 1,
        "warmup_steps": w,
        "step_cpu_seconds": [round(y[1] - x[1], 3) for x, y in zip(marks, marks[1:])],
        "step_seconds": [round(y[0] - x[0], 3) for x, y in zip(marks, marks[1:])],
        "real_tokens_per_step": counter.per_step(),
        "pairs_per_second": pairs / wall,
        "pairs_per_cpu_second": pairs / cpu,
        "tokens_per_second": real / wall,
        "tokens_per_cpu_second": real / cpu,
        "peak_rss_bytes": peak,
        "losses": [e["loss"] for e in logs],
        "final_loss": logs[-1]["loss"],
        "final_reward_accuracy": logs[-1].get("rewards/accuracies"),
        "threads": torch.get_num_threads(),
        "loadavg_end": os.getloadavg(),
    }


def run_variant(a, variant: str, work: Path) -> dict:
    """Run one variant in a fresh process; returns its result dict, or ``{"variant", "error"}``."""
    out = work / f"{variant}-{time.monotonic_ns()}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", variant, "--result", str(out)]
    cmd += ["--steps", str(a.steps), "--warmup", str(a.warmup), "--batch", str(a.batch)]
    cmd += ["--max-length", str(a.max_length), "--threads", str(a.threads)]
    load, start = os.getloadavg(), time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
    except subprocess.TimeoutExpired:
        return {"variant": variant, "error": f"timed out after {a.timeout:.0f} s"}
    if proc.returncode != 0 or not out.is_file():
        return {"variant": variant, "error": f"exit code {proc.returncode}: {proc.stderr[-1500:]}"}
    return {**json.loads(out.read_text()), "loadavg_start": load, "wall_seconds": time.perf_counter() - start}


RATES = ("pairs_per_second", "pairs_per_cpu_second", "tokens_per_second", "tokens_per_cpu_second")


def summarise(results: list[dict]) -> dict:
    """Median per variant over rounds, ratios to ``trl`` (speed: rate / TRL's; memory: peak RSS / TRL's) and the
    targets ``speed_vs_trl >= 2`` (CPU-time pairs/s ratio) and ``memory_vs_trl <= 1``.

    Returns:
        ``{"variants": {name: {...}}, "targets": {line: [value, met]} or None}``.
    """
    by: dict[str, list[dict]] = {}
    for r in results:
        if "error" not in r:
            by.setdefault(r["variant"], []).append(r)
    rows = {}
    for v, rs in by.items():
        rows[v] = {
            "description": rs[0]["description"],
            "precision": rs[0]["precision"],
            "runs": len(rs),
            **{k: statistics.median(r[k] for r in rs) for k in RATES},
            "peak_rss_bytes": max(r["peak_rss_bytes"] for r in rs),
            "final_loss": statistics.median(r["final_loss"] for r in rs),
            "final_reward_accuracy": statistics.median(r["final_reward_accuracy"] or 0.0 for r in rs),
        }
    ref = rows.get("trl")
    for v, row in rows.items():
        if ref and v != "trl":
            row["speed_vs_trl"] = row["pairs_per_cpu_second"] / ref["pairs_per_cpu_second"]
            row["wall_speed_vs_trl"] = row["pairs_per_second"] / ref["pairs_per_second"]
            row["memory_vs_trl"] = row["peak_rss_bytes"] / ref["peak_rss_bytes"]
    ts = rows.get("tunesmith")
    targets = None
    if ts and ref:
        targets = {
            "speed_vs_trl >= 2": [ts["speed_vs_trl"], ts["speed_vs_trl"] >= 2],
            "memory_vs_trl <= 1": [ts["memory_vs_trl"], ts["memory_vs_trl"] <= 1],
        }
    return {"variants": rows, "targets": targets}


def markdown(report: dict) -> str:
    """The benchmark table (Markdown) with the conditions line and the targets line."""
    c, s = report["conditions"], report["summary"]
    lines = [
        f"`python bench/bench_dpo.py --steps {c['steps']} --batch {c['batch']} --max-length {c['max_length']}"
        + f" --threads {c['threads_arg']}`"
        + f": {c['model']}, LoRA r={c['lora_r']} all-linear, {c['steps']} steps ({c['warmup']} warm-up), "
        f"chatterbot-pairs; {c['cpu']}, {c['cores']} cores, {c['threads']} torch threads, torch {c['torch']}, "
        f"{c['date']}; load average {c['load_start'][0]:.1f} -> {c['load_end'][0]:.1f}",
        "",
    ]
    lines += table(
        "variant|precision|pairs/s|pairs/CPU-s|real tokens/s|tokens/CPU-s|x TRL (CPU time)|x TRL (wall)|peak RSS"
        "|RSS / TRL|final loss|reward acc.".split("|"),
        [
            [
                v,
                r["precision"],
                f"{r['pairs_per_second']:.2f}",
                f"{r['pairs_per_cpu_second']:.2f}",
                f"{r['tokens_per_second']:.0f}",
                f"{r['tokens_per_cpu_second']:.0f}",
                optional(r, "speed_vs_trl", "{:.2f}"),
                optional(r, "wall_speed_vs_trl", "{:.2f}"),
                f"{r['peak_rss_bytes'] / 1e9:.2f} GB",
                optional(r, "memory_vs_trl", "{:.2f}"),
                f"{r['final_loss']:.4f}",
                f"{r['final_reward_accuracy']:.3f}",
            ]
            for v, r in s["variants"].items()
        ],
    )
    if s["targets"]:
        lines += [
            "",
            "Targets (tunesmith): "
            + "; ".join(f"{k}: {v:.3f} ({'met' if ok else 'NOT met'})" for k, (v, ok) in s["targets"].items()),
        ]
    errors = [r for r in report["runs"] if "error" in r]
    lines += [f"\n{r['variant']} failed: {r['error'][-300:]}" for r in errors]
    return "\n".join(lines) + "\n"


def conditions(a, load_start) -> dict:
    """What the numbers were measured on: CPU model, cores, threads, torch, date, load average."""
    import torch

    from tunesmith.config.dpo import DPORunConfig
    from tunesmith.config.load import load_config
    from tunesmith.runtime.hardware import cpu_model

    cpu = cpu_model()
    cfg = load_config(str(CONFIG), [], model_cls=DPORunConfig)
    return {
        "model": "SmolLM2-135M-Instruct",
        "lora_r": cfg.lora.r,
        "steps": a.steps,
        "warmup": a.warmup,
        "batch": a.batch,
        "max_length": a.max_length,
        "rounds": a.rounds,
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": a.threads or torch.get_num_threads(),
        "threads_arg": a.threads,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "load_start": load_start,
        "load_end": os.getloadavg(),
    }


def main(argv=None) -> int:
    """Run the DPO benchmark (or, with ``--child``, one variant); prints the table and writes JSON + Markdown."""
    a = parse_args(argv)
    if a.threads:
        os.environ["OMP_NUM_THREADS"] = str(a.threads)  # inherited by the variant processes
    if a.child:
        Path(a.result).write_text(json.dumps(run_child(a), indent=1))
        return 0
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="tunesmith-bench-dpo-") as tmp:
        shown = ("pairs_per_cpu_second", "peak_rss_bytes", "error")
        results = run_rounds(
            a.variants.split(","), a.rounds, lambda v: run_variant(a, v, Path(tmp)), "bench-dpo", shown
        )
    report = {"conditions": conditions(a, load_start), "runs": results}
    report["summary"] = summarise(results)
    return write_report(out, "bench-dpo", report, markdown)


if __name__ == "__main__":
    sys.exit(main())
