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


@pytest.mark.parametrize(
    ("module", "cls", "library", "valid_key"),
    [
        ("tunesmith.config.sft", "RunConfig", "trl.SFTConfig", "completion_only_loss"),
        ("tunesmith.config.classify", "ClassifyConfig", "transformers.TrainingArguments", "adam_beta1"),
        ("tunesmith.config.dpo", "DPORunConfig", "trl.DPOConfig", "label_smoothing"),
    ],
)
def test_train_keys_are_checked_against_each_commands_library(module, cls, library, valid_key):
    """Each command's train section passes its own library's fields through and names that library when refusing one."""
    import importlib

    model_cls = getattr(importlib.import_module(module), cls)
    ok = load_config(None, [f"train.{valid_key}=0.5"], model_cls=model_cls)
    assert ok.train.model_extra[valid_key] == 0.5
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["train.learning_rat=1e-4"], model_cls=model_cls)
    problem = exc.value.problems[0]
    assert problem.where.startswith("train.learning_rat") and f"not a {library} field" in problem.reason
    assert "train.learning_rate" in problem.fix


# --- fuzz: config loading raises only ConfigError, whatever the YAML or --set values hold ---


def _fuzz_settings(n: int = 60):
    from hypothesis import HealthCheck, settings

    return settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))


def _load_or_config_error(path=None, overrides=None):
    """Load with each command's config class; a ConfigError is fine (exit 2), anything else fails the test."""
    from tunesmith.config.classify import ClassifyConfig
    from tunesmith.config.dpo import DPORunConfig

    for cls in (RunConfig, ClassifyConfig, DPORunConfig):
        try:
            load_config(path, overrides, model_cls=cls)
        except ConfigError as exc:
            assert exc.exit_code == 2 and exc.problems, exc.render()


def test_fuzz_yaml_config_files(tmp_path):
    import itertools

    import yaml
    from hypothesis import given
    from hypothesis import strategies as st

    from conftest import fuzz_strategies

    s = fuzz_strategies()
    sections = st.sampled_from(["model", "data", "lora", "train", "eval", "labels"]) | s["text"]
    fields = st.sampled_from(
        ["name", "path", "learning_rate", "max_steps", "seed", "r", "target_modules", "metrics", "chat_template"]
    )
    config = st.dictionaries(
        sections, st.dictionaries(fields | s["text"], s["value"], max_size=4) | s["value"], max_size=4
    )
    names = itertools.count()

    @_fuzz_settings()
    @given(tree=config, flow=st.booleans())
    def structured(tree, flow):
        import sys

        limit = sys.get_int_max_str_digits()
        sys.set_int_max_str_digits(0)  # let the writer write 5,000-digit integers; the reader must refuse them
        try:
            text = yaml.safe_dump(tree, default_flow_style=flow, allow_unicode=True)
        finally:
            sys.set_int_max_str_digits(limit)
        path = tmp_path / f"c{next(names)}.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        _load_or_config_error(path)

    @_fuzz_settings()
    @given(text=st.text(st.sampled_from(list(":-[]{}&*!|>'\"%@`#,?\n\t ab01.\x00\ud800e")), max_size=120))
    def raw(text):
        path = tmp_path / f"r{next(names)}.yaml"
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        _load_or_config_error(path)

    structured()
    raw()


def test_fuzz_set_overrides():
    from hypothesis import given
    from hypothesis import strategies as st

    from conftest import fuzz_strategies

    text = fuzz_strategies()["text"]
    key = st.sampled_from(["train.seed", "train.learning_rate", "data.path", "model.name", "lora.r", "x", "train"])

    @_fuzz_settings(80)
    @given(
        st.lists(
            st.tuples(key | text, text | st.sampled_from(["inf", ".nan", "1e999", "9" * 5000, "[", "{a: 1, a: 2}"])),
            max_size=3,
        )
    )
    def run(pairs):
        _load_or_config_error(None, [f"{k}={v}" for k, v in pairs])

    run()
