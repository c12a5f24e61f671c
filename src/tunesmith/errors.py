"""Error types that the CLI turns into a clear message and exit code 2 (never a traceback)."""

from __future__ import annotations

import signal
from dataclasses import dataclass


@dataclass
class Problem:
    """One problem found in user input.

    Args:
        where: location, e.g. ``"train.learning_rate"`` or ``"data.jsonl:12"``.
        reason: what is wrong, in one sentence.
        fix: what the user should do about it.
    """

    where: str
    reason: str
    fix: str = ""

    def __str__(self) -> str:
        text = f"{self.where}: {self.reason}"
        return text + (f"\n    fix: {self.fix}" if self.fix else "")


class TunesmithError(Exception):
    """Base class of every error caused by user input; the CLI prints it and exits with code 2.

    Args:
        message: headline of the error.
        problems: every individual problem (collected, never just the first).
    """

    exit_code = 2

    def __init__(self, message: str, problems: list[Problem] | None = None):
        self.problems = list(problems or [])
        super().__init__(message)

    def render(self) -> str:
        """Return the headline plus one bullet per problem, as plain text."""
        lines = [str(self.args[0])]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


class ConfigError(TunesmithError):
    """The run configuration (YAML plus ``--set`` overrides) is invalid."""


class DataError(TunesmithError):
    """A dataset file or record is invalid; each problem names the file and physical line."""


class ModelError(TunesmithError):
    """A model source cannot be resolved or loaded (missing file, hub id not cached offline, ...)."""


class TemplateError(TunesmithError):
    """A chat template is missing, broken (syntax error, runaway loop, blocked sandbox escape) or renders
    conversations inconsistently."""


class ConversationRefused(TemplateError):
    """The chat template refuses one record (its own ``raise_exception``, an undefined value, history rendered
    inconsistently); other records may render. Each problem names the record's ``file:line``."""


class TrainingStopped(TunesmithError):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint; exit code 130 or 143 (128 + signal number)."""

    def __init__(self, signum: int, checkpoint: str | None, resume_cmd: str):
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        where = checkpoint or "(no checkpoint: the signal came before the first step finished)"
        super().__init__(
            f"Training stopped by {name}; a checkpoint was saved",
            [Problem(where, "the run is incomplete (no metrics.json)", f"resume with: {resume_cmd}")],
        )


class TrainingDiverged(TunesmithError):
    """Training produced a NaN or infinite loss, gradient or weight and was stopped at once (exit code 2); the run is
    left incomplete (no ``metrics.json``)."""

    def __init__(self, step: int, what: str, value: float, learning_rate: float | None = None):
        lr = f" (train.learning_rate is {learning_rate:g})" if learning_rate is not None else ""
        super().__init__(
            f"Training diverged at step {step}: the {what} is {value}; the run was stopped (no metrics.json)",
            [
                Problem(
                    f"train step {step}",
                    f"the {what} became {value}{lr}",
                    "lower train.learning_rate, keep train.max_grad_norm at 1.0 (gradient clipping), or use float32 "
                    "(model.dtype=float32); then start again with --overwrite",
                )
            ],
        )
