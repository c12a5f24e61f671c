"""QLoRA loading: model.quantization -> BitsAndBytesConfig through the one loader, config checks, LoRA gradients on a
4-bit base equal the dequantised model's (after an eval pass too), and a QLoRA adapter served on its quantised base.

PYTHONPATH=src python -m pytest -q tests/models/test_quantization.py
"""

from __future__ import annotations

import pytest
import torch

from conftest import make_qlora_adapter, needs_bitsandbytes
from tunesmith.config.base import QUANTIZATIONS, ModelSection
from tunesmith.errors import ConfigError, ModelError


def test_config_names_and_checks():
    from tunesmith.config.classify import ClassifyConfig
    from tunesmith.config.dpo import DPORunConfig
    from tunesmith.config.load import load_config

    assert QUANTIZATIONS == ("nf4", "int8")
    assert ModelSection().quantization is None
    assert load_config(None, ["model.quantization=nf4"]).model.quantization == "nf4"
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.quantization=nf3"])
    assert "model.quantization" in e.value.render() and "nf4" in e.value.render()
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.quantization=int8", "lora.enabled=false"])
    assert "lora.enabled: true" in e.value.render()
    for cls, command in ((ClassifyConfig, "classify"), (DPORunConfig, "dpo")):
        with pytest.raises(ConfigError) as e:
            load_config(None, ["model.quantization=nf4"], model_cls=cls)
        assert f"tunesmith {command}" in e.value.render() and "tunesmith sft" in e.value.render()


def test_missing_bitsandbytes_is_a_clear_error(monkeypatch):
    import tunesmith.models.quantization as q

    monkeypatch.setattr(q, "is_installed", lambda name: False)
    with pytest.raises(ModelError) as e:
        q.quantized_load_kwargs("nf4", torch.float32)
    assert "tunesmith[qlora]" in str(e.value.problems[0].fix)
    assert q.quantized_load_kwargs(None, torch.float32) == {}


@needs_bitsandbytes
def test_bnb_config_mapping():
    from tunesmith.models.quantization import quantized_load_kwargs

    kw = quantized_load_kwargs("nf4", torch.bfloat16)
    qc = kw["quantization_config"]
    assert kw["device_map"] == {"": "cuda:0" if torch.cuda.is_available() else "cpu"}
    assert (qc.load_in_4bit, qc.bnb_4bit_quant_type, qc.bnb_4bit_use_double_quant) == (True, "nf4", True)
    assert qc.bnb_4bit_compute_dtype == torch.bfloat16 and not qc.load_in_8bit
    qc8 = quantized_load_kwargs("int8", torch.float32)["quantization_config"]
    assert qc8.load_in_8bit and not qc8.load_in_4bit and qc8.llm_int8_threshold == 6.0


def _lora_grads(model, ids, eval_first: bool) -> tuple[float, dict]:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0, init_lora_weights=False)
    peft = get_peft_model(model, cfg)
    if eval_first:  # what `tunesmith sft` does before training: eval_loss and samples without gradients
        peft.eval()
        with torch.no_grad():
            peft(input_ids=ids)
    peft.train()
    out = peft(input_ids=ids, labels=ids)
    out.loss.backward()
    return out.loss.item(), {n: p.grad.clone() for n, p in peft.named_parameters() if p.grad is not None}


@needs_bitsandbytes
def test_lora_gradients_on_nf4_equal_the_dequantised_models(tiny_llama_dir):
    """QLoRA trains LoRA on the 4-bit base: its gradients must be those of the same LoRA on the dequantised weights
    (fp32 compute), also after a pass without gradients (bitsandbytes' CPU repacking would make them 93% off)."""
    from tunesmith.models.loading import load_causal_lm
    from tunesmith.models.quantization import dequantize, model_quantization, prepare_for_training
    from tunesmith.models.sources import resolve_model

    src = resolve_model(str(tiny_llama_dir))
    ids = torch.randint(3, 1000, (1, 24), generator=torch.Generator().manual_seed(0))
    quantized = load_causal_lm(src, quantization="nf4")
    assert model_quantization(quantized) == "nf4"
    assert type(quantized.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    ref_loss, ref = _lora_grads(dequantize(load_causal_lm(src, quantization="nf4")), ids, False)
    for eval_first in (False, True):
        loss, grads = _lora_grads(prepare_for_training(load_causal_lm(src, quantization="nf4")), ids, eval_first)
        assert abs(loss - ref_loss) < 1e-5 and set(grads) == set(ref)
        worst = max(float((grads[k] - ref[k]).norm() / ref[k].norm()) for k in ref)
        assert worst < 1e-4, (eval_first, worst)
    full = load_causal_lm(src)  # the unquantised base: nf4 really changed the weights, so the check can fail
    plain = full.model.layers[0].self_attn.q_proj.weight
    deq = dequantize(load_causal_lm(src, quantization="nf4")).model.layers[0].self_attn.q_proj.weight
    assert 0.01 < float((plain - deq).norm() / plain.norm()) < 0.2


@needs_bitsandbytes
@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_qlora_adapter_is_served_on_its_quantised_base(tmp_path, tiny_llama_dir, quantization):
    from tunesmith.models.for_use import load_for_use

    make_qlora_adapter(tiny_llama_dir, tmp_path / "adapter", quantization)
    served = load_for_use(str(tiny_llama_dir), str(tmp_path / "adapter"))
    layer = served.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert served.quantization == quantization and not served.dequantized
    assert type(layer).__name__ == ("Linear4bit" if quantization == "nf4" else "Linear8bitLt")
    assert any(quantization in n for n in served.notes)
    merged_base = load_for_use(str(tiny_llama_dir), str(tmp_path / "adapter"), dequantize=True)
    layer = merged_base.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert type(layer) is torch.nn.Linear and layer.weight.dtype == torch.float32 and merged_base.dequantized
    assert getattr(merged_base.model.config, "quantization_config", None) is None
    plain = load_for_use(str(tiny_llama_dir), str(tmp_path / "adapter"), as_trained=False)
    assert plain.quantization is None
