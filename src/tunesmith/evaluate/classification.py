"""Classification metrics (scikit-learn) and the run-dir contract files the decision report reads.

``metrics.json`` holds ``kind``, ``model``, ``task_metrics`` (``accuracy``, ``macro_f1``) and the
per-class precision/recall/F1; ``predictions.jsonl`` one line per eval example in eval-set order
(``id``, ``prompt``, ``prediction``, ``reference``, ``scores``); ``confusion_matrix.png`` the
confusion matrix (rows = reference, columns = prediction).
"""

from __future__ import annotations

from pathlib import Path

from tunesmith.evaluate.stats import macro_f1
from tunesmith.runtime.files import atomic_write_jsonl

UNPARSED = "unparsed"
"""Prediction of the prompting baseline when its answer names no label."""


def classification_metrics(references: list[str], predictions: list[str], names: list[str]) -> dict:
    """Accuracy, macro-F1 and per-class precision/recall/F1/support.

    Args:
        references: gold label names, one per example.
        predictions: predicted label names (``"unparsed"`` or any name outside ``names`` counts as wrong).
        names: the label set in id order; macro averages run over exactly these labels.

    Returns:
        ``{"accuracy": float, "macro_f1": float, "macro_precision": float, "macro_recall": float,
        "per_class": {label: {"precision", "recall", "f1", "support"}}, "confusion_matrix": list[list[int]],
        "unparsed_rate": float}``; the matrix is ``[len(names)][len(names) + 1]``, its last column counting
        predictions outside the label set.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    p, r, f, s = precision_recall_fscore_support(references, predictions, labels=names, average=None, zero_division=0)
    mp, mr, mf, _ = precision_recall_fscore_support(
        references, predictions, labels=names, average="macro", zero_division=0
    )
    outside = [x if x in names else UNPARSED for x in predictions]
    cm = confusion_matrix(references, outside, labels=names + [UNPARSED])
    return {
        "accuracy": float(accuracy_score(references, predictions)) if references else 0.0,
        "macro_f1": macro_f1(references, predictions, labels=names),
        "macro_precision": float(mp),
        "macro_recall": float(mr),
        "per_class": {
            n: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, n in enumerate(names)
        },
        "confusion_matrix": cm[: len(names)].tolist(),
        "unparsed_rate": sum(x not in names for x in predictions) / max(len(predictions), 1),
    }


def plot_confusion(path: Path, matrix: list[list[int]], names: list[str], title: str) -> Path:
    """Draw the confusion matrix (rows = reference, columns = prediction, last column = outside the label set) to a
    PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    m = np.asarray(matrix)
    cols = names + [UNPARSED]
    if m.shape[1] == len(cols) and not m[:, -1].any():
        m, cols = m[:, :-1], names
    side = max(4.0, 0.45 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(side + 1, side), dpi=100)
    im = ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    if len(names) <= 20:
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                if m[i, j]:
                    ax.text(
                        j,
                        i,
                        int(m[i, j]),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if m[i, j] > m.max() / 2 else "black",
                    )
    ax.set_xlabel("prediction")
    ax.set_ylabel("reference")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    tmp = path.with_name("." + path.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def write_eval_artifacts(
    run_dir: Path,
    *,
    kind: str,
    model: str,
    records,
    predictions: list[str],
    names: list[str],
    extra: dict | None = None,
    cost: dict | None = None,
) -> dict:
    """Write ``predictions.jsonl`` and ``confusion_matrix.png`` for one evaluated model, and return its metrics.

    Args:
        run_dir: the run directory.
        kind: ``"classify"`` or ``"baseline"`` (the shared contract's ``kind``).
        model: model name.
        records: eval :class:`~tunesmith.data.labels.LabelRecord` list, in eval-set order.
        predictions: predicted label names, aligned with ``records``.
        names: the label set in id order.
        extra: more keys for ``metrics.json`` (timings, data report, ...).
        cost: the contract's ``cost`` object (parameters, trainable_parameters, ...).

    Returns:
        The metrics dict; the caller writes it to ``metrics.json`` last.
    """
    refs = [r.label for r in records]
    m = classification_metrics(refs, predictions, names)
    metrics = {
        "kind": kind,
        "model": model,
        "task": "classification",
        "task_metrics": {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]},
        "labels": names,
        "eval_examples": len(records),
        **m,
        **(extra or {}),
    }
    if cost:
        metrics["cost"] = cost
    atomic_write_jsonl(
        run_dir / "predictions.jsonl",
        [
            {
                "id": r.id,
                "prompt": r.text if r.text_pair is None else f"{r.text}\n{r.text_pair}",
                "prediction": p,
                "reference": r.label,
                "scores": {"accuracy": float(p == r.label)},
            }
            for r, p in zip(records, predictions)
        ],
    )
    plot_confusion(
        run_dir / "confusion_matrix.png",
        m["confusion_matrix"],
        names,
        f"{kind}: {model} (macro-F1 {m['macro_f1']:.3f})",
    )
    return metrics
