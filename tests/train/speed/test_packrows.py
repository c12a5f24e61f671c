"""Packed rows (tunesmith.train.speed.packrows): exact collation, and each sample's logits in a packed [batch, L] row
equal its logits alone (attention never crosses samples, nor rows).

    PYTHONPATH=src python -m pytest -q tests/train/speed/test_packrows.py
"""

from __future__ import annotations

import pytest
import torch

from tunesmith.train.speed.packrows import PackedRowsCollator, pack_rows, row_position_ids


def test_collator_token_by_token():
    rows = [
        {"input_ids": [5, 6, 7, 8, 9], "labels": [5, 6, -100, 8, 9], "seq_lengths": [2, 3]},
        {"input_ids": [3, 4], "labels": [-100, 4], "seq_lengths": [2]},
    ]
    b = PackedRowsCollator(pad_token_id=0)(rows)
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 9], [3, 4, 0, 0, 0]]
    assert b["position_ids"].tolist() == [[0, 1, 0, 1, 2], [0, 1, 0, 1, 2]]
    # every sample's first token and the padding tail are never trained
    assert b["labels"].tolist() == [[-100, 6, -100, 8, 9], [-100, 4, -100, -100, -100]]
    assert int(b["num_real_tokens"]) == 7 and "attention_mask" not in b
    assert PackedRowsCollator(0, pad_to_multiple_of=4)(rows)["input_ids"].shape == (2, 8)
    assert row_position_ids([3], 5) == [0, 1, 2, 0, 1]


def test_pack_rows_best_fit_keeps_samples_whole():
    from datasets import Dataset

    lengths = [7, 5, 4, 3, 1]
    ds = Dataset.from_dict({"input_ids": [list(range(n)) for n in lengths], "labels": [[1] * n for n in lengths]})
    packed = pack_rows(ds, 8)
    assert sorted(sorted(r) for r in packed["seq_lengths"]) == [[1, 7], [3, 5], [4]]
    assert sum(len(r) for r in packed["input_ids"]) == sum(lengths)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_rows_equal_samples_alone(smol_tokenizer, tiny_llama_dir, attn):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32, attn_implementation=attn).eval()
    g = torch.Generator().manual_seed(0)
    samples = [torch.randint(3, 500, (n,), generator=g).tolist() for n in (6, 4, 9, 3)]
    rows = [
        {"input_ids": samples[0] + samples[1], "labels": samples[0] + samples[1], "seq_lengths": [6, 4]},
        {"input_ids": samples[2] + samples[3], "labels": samples[2] + samples[3], "seq_lengths": [9, 3]},
    ]
    batch = PackedRowsCollator(smol_tokenizer.pad_token_id)(rows)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        spans = [(0, 0, 6), (0, 6, 10), (1, 0, 9), (1, 9, 12)]
        for s, (row, a, z) in zip(samples, spans):
            alone = model(input_ids=torch.tensor([s])).logits[0]
            torch.testing.assert_close(logits[row, a:z], alone, atol=1e-4, rtol=0)
        # control: without position ids the second sample of row 0 attends to the first
        crossed = model(input_ids=batch["input_ids"]).logits[0, 6:10]
        assert (crossed - logits[0, 6:10]).abs().max() > 1e-3
