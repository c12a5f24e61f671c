"""Every shipped config in configs/<command>/ loads and validates against its command's config class, and none points
outside the repository (a user's clone has no ../shared)."""

from pathlib import Path

import pytest

from conftest import REPO
from tunesmith.config.load import load_config
from tunesmith.config.sft import RunConfig

CONFIGS = sorted(p for kind in ("sft", "classify", "dpo") for p in (REPO / "configs" / kind).glob("*.yaml"))


def _config_class(path: Path):
    if path.parent.name == "classify":
        from tunesmith.config.classify import ClassifyConfig

        return ClassifyConfig
    if path.parent.name == "dpo":
        from tunesmith.config.dpo import DPORunConfig

        return DPORunConfig
    return RunConfig


@pytest.mark.parametrize("path", CONFIGS, ids=[f"{p.parent.name}/{p.name}" for p in CONFIGS])
def test_shipped_config_loads(path):
    cfg = load_config(path, model_cls=_config_class(path))
    assert cfg.train.output_dir
    for value in (cfg.data.path, cfg.data.eval_path):
        assert value is None or Path(value).resolve().is_relative_to(REPO), (
            f"{path} points outside the repository: {value}"
        )


def test_every_command_ships_a_config():
    assert {p.parent.name for p in CONFIGS} == {"sft", "classify", "dpo"} and len(CONFIGS) >= 6


def test_default_config_file_equals_builtin_defaults():
    file_cfg = load_config(REPO / "configs" / "sft" / "chatterbot.yaml")
    assert file_cfg.model_dump() == RunConfig().model_dump()


def test_classify_chatterbot_example_data():
    from tunesmith.config.classify import ClassifyConfig
    from tunesmith.data.labels import load_label_data

    cfg = load_config(REPO / "configs" / "classify" / "chatterbot-topics.yaml", model_cls=ClassifyConfig)
    train, ev, names, report = load_label_data(cfg)
    assert names == ["trivia", "coding", "psychology", "ai", "emotion", "literature"]
    assert (len(train), len(ev), report["duplicates_dropped"]) == (
        446,
        111,
        150,
    )  # of the 899 distinct conversations, 150 repeat a first user message
    assert report["eval_counts"] == {
        "ai": 12,
        "coding": 19,
        "emotion": 10,
        "literature": 6,
        "psychology": 12,
        "trivia": 52,
    }
