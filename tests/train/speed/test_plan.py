"""The speed plan (tunesmith.train.speed.plan) and the trainer path it builds: decisions per hardware, and the chunked
loss and packed rows giving TRL's own eval_loss and first-step train loss on the same model and data.

    PYTHONPATH=src python -m pytest -q tests/train/speed/test_plan.py
"""

from __future__ import annotations

import pytest
import torch

from tunesmith.config.sft import RunConfig, TrainSection
from tunesmith.train.speed.plan import cpu_rows_per_pass, plan_speed, sft_overrides


def test_plan_on_cpu_defaults():
    plan = plan_speed(TrainSection(), "sdpa", device="cpu")
    assert (plan.layout, plan.chunked_loss, plan.attn_implementation, plan.liger, plan.micro_batches) == (
        "rows",
        True,
        "sdpa",
        False,
        4,  # max_length 256: two packed rows (512 tokens) per pass
    )
    assert sft_overrides(plan) == {
        "packing": False,
        "padding_free": False,
        "eval_packing": False,
        "dataset_kwargs": {"skip_prepare_dataset": True},
    }
    assert sft_overrides(plan, TrainSection()) == {
        **sft_overrides(plan),
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 4,
    }
    assert plan_speed(TrainSection(max_length=512), "sdpa", "cpu").micro_batches == 8  # one 512-token row per pass
    assert plan_speed(TrainSection(max_length=100), "sdpa", "cpu").rows_per_pass == 4  # 5 fit; 4 divides 8
    assert plan_speed(TrainSection(max_length=2048), "sdpa", "cpu").rows_per_pass == 1
    assert [cpu_rows_per_pass(b, 128) for b in (8, 6, 3, 1)] == [4, 3, 3, 1]
    assert plan_speed(TrainSection(micro_batch_size=8), "sdpa", "cpu").micro_batches == 1  # the whole batch in one pass
    assert plan_speed(TrainSection(packing=False), "sdpa", "cpu").layout == "padded"
    assert plan_speed(TrainSection(packing_strategy="wrapped"), "sdpa", "cpu").layout == "flat"
    assert plan_speed(TrainSection(packing_layout="flat"), "sdpa", "cpu").layout == "flat"
    assert plan_speed(TrainSection(chunked_loss=False, num_threads=1), "eager", "cpu").threads == 1
    micro = TrainSection(micro_batch_size=2, gradient_accumulation_steps=3)  # 8 rows per step as 4 passes of 2
    over = sft_overrides(plan_speed(micro, "sdpa", "cpu"), micro)
    assert (over["per_device_train_batch_size"], over["gradient_accumulation_steps"]) == (2, 12)
    with pytest.raises(ValueError, match="must divide"):
        TrainSection(micro_batch_size=3)


def test_plan_on_cuda_picks_varlen_flash_attention_and_liger_when_installed(monkeypatch):
    import tunesmith.models.loading as loading
    import tunesmith.train.speed.plan as speed
    from tunesmith.runtime.hardware import is_installed

    assert plan_speed(TrainSection(), "auto", device="cuda").attn_implementation == "sdpa" or is_installed("flash_attn")
    for module in (speed, loading):
        monkeypatch.setattr(module, "is_installed", lambda m: m in ("flash_attn", "liger_kernel"))
    plan = plan_speed(TrainSection(), "auto", device="cuda")
    assert (plan.attn_implementation, plan.layout, plan.liger, plan.micro_batches) == (
        "flash_attention_2",
        "flat",
        True,
        1,
    )
    assert sft_overrides(plan) == {"use_liger_kernel": True}
    assert plan_speed(TrainSection(), "auto", device="cpu").attn_implementation == "sdpa"  # never on CPU
    assert plan_speed(TrainSection(), "eager", device="cuda").attn_implementation == "eager"  # explicit choice kept


def _trainer(tiny_llama_dir, smol_tokenizer, tmp_path, **train):
    from tunesmith.models.adapters import apply_lora
    from tunesmith.models.loading import load_causal_lm
    from tunesmith.models.sources import resolve_model
    from tunesmith.render.rows import to_dataset
    from tunesmith.render.templates import Rendered
    from tunesmith.train.sft import _make_trainer, build_sft_config

    cfg = RunConfig()
    for k, v in {
        "max_steps": 1,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 64,
        "max_length": 64,
        "logging_steps": 1,
        "eval_strategy": "no",
        "save_strategy": "no",
        "bf16": False,
        "learning_rate": 1e-3,
        **train,
    }.items():
        setattr(cfg.train, k, v)
    cfg.lora.lora_dropout = 0.0
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(12):
        n = int(torch.randint(8, 30, (1,), generator=g))
        ids = torch.randint(3, 400, (n,), generator=g).tolist()
        rows.append(Rendered(ids, [-100] * (n // 2) + ids[n // 2 :], f"r{i}"))
    torch.manual_seed(0)
    model = apply_lora(load_causal_lm(resolve_model(str(tiny_llama_dir))), cfg.lora)
    plan = plan_speed(cfg.train, "sdpa", device="cpu")
    args = build_sft_config(cfg, tmp_path, False, overrides=sft_overrides(plan))
    eval_ds = to_dataset(rows[8:])
    return _make_trainer(model, smol_tokenizer, args, to_dataset(rows[:8]), eval_ds, plan, eval_rows=rows[8:]), plan


@pytest.mark.parametrize(
    "train", [{"chunked_loss": False}, {"packing_layout": "flat"}, {"packing_layout": "flat", "chunked_loss": False}]
)
def test_fast_path_matches_trl_loss(tiny_llama_dir, smol_tokenizer, tmp_path, train):
    """Packed rows + chunked loss against TRL's padding-free layout and/or TRL's own loss: the same first-step train
    loss within 1e-5 (fp32), and the same one eval_loss (the rows, unpacked, whatever the training layout)."""
    fast, plan = _trainer(tiny_llama_dir, smol_tokenizer, tmp_path / "a")
    assert plan.layout == "rows" and fast.tunesmith_chunked_loss
    ref, ref_plan = _trainer(tiny_llama_dir, smol_tokenizer, tmp_path / "b", **train)
    assert ref.tunesmith_chunked_loss == train.get("chunked_loss", True)
    e_fast, e_ref = fast.evaluate()["eval_loss"], ref.evaluate()["eval_loss"]
    assert abs(e_fast - e_ref) < 1e-5, (e_fast, e_ref)
    fast.train()
    ref.train()
    l_fast = [e["loss"] for e in fast.state.log_history if "loss" in e][0]
    l_ref = [e["loss"] for e in ref.state.log_history if "loss" in e][0]
    assert abs(l_fast - l_ref) < 1e-5, (l_fast, l_ref)
    assert fast._counter().tokens_seen == ref._counter().tokens_seen  # real tokens only (no padding counted)
