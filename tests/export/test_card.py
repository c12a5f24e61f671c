"""The model card (README.md) of an adapter or merged folder: Hugging Face front matter, data and fingerprint, metrics
before/after with the prompting baseline, the decision verdict, the serving contract, the config.

    .venv/bin/python -m pytest -q tests/export/test_card.py
"""

import json

import yaml


def _run(tmp_path):
    run = tmp_path / "gsm-run"
    (run / "adapter").mkdir(parents=True)
    (run / "eval").mkdir()
    (run / "baseline").mkdir()
    cfg = {
        "model": {"name": "smollm2-135m-instruct"},
        "data": {"name": None, "path": "/data/gsm8k/train.jsonl", "eval_fraction": 0.1, "split_seed": 1234},
        "lora": {"enabled": True, "r": 16, "lora_alpha": 32},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "manifest.json").write_text(
        json.dumps({"dataset_fingerprint": "abc123def4567890", "command": ["tunesmith", "sft", "gsm.yaml"]})
    )
    metrics = {
        "kind": "sft",
        "eval_loss_before": 1.5,
        "eval_loss": 0.75,
        "perplexity_before": 4.4817,
        "perplexity": 2.117,
        "data": {"load": {"rows_read": 100, "kept": 98, "format": "alpaca"}},
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "eval" / "metrics.json").write_text(json.dumps({"task_metrics": {"exact_match": 0.42}}))
    (run / "baseline" / "metrics.json").write_text(json.dumps({"task_metrics": {"exact_match": 0.05}}))
    (run / "decision.json").write_text(
        json.dumps({"verdict": "fine-tuning meets every target", "verdict_lines": ["exact_match >= 0.4: SFT 0.42"]})
    )
    (run / "adapter" / "serving.json").write_text(
        json.dumps({"format": 1, "system_prompt": "End with #### <number>.", "generation": {"do_sample": False}})
    )
    return run


def test_card_of_an_adapter_in_a_run(tmp_path):
    from tunesmith.export.card import write_model_card

    run = _run(tmp_path)
    path = write_model_card(run / "adapter", run, base="smollm2-135m-instruct", library="peft")
    card = path.read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front == {
        "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "library_name": "peft",
        "license": "apache-2.0",
        "tags": ["tunesmith", "sft", "trl", "lora", "peft"],
        "datasets": ["train.jsonl"],
        "pipeline_tag": "text-generation",
    }
    assert "# gsm-run" in card and "LoRA r=16, alpha=32" in card
    assert "fingerprint: `abc123def4567890`" in card and "98 of 100 records kept" in card
    assert "| eval_loss | 1.5 | 0.75 |" in card and "| perplexity | 4.482 | 2.117 |" in card
    assert "| exact_match (task metric; before = prompting baseline) | 0.05 | 0.42 |" in card
    assert "**Decision verdict:** fine-tuning meets every target" in card and "- exact_match >= 0.4: SFT 0.42" in card
    assert '- system prompt: "End with #### <number>."' in card
    assert "tunesmith sft gsm.yaml" in card and "## Intended use" in card and "lora_alpha: 32" in card


def test_card_of_a_folder_without_a_run(tmp_path):
    from tunesmith.export.card import render_model_card

    card = render_model_card(tmp_path, None, base="my/base", library="transformers", title="merged")
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["base_model"] == "my/base" and front["library_name"] == "transformers" and front["license"] == "other"
    assert "# merged" in card and "No run folder was found" in card
