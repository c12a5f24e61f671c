"""Model sources: the embedded GGUF converts to a plain trainable checkpoint equal to transformers' GGUF load."""

import json

import pytest
import torch

from tunesmith.errors import ModelError
from tunesmith.models.loading import load_causal_lm, load_tokenizer
from tunesmith.models.sources import list_models, resolve_model
from tunesmith.runtime.hardware import choose_dtype, hardware_supports_bf16


def test_embedded_checkpoint_is_plain_and_keeps_template(embedded_source):
    loc = embedded_source.location
    cfg = json.loads(open(f"{loc}/config.json").read())
    assert "quantization_config" not in cfg  # Trainer refuses models marked quantized
    tok = load_tokenizer(embedded_source)
    assert "<|im_start|>" in tok.chat_template and tok.eos_token == "<|im_end|>"
    assert tok.model_max_length == 8192  # not the 1e30 placeholder of the GGUF tokenizer
    model = load_causal_lm(embedded_source)
    assert getattr(model, "hf_quantizer", None) is None
    assert model.generation_config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert model.dtype == torch.float32


def test_converted_logits_equal_transformers_gguf_load(embedded_source):
    from transformers import AutoModelForCausalLM

    from tunesmith.models.sources import embedded_gguf_path

    gguf = embedded_gguf_path("smollm2-135m-instruct")
    ref = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    ours = load_causal_lm(embedded_source)
    ids = torch.tensor([[1, 9690, 198, 19556, 17, 2]])
    with torch.no_grad():
        assert torch.allclose(ref(ids).logits, ours(ids).logits, atol=1e-5)


def test_second_resolve_uses_cache(embedded_source):
    import time

    t = time.perf_counter()
    again = resolve_model("smollm2-135m-instruct")
    assert again.location == embedded_source.location and time.perf_counter() - t < 5


def test_local_checkpoint_and_errors(tiny_llama_dir, tmp_path):
    src = resolve_model(str(tiny_llama_dir))
    assert src.kind == "local" and load_causal_lm(src).config.hidden_size == 64
    with pytest.raises(ModelError, match="not found"):
        resolve_model(str(tmp_path / "nope.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="Not a model checkpoint"):
        resolve_model(str(tmp_path / "empty"))


def test_uncached_hub_id_fails_clearly_offline():
    src = resolve_model("no-such-org/no-such-model-xyz")
    assert src.kind == "hub"
    with pytest.raises(ModelError) as exc:
        load_tokenizer(src)
    assert "hf download" in exc.value.render()


def test_precision_follows_hardware():
    expected = torch.bfloat16 if hardware_supports_bf16("cpu") and not torch.cuda.is_available() else None
    if not torch.cuda.is_available():
        assert choose_dtype("auto") == (expected or torch.float32)
    assert choose_dtype("float32") == torch.float32


def test_list_models_shows_embedded(embedded_source):
    rows = list_models()
    assert any(
        r["name"] == "smollm2-135m-instruct" and r["kind"] == "embedded (GGUF)" and r["bytes"] > 50e6 for r in rows
    )
    assert any(r["kind"] == "cached checkpoint" for r in rows)
