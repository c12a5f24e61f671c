"""Packed rows: best-fit-decreasing packing into a [batch, max_length] grid, one packed row per batch row.

Used by ``tunesmith sft`` when ``train.packing_layout`` resolves to ``rows`` (on CPU, and on GPUs without a varlen
attention kernel).  Tested by ``pytest tests/train/speed/test_packrows.py``.

TRL's padding-free layout concatenates every row of a micro-batch into ONE sequence of up to
``batch * max_length`` tokens.  With a varlen kernel (flash-attention) attention then costs only the sum of the
squared sample lengths; but SDPA and eager attention build a dense block-diagonal mask over the whole concatenated
sequence, so attention time and the saved attention memory grow with ``(batch * max_length)^2`` (the 17 GB peak of
TRL's packed run in the benchmark, docs/performance.md).  Here each packed row stays its own batch row: the same
samples, the same per-sample ``position_ids`` (restarting at 0, so transformers builds a block-diagonal causal mask per
row and attention never crosses samples), but the dense mask is only ``max_length^2`` per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


def pack_rows(dataset, max_length: int):
    """Pack a tokenised dataset (``input_ids``, ``labels``) into rows of at most ``max_length`` tokens.

    Uses TRL's best-fit-decreasing packer (``trl.data_utils.pack_dataset(strategy="bfd")``): samples are kept whole
    (they are already truncated to ``max_length``) and each row records its samples' lengths in ``seq_lengths``.

    Returns:
        ``datasets.Dataset`` with ``input_ids``/``labels`` (``list[int]`` per row, length <= max_length) and
        ``seq_lengths`` (``list[int]``, summing to the row length).
    """
    from trl.data_utils import pack_dataset

    return pack_dataset(dataset, max_length, strategy="bfd")


def row_position_ids(seq_lengths: list[int], length: int) -> list[int]:
    """Position ids for one packed row: ``0..n-1`` for every sample, then ``0..pad-1`` for the padding tail
    (the tail becomes its own pseudo-sample, which no real token attends to)."""
    pos = [p for n in seq_lengths for p in range(n)]
    return pos + list(range(length - len(pos)))


@dataclass
class PackedRowsCollator:
    """Collate packed rows into ``[batch, L]`` tensors, ``L`` = the longest row (rounded up to ``pad_to_multiple_of``).

    Returns a dict with ``input_ids`` (LongTensor[batch, L], ``pad_token_id`` in the tail), ``labels``
    (LongTensor[batch, L], -100 in the tail and at every sample's first token, so no sample is trained to predict
    the next one), ``position_ids`` (LongTensor[batch, L], restarting per sample) and ``num_real_tokens``
    (LongTensor[], non-pad tokens; the trainer removes it before the forward pass).  No ``attention_mask``: with
    ``position_ids`` alone transformers builds the block-diagonal causal mask (``find_packed_sequence_indices``).
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: list[dict]) -> dict:  # noqa: D102
        length = max(len(e["input_ids"]) for e in examples)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        ids = torch.full((len(examples), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
        pos = torch.empty((len(examples), length), dtype=torch.long)
        real = 0
        for i, e in enumerate(examples):
            n = len(e["input_ids"])
            real += n
            ids[i, :n] = torch.as_tensor(e["input_ids"])
            labels[i, :n] = torch.as_tensor(e["labels"])
            pos[i] = torch.as_tensor(row_position_ids(list(e.get("seq_lengths") or [n]), length))
        labels[pos == 0] = IGNORE_INDEX
        return {"input_ids": ids, "labels": labels, "position_ids": pos, "num_real_tokens": torch.tensor(real)}
