"""bench/bench_classify.py's arithmetic and command line: ratios to the plain Trainer, targets and the Markdown
table, on hand-made run results (no training).

PYTHONPATH=src python -m pytest -q tests/bench/test_bench_classify.py
"""

from __future__ import annotations

import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import bench_classify  # noqa: E402


def _run(variant, eps, epc, rss, acc, loss, precision="fp32", batches="padded"):
    return {
        "variant": variant,
        "description": variant,
        "precision": precision,
        "batches": batches,
        "examples_per_second": eps,
        "examples_per_cpu_second": epc,
        "tokens_per_second": eps * 9,
        "tokens_per_cpu_second": epc * 9,
        "peak_rss_bytes": rss,
        "eval_accuracy": acc,
        "eval_loss": loss,
    }


def test_summary_ratios_targets_and_markdown():
    runs = [
        _run("hf_trainer", 4.0, 6.0, 2e9, 0.60, 1.10),
        _run("tunesmith", 9.0, 15.0, 1.5e9, 0.62, 1.00, "bf16-mixed", "packed"),
        _run("hf_trainer", 6.0, 8.0, 2.2e9, 0.60, 1.10),
        _run("tunesmith", 11.0, 17.0, 1.4e9, 0.64, 1.02, "bf16-mixed", "packed"),
        {"variant": "tunesmith_fp32", "error": "exit code -9"},
    ]
    s = bench_classify.summarise(runs)
    hf, ts = s["variants"]["hf_trainer"], s["variants"]["tunesmith"]
    assert set(s["variants"]) == {"hf_trainer", "tunesmith"}  # the failed run is left out
    assert hf["runs"] == 2 and hf["examples_per_second"] == 5.0 and hf["peak_rss_bytes"] == 2.2e9
    assert ts["speed_vs_hf_trainer"] == 2.0 and ts["cpu_speed_vs_hf_trainer"] == 16.0 / 7.0
    assert ts["memory_vs_hf_trainer"] == pytest.approx(1.5 / 2.2) and ts["eval_accuracy"] == pytest.approx(0.63)
    assert s["targets"] == {
        "speed_vs_hf_trainer >= 2": 16.0 / 7.0,
        "memory_vs_hf_trainer <= 1": pytest.approx(1.5 / 2.2),
        "speed_vs_hf_trainer (wall) >= 2": 2.0,
    }
    assert bench_classify.summarise(runs[1:2])["targets"] is None  # no reference run: no targets
    report = {
        "summary": s,
        "conditions": {
            "model": "m",
            "labels": 6,
            "lora_r": 16,
            "batch": 16,
            "max_length": 64,
            "steps": 8,
            "warmup": 1,
            "rounds": 2,
            "cpu": "cpu",
            "cores": 2,
            "threads": 1,
            "torch": "2.13",
            "date": "2026-12-07 00:00 UTC",
            "load_start": (1.0, 1, 1),
            "load_end": (2.0, 2, 2),
        },
    }
    md = bench_classify.markdown(report)
    assert "| tunesmith | bf16-mixed | packed | 10.00 | 16.00 | 90.0 | 144.0 | 2.00 / 2.29 | 1.50 GB | 0.68 |" in md
    assert "| hf_trainer | fp32 | padded |" in md and "- / -" in md
    assert "speed_vs_hf_trainer >= 2: 2.286; memory_vs_hf_trainer <= 1: 0.682" in md and "load average 1.0 -> 2.0" in md


def test_arguments():
    a = bench_classify.parse_args([])
    assert (a.steps, a.batch, a.max_length, a.threads, a.out) == (8, 16, 64, 1, "runs/bench")
    assert a.variants == "hf_trainer,tunesmith" and a.variant is None
    a = bench_classify.parse_args(
        ["--steps", "3", "--batch", "4", "--max-length", "32", "--threads", "2", "--out", "x"]
    )
    assert (a.steps, a.batch, a.max_length, a.threads, a.out) == (3, 4, 32, 2, "x")
    for bad in (["--variants", "hf_trainer,nope"], ["--steps", "0"], ["--steps", "2", "--warmup", "2"]):
        with pytest.raises(SystemExit):
            bench_classify.parse_args(bad)
