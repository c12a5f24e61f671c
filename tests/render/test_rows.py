"""The truncation policy (data.truncation: keep_start | drop | error), its counts, the 5% warning and the max_length
that keeps 95%, on rows rendered with SmolLM2's chat template."""

from __future__ import annotations

import pytest

from tunesmith.data.records import Conversation, Message
from tunesmith.errors import DataError
from tunesmith.render.rows import render_all, truncation_warning
from tunesmith.render.templates import IGNORE_INDEX, render_conversation


def _conv(i: int, words: int) -> Conversation:
    turns = [Message("system", "Be brief."), Message("user", f"q{i}"), Message("assistant", " ".join(["tea"] * words))]
    return Conversation(turns, f"d.jsonl:{i + 1}")


CONVS = [_conv(i, 5) for i in range(18)] + [_conv(18, 60), _conv(19, 90)]
"""18 short conversations and 2 long ones (10% of the examples; most of the trained tokens)."""


@pytest.fixture
def lengths(smol_tokenizer):
    rendered = [render_conversation(smol_tokenizer, c) for c in CONVS]
    return [len(r.input_ids) for r in rendered], [r.num_trained for r in rendered], rendered


def test_keep_start_cuts_and_counts_every_lost_trained_token(smol_tokenizer, lengths):
    full, trained, rendered = lengths
    limit = 40
    assert max(full[:18]) <= limit < min(full[18:])
    rows, stats = render_all(smol_tokenizer, CONVS, limit)
    assert stats.policy == "keep_start" and stats.kept == 20 and stats.truncated == 2 and stats.dropped_long == 0
    assert [len(r.input_ids) for r in rows[18:]] == [limit, limit]
    lost = sum(sum(1 for x in r.labels[limit:] if x != IGNORE_INDEX) for r in rendered[18:])
    assert stats.trained_tokens_lost == lost and stats.trained_tokens_full == sum(trained)
    assert stats.cut_example_share == pytest.approx(0.10) and stats.cut_token_share == pytest.approx(
        lost / sum(trained)
    )
    assert stats.kept_index == list(range(20))


def test_drop_leaves_long_examples_out_and_counts_all_their_tokens(smol_tokenizer, lengths):
    full, trained, _ = lengths
    rows, stats = render_all(smol_tokenizer, CONVS, 40, truncation="drop")
    assert len(rows) == 18 and stats.dropped_long == 2 and stats.truncated == 2
    assert stats.trained_tokens_lost == trained[18] + trained[19]
    assert stats.kept_index == list(range(18)) and all(len(r.input_ids) <= 40 for r in rows)
    summary = stats.summary()
    assert summary["dropped_too_long"] == 2 and summary["truncated_share"] == pytest.approx(0.1)


def test_error_lists_the_long_examples_and_the_max_length_that_keeps_95(smol_tokenizer, lengths):
    full, _, _ = lengths
    with pytest.raises(DataError) as exc:
        render_all(smol_tokenizer, CONVS, 40, truncation="error")
    problems = exc.value.problems
    assert [p.where for p in problems[:2]] == ["d.jsonl:19", "d.jsonl:20"]
    assert problems[0].reason == "longer than max_length 40"
    assert problems[-1].where == "data.truncation=error, train.max_length=40"
    assert "2 of 20 examples are longer" in problems[-1].reason
    # 95% of the trained tokens needs the longest example whole (the two long ones hold most tokens)
    assert f"raise train.max_length ({full[19]} keeps 95%" in problems[-1].fix
    rows, stats = render_all(smol_tokenizer, CONVS[:18], 40, truncation="error")  # nothing too long: no error
    assert len(rows) == 18 and stats.truncated == 0


def test_max_length_for_95_percent(smol_tokenizer, lengths):
    full, trained, rendered = lengths
    _, stats = render_all(smol_tokenizer, CONVS, 40)
    positions = sorted(k for r in rendered for k, x in enumerate(r.labels) if x != IGNORE_INDEX)
    import math

    want_tokens = positions[math.ceil(0.95 * len(positions)) - 1] + 1  # keep_start keeps positions below max_length
    want_examples = sorted(full)[math.ceil(0.95 * 20) - 1]  # 19 of 20 whole
    assert stats.max_length_for() == max(want_tokens, want_examples)
    assert stats.max_length_for(policy="drop") == full[19]  # dropping either long example loses over 5% of tokens
    _, short = render_all(smol_tokenizer, CONVS[:18], 40)
    assert short.max_length_for() == max(full[:18])


def test_warning_above_5_percent_of_examples_or_trained_tokens(smol_tokenizer):
    _, stats = render_all(smol_tokenizer, CONVS, 40)
    text = truncation_warning(stats, 40)
    assert text.startswith("max_length 40: 2 of 20 examples (10.0%) are longer and cut (data.truncation=keep_start)")
    assert f"train.max_length={stats.max_length_for()} would keep 95%" in text and "data.truncation=drop" in text
    _, dropped = render_all(smol_tokenizer, CONVS, 40, truncation="drop")
    assert "are longer and left out (data.truncation=drop)" in truncation_warning(dropped, 40, "drop")
    _, one_long = render_all(smol_tokenizer, [_conv(i, 5) for i in range(40)] + [_conv(40, 6)], 40)
    assert one_long.truncated == 0 and truncation_warning(one_long, 40) is None
    # 1 long example of 21 (4.8%) but holding most trained tokens: the token share warns
    _, heavy = render_all(smol_tokenizer, [_conv(i, 5) for i in range(20)] + [_conv(20, 400)], 40)
    assert heavy.cut_example_share < 0.05 < heavy.cut_token_share and truncation_warning(heavy, 40) is not None
