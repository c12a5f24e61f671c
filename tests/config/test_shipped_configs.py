"""Every shipped config in configs/ loads and validates (classify_* and dpo_* configs with their own config classes)."""

from pathlib import Path

import pytest

from conftest import REPO
from tunesmith.config.load import load_config
from tunesmith.config.sft import RunConfig

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def _config_class(path: Path):
    if path.name.startswith("classify"):
        from tunesmith.config.classify import ClassifyConfig

        return ClassifyConfig
    if path.name.startswith("dpo"):  # preference tuning (issue 7)
        from tunesmith.config.dpo import DPORunConfig

        return DPORunConfig
    return RunConfig


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_loads(path):
    cfg = load_config(path, model_cls=_config_class(path))
    assert cfg.train.output_dir


def test_default_config_file_equals_builtin_defaults():
    file_cfg = load_config(REPO / "configs" / "sft.yaml")
    assert file_cfg.model_dump() == RunConfig().model_dump()


def test_classify_chatterbot_example_data():
    from tunesmith.config.classify import ClassifyConfig
    from tunesmith.data.labels import load_label_data

    cfg = load_config(REPO / "configs" / "classify_chatterbot.yaml", model_cls=ClassifyConfig)
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
