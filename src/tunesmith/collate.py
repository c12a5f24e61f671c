"""Truncation and dataset building for SFT: rendered conversations -> ``datasets.Dataset`` of input_ids/labels.

Packing itself is TRL's best-fit-decreasing packing in padding-free batches: each row is one
flat sequence with ``position_ids`` restarting at every sample, and transformers builds a
block-diagonal causal mask from those position ids, so attention never crosses samples (SDPA
and eager on CPU included; flash-attention varlen on GPU).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from tunesmith.templates import IGNORE_INDEX, Rendered, end_of_turn_ids, render_conversation


@dataclass
class TokenStats:
    """What tokenisation and truncation did.

    Attributes:
        examples: conversations rendered.
        kept: examples kept (at least one trained token left after truncation).
        dropped_empty: examples dropped because truncation removed every trained token.
        truncated: examples cut at ``max_length``.
        tokens: total tokens kept; trained_tokens: of those, tokens with loss.
        trained_tokens_lost: trained tokens removed by truncation.
        lengths: token count of every kept example (for min/median/p95/max).
    """

    examples: int = 0
    kept: int = 0
    dropped_empty: int = 0
    truncated: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    trained_tokens_lost: int = 0
    lengths: list[int] = field(default_factory=list)

    def summary(self) -> dict:
        """A JSON-able dict with the counts plus min/median/p95/max length (tokens)."""
        ls = sorted(self.lengths) or [0]
        pick = lambda q: ls[min(len(ls) - 1, int(q * (len(ls) - 1) + 0.5))]  # noqa: E731
        return {"examples": self.examples, "kept": self.kept, "dropped_all_masked": self.dropped_empty, "truncated": self.truncated,
                "tokens": self.tokens, "trained_tokens": self.trained_tokens, "trained_token_share": self.trained_tokens / max(1, self.tokens),
                "trained_tokens_lost_to_truncation": self.trained_tokens_lost,
                "length_min": ls[0], "length_median": pick(0.5), "length_p95": pick(0.95), "length_max": ls[-1]}


def truncate(r: Rendered, max_length: int) -> tuple[Rendered, int]:
    """Keep the first ``max_length`` tokens (TRL's ``truncation_mode="keep_start"``).

    Returns:
        (truncated example, trained tokens removed).
    """
    if len(r.input_ids) <= max_length:
        return r, 0
    lost = sum(1 for x in r.labels[max_length:] if x != IGNORE_INDEX)
    return Rendered(r.input_ids[:max_length], r.labels[:max_length], r.source), lost


def render_all(tokenizer, convs, max_length: int, *, chat_template: str | None = None, generation_config=None) -> tuple[list[Rendered], TokenStats]:
    """Render every conversation, truncate to ``max_length`` tokens, drop examples with no trained token left.

    Dropped examples never reach the trainer, so they cannot produce a NaN or 0.0 loss.

    Returns:
        (kept examples, :class:`TokenStats`).
    """
    eot = end_of_turn_ids(tokenizer, generation_config)
    stats, kept = TokenStats(), []
    for conv in convs:
        stats.examples += 1
        r = render_conversation(tokenizer, conv, eot_ids=eot, chat_template=chat_template)
        was_long = len(r.input_ids) > max_length
        r, lost = truncate(r, max_length)
        stats.trained_tokens_lost += lost
        stats.truncated += was_long
        if r.num_trained == 0:
            stats.dropped_empty += 1
            continue
        kept.append(r)
        stats.kept += 1
        stats.tokens += len(r.input_ids)
        stats.trained_tokens += r.num_trained
        stats.lengths.append(len(r.input_ids))
    return kept, stats


def to_dataset(rendered: list[Rendered]):
    """Build a ``datasets.Dataset`` with ``input_ids`` and ``labels`` columns (``list[int]`` per row).

    TRL's SFTTrainer sees ``input_ids`` and skips its own tokenisation; the ``labels`` column is
    used as is, so our assistant-only masks are the masks trained.
    """
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": [r.input_ids for r in rendered], "labels": [r.labels for r in rendered]})
