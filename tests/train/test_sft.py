"""End to end: `tunesmith sft` for a few steps on the embedded SmolLM2-135M-Instruct and chatterbot.

Checks every artifact, that eval_loss falls, and that the adapter reloads in a fresh process
(plain transformers + peft) with the same logits (fp32, atol 1e-5).
"""

import json
import subprocess
import sys
import textwrap

import pytest

from conftest import needs_bitsandbytes

STEPS = 6


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, embedded_source):
    out = tmp_path_factory.mktemp("e2e") / "run"
    cmd = [
        sys.executable,
        "-m",
        "tunesmith",
        "sft",
        "--set",
        f"train.output_dir={out}",
        "--set",
        f"train.max_steps={STEPS}",
        "--set",
        "train.learning_rate=1e-3",
        "--set",
        "train.per_device_train_batch_size=4",
        "--set",
        "train.max_length=256",
        "--set",
        "train.eval_steps=3",
        "--set",
        "train.logging_steps=1",
        "--set",
        "train.save_steps=3",
        "--set",
        "train.warmup_steps=0",
        "--set",
        "data.max_train_examples=96",
        "--set",
        "data.max_eval_examples=24",
        "--set",
        "eval.num_samples=2",
        "--set",
        "eval.max_new_tokens=16",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_artifacts_complete(run_dir):
    for name in (
        "config.yaml",
        "manifest.json",
        "metrics.json",
        "log_history.jsonl",
        "loss_curve.png",
        "samples.jsonl",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "adapter/tokenizer_config.json",
    ):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    m = json.loads((run_dir / "metrics.json").read_text())
    for key in (
        "eval_loss_before",
        "perplexity_before",
        "eval_loss",
        "perplexity",
        "train_loss",
        "trainable_parameters",
        "total_parameters",
        "trained_tokens",
        "train_seconds",
        "tokens_per_second",
    ):
        assert m[key] is not None, key
    assert m["global_step"] == STEPS
    assert 0 < m["trainable_parameters"] < m["total_parameters"] / 10
    assert m["trained_tokens"] > 0 and m["tokens_seen"] >= m["trained_tokens"]
    log = [json.loads(line) for line in (run_dir / "log_history.jsonl").read_text().splitlines()]
    assert sum("loss" in e for e in log) >= STEPS - 1 and any("eval_loss" in e for e in log)
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and all(s["before"] is not None and s["after"] is not None for s in samples)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["seed"] == 42 and manifest["chat_template_sha256"] and manifest["dataset_fingerprint"]


def test_eval_loss_falls(run_dir):
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["eval_loss"] < m["eval_loss_before"], m
    assert abs(m["perplexity"] - 2.718281828 ** m["eval_loss"]) < 1e-6 * m["perplexity"]


def test_adapter_reloads_in_fresh_process_with_same_logits(run_dir, embedded_source):
    """A fresh process loads base + adapter with plain transformers/peft and reproduces the trained model's logits."""
    script = textwrap.dedent(f"""
        import json, torch
        from transformers import AutoModelForCausalLM
        from peft import PeftModel
        check = json.load(open({str(run_dir / "reload_check.json")!r}))
        dtype = getattr(torch, check["base_dtype"])
        base = AutoModelForCausalLM.from_pretrained({embedded_source.location!r}, dtype=dtype)
        ids = torch.tensor([check["input_ids"]])
        with torch.no_grad():
            base_logits = base(ids).logits[0, -1, :512]
            model = PeftModel.from_pretrained(base, {str(run_dir / "adapter")!r}).eval()
            logits = model(ids).logits[0, -1, :512]
        want = torch.tensor(check["logits_last_first512"])
        max_diff = (logits - want).abs().max().item()
        base_diff = (base_logits - want).abs().max().item()
        print(json.dumps({{"max_diff": max_diff, "base_diff": base_diff}}))
    """)
    o = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert o.returncode == 0, o.stderr[-2000:]
    res = json.loads(o.stdout.strip().splitlines()[-1])
    assert res["max_diff"] <= 1e-5, res
    assert res["base_diff"] > 1e-3, res  # the adapter really changed the model


@pytest.mark.slow  # about 50 s of CPU time (three CLI processes); more than 15 minutes on a shared, loaded machine
@needs_bitsandbytes
def test_qlora_sft_trains_merges_and_exports(tmp_path, tiny_llama_dir):
    """QLoRA end to end through the CLI: `tunesmith sft` with model.quantization=nf4 trains (eval_loss falls) and saves
    an adapter that records its 4-bit base; `merge` puts it into a dequantised fp32 copy; `export` writes a GGUF."""
    run = tmp_path / "qlora"
    sets = {
        "model.name": tiny_llama_dir,
        "model.quantization": "nf4",
        "train.output_dir": run,
        "train.max_steps": 4,
        "train.learning_rate": 1e-2,
        "train.warmup_steps": 0,
        "train.per_device_train_batch_size": 2,
        "train.max_length": 128,
        "train.eval_steps": 4,
        "train.save_steps": 4,
        "train.logging_steps": 1,
        "data.max_train_examples": 16,
        "data.max_eval_examples": 8,
        "eval.num_samples": 1,
        "eval.max_new_tokens": 4,
    }
    cli = [sys.executable, "-m", "tunesmith"]
    proc = subprocess.run(
        [*cli, "sft", *(x for k, v in sets.items() for x in ("--set", f"{k}={v}"))],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((run / "metrics.json").read_text())
    assert m["quantization"] == "nf4" and m["eval_loss"] < m["eval_loss_before"], m
    assert json.loads((run / "adapter" / "tunesmith_quantization.json").read_text())["quantization"] == "nf4"
    merged = tmp_path / "merged"
    proc = subprocess.run(
        [*cli, "merge", "--adapter", str(run), "--output", str(merged)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    q = json.loads((merged / "tunesmith_merge.json").read_text())["quantized"]
    assert q["quantization"] == "nf4" and q["max_abs_logit_diff_vs_quantized"] < 1e-3
    gguf = tmp_path / "q.gguf"
    proc = subprocess.run(
        [*cli, "export", "--model", str(merged), "--format", "gguf", "-o", str(gguf), "--no-stop-check"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "q.consistency.json").read_text())["consistency"]["ok"]
