"""Task metrics against hand-computed values."""

import math

import pytest

from tunesmith.data.bundled import SCHEMA
from tunesmith.evaluate.answers import normalise
from tunesmith.evaluate.metrics import aggregate, extract_label, macro_f1, score_example


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


# --- answer_match: extractors and numeric tolerance ---------------------------------------------------------------


def test_gsm8k_extractor_takes_the_text_after_the_last_marker_else_the_last_number():
    from tunesmith.evaluate.answers import gsm8k_answer

    ref = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nSo 48+24 = <<48+24=72>>72 clips.\n#### 72"
    assert gsm8k_answer(ref) == "72"
    assert gsm8k_answer("#### 1 \n#### 1,200\nthanks") == "1,200"  # the last marker, the rest of its line
    assert gsm8k_answer("She has 3 apples, then 5. So the answer is 8.") == "8"  # no marker: the last number
    assert gsm8k_answer("####\nno number here") is None
    assert gsm8k_answer("no digits at all") is None


def test_last_number_boxed_and_choice_extractors():
    from tunesmith.evaluate.answers import boxed_answer, choice_answer, last_number

    assert last_number("from 3 to -4.5, total $1,234.") == "1,234"
    assert last_number("x = .5") == ".5" and last_number("none") is None
    assert boxed_answer(r"so \boxed{3} or rather \boxed{\frac{1}{2}} done") == r"\frac{1}{2}"
    assert boxed_answer(r"\boxed{unclosed") is None and boxed_answer("plain") is None
    assert choice_answer("B") == "B" and choice_answer("(C) because ...") == "C" and choice_answer("d. yes") is None
    assert choice_answer("I think the answer is (d).") == "D"  # "answer is X" wins, in upper case
    assert choice_answer("Both (A) and (B) look right") == "B"  # else the last parenthesised letter
    assert choice_answer("A cat sat") is None  # an article is not an answer: "A" must be followed by ) . : or end


def test_answer_regex_takes_group_1_of_the_last_match():
    from tunesmith.evaluate.answers import extract_answer

    regex = r"Answer:\s*(\w+)"
    assert extract_answer("Answer: cat ... Answer: Dog", regex=regex) == "Dog"
    assert extract_answer("nothing", regex=regex) is None
    assert one("Answer: DOG.", "Answer: dog", "answer_match", answer_regex=regex) == 1.0  # normalised text
    assert one("Answer: cat", "Answer: dog", "answer_match", answer_regex=regex) == 0.0


def test_answer_match_numeric_tolerance():
    from tunesmith.evaluate.answers import as_number, same_answer

    assert as_number("$1,200.50.") == 1200.5 and as_number("45%") == 45.0 and as_number("12 apples") is None
    assert same_answer("1,200", "1200") and same_answer("72.0", "72") and same_answer("$18", "18")
    assert not same_answer("71", "72") and not same_answer(None, "72") and not same_answer("72", None)
    assert same_answer("0.3333", "1/3") is False  # a fraction is no plain number: compared as text
    # relative to the reference above 1, absolute below
    assert same_answer("1000.5", "1000", tolerance=1e-3) and not same_answer("1002", "1000", tolerance=1e-3)
    assert same_answer("0.0005", "0", tolerance=1e-3) and not same_answer("0.002", "0", tolerance=1e-3)
    ref = "... so she makes 9 * 2 = $<<9*2=18>>18.\n#### 18"
    assert one("She makes 18 dollars a day.\n#### $18.00", ref, "answer_match", answer_extractor="gsm8k") == 1.0
    assert one("She makes 16 dollars.", ref, "answer_match", answer_extractor="gsm8k") == 0.0
    assert one("Eighteen.", ref, "answer_match", answer_extractor="gsm8k") == 0.0  # nothing extracted: 0


def test_answer_match_config_needs_one_extractor_and_a_capturing_regex():
    from tunesmith.config.load import load_config
    from tunesmith.errors import ConfigError

    ok = load_config(None, ["eval.metrics=[answer_match]", "eval.answer_extractor=gsm8k"])
    assert ok.eval.answer_extractor == "gsm8k"
    for overrides, reason in (
        (["eval.metrics=[answer_match]"], "needs exactly one of eval.answer_extractor"),
        (
            ["eval.metrics=[answer_match]", "eval.answer_extractor=boxed", r"eval.answer_regex=(\d+)"],
            "needs exactly one of eval.answer_extractor",
        ),
        (["eval.metrics=[answer_match]", r"eval.answer_regex=\d+"], "has no capture group"),
        (["eval.metrics=[answer_match]", "eval.answer_regex=(unclosed"], "is not a valid regex"),
    ):
        with pytest.raises(ConfigError) as exc:
            load_config(None, overrides)
        assert reason in str(exc.value.render()), exc.value.render()
    with pytest.raises(ConfigError, match="Invalid configuration"):
        load_config(None, ["eval.metrics=[answer_match]", "eval.answer_extractor=roman"])


# --- custom metric hooks ------------------------------------------------------------------------------------------


@pytest.fixture
def hooks(monkeypatch):
    from conftest import FIXTURES

    monkeypatch.syspath_prepend(str(FIXTURES / "metric_hooks"))
    import tunesmith_test_hooks

    tunesmith_test_hooks.CALLS.clear()
    return tunesmith_test_hooks


def test_custom_metric_is_validated_as_an_import_path_and_called_with_the_example(hooks):
    from tunesmith.config.load import load_config
    from tunesmith.config.metric_names import is_custom_metric
    from tunesmith.evaluate.metrics import Scoring, describe_custom_metric

    assert is_custom_metric("tunesmith_test_hooks:same_length") and is_custom_metric("a.b.c:f")
    assert not is_custom_metric("tests/hooks.py:f") and not is_custom_metric("mod:") and not is_custom_metric("x")
    cfg = load_config(None, ["eval.metrics=[exact_match, 'tunesmith_test_hooks:same_length']"])
    scoring = Scoring.from_eval(cfg.eval)
    example = {"id": "e1", "prompt": "q", "messages": [], "reference": "abc", "meta": {}}
    scores = score_example("xyz", "abc", cfg.eval.metrics, scoring, example=example)
    assert scores == {"exact_match": 0.0, "tunesmith_test_hooks:same_length": 1.0}
    assert hooks.CALLS == [("xyz", "abc", example)]
    info = describe_custom_metric("tunesmith_test_hooks:same_length")
    assert info["module_file"].endswith("tunesmith_test_hooks.py") and len(info["sha256"]) == 64
    assert info["qualname"] == "same_length"


def test_custom_metric_errors_name_the_metric(hooks):
    from tunesmith.config.load import load_config
    from tunesmith.errors import ConfigError, TunesmithError
    from tunesmith.evaluate.metrics import Scoring, load_custom_metric

    with pytest.raises(ConfigError) as exc:
        load_config(None, ["eval.metrics=['tests/hooks.py:f']"])
    assert "or a custom package.module:function" in exc.value.render()
    for name, reason in (
        ("no_such_module_xyz:f", "importing no_such_module_xyz failed: ModuleNotFoundError"),
        ("tunesmith_test_hooks:missing", "has no callable 'missing'"),
        ("tunesmith_test_hooks:NOT_A_FUNCTION", "has no callable 'NOT_A_FUNCTION'"),
    ):
        with pytest.raises(ConfigError) as exc:
            load_custom_metric(name)
        assert exc.value.problems[0].where == f"eval.metrics: {name}" and reason in exc.value.problems[0].reason
    cfg = load_config(None, ["eval.metrics=['tunesmith_test_hooks:broken']"])
    with pytest.raises(TunesmithError, match="A custom metric failed") as exc:
        score_example("a", "b", cfg.eval.metrics, Scoring.from_eval(cfg.eval), example={"id": "test.jsonl:3"})
    assert exc.value.problems[0].where == "eval.metrics: tunesmith_test_hooks:broken on test.jsonl:3"
    assert "ValueError: boom" in exc.value.problems[0].reason
