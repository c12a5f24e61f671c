"""The console every command prints progress and results to (stderr), its copy into a run's ``run.log``, the filter
that keeps the libraries' own deprecation warnings off it, a wall-clock timer, and the one progress display of long
steps (:class:`Progress`: a rich bar on a terminal, plain lines otherwise)."""

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


def eta_seconds(elapsed: float, done: float, remaining: float) -> float | None:
    """Seconds left at the pace so far: ``elapsed / done * remaining`` (None before anything is done)."""
    return elapsed / done * max(remaining, 0) if done > 0 else None


def _secs(value: float | None) -> str:
    if value is None:
        return "?"
    value = int(round(value))
    return f"{value // 60}m{value % 60:02d}s" if value >= 60 else f"{value}s"


_PROGRESS_LINE = re.compile(
    r"^(?P<label>[\w .-]+): (?P<done>\d+)(?:/(?P<total>\d+))? (?P<unit>\w+)(?: \(\d+%\))?(?P<fields>.*?)"
    r", elapsed (?P<elapsed>[\dms?]+), ETA (?P<eta>[\dms?]+)$"
)


def _parse_secs(text: str) -> int | None:
    """The inverse of :func:`_secs`: ``"3m22s"`` -> 202, ``"12s"`` -> 12, ``"?"`` -> None."""
    m = re.fullmatch(r"(?:(\d+)m)?(\d+)s", text)
    return int(m[1] or 0) * 60 + int(m[2]) if m else None


def parse_progress_line(line: str) -> dict | None:
    """Read back one plain line of :class:`Progress` (what a run writes to ``run.log``), e.g.
    ``train: 10/30 steps (33%), loss 1.1081, eval_loss 1.0, elapsed 3m31s, ETA 7m03s``.

    Returns:
        ``{"label", "done", "total" (None when unknown), "unit", "fields": {name: text}, "elapsed_s", "eta_s"}``
        (seconds as int, None for ``?``; a field ``123.4 tokens/s`` is ``{"tokens/s": "123.4"}``), or None for any
        other line.
    """
    m = _PROGRESS_LINE.match(line.strip())
    if m is None:
        return None
    fields = {}
    for part in filter(None, (p.strip() for p in m["fields"].split(","))):
        first, _, rest = part.partition(" ")
        key, value = (rest, first) if re.fullmatch(r"[-\d.e+]+", first) else (first, rest)
        fields[key] = value
    return {
        "label": m["label"],
        "done": int(m["done"]),
        "total": int(m["total"]) if m["total"] else None,
        "unit": m["unit"],
        "fields": fields,
        "elapsed_s": _parse_secs(m["elapsed"]),
        "eta_s": _parse_secs(m["eta"]),
    }


class Progress:
    """Progress of one long step (generation, scoring, evaluation, training): how many items are done, tokens per
    second and the ETA. On a terminal a rich bar; otherwise (CI, a pipe, a log file) plain lines on the console,
    ``label: 40/100 examples (40%), 123.4 tokens/s, elapsed 12s, ETA 18s``, one each time another tenth is done or
    ``interval`` seconds have passed, and one at the end. Lines also go to ``run.log`` when a run logs there.

    Use::

        with Progress("generate", total=len(prompts), unit="prompts") as bar:
            for batch in batches:
                ...
                bar.advance(len(batch), tokens=new_tokens)

    Args:
        label: what is running (the line's prefix).
        total: items to do (examples, rows, steps); 0 or None: unknown.
        unit: the items' name.
        done: items already done (a resumed run).
        lines: force plain lines (True) or the bar (False); None: the bar only on a terminal.
        auto_lines: print lines by themselves (True) or only on :meth:`print_line` (the training callback prints one
            per log event).
        interval: seconds after which a line is printed even if no tenth was completed.
    """

    def __init__(
        self,
        label: str,
        total: int | None,
        *,
        unit: str = "examples",
        done: int = 0,
        lines: bool | None = None,
        auto_lines: bool = True,
        interval: float = 30.0,
    ):
        self.label, self.total, self.unit = label, int(total or 0), unit
        self.done = self.start_done = done
        self.tokens = 0
        self.fields: dict[str, str] = {}
        self.lines = (not console.is_terminal) if lines is None else lines
        self.auto_lines, self.interval = auto_lines, interval
        self.bar = self.task = None
        self.started = self.last_line = 0.0
        self.last_tenth = -1
        self.printed_done: int | None = None

    def __enter__(self) -> "Progress":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.finish(printed=exc[0] is None)

    @property
    def elapsed(self) -> float:
        """Seconds since :meth:`start`."""
        return time.monotonic() - self.started

    def eta(self) -> float | None:
        """Seconds left at this run's pace (items done since the start, not counting a resume's earlier ones)."""
        if not self.total:
            return None
        return eta_seconds(self.elapsed, self.done - self.start_done, self.total - self.done)

    def start(self) -> None:
        """Start the clock (and the bar on a terminal)."""
        self.started = self.last_line = time.monotonic()
        self.last_tenth = self._tenth()
        if self.lines:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.progress import Progress as Bar

        self.bar = Bar(
            TextColumn(f"[bold]{self.label}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(self.unit),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.bar.start()
        self.task = self.bar.add_task(self.label, total=self.total or None, completed=self.done, info="")

    def advance(self, n: int = 1, *, tokens: int = 0, **fields) -> None:
        """Count ``n`` more items and ``tokens`` more tokens; ``fields`` (e.g. ``loss="1.23"``) are shown too."""
        self.update(self.done + n, tokens=tokens, **fields)

    def update(self, done: int | None = None, *, tokens: int = 0, **fields) -> None:
        """Set the items done (absolute) and show ``fields``; prints a line when another tenth is done or
        ``interval`` seconds passed (plain-line mode with ``auto_lines``)."""
        if done is not None:
            self.done = done
        self.tokens += tokens
        self.fields.update({k: str(v) for k, v in fields.items()})
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done, info=self._info())
        elif self.lines and self.auto_lines:
            tenth, now = self._tenth(), time.monotonic()
            if tenth > self.last_tenth or now - self.last_line >= self.interval:
                self.last_tenth = tenth
                self.print_line()

    def _tenth(self) -> int:
        return int(10 * self.done / self.total) if self.total else 0

    def _info(self) -> str:
        parts = [f"{k} {v}" for k, v in self.fields.items()]
        if self.tokens:
            parts.append(f"{self.tokens / max(self.elapsed, 1e-9):.1f} tokens/s")
        return ", ".join(parts)

    def line(self) -> str:
        """The plain progress line: ``label: done/total unit (pct%), fields, tokens/s, elapsed, ETA``."""
        count = f"{self.done}/{self.total} {self.unit}" if self.total else f"{self.done} {self.unit}"
        if self.total:
            count += f" ({100 * self.done / self.total:.0f}%)"
        info = self._info()
        return (
            f"{self.label}: {count}"
            + (f", {info}" if info else "")
            + (f", elapsed {_secs(self.elapsed)}, ETA {_secs(self.eta())}")
        )

    def print_line(self) -> None:
        """Print :meth:`line` on the console (not markup-interpreted)."""
        self.last_line, self.printed_done = time.monotonic(), self.done
        console.print(self.line(), highlight=False, markup=False, soft_wrap=True)

    def finish(self, *, printed: bool = True) -> None:
        """Stop the bar; in plain-line mode print the last line unless it is already out (``printed``: the step
        completed; an aborted step prints nothing more)."""
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done, info=self._info())
            self.bar.stop()
            self.bar = None
        elif self.lines and self.auto_lines and printed and self.printed_done != self.done:
            self.print_line()


QUIET_WARNING_PACKAGES = ("transformers", "trl", "peft", "accelerate", "datasets", "torch", "huggingface_hub")
"""Packages whose own ``FutureWarning``/``DeprecationWarning`` (deprecations inside the library, e.g. transformers'
``is_gradient_checkpointing``) go to the log instead of the console: the user cannot act on them."""


def _from_package(filename: str) -> bool:
    """True when ``filename`` is a module of one of :data:`QUIET_WARNING_PACKAGES` as installed (the folder after
    ``site-packages``/``dist-packages``), wherever the environment lives (a checkout named tunesmith included)."""
    parts = Path(filename).parts
    for k, part in enumerate(parts[:-1]):
        if part in ("site-packages", "dist-packages"):
            return parts[k + 1] in QUIET_WARNING_PACKAGES
    return False


def quiet_library_warnings() -> None:
    """Send :data:`QUIET_WARNING_PACKAGES`' deprecation warnings to the ``tunesmith.warnings`` logger (INFO: into
    ``run.log`` during a run, not shown on the console); every other warning is shown as before. Idempotent."""
    shown = warnings.showwarning
    if getattr(shown, "tunesmith_quiet", False):
        return
    # bitsandbytes (the qlora extra) logs at import, on CPUs with avx512_bf16, that an optional kernel package is
    # missing; it falls back to its own CPU code, so the line says nothing a user must act on
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

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
