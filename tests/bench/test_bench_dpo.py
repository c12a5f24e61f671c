"""bench/bench_dpo.py without training: argument parsing, ratios to TRL, targets and the Markdown table, on hand-made
run results.

PYTHONPATH=src python -m pytest -q tests/bench/test_bench_dpo.py
"""

from __future__ import annotations

import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import bench_dpo  # noqa: E402


def _run(variant, pps, ppc, rss, loss, acc, precision="fp32"):
    return {
        "variant": variant,
        "description": variant,
        "precision": precision,
        "pairs_per_second": pps,
        "pairs_per_cpu_second": ppc,
        "tokens_per_second": 100 * pps,
        "tokens_per_cpu_second": 100 * ppc,
        "peak_rss_bytes": rss,
        "final_loss": loss,
        "final_reward_accuracy": acc,
    }


def test_arguments_defaults_and_errors():
    a = bench_dpo.parse_args([])
    assert (a.steps, a.batch, a.max_length, a.out, a.threads) == (6, 4, 96, "runs/bench", 1)
    assert a.variants.split(",")[:2] == ["trl", "tunesmith"] and a.child is None
    a = bench_dpo.parse_args(["--steps", "3", "--batch", "2", "--max-length", "64", "--threads", "1", "--out", "x"])
    assert (a.steps, a.batch, a.max_length, a.threads, a.out) == (3, 2, 64, 1, "x")
    with pytest.raises(SystemExit):
        bench_dpo.parse_args(["--variants", "trl,nope"])
    with pytest.raises(SystemExit):
        bench_dpo.parse_args(["--steps", "1", "--warmup", "1"])


def test_summary_ratios_targets_and_markdown():
    runs = [
        _run("trl", 0.5, 0.4, 4e9, 0.69, 0.5, "bf16-mixed"),
        _run("tunesmith", 1.5, 1.2, 2e9, 0.68, 0.75),
        _run("tunesmith", 1.1, 1.0, 2.2e9, 0.66, 0.5),  # a second round: medians, the larger peak
        _run("trl", 0.7, 0.6, 3.8e9, 0.69, 0.5, "bf16-mixed"),
        {"variant": "trl_fp32", "error": "exit code -9"},
    ]
    s = bench_dpo.summarise(runs)
    assert set(s["variants"]) == {"trl", "tunesmith"}  # the failed run is left out
    ts = s["variants"]["tunesmith"]
    assert ts["runs"] == 2 and ts["pairs_per_cpu_second"] == pytest.approx(1.1) and ts["peak_rss_bytes"] == 2.2e9
    assert ts["speed_vs_trl"] == pytest.approx(1.1 / 0.5) and ts["wall_speed_vs_trl"] == pytest.approx(1.3 / 0.6)
    assert ts["memory_vs_trl"] == pytest.approx(2.2 / 4.0) and ts["final_loss"] == pytest.approx(0.67)
    assert s["targets"]["speed_vs_trl >= 2"] == [pytest.approx(2.2), True]
    assert s["targets"]["memory_vs_trl <= 1"] == [pytest.approx(0.55), True]
    assert bench_dpo.summarise(runs[1:3])["targets"] is None  # no TRL run: no ratios
    report = {
        "summary": s,
        "runs": runs,
        "conditions": {
            "model": "m",
            "lora_r": 16,
            "steps": 8,
            "warmup": 2,
            "batch": 4,
            "max_length": 96,
            "cpu": "Some CPU",
            "cores": 2,
            "threads": 1,
            "threads_arg": 1,
            "torch": "2.x",
            "date": "2026-01-01 00:00 UTC",
            "load_start": [1.0, 1.0, 1.0],
            "load_end": [2.0, 2.0, 2.0],
        },
    }
    md = bench_dpo.markdown(report)
    assert "--threads 1`" in md and "Some CPU, 2 cores, 1 torch threads, torch 2.x" in md
    assert "| tunesmith | fp32 | 1.30 | 1.10 |" in md and "| 2.20 |" in md
    assert "speed_vs_trl >= 2: 2.200 (met); memory_vs_trl <= 1: 0.550 (met)" in md
    assert "trl_fp32 failed: exit code -9" in md
