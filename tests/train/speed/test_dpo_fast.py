"""The packed DPO fast path against TRL's DPOTrainer on a tiny model built in-process: same per-token log-probs,
same reference log-probs, same DPO loss, metrics and LoRA gradients (float tolerance)."""

from __future__ import annotations

import pytest
import torch

from tunesmith.data.records import Message, PreferencePair

PAIRS = [
    PreferencePair(
        [Message("user", f"Say the colour number {k}." + " Please" * (k % 3))],
        f"Blue {k}." + " and green" * k,
        f"No {k}!" + " never" * (5 - k),
        f"mem:{k}",
    )
    for k in range(6)
] + [PreferencePair([Message("user", "Say the colour number 0.")], "Red.", "Green, surely.", "mem:same-prompt")]


def _trainer(cls, model_dir, tokenizer, tmp_path, max_length, lora=True, attn="sdpa", **kw):
    from datasets import Dataset
    from peft import get_peft_model
    from trl import DPOConfig

    from tunesmith.config.dpo import DPORunConfig
    from tunesmith.models.adapters import to_peft_config
    from tunesmith.models.loading import load_causal_lm
    from tunesmith.models.sources import ModelSource

    torch.manual_seed(0)
    model = load_causal_lm(ModelSource("tiny", str(model_dir), "local"), attn_implementation=attn)
    if lora:
        model = get_peft_model(
            model, to_peft_config(DPORunConfig().lora.model_copy(update={"r": 4, "lora_dropout": 0.0}))
        )
    with torch.no_grad():  # a non-trivial adapter: the policy differs from the reference
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(hash(n) % 2**31))
    args = DPOConfig(
        output_dir=str(tmp_path / cls.__name__),
        max_length=max_length,
        per_device_train_batch_size=3,
        report_to="none",
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        loss_type=["sigmoid", "sft"],
        loss_weights=[1.0, 0.5],
        ld_alpha=0.7,
        precompute_ref_log_probs=not lora,
    )
    data = Dataset.from_list([p.to_trl() for p in PAIRS])
    return cls(model=model, args=args, train_dataset=data, processing_class=tokenizer, **kw)


def _step(trainer, rows):
    trainer.model.train()
    trainer.model.zero_grad()
    trainer._metrics["train"].clear()
    batch = trainer.data_collator(rows)
    loss = trainer._compute_loss(trainer.model, batch, False)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    with torch.no_grad():
        ref = trainer.compute_ref_log_probs(trainer.model, batch)
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
        kw = {k: v for k, v in batch.items() if k not in ("completion_mask",)}
        per_token = trainer.model(**kw, labels=labels, fused_lm_head=True, use_cache=False).log_probs
    return loss.detach(), grads, metrics, torch.cat(ref), per_token


@pytest.mark.parametrize(
    ("max_length", "row_tokens", "attn"),
    [
        (256, 1, "sdpa"),
        (44, 1, "sdpa"),
        (44, None, "sdpa"),
        (256, None, "sdpa"),
        (256, 120, "sdpa"),
        (44, None, "eager"),
    ],
)
def test_fast_path_equals_trl(tmp_path, tiny_llama_dir, smol_tokenizer, max_length, row_tokens, attn):
    from trl import DPOTrainer

    from tunesmith.train.speed.dpo_fast import FastDPOTrainer

    trl = _trainer(DPOTrainer, tiny_llama_dir, smol_tokenizer, tmp_path, max_length, attn=attn)
    fast = _trainer(
        FastDPOTrainer, tiny_llama_dir, smol_tokenizer, tmp_path, max_length, attn=attn, row_tokens=row_tokens
    )
    assert fast.fast_path == "on"
    rows = [{k: r[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for r in trl.train_dataset]
    if max_length == 44:  # some completions are cut (keep_start), as TRL cuts them
        assert any(len(r["prompt_ids"]) + len(r["chosen_ids"]) > 44 for r in rows)
    a, b = _step(trl, rows), _step(fast, rows)
    torch.testing.assert_close(b[4], a[4], rtol=1e-5, atol=1e-5)  # per-token policy log-probs, TRL's grid
    torch.testing.assert_close(b[3], a[3], rtol=1e-5, atol=1e-4)  # reference (adapter off) sequence log-probs
    torch.testing.assert_close(b[0], a[0], rtol=1e-5, atol=1e-6)  # DPO (+ SFT) loss
    assert a[2].keys() == b[2].keys()
    for k in a[2]:
        assert b[2][k] == pytest.approx(a[2][k], rel=1e-4, abs=1e-5), k
    assert a[1].keys() == b[1].keys() and len(a[1]) > 0
    for n in a[1]:
        torch.testing.assert_close(b[1][n], a[1][n], rtol=1e-4, atol=1e-5)


def test_full_fine_tuning_with_precomputed_reference_equals_trl(tmp_path, tiny_llama_dir, smol_tokenizer):
    """No LoRA: the head is trained (TRL's chunked log-prob function runs at the completion positions only) and the
    reference log-probs come precomputed in the batch."""
    from trl import DPOTrainer

    from tunesmith.train.speed.dpo_fast import FastDPOTrainer

    trl = _trainer(DPOTrainer, tiny_llama_dir, smol_tokenizer, tmp_path, 256, lora=False)
    fast = _trainer(FastDPOTrainer, tiny_llama_dir, smol_tokenizer, tmp_path, 256, lora=False)
    assert fast.fast_path == "on" and "ref_chosen_logps" in fast.train_dataset.column_names
    keys = ("prompt_ids", "chosen_ids", "rejected_ids", "ref_chosen_logps", "ref_rejected_logps")
    rows = [{k: r[k] for k in keys} for r in trl.train_dataset]
    a, b = _step(trl, rows), _step(fast, rows)
    torch.testing.assert_close(b[0], a[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b[4], a[4], rtol=1e-5, atol=1e-5)
    assert a[1].keys() == b[1].keys() and "model.embed_tokens.weight" in a[1]  # the tied head is trained
    for n in a[1]:
        torch.testing.assert_close(b[1][n], a[1][n], rtol=1e-4, atol=1e-5)


def test_packed_layout_shares_the_prompt():
    from tunesmith.train.speed.dpo_fast import PackedPairsCollator

    c = PackedPairsCollator(pad_token_id=0, max_length=None)
    batch = c(
        [
            {"prompt_ids": [1, 2, 3], "chosen_ids": [4, 5], "rejected_ids": [6]},
            {"prompt_ids": [7, 8], "chosen_ids": [9], "rejected_ids": [10, 11]},
        ]
    )
    assert batch["tunesmith_pack_ids"].tolist() == [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]]
    assert batch["tunesmith_pack_pos"].tolist() == [[0, 1, 2, 3, 4, 3, 0, 1, 2, 2, 3]]
    m = batch["tunesmith_pack_mask"][0, 0]
    assert m[5].tolist() == [True, True, True, False, False, True] + [False] * 5  # rejected: prompt + itself
    assert not m[6, :6].any() and m[10, 6:].tolist() == [True, True, False, True, True]
    # TRL's order: chosen 0 (4, 5), chosen 1 (9), rejected 0 (6), rejected 1 (10, 11); each from its predictor
    assert batch["tunesmith_pack_src"].tolist() == [2, 3, 7, 2, 7, 9]
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)[:, 1:]
    flat = batch["tunesmith_pack_ids"].reshape(-1)
    assert labels[labels != -100].tolist() == [4, 5, 9, 6, 10, 11]
    assert flat[batch["tunesmith_pack_src"] + 1].tolist()[:3] == [4, 5, 9]


def test_pairs_share_their_common_prompt_prefix():
    from tunesmith.train.speed.dpo_fast import PackedPairsCollator, plan_rows

    batch = PackedPairsCollator(pad_token_id=0)(
        [
            {"prompt_ids": [1, 2, 3], "chosen_ids": [4, 5], "rejected_ids": [6]},
            {"prompt_ids": [1, 2, 5], "chosen_ids": [9], "rejected_ids": [10, 11]},
        ]
    )
    assert batch["tunesmith_pack_ids"].tolist() == [[1, 2, 3, 4, 5, 6, 5, 9, 10, 11]]
    assert batch["tunesmith_pack_pos"].tolist() == [[0, 1, 2, 3, 4, 3, 2, 3, 3, 4]]
    m = batch["tunesmith_pack_mask"][0, 0]
    assert m[6].nonzero().flatten().tolist() == [0, 1, 6] and m[9].nonzero().flatten().tolist() == [0, 1, 6, 8, 9]
    assert batch["tunesmith_pack_src"].tolist() == [2, 3, 6, 2, 6, 8]
    # capacity: rows close before they pass row_tokens; a long pair gets its own row
    assert plan_rows([[1, 2], [1, 3], [1, 2]], [5, 5, 5], 9) == [([0, 1], 1), ([2], 2)]
    assert plan_rows([[1, 2], [1, 2]], [50, 5], 9) == [([0], 2), ([1], 2)]
    assert plan_rows([[1, 2], [1, 2]], [5, 5], None) == [([0, 1], 2)]


def test_keep_end_is_refused():
    from tunesmith.train.speed.dpo_fast import PackedPairsCollator

    with pytest.raises(ValueError, match="keep_start"):
        PackedPairsCollator(pad_token_id=0, truncation_mode="keep_end")(
            [{"prompt_ids": [1], "chosen_ids": [2], "rejected_ids": [3]}]
        )
