"""Packing keeps sample boundaries: a sample's logits inside a packed padding-free row equal its logits alone."""

from __future__ import annotations

import pytest
import torch

from tunesmith.data.records import Conversation, Message
from tunesmith.render.templates import render_conversation


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_padding_free_row_equals_samples_alone(smol_tokenizer, tiny_llama_dir, attn):
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32, attn_implementation=attn).eval()
    convs = [
        Conversation([Message("user", u), Message("assistant", a)], f"t:{i}")
        for i, (u, a) in enumerate(
            [("Hi", "Hello, how can I help you today?"), ("What is 2+2?", "4"), ("Name a colour.", "Blue is a colour.")]
        )
    ]
    rows = [render_conversation(smol_tokenizer, c) for c in convs]
    # exactly the batch TRL's padding-free collator gives the model: one flat row, position_ids restarting,
    # no attention_mask
    batch = DataCollatorForLanguageModeling(pad_token_id=smol_tokenizer.pad_token_id, padding_free=True)(
        [{"input_ids": r.input_ids, "labels": r.labels} for r in rows]
    )
    assert "attention_mask" not in batch
    lengths = [len(r.input_ids) for r in rows]
    assert batch["position_ids"][0].tolist() == [p for n in lengths for p in range(n)]
    # TRL's SFTTrainer.compute_loss passes use_cache=False (train and eval); transformers detects packed rows from
    # position_ids only without a KV cache, so this is what keeps attention inside each sample
    inputs = {k: v for k, v in batch.items() if k != "labels"} | {"use_cache": False}
    with torch.no_grad():
        packed = model(**inputs).logits[0]
        start = 0
        for r, n in zip(rows, lengths):
            alone = model(input_ids=torch.tensor([r.input_ids])).logits[0]
            torch.testing.assert_close(packed[start : start + n], alone, atol=1e-4, rtol=0)
            start += n
        # controls: without position ids, or with a KV cache (use_cache=True: transformers then skips packed-row
        # detection), the row attends across samples and the second sample's logits change
        second = slice(lengths[0], lengths[0] + lengths[1])
        for crossed in (
            model(input_ids=batch["input_ids"]).logits[0],
            model(**(inputs | {"use_cache": True})).logits[0],
        ):
            assert (crossed[second] - packed[second]).abs().max() > 1e-3
