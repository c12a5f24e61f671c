"""Training precision (tunesmith.train.speed.precision): the rules, the timed probe and its cache, and the bf16 layout
(frozen base in bf16, LoRA and its gradients in fp32, no activation casts under autocast).

    PYTHONPATH=src python -m pytest -q tests/train/speed/test_precision.py
"""

from __future__ import annotations

import json

import pytest
import torch

from tunesmith.config.sft import RunConfig
from tunesmith.train.speed import precision as P


def _cfg(**model):
    cfg = RunConfig()
    for k, v in model.items():
        setattr(cfg.model, k, v)
    return cfg


@pytest.mark.parametrize(
    "dtype,bf16,lora,want",
    [
        ("auto", False, True, "fp32"),
        ("bfloat16", None, True, "bf16"),
        ("bfloat16", None, False, "bf16-mixed"),
        ("float32", None, True, "fp32"),
        ("float32", True, True, "bf16-mixed"),
        ("auto", True, True, "bf16"),
    ],
)
def test_rules_without_probe(dtype, bf16, lora, want):
    cfg = _cfg(dtype=dtype)
    cfg.train.bf16, cfg.lora.enabled = bf16, lora
    got = P.resolve_precision(cfg, device="cpu")
    assert got.name == want
    assert got.weights == (torch.bfloat16 if want == "bf16" else torch.float32)
    assert got.autocast == (want != "fp32")


def test_auto_on_a_cpu_without_bf16_is_fp32(monkeypatch):
    monkeypatch.setattr("tunesmith.runtime.hardware.cpu_has_bf16", lambda: False)
    assert P.resolve_precision(_cfg(), device="cpu").name == "fp32"


def test_probe_times_both_and_caches_per_shape(monkeypatch, tmp_path, tiny_llama_dir):
    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path))
    monkeypatch.setattr("tunesmith.runtime.hardware.cpu_has_bf16", lambda: True)
    cfg = _cfg(name=str(tiny_llama_dir))
    calls = []
    real = P._time_steps
    monkeypatch.setattr(P, "_time_steps", lambda *a: calls.append(a) or real(*a))
    torch.manual_seed(7)
    want = torch.rand(3)
    torch.manual_seed(7)
    first = P.resolve_precision(cfg, seq_len=32, rows=2, device="cpu")
    assert torch.equal(torch.rand(3), want)  # the probe leaves the run's random stream alone
    again = P.resolve_precision(cfg, seq_len=32, rows=2, device="cpu")
    assert len(calls) == 1 and first == again and first.name in ("fp32", "bf16")
    cache = json.loads((tmp_path / "hardware.json").read_text())
    (key,) = [k for k in cache if "train-step" in k]
    assert "2x32" in key and set(cache[key]) == {"fp32", "bf16"} and all(t > 0 for t in cache[key].values())
    assert "timed training step" in first.why and f"{cache[key]['fp32']:.3f} s" in first.why
    # the faster one wins: a forged cache entry decides the other way
    slower = "fp32" if first.name == "bf16" else "bf16"
    cache[key] = {first.name: 9.0, slower: 1.0}
    (tmp_path / "hardware.json").write_text(json.dumps(cache))
    assert P.resolve_precision(cfg, seq_len=32, rows=2, device="cpu").name == slower
    P.resolve_precision(cfg, seq_len=64, rows=2, device="cpu")  # another shape: measured again
    assert len(calls) == 2


def test_bf16_layout_keeps_lora_fp32_and_casts_no_activation(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    from tunesmith.models.adapters import apply_lora

    cfg = RunConfig()
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.bfloat16, attn_implementation="sdpa")
    model = apply_lora(model, cfg.lora)
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    assert {p.dtype for p in model.parameters() if not p.requires_grad} == {torch.bfloat16}
    assert P.fast_lora_inputs(model) > 0
    ids = torch.randint(3, 300, (2, 16))
    model.train()
    seen = []
    for name, mod in model.named_modules():
        if name.endswith("q_proj.lora_A.default"):
            mod.register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(input_ids=ids, labels=ids)
    assert seen and set(seen) == {torch.bfloat16}  # the LoRA input stays bf16: no [tokens, hidden] cast to fp32
    out.loss.backward()
    lora_b = next(p for n, p in model.named_parameters() if "lora_B" in n)  # (lora_A's gradient is 0 at init)
    assert lora_b.grad is not None and lora_b.grad.dtype == torch.float32 and lora_b.grad.abs().sum() > 0
    P.fast_lora_inputs(model, enabled=False)  # outside autocast PEFT's input cast is needed again
    seen.clear()
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).logits).all()
    assert set(seen) == {torch.float32}


def test_a_probe_that_cannot_build_the_model_falls_back_to_the_matmul_test(monkeypatch):
    monkeypatch.setattr("tunesmith.runtime.hardware.cpu_has_bf16", lambda: True)
    monkeypatch.setattr("tunesmith.runtime.hardware.hardware_supports_bf16", lambda device=None: False)
    monkeypatch.setattr(P, "_probe_config", lambda cfg: (_ for _ in ()).throw(ValueError("unknown model_type")))
    got = P.resolve_precision(_cfg(), device="cpu")
    assert got.name == "fp32" and "probe failed: ValueError: unknown model_type" in got.why
