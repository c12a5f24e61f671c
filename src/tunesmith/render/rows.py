"""Truncation and dataset building for SFT: rendered conversations -> ``datasets.Dataset`` of input_ids/labels.

    tunesmith data check CONFIG --set data.truncation=drop     # what each truncation policy keeps

This is the one place rows are truncated (``data.truncation``): ``keep_start`` keeps the first ``max_length`` tokens
(TRL's ``truncation_mode="keep_start"``), ``drop`` leaves longer conversations out, ``error`` stops and lists them.
Training, ``eval_loss`` and ``data check`` all see the rows made here. :func:`truncation_warning` speaks up when more
than 5% of the examples or of the trained tokens are cut, naming the max_length that keeps 95% of both.

Packing itself is TRL's best-fit-decreasing packing in padding-free batches: each row is one
flat sequence with ``position_ids`` restarting at every sample, and transformers builds a
block-diagonal causal mask from those position ids, so attention never crosses samples (SDPA
and eager on CPU included; flash-attention varlen on GPU).
"""

from __future__ import annotations

import logging
import math
from array import array
from dataclasses import dataclass, field, replace

from tunesmith.errors import ConversationRefused, DataError, Problem, TemplateError
from tunesmith.render.features import MissingFeatures, needed, template_features
from tunesmith.render.guard import TEMPLATE_FIX, template_source
from tunesmith.render.templates import IGNORE_INDEX, Rendered, end_of_turn_ids, render_conversation

log = logging.getLogger("tunesmith.render.rows")


TRUNCATION_POLICIES = ("keep_start", "drop", "error")
"""``data.truncation`` values."""
WARN_SHARE = 0.05
"""Cut share of examples or trained tokens above which data check and sft warn."""
KEEP_SHARE = 0.95
"""Share of examples and trained tokens the suggested max_length keeps whole."""

MAX_SANE_LENGTH = 1_000_000
"""A ``model_max_length`` above this is a placeholder (transformers uses 1e30), never a real limit."""


@dataclass
class TokenStats:
    """What tokenisation and truncation did.

    Attributes:
        policy: the truncation policy applied (``data.truncation``).
        examples: conversations rendered.
        kept: examples kept (at least one trained token left after truncation).
        dropped_empty: examples dropped because truncation removed every trained token.
        dropped_long: examples left out for being longer than ``max_length`` (``data.truncation=drop``).
        truncated: examples longer than ``max_length`` (cut or dropped, by the policy).
        tokens: total tokens kept; trained_tokens: of those, tokens with loss.
        trained_tokens_lost: trained tokens removed by truncation (all of a dropped example's).
        trained_tokens_full: trained tokens of every rendered example before truncation.
        lengths: token count of every kept example (for min/median/p95/max).
        full_lengths: token count of every rendered example before truncation.
        full_trained: trained tokens of every rendered example before truncation (aligned with ``full_lengths``).
        trained_positions: position of every trained token of every rendered example (``array('l')``), before
            truncation: the max_length that keeps a share of trained tokens is their percentile.
        kept_index: for each kept row, the index of its conversation in the input list.
        long_sources: ``file:line`` of every example longer than ``max_length``.
        invalid: problems of records the chat template refused (skipped only with ``skip_invalid``).
    """

    policy: str = "keep_start"
    examples: int = 0
    kept: int = 0
    dropped_empty: int = 0
    dropped_long: int = 0
    truncated: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    trained_tokens_lost: int = 0
    trained_tokens_full: int = 0
    lengths: list[int] = field(default_factory=list)
    full_lengths: list[int] = field(default_factory=list)
    full_trained: list[int] = field(default_factory=list)
    trained_positions: array = field(default_factory=lambda: array("l"))
    kept_index: list[int] = field(default_factory=list)
    long_sources: list[str] = field(default_factory=list)
    invalid: list[Problem] = field(default_factory=list)

    @property
    def cut_example_share(self) -> float:
        """Share of rendered examples longer than max_length."""
        return self.truncated / max(1, len(self.full_lengths))

    @property
    def cut_token_share(self) -> float:
        """Share of trained tokens lost to truncation (or to dropping)."""
        return self.trained_tokens_lost / max(1, self.trained_tokens_full)

    def max_length_for(self, share: float = KEEP_SHARE, policy: str = "keep_start") -> int:
        """The smallest max_length that keeps ``share`` of the examples whole and ``share`` of the trained tokens
        (``keep_start``: tokens before the cut are kept; ``drop``/``error``: a longer example loses all of its)."""
        by_examples = _quantile(sorted(self.full_lengths), share)
        if policy == "keep_start":
            by_tokens = _quantile(sorted(self.trained_positions), share) + 1 if self.trained_positions else 0
            return max(by_examples, by_tokens)
        allowed = (1 - share) * self.trained_tokens_full
        lost, by_tokens = 0, 0
        for length, trained in sorted(zip(self.full_lengths, self.full_trained), reverse=True):
            if lost + trained > allowed:
                by_tokens = length
                break
            lost += trained
        return max(by_examples, by_tokens)

    def summary(self) -> dict:
        """A JSON-able dict with the counts plus min/median/p95/max length (tokens)."""
        ls = sorted(self.lengths) or [0]
        pick = lambda q: ls[min(len(ls) - 1, int(q * (len(ls) - 1) + 0.5))]  # noqa: E731
        return {
            "examples": self.examples,
            "kept": self.kept,
            "dropped_all_masked": self.dropped_empty,
            "dropped_too_long": self.dropped_long,
            "truncated": self.truncated,
            "truncated_share": self.cut_example_share,
            "tokens": self.tokens,
            "trained_tokens": self.trained_tokens,
            "trained_token_share": self.trained_tokens / max(1, self.tokens),
            "trained_tokens_lost_to_truncation": self.trained_tokens_lost,
            "trained_tokens_lost_share": self.cut_token_share,
            "max_length_keeping_95pct": self.max_length_for(policy=self.policy) if self.full_lengths else None,
            "invalid": len(self.invalid),
            "length_min": ls[0],
            "length_median": pick(0.5),
            "length_p95": pick(0.95),
            "length_max": ls[-1],
        }


def _quantile(sorted_values, q: float) -> int:
    """The smallest value with at least ``q`` of ``sorted_values`` at or below it (0 for none)."""
    if not sorted_values:
        return 0
    return int(sorted_values[max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values) - 1e-9) - 1))])


def truncation_warning(stats: TokenStats, max_length: int, policy: str = "keep_start") -> str | None:
    """A warning when more than 5% of the examples or of the trained tokens are cut at ``max_length``, with the
    max_length that keeps 95% of both (under ``policy``); None when truncation stays below that."""
    if stats.cut_example_share <= WARN_SHARE and stats.cut_token_share <= WARN_SHARE:
        return None
    verb = "left out" if policy == "drop" else "cut"
    other = (
        "or set data.truncation=drop to leave the long examples out (a reply cut before its end, e.g. before a final "
        "answer line, trains the model to stop short)"
        if policy == "keep_start"
        else "or give the data shorter examples"
    )
    return (
        f"max_length {max_length}: {stats.truncated} of {len(stats.full_lengths)} examples "
        f"({stats.cut_example_share:.1%}) are longer and {verb} (data.truncation={policy}); "
        f"{stats.trained_tokens_lost} of {stats.trained_tokens_full} trained tokens ({stats.cut_token_share:.1%}) are "
        f"never trained. train.max_length={stats.max_length_for(policy=policy)} would keep 95% of the examples and "
        f"95% of the trained tokens; {other}"
    )


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
    truncation: str = "keep_start",
    train_reasoning: bool | None = None,
) -> tuple[list[Rendered], TokenStats]:
    """Render every conversation, apply the truncation policy at ``max_length`` tokens, drop examples with no trained
    token left.

    Dropped examples never reach the trainer, so they cannot produce a NaN or 0.0 loss.  A record
    the chat template refuses (:class:`~tunesmith.errors.ConversationRefused`: its own ``raise_exception``, e.g.
    roles that must alternate, or a history it renders inconsistently) is an invalid record: all are collected.

    Args:
        tokenizer: tokenizer with a chat template (or ``chat_template``).
        convs: ``list[Conversation]``.
        max_length: tokens per example (see :func:`resolve_max_length`).
        chat_template: Jinja text overriding the tokenizer's template.
        generation_config: its eos ids count as end-of-turn tokens.
        skip_invalid: skip (and count in ``stats.invalid``) records the template refuses, instead of raising.
        log_skipped: log a warning per skipped record (``tunesmith.render.rows`` logger).
        truncation: ``data.truncation``: ``keep_start`` (cut), ``drop`` (leave out) or ``error`` (raise).
        train_reasoning: ``data.train_reasoning`` (see :func:`render_examples`).

    Returns:
        (kept examples, :class:`TokenStats`; ``stats.kept_index[k]`` is the input index of kept row ``k``).

    Raises:
        DataError: listing every record the template refuses (``file:line``), unless ``skip_invalid``; with
            ``truncation="error"``, listing the examples longer than ``max_length``.
        TemplateError: when there is no chat template at all, or it is broken (a syntax error, a runaway loop), or it
            cannot render the data's tools, tool calls or tool results (every record needing them counted).
    """
    eot = end_of_turn_ids(tokenizer, generation_config)
    stats, kept, refused, unsupported = TokenStats(policy=truncation), [], 0, []
    for index, conv in enumerate(convs):
        stats.examples += 1
        try:
            examples = render_examples(
                tokenizer, conv, eot_ids=eot, chat_template=chat_template, train_reasoning=train_reasoning
            )
        except MissingFeatures:
            unsupported.append(conv)
            continue
        except ConversationRefused as exc:  # this record; a broken template (TemplateError) stops everything
            stats.invalid += [Problem(p.where, p.reason, p.fix) for p in exc.problems]
            refused += 1
            continue
        except TemplateError:
            raise
        except Exception as exc:  # the tokenizer refused the rendered text
            stats.invalid.append(
                Problem(
                    conv.source or "conversation",
                    f"the tokenizer cannot encode this conversation: {type(exc).__name__}: {str(exc)[:200]}",
                    "check the record's text (it must be valid Unicode)",
                )
            )
            continue
        for r in examples:
            _keep(r, max_length, truncation, stats, kept, index)
    if unsupported:
        raise _unsupported(tokenizer, chat_template, unsupported, train_reasoning)
    if refused and refused == stats.examples and refused > 1:
        raise refuses_everything(tokenizer, chat_template, refused, stats.invalid[0])
    if truncation == "error" and stats.truncated:
        raise _too_long_error(stats, max_length)
    if stats.invalid and not skip_invalid:
        raise DataError(
            f"{len(stats.invalid)} record(s) cannot be rendered by the chat template; nothing was trained "
            "(fix them, or pass --skip-invalid / data.skip_invalid=true)",
            stats.invalid,
        )
    for p in stats.invalid if log_skipped else []:
        log.warning("skipped %s: %s", p.where, p.reason)
    return kept, stats


def refuses_everything(tokenizer, chat_template: str | None, n: int, first: Problem) -> TemplateError:
    """The error for a chat template that refused every record: the template, not the data, is at fault."""
    source = "the chat template passed in" if chat_template else template_source(tokenizer)
    message = first.reason.split("refuses this conversation: ", 1)[-1]
    return TemplateError(
        "The chat template refuses every record",
        [Problem(source, f"all {n} records were refused, e.g. {first.where}: {message}", TEMPLATE_FIX)],
    )


def _apply_policy(r: Rendered, max_length: int, policy: str, stats: TokenStats) -> Rendered | None:
    """Count the example's full length and trained positions, then cut it (``keep_start``) or leave it out
    (``drop``; ``error`` raises after every example is counted). Returns the row to keep, or None."""
    positions = [k for k, x in enumerate(r.labels) if x != IGNORE_INDEX]
    stats.full_lengths.append(len(r.input_ids))
    stats.full_trained.append(len(positions))
    stats.trained_positions.extend(positions)
    stats.trained_tokens_full += len(positions)
    if len(r.input_ids) <= max_length:
        return r
    stats.truncated += 1
    stats.long_sources.append(r.source)
    if policy == "drop":
        stats.dropped_long += 1
        stats.trained_tokens_lost += len(positions)
        return None
    r, lost = truncate(r, max_length)
    stats.trained_tokens_lost += lost
    return r


def _too_long_error(stats: TokenStats, max_length: int) -> DataError:
    shown = stats.long_sources[:20]
    problems = [Problem(src or "conversation", f"longer than max_length {max_length}", "") for src in shown]
    more = len(stats.long_sources) - len(shown)
    problems.append(
        Problem(
            f"data.truncation=error, train.max_length={max_length}",
            f"{stats.truncated} of {len(stats.full_lengths)} examples are longer"
            + (f" ({more} more not listed)" if more else ""),
            f"raise train.max_length ({stats.max_length_for(policy='error')} keeps 95% of examples and trained "
            "tokens), "
            "or set data.truncation=drop (leave them out) or keep_start (cut them)",
        )
    )
    return DataError("Conversations longer than max_length (data.truncation=error)", problems)


def _keep(r: Rendered, max_length: int, policy: str, stats: TokenStats, kept: list[Rendered], index: int) -> None:
    """Apply the truncation policy to one example and keep it when a trained token is left, counting into ``stats``
    (``index``: the conversation it came from)."""
    r = _apply_policy(r, max_length, policy, stats)
    if r is None:
        return
    if r.num_trained == 0:
        stats.dropped_empty += 1
        return
    kept.append(r)
    stats.kept_index.append(index)
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
