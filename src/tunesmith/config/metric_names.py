"""The names of the task metrics ``eval.metrics`` accepts (implemented in :mod:`tunesmith.evaluate.metrics`).

Kept in the config layer so validation names every known metric without importing the evaluation code. A name of the
form ``package.module:function`` is a custom metric: validated here as an import path only, imported only by
:func:`tunesmith.evaluate.metrics.load_custom_metric` when an evaluation runs.
"""

import re

GENERATION_METRICS = (
    "exact_match",
    "contains",
    "json_valid",
    "json_schema",
    "regex",
    "answer_match",
    "label_accuracy",
    "label_macro_f1",
    "rouge_l",
    "chrf",
    "tool_call_ast",
    "tool_name_accuracy",
    "tool_call_valid_json",
)
"""Metrics computed from generated answers."""
TOOL_METRICS = ("tool_call_ast", "tool_name_accuracy", "tool_call_valid_json")
"""Function-calling metrics: the reply's tool calls parsed in the chat template's layout, checked against the
reference calls (BFCL ``possible_answer`` ground truth or the reference turn's own calls)."""
REFERENCE_METRICS = ("eval_loss", "perplexity")
"""Metrics computed from the reference answers' token likelihood (no generation)."""
ALL_METRICS = GENERATION_METRICS + REFERENCE_METRICS
"""Every built-in metric name `eval.metrics` accepts (custom ``package.module:function`` names come on top)."""
LOWER_IS_BETTER = frozenset(REFERENCE_METRICS)
"""Metrics where a smaller value is better (targets are upper bounds for them)."""
CORPUS_METRICS = frozenset({"label_macro_f1"})
"""Metrics with no per-example value (recomputed on each bootstrap resample from the labels)."""
ANSWER_EXTRACTORS = ("gsm8k", "last_number", "boxed", "choice")
"""Named extractors of ``answer_match`` (``eval.answer_extractor``): the text after ``####`` (else the last number),
the last number, the content of the last ``\\boxed{...}``, a multiple-choice letter."""

_IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")


def is_custom_metric(name: str) -> bool:
    """True when ``name`` has the shape of a custom metric hook, ``package.module:function`` (identifiers only)."""
    return _IMPORT_PATH.fullmatch(name) is not None


def is_known_metric(name: str) -> bool:
    """True for a built-in metric name or a well-formed custom ``package.module:function`` hook."""
    return name in ALL_METRICS or is_custom_metric(name)


def generation_metrics(names) -> list[str]:
    """The names of ``names`` scored from generated answers: built-in generation metrics and custom hooks, in order."""
    return [n for n in names if n in GENERATION_METRICS or is_custom_metric(n)]
