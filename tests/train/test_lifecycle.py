"""The run lifecycle every training command shares: report_to integrations, run.log, the resolved max_length reaching
TRL, refusals before any model loads, and an evaluation cost that is the evaluation's own peak memory."""

from __future__ import annotations

import json

import pytest

from conftest import build_tiny_llama


def _chat_data(path, n: int = 16):
    with path.open("w") as f:
        for i in range(n):
            f.write(
                json.dumps(
                    {
                        "messages": [
                            {"role": "user", "content": f"say {i}"},
                            {"role": "assistant", "content": f"{i} said"},
                        ]
                    }
                )
                + "\n"
            )
    return path


@pytest.fixture(scope="module")
def short_context_run(smol_tokenizer, tmp_path_factory):
    """A 3-step SFT run on a tiny model whose context (64 positions) is shorter than train.max_length (256), with
    train.report_to=tensorboard when TensorBoard is installed."""
    pytest.importorskip("tensorboard", reason="TensorBoard is not installed (pip install tensorboard)")
    from tunesmith import pipeline
    from tunesmith.config.load import load_config

    base = tmp_path_factory.mktemp("lifecycle")
    model = build_tiny_llama(smol_tokenizer, base / "tiny", hidden=32)
    cfg_json = json.loads((model / "config.json").read_text())
    cfg_json["max_position_embeddings"] = 64
    (model / "config.json").write_text(json.dumps(cfg_json))
    cfg = load_config(
        None,
        [
            f"model.name={model}",
            "model.dtype=float32",
            f"data.path={_chat_data(base / 'd.jsonl')}",
            f"train.output_dir={base / 'run'}",
            "train.max_steps=3",
            "train.max_length=256",
            "train.eval_steps=2",
            "train.logging_steps=1",
            "train.report_to=tensorboard",
            "eval.num_samples=0",
            "eval.before_training=false",
        ],
    )
    metrics = pipeline.run("sft", cfg)
    return base / "run", metrics


def test_report_to_tensorboard_writes_event_files(short_context_run):
    run_dir, _ = short_context_run
    events = list((run_dir / "logs").rglob("events.out.tfevents.*"))
    assert events and max(e.stat().st_size for e in events) > 100, list((run_dir / "logs").rglob("*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert "train/loss" in acc.Tags()["scalars"] and len(acc.Scalars("train/loss")) == 3


def test_run_log_holds_the_console_output(short_context_run):
    run_dir, metrics = short_context_run
    log = (run_dir / "run.log").read_text()
    assert "tunesmith sft" in log and "done in" in log and f"{metrics['eval_loss']:.4f}" in log
    assert "\x1b[" not in log  # no colour codes in the file


def test_trl_gets_the_max_length_capped_at_the_model_context(short_context_run):
    run_dir, metrics = short_context_run
    assert metrics["max_length"] == 64
    assert "max_length=64 " in (run_dir / "run.log").read_text()


def test_build_sft_config_uses_the_resolved_length(tmp_path):
    from tunesmith.config.load import load_config
    from tunesmith.train.sft import build_sft_config

    cfg = load_config(None, ["train.max_length=256"])
    assert build_sft_config(cfg, tmp_path, False, 64).max_length == 64
    assert build_sft_config(cfg, tmp_path, False).max_length == 256


def test_unknown_or_missing_integration_is_refused_before_any_model_loads(tmp_path):
    from tunesmith.config.load import load_config
    from tunesmith.errors import ConfigError
    from tunesmith.train.lifecycle import check_report_to

    with pytest.raises(ConfigError) as bad:
        load_config(None, ["train.report_to=tensorbored"])
    assert bad.value.problems[0].where.startswith("train.report_to") and "tensorboard" in bad.value.problems[0].reason
    cfg = load_config(None, ["train.report_to=clearml"])
    with pytest.raises(ConfigError) as exc:
        check_report_to(cfg)
    assert (
        exc.value.problems[0].where == "train.report_to=clearml" and "pip install clearml" in exc.value.problems[0].fix
    )


def test_report_to_reaches_every_trainer_config(tmp_path):
    """The same report_to (and checkpoint folder) arrives in SFTConfig, TrainingArguments (classify) and DPOConfig."""
    from tunesmith.config.classify import ClassifyConfig
    from tunesmith.config.dpo import DPORunConfig
    from tunesmith.config.load import load_config
    from tunesmith.train.classify import build_training_args
    from tunesmith.train.dpo import build_dpo_config
    from tunesmith.train.sft import build_sft_config

    sets = ["train.report_to=tensorboard"]
    args = [
        build_sft_config(load_config(None, sets), tmp_path, False),
        build_training_args(load_config(None, sets, model_cls=ClassifyConfig), tmp_path, False),
        build_dpo_config(load_config(None, sets, model_cls=DPORunConfig), tmp_path, False, precompute=False),
    ]
    for a in args:
        assert a.report_to == ["tensorboard"] and a.output_dir == str(tmp_path / "checkpoints")


def test_eval_cost_is_the_evals_own_peak_memory(tiny_llama_dir, tmp_path):
    """A process that held 1.5 GB before evaluating reports the evaluation's peak, not the earlier one."""
    import numpy as np

    from tunesmith.config.load import load_config
    from tunesmith.evaluate.baseline import evaluate_run
    from tunesmith.runtime.memory import peak_memory_bytes

    big = np.ones(1_500_000_000 // 8)
    big[::512] = 2.0  # touch every page
    del big
    before = peak_memory_bytes()
    cfg = load_config(
        None,
        [
            f"model.name={tiny_llama_dir}",
            f"data.path={_chat_data(tmp_path / 'd.jsonl')}",
            "eval.max_new_tokens=2",
            "eval.metrics=[exact_match]",
            "train.per_device_eval_batch_size=4",
        ],
    )
    m = evaluate_run(cfg, tmp_path / "eval", kind="baseline", method="prompting, zero-shot")
    assert before > 1.5e9
    assert m["cost"]["peak_memory_bytes"] < before - 1.0e9, (m["cost"]["peak_memory_bytes"], before)
