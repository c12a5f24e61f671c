"""Packed classification rows give the padded path's logits, loss and gradients; attention stays within an example.

PYTHONPATH=src python -m pytest -q tests/train/speed/test_classify_fast.py
"""

from __future__ import annotations

import pytest
import torch

from tunesmith.config.classify import ClassifyConfig
from tunesmith.data.records import LabelRecord
from tunesmith.models.sources import ModelSource
from tunesmith.train.speed.classify_fast import (
    PackedClassifyCollator,
    pack_examples,
    packing_matches,
    pooled_logits,
    probe_rows,
    supports_packing,
)

LAYOUT = ("input_ids", "position_ids", "pool_index")
"""The packed layout the model's own attention reads (its block-diagonal mask from position_ids)."""
SEGMENTS = (*LAYOUT, "seg_index", "seg_valid")
"""Plus the per-example layout of :func:`segment_attention`."""

TEXTS = [
    "hi",
    "a much longer sentence with several words in it",
    "three words here",
    "what is the capital of France",
    "ok",
    "tell me a joke about computers and cats",
]


def _lora_classifier(tiny_llama_dir, smol_tokenizer, dropout: float = 0.0):
    from tunesmith.models.adapters import apply_lora
    from tunesmith.models.classifier import choose_pad_id, load_classifier

    pad = choose_pad_id(smol_tokenizer)
    torch.manual_seed(0)
    cfg = ClassifyConfig()
    model = load_classifier(ModelSource("tiny", str(tiny_llama_dir), "local"), ["a", "b", "c"], pad, cfg.model)
    lora = cfg.lora.model_copy(update={"lora_dropout": dropout, "r": 4, "lora_alpha": 8})
    model = apply_lora(model, lora, task_type="SEQ_CLS")
    with torch.no_grad():  # non-zero LoRA B, so the adapters change the logits
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model, pad


@pytest.fixture(scope="module")
def rows(smol_tokenizer):
    from tunesmith.models.classifier import encode

    recs = [LabelRecord(str(i), t, "abc"[i % 3]) for i, t in enumerate(TEXTS)]
    return encode(smol_tokenizer, recs, {"a": 0, "b": 1, "c": 2}, 64)[0]


def test_pack_examples_best_fit_decreasing():
    rows = pack_examples([5, 3, 9, 2, 4, 20], 10)
    assert sorted(i for r in rows for i in r) == list(range(6))
    lengths = [5, 3, 9, 2, 4, 20]
    assert [20] in [[lengths[i] for i in r] for r in rows]  # too long for a row: a row of its own
    assert all(sum(lengths[i] for i in r) <= 10 for r in rows if len(r) > 1)
    assert len(rows) == 4  # 20 | 9 | 5+4 | 3+2
    with pytest.raises(ValueError):
        pack_examples([1], 0)
    with pytest.raises(ValueError):
        pack_examples([0, 1], 4)


def test_collator_layout(rows):
    batch = PackedClassifyCollator(pad_token_id=2, row_tokens=16)(rows)
    lengths = [len(r["input_ids"]) for r in rows]
    assert "attention_mask" not in batch and int(batch["num_real_tokens"]) == sum(lengths)
    assert batch["labels"].tolist() == [r["labels"] for r in rows]
    flat_ids, flat_pos = batch["input_ids"].flatten(), batch["position_ids"].flatten()
    for i, r in enumerate(rows):  # the pooled index is each example's last token, at position n-1
        end = int(batch["pool_index"][i])
        assert flat_ids[end - lengths[i] + 1 : end + 1].tolist() == r["input_ids"]
        assert int(flat_pos[end]) == lengths[i] - 1
    assert (batch["input_ids"] == 2).sum() == batch["input_ids"].numel() - sum(lengths)
    seg, valid = batch["seg_index"], batch["seg_valid"]
    assert seg.shape == valid.shape == (len(rows), max(lengths)) and valid.sum(1).tolist() == lengths
    for i, r in enumerate(rows):  # each example's tokens in order, then its last token repeated
        assert flat_ids[seg[i]].tolist()[: lengths[i]] == r["input_ids"]
        assert (seg[i, lengths[i] :] == batch["pool_index"][i]).all()


@pytest.mark.parametrize("keys", [LAYOUT, SEGMENTS], ids=["mask", "segments"])
@pytest.mark.parametrize("row_tokens", [512, 16])
def test_packed_logits_equal_padded(tiny_llama_dir, smol_tokenizer, rows, row_tokens, keys):
    from tunesmith.models.classifier import pad_batch

    model, pad = _lora_classifier(tiny_llama_dir, smol_tokenizer)
    model.eval()
    packed = PackedClassifyCollator(pad, row_tokens)(rows)
    assert (packed["input_ids"].shape[0] == 1) == (row_tokens == 512)  # several rows with padded tails at 16
    with torch.no_grad():
        want = model(**pad_batch(rows, pad, "right")).logits
        plain = model(**{k: v for k, v in pad_batch(rows, pad, "right").items() if k != "position_ids"}).logits
        got = pooled_logits(model, *(packed[k] for k in keys))
    assert got.shape == (len(rows), 3)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got, plain, atol=1e-5, rtol=1e-4)  # as the model's own forward with a mask
    assert packing_matches(model, rows, pad) and not model.training


@pytest.mark.parametrize("keys", [LAYOUT, SEGMENTS], ids=["mask", "segments"])
def test_attention_stays_within_each_example(tiny_llama_dir, smol_tokenizer, rows, keys):
    model, pad = _lora_classifier(tiny_llama_dir, smol_tokenizer)
    model.eval()
    changed = [dict(rows[0], input_ids=[t + 7 for t in rows[0]["input_ids"]])] + rows[1:]
    collate = PackedClassifyCollator(pad, 512)
    with torch.no_grad():
        a = pooled_logits(model, *(collate(rows)[k] for k in keys))
        b = pooled_logits(model, *(collate(changed)[k] for k in keys))
    assert not torch.allclose(a[0], b[0])  # the changed example itself moves
    torch.testing.assert_close(a[1:], b[1:], atol=1e-6, rtol=0)  # its neighbours in the row do not


@pytest.mark.parametrize("keys", [LAYOUT, SEGMENTS], ids=["mask", "segments"])
def test_packed_loss_and_gradients_equal_padded(tiny_llama_dir, smol_tokenizer, rows, keys):
    from tunesmith.models.classifier import pad_batch

    model, pad = _lora_classifier(tiny_llama_dir, smol_tokenizer)
    model.train()  # lora_dropout=0: training mode is deterministic
    labels = torch.tensor([r["labels"] for r in rows])
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    def loss_and_grads(logits):
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        grads = torch.autograd.grad(loss, [p for _, p in trained])
        return loss, grads

    padded_loss, padded_grads = loss_and_grads(model(**pad_batch(rows, pad, "right")).logits)
    batch = PackedClassifyCollator(pad, 512)(rows)
    packed_loss, packed_grads = loss_and_grads(pooled_logits(model, *(batch[k] for k in keys)))
    torch.testing.assert_close(packed_loss, padded_loss, atol=1e-6, rtol=1e-5)
    assert any("score" in n for n, _ in trained) and any("lora_A" in n for n, _ in trained)
    for (name, _), g1, g2 in zip(trained, packed_grads, padded_grads):
        torch.testing.assert_close(g1, g2, atol=1e-6, rtol=1e-4, msg=name)


def test_trainer_takes_packed_rows_and_falls_back(tmp_path, tiny_llama_dir, smol_tokenizer, rows):
    from tunesmith.train.classify import make_trainer
    from tunesmith.train.speed.classify_fast import PackedClassifyCollator as Packed

    model, pad = _lora_classifier(tiny_llama_dir, smol_tokenizer)
    cfg = ClassifyConfig()
    cfg.train.max_steps, cfg.train.per_device_train_batch_size, cfg.train.save_strategy = 2, 3, "no"
    cfg.train.report_to, cfg.train.eval_strategy = "none", "no"
    trainer, packed = make_trainer(cfg, model, rows, rows, pad, tmp_path, use_bf16=False)
    assert packed and isinstance(trainer.data_collator, Packed) and model.training
    trainer.train()
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and metrics["eval_loss"] > 0
    cfg.train.packing = False
    _, packed = make_trainer(cfg, model, rows, rows, pad, tmp_path, use_bf16=False)
    assert not packed


def test_packed_step_autocasts(tmp_path, tiny_llama_dir, smol_tokenizer, rows, monkeypatch):
    import tunesmith.train.classify as classify

    seen = []

    def spy(*args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return pooled_logits(*args, **kwargs)

    monkeypatch.setattr(classify, "pooled_logits", spy)
    model, pad = _lora_classifier(tiny_llama_dir, smol_tokenizer)
    cfg = ClassifyConfig()
    cfg.train.max_steps, cfg.train.per_device_train_batch_size, cfg.train.save_strategy = 1, 3, "no"
    cfg.train.report_to, cfg.train.eval_strategy = "none", "no"
    trainer, packed = classify.make_trainer(cfg, model, rows, rows, pad, tmp_path, use_bf16=True)
    trainer.train()
    assert packed and seen == [True]  # bf16 like the padded path, whose model.forward accelerate autocasts


def test_probe_and_unsupported_models(rows):
    picked = probe_rows(rows, 4)
    lengths = sorted(len(r["input_ids"]) for r in rows)
    assert len(picked) == 4 and len(picked[0]["input_ids"]) == lengths[0]
    assert len(picked[-1]["input_ids"]) == lengths[-1]
    lin = torch.nn.Linear(2, 2)
    assert not supports_packing(lin) and not packing_matches(lin, rows, 2)
