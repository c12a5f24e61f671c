"""Merge and export on the embedded SmolLM2-135M-Instruct: merge a random LoRA adapter, export it to GGUF, check the
round trip (same greedy replies, logits), template consistency and that it stops; generate batched == one at a time.

    PYTHONPATH=src pytest -q -m slow tests/use/test_embedded.py      # about 2-4 minutes on 2 CPU cores

Slow: gguf's reader takes 10-30 s per read of a 49,152-token vocabulary, and export reads the file three times.
"""

import json

import pytest
import torch

from conftest import logits, make_adapter

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, embedded_source):
    """A random LoRA adapter (r=4 on q/v/down_proj, B ~ N(0, 0.002)) on SmolLM2, saved with the tokenizer."""
    out = tmp_path_factory.mktemp("emb") / "adapter"
    peft_model, tok = make_adapter(embedded_source.location, None, out, scale=0.002)
    with peft_model.disable_adapter():
        plain = logits(peft_model, tok)
    want = logits(peft_model, tok)
    assert (want - plain).abs().max() > 1e-3  # the adapter changes the model
    want64 = logits(peft_model.double(), tok)
    return out, want, tok, want64


def test_merge_embedded(adapter, tmp_path, embedded_source):
    """Merged == base + adapter: exact in float64 (1e-10); in fp32 the difference (about 1.3e-4 with logits near 40) is
    of the size of fp32 rounding itself (fp32 vs fp64 of the unmerged model)."""
    from transformers import AutoModelForCausalLM

    from tunesmith.export.merge import run_merge

    out_adapter, want, tok, want64 = adapter
    report = run_merge(str(out_adapter), model="smollm2-135m-instruct", output=str(tmp_path / "merged"), log=print)
    assert report["max_abs_logit_diff_fp64"] < 1e-10 and report["max_abs_logit_diff_reloaded"] == 0
    assert report["max_abs_logit_diff_fp32"] < 3 * report["fp32_noise_floor"] < 1e-3
    merged64 = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float64).eval()
    assert (logits(merged64, tok) - want64).abs().max() < 1e-4  # the saved fp32 weights, run in float64
    assert report["gguf_pre"] == "smollm" and report["tie_word_embeddings"] is True


def test_export_embedded_gguf(adapter, tmp_path):
    """GGUF of SmolLM2 + adapter: same greedy replies as base + adapter, logits within 1e-4, every consistency check
    passes (it stops at <|im_end|>), and a merged folder exports the same."""
    from tunesmith.export.gguf import run_export

    out_adapter, want, tok, _ = adapter
    report = run_export(
        "smollm2-135m-instruct", str(out_adapter), output=str(tmp_path / "smol.gguf"), modelfile=True, log=print
    )
    checks = {c["name"]: c for c in report["consistency"]["checks"]}
    assert all(c["ok"] for c in checks.values()), checks
    assert "stops" in checks and "3/3" in checks["stops"]["detail"]
    assert report["round_trip"]["max_abs_logit_diff"] < 1e-4 and report["pre_tokenizer"] == "smollm"
    assert (tmp_path / "Modelfile").read_text().startswith("FROM ./smol.gguf")
    print(json.dumps(report, indent=1)[:3000])


def test_generate_embedded_batched_equals_single(embedded_source):
    from tunesmith.data.records import Message
    from tunesmith.models.for_use import load_for_use
    from tunesmith.use.generate import PromptRecord, generate_records

    loaded = load_for_use("smollm2-135m-instruct")
    texts = ["What is the capital of France?", "Hi", "Write one sentence about the sea.", "List three colours."]
    recs = [PromptRecord(str(k), [Message("user", t)]) for k, t in enumerate(texts)]
    batched = generate_records(loaded, recs, max_new_tokens=24, batch_size=4)
    single = generate_records(loaded, recs, max_new_tokens=24, batch_size=1)
    assert [r["prediction"] for r in batched] == [r["prediction"] for r in single]
    assert batched[0]["finish_reason"] == "stop" and "Paris" in batched[0]["prediction"]
