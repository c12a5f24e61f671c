"""Task metrics of generated answers, per example and aggregated (used by `tunesmith baseline` and `tunesmith eval`).

    tunesmith baseline configs/sft/decision-chatterbot-json.yaml    # scores generations with eval.metrics

Metrics computed from a generation and its reference (each per example, in [0, 1]):

- ``exact_match``: the normalised prediction equals the normalised reference (:func:`normalise`).
- ``contains``: the normalised reference occurs in the normalised prediction.
- ``json_valid``: the stripped prediction parses as JSON (Python's ``json``).
- ``json_schema``: it parses and validates against ``eval.json_schema`` (``jsonschema``, the schema's own draft).
- ``regex``: the stripped prediction matches ``eval.regex`` in full (``re.fullmatch``).
- ``label_accuracy`` / ``label_macro_f1``: the label of the prediction equals the reference's label; the label is
  ``eval.label_field`` of the JSON object when set (``None`` when the prediction is no JSON object with that field),
  else the normalised whole answer. Macro-F1 is scikit-learn's ``f1_score(average="macro")`` over the reference
  labels (a predicted label outside them counts as wrong), a corpus-level figure with no per-example value.
- ``rouge_l``: ROUGE-L F-measure (``rouge-score``, Lin 2004), ``chrf``: chrF (``sacrebleu``, Popović 2015) / 100,
  both sentence-level; the aggregate is their mean.

- ``tool_call_ast``, ``tool_name_accuracy``, ``tool_call_valid_json``: the reply's tool calls, parsed in the chat
  template's layout (:mod:`tunesmith.render.tool_calls`), against the expected calls: BFCL's AST check, the called
  function names, well-formed call blocks (:mod:`tunesmith.evaluate.tool_metrics`).

``eval_loss`` and ``perplexity`` are computed from the references by :mod:`tunesmith.evaluate.generative`.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache

from tunesmith.config.metric_names import REFERENCE_METRICS, TOOL_METRICS
from tunesmith.evaluate.stats import macro_f1
from tunesmith.evaluate.tool_metrics import ast_check, tool_scores
from tunesmith.render.tool_calls import parse_reply


def normalise(text: str) -> str:
    """Case-fold, strip and collapse whitespace: ``"  Hello\\n World "`` -> ``"hello world"``."""
    return " ".join(str(text).casefold().split())


def parse_json(text: str):
    """The JSON value of the stripped text, or ``None`` when it is not valid JSON (``null`` itself counts as
    invalid)."""
    try:
        return json.loads(text.strip())
    except (ValueError, RecursionError):
        return None


@lru_cache(maxsize=8)
def _validator(schema_text: str):
    import jsonschema

    schema = json.loads(schema_text)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def schema_valid(value, schema: dict) -> bool:
    """True when ``value`` (already parsed JSON) validates against ``schema`` (jsonschema, the schema's draft).

    Raises:
        jsonschema.SchemaError: when ``schema`` itself is not a valid JSON Schema (config validation checks this first).
    """
    return _validator(json.dumps(schema, sort_keys=True)).is_valid(value)


def extract_label(text: str, field: str | None) -> str | None:
    """The label of an answer: ``field`` of its JSON object (normalised string) when ``field`` is set, else the
    normalised whole text. ``None`` when ``field`` is set and the text is no JSON object holding it."""
    if field is None:
        return normalise(text)
    obj = parse_json(text)
    if not isinstance(obj, dict) or field not in obj or isinstance(obj[field], (dict, list)):
        return None
    return normalise(str(obj[field]))


@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure of a prediction against a reference (``rouge-score``, no stemming; Lin 2004), in [0, 1]:
    the one ROUGE-L of the task metrics and of the DPO win rate."""
    return float(_rouge().score(reference, prediction)["rougeL"].fmeasure)


@lru_cache(maxsize=1)
def _chrf():
    from sacrebleu.metrics import CHRF

    return CHRF()


def score_example(
    prediction: str,
    reference: str,
    metrics: list[str] | tuple[str, ...],
    *,
    json_schema: dict | None = None,
    regex: str | None = None,
    label_field: str | None = None,
    expected_calls: list[dict] | None = None,
    tools: list[dict] | None = None,
    call_fmt: str = "hermes",
) -> dict[str, float]:
    """Per-example scores of one generated answer.

    Args:
        prediction: the generated text (end-of-turn token removed).
        reference: the reference answer.
        metrics: metric names (see :data:`ALL_METRICS`); corpus-level and reference metrics are skipped here.
        json_schema: the JSON Schema for ``json_schema``.
        regex: the pattern for ``regex`` (must match the whole stripped prediction).
        label_field: JSON field holding the label for ``label_accuracy`` (None: the whole answer).
        expected_calls: for the tool metrics, the expected calls in BFCL's ground-truth shape ``[{function: {param:
            [acceptable values]}}]`` (None or ``[]``: no call expected).
        tools: the example's tool specs (the AST check reads parameter types and required parameters).
        call_fmt: the template's call layout (:func:`tunesmith.render.tool_calls.call_format`).

    Returns:
        ``{metric: float}``: 1.0/0.0 for the binary metrics, [0, 1] for ``rouge_l`` and ``chrf``.
    """
    out: dict[str, float] = {}
    if set(TOOL_METRICS) & set(metrics):
        out.update(tool_scores(parse_reply(prediction, call_fmt), expected_calls or [], tools, metrics))
    pred_n, ref_n = normalise(prediction), normalise(reference)
    parsed = parse_json(prediction) if {"json_valid", "json_schema"} & set(metrics) else None
    for name in metrics:
        if name == "exact_match":
            out[name] = float(pred_n == ref_n)
        elif name == "contains":
            out[name] = float(ref_n in pred_n)
        elif name == "json_valid":
            out[name] = float(parsed is not None)
        elif name == "json_schema":
            out[name] = float(parsed is not None and schema_valid(parsed, json_schema or {}))
        elif name == "regex":
            out[name] = float(re.fullmatch(regex or "", prediction.strip(), flags=re.DOTALL) is not None)
        elif name == "label_accuracy":
            label = extract_label(prediction, label_field)
            out[name] = float(label is not None and label == extract_label(reference, label_field))
        elif name == "rouge_l":
            out[name] = rouge_l(prediction, reference)
        elif name == "chrf":
            out[name] = float(_chrf().sentence_score(prediction, [reference]).score) / 100.0
    return out


def tool_call_error(prediction: str, expected_calls: list[dict] | None, tools, call_fmt: str = "hermes") -> str | None:
    """Why a reply fails ``tool_call_ast`` (None when it passes), for ``predictions.jsonl``."""
    parsed = parse_reply(prediction, call_fmt)
    if parsed.invalid:
        return f"malformed tool call: {parsed.invalid[0][:80]!r}"
    return ast_check(parsed.calls, expected_calls or [], tools)


def aggregate(rows: list[dict], metrics: list[str] | tuple[str, ...]) -> dict[str, float]:
    """Aggregate per-example rows into task metrics.

    Args:
        rows: ``predictions.jsonl`` rows: ``{"scores": {metric: float}, "labels": {"prediction", "reference"},
            "reference_tokens": int}``; ``labels`` is needed for ``label_macro_f1``, ``reference_tokens`` weights
            ``eval_loss`` (a per-token mean over all reference tokens).
        metrics: the metric names to aggregate.

    Returns:
        ``{metric: float}``: means of per-example scores; ``label_macro_f1`` from the labels; ``eval_loss`` weighted by
        reference tokens and ``perplexity = exp(eval_loss)``.
    """
    import math

    out: dict[str, float] = {}
    for name in metrics:
        if name == "label_macro_f1":
            out[name] = macro_f1([r["labels"]["reference"] for r in rows], [r["labels"]["prediction"] for r in rows])
        elif name in REFERENCE_METRICS:
            tokens = sum(r.get("reference_tokens", 1) for r in rows)
            loss = sum(r["scores"]["eval_loss"] * r.get("reference_tokens", 1) for r in rows) / max(tokens, 1)
            out[name] = loss if name == "eval_loss" else math.exp(loss)
        else:
            vals = [r["scores"][name] for r in rows if name in r["scores"]]
            out[name] = sum(vals) / len(vals) if vals else 0.0
    return out
