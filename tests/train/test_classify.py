"""Classification head on a decoder LLM: pooling, label data, metrics, save/reload, predict, prompting baseline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, SHARED_DATA, needs_shared
from tunesmith.config.classify import ClassifyConfig
from tunesmith.config.load import load_config
from tunesmith.data.labels import clean, load_label_data, read_table, to_records
from tunesmith.data.records import LabelRecord
from tunesmith.data.split import stratified_split
from tunesmith.errors import ConfigError, DataError
from tunesmith.models.sources import ModelSource

TOPICS = {
    "sports": [
        "who won the cup final",
        "the team scored a goal",
        "great match today",
        "the striker was injured",
        "tennis final tonight",
        "he ran a marathon",
    ],
    "food": [
        "this pasta is delicious",
        "I love pizza with cheese",
        "how to bake bread",
        "the soup was too salty",
        "fresh apples from the market",
        "a recipe for pancakes",
    ],
    "tech": [
        "my laptop will not boot",
        "install the new driver",
        "the wifi keeps dropping",
        "python throws an error",
        "update the phone firmware",
        "the screen is flickering",
    ],
}


def _write_csv(path: Path) -> Path:
    lines = ["text,category"]
    for label, texts in TOPICS.items():
        lines += [f'"{t}",{label}' for t in texts]
    path.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    return path


def _cfg(tmp_path, model_dir, **over) -> ClassifyConfig:
    sets = [
        f"model.name={model_dir}",
        f"data.path={_write_csv(tmp_path / 'topics.csv')}",
        "data.eval_fraction=0.34",
        "labels.label_column=category",
        f"train.output_dir={tmp_path / 'run'}",
        "train.max_steps=3",
        "train.per_device_train_batch_size=4",
        "train.learning_rate=1e-2",
        "train.eval_strategy='no'",
        "train.max_length=32",
    ]
    sets += [f"{k}={v}" for k, v in over.items()]
    return load_config(None, sets, model_cls=ClassifyConfig)


@pytest.fixture(scope="module")
def tiny_classifier(tiny_llama_dir, smol_tokenizer):
    from tunesmith.models.classifier import choose_pad_id, load_classifier

    pad = choose_pad_id(smol_tokenizer)
    model = load_classifier(
        ModelSource("tiny", str(tiny_llama_dir), "local"), ["a", "b", "c"], pad, ClassifyConfig().model
    )
    return model.eval(), pad


def test_pad_id_never_occurs_in_encoded_text(smol_tokenizer):
    from tunesmith.models.classifier import choose_pad_id, encode

    pad = choose_pad_id(smol_tokenizer)
    assert pad == smol_tokenizer.eos_token_id == 2  # SmolLM2: pad == eos == <|im_end|>
    rows, truncated = encode(smol_tokenizer, [LabelRecord("x", "stop <|im_end|> here <|im_start|>", "a")], {"a": 0}, 64)
    assert pad not in rows[0]["input_ids"] and 1 not in rows[0]["input_ids"]
    assert rows[0]["labels"] == 0 and truncated == 0
    rows, truncated = encode(smol_tokenizer, [LabelRecord("x", "one two three four five six", "a")], None, 3)
    assert len(rows[0]["input_ids"]) == 3 and truncated == 1 and "labels" not in rows[0]


def test_pooling_same_logits_left_and_right_padding(tiny_classifier, smol_tokenizer):
    from tunesmith.models.classifier import encode, pad_batch

    model, pad = tiny_classifier
    recs = [
        LabelRecord(str(i), t, "a")
        for i, t in enumerate(["hi", "a much longer sentence with <|im_end|> inside it", "three words here"])
    ]
    rows, _ = encode(smol_tokenizer, recs, None, 64)
    with torch.no_grad():
        right = model(**pad_batch(rows, pad, "right")).logits
        left = model(**pad_batch(rows, pad, "left")).logits
        alone = torch.cat([model(input_ids=torch.tensor([r["input_ids"]])).logits for r in rows])
    assert right.shape == (3, 3)
    torch.testing.assert_close(left, right, atol=1e-5, rtol=0)
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=0)  # the last real token is the one pooled


def test_metrics_match_hand_computed(tmp_path):
    from tunesmith.evaluate.classification import classification_metrics, write_eval_artifacts

    refs = ["a", "a", "a", "b", "b", "c"]
    preds = ["a", "a", "b", "b", "unparsed", "a"]
    m = classification_metrics(refs, preds, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(3 / 6)
    # a: P=2/3 R=2/3 F=2/3; b: P=1/2 R=1/2 F=1/2; c: P=0 R=0 F=0
    assert m["per_class"]["a"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3})
    assert m["per_class"]["b"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.5 + 0) / 3)
    assert m["confusion_matrix"] == [[2, 1, 0, 0], [0, 1, 0, 1], [1, 0, 0, 0]]
    assert m["unparsed_rate"] == pytest.approx(1 / 6)
    recs = [LabelRecord(f"id{i}", f"t{i}", r) for i, r in enumerate(refs)]
    out = write_eval_artifacts(
        tmp_path, kind="classify", model="m", records=recs, predictions=preds, names=["a", "b", "c"]
    )
    assert not (tmp_path / "metrics.json").exists()  # the run writes metrics.json last, itself
    assert out["kind"] == "classify" and out["task_metrics"] == {
        "accuracy": 0.5,
        "macro_f1": pytest.approx(m["macro_f1"]),
    }
    lines = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == [f"id{i}" for i in range(6)] and lines[2]["scores"] == {"accuracy": 0.0}
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 1000


def test_label_outside_set_reports_physical_line(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text('text,label\r\n"multi\r\nline text",ham\r\nfine,spam\r\nbad one,eggs\r\n', encoding="utf-8")
    cfg = load_config(None, [f"data.path={f}", "labels.names=[ham, spam]"], model_cls=ClassifyConfig)
    with pytest.raises(DataError) as exc:
        load_label_data(cfg)
    assert len(exc.value.problems) == 1
    assert exc.value.problems[0].where == f"{f}:5" and "'eggs'" in exc.value.problems[0].reason
    cfg = load_config(
        None,
        [f"data.path={f}", "labels.names=[ham, spam]", "labels.unknown_labels=drop", "data.eval_fraction=0"],
        model_cls=ClassifyConfig,
    )
    train, _, names, report = load_label_data(cfg)
    assert [r.text for r in train] == ["multi\nline text", "fine"] and report["unknown_label_dropped"] == 1


def test_missing_column_and_config_errors(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "a", "label": "x"}\n\n{"txt": "b", "label": "y"}\n')
    cfg = load_config(None, [f"data.path={f}"], model_cls=ClassifyConfig)
    with pytest.raises(DataError) as exc:
        load_label_data(cfg)
    assert exc.value.problems[0].where == f"{f}:3"
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["train.packing_strategy=bfd", "labels.names=[a, a]"], model_cls=ClassifyConfig)
    text = exc.value.render()
    assert "packing_strategy" in text and "duplicates" in text


def test_stratified_split_and_balanced_weights():
    from tunesmith.train.classify import class_weights

    recs = [LabelRecord(str(i), f"t{i}", "a" if i < 80 else "b") for i in range(100)]
    train, ev = stratified_split(recs, 0.25, seed=0)
    assert len(ev) == 25 and sum(r.label == "b" for r in ev) == 5 and sum(r.label == "b" for r in train) == 15
    assert [r.id for r in ev] == sorted((r.id for r in ev), key=int)
    w = class_weights("balanced", train, ["a", "b"])
    torch.testing.assert_close(w, torch.tensor([75 / (2 * 60), 75 / (2 * 15)]))


@needs_shared("banking77")
def test_banking77_loader_counts():
    labels = load_config(None, ["labels.label_column=category"], model_cls=ClassifyConfig).labels
    train = to_records(read_table(SHARED_DATA / "banking77" / "train.csv", labels), labels)
    test = to_records(read_table(SHARED_DATA / "banking77" / "test.csv", labels), labels)
    cats = json.loads((SHARED_DATA / "banking77" / "categories.json").read_text())
    assert len(train) == 8503 and len(test) == 2618
    assert {r.label for r in train} == set(cats) and len(cats) == 77
    assert not any(r.text != r.text.strip() for r in train)
    raw_cfg = labels.model_copy(update={"clean_text": False})
    raw = to_records(read_table(SHARED_DATA / "banking77" / "train.csv", raw_cfg), raw_cfg)
    assert sum("\n" in r.text for r in raw) == 9  # quoted texts with embedded newlines, parsed as one record each
    assert int(train[3].id.rsplit(":", 1)[1]) == 5  # physical line of the 4th record (header is line 1)


@needs_shared("sms_spam_collection")
def test_sms_loader_counts_and_cleaning():
    cfg = load_config(
        None,
        [
            f"data.path={SHARED_DATA / 'sms_spam_collection' / 'SMSSpamCollection'}",
            "labels.file_format=tsv",
            "labels.column_names=[label, text]",
            "data.eval_fraction=0.15",
        ],
        model_cls=ClassifyConfig,
    )
    raw = to_records(read_table(cfg.data.path, cfg.labels), cfg.labels)
    assert len(raw) == 4738 and sum(r.label == "spam" for r in raw) == 642
    assert not any(any("\u0080" <= ch <= "\u009f" for ch in r.text) for r in raw)
    assert clean(" it\x92s &lt;#&gt; ") == "it\u2019s <#>"
    train, ev, names, report = load_label_data(cfg)
    assert names == ["ham", "spam"] and report["duplicates_dropped"] == 309 and len(train) + len(ev) == 4738 - 309
    assert not {r.text for r in train} & {r.text for r in ev}
    assert abs(sum(r.label == "spam" for r in ev) / len(ev) - sum(r.label == "spam" for r in train) / len(train)) < 0.01


def test_parse_label():
    from tunesmith.evaluate.classify_baseline import parse_label

    names = ["card_arrival", "ai", "tech support"]
    assert parse_label("Card arrival.", names) == "card_arrival"
    assert parse_label("tech support: your laptop", names) == "tech support"
    assert parse_label("I think this is about AI", names) == "ai"
    assert parse_label("AI or tech support", names) == "ai"
    assert parse_label("no idea", names) == "unparsed"
    assert parse_label("it's about ai and tech support", names) == "unparsed"


def _plain_reload(run: Path, base: Path):
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(run / "adapter")
    model = AutoModelForSequenceClassification.from_pretrained(base, config=config)
    return PeftModel.from_pretrained(model, run / "adapter").eval()


def test_classify_end_to_end_reload_predict_and_baseline(tmp_path, tiny_llama_dir, smol_tokenizer):
    from transformers import AutoTokenizer
    from typer.testing import CliRunner

    from tunesmith.cli import app
    from tunesmith.evaluate.classify_baseline import run_classify_baseline
    from tunesmith.train.classify import run_classify

    cfg = _cfg(tmp_path, tiny_llama_dir, **{"labels.class_weights": "balanced"})
    metrics = run_classify(cfg)
    run = tmp_path / "run"
    for name in (
        "adapter/adapter_model.safetensors",
        "adapter/config.json",
        "metrics.json",
        "predictions.jsonl",
        "confusion_matrix.png",
        "config.yaml",
        "manifest.json",
        "log_history.jsonl",
    ):
        assert (run / name).is_file(), name
    assert metrics["kind"] == "classify" and set(metrics["task_metrics"]) == {"accuracy", "macro_f1"}
    assert metrics["cost"]["trainable_parameters"] < metrics["cost"]["parameters"]
    # label maps survive save/load; plain transformers + peft predicts the same labels
    model = _plain_reload(run, tiny_llama_dir)
    assert model.config.id2label == {0: "food", 1: "sports", 2: "tech"} and model.config.label2id["tech"] == 2
    assert model.config.pad_token_id == 2
    preds = [json.loads(x) for x in (run / "predictions.jsonl").read_text().splitlines()]
    tok = AutoTokenizer.from_pretrained(run / "adapter")
    assert tok.pad_token_id == 2
    with torch.no_grad():
        for p in preds:
            logits = model(**tok([p["prompt"]], return_tensors="pt", split_special_tokens=True)).logits
            assert model.config.id2label[int(logits.argmax())] == p["prediction"]
    # the fully trained head is saved with the adapter (modules_to_save), beside the LoRA weights
    from safetensors import safe_open

    with safe_open(str(run / "adapter" / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any("score" in k for k in keys) and any("lora_A" in k for k in keys)
    # tunesmith predict (stdin, a real process) gives the same labels with progress on stderr, and no misleading load
    # report: the adapter restores the head the base loader calls "newly initialized"
    import subprocess
    import sys

    texts = "\n".join(p["prompt"] for p in preds) + "\n"
    cmd = [sys.executable, "-m", "tunesmith", "predict", "--model", str(run), "-"]
    res = subprocess.run(cmd, input=texts, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"predict: {len(preds)}/{len(preds)} examples (100%)" in res.stderr and "tokens/s" in res.stderr
    for noise in ("LOAD REPORT", "newly initialized", "MISSING", "FutureWarning"):
        assert noise not in res.stderr, res.stderr[-2000:]
    out = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    assert [o["label"] for o in out] == [p["prediction"] for p in preds]
    assert all(abs(sum(o["probabilities"].values()) - 1) < 1e-4 for o in out)
    # prompting baseline on the same eval set: same ids in the same order
    base = run_classify_baseline(cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"max_new_tokens": 2})}))
    assert base["kind"] == "baseline" and base["cost"]["trainable_parameters"] == 0
    base_ids = [json.loads(x)["id"] for x in (tmp_path / "run-baseline" / "predictions.jsonl").read_text().splitlines()]
    assert base_ids == [p["id"] for p in preds]
    # an existing run is never overwritten without --overwrite
    res = CliRunner().invoke(app, ["classify", "--set", f"train.output_dir={run}"])
    assert res.exit_code == 2 and "already holds a run" in res.output


def test_full_fine_tuning_saves_plain_model(tmp_path, tiny_llama_dir):
    from transformers import AutoModelForSequenceClassification

    from tunesmith.train.classify import run_classify

    cfg = _cfg(tmp_path, tiny_llama_dir, **{"lora.enabled": "false", "train.max_steps": 2})
    run_classify(cfg)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "model")
    assert type(model).__name__ == "LlamaForSequenceClassification"
    assert model.config.id2label == {0: "food", 1: "sports", 2: "tech"}
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["lora"]["enabled"] is False


def test_parquet_and_hf_dataset_with_text_pair(tmp_path):
    import datasets

    rows = {
        "premise": ["a cat sat", "it rains", "sun is out", "dogs bark"],
        "hypothesis": ["an animal sat", "it is dry", "it is sunny", "cats bark"],
        "y": ["entail", "contra", "entail", "contra"],
    }
    ds = datasets.Dataset.from_dict(rows)
    ds.to_parquet(str(tmp_path / "d.parquet"))
    ds.save_to_disk(str(tmp_path / "hf"))
    for path in (tmp_path / "d.parquet", tmp_path / "hf"):
        cfg = load_config(
            None,
            [
                f"data.path={path}",
                "labels.text_column=premise",
                "labels.text_pair_column=hypothesis",
                "labels.label_column=y",
                "data.eval_fraction=0",
            ],
            model_cls=ClassifyConfig,
        )
        train, _, names, _ = load_label_data(cfg)
        assert names == ["contra", "entail"] and [r.text_pair for r in train] == rows["hypothesis"]
        assert train[1].id == f"{path}#1"


def test_predict_on_a_folder_that_is_no_run(tmp_path):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    res = CliRunner().invoke(app, ["predict", "--model", str(tmp_path), "-"], input="hello\n")
    assert res.exit_code == 2 and "Not a classify run" in res.stderr


@pytest.mark.slow
def test_classify_embedded_model_few_steps(tmp_path):
    """The real embedded SmolLM2 (GGUF-converted LlamaForCausalLM) loads as LlamaForSequenceClassification and
    trains."""
    from tunesmith.train.classify import run_classify

    cfg = load_config(
        REPO / "configs" / "classify" / "chatterbot-topics.yaml",
        [
            f"train.output_dir={tmp_path / 'run'}",
            "train.max_steps=4",
            "data.max_eval_examples=24",
            "data.max_train_examples=64",
        ],
        model_cls=ClassifyConfig,
    )
    m = run_classify(cfg)
    assert m["kind"] == "classify" and m["eval_examples"] == 24 and m["global_step"] == 4
    losses = [
        e["eval_loss"]
        for e in map(json.loads, (tmp_path / "run" / "log_history.jsonl").read_text().splitlines())
        if "eval_loss" in e
    ]
    assert losses and all(x == x for x in losses)


def test_empty_eval_set_is_refused_before_training(tmp_path, tiny_llama_dir):
    from tunesmith.train.classify import run_classify

    with pytest.raises(DataError) as exc:
        run_classify(_cfg(tmp_path, tiny_llama_dir, **{"data.eval_fraction": 0}))
    assert "eval set is empty" in exc.value.render()
