"""Trainer callbacks shared by every training command: graceful stop on SIGINT/SIGTERM, a stop at the first
non-finite loss, gradient or weight, run-wide token counts."""

from __future__ import annotations

import math
import signal

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from tunesmith.errors import TrainingDiverged


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

    def _handle(self, signum, frame):
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
        self.restore()

    def restore(self) -> None:
        """Put the signal handlers back as they were before training (also after training raised)."""
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}


class NonFiniteStop(TrainerCallback):
    """Stop training, with :class:`TrainingDiverged`, the first time the gradients (before the optimizer step), the
    trained weights (after it) or a logged loss or gradient norm are NaN or infinite.

    The gradients are checked through their total 2-norm (one reduction, one device sync per optimizer step): a NaN or
    infinite loss gives non-finite gradients, and transformers' ``logging_nan_inf_filter`` would hide it from the
    logged loss. The weights are checked the same way after each step (an overflowing update). With fp16 loss scaling
    (``train.fp16``) inf gradients are normal (the scaler skips the step), so only the weights and logs are checked.
    """

    def __init__(self, learning_rate: float | None = None):
        self.learning_rate = learning_rate

    @staticmethod
    def _norm(tensors) -> float:
        import torch

        tensors = [t.detach() for t in tensors]
        return float(torch.nn.utils.get_total_norm(tensors)) if tensors else 0.0

    def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
        """Check the gradients of the trainable parameters before the optimizer uses them."""
        if model is not None and not args.fp16:
            norm = self._norm(p.grad for p in model.parameters() if p.requires_grad and p.grad is not None)
            if not math.isfinite(norm):
                raise TrainingDiverged(state.global_step + 1, "gradient norm", norm, self.learning_rate)

    def on_optimizer_step(self, args, state, control, model=None, **kw):
        """Check the trained weights after the update."""
        if model is not None:
            norm = self._norm(p for p in model.parameters() if p.requires_grad)
            if not math.isfinite(norm):
                raise TrainingDiverged(state.global_step + 1, "norm of the trained weights", norm, self.learning_rate)

    def on_log(self, args, state, control, logs=None, **kw):
        """Check the logged training loss and gradient norm."""
        for key in ("loss", "grad_norm"):
            value = (logs or {}).get(key)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                raise TrainingDiverged(state.global_step, f"logged {key}", value, self.learning_rate)


class CountingTrainerMixin:
    """A Trainer mixin counting real (non-pad) and trained tokens of every training micro-batch, run-wide (see
    :class:`TokenCounter`); ``process_tokens`` counts only this process's (for tokens/second)."""

    process_tokens = 0

    def _counter(self) -> TokenCounter:
        # a resumed Trainer replaces the callback by one rebuilt from the checkpoint: look it up each time
        return next(c for c in self.callback_handler.callbacks if isinstance(c, TokenCounter))

    def training_step(self, model, inputs, num_items_in_batch=None):  # noqa: D102
        mask = inputs.get("attention_mask")
        counter = self._counter()
        real = inputs.get("num_real_tokens")  # packed rows (tunesmith.train.speed.packrows) carry their non-pad count
        seen = (
            int(real) if real is not None else int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
        )
        counter.tokens_seen += seen
        self.process_tokens += seen
        counter.trained_tokens += int((inputs["labels"] != -100).sum())
        return super().training_step(model, inputs, num_items_in_batch)
