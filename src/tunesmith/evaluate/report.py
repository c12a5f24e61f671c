"""`tunesmith report RUN_DIR...`: the decision report comparing runs scored on the same eval examples.

    tunesmith report runs/x-baseline runs/x-eval                # console table + runs/x-eval/report.html
    tunesmith report runs/sft/baseline runs/sft/eval --target json_schema=0.95

The first run is the reference (normally the prompting baseline). For every metric the report shows each run's value
with a percentile bootstrap 95% confidence interval (Efron & Tibshirani 1993; examples resampled with replacement,
the same resamples for every run, so the interval of the difference to the reference is paired), per-example wins
and losses against the reference, trivial references (majority class and uniform guess for label tasks, "copy the
prompt" and "empty answer" for generation; :mod:`tunesmith.evaluate.references`) with a flag on any prompting run
below one, cost figures (parameters, generation tokens/second, peak memory) and a plain verdict against the targets
(``eval.targets`` of the runs' config, or ``--target``); without targets, the best run per metric and whether its
interval separates it from the next. Any run dir following the shared contract (``metrics.json`` +
``predictions.jsonl``) works, e.g. ``tunesmith classify`` runs. An existing report is never overwritten without
``--overwrite``: the report goes to the next free name (``report-2.html``, ...).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.config.metric_names import CORPUS_METRICS, LOWER_IS_BETTER
from tunesmith.errors import DataError, Problem, TunesmithError
from tunesmith.evaluate.loss import mean_token_loss, row_nll, row_tokens
from tunesmith.evaluate.references import below_reference_flags, best_lines, generation_references, label_references
from tunesmith.evaluate.stats import N_RESAMPLES, macro_f1_resampler, percentile_ci, resample_indices

N_BOOTSTRAP = N_RESAMPLES
"""Bootstrap resamples per interval."""


@dataclass
class Run:
    """One evaluated run dir: ``metrics.json`` and ``predictions.jsonl`` (rows in eval-set order)."""

    path: Path
    metrics: dict
    rows: list[dict]
    name: str = ""
    ci: dict = field(default_factory=dict)
    """metric -> (low, high) bootstrap 95% interval."""
    delta_ci: dict = field(default_factory=dict)
    """metric -> (low, high) interval of (this run - reference), paired resamples."""


def load_run(path: str | Path) -> Run:
    """Read a run dir.

    Raises:
        DataError: a missing or unreadable ``metrics.json``/``predictions.jsonl``, or no ``task_metrics``.
    """
    p = Path(path)
    try:
        metrics = json.loads((p / "metrics.json").read_text(encoding="utf-8"))
        rows = [
            json.loads(line)
            for line in (p / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
    except OSError as exc:
        raise DataError(
            "Not an evaluated run dir",
            [
                Problem(
                    str(exc.filename or p),
                    exc.strerror or str(exc),
                    "pass run dirs written by tunesmith baseline/eval/classify (metrics.json + predictions.jsonl)",
                )
            ],
        ) from None
    except ValueError as exc:
        raise DataError("Unreadable run file", [Problem(str(p), str(exc), "re-run the evaluation")]) from None
    if not isinstance(metrics.get("task_metrics"), dict):
        raise DataError(
            "metrics.json has no task_metrics",
            [Problem(str(p / "metrics.json"), "missing task_metrics", "re-run with a current tunesmith")],
        )
    name = metrics.get("method") or metrics.get("kind", p.name)
    return Run(p, metrics, rows, f"{name}")


def check_aligned(runs: list[Run]) -> None:
    """Refuse runs that were not scored on the same examples in the same order.

    Raises:
        DataError: naming the run and the first example id that differs.
    """
    ref = [r["id"] for r in runs[0].rows]
    for run in runs[1:]:
        ids = [r["id"] for r in run.rows]
        if ids != ref:
            k = next((i for i, (a, b) in enumerate(zip(ids, ref)) if a != b), min(len(ids), len(ref)))
            raise DataError(
                "Runs were not evaluated on the same examples",
                [
                    Problem(
                        str(run.path / "predictions.jsonl"),
                        f"{len(ids)} examples vs {len(ref)} in {runs[0].path}; first difference at row {k + 1}",
                        "evaluate every model with the same config (same data, split and max_eval_examples)",
                    )
                ],
            )


def same_prompts(a: Run, b: Run) -> bool:
    """True when both runs saw identical prompt token ids (``prompt_ids_sha256``) or, lacking those, identical prompt
    text."""
    key = "prompt_ids_sha256" if all("prompt_ids_sha256" in r for r in a.rows + b.rows) else "prompt"
    return [r.get(key) for r in a.rows] == [r.get(key) for r in b.rows]


def metric_names(runs: list[Run]) -> list[str]:
    """Metrics present in every run, in the reference run's order."""
    names = list(runs[0].metrics["task_metrics"])
    return [n for n in names if all(n in r.metrics["task_metrics"] for r in runs)]


def _statistic(run: Run, name: str):
    """A function of an index array giving the metric on that resample."""
    import numpy as np

    rows = run.rows
    if name in CORPUS_METRICS or name == "macro_f1":
        refs = [r.get("labels", {}).get("reference", r.get("reference")) for r in rows]
        preds = [r.get("labels", {}).get("prediction", r.get("prediction")) for r in rows]
        return macro_f1_resampler(refs, preds)
    if name in LOWER_IS_BETTER:
        tokens = np.array([row_tokens(r) for r in rows], dtype=float)
        nll = np.array([row_nll(r) for r in rows], dtype=float)
        f = lambda idx: mean_token_loss(nll[idx], tokens[idx])
        return f if name == "eval_loss" else (lambda idx: math.exp(f(idx)))
    vals = np.array([r["scores"].get(name, float("nan")) for r in rows], dtype=float)
    return lambda idx: float(vals[idx].mean())


def bootstrap(runs: list[Run], names: list[str], *, n: int = N_BOOTSTRAP, seed: int = 0, level: float = 0.95) -> dict:
    """Fill ``run.ci`` and ``run.delta_ci`` with percentile bootstrap intervals (:mod:`tunesmith.evaluate.stats`).

    The same ``n`` index resamples (size = number of examples) serve every run and metric, so ``delta_ci`` is the
    interval of the paired difference to the reference run ``runs[0]``. A metric some row lacks gets no interval.

    Returns:
        ``{(id(run), metric): FloatArray[n]}``, the bootstrap statistics (paired differences of any two runs).
    """
    import numpy as np

    size = len(runs[0].rows)
    all_stats: dict = {}
    if size == 0:
        return all_stats
    samples = resample_indices(size, n, seed)
    for name in names:
        stats = {}
        for run in runs:
            try:
                f = _statistic(run, name)
                stats[id(run)] = np.array([f(idx) for idx in samples])
            except (KeyError, TypeError):
                continue
            if np.isnan(stats[id(run)]).any():
                del stats[id(run)]
                continue
            run.ci[name] = percentile_ci(stats[id(run)], level)
            all_stats[(id(run), name)] = stats[id(run)]
        ref = stats.get(id(runs[0]))
        for run in runs[1:]:
            if ref is not None and id(run) in stats:
                run.delta_ci[name] = percentile_ci(stats[id(run)] - ref, level)
    return all_stats


def wins_losses(ref: Run, run: Run, name: str) -> tuple[int, int, int] | None:
    """Examples where ``run`` beats / loses to / ties ``ref`` on a per-example metric (lower is better for losses).

    Returns:
        (wins, losses, ties), or None for a corpus-level metric or missing scores.
    """
    if name in CORPUS_METRICS or name == "macro_f1":
        return None
    sign = -1 if name in LOWER_IS_BETTER else 1
    w = l = t = 0  # noqa: E741
    for a, b in zip(ref.rows, run.rows):
        if name not in a["scores"] or name not in b["scores"]:
            if name in LOWER_IS_BETTER and not row_tokens(a) and not row_tokens(b):
                continue  # a row truncation dropped has no eval_loss in either run
            return None
        d = sign * (b["scores"][name] - a["scores"][name])
        w, l, t = w + (d > 1e-12), l + (d < -1e-12), t + (abs(d) <= 1e-12)  # noqa: E741
    return w, l, t


def meets(value: float, name: str, target: float) -> bool:
    """True when ``value`` reaches ``target`` (``<=`` for eval_loss/perplexity, ``>=`` otherwise)."""
    return value <= target if name in LOWER_IS_BETTER else value >= target


def verdict(runs: list[Run], targets: dict[str, float]) -> tuple[list[str], str]:
    """The plain verdict.

    Returns:
        (one line per target, e.g. ``"json_schema ≥ 0.95: prompting, zero-shot 0.410 (95% CI 0.300-0.520), not enough;
        SFT 0.980 (95% CI 0.950-1.000), meets the target"``; the point estimate decides, the interval shows how sure it
        is), and the overall decision line.
    """
    lines = []
    for name, target in targets.items():
        sym = "≤" if name in LOWER_IS_BETTER else "≥"
        parts = []
        for run in runs:
            v = run.metrics["task_metrics"].get(name)
            ci = run.ci.get(name)
            parts.append(
                f"{run.name} {'n/a' if v is None else f'{v:.3f}'}"
                + (f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci and ci[0] != ci[1] else "")
                + ", "
                + ("meets the target" if v is not None and meets(v, name, target) else "not enough")
            )
        lines.append(f"{name} {sym} {target:g}: " + "; ".join(parts))
    if not targets:
        return lines, "No targets set (eval.targets or --target): the best run per metric is listed above."
    ok = [
        r
        for r in runs
        if all(n in r.metrics["task_metrics"] and meets(r.metrics["task_metrics"][n], n, t) for n, t in targets.items())
    ]
    prompting = [r for r in ok if r.metrics.get("kind") == "baseline"]
    if prompting:
        return (
            lines,
            f"Prompting is enough: {prompting[0].name} meets every target. Stop here; fine-tuning is not needed.",
        )
    if ok:
        return lines, f"Prompting falls short; {ok[0].name} meets every target. Fine-tune."
    if all(r.metrics.get("kind") == "baseline" for r in runs):
        return (
            lines,
            "Prompting falls short of the targets: fine-tune (SFT), then compare with `tunesmith eval` and "
            "`tunesmith report`.",
        )
    return (
        lines,
        "No run meets every target: neither prompting nor this fine-tuning is enough yet (more data, steps "
        "or a larger model).",
    )


def build_report(paths: list[str | Path], targets: dict[str, float] | None = None, *, seed: int = 0) -> dict:
    """Load, align, bootstrap and judge the runs.

    Args:
        paths: run dirs; the first is the reference.
        targets: metric -> threshold; None takes ``targets`` of the first run that records some.

    Returns:
        ``{"runs": [Run], "metrics": [str], "targets": {...}, "verdict_lines": [...], "verdict": str,
        "wins": {(run index, metric): (w, l, t)}, "same_prompts": [bool per run]}``.

    Raises:
        DataError: unreadable or misaligned runs; TunesmithError: fewer than one run.
    """
    if not paths:
        raise TunesmithError(
            "No runs to report",
            [Problem("tunesmith report", "no RUN_DIR given", "pass the baseline and fine-tuned run dirs")],
        )
    runs = [load_run(p) for p in paths]
    for run in runs:  # distinct display names
        if sum(r.name == run.name for r in runs) > 1:
            run.name = f"{run.name} [{run.path.name}]"
    check_aligned(runs)
    names = metric_names(runs)
    if targets is None:
        targets = next((r.metrics["targets"] for r in runs if r.metrics.get("targets")), {})
    targets = {k: float(v) for k, v in targets.items() if k in names}
    stats = bootstrap(runs, names, seed=seed)
    samples = resample_indices(len(runs[0].rows), N_BOOTSTRAP, seed) if runs[0].rows else None
    references = (
        label_references(runs[0], samples) + generation_references(runs[0], names, samples)
        if samples is not None
        else []
    )
    flags = below_reference_flags(runs, references)
    lines, overall = verdict(runs, targets)
    if not targets:
        lines += best_lines(runs, names, stats)
    wins = {(i, n): wins_losses(runs[0], run, n) for i, run in enumerate(runs) if i for n in names}
    return {
        "runs": runs,
        "metrics": names,
        "targets": targets,
        "verdict_lines": flags + lines,
        "flags": flags,
        "references": references,
        "verdict": overall,
        "wins": wins,
        "same_prompts": [same_prompts(runs[0], r) for r in runs],
    }


def write_report(
    paths: list[str | Path],
    output: str | Path | None = None,
    *,
    targets: dict[str, float] | None = None,
    overwrite: bool = False,
    seed: int = 0,
    echo: bool = True,
) -> dict:
    """Build the report, print the console table and verdict, and write the HTML page (atomically).

    Args:
        output: the HTML path (default ``<last run dir>/report.html``); when it exists and ``overwrite`` is off, the
            next free name beside it (``report-2.html``, ``report-3.html``, ...) is used and named.

    Returns:
        The report dict of :func:`build_report` plus ``"html": Path``.

    Raises:
        TunesmithError: the errors of :func:`build_report`.
    """
    from rich.console import Console

    from tunesmith.evaluate.report_html import render_html
    from tunesmith.evaluate.report_text import console_table
    from tunesmith.runtime.files import atomic_write_text, free_name

    console = Console(stderr=True)

    asked = Path(output) if output else Path(paths[-1]) / "report.html"
    out = asked if overwrite else free_name(asked)
    rep = build_report(paths, targets, seed=seed)
    atomic_write_text(out, render_html(rep))
    if echo:
        console.print(console_table(rep))
        for line in rep["verdict_lines"]:
            console.print("  " + line, highlight=False)
        kept = f" ({asked} exists and is kept; --overwrite replaces it)" if out != asked else ""
        console.print(f"[bold]verdict:[/] {rep['verdict']}\n  report: {out}{kept}", highlight=False)
    rep["html"] = out
    return rep


def parse_targets(items: list[str]) -> dict[str, float]:
    """``["json_schema=0.95", ...]`` -> ``{"json_schema": 0.95}``.

    Raises:
        ConfigError: an item without ``=`` or with a value that is not a number.
    """
    from tunesmith.errors import ConfigError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not key.strip():
            raise ConfigError(
                "Invalid --target",
                [Problem(f"--target {item}", "expected METRIC=NUMBER", "e.g. --target json_schema=0.95")],
            )
    return out
