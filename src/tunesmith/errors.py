"""Error types that the CLI turns into a clear message and exit code 2 (never a traceback)."""
from __future__ import annotations

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
    """A chat template is missing or renders conversations inconsistently."""
