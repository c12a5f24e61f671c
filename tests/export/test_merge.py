"""tunesmith merge: merged logits == base + adapter (fp32, 1e-4), tied embeddings, added tokens.

PYTHONPATH=src pytest -q tests/export/test_merge.py
"""

import json

import pytest
import torch
from safetensors import safe_open

from conftest import PROBE, build_tiny_llama, logits, make_adapter, make_qlora_adapter, needs_bitsandbytes
from tunesmith.errors import ModelError


def merged_logits(out, tok):
    from transformers import AutoModelForCausalLM

    return logits(AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval(), tok)


def test_merge_matches_base_plus_adapter(tmp_path, smol_tokenizer):
    from tunesmith.export.merge import run_merge

    base_dir = build_tiny_llama(smol_tokenizer, tmp_path / "base")
    peft_model, tok = make_adapter(base_dir, smol_tokenizer, tmp_path / "adapter")
    want = logits(peft_model, tok)
    with peft_model.disable_adapter():
        plain = logits(peft_model, tok)
    assert (want - plain).abs().max() > 1e-3  # the adapter changes the model, so the test can fail
    report = run_merge(
        str(tmp_path / "adapter"), model=str(base_dir), output=str(tmp_path / "merged"), log=lambda s: None
    )
    out = tmp_path / "merged"
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "generation_config.json",
        "tunesmith_merge.json",
    ):
        assert (out / name).is_file(), name
    assert "<|im_start|>" in (out / "chat_template.jinja").read_text()
    assert (merged_logits(out, tok) - want).abs().max() < 1e-4
    assert (
        report["max_abs_logit_diff_fp32"] < 1e-4
        and report["max_abs_logit_diff_fp64"] < 1e-10
        and report["max_abs_logit_diff_reloaded"] == 0
    )
    assert report["tie_word_embeddings"] is True  # nothing touched the embeddings: the tie stays
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert not any("lora" in k for k in f.keys())
    gen = json.loads((out / "generation_config.json").read_text())
    assert 2 in (gen["eos_token_id"] if isinstance(gen["eos_token_id"], list) else [gen["eos_token_id"]])


@pytest.mark.parametrize(
    "target,save", [(("q_proj", "embed_tokens"), None), (("q_proj",), ["lm_head"])], ids=["lora-embed", "save-lm_head"]
)
def test_merge_unties_trained_tied_embeddings(tmp_path, smol_tokenizer, target, save):
    """SmolLM2 ties lm_head to embed_tokens. An adapter that trains one of them is merged untied and both matrices are
    saved; with LoRA on embed_tokens, the naive merge (keep the tie) gives different logits (PEFT 0.21 unties a
    modules_to_save head itself)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunesmith.export.merge import run_merge

    base_dir = build_tiny_llama(smol_tokenizer, tmp_path / "base", tie=True)
    peft_model, tok = make_adapter(
        base_dir, smol_tokenizer, tmp_path / "adapter", target_modules=target, modules_to_save=save, scale=0.2
    )
    want = logits(peft_model, tok)
    report = run_merge(
        str(tmp_path / "adapter"), model=str(base_dir), output=str(tmp_path / "merged"), log=lambda s: None
    )
    assert report["tie_word_embeddings"] is False and any("untied" in n for n in report["notes"])
    with safe_open(str(tmp_path / "merged" / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert {"lm_head.weight", "model.embed_tokens.weight"} <= keys
    assert (merged_logits(tmp_path / "merged", tok) - want).abs().max() < 1e-4
    if save:
        return
    naive = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), tmp_path / "adapter"
    ).merge_and_unload()
    naive.save_pretrained(tmp_path / "naive")
    assert (merged_logits(tmp_path / "naive", tok) - want).abs().max() > 1e-3


def test_merge_refuses_tied_when_asked(tmp_path, smol_tokenizer):
    from tunesmith.export.merge import run_merge

    base_dir = build_tiny_llama(smol_tokenizer, tmp_path / "base", tie=True)
    make_adapter(base_dir, smol_tokenizer, tmp_path / "adapter", target_modules=("q_proj", "embed_tokens"))
    with pytest.raises(ModelError, match="tied embeddings") as exc:
        run_merge(str(tmp_path / "adapter"), model=str(base_dir), output=str(tmp_path / "merged"), untie=False)
    assert "embed_tokens" in exc.value.problems[0].reason and not (tmp_path / "merged").exists()


def test_adapter_with_added_tokens_loads_onto_stock_base(tmp_path, smol_tokenizer):
    """An adapter trained after adding a token (resized embeddings saved with it) reloads onto the stock base with no
    manual step."""
    from tunesmith.export.merge import run_merge
    from tunesmith.models.for_use import load_for_use

    base_dir = build_tiny_llama(smol_tokenizer, tmp_path / "base", tie=True)
    peft_model, tok = make_adapter(base_dir, smol_tokenizer, tmp_path / "adapter", added_tokens=("<|tool|>",))
    assert len(tok) == len(smol_tokenizer) + 1
    text = PROBE + "<|tool|>"
    want = logits(peft_model, tok, text)
    loaded = load_for_use(str(base_dir), str(tmp_path / "adapter"))
    assert loaded.model.get_input_embeddings().weight.shape[0] == len(tok)
    assert any("resized" in n for n in loaded.notes)
    assert loaded.tokenizer.convert_tokens_to_ids("<|tool|>") == len(smol_tokenizer)
    assert (logits(loaded.model, loaded.tokenizer, text) - want).abs().max() < 1e-5
    run_merge(str(tmp_path / "adapter"), model=str(base_dir), output=str(tmp_path / "merged"), log=lambda s: None)
    assert (merged_logits(tmp_path / "merged", tok)[:, :] - logits(peft_model, tok)).abs().max() < 1e-4


def test_run_folder_finds_adapter_and_base(tmp_path, smol_tokenizer):
    """`--model RUN_DIR` takes RUN_DIR/adapter and its base from RUN_DIR/config.yaml (model.name)."""
    from tunesmith.models.for_use import load_for_use

    base_dir = build_tiny_llama(smol_tokenizer, tmp_path / "base")
    run = tmp_path / "run"
    make_adapter(base_dir, smol_tokenizer, run / "adapter")
    (run / "config.yaml").write_text(f"model:\n  name: {base_dir}\n")
    loaded = load_for_use(str(run))
    assert loaded.adapter_dir == run / "adapter" and loaded.base_location == str(base_dir)
    with pytest.raises(ModelError, match="Adapter not found"):
        load_for_use(str(base_dir), str(tmp_path / "nope"))


@needs_bitsandbytes
@pytest.mark.parametrize("quantization", ["nf4", "int8"])
def test_qlora_adapter_merges_into_a_dequantised_copy(tmp_path, smol_tokenizer, quantization):
    """`tunesmith merge` of a QLoRA adapter: merged into an fp32 copy of the dequantised base (not the original
    weights, not 4-bit ones), checked against the quantised base + adapter, saved as a plain checkpoint."""
    import subprocess
    import sys

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunesmith.models.loading import load_causal_lm
    from tunesmith.models.quantization import dequantize
    from tunesmith.models.sources import resolve_model

    base_dir = build_tiny_llama(smol_tokenizer, tmp_path / "base")
    make_qlora_adapter(base_dir, tmp_path / "adapter", quantization)
    out = tmp_path / "merged"
    cmd = [sys.executable, "-m", "tunesmith", "merge", "--adapter", str(tmp_path / "adapter")]
    proc = subprocess.run(
        [*cmd, "--model", str(base_dir), "--output", str(out)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"dequantised {quantization} base" in proc.stderr.replace("\n", " ")
    report = json.loads((out / "tunesmith_merge.json").read_text())
    q = report["quantized"]
    assert q["quantization"] == quantization and q["max_abs_logit_diff_vs_quantized"] <= q["tolerance"]
    assert report["max_abs_logit_diff_fp64"] < 1e-10 and report["max_abs_logit_diff_reloaded"] == 0
    if quantization == "nf4":  # the 4-bit layers compute with exactly the dequantised weights (fp32 compute)
        assert q["max_abs_logit_diff_vs_quantized"] < 1e-4 and q["top1_agreement"] == 1.0
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert f.get_tensor("model.layers.0.self_attn.q_proj.weight").dtype == torch.float32

    src = resolve_model(str(base_dir))
    got = merged_logits(out, smol_tokenizer)
    deq = PeftModel.from_pretrained(dequantize(load_causal_lm(src, quantization=quantization)), tmp_path / "adapter")
    assert (got - logits(deq.eval(), smol_tokenizer)).abs().max() < 1e-4  # = the dequantised base + adapter
    original = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    on_original = PeftModel.from_pretrained(original, tmp_path / "adapter").eval()
    assert (got - logits(on_original, smol_tokenizer)).abs().max() > 1e-3  # not the original weights + adapter


@needs_bitsandbytes
def test_qlora_adapter_exports_to_gguf(tmp_path, smol_tokenizer):
    """`tunesmith export` straight from a QLoRA adapter: the same dequantised merge, then the GGUF checks."""
    import subprocess
    import sys

    base_dir = build_tiny_llama(smol_tokenizer, tmp_path / "base")
    make_qlora_adapter(base_dir, tmp_path / "adapter", "nf4")
    gguf = tmp_path / "q.gguf"
    proc = subprocess.run(
        [sys.executable, "-m", "tunesmith", "export", "--model", str(base_dir), "--adapter", str(tmp_path / "adapter")]
        + ["--format", "gguf", "--output", str(gguf), "--no-stop-check"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "q.consistency.json").read_text())
    assert report["merge"]["quantized"]["quantization"] == "nf4" and report["consistency"]["ok"]
    assert gguf.stat().st_size > 1e6
