"""The Train form: built from the typed config (every field, its documentation and default), turned into a YAML
config with paths resolved inside the root, validated with the CLI's own ConfigError problems (each sorted to its
field), written to a file the CLI runs unchanged, and started as an argument list. No gradio needed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from tunesmith.config.load import load_config
from tunesmith.config.reference import describe_fields
from tunesmith.errors import ConfigError
from tunesmith.use.ui import actions, forms, jobs
from tunesmith.use.ui.workspace import Workspace


@pytest.fixture
def ws(tmp_path):
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    (root / "data" / "train.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
    )
    (root / "models" / "tiny").mkdir(parents=True)
    return Workspace(root)


@pytest.mark.parametrize("kind", ["sft", "classify", "dpo"])
def test_the_form_has_every_config_field_with_its_documentation(kind):
    fields = forms.form_fields(kind)
    assert [(f.key, f.default, f.doc) for f in fields] == describe_fields(forms.KINDS[kind])
    assert all(f.doc for f in fields), [f.key for f in fields if not f.doc]
    assert forms.config_texts(kind, forms.KINDS[kind]()) == {f.key: f.default for f in fields}  # defaults round-trip


def test_form_to_raw_keeps_changed_fields_and_resolves_paths_inside_the_root(ws):
    texts = {f.key: f.default for f in forms.form_fields("sft")}
    texts.update(
        {
            "data.path": "data/train.jsonl",
            "model.name": "models/tiny",  # a folder under the root: a path
            "model.chat_template": "chatml",  # a built-in template: kept
            "train.max_steps": "4",
            "lora.target_modules": "[q_proj, v_proj]",
            "data.system_prompt": "",  # empty means null (the default): not written
        }
    )
    raw, problems = forms.form_to_raw(ws, "sft", texts, extra="# a comment\ntrain.warmup_ratio=0.1\n")
    assert problems == []
    assert raw == {
        "model": {"name": str(ws.root / "models" / "tiny"), "chat_template": "chatml"},
        "data": {"path": str(ws.root / "data" / "train.jsonl")},
        "lora": {"target_modules": ["q_proj", "v_proj"]},
        "train": {"max_steps": 4, "warmup_ratio": 0.1, "output_dir": str(ws.root / "runs" / "sft")},
    }
    hub, _ = forms.form_to_raw(ws, "sft", {"model.name": "HuggingFaceTB/SmolLM2-135M-Instruct"})
    assert hub["model"]["name"] == "HuggingFaceTB/SmolLM2-135M-Instruct"  # a hub id is not a path


@pytest.mark.parametrize(
    "key,value",
    [("data.path", "../secret.jsonl"), ("train.output_dir", "/tmp/elsewhere"), ("model.name", "/etc"),
     ("model.chat_template", "../evil.jinja"), ("data.eval_path", "~/x.jsonl")],
)  # fmt: skip
def test_a_path_outside_the_root_is_a_problem_of_its_field(ws, key, value):
    raw, problems = forms.form_to_raw(ws, "sft", {key: value})
    (p,) = problems
    assert p.where == key and "outside the workspace root" in p.reason
    assert key.split(".")[1] not in raw.get(key.split(".")[0], {}) or key == "train.output_dir"
    _, result = actions.check_form(ws, "sft", {key: value})
    assert not result.ok and key in result.fields


def test_a_library_field_holding_a_path_outside_the_root_is_refused(ws):
    raw, problems = forms.form_to_raw(ws, "sft", {}, extra="train.logging_dir=/var/log/x\ntrain.run_name=../up")
    assert [p.where for p in problems] == ["train.logging_dir", "train.run_name"]
    assert all("outside the workspace root" in p.reason for p in problems)
    inside, problems = forms.form_to_raw(ws, "sft", {}, extra=f"train.logging_dir={ws.root}/logs")
    assert problems == [] and inside["train"]["logging_dir"] == str(ws.root / "logs")
    prompt, problems = forms.form_to_raw(ws, "sft", {"data.system_prompt": "/no_think"})  # text, not a path
    assert problems == [] and prompt["data"]["system_prompt"] == "/no_think"


def test_validation_gives_the_clis_problems_beside_their_fields(ws):
    bad = {
        "data.eval_fraction": "abc",
        "train.learning_rate": "-1",
        "lora.bias": "sometimes",
        "data.path": "nope.jsonl",
    }
    cfg, result = actions.check_form(ws, "sft", bad, extra="train.lerning_rate=1e-4")
    assert cfg is None and not result.ok
    assert set(result.fields) == {"data.eval_fraction", "train.learning_rate", "lora.bias", "data.path"}
    assert "number" in result.fields["data.eval_fraction"][0] and "fix:" in result.fields["data.eval_fraction"][0]
    assert any("learning_rate" in m for m in result.other)  # an unknown extra key: the CLI's "did you mean"
    # the same problems the CLI prints for the same values
    raw, _ = forms.form_to_raw(ws, "sft", bad, extra="train.lerning_rate=1e-4")
    path = ws.root / "cfg.yaml"
    path.write_text(forms.config_yaml(raw))
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    cli = subprocess.run(
        [sys.executable, "-m", "tunesmith", "sft", str(path)], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert cli.returncode == 2 and "Traceback" not in cli.stderr
    for p in exc.value.problems:
        assert p.reason.split(" (got")[0][:40] in cli.stderr
        where = p.where.split(" (")[0]
        assert where in result.fields or any(where in m for m in result.other)


def test_the_written_yaml_runs_unchanged_from_the_cli(ws):
    texts = {"data.path": "data/train.jsonl", "train.max_steps": "3", "train.output_dir": "runs/a"}
    cfg, result = actions.check_form(ws, "sft", texts)
    assert cfg is not None and result.ok and result.fields == {} and result.other == []
    raw, _ = forms.form_to_raw(ws, "sft", texts)
    path = forms.write_config(ws, "sft", raw)
    assert path.parent == ws.state_dir / "configs" and path.read_text().startswith("# written by tunesmith ui")
    assert load_config(path).model_dump() == cfg.model_dump()  # the same settings (only the source file differs)
    assert yaml.safe_load(path.read_text()) == raw
    again = forms.write_config(ws, "sft", raw)
    assert again != path and path.is_file()  # never over an earlier config
    argv = jobs.train_argv("sft", path)
    assert argv[:3] == [sys.executable, "-m", "tunesmith"] and argv[3:] == ["sft", str(path)]


def test_loading_a_yaml_fills_the_form(ws):
    path = ws.root / "configs" / "x.yaml"
    path.parent.mkdir()
    path.write_text("data: {path: ../data/train.jsonl}\ntrain: {max_steps: 7}\n")
    texts = forms.load_texts(ws, "sft", "configs/x.yaml")
    assert texts["train.max_steps"] == "7" and Path(texts["data.path"]).resolve() == ws.root / "data" / "train.jsonl"
    with pytest.raises(Exception, match="Path refused"):
        forms.load_texts(ws, "sft", "../x.yaml")


@pytest.mark.parametrize("kind", ["sft", "classify", "dpo"])
def test_each_commands_default_form_is_valid_and_writes_under_the_root(ws, kind):
    texts = {f.key: f.default for f in forms.form_fields(kind)}
    cfg, result = actions.check_form(ws, kind, texts)
    assert result.ok and cfg is not None, (result.fields, result.other)
    assert cfg.train.output_dir == str(ws.root / "runs" / kind)
    assert yaml.safe_load(result.yaml) == {"train": {"output_dir": str(ws.root / "runs" / kind)}}
