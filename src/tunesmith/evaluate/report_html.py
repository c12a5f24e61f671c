"""The decision report as one self-contained HTML page (PNG plots embedded as base64; matplotlib, Agg backend).

tunesmith report runs/x-baseline runs/x-eval --output report.html
"""

from __future__ import annotations

import base64
import io
from html import escape

from tunesmith.config.metric_names import LOWER_IS_BETTER

MAX_EXAMPLES = 12
"""Examples listed per direction (wins, losses) in the page."""


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def metrics_plot(rep: dict) -> str:
    """Bar chart per metric (one bar per run, 95% CI error bars, target as a dashed line), as base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, runs = rep["metrics"], rep["runs"]
    cols = min(4, max(1, len(names)))
    rows = -(-len(names) // cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        vals = [r.metrics["task_metrics"][name] for r in runs]
        errs = [
            [v - r.ci.get(name, (v, v))[0] for v, r in zip(vals, runs)],
            [r.ci.get(name, (v, v))[1] - v for v, r in zip(vals, runs)],
        ]
        ax.bar(range(len(runs)), vals, yerr=errs, capsize=4, color=[f"C{i}" for i in range(len(runs))])
        if name in rep["targets"]:
            ax.axhline(rep["targets"][name], color="k", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(runs)), [r.name for r in runs], rotation=20, ha="right", fontsize=7)
        ax.set_title(name + (" (lower is better)" if name in LOWER_IS_BETTER else ""), fontsize=9)
        if name not in LOWER_IS_BETTER and all(0 <= v <= 1 for v in vals):
            ax.set_ylim(0, 1.05)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def wins_plot(rep: dict) -> str | None:
    """Stacked horizontal bars of wins / ties / losses against the reference run, per run and metric; None if none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = [(f"{rep['runs'][i].name}: {n}", wl) for (i, n), wl in rep["wins"].items() if wl]
    if not items:
        return None
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(items) + 1.2))
    for k, (_label, (w, l, t)) in enumerate(items):  # noqa: E741
        ax.barh(k, w, color="tab:green")
        ax.barh(k, t, left=w, color="lightgray")
        ax.barh(k, l, left=w + t, color="tab:red")
    ax.set_yticks(range(len(items)), [x[0] for x in items], fontsize=7)
    ax.set_xlabel(f"examples (green: better than {rep['runs'][0].name}, grey: tie, red: worse)")
    fig.tight_layout()
    return _png(fig)


def _table(rep: dict) -> str:
    runs = rep["runs"]
    refs = rep.get("references", [])
    head = "".join(f"<th>{escape(r.name)}</th>" for r in runs)
    head += "".join(f"<th class='ref'>reference: {escape(r.name)}</th>" for r in refs)
    body = []
    for name in rep["metrics"]:
        cells = []
        for i, r in enumerate(runs):
            v, ci, d, wl = (
                r.metrics["task_metrics"][name],
                r.ci.get(name),
                r.delta_ci.get(name),
                rep["wins"].get((i, name)),
            )
            txt = f"<b>{v:.4f}</b>" + (f"<br><small>95% CI [{ci[0]:.3f}, {ci[1]:.3f}]</small>" if ci else "")
            txt += f"<br><small>Δ vs reference [{d[0]:+.3f}, {d[1]:+.3f}]</small>" if d else ""
            txt += f"<br><small>wins {wl[0]} / losses {wl[1]} / ties {wl[2]}</small>" if wl else ""
            cells.append(f"<td>{txt}</td>")
        for ref in refs:
            v, ci = ref.values.get(name), ref.ci.get(name)
            txt = (
                "-"
                if v is None
                else f"{v:.4f}" + (f"<br><small>95% CI [{ci[0]:.3f}, {ci[1]:.3f}]</small>" if ci else "")
            )
            cells.append(f"<td class='ref'>{txt}</td>")
        t = rep["targets"].get(name)
        target = "" if t is None else f"{'≤' if name in LOWER_IS_BETTER else '≥'} {t:g}"
        body.append(f"<tr><th>{escape(name)}</th>{''.join(cells)}<td>{target}</td></tr>")
    cost = []
    for key, label in (
        ("parameters", "parameters"),
        ("trainable_parameters", "trained parameters"),
        ("generation_tokens_per_second", "generation tokens/second"),
        ("peak_memory_bytes", "peak memory (process)"),
    ):
        vals = [r.metrics.get("cost", {}).get(key) for r in runs]
        pad = "<td class='ref'></td>" * len(refs)
        cost.append(
            f"<tr><th>{label}</th>" + "".join(f"<td>{_cost(key, v)}</td>" for v in vals) + f"{pad}<td></td></tr>"
        )
    prompts = (
        "<tr><th>same prompt ids as reference</th>"
        + "".join(f"<td>{'yes' if s else 'no'}</td>" for s in rep["same_prompts"])
        + "<td class='ref'></td>" * len(refs)
        + "<td></td></tr>"
    )
    return (
        f"<table><tr><th>metric</th>{head}<th>target</th></tr>{''.join(body)}"
        f"<tr><th colspan='{len(runs) + len(refs) + 2}'>cost</th></tr>{''.join(cost)}{prompts}</table>"
    )


def _cost(key: str, v) -> str:
    if v is None:
        return "-"
    if key == "peak_memory_bytes":
        return f"{v / 2**20:,.0f} MiB"
    return f"{v:,.0f}" if "parameters" in key else f"{v:.1f}"


def _examples(rep: dict) -> str:
    """Per-example wins and losses of the last run against the reference on the first target (else first) metric."""
    runs = rep["runs"]
    if len(runs) < 2:
        return ""
    ref, run = runs[0], runs[-1]
    name = next((n for n in rep["targets"] if rep["wins"].get((len(runs) - 1, n))), None) or next(
        (n for n in rep["metrics"] if rep["wins"].get((len(runs) - 1, n))), None
    )
    if name is None:
        return ""
    sign = -1 if name in LOWER_IS_BETTER else 1
    diffs = [(sign * (b["scores"][name] - a["scores"][name]), a, b) for a, b in zip(ref.rows, run.rows)]
    out = [f"<h2>Per-example wins and losses: {escape(run.name)} vs {escape(ref.name)} on {escape(name)}</h2>"]
    for title, picked in (
        ("wins", sorted((d for d in diffs if d[0] > 0), key=lambda d: -d[0])),
        ("losses", sorted((d for d in diffs if d[0] < 0), key=lambda d: d[0])),
    ):
        out.append(f"<h3>{title} ({len(picked)})</h3>")
        if picked:
            out.append(
                f"<table><tr><th>id</th><th>reference</th><th>{escape(ref.name)}</th><th>{escape(run.name)}</th></tr>"
            )
            for _, a, b in picked[:MAX_EXAMPLES]:
                out.append(
                    f"<tr><td>{escape(str(a['id']))}</td><td><code>{escape(a['reference'])}</code></td>"
                    f"<td><code>{escape(a['prediction'])}</code></td><td><code>{escape(b['prediction'])}</code></td></tr>"
                )
            out.append("</table>")
    return "".join(out)


STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
    "table{border-collapse:collapse;margin:1em 0}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}"
    "code{white-space:pre-wrap;font-size:85%}"
    ".verdict{font-size:120%;padding:.6em;background:#f4f4f4;border-left:4px solid #333}"
    ".ref{color:#666;background:#fafafa}.flag{color:#a40000;font-weight:bold}"
)


def render_html(rep: dict) -> str:
    """The whole page: verdict, metric table (values, CIs, paired differences, wins/losses), cost, plots, examples."""
    runs = rep["runs"]
    flags = set(rep.get("flags", []))
    lines = "".join(
        f"<li class='flag'>{escape(x)}</li>" if x in flags else f"<li>{escape(x)}</li>" for x in rep["verdict_lines"]
    )
    wins = wins_plot(rep)
    sources = "".join(
        f"<li>{escape(r.name)}: <code>{escape(str(r.path))}</code> ({len(r.rows)} examples)</li>" for r in runs
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>tunesmith decision report</title>"
        f"<style>{STYLE}</style></head><body>"
        f"<h1>Decision report</h1><p class='verdict'><b>Verdict:</b> {escape(rep['verdict'])}</p><ul>{lines}</ul>"
        f"<h2>Metrics</h2><p>Reference: {escape(runs[0].name)}. 95% percentile bootstrap intervals over examples, "
        "paired across runs. Grey columns are trivial references computed from the same examples (majority class and "
        "uniform guess for labels; copying the prompt and the empty answer for generation, where they score above "
        f"0).</p>{_table(rep)}"
        f"<img alt='metrics' src='data:image/png;base64,{metrics_plot(rep)}'>"
        + (
            f"<h2>Wins and losses per example</h2><img alt='wins and losses' src='data:image/png;base64,{wins}'>"
            if wins
            else ""
        )
        + _examples(rep)
        + f"<h2>Runs</h2><ul>{sources}</ul></body></html>\n"
    )
