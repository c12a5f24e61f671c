"""bench/gpu: the GPU check's argument parsing, synthetic data, arithmetic and result table on hand-made results, and
its CPU dry run through bench/gpu/run.sh (same code paths and output files as on a GPU).

PYTHONPATH=src python -m pytest -q tests/bench/test_gpu_bench.py
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from conftest import REPO, needs_bitsandbytes

sys.path.insert(0, str(REPO / "bench" / "gpu"))
sys.path.insert(0, str(REPO / "bench"))
import gpu_bench  # noqa: E402


def test_arguments_gpu_and_dry_run_defaults():
    a = gpu_bench.parse_args(["--out", "o"])
    assert a.models == ["smollm2-135m", "llama-1.7b"] and not a.dry_run
    assert a.variants == ["tunesmith", "trl_padfree_liger", "trl_shipped", "tunesmith_qlora", "trl_padfree_liger_qlora"]
    assert (a.steps, a.warmup, a.budget, a.timeout) == (10, 3, 450.0, 180.0)  # 7.5 of the GPU run's 8 minutes
    d = gpu_bench.parse_args(["--out", "o", "--dry-run", "--variants", "trl_shipped,tunesmith", "--steps", "2"])
    assert d.models == ["tiny"] and d.variants == ["trl_shipped", "tunesmith"] and (d.steps, d.warmup) == (2, 1)
    assert (d.budget, d.timeout) == (3600.0, 900.0)
    for bad in (["--models", "gpt5"], ["--variants", "tunesmith,trl_best"], ["--steps", "3", "--warmup", "3"], []):
        with pytest.raises(SystemExit) as e:
            gpu_bench.parse_args(["--out", "o", *bad] if bad else bad)
        assert e.value.code == 2


def test_synthetic_rows_are_seeded_and_masked():
    rows = gpu_bench.synthetic_rows(50, vocab=512, max_length=128, seed=3)
    assert rows == gpu_bench.synthetic_rows(50, vocab=512, max_length=128, seed=3)
    assert rows != gpu_bench.synthetic_rows(50, vocab=512, max_length=128, seed=4)
    for r in rows:
        n = len(r["input_ids"])
        assert 16 <= n <= 128 and r["input_ids"][-1] == 1 and all(2 <= t < 512 for t in r["input_ids"][:-1])
        cut = int(0.4 * n)
        assert r["labels"][:cut] == [-100] * cut and r["labels"][cut:] == r["input_ids"][cut:]
    assert len({len(r["input_ids"]) for r in rows}) > 10  # lengths vary: packing has something to do


def _run(variant, tps, memory, loss, params=1_000_000, trainable=10_000):
    return {
        "variant": variant,
        "precision": "bf16",
        "attn_implementation": "sdpa",
        "layout": "flat",
        "liger": True,
        "quantization": None,
        "tokens_per_second": tps,
        "peak_gpu_bytes": memory,
        "peak_rss_bytes": 1,
        "eval_loss": loss,
        "parameters": params,
        "trainable_parameters": trainable,
    }


def test_summary_ratios_mfu_targets_and_table():
    flops = 4 * 990_000 + 6 * 10_000  # 4 N_frozen + 6 N_lora per token
    peak = {"bf16_tflops": flops * 1000 / 1e12, "n": 8192, "device": "NVIDIA H100 80GB HBM3"}  # 1000 tokens/s = 100%
    results = {
        "smollm2-135m": [
            _run("trl_padfree_liger", 400, 4e9, 2.0),
            _run("tunesmith", 700, 3e9, 2.02),
            _run("trl_shipped", 100, 2e9, 2.1),
            {"variant": "tunesmith_qlora", "error": "exit code 1: ...\nModuleNotFoundError: bitsandbytes"},
        ],
        "llama-1.7b": [_run("trl_padfree_liger", 300, 4e9, 3.0), _run("tunesmith", 350, 5e9, 2.97)],
    }
    s = gpu_bench.summarise(results, peak)
    small, big = s["models"]["smollm2-135m"], s["models"]["llama-1.7b"]
    assert small["tunesmith"]["speed_vs_reference"] == 1.75 and small["tunesmith"]["memory_vs_reference"] == 0.75
    assert abs(small["tunesmith"]["eval_loss_vs_reference"] - 0.01) < 1e-12
    assert (
        abs(small["tunesmith"]["mfu_bf16"] - 0.7) < 1e-12 and small["trl_shipped"]["reference"] == "trl_padfree_liger"
    )
    assert "speed_vs_reference" not in small["trl_padfree_liger"] and "error" in small["tunesmith_qlora"]
    t = s["targets"]
    assert t["smollm2-135m: speed_vs_trl_padfree_liger >= 1.5"]["met"] is True
    assert t["llama-1.7b: speed_vs_trl_padfree_liger >= 1.5"]["met"] is False  # 350/300
    assert t["llama-1.7b: memory_vs_trl_padfree_liger <= 1"]["met"] is False and big["tunesmith"]["mfu_bf16"] == 0.35
    assert t["llama-1.7b: mfu_bf16 >= 0.40"] == {"value": 0.35, "goal": 0.40, "met": False}
    report = {
        "conditions": {
            "command": "python bench/gpu/gpu_bench.py --out o",
            "dry_run": False,
            "date": "2026-12-06 22:00 UTC",
            "device": peak["device"],
            "peak": peak,
            "steps": 10,
            "warmup": 3,
            "versions": {"torch": "2.11.0", "trl": "1.16.0"},
        },
        "summary": s,
    }
    md = gpu_bench.markdown(report)
    lines = md.splitlines()
    assert "NVIDIA H100 80GB HBM3" in lines[0] and "trl 1.16.0" in lines[0]
    header = next(ln for ln in lines if ln.startswith("| model |"))
    rows = [ln for ln in lines if ln.startswith("| smollm2") or ln.startswith("| llama")]
    assert len(rows) == 6 and all(ln.count("|") == header.count("|") for ln in rows)  # the error row too
    assert "| smollm2-135m | tunesmith | bf16 | sdpa | flat | yes | 700 | 1.75 | 2.79 GiB | 0.75 | 70.0% |" in md
    assert "not run: ModuleNotFoundError: bitsandbytes" in md and "llama-1.7b: mfu_bf16 >= 0.40: 0.350 (NOT met)" in md


def _dry_run(out, *args):
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(
        ["bash", str(REPO / "bench" / "gpu" / "run.sh"), str(out), "--dry-run", *args],
        capture_output=True,
        text=True,
        timeout=3000,
        env=env,
        cwd=REPO,
    )


def test_dry_run_writes_the_table(tmp_path):
    """The CPU dry run through run.sh: a tiny random model, tunesmith and TRL padding-free, both files written."""
    proc = _dry_run(tmp_path / "out", "--variants", "tunesmith,trl_padfree_liger", "--steps", "2")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "gpu-bench.json").read_text())
    assert report["conditions"]["dry_run"] and report["conditions"]["device"] == "cpu"
    rows = report["summary"]["models"]["tiny"]
    for v in ("tunesmith", "trl_padfree_liger"):
        assert rows[v]["tokens_per_second"] > 0 and math.isfinite(rows[v]["eval_loss"]) and rows[v]["mfu_bf16"] > 0
    ts = rows["tunesmith"]
    assert (ts["layout"], ts["attn_implementation"]) == ("rows", "sdpa") and rows["trl_padfree_liger"][
        "layout"
    ] == "flat"
    assert ts["speed_vs_reference"] > 0 and abs(ts["eval_loss_vs_reference"]) < 0.05  # same init, same rows
    md = (tmp_path / "out" / "gpu-bench.md").read_text()
    assert "| tiny | tunesmith |" in md and "| tiny | trl_padfree_liger |" in md and "dry run" in md
    assert "[run.sh] exit code 0" in proc.stdout


@pytest.mark.slow
@needs_bitsandbytes
def test_dry_run_every_variant_including_qlora(tmp_path):
    proc = _dry_run(tmp_path / "out")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = json.loads((tmp_path / "out" / "gpu-bench.json").read_text())["summary"]["models"]["tiny"]
    assert set(rows) == {"tunesmith", "trl_padfree_liger", "trl_shipped", "tunesmith_qlora", "trl_padfree_liger_qlora"}
    assert all("error" not in r for r in rows.values()), rows
    assert rows["tunesmith_qlora"]["quantization"] == "nf4" and "speed_vs_reference" in rows["tunesmith_qlora"]
