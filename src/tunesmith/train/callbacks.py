"""Trainer callbacks shared by every training command: graceful stop on SIGINT/SIGTERM, run-wide token counts."""

from __future__ import annotations

import signal

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState


class TokenCounter(TrainerCallback, ExportableState):
    """Tokens seen (non-pad) and trained (label != -100) over the whole run; stored in every checkpoint's
    ``trainer_state.json`` and restored on resume, so metrics stay complete."""

    def __init__(self, tokens_seen: int = 0, trained_tokens: int = 0):
        self.tokens_seen = tokens_seen
        self.trained_tokens = trained_tokens

    def state(self) -> dict:
        """The counters, as transformers' ``ExportableState`` protocol wants them."""
        return {"args": {"tokens_seen": self.tokens_seen, "trained_tokens": self.trained_tokens}, "attributes": {}}


class GracefulStop(TrainerCallback):
    """On SIGINT/SIGTERM during training: finish the current optimizer step, save a checkpoint, stop.

    A second signal while stopping restores the default handler, so it interrupts at once.
    ``signum`` is the signal received (None when training ended normally).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame):  # noqa: ARG002
        self.signum = signum
        for s, h in self._previous.items():
            signal.signal(s, h)

    def on_train_begin(self, args, state, control, **kw):
        """Install the handlers (main thread only)."""
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def on_step_end(self, args, state, control, **kw):
        """After a signal: ask the Trainer to save a checkpoint now and stop."""
        if self.signum is not None:
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kw):
        """Restore the previous handlers."""
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}
