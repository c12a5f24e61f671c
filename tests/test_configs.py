"""Every shipped config in configs/ loads and validates."""
from pathlib import Path

import pytest

from tunesmith.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_loads(path):
    assert load_config(path) is not None


def test_default_config_file_equals_builtin_defaults():
    from tunesmith.config import RunConfig

    file_cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "sft.yaml")
    assert file_cfg.model_dump() == RunConfig().model_dump()
