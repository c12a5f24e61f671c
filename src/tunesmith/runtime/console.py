"""The console every command prints progress and results to (stderr), its copy into a run's ``run.log``, the filter
that keeps the libraries' own deprecation warnings off it, and a wall-clock timer."""

from __future__ import annotations

import io
import logging
import re
import sys
import time
import warnings
from pathlib import Path

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


QUIET_WARNING_PACKAGES = ("transformers", "trl", "peft", "accelerate", "datasets", "torch", "huggingface_hub")
"""Packages whose own ``FutureWarning``/``DeprecationWarning`` (deprecations inside the library, e.g. transformers'
``is_gradient_checkpointing``) go to the log instead of the console: the user cannot act on them."""


def _from_package(filename: str) -> bool:
    parts = Path(filename).parts
    return any(p in parts for p in QUIET_WARNING_PACKAGES) and "tunesmith" not in parts


def quiet_library_warnings() -> None:
    """Send :data:`QUIET_WARNING_PACKAGES`' deprecation warnings to the ``tunesmith.warnings`` logger (INFO: into
    ``run.log`` during a run, not shown on the console); every other warning is shown as before. Idempotent."""
    shown = warnings.showwarning
    if getattr(shown, "tunesmith_quiet", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, (FutureWarning, DeprecationWarning)) and _from_package(str(filename)):
            logging.getLogger("tunesmith.warnings").info("%s:%s: %s: %s", filename, lineno, category.__name__, message)
            return
        shown(message, category, filename, lineno, file, line)

    show.tunesmith_quiet = True
    warnings.showwarning = show


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_LOG_LOGGERS = ("tunesmith", "transformers", "trl", "peft", "accelerate", "py.warnings")
_log_state: dict = {}


class _Tee(io.TextIOBase):
    """The console's stream, copied (without colour codes) to a log file."""

    def __init__(self, log):
        self.log = log

    @property
    def stream(self):
        """The process's stderr as it is now (a test runner may swap it)."""
        return sys.stderr

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.log.write(_ANSI.sub("", text))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()
        self.log.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()


def log_to_file(path: str | Path) -> None:
    """Copy what the console prints, and the log records of tunesmith and the libraries it trains with
    (transformers, TRL, PEFT, accelerate, Python warnings), into ``path`` (appended; a resumed run continues it).

    A later call (the next run in the same process) closes the previous file first.
    """
    stop_logging_to_file()
    log = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run, closed by stop_logging_to_file
    console.file = _Tee(log)
    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in _LOG_LOGGERS:
        logging.getLogger(name).addHandler(handler)
    logging.getLogger("tunesmith").setLevel(logging.INFO)
    _log_state.update(log=log, handler=handler)


def stop_logging_to_file() -> None:
    """Stop copying to the log file :func:`log_to_file` opened (nothing happens when none is open)."""
    handler = _log_state.pop("handler", None)
    if handler is not None:
        for name in _LOG_LOGGERS:
            logging.getLogger(name).removeHandler(handler)
    log = _log_state.pop("log", None)
    if log is not None:
        console.file = None  # back to sys.stderr, looked up at each print
        log.close()
