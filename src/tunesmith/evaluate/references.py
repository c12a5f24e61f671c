"""Trivial references of the decision report, computed from the runs' own ``predictions.jsonl``, and the lines that
compare runs with them and with each other.

    tunesmith report runs/x-baseline runs/x-eval     # reference columns, "below a trivial reference" flags

- Label tasks (classification runs, or ``label_accuracy``/``label_macro_f1``): the **majority class** (always answer
  the most frequent reference label) and a **uniform random guess** over the K labels (expected accuracy 1/K;
  expected macro-F1 from expected counts: class c with n_c of n references gets F1 = 2 (n_c/K) / (n_c + n/K)).
- Generation tasks: **copy the prompt** (answer with the last user turn) and the **empty answer**, re-scored with the
  run's own metric options (``metrics.json`` ``scoring``); shown where they score above 0 on some metric. Custom
  metrics are never re-imported by the report.

A prompting run (``kind`` baseline) that scores below a trivial reference on a metric is flagged. Without targets,
:func:`best_lines` names the best run per metric and whether the paired bootstrap interval of its lead over the
next run excludes 0.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from tunesmith.config.metric_names import CORPUS_METRICS, LOWER_IS_BETTER
from tunesmith.evaluate.metrics import SCORERS, Scoring
from tunesmith.evaluate.stats import macro_f1, macro_f1_resampler, percentile_ci

LABEL_METRICS = {"accuracy": "macro_f1", "label_accuracy": "label_macro_f1"}
"""Accuracy metric -> its macro-F1, for the two kinds of label task."""
NEEDS_OPTIONS = frozenset({"json_schema", "regex", "answer_match"})
"""Metrics that cannot be re-scored without the run's ``scoring`` options (its schema, regex, extractor)."""


@dataclass
class Reference:
    """A trivial answer strategy scored like a run: ``values`` metric -> value, ``ci`` metric -> 95% interval."""

    name: str
    values: dict[str, float]
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)


def _labels(run) -> tuple[list, list | None, str] | None:
    """(reference labels, the label set or None, the accuracy metric's name) of a label task, else None."""
    names = run.metrics.get("labels") if isinstance(run.metrics.get("labels"), list) else None
    if "accuracy" in run.metrics["task_metrics"]:
        return [r.get("reference") for r in run.rows], names, "accuracy"
    if "label_accuracy" in run.metrics["task_metrics"] and all("labels" in r for r in run.rows):
        return [r["labels"]["reference"] for r in run.rows], None, "label_accuracy"
    return None


def label_references(run, samples: np.ndarray) -> list[Reference]:
    """Majority class and uniform random guess of a label task (none for other tasks).

    Args:
        run: the reference run (its references are every run's).
        samples: the report's bootstrap index resamples, ``IntArray[n, size]``.
    """
    found = _labels(run)
    if found is None or not found[0]:
        return []
    refs, names, acc = found
    f1 = LABEL_METRICS[acc]
    counts = Counter(str(x) for x in refs)
    majority = sorted(counts, key=lambda k: (-counts[k], k))[0]
    hit = np.array([str(x) == majority for x in refs], dtype=float)
    preds = [majority] * len(refs)
    major = Reference(
        f"majority class ({majority!r})",
        {acc: float(hit.mean()), f1: macro_f1(refs, preds, labels=names)},
        {acc: percentile_ci(hit[samples].mean(axis=1)), f1: _ci(macro_f1_resampler(refs, preds, names), samples)},
    )
    classes = [str(x) for x in names] if names else sorted(counts)
    k, n = len(classes), len(refs)
    expected_f1 = float(np.mean([2 * (counts.get(c, 0) / k) / (counts.get(c, 0) + n / k) for c in classes]))
    uniform = Reference(f"uniform random guess (1 of {k})", {acc: 1.0 / k, f1: expected_f1})
    return [major, uniform]


def _ci(f, samples: np.ndarray) -> tuple[float, float]:
    return percentile_ci(np.array([f(idx) for idx in samples]))


def generation_references(run, names: list[str], samples: np.ndarray) -> list[Reference]:
    """ "copy the prompt" and "empty answer" re-scored with the run's metric options, where either scores above 0.

    Args:
        run: the reference run; its rows need ``input`` (the last user turn) for "copy the prompt".
        names: the report's metrics (per-example built-in generation metrics are re-scored; others skipped).
        samples: the report's bootstrap index resamples.
    """
    options = run.metrics.get("scoring")
    scoring = Scoring(**{k: v for k, v in (options or {}).items() if k in Scoring.__annotations__})
    metrics = [m for m in names if m in SCORERS and m not in CORPUS_METRICS and m != "label_accuracy"]
    if options is None:  # a run dir without its metric options: only the metrics that need none can be re-scored
        metrics = [m for m in metrics if m not in NEEDS_OPTIONS]
    if not metrics or not run.rows:
        return []
    out = []
    answers = {"empty answer": lambda r: ""}
    if all("input" in r for r in run.rows):
        answers = {"copy the prompt": lambda r: r["input"], **answers}
    for label, answer in answers.items():
        per = {m: np.array([SCORERS[m](answer(r), r["reference"], scoring) for r in run.rows]) for m in metrics}
        if any(v.mean() > 0 for v in per.values()):
            values = {m: float(v.mean()) for m, v in per.items()}
            out.append(Reference(label, values, {m: percentile_ci(v[samples].mean(axis=1)) for m, v in per.items()}))
    return out


def below_reference_flags(runs, references: list[Reference]) -> list[str]:
    """One line per prompting run and metric where a trivial reference scores higher (lower for losses)."""
    lines = []
    for run in runs:
        if run.metrics.get("kind") != "baseline":
            continue
        for ref in references:
            for name, ref_value in ref.values.items():
                value = run.metrics["task_metrics"].get(name)
                if value is None or name in LOWER_IS_BETTER or value >= ref_value:
                    continue
                lines.append(
                    f"{run.name} scores {name} {value:.3f}, below the trivial reference {ref.name} ({ref_value:.3f}): "
                    "prompting does worse than not using the model"
                )
    return lines


def best_lines(runs, names: list[str], samples: dict) -> list[str]:
    """Without targets: per metric, the best run and whether the paired bootstrap interval of its lead over the next
    run excludes 0.

    Args:
        runs: the report's runs.
        names: metrics.
        samples: ``(id(run), metric) -> FloatArray[n]`` bootstrap statistics on shared resamples.
    """
    lines = []
    for name in names:
        ranked = sorted(
            (r for r in runs if name in r.metrics["task_metrics"]),
            key=lambda r: r.metrics["task_metrics"][name],
            reverse=name not in LOWER_IS_BETTER,
        )
        if not ranked:
            continue
        best = ranked[0]
        value = best.metrics["task_metrics"][name]
        if len(ranked) == 1:
            lines.append(f"{name}: {best.name} {value:.3f} (one run)")
            continue
        nxt = ranked[1]
        lead = value - nxt.metrics["task_metrics"][name]
        a, b = samples.get((id(best), name)), samples.get((id(nxt), name))
        head = f"{name}: best {best.name} {value:.3f}, ahead of {nxt.name} by {abs(lead):.3f}"
        if a is None or b is None:
            lines.append(head + " (no interval)")
            continue
        lo, hi = percentile_ci(a - b)
        separated = lo > 0 or hi < 0
        lines.append(
            head
            + f" (95% CI of the difference {lo:+.3f} to {hi:+.3f}: "
            + ("separated" if separated else "not separated, the data cannot tell them apart")
            + ")"
        )
    return lines
