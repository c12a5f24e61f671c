"""The console every command prints progress and results to (stderr), and a wall-clock timer."""
from __future__ import annotations

import time
from rich.console import Console


console = Console(stderr=True)


class Timer:
    """Wall-clock timer (seconds) for a ``with`` block: ``with Timer() as t: ...; t.seconds``."""

    def __enter__(self):
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
