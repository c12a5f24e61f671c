"""Task metrics against hand-computed values."""

import math

import pytest

from tunesmith.data.bundled import SCHEMA
from tunesmith.evaluate.metrics import aggregate, extract_label, macro_f1, normalise, score_example


def one(pred, ref, metric, **kw):
    return score_example(pred, ref, [metric], **kw)[metric]


def test_exact_match_and_contains_are_normalised():
    assert normalise("  Hello\n  World ") == "hello world"
    assert one("  Hello\n World ", "hello world", "exact_match") == 1.0
    assert one("hello world!", "hello world", "exact_match") == 0.0
    assert one("The answer is  PARIS.", "paris", "contains") == 1.0
    assert one("Lyon", "paris", "contains") == 0.0


def test_json_valid_and_schema():
    assert one(' {"a": 1} \n', "", "json_valid") == 1.0
    assert one('{"a": 1', "", "json_valid") == 0.0
    assert one('```json\n{"a": 1}\n```', "", "json_valid") == 0.0  # strict: nothing around the JSON
    assert one("null", "", "json_valid") == 0.0
    good = '{"topic": "ai", "reply": "Yes."}'
    assert one(good, "", "json_schema", json_schema=SCHEMA) == 1.0
    assert one('{"topic": "cats", "reply": "Yes."}', "", "json_schema", json_schema=SCHEMA) == 0.0  # not in the enum
    assert one('{"topic": "ai", "reply": "Yes.", "x": 1}', "", "json_schema", json_schema=SCHEMA) == 0.0  # extra key
    assert one('{"topic": "ai"}', "", "json_schema", json_schema=SCHEMA) == 0.0  # missing reply
    assert one('{"topic": "ai", "reply": ""}', "", "json_schema", json_schema=SCHEMA) == 0.0  # minLength 1


def test_regex_matches_whole_answer():
    assert one(" 555-1234 ", "", "regex", regex=r"\d{3}-\d{4}") == 1.0
    assert one("call 555-1234", "", "regex", regex=r"\d{3}-\d{4}") == 0.0


def test_label_accuracy_with_and_without_field():
    ref = '{"topic": "AI", "reply": "x"}'
    assert extract_label(ref, "topic") == "ai"
    assert extract_label("not json", "topic") is None
    assert one('{"topic": "ai ", "reply": "other"}', ref, "label_accuracy", label_field="topic") == 1.0
    assert one('{"topic": "food", "reply": "x"}', ref, "label_accuracy", label_field="topic") == 0.0
    assert one('{"reply": "x"}', ref, "label_accuracy", label_field="topic") == 0.0
    assert one(" Positive", "positive", "label_accuracy") == 1.0  # whole normalised answer


def test_rouge_l_and_chrf_hand_computed():
    # LCS("the cat on mat", "the cat sat on the mat") = 4 tokens: P = 4/4, R = 4/6, F = 2PR/(P+R) = 0.8
    assert one("the cat on mat", "the cat sat on the mat", "rouge_l") == pytest.approx(0.8)
    # chrF (beta 2): 1-grams P = 2/2, R = 2/3; 2-grams P = 1/1, R = 1/2; orders 3-6 have no hypothesis n-gram.
    # mean P = 1, mean R = 7/12; F = 5 P R / (4 P + R) = 7/11
    assert one("ab", "abc", "chrf") == pytest.approx(7 / 11)
    assert one("same text", "same text", "chrf") == pytest.approx(1.0)


def test_macro_f1_hand_computed():
    # class a: P 1, R 1/2 -> F 2/3; class b: P 1/2, R 1/2 -> F 1/2; macro = 7/12; None counts as wrong
    assert macro_f1(["a", "a", "b", "b"], ["a", "b", "b", None]) == pytest.approx(7 / 12)
    assert macro_f1([], []) == 0.0


def test_aggregate_weights_eval_loss_by_reference_tokens():
    rows = [
        {"scores": {"eval_loss": 1.0, "json_valid": 1.0}, "reference_tokens": 2},
        {"scores": {"eval_loss": 4.0, "json_valid": 0.0}, "reference_tokens": 1},
    ]
    agg = aggregate(rows, ["json_valid", "eval_loss", "perplexity"])
    assert agg["json_valid"] == 0.5
    assert agg["eval_loss"] == pytest.approx(2.0)  # (1*2 + 4*1) / 3
    assert agg["perplexity"] == pytest.approx(math.exp(2.0))


def test_config_rejects_bad_metric_setup():
    from tunesmith.config.load import load_config
    from tunesmith.errors import ConfigError

    for overrides, reason in (
        (["eval.metrics=[bleu]"], "unknown metric 'bleu'"),
        (["eval.metrics=[json_schema]"], "metric json_schema needs eval.json_schema"),
        (
            ["eval.metrics=[exact_match]", "eval.targets={json_valid: 0.9}"],
            "target 'json_valid' is not in eval.metrics",
        ),
    ):
        with pytest.raises(ConfigError) as exc:
            load_config(None, overrides)
        assert exc.value.problems[0].where == "eval" and reason in exc.value.problems[0].reason
