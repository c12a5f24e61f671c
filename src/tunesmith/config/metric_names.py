"""The names of the task metrics ``eval.metrics`` accepts (implemented in :mod:`tunesmith.evaluate.metrics`).

Kept in the config layer so validation names every known metric without importing the evaluation code.
"""

GENERATION_METRICS = (
    "exact_match",
    "contains",
    "json_valid",
    "json_schema",
    "regex",
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
"""Every metric name `eval.metrics` accepts."""
LOWER_IS_BETTER = frozenset(REFERENCE_METRICS)
"""Metrics where a smaller value is better (targets are upper bounds for them)."""
CORPUS_METRICS = frozenset({"label_macro_f1"})
"""Metrics with no per-example value (recomputed on each bootstrap resample from the labels)."""
