"""The decision report as a console table (rich): one row per metric, one column per run and trivial reference.

tunesmith report runs/x-baseline runs/x-eval     # prints this table, the verdict lines and the verdict
"""

from __future__ import annotations

from tunesmith.config.metric_names import LOWER_IS_BETTER


def console_table(rep: dict):
    """The report as a ``rich.table.Table``: one row per metric, one column per run (value [95% CI]), and the target."""
    from rich.table import Table

    table = Table(title="decision report (95% bootstrap CI)")
    table.add_column("metric")
    for run in rep["runs"]:
        table.add_column(run.name, overflow="fold")
    refs = rep.get("references", [])
    for ref in refs:
        table.add_column(f"reference: {ref.name}", overflow="fold", style="dim")
    table.add_column("target")
    for name in rep["metrics"]:
        cells = []
        for i, run in enumerate(rep["runs"]):
            v = run.metrics["task_metrics"][name]
            ci = run.ci.get(name)
            wl = rep["wins"].get((i, name))
            cells.append(
                f"{v:.4f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "") + (f"\n+{wl[0]} / -{wl[1]}" if wl else "")
            )
        cells += [f"{ref.values[name]:.4f}" if name in ref.values else "-" for ref in refs]
        t = rep["targets"].get(name)
        table.add_row(name, *cells, "" if t is None else f"{'≤' if name in LOWER_IS_BETTER else '≥'} {t:g}")
    for key, label in (
        ("parameters", "parameters"),
        ("generation_tokens_per_second", "gen tokens/s"),
        ("peak_memory_bytes", "peak memory"),
    ):
        vals = [run.metrics.get("cost", {}).get(key) for run in rep["runs"]]
        table.add_row(label, *[_fmt_cost(key, v) for v in vals], *["" for _ in refs], "")
    return table


def _fmt_cost(key: str, v) -> str:
    if v is None:
        return "-"
    if key == "peak_memory_bytes":
        return f"{v / 2**20:,.0f} MiB"
    return f"{v:,.0f}" if key == "parameters" else f"{v:.1f}"
