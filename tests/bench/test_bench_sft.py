"""bench/bench_sft.py's arithmetic: MFU, ratios to TRL, targets and the Markdown table, on hand-made run results.

PYTHONPATH=src python -m pytest -q tests/bench/test_bench_sft.py
"""

from __future__ import annotations

import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import bench_sft  # noqa: E402


def _run(variant, tps, tpc, rss, loss, precision="fp32"):
    return {
        "variant": variant,
        "description": variant,
        "precision": precision,
        "tokens_per_second": tps,
        "tokens_per_cpu_second": tpc,
        "cpu_share": 0.5,
        "peak_rss_bytes": rss,
        "peak_gpu_bytes": None,
        "eval_loss": loss,
        "parameters": 1000,
        "trainable_parameters": 100,
    }


def test_summary_ratios_mfu_and_targets():
    assert bench_sft.lora_flops_per_token(1000, 100) == 4 * 900 + 6 * 100
    peaks = {
        "fp32_gflops": 1e-6 * 4200,
        "bf16_gflops": 1e-6 * 8400,
        "fp32_gflops_cpu": 1e-6 * 4200,
        "bf16_gflops_cpu": 1e-6 * 8400,
    }
    runs = [
        _run("trl_best", 10, 20, 4e9, 2.0),
        _run("trl_shipped", 5, 8, 2e9, 2.1),
        _run("tunesmith", 25, 40, 3e9, 2.02, "bf16-mixed"),
        {"variant": "tunesmith_fp32", "error": "exit code -9"},
    ]
    s = bench_sft.summarise(runs, peaks, {"predicted_peak_bytes": 3.3e9, "batch": 1, "seq_len": 512})
    ts = s["variants"]["tunesmith"]
    assert set(s["variants"]) == {"trl_best", "trl_shipped", "tunesmith"}  # the failed run is left out
    assert ts["speed_vs_trl_best"] == 2.5 and ts["speed_vs_trl_shipped"] == 5.0 and ts["cpu_speed_vs_trl_best"] == 2.0
    assert ts["memory_vs_trl_shipped"] == 1.5 and abs(ts["eval_loss_vs_trl_best"] - 0.01) < 1e-12
    assert (
        abs(ts["mfu_fp32_peak"] - 25 * 4200 / 4.2e6) < 1e-12 and abs(ts["mfu_bf16_peak"] - 25 * 4200 / 8.4e6) < 1e-12
    )  # 4200 FLOPs/token
    # MFU against the peak of the precision it runs in: bf16 here
    assert (
        ts["mfu_running_peak"] == ts["mfu_bf16_peak"]
        and s["variants"]["trl_best"]["mfu_running_peak"] == (s["variants"]["trl_best"]["mfu_fp32_peak"])
    )
    t = s["targets"]
    assert t["speed_vs_trl_best >= 6"] == 2.5 and t["memory_vs_trl_shipped <= 0.75"] == 1.5
    assert t["mfu vs bf16-mixed peak >= 0.40"] == ts["mfu_bf16_peak"]
    assert not bench_sft.target_met("speed_vs_trl_best >= 6", 2.5) and bench_sft.target_met("x <= 0.75", 0.7)
    assert bench_sft.target_met("abs(e) <= 0.01", -0.009) and not bench_sft.target_met("abs(e) <= 0.01", -0.02)
    assert abs(s["estimate"]["predicted_over_measured"] - 1.1) < 1e-12
    report = {
        "summary": s,
        "conditions": {
            "mode": "quick",
            "model": "m",
            "batch": 2,
            "max_length": 256,
            "steps": 3,
            "warmup": 1,
            "cpu": "cpu",
            "threads": 1,
            "peaks": peaks,
            "load_start": (1.0, 1, 1),
            "load_end": (2.0, 2, 2),
        },
    }
    md = bench_sft.markdown(report)
    assert (
        "| tunesmith | bf16-mixed | 25.0 | 2.50 | 5.00 | 2.00 / 5.00 |" in md
        and "+1.00%" in md
        and "(ratio 1.10)" in md
    )
    assert "| speed_vs_trl_shipped >= 8 | 5.000 | NO |" in md


def test_auto_precision_check_compares_fp32_and_bf16_variants():
    peaks = dict.fromkeys(("fp32_gflops", "bf16_gflops", "fp32_gflops_cpu", "bf16_gflops_cpu"), 1.0)
    runs = [
        _run("trl_best", 10, 20, 4e9, 2.0),
        _run("trl_shipped", 5, 8, 2e9, 2.1),
        _run("tunesmith", 25, 40, 3e9, 2.02, "bf16"),
        _run("tunesmith_fp32", 20, 40, 3e9, 2.0, "fp32"),
        _run("tunesmith_bf16", 26, 40, 3e9, 2.02, "bf16"),
    ]
    assert bench_sft.summarise(runs, peaks, None)["targets"]["auto picked the faster precision (1 = yes)"] == 1.0
    runs[3]["tokens_per_second"] = 30
    assert bench_sft.summarise(runs, peaks, None)["targets"]["auto picked the faster precision (1 = yes)"] == 0.0


def test_dpo_and_classify_modes_hand_over_to_their_scripts(monkeypatch):
    import bench_classify

    seen = []
    monkeypatch.setattr(bench_classify, "main", lambda argv=None: seen.append(argv) or 0)
    assert bench_sft.main(["--mode", "classify", "--steps", "2"]) == 0 and seen == [["--steps", "2"]]
