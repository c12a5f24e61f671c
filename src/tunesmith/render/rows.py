"""Truncation and dataset building for SFT: rendered conversations -> ``datasets.Dataset`` of input_ids/labels.

Packing itself is TRL's best-fit-decreasing packing in padding-free batches: each row is one
flat sequence with ``position_ids`` restarting at every sample, and transformers builds a
block-diagonal causal mask from those position ids, so attention never crosses samples (SDPA
and eager on CPU included; flash-attention varlen on GPU).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

from tunesmith.errors import DataError, Problem, TemplateError
from tunesmith.render.features import MissingFeatures, needed, template_features
from tunesmith.render.templates import IGNORE_INDEX, Rendered, end_of_turn_ids, render_conversation

log = logging.getLogger("tunesmith.render.rows")


MAX_SANE_LENGTH = 1_000_000
"""A ``model_max_length`` above this is a placeholder (transformers uses 1e30), never a real limit."""


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
        invalid: problems of records the chat template refused (skipped only with ``skip_invalid``).
    """

    examples: int = 0
    kept: int = 0
    dropped_empty: int = 0
    truncated: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    trained_tokens_lost: int = 0
    lengths: list[int] = field(default_factory=list)
    invalid: list[Problem] = field(default_factory=list)

    def summary(self) -> dict:
        """A JSON-able dict with the counts plus min/median/p95/max length (tokens)."""
        ls = sorted(self.lengths) or [0]
        pick = lambda q: ls[min(len(ls) - 1, int(q * (len(ls) - 1) + 0.5))]  # noqa: E731
        return {
            "examples": self.examples,
            "kept": self.kept,
            "dropped_all_masked": self.dropped_empty,
            "truncated": self.truncated,
            "tokens": self.tokens,
            "trained_tokens": self.trained_tokens,
            "trained_token_share": self.trained_tokens / max(1, self.tokens),
            "trained_tokens_lost_to_truncation": self.trained_tokens_lost,
            "invalid": len(self.invalid),
            "length_min": ls[0],
            "length_median": pick(0.5),
            "length_p95": pick(0.95),
            "length_max": ls[-1],
        }


def truncate(r: Rendered, max_length: int) -> tuple[Rendered, int]:
    """Keep the first ``max_length`` tokens (TRL's ``truncation_mode="keep_start"``).

    Returns:
        (truncated example, trained tokens removed).
    """
    if len(r.input_ids) <= max_length:
        return r, 0
    lost = sum(1 for x in r.labels[max_length:] if x != IGNORE_INDEX)
    return Rendered(r.input_ids[:max_length], r.labels[:max_length], r.source), lost


def render_examples(
    tokenizer, conv, *, eot_ids=None, chat_template: str | None = None, train_reasoning: bool | None = None
) -> list[Rendered]:
    """The training examples of one conversation: one, except with ``train_reasoning=True`` under a template that
    drops the reasoning of past turns (Qwen3): then each trained turn whose reasoning was dropped becomes its own
    example ending at that turn (where the template renders it), and is masked in the full one.

    Returns:
        ``list[Rendered]`` (:func:`tunesmith.render.templates.render_conversation` of each).
    """
    kw = dict(eot_ids=eot_ids, chat_template=chat_template, train_reasoning=train_reasoning)
    r = render_conversation(tokenizer, conv, **kw)
    turns = [i for i in r.dropped_reasoning if conv.messages[i].weight != 0]
    if train_reasoning is not True or not turns or conv.kind != "messages":
        return [r]
    masked = [replace(m, weight=0) if i in turns else m for i, m in enumerate(conv.messages)]
    out = [render_conversation(tokenizer, replace(conv, messages=masked), **kw)]
    for i in turns:
        head = [
            replace(m, weight=0) if m.role == "assistant" and k < i else m for k, m in enumerate(conv.messages[: i + 1])
        ]
        out.append(
            render_conversation(tokenizer, replace(conv, messages=head, source=f"{conv.source} (turn {i})"), **kw)
        )
    return out


def render_all(
    tokenizer,
    convs,
    max_length: int,
    *,
    chat_template: str | None = None,
    generation_config=None,
    skip_invalid: bool = False,
    log_skipped: bool = True,
    train_reasoning: bool | None = None,
) -> tuple[list[Rendered], TokenStats]:
    """Render every conversation, truncate to ``max_length`` tokens, drop examples with no trained token left.

    Dropped examples never reach the trainer, so they cannot produce a NaN or 0.0 loss.  A record
    the chat template cannot take (its own ``raise_exception``, e.g. roles that must alternate, or
    a history it renders inconsistently) is an invalid record: all are collected.

    Args:
        tokenizer: tokenizer with a chat template (or ``chat_template``).
        convs: ``list[Conversation]``.
        max_length: tokens per example (see :func:`resolve_max_length`).
        chat_template: Jinja text overriding the tokenizer's template.
        generation_config: its eos ids count as end-of-turn tokens.
        skip_invalid: skip (and count in ``stats.invalid``) records the template refuses, instead of raising.
        log_skipped: log a warning per skipped record (``tunesmith.render.rows`` logger).
        train_reasoning: ``data.train_reasoning`` (see :func:`render_examples`).

    Returns:
        (kept examples, :class:`TokenStats`).

    Raises:
        DataError: listing every record the template refuses (``file:line``), unless ``skip_invalid``.
        TemplateError: when there is no chat template at all, or it cannot render the data's tools, tool calls or tool
            results (every record needing them counted).
    """
    eot = end_of_turn_ids(tokenizer, generation_config)
    stats, kept, unsupported = TokenStats(), [], []
    for conv in convs:
        stats.examples += 1
        try:
            examples = render_examples(
                tokenizer, conv, eot_ids=eot, chat_template=chat_template, train_reasoning=train_reasoning
            )
        except MissingFeatures:
            unsupported.append(conv)
            continue
        except TemplateError as exc:
            if exc.problems and exc.problems[0].where == "model.chat_template":
                raise
            stats.invalid += [Problem(p.where, p.reason, p.fix) for p in exc.problems]
            continue
        except Exception as exc:  # jinja2 errors raised by the template itself
            stats.invalid.append(
                Problem(
                    conv.source or "conversation",
                    f"the chat template refuses this conversation: {exc}",
                    "merge consecutive same-role turns (many templates need user/assistant alternation), "
                    "or choose another model.chat_template",
                )
            )
            continue
        for r in examples:
            _keep(r, max_length, stats, kept)
    if unsupported:
        raise _unsupported(tokenizer, chat_template, unsupported, train_reasoning)
    if stats.invalid and not skip_invalid:
        raise DataError(
            f"{len(stats.invalid)} record(s) cannot be rendered by the chat template; nothing was trained "
            "(fix them, or pass --skip-invalid / data.skip_invalid=true)",
            stats.invalid,
        )
    for p in stats.invalid if log_skipped else []:
        log.warning("skipped %s: %s", p.where, p.reason)
    return kept, stats


def _keep(r: Rendered, max_length: int, stats: TokenStats, kept: list[Rendered]) -> None:
    """Truncate one example and keep it when a trained token is left, counting into ``stats``."""
    was_long = len(r.input_ids) > max_length
    r, lost = truncate(r, max_length)
    stats.trained_tokens_lost += lost
    stats.truncated += was_long
    if r.num_trained == 0:
        stats.dropped_empty += 1
        return
    kept.append(r)
    stats.kept += 1
    stats.tokens += len(r.input_ids)
    stats.trained_tokens += r.num_trained
    stats.lengths.append(len(r.input_ids))


def _unsupported(tokenizer, chat_template, failed, train_reasoning) -> TemplateError:
    """One error for every record whose tools / calls / results / reasoning the template cannot render."""
    have = template_features(tokenizer, chat_template)
    missing = sorted({f for conv in failed for f in needed(conv, train_reasoning) if not getattr(have, f)})
    return MissingFeatures.of(missing, len(failed), failed[0].source or "conversation")


def resolve_max_length(configured: int, tokenizer, model_config=None) -> tuple[int, str]:
    """The bounded max_length to use: ``train.max_length``, capped by the model's context.

    The tokenizer's ``model_max_length`` counts only when it is a real limit (transformers'
    placeholder is 1e30); ``max_position_embeddings`` of the model config caps it too.

    Returns:
        (max_length in tokens, a one-line explanation for the log).
    """
    limits = {"train.max_length": int(configured)}
    tml = getattr(tokenizer, "model_max_length", None)
    if isinstance(tml, int) and 0 < tml < MAX_SANE_LENGTH:
        limits["tokenizer.model_max_length"] = tml
    mpe = getattr(model_config, "max_position_embeddings", None)
    if isinstance(mpe, int) and 0 < mpe < MAX_SANE_LENGTH:
        limits["max_position_embeddings"] = mpe
    name = min(limits, key=limits.get)
    others = ", ".join(f"{k} {v}" for k, v in limits.items() if k != name)
    return limits[name], f"{limits[name]} tokens (from {name}" + (f"; also {others}" if others else "") + ")"


def to_dataset(rendered: list[Rendered]):
    """Build a ``datasets.Dataset`` with ``input_ids`` and ``labels`` columns (``list[int]`` per row).

    TRL's SFTTrainer sees ``input_ids`` and skips its own tokenisation; the ``labels`` column is
    used as is, so our assistant-only masks are the masks trained.
    """
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": [r.input_ids for r in rendered], "labels": [r.labels for r in rendered]})
