"""Statistics every comparison shares: one bootstrap (paired index resamples, percentile intervals) and one macro-F1.

    tunesmith report runs/x-baseline runs/x-eval     # paired bootstrap CIs of every metric (resample_indices)
    tunesmith dpo configs/dpo/chatterbot-pairs.yaml        # reward accuracy CI (bootstrap_ci)

The percentile bootstrap (Efron 1979) resamples examples with replacement; the same index resamples serve every run
compared, so the interval of a difference is paired. Macro-F1 is the unweighted mean over classes of
F1 = 2 TP / (reference count + prediction count), 0 for a class with neither (scikit-learn's
``f1_score(average="macro", zero_division=0)``), computed from integer codes so a thousand resamples take milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

N_RESAMPLES = 1000
"""Bootstrap resamples used unless a caller asks for another number."""


def resample_indices(size: int, n: int = N_RESAMPLES, seed: int = 0) -> np.ndarray:
    """Bootstrap index resamples: ``IntArray[n, size]`` drawn with replacement by ``numpy.random.default_rng(seed)``."""
    return np.random.default_rng(seed).integers(0, size, size=(n, size))


def percentile_ci(samples: Sequence[float] | np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The ``level`` percentile interval (e.g. 2.5th-97.5th percentiles) of bootstrap statistics."""
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    return float(np.percentile(samples, lo)), float(np.percentile(samples, hi))


def bootstrap_ci(
    values: Sequence[float], *, confidence: float = 0.95, n_resamples: int = N_RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of per-example values.

    Args:
        values: per-example values (e.g. 0/1 correctness), ``list[float]`` or ``FloatArray[n]``.
        confidence: confidence level, e.g. 0.95.
        n_resamples: bootstrap resamples.
        seed: seed of :func:`resample_indices`.

    Returns:
        (low, high); (nan, nan) for fewer than two values.
    """
    data = np.asarray(values, dtype=float)
    if data.size < 2:
        return float("nan"), float("nan")
    return percentile_ci(data[resample_indices(data.size, n_resamples, seed)].mean(axis=1), confidence)


def macro_f1_resampler(
    references: Sequence, predictions: Sequence, labels: Sequence | None = None
) -> Callable[[np.ndarray], float]:
    """Macro-F1 as a function of an index array, for bootstrap resamples.

    Args:
        references, predictions: label per example (any hashable; ``None`` is a label of its own, so an unparsed
            prediction counts as wrong).
        labels: the classes averaged over; None: the classes present in the references of each resample.

    Returns:
        ``f(idx: IntArray[k]) -> float`` in [0, 1]; 0.0 when no class is present.
    """
    fixed = [str(x) for x in labels] if labels is not None else []
    codes = {lab: k for k, lab in enumerate(sorted({str(x) for x in [*references, *predictions, *fixed]}))}
    r = np.array([codes[str(x)] for x in references], dtype=int)
    p = np.array([codes[str(x)] for x in predictions], dtype=int)
    n = len(codes)
    chosen = np.zeros(n, dtype=bool)
    chosen[[codes[x] for x in fixed]] = True

    def f(idx: np.ndarray) -> float:
        ri, pi = r[idx], p[idx]
        ref_count, pred_count = np.bincount(ri, minlength=n), np.bincount(pi, minlength=n)
        tp = np.bincount(ri[ri == pi], minlength=n)
        classes = chosen if labels is not None else ref_count > 0
        if not classes.any():
            return 0.0
        denom = ref_count[classes] + pred_count[classes]
        return float(np.where(denom > 0, 2 * tp[classes] / np.maximum(denom, 1), 0.0).mean())

    return f


def macro_f1(references: Sequence, predictions: Sequence, labels: Sequence | None = None) -> float:
    """Macro-F1 of predictions against references: the one implementation behind every macro-F1 tunesmith reports.

    Args:
        references, predictions: label per example (``None`` counts as a wrong label).
        labels: the classes averaged over (a classifier's label set); None: the classes found in ``references``.

    Returns:
        Macro-F1 in [0, 1]; 0.0 for no examples. Equals scikit-learn's
        ``f1_score(references, predictions, labels=labels or sorted(set(references)), average="macro",
        zero_division=0)``.
    """
    if len(references) == 0:
        return 0.0
    return macro_f1_resampler(references, predictions, labels)(np.arange(len(references)))
