"""What every benchmark script shares: the alternating rounds of fresh-process variant runs, and the report files.

Used by bench/bench_sft.py, bench/bench_dpo.py and bench/bench_classify.py.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path


def run_rounds(variants: list[str], rounds: int, run_one: Callable[[str], dict], label: str, shown: tuple) -> list:
    """Run every variant once per round, in the given order (TRL, tunesmith, TRL, ...: slow drifts in machine load
    hit both), printing each start with the load average and each result's ``shown`` fields to stderr.

    Args:
        variants: variant names, in run order.
        rounds: how many times the whole list runs.
        run_one: runs one variant (a fresh process) and returns its result dict (``{"error": ...}`` on failure).
        label: the log prefix (``bench``, ``bench-dpo``, ...).
        shown: result keys printed after each run.

    Returns:
        The result dicts, in run order.
    """
    results = []
    for rnd in range(rounds):
        for v in variants:
            print(
                f"[{label}] round {rnd + 1}/{rounds}: {v} (load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True
            )
            results.append(run_one(v))
            print(f"[{label}]   -> {json.dumps({k: results[-1].get(k) for k in shown})}", file=sys.stderr, flush=True)
    return results


def write_report(out: Path, name: str, report: dict, markdown: Callable[[dict], str]) -> int:
    """Write ``<out>/<name>.json`` and ``<out>/<name>.md``, print the Markdown.

    Returns:
        The exit code: 0 when every run in ``report["runs"]`` succeeded, else 1.
    """
    (out / f"{name}.json").write_text(json.dumps(report, indent=1))
    md = markdown(report)
    (out / f"{name}.md").write_text(md)
    print(md)
    return 0 if all("error" not in r for r in report["runs"]) else 1


class StepCounter:
    """Per optimizer step sums of what ``count(inputs)`` returns for each micro-batch.

    ``trainer.training_step`` runs once per micro-batch, so with gradient accumulation a step has several; summing
    them under ``trainer.state.global_step`` (the 0-based index of the step being made) keeps tokens and step times
    on the same steps.  ``totals[i]``: tuple of ints, the sums for optimizer step ``i``.
    """

    def __init__(self, trainer, count: Callable[[dict], tuple]):
        self.totals: list[tuple] = []
        inner = trainer.training_step

        def training_step(model, inputs, num_items_in_batch=None):
            i, c = trainer.state.global_step, tuple(count(inputs))
            self.totals += [tuple(0 for _ in c)] * (i + 1 - len(self.totals))
            self.totals[i] = tuple(a + b for a, b in zip(self.totals[i], c))
            return inner(model, inputs, num_items_in_batch)

        trainer.training_step = training_step

    def after(self, warm: int, field: int = 0) -> int:
        """The sum of ``field`` over the optimizer steps after the first ``warm``."""
        return sum(t[field] for t in self.totals[warm:])

    def per_step(self, field: int = 0) -> list[int]:
        """``field`` of every optimizer step."""
        return [t[field] for t in self.totals]


def optional(row: dict, key: str, fmt: str) -> str:
    """``fmt.format(row[key])``, or ``-`` where the row has no such figure (the reference variant's own ratios)."""
    return "-" if key not in row else fmt.format(row[key])


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table's lines: the header, the separator and one line per row of cells."""
    lines = ["| " + " | ".join(cells) + " |" for cells in (header, *rows)]
    return [lines[0], "|" + "---|" * len(header), *lines[1:]]
