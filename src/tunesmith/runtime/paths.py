"""Where tunesmith keeps its caches (converted models, measured hardware facts, library field lists)."""

from __future__ import annotations

import os
from pathlib import Path


def tunesmith_home() -> Path:
    """Return the cache root: ``$TUNESMITH_HOME``, else ``$XDG_CACHE_HOME/tunesmith``, else ``~/.cache/tunesmith``."""
    env = os.environ.get("TUNESMITH_HOME")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tunesmith"
