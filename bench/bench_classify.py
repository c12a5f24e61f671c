"""Classification throughput and memory: `tunesmith classify`'s trainer against a plain transformers Trainer.

    make bench-classify     # python bench/bench_classify.py  (SmolLM2-135M, chatterbot topics, LoRA r=16, batch 16)

Both variants train the same LoRA (tunesmith.models.adapters.to_peft_config, task SEQ_CLS, ``score`` in
modules_to_save) on the same encoded examples (the default dataset of configs/classify/chatterbot-topics.yaml,
tunesmith's split, unweighted loss) for the same optimizer steps with the same seed, constant learning rate and
batch order, each in a fresh process (``--variant`` runs one); variants alternate (hf_trainer, tunesmith,
hf_trainer, ...) so slow drifts in machine load hit both.  Then the same function scores eval accuracy and eval
loss (fp32, padded batches).  Reported per variant: examples/s and real (non-pad) tokens/s per wall second and per
CPU second of the process after the warm-up steps, peak RSS, eval accuracy/loss, and the ratios to hf_trainer.
Writes ``<out>/bench-classify.json`` and ``<out>/bench-classify.md``.
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

CONFIG = HERE.parent / "configs" / "classify" / "chatterbot-topics.yaml"
VARIANTS = {
    "hf_trainer": "plain transformers Trainer, AutoModelForSequenceClassification + PEFT LoRA, defaults: fp32, "
    "padded batches (DataCollatorWithPadding)",
    "tunesmith": "tunesmith classify's trainer, defaults (precision from the hardware, packed rows)",
    "tunesmith_padded": "tunesmith classify's trainer with padded batches (train.packing=false)",
    "tunesmith_fp32": "tunesmith classify's trainer, fp32 (train.bf16=false)",
}
DEFAULTS = {"steps": 8, "warmup": 1, "batch": 16, "max_length": 64, "rounds": 2, "threads": 1}
TARGETS = (
    ("speed_vs_hf_trainer >= 2", "cpu_speed_vs_hf_trainer"),
    ("memory_vs_hf_trainer <= 1", "memory_vs_hf_trainer"),
)


def load_config(a):
    """The bench's ClassifyConfig: chatterbot topics, the run's LoRA, constant learning rate, no saving/eval/weights."""
    from tunesmith.config.classify import ClassifyConfig
    from tunesmith.config.load import load_config as load

    sets = [
        f"train.max_steps={a.steps}",
        f"train.per_device_train_batch_size={a.batch}",
        f"train.max_length={a.max_length}",
        "train.lr_scheduler_type=constant",
        "train.warmup_steps=0",
        "train.logging_steps=1",
        "train.save_strategy=no",
        "train.eval_strategy=no",
        "train.seed=42",
        "labels.class_weights=none",
    ]
    return load(str(CONFIG), sets, model_cls=ClassifyConfig)


def evaluate(model, rows: list[dict], pad_id: int, batch_size: int = 32) -> dict:
    """Accuracy and mean cross-entropy (nats) of ``model`` on encoded ``rows``, fp32, right-padded batches with an
    attention mask: the same scoring for every variant."""
    import torch

    from tunesmith.models.classifier import pad_batch

    model.eval()
    correct, loss = 0, 0.0
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        for i in range(0, len(rows), batch_size):
            chunk = rows[i : i + batch_size]
            b = pad_batch(chunk, pad_id, "right")
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float()
            labels = torch.tensor([r["labels"] for r in chunk])
            loss += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(-1) == labels).sum())
    return {"eval_accuracy": correct / len(rows), "eval_loss": loss / len(rows)}


def _hf_trainer(a, cfg, source, tokenizer, train_rows, names, pad_id, out_dir):
    import torch
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer, TrainingArguments

    from tunesmith.models.adapters import to_peft_config

    torch.manual_seed(cfg.train.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        source.location, num_labels=len(names), pad_token_id=pad_id, dtype=torch.float32
    )
    model = get_peft_model(model, to_peft_config(cfg.lora, task_type="SEQ_CLS"))
    args = TrainingArguments(
        output_dir=str(out_dir),
        max_steps=a.steps,
        per_device_train_batch_size=a.batch,
        learning_rate=cfg.train.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=cfg.train.seed,
        use_cpu=not torch.cuda.is_available(),
    )
    collator = DataCollatorWithPadding(tokenizer)
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(train_rows), data_collator=collator)
    return trainer, "fp32", "padded"


def _tunesmith(a, cfg, source, tokenizer, train_rows, names, pad_id, out_dir):
    from tunesmith.train.classify import build_model, make_trainer
    from tunesmith.train.common import mixed_precision

    if a.variant == "tunesmith_padded":
        cfg.train.packing = False
    if a.variant == "tunesmith_fp32":
        cfg.train.bf16 = False
    cfg.train.report_to = "none"
    model, use_bf16 = build_model(cfg, source, names, pad_id), mixed_precision(cfg)
    trainer, packed = make_trainer(cfg, model, train_rows, train_rows[:1], pad_id, out_dir, use_bf16=use_bf16)
    trainer.args.disable_tqdm = True
    return trainer, "bf16-mixed" if use_bf16 else "fp32", "packed" if packed else "padded"


def run_one(a) -> dict:
    """Train one variant for ``a.steps`` optimizer steps in this process and return its measurements."""
    import torch

    sys.path.insert(0, str(HERE))
    from tunesmith.data.labels import load_label_data
    from tunesmith.models.classifier import choose_pad_id, encode
    from tunesmith.models.loading import load_tokenizer
    from tunesmith.models.sources import resolve_model
    from variants import StepClock

    torch.set_num_threads(a.threads)
    cfg = load_config(a)
    train, evals, names, _ = load_label_data(cfg)
    source = resolve_model(cfg.model.name)
    tokenizer = load_tokenizer(source)
    pad_id = choose_pad_id(tokenizer)
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad_id)
    label2id = {n: i for i, n in enumerate(names)}
    train_rows, _ = encode(tokenizer, train, label2id, a.max_length)
    eval_rows, _ = encode(tokenizer, evals, label2id, a.max_length)
    build = _hf_trainer if a.variant == "hf_trainer" else _tunesmith
    with tempfile.TemporaryDirectory(prefix="bench-classify-") as tmp:
        trainer, precision, batches = build(a, cfg, source, tokenizer, train_rows, names, pad_id, Path(tmp))
        clock = StepClock()
        trainer.add_callback(clock.callback)

        def counts(inputs):
            n, m = inputs.get("num_real_tokens"), inputs.get("attention_mask")
            tokens = int(n) if n is not None else int(m.sum()) if m is not None else inputs["input_ids"].numel()
            return tokens, int(inputs["labels"].numel())

        counter = StepCounter(trainer, counts)
        trainer.train()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t, cpu = clock.times, clock.cpu
    warm = min(a.warmup, len(t) - 2)
    wall, cpu_s = t[-1] - t[warm], cpu[-1] - cpu[warm]
    return {
        "variant": a.variant,
        "description": VARIANTS[a.variant],
        "precision": precision,
        "batches": batches,
        "steps": len(t) - 1,
        "warmup_steps": warm,
        "step_cpu_seconds": [round(y - x, 3) for x, y in zip(cpu, cpu[1:])],
        "real_tokens_per_step": counter.per_step(),
        "examples_per_second": counter.after(warm, 1) / wall,
        "examples_per_cpu_second": counter.after(warm, 1) / cpu_s,
        "tokens_per_second": counter.after(warm) / wall,
        "tokens_per_cpu_second": counter.after(warm) / cpu_s,
        "peak_rss_bytes": peak,
        "train_losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
        **evaluate(trainer.model, eval_rows, pad_id),
        "threads": torch.get_num_threads(),
        "loadavg_end": os.getloadavg(),
    }


def run_variant(variant: str, a, work: Path) -> dict:
    """Run one variant in a fresh process (``--variant``); returns its result dict (or ``{"error": ...}``)."""
    out = work / f"{variant}-{time.monotonic_ns()}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--variant", variant, "--result", str(out)]
    for key in ("steps", "warmup", "batch", "max_length", "threads"):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(a, key))]
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    load, start = os.getloadavg(), time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"variant": variant, "error": f"timed out after {a.timeout:.0f} s"}
    if proc.returncode != 0 or not out.is_file():
        return {"variant": variant, "error": f"exit code {proc.returncode}: {proc.stderr[-1500:]}"}
    res = json.loads(out.read_text())
    res.update(loadavg_start=load, wall_seconds=time.perf_counter() - start)
    return res


def summarise(results: list[dict]) -> dict:
    """Median per variant (errors left out) and the ratios to hf_trainer; the targets when both variants ran.

    Returns:
        ``{"variants": {name: row}, "targets": {"speed_vs_hf_trainer >= 2": CPU-time speed ratio,
        "memory_vs_hf_trainer <= 1": peak RSS ratio} or None}``.
    """
    by: dict[str, list[dict]] = {}
    for r in results:
        if "error" not in r:
            by.setdefault(r["variant"], []).append(r)
    keys = ("examples_per_second", "examples_per_cpu_second", "tokens_per_second", "tokens_per_cpu_second")
    rows = {}
    for v, rs in by.items():
        rows[v] = {
            "description": rs[0]["description"],
            "precision": rs[0]["precision"],
            "batches": rs[0]["batches"],
            "runs": len(rs),
            **{k: statistics.median(r[k] for r in rs) for k in keys},
            "peak_rss_bytes": max(r["peak_rss_bytes"] for r in rs),
            "eval_accuracy": statistics.median(r["eval_accuracy"] for r in rs),
            "eval_loss": statistics.median(r["eval_loss"] for r in rs),
        }
    ref = rows.get("hf_trainer")
    for v, row in rows.items():
        if ref and v != "hf_trainer":
            row["speed_vs_hf_trainer"] = row["examples_per_second"] / ref["examples_per_second"]
            row["cpu_speed_vs_hf_trainer"] = row["examples_per_cpu_second"] / ref["examples_per_cpu_second"]
            row["memory_vs_hf_trainer"] = row["peak_rss_bytes"] / ref["peak_rss_bytes"]
    ts = rows.get("tunesmith")
    targets = {name: ts[key] for name, key in TARGETS} if ts and ref else None
    if targets:
        targets["speed_vs_hf_trainer (wall) >= 2"] = ts["speed_vs_hf_trainer"]
    return {"variants": rows, "targets": targets}


def markdown(report: dict) -> str:
    """The benchmark table (Markdown)."""
    s, c = report["summary"], report["conditions"]
    lines = [
        f"`python bench/bench_classify.py`: {c['model']}, chatterbot topics ({c['labels']} labels), "
        f"LoRA r={c['lora_r']} all-linear + score head, batch {c['batch']}, max_length {c['max_length']}, "
        f"{c['steps']} steps ({c['warmup']} warm-up), {c['rounds']} rounds; {c['cpu']} ({c['cores']} cores) "
        f"x{c['threads']} threads; "
        f"torch {c['torch']}; {c['date']}; load average {c['load_start'][0]:.1f} -> {c['load_end'][0]:.1f}",
        "",
    ]
    lines += table(
        "variant|precision|batches|examples/s|examples/CPU-s|real tokens/s|tokens/CPU-s|x hf_trainer (wall / CPU time)"
        "|peak RSS|RSS / hf_trainer|eval accuracy|eval loss".split("|"),
        [
            [
                v,
                r["precision"],
                str(r["batches"]),
                f"{r['examples_per_second']:.2f}",
                f"{r['examples_per_cpu_second']:.2f}",
                f"{r['tokens_per_second']:.1f}",
                f"{r['tokens_per_cpu_second']:.1f}",
                f"{optional(r, 'speed_vs_hf_trainer', '{:.2f}')} / {optional(r, 'cpu_speed_vs_hf_trainer', '{:.2f}')}",
                f"{r['peak_rss_bytes'] / 1e9:.2f} GB",
                optional(r, "memory_vs_hf_trainer", "{:.2f}"),
                f"{r['eval_accuracy']:.3f}",
                f"{r['eval_loss']:.4f}",
            ]
            for v, r in s["variants"].items()
        ],
    )
    if s["targets"]:
        lines += [
            "",
            "Targets (tunesmith, speed in CPU time): " + "; ".join(f"{k}: {v:.3f}" for k, v in s["targets"].items()),
        ]
    return "\n".join(lines) + "\n"


def conditions(a, load_start) -> dict:
    """The machine and settings the numbers were measured under."""
    import datetime

    import torch

    from tunesmith.runtime.hardware import cpu_model

    cpu = cpu_model()
    cfg = load_config(a)
    return {
        "model": "SmolLM2-135M-Instruct",
        "labels": len(cfg.labels.names or []),
        "lora_r": cfg.lora.r,
        **{k: getattr(a, k) for k in ("batch", "max_length", "steps", "warmup", "rounds", "threads")},
        "variants": a.variants.split(","),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_start": load_start,
        "load_end": os.getloadavg(),
    }


def parse_args(argv=None) -> argparse.Namespace:
    """The command line (``--variant``/``--result`` run one variant in this process: the child mode)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=DEFAULTS["steps"], help="optimizer steps per run")
    p.add_argument("--warmup", type=int, default=DEFAULTS["warmup"], help="first steps left out of the speed")
    p.add_argument("--batch", type=int, default=DEFAULTS["batch"], help="examples per step")
    p.add_argument("--max-length", type=int, default=DEFAULTS["max_length"], help="tokens per example at most")
    p.add_argument("--rounds", type=int, default=DEFAULTS["rounds"], help="runs of every variant, alternated")
    p.add_argument(
        "--threads", type=int, default=DEFAULTS["threads"], help="torch threads per run (1: load-robust CPU time)"
    )
    p.add_argument("--variants", default="hf_trainer,tunesmith", help=f"comma-separated, of {sorted(VARIANTS)}")
    p.add_argument("--timeout", type=float, default=600, help="seconds per variant run")
    p.add_argument("--out", default="runs/bench")
    p.add_argument("--variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    unknown = [v for v in a.variants.split(",") if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")
    if min(a.steps, a.batch, a.max_length, a.rounds, a.threads) < 1 or a.warmup < 0 or a.warmup >= a.steps:
        p.error("steps, batch, max-length, rounds and threads must be >= 1, and 0 <= warmup < steps")
    return a


def main(argv=None) -> int:
    """Run the benchmark; prints the Markdown table and writes JSON + Markdown under ``--out``."""
    a = parse_args(argv)
    if a.variant:
        Path(a.result).write_text(json.dumps(run_one(a), indent=1))
        return 0
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="tunesmith-bench-classify-") as tmp:
        shown = ("examples_per_cpu_second", "eval_accuracy", "error")
        results = run_rounds(a.variants.split(","), a.rounds, lambda v: run_variant(v, a, Path(tmp)), "bench", shown)
    report = {"conditions": conditions(a, load_start), "runs": results}
    report["summary"] = summarise(results)
    return write_report(out, "bench-classify", report, markdown)


if __name__ == "__main__":
    sys.exit(main())
