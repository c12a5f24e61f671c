"""Config loading: defaults, overrides, collected problems with field paths, did-you-mean, exit code 2."""

import subprocess
import sys

import pytest

from conftest import REPO
from tunesmith.config.load import load_config
from tunesmith.config.problems import parse_override
from tunesmith.config.reference import describe_fields
from tunesmith.config.sft import RunConfig
from tunesmith.errors import ConfigError


def test_defaults_run_embedded_model_on_chatterbot():
    cfg = load_config()
    assert cfg.model.name == "smollm2-135m-instruct"
    assert cfg.data.name == "chatterbot" and cfg.data.path is None
    assert cfg.lora.target_modules == "all-linear" and cfg.lora.r == 16
    assert cfg.train.packing is True and cfg.train.gradient_checkpointing is False


def test_override_keeps_a_hash_in_text():
    """YAML would read ' #...' as a comment: a GSM8K system prompt must survive --set whole."""
    text = "End with #### <number>."
    assert parse_override(f"data.system_prompt={text}") == (["data", "system_prompt"], text)
    assert parse_override('data.system_prompt="a # b"')[1] == "a # b"
    assert load_config(None, [f"data.system_prompt={text}"]).data.system_prompt == text


def test_override_parses_yaml_values():
    assert parse_override("train.learning_rate=1e-4") == (["train", "learning_rate"], 1e-4)
    assert parse_override("train.packing=false") == (["train", "packing"], False)
    cfg = load_config(
        None, ["train.learning_rate=1e-4", "lora.target_modules=[q_proj, v_proj]", "train.warmup_steps=3"]
    )
    assert (
        cfg.train.learning_rate == 1e-4
        and cfg.lora.target_modules == ["q_proj", "v_proj"]
        and cfg.train.warmup_steps == 3
    )


def test_sft_config_fields_pass_through_train_section():
    cfg = load_config(None, ["train.max_grad_norm=0.5", "train.optim=adamw_torch"])
    assert cfg.train.model_extra == {"max_grad_norm": 0.5, "optim": "adamw_torch"}


def test_all_problems_collected_with_paths_and_fixes(tmp_path):
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text(
        "train:\n  learning_rat: 1e-4\n  max_steps: many\nlora:\n  rr: 4\ndata:\n  path: missing.jsonl\n"
    )
    with pytest.raises(ConfigError) as exc:
        load_config(yaml_file)
    text = exc.value.render()
    wheres = [p.where for p in exc.value.problems]
    assert len(exc.value.problems) == 4, text
    assert "train.max_steps" in wheres and "lora.rr" in wheres and "data.path" in wheres
    assert "did you mean 'train.learning_rate'?" in text
    assert "did you mean 'lora.r'?" in text
    assert str(tmp_path / "missing.jsonl") in text  # resolved from the config file's folder


def test_yaml_syntax_error_names_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  max_steps: 3\n  lr: [1,\n")
    with pytest.raises(ConfigError) as exc:
        load_config(bad)
    assert exc.value.problems[0].where.startswith(f"{bad}:")


def test_config_path_is_directory(tmp_path):
    with pytest.raises(ConfigError, match="Cannot read config"):
        load_config(tmp_path)


def test_every_field_documented():
    rows = describe_fields(RunConfig)
    assert len(rows) > 40
    assert all(doc for _, _, doc in rows), [k for k, _, d in rows if not d]


def test_cli_exit_code_2_without_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tunesmith",
            "sft",
            "--set",
            "train.learning_rat=1",
            "--set",
            "lora.r=x",
            "--set",
            f"data.path={tmp_path}/nope.jsonl",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "did you mean 'train.learning_rate'" in proc.stderr
    assert "lora.r" in proc.stderr and "nope.jsonl" in proc.stderr


def test_docs_config_reference_is_current():

    from tunesmith.config.reference import config_reference_markdown

    doc = REPO / "docs" / "config.md"
    assert doc.read_text() == config_reference_markdown(), (
        "regenerate with: tunesmith config --markdown > docs/config.md"
    )
