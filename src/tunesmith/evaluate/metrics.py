"""Task metrics of generated answers, per example and aggregated (used by `tunesmith baseline` and `tunesmith eval`).

    tunesmith baseline configs/sft/decision-chatterbot-json.yaml    # scores generations with eval.metrics
    tunesmith baseline configs/sft/gsm8k.yaml --set data.path=... --set data.eval_path=...   # answer_match

Metrics computed from a generation and its reference (each per example, in [0, 1]):

- ``exact_match``: the normalised prediction equals the normalised reference (:func:`normalise`).
- ``contains``: the normalised reference occurs in the normalised prediction.
- ``json_valid``: the stripped prediction parses as JSON (Python's ``json``).
- ``json_schema``: it parses and validates against ``eval.json_schema`` (``jsonschema``, the schema's own draft).
- ``regex``: the stripped prediction matches ``eval.regex`` in full (``re.fullmatch``).
- ``answer_match``: the final answer extracted from prediction and reference (:func:`extract_answer`:
  ``eval.answer_regex`` or the extractor ``eval.answer_extractor``) is the same: numerically within
  ``eval.answer_tolerance`` when both read as numbers (:func:`same_answer`), else as normalised text. An answer that
  cannot be extracted from the prediction scores 0.
- ``label_accuracy`` / ``label_macro_f1``: the label of the prediction equals the reference's label; the label is
  ``eval.label_field`` of the JSON object when set (``None`` when the prediction is no JSON object with that field),
  else the normalised whole answer. Macro-F1 is scikit-learn's ``f1_score(average="macro")`` over the reference
  labels (a predicted label outside them counts as wrong), a corpus-level figure with no per-example value.
- ``rouge_l``: ROUGE-L F-measure (``rouge-score``, Lin 2004), ``chrf``: chrF (``sacrebleu``, Popović 2015) / 100,
  both sentence-level; the aggregate is their mean.
- a custom metric ``package.module:function``: ``function(prediction, reference, example) -> float``, imported by
  :func:`load_custom_metric` from the import path the user named in ``eval.metrics`` (never from a file path).

- ``tool_call_ast``, ``tool_name_accuracy``, ``tool_call_valid_json``: the reply's tool calls, parsed in the chat
  template's layout (:mod:`tunesmith.render.tool_calls`), against the expected calls: BFCL's AST check, the called
  function names, well-formed call blocks (:mod:`tunesmith.evaluate.tool_metrics`).

``eval_loss`` and ``perplexity`` are computed from the references by :mod:`tunesmith.evaluate.loss`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from tunesmith.config.metric_names import REFERENCE_METRICS, TOOL_METRICS, is_custom_metric
from tunesmith.errors import ConfigError, Problem, TunesmithError
from tunesmith.evaluate.answers import extract_answer, normalise, same_answer
from tunesmith.evaluate.loss import mean_token_loss, row_nll, row_tokens
from tunesmith.evaluate.stats import macro_f1
from tunesmith.evaluate.tool_metrics import ast_check, tool_scores
from tunesmith.render.tool_calls import parse_reply


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


# --- answer extraction -------------------------------------------------------------------------------------------


# --- custom metrics ----------------------------------------------------------------------------------------------


def load_custom_metric(name: str) -> Callable[[str, str, dict], float]:
    """Import the function a custom metric names, ``package.module:function``, from the import path (never a file).

    Raises:
        ConfigError: a malformed name, a module that cannot be imported (with the import error), or an attribute that
            is missing or not callable.
    """
    import importlib

    where = f"eval.metrics: {name}"
    if not is_custom_metric(name):
        raise ConfigError("Not a custom metric", [Problem(where, "expected package.module:function", "fix the name")])
    module_name, func_name = name.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import failure is the user's module's problem, reported as such
        raise ConfigError(
            "Cannot import a custom metric",
            [
                Problem(
                    where,
                    f"importing {module_name} failed: {type(exc).__name__}: {exc}",
                    "install the package, or run with PYTHONPATH set to the folder holding it",
                )
            ],
        ) from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ConfigError(
            "Custom metric is not a function",
            [
                Problem(
                    where,
                    f"{module_name} has no callable {func_name!r}",
                    "name a function (prediction, reference, example) -> float",
                )
            ],
        )
    return func


def describe_custom_metric(name: str) -> dict:
    """What the manifest records of a custom metric: its name, the file it was imported from and that file's SHA-256.

    Raises:
        ConfigError: as :func:`load_custom_metric`.
    """
    import hashlib
    import inspect

    func = load_custom_metric(name)
    try:
        path = inspect.getsourcefile(func)
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else None
    except (OSError, TypeError):
        path, digest = None, None
    return {"name": name, "module_file": path, "sha256": digest, "qualname": getattr(func, "__qualname__", None)}


# --- scoring -----------------------------------------------------------------------------------------------------


@dataclass
class Scoring:
    """The options every metric may need (from the ``eval`` section), and the custom metric functions.

    Attributes:
        json_schema: the JSON Schema of ``json_schema``; regex: the full-match pattern of ``regex``.
        label_field: the JSON field of ``label_accuracy`` (None: the whole answer).
        answer_extractor / answer_regex / answer_tolerance: ``answer_match`` (see :func:`extract_answer`).
        custom: custom metric name -> function (loaded by :func:`load_custom_metric`).
    """

    json_schema: dict | None = None
    regex: str | None = None
    label_field: str | None = None
    answer_extractor: str | None = None
    answer_regex: str | None = None
    answer_tolerance: float = 1e-6
    custom: dict[str, Callable] = field(default_factory=dict)

    @classmethod
    def from_eval(cls, eval_cfg, json_schema: dict | None = None, *, load_custom: bool = True) -> "Scoring":
        """The scoring options of an ``eval`` section; custom metrics are imported when ``load_custom``.

        Raises:
            ConfigError: a custom metric that cannot be imported.
        """
        custom = {m: load_custom_metric(m) for m in eval_cfg.metrics if is_custom_metric(m)} if load_custom else {}
        return cls(
            json_schema=json_schema,
            regex=eval_cfg.regex,
            label_field=eval_cfg.label_field,
            answer_extractor=getattr(eval_cfg, "answer_extractor", None),
            answer_regex=getattr(eval_cfg, "answer_regex", None),
            answer_tolerance=getattr(eval_cfg, "answer_tolerance", 1e-6),
            custom=custom,
        )

    def options(self) -> dict:
        """The options as JSON (``metrics.json`` ``scoring``; the report re-scores trivial answers with them)."""
        return {
            "json_schema": self.json_schema,
            "regex": self.regex,
            "label_field": self.label_field,
            "answer_extractor": self.answer_extractor,
            "answer_regex": self.answer_regex,
            "answer_tolerance": self.answer_tolerance,
        }

    def answer(self, text: str) -> str | None:
        """The answer ``answer_match`` compares (:func:`extract_answer` with these options)."""
        return extract_answer(text, extractor=self.answer_extractor, regex=self.answer_regex)


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


def _label_accuracy(p: str, r: str, s: Scoring) -> float:
    label = extract_label(p, s.label_field)
    return float(label is not None and label == extract_label(r, s.label_field))


SCORERS: dict[str, Callable[[str, str, Scoring], float]] = {
    "exact_match": lambda p, r, s: float(normalise(p) == normalise(r)),
    "contains": lambda p, r, s: float(normalise(r) in normalise(p)),
    "json_valid": lambda p, r, s: float(parse_json(p) is not None),
    "json_schema": lambda p, r, s: float((v := parse_json(p)) is not None and schema_valid(v, s.json_schema or {})),
    "regex": lambda p, r, s: float(re.fullmatch(s.regex or "", p.strip(), flags=re.DOTALL) is not None),
    "answer_match": lambda p, r, s: float(same_answer(s.answer(p), s.answer(r), s.answer_tolerance)),
    "label_accuracy": _label_accuracy,
    "rouge_l": lambda p, r, s: rouge_l(p, r),
    "chrf": lambda p, r, s: float(_chrf().sentence_score(p, [r]).score) / 100.0,
}
"""Per-example built-in metrics: name -> (prediction, reference, scoring) -> score in [0, 1]."""


def score_example(
    prediction: str,
    reference: str,
    metrics: list[str] | tuple[str, ...],
    scoring: Scoring | None = None,
    *,
    example: dict | None = None,
    expected_calls: list[dict] | None = None,
    tools: list[dict] | None = None,
    call_fmt: str = "hermes",
    **options,
) -> dict[str, float]:
    """Per-example scores of one generated answer.

    Args:
        prediction: the generated text (end-of-turn token removed).
        reference: the reference answer.
        metrics: metric names; corpus-level and reference metrics are skipped here.
        scoring: the options (:class:`Scoring`); or give them as keywords (``json_schema=``, ``regex=``,
            ``label_field=``, ``answer_extractor=``, ``answer_regex=``, ``answer_tolerance=``, ``custom=``).
        example: what a custom metric gets as its third argument (id, prompt, reference, messages, meta).
        expected_calls: for the tool metrics, the expected calls in BFCL's ground-truth shape ``[{function: {param:
            [acceptable values]}}]`` (None or ``[]``: no call expected).
        tools: the example's tool specs (the AST check reads parameter types and required parameters).
        call_fmt: the template's call layout (:func:`tunesmith.render.tool_calls.call_format`).

    Returns:
        ``{metric: float}``: 1.0/0.0 for the binary metrics, [0, 1] for ``rouge_l`` and ``chrf``, the custom
        function's value for a custom metric.

    Raises:
        TunesmithError: a custom metric that raises or returns something that is not a number.
    """
    s = scoring or Scoring(**options)
    out: dict[str, float] = {}
    for name in metrics:
        if name in SCORERS:
            out[name] = SCORERS[name](prediction, reference, s)
        elif name in s.custom:
            out[name] = _call_custom(name, s.custom[name], prediction, reference, example or {})
    if set(TOOL_METRICS) & set(metrics):
        out.update(tool_scores(parse_reply(prediction, call_fmt), expected_calls or [], tools, metrics))
    return out


def tool_call_error(prediction: str, expected_calls: list[dict] | None, tools, call_fmt: str = "hermes") -> str | None:
    """Why a reply fails ``tool_call_ast`` (None when it passes), for ``predictions.jsonl``."""
    parsed = parse_reply(prediction, call_fmt)
    if parsed.invalid:
        return f"malformed tool call: {parsed.invalid[0][:80]!r}"
    return ast_check(parsed.calls, expected_calls or [], tools)


def _call_custom(name: str, func, prediction: str, reference: str, example: dict) -> float:
    where = f"eval.metrics: {name}" + (f" on {example['id']}" if example.get("id") else "")
    try:
        value = float(func(prediction, reference, example))
    except Exception as exc:  # the user's function failed: report it with the example
        raise TunesmithError(
            "A custom metric failed",
            [
                Problem(
                    where, f"{type(exc).__name__}: {exc}", "return a float for every (prediction, reference, example)"
                )
            ],
        ) from None
    return value


def aggregate(rows: list[dict], metrics: list[str] | tuple[str, ...]) -> dict[str, float]:
    """Aggregate per-example rows into task metrics.

    Args:
        rows: ``predictions.jsonl`` rows: ``{"scores": {metric: float}, "labels": {"prediction", "reference"},
            "reference_nll": float, "reference_tokens": int}``; ``labels`` is needed for ``label_macro_f1``,
            ``reference_nll``/``reference_tokens`` (summed nats and trained tokens of the example's row) for
            ``eval_loss``.
        metrics: the metric names to aggregate.

    Returns:
        ``{metric: float}``: means of per-example scores; ``label_macro_f1`` from the labels; ``eval_loss`` by
        :func:`tunesmith.evaluate.loss.mean_token_loss` over every row (rows truncation dropped have 0 tokens) and
        ``perplexity = exp(eval_loss)``.
    """
    out: dict[str, float] = {}
    for name in metrics:
        if name == "label_macro_f1":
            out[name] = macro_f1([r["labels"]["reference"] for r in rows], [r["labels"]["prediction"] for r in rows])
        elif name in REFERENCE_METRICS:
            loss = mean_token_loss([row_nll(r) for r in rows], [row_tokens(r) for r in rows])
            out[name] = loss if name == "eval_loss" else math.exp(loss)
        else:
            vals = [r["scores"][name] for r in rows if name in r["scores"]]
            out[name] = sum(vals) / len(vals) if vals else 0.0
    return out
