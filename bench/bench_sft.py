"""SFT throughput and memory: tunesmith against plain TRL (as shipped, and at its best), side by side.

    make bench          # python bench/bench_sft.py --mode full   (SmolLM2-135M, LoRA r=16 all-linear, batch 8,
                        #   max_length 512)
    make bench-quick    # python bench/bench_sft.py --mode quick  (batch 2, max_length 256, fewer steps; < 5 min)
    make bench-classify # python bench/bench_sft.py --mode classify  (bench/bench_classify.py: classify vs Trainer)
    make bench-dpo      # python bench/bench_sft.py --mode dpo       (bench/bench_dpo.py: dpo vs TRL DPOTrainer)

Each variant runs in its own fresh process (bench/variants.py) on the same pre-tokenised chatterbot rows; variants
alternate (TRL, tunesmith, TRL, ...) so slow drifts in machine load hit both.  Reported per variant: real (non-pad)
tokens/s over the steps after warm-up, peak RSS of the process (and peak GPU memory on CUDA), MFU against a matmul
peak measured in the same run (fp32 and bf16), eval_loss after the same steps, and the ratios to TRL.  Writes
``<out>/bench-<mode>.json`` and ``<out>/bench-<mode>.md``; the load average is recorded before and after each run.

MFU (model FLOPs utilisation, PaLM appendix B): achieved model FLOPs/s / peak matmul FLOPs/s.  Model FLOPs per real
token for LoRA: 2N (forward) + 2N (backward, activation gradients only: the base weights are frozen) + 6 N_lora
(the adapters' forward and both gradients), N = all base parameters counted once (the tied output head included);
attention-score FLOPs are left out (Kaplan et al. 2020 eq. 2.1 conventions).  Full fine-tuning would be 6N.
The same formula is used for every variant, so MFU ratios equal tokens/s ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from benchlib import optional, run_rounds, table, write_report  # noqa: E402

MODES = {
    "quick": {
        "batch": 2,
        "max_length": 256,
        "steps": 3,
        "warmup": 1,
        "eval_examples": 16,
        "rounds": 1,
        "variants": ["trl_shipped", "tunesmith", "trl_best"],
    },
    "full": {
        "batch": 8,
        "max_length": 512,
        "steps": 3,
        "warmup": 1,
        "eval_examples": 48,
        "rounds": 1,
        "variants": ["trl_best", "tunesmith", "trl_shipped", "tunesmith_fp32", "tunesmith_bf16"],
    },
}


def prepare_data(out: Path, max_length: int, eval_examples: int) -> dict:
    """Render chatterbot (tunesmith's split, chat template, assistant-only labels) once; save train/eval rows to
    ``out``."""
    from tunesmith.config.sft import RunConfig
    from tunesmith.data.conversations import load_sft_data
    from tunesmith.models.loading import load_tokenizer
    from tunesmith.models.sources import resolve_model
    from tunesmith.render.rows import render_all, to_dataset

    cfg = RunConfig()
    train, evals, _ = load_sft_data(cfg)
    tok = load_tokenizer(resolve_model(cfg.model.name))
    rows, stats = render_all(tok, train, max_length)
    erows, _ = render_all(tok, evals[:eval_examples], max_length)
    to_dataset(rows).save_to_disk(str(out / "train"))
    (out / "eval.json").write_text(json.dumps([{"input_ids": r.input_ids, "labels": r.labels} for r in erows]))
    return stats.summary()


def _matmul(dtype, n: int = 2048, seconds: float = 1.0) -> tuple[float, float]:
    """[n, n] @ [n, n] throughput in GFLOP per wall second and per CPU second of this process (2 n^3 FLOPs each)."""
    import torch

    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    reps, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, b)
        reps += 1
    flops = 2 * n**3 * reps / 1e9
    return flops / (time.perf_counter() - t0), flops / max(time.process_time() - c0, 1e-9)


def matmul_peaks(seconds: float = 1.0) -> dict:
    """fp32 and bf16 matmul peaks (GFLOP/s, n=2048, best of two alternated runs) with the benchmark's thread count:
    per wall second, and per CPU second (``*_cpu``, load-robust with one thread)."""
    import torch

    runs = [(_matmul(torch.float32, 2048, seconds), _matmul(torch.bfloat16, 2048, seconds)) for _ in range(2)]
    return {
        "fp32_gflops": max(r[0][0] for r in runs),
        "bf16_gflops": max(r[1][0] for r in runs),
        "fp32_gflops_cpu": max(r[0][1] for r in runs),
        "bf16_gflops_cpu": max(r[1][1] for r in runs),
        "threads": torch.get_num_threads(),
    }


def lora_flops_per_token(parameters: int, trainable: int) -> float:
    """Model FLOPs per real token for LoRA training: 4 N + 6 N_lora (see the module docstring)."""
    return 4 * (parameters - trainable) + 6 * trainable


def run_variant(variant: str, data: Path, work: Path, m: dict, timeout: float, extra: tuple = ()) -> dict:
    """Run one variant in a fresh process; returns its result dict (or {"error": ...})."""
    out = work / f"{variant}-{time.monotonic_ns()}.json"
    cmd = [
        sys.executable,
        str(HERE / "variants.py"),
        variant,
        "--data",
        str(data),
        "--out",
        str(out),
        "--steps",
        str(m["steps"]),
        "--warmup",
        str(m["warmup"]),
        "--batch",
        str(m["batch"]),
        "--max-length",
        str(m["max_length"]),
        *extra,
    ]
    load = os.getloadavg()
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"variant": variant, "error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0 or not out.is_file():
        killed = " (killed by signal %d: out of memory?)" % -proc.returncode if proc.returncode < 0 else ""
        return {"variant": variant, "error": f"exit code {proc.returncode}{killed}: {proc.stderr[-1500:]}"}
    res = json.loads(out.read_text())
    res.update(loadavg_start=load, wall_seconds=time.perf_counter() - start)
    return res


def predict_for_bench(batch: int, max_length: int) -> dict | None:
    """``tunesmith estimate``'s LoRA prediction (process peak, bytes) for one forward/backward pass of the bench's
    tunesmith run (its default micro-batch: one packed row per pass on CPU), to compare with the measured peak."""
    try:
        from tunesmith.config.sft import TrainSection
        from tunesmith.train.estimate import estimate_for_run
        from tunesmith.train.speed.plan import plan_speed
    except ImportError:
        return None
    train = TrainSection(per_device_train_batch_size=batch, max_length=max_length)
    rows = plan_speed(train, "sdpa").rows_per_pass or batch
    return {
        **estimate_for_run("smollm2-135m-instruct", batch=rows, seq_len=max_length, method="lora"),
        "rows_per_pass": rows,
    }


def summarise(results: list[dict], peaks: dict, estimate: dict | None) -> dict:
    """Median per variant, MFU, and ratios to TRL (per round, then the median of the ratios)."""
    import statistics

    by: dict[str, list[dict]] = {}
    for r in results:
        if "error" not in r:
            by.setdefault(r["variant"], []).append(r)
    rows = {}
    for v, rs in by.items():
        tps = statistics.median(r["tokens_per_second"] for r in rs)
        tpc = statistics.median(r["tokens_per_cpu_second"] for r in rs)
        flops = lora_flops_per_token(rs[0]["parameters"], rs[0]["trainable_parameters"])
        rows[v] = {
            "description": rs[0]["description"],
            "precision": rs[0]["precision"],
            "runs": len(rs),
            "tokens_per_second": tps,
            "tokens_per_cpu_second": tpc,
            "cpu_share": statistics.median(r["cpu_share"] for r in rs),
            "peak_rss_bytes": max(r["peak_rss_bytes"] for r in rs),
            "peak_gpu_bytes": rs[0].get("peak_gpu_bytes"),
            "eval_loss": statistics.median(r["eval_loss"] for r in rs),
            "first_step_seconds": rs[0]["step_seconds"][0] if rs[0].get("step_seconds") else None,
            "steady_step_seconds": statistics.median(rs[0]["step_seconds"][1:])
            if len(rs[0].get("step_seconds", [])) > 1
            else None,
            "flops_per_token": flops,
            "mfu_fp32_peak": tps * flops / (peaks["fp32_gflops"] * 1e9),
            "mfu_bf16_peak": tps * flops / (peaks["bf16_gflops"] * 1e9),
            "mfu_fp32_peak_cpu": tpc * flops / (peaks["fp32_gflops_cpu"] * 1e9),
            "mfu_bf16_peak_cpu": tpc * flops / (peaks["bf16_gflops_cpu"] * 1e9),
        }
    for v, row in rows.items():
        for ref in ("trl_best", "trl_shipped"):
            if ref in rows and v != ref:
                row[f"speed_vs_{ref}"] = row["tokens_per_second"] / rows[ref]["tokens_per_second"]
                row[f"cpu_speed_vs_{ref}"] = row["tokens_per_cpu_second"] / rows[ref]["tokens_per_cpu_second"]
                row[f"memory_vs_{ref}"] = row["peak_rss_bytes"] / rows[ref]["peak_rss_bytes"]
                row[f"eval_loss_vs_{ref}"] = row["eval_loss"] / rows[ref]["eval_loss"] - 1
    targets = None
    ts, best, shipped = rows.get("tunesmith"), rows.get("trl_best"), rows.get("trl_shipped")
    for r in rows.values():  # MFU against the peak of the precision the variant computes in
        bf16 = r["precision"].startswith("bf16")
        r["mfu_running_peak"] = r["mfu_bf16_peak"] if bf16 else r["mfu_fp32_peak"]
        r["mfu_running_peak_cpu"] = r["mfu_bf16_peak_cpu"] if bf16 else r["mfu_fp32_peak_cpu"]
    if ts and best and shipped:
        targets = {
            "speed_vs_trl_shipped >= 8": ts["speed_vs_trl_shipped"],
            "speed_vs_trl_best >= 6": ts["speed_vs_trl_best"],
            f"mfu vs {ts['precision']} peak >= 0.40": ts["mfu_running_peak"],
            "memory_vs_trl_shipped <= 0.75": ts["memory_vs_trl_shipped"],
            "abs(eval_loss_vs_trl_best) <= 0.01": ts["eval_loss_vs_trl_best"],
            "cpu_speed_vs_trl_shipped >= 8": ts["cpu_speed_vs_trl_shipped"],
            "cpu_speed_vs_trl_best >= 6": ts["cpu_speed_vs_trl_best"],
        }
        pair = [rows[v] for v in ("tunesmith_fp32", "tunesmith_bf16") if v in rows]
        if len(pair) == 2:
            faster = max(pair, key=lambda r: r["tokens_per_second"])
            targets["auto picked the faster precision (1 = yes)"] = float(ts["precision"] == faster["precision"])
    if estimate and ts:
        estimate["measured_peak_rss_bytes"] = ts["peak_rss_bytes"]
        estimate["predicted_over_measured"] = estimate["predicted_peak_bytes"] / ts["peak_rss_bytes"]
    return {"variants": rows, "targets": targets, "estimate": estimate}


def target_met(name: str, value: float) -> bool:
    """Whether ``value`` meets the target ``name`` (``"<what> >= 6"``, ``"<what> <= 0.75"``, ``"abs(<what>) <= 0.01"``,
    or a flag named ``... (1 = yes)``)."""
    if name.endswith("(1 = yes)"):
        return value == 1
    op, bound = name.split()[-2], float(name.split()[-1])
    v = abs(value) if name.startswith("abs(") else value
    return v >= bound if op == ">=" else v <= bound


def markdown(report: dict) -> str:
    """The benchmark table (Markdown)."""
    s, c = report["summary"], report["conditions"]
    lines = [
        f"`python bench/bench_sft.py --mode {c['mode']}`: {c['model']}, LoRA r=16 all-linear, batch "
        f"{c['batch']}, max_length {c['max_length']}, "
        f"{c['steps']} steps ({c['warmup']} warm-up), chatterbot; {c['cpu']} x{c['threads']} threads; "
        f"matmul peak fp32 {c['peaks']['fp32_gflops']:.0f} / "
        f"bf16 {c['peaks']['bf16_gflops']:.0f} GFLOP/s per wall second ({c['peaks']['fp32_gflops_cpu']:.0f} "
        f"/ {c['peaks']['bf16_gflops_cpu']:.0f} per CPU second); load average {c['load_start'][0]:.1f} -> "
        f"{c['load_end'][0]:.1f}",
        "",
    ]
    lines += table(
        "variant|precision|real tokens/s|x TRL best|x TRL shipped|tokens/CPU-s ratio vs best / shipped|CPU share"
        "|peak RSS|RSS / shipped|MFU vs fp32 peak: wall (CPU time)|MFU vs bf16 peak: wall (CPU time)"
        "|MFU vs its precision's peak|eval_loss|vs TRL best".split("|"),
        [
            [
                v,
                r["precision"],
                f"{r['tokens_per_second']:.1f}",
                optional(r, "speed_vs_trl_best", "{:.2f}"),
                optional(r, "speed_vs_trl_shipped", "{:.2f}"),
                optional(r, "cpu_speed_vs_trl_best", "{:.2f}")
                + " / "
                + optional(r, "cpu_speed_vs_trl_shipped", "{:.2f}"),
                f"{r['cpu_share']:.0%}",
                f"{r['peak_rss_bytes'] / 1e9:.2f} GB",
                optional(r, "memory_vs_trl_shipped", "{:.2f}"),
                f"{r['mfu_fp32_peak']:.1%} ({r['mfu_fp32_peak_cpu']:.1%})",
                f"{r['mfu_bf16_peak']:.1%} ({r['mfu_bf16_peak_cpu']:.1%})",
                f"{r['mfu_running_peak']:.1%}",
                f"{r['eval_loss']:.4f}",
                optional(r, "eval_loss_vs_trl_best", "{:+.2%}"),
            ]
            for v, r in s["variants"].items()
        ],
    )
    for v, r in s["variants"].items():
        if "compile" in v and r.get("steady_step_seconds"):
            lines += [
                "",
                f"{v}: first step {r['first_step_seconds']:.1f} s, later steps {r['steady_step_seconds']:.1f} s "
                f"(median): compiling cost about {r['first_step_seconds'] - r['steady_step_seconds']:.1f} s once",
            ]
    if s["targets"]:
        rows = [[k, f"{v:.3f}", "yes" if target_met(k, v) else "NO"] for k, v in s["targets"].items()]
        lines += ["", *table(["target (tunesmith defaults)", "measured", "met"], rows)]
    if report.get("profile"):
        lines += ["", "tunesmith's steps after the warm-up under torch.profiler (top operators by self CPU time):", ""]
        lines += ["```", report["profile"].rstrip(), "```"]
    if s["estimate"]:
        e = s["estimate"]
        lines += [
            "",
            f"`tunesmith estimate --batch {e['batch']} --seq-len {e['seq_len']}` (rows per pass) predicted "
            f"peak {e['predicted_peak_bytes'] / 1e9:.2f} GB vs measured "
            f"{e.get('measured_peak_rss_bytes', 0) / 1e9:.2f} GB "
            f"(ratio {e.get('predicted_over_measured', float('nan')):.2f})",
        ]
    return "\n".join(lines) + "\n"


OTHER_MODES = {"dpo": "bench_dpo", "classify": "bench_classify"}
"""Modes that are their own benchmark script (their options follow ``--mode``)."""


def main(argv=None) -> int:
    """Run the benchmark; prints the Markdown table and writes JSON + Markdown under ``--out``.  ``--mode dpo`` and
    ``--mode classify`` hand the other arguments to bench/bench_dpo.py and bench/bench_classify.py."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--mode" in argv and argv.index("--mode") + 1 < len(argv) and argv[argv.index("--mode") + 1] in OTHER_MODES:
        i = argv.index("--mode")
        sys.path.insert(0, str(HERE))
        module = __import__(OTHER_MODES[argv[i + 1]])
        return module.main(argv[:i] + argv[i + 2 :])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=sorted([*MODES, *OTHER_MODES]), default="quick")
    p.add_argument("--out", default="runs/bench")
    p.add_argument(
        "--variants", default=None, help="comma-separated subset/order of variants (bench/variants.py VARIANTS)"
    )
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument(
        "--profile", action="store_true", help="also run tunesmith once under torch.profiler: its top operators"
    )
    p.add_argument("--timeout", type=float, default=900, help="seconds per variant run")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help=(
            "torch threads in every process (default: torch's, one per core); 1 gives load-robust CPU-time figures "
            "on a busy machine"
        ),
    )
    for key in ("batch", "max_length", "steps", "eval_examples"):
        p.add_argument(f"--{key.replace('_', '-')}", type=int, default=None, help=f"override the mode's {key}")
    a = p.parse_args(argv)
    m = dict(MODES[a.mode])
    if a.variants:
        m["variants"] = a.variants.split(",")
    m["rounds"] = a.rounds or m["rounds"]
    for key in ("batch", "max_length", "steps", "eval_examples"):
        m[key] = getattr(a, key) or m[key]
    if a.threads:
        os.environ["OMP_NUM_THREADS"] = str(a.threads)  # inherited by the variant processes
        import torch

        torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="tunesmith-bench-") as tmp:
        data = Path(tmp)
        stats = prepare_data(data, m["max_length"], m["eval_examples"])
        peaks = matmul_peaks()
        shown = ("tokens_per_second", "peak_rss_bytes", "eval_loss", "error")
        run_one = lambda v: run_variant(v, data, data, m, a.timeout)  # noqa: E731
        results = run_rounds(m["variants"], m["rounds"], run_one, "bench", shown)
        profiled = run_variant("tunesmith", data, data, m, a.timeout, ("--profile",)) if a.profile else {}
        peaks_end = matmul_peaks()
    peaks = {k: max(peaks[k], peaks_end[k]) for k in peaks}
    estimate = predict_for_bench(m["batch"], m["max_length"])
    import torch

    from tunesmith.runtime.hardware import cpu_model

    cpu = cpu_model()
    report = {
        "conditions": {
            "mode": a.mode,
            "model": "SmolLM2-135M-Instruct",
            **{k: m[k] for k in ("batch", "max_length", "steps", "warmup", "rounds")},
            "cpu": cpu,
            "cores": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "peaks": peaks,
            "load_start": load_start,
            "load_end": os.getloadavg(),
            "data": stats,
            "torch": torch.__version__,
        },
        "runs": results,
        "profile": profiled.get("profile") or profiled.get("error"),
    }
    report["summary"] = summarise(results, peaks, estimate)
    return write_report(out, f"bench-{a.mode}", report, markdown)


if __name__ == "__main__":
    sys.exit(main())
