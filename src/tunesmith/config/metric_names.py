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
)
"""Metrics computed from generated answers."""
REFERENCE_METRICS = ("eval_loss", "perplexity")
"""Metrics computed from the reference answers' token likelihood (no generation)."""
ALL_METRICS = GENERATION_METRICS + REFERENCE_METRICS
"""Every metric name `eval.metrics` accepts."""
LOWER_IS_BETTER = frozenset(REFERENCE_METRICS)
"""Metrics where a smaller value is better (targets are upper bounds for them)."""
CORPUS_METRICS = frozenset({"label_macro_f1"})
"""Metrics with no per-example value (recomputed on each bootstrap resample from the labels)."""
