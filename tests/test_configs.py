"""Every shipped config in configs/ loads and validates."""
from __future__ import annotations

import pytest
from conftest import REPO

from tunesmith.config import load_config

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_loads(path):
    cfg = load_config(path)
    if cfg.data.path:
        assert (REPO / "configs" / cfg.data.path).resolve().exists() or __import__("pathlib").Path(cfg.data.path).exists()
