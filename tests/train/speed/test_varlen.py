"""Per-sample attention for packed rows (tunesmith.train.speed.varlen): logits and gradients equal SDPA's with the
block-diagonal mask, padding and KV-cache calls take SDPA's own path, and the model goes back to SDPA afterwards.

    PYTHONPATH=src python -m pytest -q tests/train/speed/test_varlen.py
"""

from __future__ import annotations

import torch

from tunesmith.train.speed import varlen
from tunesmith.train.speed.packrows import PackedRowsCollator


def _model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")


def _batch(tok):
    g = torch.Generator().manual_seed(0)
    samples = [torch.randint(3, 500, (n,), generator=g).tolist() for n in (6, 4, 9, 3, 12)]
    rows = [
        {"input_ids": samples[0] + samples[1] + samples[4], "labels": [1] * 22, "seq_lengths": [6, 4, 12]},
        {"input_ids": samples[2] + samples[3], "labels": [1] * 12, "seq_lengths": [9, 3]},
    ]
    return samples, PackedRowsCollator(tok.pad_token_id)(rows)


def test_segment_bounds_cut_where_positions_restart():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]])
    assert varlen.segment_bounds(pos) == [[(0, 3), (3, 5), (5, 6)], [(0, 6)]]


def test_logits_and_gradients_equal_sdpa_with_the_block_mask(smol_tokenizer, tiny_llama_dir):
    _, batch = _batch(smol_tokenizer)
    ref, fast = _model(tiny_llama_dir), _model(tiny_llama_dir)
    assert varlen.enable(fast) and fast.config._attn_implementation == varlen.NAME
    outs = []
    for m in (ref, fast):
        m.train()
        logits = m(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        logits.float().pow(2).mean().backward()
        outs.append((logits.detach(), m.model.layers[0].self_attn.q_proj.weight.grad.clone()))
    torch.testing.assert_close(outs[1][0], outs[0][0], atol=2e-5, rtol=0)
    torch.testing.assert_close(outs[1][1], outs[0][1], atol=1e-6, rtol=1e-4)
    # the control: one sample per row (no position restart) differs, so the comparison above is not trivial
    crossed = fast(input_ids=batch["input_ids"], use_cache=False).logits
    assert (crossed - outs[1][0]).abs().max() > 1e-3


def test_padding_masks_and_generation_take_sdpa_path(smol_tokenizer, tiny_llama_dir):
    ref, fast = _model(tiny_llama_dir).eval(), _model(tiny_llama_dir).eval()
    varlen.enable(fast)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [0, 0, 11, 12, 13, 14]])
    mask = torch.tensor([[1] * 6, [0, 0, 1, 1, 1, 1]])
    with torch.no_grad():
        torch.testing.assert_close(
            fast(input_ids=ids, attention_mask=mask).logits, ref(input_ids=ids, attention_mask=mask).logits
        )
        kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
        assert fast.generate(input_ids=ids, attention_mask=mask, **kw).tolist() == (
            ref.generate(input_ids=ids, attention_mask=mask, **kw).tolist()
        )
    varlen.disable(fast)
    assert fast.config._attn_implementation == "sdpa"


def test_sliding_window_models_are_left_alone(tiny_llama_dir):
    m = _model(tiny_llama_dir)
    m.config.sliding_window = 4
    assert "sliding_window" in varlen.supports_varlen(m) and not varlen.enable(m)
    assert m.config._attn_implementation == "sdpa"


def test_bf16_model_attends_in_fp32_and_returns_bf16(smol_tokenizer, tiny_llama_dir):
    """bf16 weights: the per-sample kernel computes in fp32 on CPU; the output stays bf16 and agrees with SDPA's
    block-mask path within bf16 rounding."""
    from transformers import AutoModelForCausalLM

    _, batch = _batch(smol_tokenizer)
    load = lambda: AutoModelForCausalLM.from_pretrained(  # noqa: E731
        tiny_llama_dir, dtype=torch.bfloat16, attn_implementation="sdpa"
    ).eval()
    ref, fast = load(), load()
    varlen.enable(fast)
    seen = []
    fast.model.layers[0].self_attn.register_forward_hook(lambda m, a, out: seen.append(out[0].dtype))
    with torch.no_grad():
        kw = dict(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
        a, b = ref(**kw).logits.float(), fast(**kw).logits.float()
    assert seen == [torch.bfloat16]
    assert (a - b).abs().max() < 0.05 * a.abs().max()


def test_the_kernel_stays_fp32_inside_a_bf16_autocast_step(monkeypatch):
    """SDPA is on CPU autocast's bf16 list: inside a bf16 training step the per-sample calls must still get fp32
    inputs with autocast off (in bf16 the CPU kernel's backward ran 3-4x slower), and split rows give the gradient."""
    seen, kernel = [], varlen._causal

    def spy(q, k, v, scaling):
        seen.append((q.dtype, torch.is_autocast_enabled("cpu")))
        return kernel(q, k, v, scaling)

    monkeypatch.setattr(varlen, "_causal", spy)
    module = type("Attn", (), {"is_causal": True, "num_key_value_groups": 1})()
    q, k, v = (torch.randn(2, 2, 7, 8, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    pos = torch.tensor([[0, 1, 2, 0, 1, 2, 3]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = varlen.varlen_sdpa_forward(module, q, k, v, None, position_ids=pos)
    out.float().sum().backward()
    assert seen == [(torch.float32, False)] * 4  # 2 rows x 2 samples
    assert out.dtype == torch.bfloat16 and out.shape == (2, 7, 2, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0]] * 3 + [[0, 0, 0, 1, 1, 1, 1]] * 4).bool().tril()
    want = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
    assert torch.allclose(out.float(), want.transpose(1, 2), atol=2e-2)
    assert q.grad is not None and q.grad.abs().sum() > 0
