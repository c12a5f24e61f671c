"""DPO: the reference is not a second copy of the weights, held-out metrics are hand-checkable, a tiny run writes the
contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tunesmith.config.dpo import DPORunConfig
from tunesmith.config.load import load_config
from tunesmith.data.records import Message, PreferencePair
from tunesmith.evaluate.preference import PairLogps, pair_logps, preference_metrics, win_rate
from tunesmith.evaluate.stats import bootstrap_ci
from tunesmith.models.adapters import require_adapter
from tunesmith.models.loading import load_causal_lm
from tunesmith.models.sources import ModelSource

PAIRS = [
    PreferencePair([Message("user", f"Say the colour number {k}.")], f"Blue {k}.", f"No {k}!", f"mem:{k}")
    for k in range(6)
]


def _cfg(tmp_path, model_dir, *sets) -> DPORunConfig:
    base = [
        f"model.name={model_dir}",
        f"train.output_dir={tmp_path / 'run'}",
        "train.max_steps=2",
        "train.per_device_train_batch_size=2",
        "train.per_device_eval_batch_size=4",
        "train.eval_strategy=no",
        "train.max_length=64",
        "lora.r=4",
        "lora.lora_alpha=8",
        "eval.win_rate_prompts=2",
        "eval.max_new_tokens=4",
        "eval.bootstrap_samples=200",
        "model.dtype=float32",
    ]
    return load_config(None, base + list(sets), model_cls=DPORunConfig)


def _storages(*modules) -> dict[int, int]:
    """data_ptr -> bytes of every distinct parameter/buffer storage of the modules."""
    out = {}
    for m in modules:
        if m is None:
            continue
        for t in list(m.parameters()) + list(m.buffers()):
            out[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return out


def _plain_logps(model, trainer, rows) -> torch.Tensor:
    """Summed response log-probs of chosen then rejected, from full logits of a plain model (no TRL head)."""
    batch = trainer.data_collator([{k: r[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for r in rows])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    lp = torch.log_softmax(logits, -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
    return (lp * batch["completion_mask"][:, 1:]).sum(1)


@pytest.fixture(scope="module")
def tiny_source(tiny_llama_dir):
    return ModelSource("tiny", str(tiny_llama_dir), "local")


def _save_random_sft_adapter(tiny_source, path):
    """A LoRA r=4 "SFT" adapter with random lora_B (so it changes the model), saved to ``path``; returns the PEFT
    model."""
    from peft import get_peft_model

    from tunesmith.models.adapters import to_peft_config

    sft = get_peft_model(load_causal_lm(tiny_source), to_peft_config(DPORunConfig().lora.model_copy(update={"r": 4})))
    with torch.no_grad():
        for n, p in sft.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    sft.save_pretrained(path)
    return sft


def test_fresh_lora_reference_is_the_same_weights_with_the_adapter_disabled(
    tmp_path, tiny_source, tiny_llama_dir, smol_tokenizer
):
    from tunesmith.train.dpo import build_policy, make_trainer

    cfg = _cfg(tmp_path, tiny_llama_dir)
    base = load_causal_lm(tiny_source)
    base_bytes = sum(_storages(base).values())
    model, peft_config = build_policy(cfg, base)
    trainer = make_trainer(cfg, model, peft_config, smol_tokenizer, PAIRS[:4], PAIRS[4:], tmp_path)
    assert trainer.ref_model is None and list(trainer.model.peft_config) == ["default"]
    # every base weight of the policy is the tensor loaded once: same storage, nothing duplicated
    policy = _storages(trainer.model)
    assert set(_storages(base)) <= set(policy)
    lora_bytes = sum(p.numel() * p.element_size() for n, p in trainer.model.named_parameters() if "lora_" in n)
    assert sum(policy.values()) == base_bytes + lora_bytes and lora_bytes < 0.05 * base_bytes
    # make the adapter non-trivial: the policy moves, the reference stays the plain base model
    with torch.no_grad():
        for n, p in trainer.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    rows = list(trainer.eval_dataset)
    lp = pair_logps(trainer, rows, batch_size=2)
    fresh = load_causal_lm(tiny_source)
    expected = _plain_logps(fresh, trainer, rows)
    torch.testing.assert_close(torch.cat([lp.ref_chosen, lp.ref_rejected]), expected, rtol=1e-4, atol=1e-3)
    assert (torch.cat([lp.chosen, lp.rejected]) - expected).abs().max() > 0.1


def test_continuing_an_sft_adapter_keeps_one_copy_of_the_base(tmp_path, tiny_source, tiny_llama_dir, smol_tokenizer):
    from peft import PeftModel

    from tunesmith.train.dpo import build_policy, make_trainer

    _save_random_sft_adapter(tiny_source, tmp_path / "sft" / "adapter")
    cfg = _cfg(tmp_path, tiny_llama_dir, f"model.adapter={tmp_path / 'sft'}")
    base = load_causal_lm(tiny_source)
    base_bytes = sum(_storages(base).values())
    model, peft_config = build_policy(cfg, base)
    assert peft_config is None and isinstance(model, PeftModel)
    trainer = make_trainer(cfg, model, peft_config, smol_tokenizer, PAIRS[:4], PAIRS[4:], tmp_path)
    assert trainer.ref_model is None and set(trainer.model.peft_config) == {"default", "ref"}
    policy = _storages(trainer.model)
    adapters = sum(p.numel() * p.element_size() for n, p in trainer.model.named_parameters() if "lora_" in n)
    assert sum(policy.values()) == base_bytes + adapters and adapters < 0.05 * base_bytes  # two LoRA copies, one base
    # the reference is the SFT model (base + its adapter), before and after the trained adapter moves
    rows = list(trainer.eval_dataset)
    sft_logps = _plain_logps(
        PeftModel.from_pretrained(load_causal_lm(tiny_source), str(tmp_path / "sft" / "adapter")).eval(), trainer, rows
    )
    with torch.no_grad():
        for n, p in trainer.model.named_parameters():
            if "lora_A.default" in n:
                p.add_(0.3)
    lp = pair_logps(trainer, rows, batch_size=2)
    torch.testing.assert_close(torch.cat([lp.ref_chosen, lp.ref_rejected]), sft_logps, rtol=1e-4, atol=1e-3)
    assert (torch.cat([lp.chosen, lp.rejected]) - sft_logps).abs().max() > 0.1


def test_preference_metrics_by_hand():
    lp = PairLogps(
        chosen=torch.tensor([-10.0, -12.0, -9.0, -20.0]),
        rejected=torch.tensor([-11.0, -11.0, -15.0, -20.0]),
        ref_chosen=torch.tensor([-10.0, -10.0, -10.0, -20.0]),
        ref_rejected=torch.tensor([-10.0, -10.0, -10.0, -21.0]),
    )
    m = preference_metrics(lp, beta=0.5, n_resamples=500)
    # rewards chosen: 0.5*[0, -2, 1, 0] = [0, -1, .5, 0]; rejected: 0.5*[-1, -1, -5, 1] = [-.5, -.5, -2.5, .5]
    assert m["reward_accuracy"] == 0.5  # pairs 0 and 2
    assert m["reward_margin"] == pytest.approx((0.5 - 0.5 + 3.0 - 0.5) / 4)
    assert (m["rewards_chosen"], m["rewards_rejected"]) == (pytest.approx(-0.125), pytest.approx(-0.75))
    assert (m["logps_chosen"], m["ref_logps_rejected"]) == (pytest.approx(-12.75), pytest.approx(-12.75))
    assert m["reference_logp_accuracy"] == 0.25  # only pair 3: -20 > -21
    lo, hi = m["reward_accuracy_ci"]
    assert 0.0 <= lo < 0.5 < hi <= 1.0


def test_bootstrap_ci_is_seeded_and_narrows_with_more_pairs():
    few = [1.0] * 12 + [0.0] * 8
    assert bootstrap_ci(few, seed=3) == bootstrap_ci(few, seed=3)
    lo, hi = bootstrap_ci(few, n_resamples=2000)
    lo_many, hi_many = bootstrap_ci(few * 10, n_resamples=2000)
    assert lo < lo_many < 0.6 < hi_many < hi
    assert hi_many - lo_many == pytest.approx(2 * 1.96 * (0.6 * 0.4 / 200) ** 0.5, abs=0.03)  # normal approximation
    assert bootstrap_ci([1.0, 1.0, 1.0]) == (1.0, 1.0)


def test_win_rate_counts_ties_half():
    r = win_rate([0.5, 0.2, 0.3, 0.9], [0.1, 0.2, 0.4, 0.0], n_resamples=200)
    assert (r["win_rate"], r["wins"], r["ties"], r["losses"], r["prompts"]) == (0.625, 2, 1, 1, 4)


def test_tiny_dpo_run_writes_the_shared_contract(tmp_path, tiny_llama_dir):
    from peft import PeftModel

    from tunesmith.train.dpo import run_dpo

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p.to_trl()) + "\n" for p in PAIRS * 2), encoding="utf-8")
    cfg = _cfg(tmp_path, tiny_llama_dir, f"data.path={data}", "data.eval_fraction=0.25", "eval.win_metric=rougeL")
    m = run_dpo(cfg)
    run = Path(cfg.train.output_dir)
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["kind"] == "dpo" and saved["model"] == str(tiny_llama_dir) and saved["global_step"] == 2
    assert saved["fast_path"] == "on"  # tunesmith's packed DPO pass (tests/train/speed/test_dpo_fast.py)
    assert set(saved["task_metrics"]) == {
        "reward_accuracy",
        "reward_margin",
        "logps_chosen",
        "logps_rejected",
        "rewards_chosen",
        "rewards_rejected",
    }
    assert saved["win_rate"]["metric"] == "rougeL" and saved["win_rate"]["prompts"] == 2
    assert (
        saved["cost"]["parameters"] > saved["cost"]["trainable_parameters"] > 0
        and saved["cost"]["peak_memory_bytes"] > 0
    )
    assert saved["data"]["train_pairs"] == 9 and saved["held_out"]["pairs"] == 3 == m["held_out"]["pairs"]
    preds = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    lines = [int(p["id"].rsplit(":", 1)[1]) for p in preds]
    assert (
        len(preds) == 3 and lines == sorted(lines) and all(p["reference"] == "chosen" for p in preds)
    )  # eval-set (file) order
    for name, value in saved["task_metrics"].items():  # every task metric is the mean of its per-pair score
        assert sum(p["scores"][name] for p in preds) / len(preds) == pytest.approx(
            value, rel=1e-6, abs=1e-6
        )  # float32 means
    assert all(p["prediction"] == ("chosen" if p["scores"]["reward_margin"] > 0 else "rejected") for p in preds)
    from tunesmith.evaluate.report import build_report  # the decision report reads a DPO run like any other

    rep = build_report([run, run])
    assert rep["metrics"] == list(saved["task_metrics"])
    lo, hi = rep["runs"][0].ci["reward_margin"]
    assert lo <= saved["task_metrics"]["reward_margin"] <= hi
    assert len((run / "generations.jsonl").read_text().splitlines()) == 2
    # the saved adapter is only the trained one and reloads on the base
    assert {"adapter_config.json", "adapter_model.safetensors", "generation_config.json"} <= {
        p.name for p in (run / "adapter").iterdir()
    }
    reloaded = PeftModel.from_pretrained(
        load_causal_lm(ModelSource("tiny", str(tiny_llama_dir), "local")), str(run / "adapter")
    )
    assert list(reloaded.peft_config) == ["default"]


def test_merge_mode_folds_the_sft_adapter_into_the_base(tmp_path, tiny_source, tiny_llama_dir):
    from peft import PeftModel

    from tunesmith.train.dpo import build_policy

    sft = _save_random_sft_adapter(tiny_source, tmp_path / "sft" / "adapter")
    assert require_adapter(str(tmp_path / "sft"), "model.adapter") == tmp_path / "sft" / "adapter"
    cfg = _cfg(tmp_path, tiny_llama_dir, f"model.adapter={tmp_path / 'sft'}", "model.adapter_mode=merge")
    model, peft_config = build_policy(cfg, load_causal_lm(tiny_source))
    assert not isinstance(model, PeftModel) and peft_config.r == 4
    ids = torch.tensor([[1, 5, 9, 42, 7]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, sft.eval()(input_ids=ids).logits, rtol=1e-4, atol=1e-4)
