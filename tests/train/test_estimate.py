"""`tunesmith estimate`: parameter counts equal the real models', hand-computed terms, CLI output, probe calibration.

PYTHONPATH=src python -m pytest -q tests/train/test_estimate.py
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tunesmith.train.estimate import Shape, activation_bytes_per_token, estimate

TINY = Shape(vocab=100, hidden=8, intermediate=16, layers=2, heads=2, kv_heads=1, head_dim=4, tied=True)


def test_parameter_counts_equal_the_models(tiny_llama_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    shape = Shape.from_config(AutoConfig.from_pretrained(tiny_llama_dir))
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    linear, other = shape.parameters()
    assert linear + other == sum(p.numel() for p in model.parameters())  # tied head counted once
    peft = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    assert shape.lora_parameters(4) == sum(p.numel() for p in peft.parameters() if p.requires_grad)


def test_terms_by_hand():
    # per layer: q 8x8, k 8x4, v 8x4, o 8x8, gate/up 8x16, down 16x8 = 64+32+32+64+128+128+128 = 576; x2 layers
    assert TINY.parameters() == (1152, 100 * 8 + 2 * 2 * 8 + 8)
    assert TINY.lora_parameters(2) == 2 * 2 * (16 + 12 + 12 + 16 + 24 + 24 + 24) == 512
    # per layer and token: 6*8 + 2*4 + 4*16 = 120 values; LoRA dropout copies add 6*8 + 16 = 64
    assert activation_bytes_per_token(TINY, lora=False) == 4 * 2 * 120
    assert activation_bytes_per_token(TINY, lora=True) == 4 * 2 * 184
    assert activation_bytes_per_token(TINY, lora=False, checkpointing=True) == 4 * (2 * 8 + 120)
    est = estimate(TINY, batch=3, seq_len=5, r=2, runtime_bytes=1000)
    n = 1152 + 840
    full, lora, nf4, int8 = est["full"], est["lora"], est["qlora-nf4"], est["qlora-int8"]
    assert (full["weights"], full["gradients"], full["optimizer"], full["activations"]) == (
        4 * n,
        4 * n,
        8 * n,
        15 * 960,
    )
    assert (lora["weights"], lora["gradients"], lora["optimizer"], lora["activations"]) == (
        4 * n,
        4 * 512,
        8 * 512,
        15 * 1472,
    )
    # QLoRA rows are named after model.quantization; non-linear weights are fp32 after PEFT's k-bit preparation
    assert (nf4["quantization"], int8["quantization"], lora["quantization"]) == ("nf4", "int8", None)
    assert nf4["weights"] == int(1152 * (0.5 + 0.127 / 8) + 4 * 840) and nf4["activations"] == 15 * 1472 // 2
    # int8: a byte per weight plus an fp32 scale per output row (8+4+4+8+16+16+8 = 64 rows a layer, 2 layers)
    assert int8["weights"] == 1152 + 4 * 128 + 4 * 840 and int8["trainable_parameters"] == lora["trainable_parameters"]
    for m in est.values():
        assert m["total"] == sum(m[k] for k in ("weights", "gradients", "optimizer", "activations", "runtime"))
    # a calibrated slope replaces the analytical one (LoRA as measured; full without the dropout copies)
    cal = estimate(TINY, batch=1, seq_len=10, act_bytes_per_token=1840.0)
    assert cal["lora"]["activations"] == 18400 and cal["full"]["activations"] == int(18400 * 120 / 184)


def test_cli_json_without_probe(tiny_llama_dir):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tunesmith",
            "estimate",
            str(tiny_llama_dir),
            "--no-probe",
            "--json",
            "--batch",
            "2",
            "--seq-len",
            "64",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert (
        res["probe"] is None
        and res["batch"] == 2
        and set(res["methods"]) == {"full", "lora", "qlora-nf4", "qlora-int8"}
    )
    assert res["methods"]["lora"]["optimizer"] == 8 * res["methods"]["lora"]["trainable_parameters"]


def test_cli_unknown_model_is_a_clear_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tunesmith", "estimate", str(tmp_path / "nope"), "--no-probe"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "nope" in proc.stderr


@pytest.mark.slow
def test_probe_calibrates_on_the_real_model(embedded_source):
    from tunesmith.train.estimate import probe

    cal = probe(embedded_source.location, seq_lens=(64, 512))
    assert cal["act_bytes_per_token"] > 0 and cal["intercept_bytes"] > 4 * 134_515_008  # at least the fp32 weights
