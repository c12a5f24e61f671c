"""The one eval_loss: mean token cross-entropy of the trained tokens of the eval rows, truncated as training
truncates them.

    tunesmith sft CONFIG                           # eval_loss before/after training and at every eval step
    tunesmith baseline CONFIG                      # the same figure for the prompted model
    tunesmith eval CONFIG --adapter RUN/adapter    # and for the fine-tuned one: equal to sft's after-training value

Every eval_loss tunesmith reports comes from :func:`row_losses` (summed nats and trained-token count per row) and
:func:`mean_token_loss` (sum of nats / sum of tokens): the Trainer's evaluation inside ``tunesmith sft``
(:class:`tunesmith.train.sft_eval.OneLossEvalMixin`), ``baseline``/``eval`` (:mod:`tunesmith.evaluate.generative`)
and the report's bootstrap (:mod:`tunesmith.evaluate.report`). The rows are those
:func:`tunesmith.render.rows.render_all` makes for training (chat template, assistant-only labels, ``train.max_length``
and ``data.truncation``), so an example cut or dropped for training is cut or dropped here too. Label ``t`` is
predicted from position ``t - 1`` (transformers' ``ForCausalLMLoss`` shift); the forward runs in the model's own
precision with autocast off, in eval mode (no dropout), right-padded with an attention mask.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import numpy as np
import torch

from tunesmith.models.heads import body_and_head
from tunesmith.runtime.distributed import params_sharded

IGNORE_INDEX = -100
"""Label value of untrained positions."""


def mean_token_loss(nll_sums: Sequence[float], token_counts: Sequence[int]) -> float:
    """Sum of nats over sum of trained tokens: the eval_loss of a set of rows (``nan`` when no token is trained).

    Args:
        nll_sums: summed cross-entropy (nats) per row, ``list[float]`` or ``FloatArray[n]``.
        token_counts: trained tokens per row (0 for a row truncation dropped).
    """
    tokens = float(np.sum(token_counts))
    return float(np.sum(nll_sums)) / tokens if tokens > 0 else float("nan")


def row_tokens(row: dict) -> int:
    """Trained tokens of a ``predictions.jsonl`` row's eval_loss (0 when truncation dropped the row; 1 in rows
    written before the field existed)."""
    return int(row.get("reference_tokens", 1 if "eval_loss" in row.get("scores", {}) else 0))


def row_nll(row: dict) -> float:
    """Summed nats of a row's eval_loss (``reference_nll``, or the per-example mean times its tokens)."""
    if "reference_nll" in row:
        return float(row["reference_nll"])
    return float(row.get("scores", {}).get("eval_loss", float("nan"))) * row_tokens(row) if row_tokens(row) else 0.0


@contextlib.contextmanager
def full_precision(model):
    """Run ``model`` with its own ``forward``: without the autocast wrapper accelerate puts on a prepared model
    (kept in ``model._original_forward``) and with autocast off, so the training precision does not change the figure.
    The wrapper is restored afterwards."""
    wrapped = model.__dict__.get("forward")
    original = model.__dict__.get("_original_forward")
    if wrapped is not None and original is not None:
        model.forward = original
    device = next(model.parameters()).device.type
    try:
        with torch.autocast(device_type=device, enabled=False):
            yield model
    finally:
        if wrapped is not None and original is not None:
            model.forward = wrapped


@torch.no_grad()
def row_losses(
    model, rows, *, pad_id: int = 0, batch_size: int = 8, progress=None, head_only: bool = True
) -> list[tuple[float, int]]:
    """Summed cross-entropy (nats) and trained-token count of each rendered row.

    Args:
        model: a causal LM (plain, PEFT or accelerate-prepared); put in eval mode for the pass, then restored.
        rows: :class:`tunesmith.render.templates.Rendered` rows (``input_ids``/``labels``, already truncated).
        pad_id: id used for right padding (masked out).
        batch_size: rows per forward pass (rows are batched by length; results come back in input order).
        progress: a :class:`tunesmith.runtime.console.Progress`, advanced by rows and tokens after each batch.
        head_only: run the output head only at trained positions (the body once, then ``[n_trained, vocab]``
            logits) where the logits are a plain head over the body (:func:`tunesmith.models.heads.body_and_head`)
            and the weights are not sharded; False always builds the model's full ``[batch, seq, vocab]`` logits.

    Returns:
        ``list[(nll_sum: float, tokens: int)]``, one per row; :func:`mean_token_loss` of them is the eval_loss.
    """
    out: list[tuple[float, int]] = [(0.0, 0)] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].input_ids))
    split = body_and_head(model) if head_only and not params_sharded() else None
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with full_precision(model):
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                batch = _padded([rows[i] for i in idx], pad_id, device)
                terms = _head_only_nll(*split, *batch) if split else _batch_nll(model, *batch)
                for i, nll, n in zip(idx, *terms):
                    out[i] = (nll, n)
                if progress is not None:
                    progress.advance(len(idx), tokens=sum(len(rows[i].input_ids) for i in idx))
    finally:
        model.train(was_training)
    return out


def _padded(chunk, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 on padding), each LongTensor[batch, seq]."""
    width = max(len(r.input_ids) for r in chunk)
    ids = torch.tensor([r.input_ids + [pad_id] * (width - len(r.input_ids)) for r in chunk], device=device)
    mask = torch.tensor([[1] * len(r.input_ids) + [0] * (width - len(r.input_ids)) for r in chunk], device=device)
    labels = torch.tensor([r.labels + [IGNORE_INDEX] * (width - len(r.labels)) for r in chunk], device=device)
    return ids, mask, labels


def _batch_nll(model, ids, mask, labels) -> tuple[list[float], list[int]]:
    """Summed nats and trained tokens of each row of one right-padded batch, from the model's full logits."""
    logits = model(input_ids=ids, attention_mask=mask).logits
    shift_labels = labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), shift_labels, ignore_index=IGNORE_INDEX, reduction="none"
    )
    valid = shift_labels != IGNORE_INDEX
    return (nll * valid).sum(1).tolist(), valid.sum(1).tolist()


HEAD_CHUNK = 1024
"""Trained positions per head call in :func:`_head_only_nll`: a [1024, 49152] fp32 logits tile is 200 MB."""


def _head_only_nll(body, head, ids, mask, labels) -> tuple[list[float], list[int]]:
    """:func:`_batch_nll` with the head run only at trained positions: ``body`` once over the batch, then
    ``head(hidden[t])`` for every ``t`` whose next label is trained, :data:`HEAD_CHUNK` positions at a time."""
    hidden = body(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state[:, :-1]
    shift_labels = labels[:, 1:]
    valid = shift_labels != IGNORE_INDEX
    picked, targets = hidden[valid], shift_labels[valid]  # [n, hidden], [n]
    row = torch.arange(ids.shape[0], device=ids.device)[:, None].expand_as(valid)[valid]
    nll = torch.cat(
        [
            torch.nn.functional.cross_entropy(head(h).float(), t, reduction="none")
            for h, t in zip(picked.split(HEAD_CHUNK), targets.split(HEAD_CHUNK))
        ]
        or [picked.new_zeros(0, dtype=torch.float32)]
    )
    sums = torch.zeros(ids.shape[0], dtype=torch.float32, device=ids.device).index_add_(0, row, nll)
    return sums.tolist(), valid.sum(1).tolist()


def perplexity(loss: float | None) -> float | None:
    """``exp(loss)`` of a mean token cross-entropy in nats; None stays None, overflow gives ``inf``."""
    if loss is None:
        return None
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")
