"""GPU check: tunesmith against TRL (padding-free + Liger, and as shipped), LoRA and QLoRA, on random-weight models.

    bash bench/gpu/run.sh runs/gpu                          # on a GPU machine: installs .whl/, then the line below
    python bench/gpu/gpu_bench.py --out runs/gpu            # SmolLM2-135M and a ~1.7B Llama config, <= 8 minutes
    python bench/gpu/gpu_bench.py --out runs/gpu-dry --dry-run   # CPU: tiny config, 3 steps, the same code and files

Models are built from configs with seeded random weights (no weights travel to the GPU machine) and saved once, so
every variant starts from the same init; the data are seeded synthetic conversations (Zipf-distributed token ids,
log-normal lengths, the first 40% of each sample masked as the prompt). Each variant runs in a fresh process
(bench/gpu/gpu_worker.py) and reports real (non-pad) tokens/s after warm-up, peak GPU memory
(``torch.cuda.max_memory_allocated``; peak RSS on CPU), MFU against the bf16 matmul peak measured in the same run, and
eval_loss relative to the TRL run on the same init. MFU counts 4N + 6N_lora FLOPs per token (frozen base: forward 2N,
activation gradients 2N; the adapters' forward and both gradients 6N_lora; attention scores left out), as
bench/bench_sft.py does. Writes ``<out>/gpu-bench.json`` and ``<out>/gpu-bench.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # bench/: bench_sft.lora_flops_per_token

from gpu_worker import REFERENCE, VARIANTS  # noqa: E402

from bench_sft import lora_flops_per_token  # noqa: E402

MODELS = {
    "smollm2-135m": dict(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
    ),
    "llama-1.7b": dict(  # SmolLM2-1.7B's shape: 1.71 B parameters
        vocab_size=49152,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=24,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
    ),
    "tiny": dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    ),
}
"""``transformers.LlamaConfig`` keyword arguments of each model the check builds."""

SHAPES = {"smollm2-135m": (8, 2048), "llama-1.7b": (4, 2048), "tiny": (2, 128)}
"""(packed rows per step, max_length) per model: about 16 K and 8 K tokens a step on the GPU."""


def parse_args(argv=None) -> argparse.Namespace:
    """Command line: ``--out`` (required), ``--dry-run``, ``--models``, ``--variants``, ``--steps``, ``--warmup``,
    ``--budget`` (seconds for the whole run), ``--timeout`` (seconds per variant).

    Returns:
        The namespace, with ``models`` and ``variants`` as lists; a dry run defaults to the tiny model and 3 steps.

    Raises:
        SystemExit: an unknown model or variant (argparse's usage error, exit code 2).
    """
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for gpu-bench.json and gpu-bench.md")
    p.add_argument("--dry-run", action="store_true", help="CPU: tiny model, few steps, same code paths and files")
    p.add_argument("--models", default=None, help=f"comma-separated, of {', '.join(MODELS)}")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset/order of the variants")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per variant (default 10; dry run 3)")
    p.add_argument("--warmup", type=int, default=None, help="steps left out of tokens/s (default 3; dry run 1)")
    p.add_argument(
        "--budget", type=float, default=None, help="seconds for everything, later variants skipped (450; dry run 3600)"
    )
    p.add_argument("--timeout", type=float, default=None, help="seconds per variant (180; dry run 900)")
    a = p.parse_args(argv)
    a.models = (a.models or ("tiny" if a.dry_run else "smollm2-135m,llama-1.7b")).split(",")
    a.variants = a.variants.split(",")
    for name, known, what in ((a.models, MODELS, "model"), (a.variants, VARIANTS, "variant")):
        bad = [n for n in name if n not in known]
        if bad:
            p.error(f"unknown {what} {bad[0]!r} (known: {', '.join(known)})")
    a.steps = a.steps or (3 if a.dry_run else 10)
    a.warmup = a.warmup if a.warmup is not None else (1 if a.dry_run else 3)
    a.budget = a.budget or (3600.0 if a.dry_run else 450.0)  # the GPU run: 7.5 of its 8 minutes
    a.timeout = a.timeout or (900.0 if a.dry_run else 180.0)
    if a.warmup >= a.steps:
        p.error(f"--warmup {a.warmup} must be below --steps {a.steps}")
    return a


def build_model(name: str, folder: Path, seed: int = 0) -> Path:
    """Save a seeded random-weight Llama of config ``MODELS[name]`` (bf16 on CUDA, fp32 on CPU) with a word-level
    tokenizer of its vocabulary (``t0``.. ids; pad ``t0``, eos ``t1``) into ``folder``."""
    import torch
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    cfg = LlamaConfig(**MODELS[name], bos_token_id=1, eos_token_id=1, pad_token_id=0)
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    model.to(torch.bfloat16 if device == "cuda" else torch.float32).save_pretrained(folder)
    tok = Tokenizer(WordLevel({f"t{i}": i for i in range(cfg.vocab_size)}, unk_token="t0"))
    tok.pre_tokenizer = WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="t0", eos_token="t1", bos_token="t1").save_pretrained(
        folder
    )
    del model
    return folder


def synthetic_rows(n: int, vocab: int, max_length: int, seed: int) -> list[dict]:
    """``n`` rows ``{"input_ids", "labels"}``: log-normal lengths (median max_length/5, 16..max_length tokens),
    Zipf(1.1) token ids from 2 up, ending with eos (1); the first 40% of each row is masked (-100) as the prompt."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        length = int(np.clip(rng.lognormal(np.log(max_length / 5), 0.6), 16, max_length))
        ids = [int(2 + (z - 1) % (vocab - 2)) for z in rng.zipf(1.1, length - 1)] + [1]
        cut = int(0.4 * length)
        rows.append({"input_ids": ids, "labels": [-100] * cut + ids[cut:]})
    return rows


def write_data(folder: Path, vocab: int, max_length: int, batch: int, steps: int, seed: int = 0) -> dict:
    """Training rows for ``steps`` steps of ``batch`` packed rows (about 5 samples each) and 32 eval rows.

    Returns:
        ``{"train_rows", "train_tokens", "eval_rows"}``.
    """
    from datasets import Dataset

    train = synthetic_rows(batch * steps * 6, vocab, max_length, seed)
    Dataset.from_list(train).save_to_disk(str(folder / "train"))
    evals = synthetic_rows(32, vocab, max_length, seed + 1)
    (folder / "eval.json").write_text(json.dumps(evals))
    return {"train_rows": len(train), "train_tokens": sum(len(r["input_ids"]) for r in train), "eval_rows": 32}


def matmul_peak(seconds: float = 1.0) -> dict:
    """The bf16 matmul peak of this device in TFLOP/s (best of 3 timed runs of [n, n] @ [n, n]; n = 8192 on CUDA,
    1024 on CPU), measured in this run."""
    import torch

    cuda = torch.cuda.is_available()
    n, dev = (8192, "cuda") if cuda else (1024, "cpu")
    a, b = torch.randn(n, n, device=dev, dtype=torch.bfloat16), torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    best = 0.0
    for _ in range(3):
        torch.mm(a, b)
        torch.cuda.synchronize() if cuda else None
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 3:
            torch.mm(a, b)
            reps += 1
        torch.cuda.synchronize() if cuda else None
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12)
    return {"bf16_tflops": best, "n": n, "device": torch.cuda.get_device_name() if cuda else "cpu"}


def run_job(variant: str, model: str, model_dir: Path, data: Path, a, timeout: float) -> dict:
    """Run one variant on ``model`` (saved in ``model_dir``, rows in ``data``) in a fresh worker process.

    Returns:
        The worker's result dict plus ``wall_seconds``, or ``{"variant", "error"}`` (failed or timed out).
    """
    out = data / f"{variant}-{time.monotonic_ns()}.json"
    batch, max_length = SHAPES[model]
    cmd = [sys.executable, str(HERE / "gpu_worker.py"), variant, "--model-dir", str(model_dir), "--data", str(data)]
    cmd += ["--out", str(out), "--steps", str(a.steps), "--warmup", str(a.warmup), "--batch", str(batch)]
    cmd += ["--max-length", str(max_length)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"variant": variant, "error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0 or not out.is_file():
        return {"variant": variant, "error": f"exit code {proc.returncode}: {proc.stderr[-1500:]}"}
    return {**json.loads(out.read_text()), "wall_seconds": time.perf_counter() - start}


def summarise(results: dict[str, list[dict]], peak: dict) -> dict:
    """Per model and variant: tokens/s, peak memory, MFU, eval_loss and the ratios to the TRL reference
    (``gpu_worker.REFERENCE``); then tunesmith's targets: >= 1.5x TRL padding-free + Liger tokens/s at no more peak
    memory, and >= 40% MFU on the 1.7B config.

    Args:
        results: model name -> worker results (failed or skipped runs carry ``error`` and are listed, not scored).
        peak: :func:`matmul_peak`'s result.

    Returns:
        ``{"models": {model: {variant: row}}, "targets": {name: {"value", "goal", "met"}}}``.
    """
    models: dict[str, dict] = {}
    for model, runs in results.items():
        rows = {}
        for r in runs:
            if "error" in r:
                rows[r["variant"]] = {"error": r["error"]}
                continue
            flops = lora_flops_per_token(r["parameters"], r["trainable_parameters"])
            memory = r["peak_gpu_bytes"] if r.get("peak_gpu_bytes") is not None else r["peak_rss_bytes"]
            rows[r["variant"]] = {
                **{k: r.get(k) for k in ("precision", "attn_implementation", "layout", "liger", "quantization")},
                "tokens_per_second": r["tokens_per_second"],
                "peak_memory_bytes": memory,
                "mfu_bf16": r["tokens_per_second"] * flops / (peak["bf16_tflops"] * 1e12),
                "eval_loss": r["eval_loss"],
            }
        for v, row in rows.items():
            ref = rows.get(REFERENCE.get(v, ""), {})
            if "error" in row or not ref or "error" in ref:
                continue
            row["reference"] = REFERENCE[v]
            row["speed_vs_reference"] = row["tokens_per_second"] / ref["tokens_per_second"]
            row["memory_vs_reference"] = row["peak_memory_bytes"] / ref["peak_memory_bytes"]
            row["eval_loss_vs_reference"] = row["eval_loss"] / ref["eval_loss"] - 1
        models[model] = rows
    return {"models": models, "targets": _targets(models)}


def _targets(models: dict) -> dict:
    out = {}
    for model, rows in models.items():
        ts = rows.get("tunesmith", {})
        if "speed_vs_reference" in ts:
            out[f"{model}: speed_vs_trl_padfree_liger >= 1.5"] = _target(ts["speed_vs_reference"], 1.5, True)
            out[f"{model}: memory_vs_trl_padfree_liger <= 1"] = _target(ts["memory_vs_reference"], 1.0, False)
        if model == "llama-1.7b" and "mfu_bf16" in ts:
            out["llama-1.7b: mfu_bf16 >= 0.40"] = _target(ts["mfu_bf16"], 0.40, True)
    return out


def _target(value: float, goal: float, at_least: bool) -> dict:
    return {"value": value, "goal": goal, "met": value >= goal if at_least else value <= goal}


def markdown(report: dict) -> str:
    """The result table (Markdown): one row per model and variant, then the targets."""
    c, s = report["conditions"], report["summary"]
    lines = [
        f"`{c['command']}` on {c['device']} ({'dry run' if c['dry_run'] else 'GPU run'}); {c['date']}; "
        f"bf16 matmul peak {c['peak']['bf16_tflops']:.3g} TFLOP/s (n={c['peak']['n']}); {c['steps']} steps "
        f"({c['warmup']} warm-up); " + ", ".join(f"{k} {v}" for k, v in c["versions"].items()),
        "",
        "| model | variant | precision | attention | layout | Liger | tokens/s | x TRL | peak memory | / TRL "
        "| MFU (bf16) | eval_loss | vs TRL |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    f = lambda r, k, fmt: "-" if r.get(k) is None else fmt.format(r[k])  # noqa: E731
    for model, rows in s["models"].items():
        for v, r in rows.items():
            if "error" in r:
                lines.append(f"| {model} | {v} | not run: {r['error'].splitlines()[-1][:120]} |" + " |" * 10)
                continue
            lines.append(
                f"| {model} | {v} | {r['precision']} | {r['attn_implementation']} | {r['layout']} | "
                f"{'yes' if r['liger'] else 'no'} | {r['tokens_per_second']:.0f} | "
                f"{f(r, 'speed_vs_reference', '{:.2f}')} | {r['peak_memory_bytes'] / 2**30:.2f} GiB | "
                f"{f(r, 'memory_vs_reference', '{:.2f}')} | {r['mfu_bf16']:.1%} | {r['eval_loss']:.4f} | "
                f"{f(r, 'eval_loss_vs_reference', '{:+.2%}')} |"
            )
    lines += ["", "x TRL, / TRL, vs TRL: against trl_padfree_liger (QLoRA rows: trl_padfree_liger_qlora), same init."]
    if s["targets"]:
        met = lambda t: "met" if t["met"] else "NOT met"  # noqa: E731
        lines += ["", "Targets: " + "; ".join(f"{k}: {t['value']:.3f} ({met(t)})" for k, t in s["targets"].items())]
    return "\n".join(lines) + "\n"


def versions() -> dict:
    """Versions of the packages the check depends on (None when not installed)."""
    from importlib import metadata

    out = {}
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "liger_kernel", "bitsandbytes"):
        try:
            out[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def main(argv=None) -> int:
    """Run the check; prints the table and writes ``gpu-bench.json`` and ``gpu-bench.md`` under ``--out``.

    Returns:
        0 when every variant ran, 1 when one failed or was skipped (the files are written either way).
    """
    a = parse_args(argv)
    import torch

    if not torch.cuda.is_available() and not a.dry_run:
        print("no CUDA device: run with --dry-run on CPU", file=sys.stderr)
        return 2
    start = time.monotonic()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    peak = matmul_peak()
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="tunesmith-gpu-") as tmp:
        for model in a.models:
            work = Path(tmp) / model
            data = work / "data"
            data.mkdir(parents=True)
            model_dir = build_model(model, work / "weights")
            batch, max_length = SHAPES[model]
            write_data(data, MODELS[model]["vocab_size"], max_length, batch, a.steps)
            results[model] = []
            for v in a.variants:
                left = a.budget - (time.monotonic() - start)
                if left < 20:
                    results[model].append({"variant": v, "error": f"skipped: the {a.budget:.0f} s budget is spent"})
                    continue
                print(f"[gpu-bench] {model} {v} ({left:.0f} s left)", file=sys.stderr, flush=True)
                results[model].append(run_job(v, model, model_dir, data, a, min(a.timeout, left)))
            shutil.rmtree(work, ignore_errors=True)
    report = {
        "conditions": {
            "command": "python bench/gpu/gpu_bench.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "dry_run": a.dry_run,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "device": peak["device"],
            "peak": peak,
            "steps": a.steps,
            "warmup": a.warmup,
            "shapes": {m: SHAPES[m] for m in a.models},
            "versions": versions(),
            "loadavg": os.getloadavg(),
            "seconds": time.monotonic() - start,
        },
        "runs": results,
    }
    report["summary"] = summarise(results, peak)
    (out / "gpu-bench.json").write_text(json.dumps(report, indent=1))
    md = markdown(report)
    (out / "gpu-bench.md").write_text(md)
    print(md)
    return 0 if all("error" not in r for runs in results.values() for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
