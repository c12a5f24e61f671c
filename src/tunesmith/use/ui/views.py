"""What the page shows, as plain values (HTML text, table rows, Markdown) built from tunesmith's own results; no web
framework here, so each view is tested without a browser. Every piece of user or model text is HTML-escaped."""

from __future__ import annotations

from html import escape

from tunesmith.use.ui.runs import Progress, RunState, age, key_metrics

MASK_STYLE = (
    "<style>.ts-mask{white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:13px;line-height:1.5;"
    "border:1px solid #ddd;border-radius:6px;padding:8px;margin:4px 0 12px 0;color:#777}"
    "mark.trained{background:#b7ebc0;color:#0b3d17;font-weight:600;padding:0}</style>"
)


def mask_html(examples: list, max_length: int) -> str:
    """The mask preview: each example's rendered text, trained tokens in ``<mark class="trained">``, masked tokens
    grey.

    Args:
        examples: :class:`tunesmith.use.data_check.PreviewExample` list.
        max_length: the max_length the rows were cut to (shown in the legend).
    """
    if not examples:
        return (
            f"<p><b>No example keeps a trained token at max_length={max_length}</b> (truncation cut every assistant "
            "reply): raise max_length.</p>"
        )
    out = [
        MASK_STYLE,
        f"<p>Trained tokens (the loss is computed on them) <mark class='trained'>highlighted</mark>; masked tokens "
        f"grey. max_length={max_length}.</p>",
    ]
    for k, ex in enumerate(examples):
        out.append(
            f"<div class='ts-example'><b>example {k + 1}</b>: {escape(ex.source)}: {ex.tokens} tokens, "
            f"{ex.trained} trained<div class='ts-mask'>"
        )
        out += [f"<mark class='trained'>{escape(t)}</mark>" if trained else escape(t) for t, trained in ex.spans]
        out.append("</div></div>")
    return "".join(out)


def problem_rows(problems: list, *, limit: int = 200) -> list[list[str]]:
    """``[[where, reason, fix]]`` for each problem (``where`` is ``file:line`` for a data record), at most ``limit``."""
    return [[p.where, p.reason, p.fix] for p in problems[:limit]]


def error_markdown(exc) -> str:
    """A :class:`~tunesmith.errors.TunesmithError` as Markdown: the headline, then each problem with its fix."""
    lines = [f"**{escape(str(exc.args[0]))}**"]
    for p in exc.problems:
        lines.append(f"- `{escape(p.where)}`: {escape(p.reason)}" + (f" (fix: {escape(p.fix)})" if p.fix else ""))
    return "\n".join(lines)


def progress_markdown(state: RunState, prog: Progress) -> str:
    """One status line: run, status, step N/M, the last loss and eval_loss, ETA."""
    last = {}
    for point in prog.points:
        last[point["series"]] = point["value"]
    parts = [f"**{escape(state.status)}**", f"step {prog.step}/{prog.max_steps if prog.max_steps else '?'}"]
    parts += [f"{k} {last[k]:.4f}" for k in ("loss", "eval_loss") if k in last]
    if state.status == "running" and prog.eta_seconds is not None:
        parts.append(f"ETA {prog.eta_seconds}s")
    if state.checkpoint is not None:
        parts.append(f"checkpoint {state.checkpoint.name}")
    return f"`{escape(state.path.name)}` ({escape(state.kind)}): " + " · ".join(parts)


def plot_rows(prog: Progress) -> list[dict]:
    """Rows of the loss plot: ``{"step", "series", "value"}`` (train loss and eval_loss)."""
    return list(prog.points)


RUN_COLUMNS = ["run", "kind", "status", "step", "metrics", "updated"]
"""Columns of the Runs tab's table."""


def run_rows(states: list[RunState], rel, progress: dict | None = None) -> list[list[str]]:
    """One row per run: path relative to the root, kind, status, step (running runs), key metrics, age.

    Args:
        rel: turns a path into the text shown (relative to the root).
        progress: run path -> :class:`Progress` for the step column (optional).
    """
    rows = []
    for s in states:
        prog = (progress or {}).get(s.path)
        step = f"{prog.step}/{prog.max_steps}" if prog and prog.max_steps else ""
        metrics = ", ".join(f"{k} {v:.4g}" for k, v in key_metrics(s.metrics).items())
        rows.append([rel(s.path), s.kind, s.status, step, metrics, age(s.updated) if s.updated else ""])
    return rows


def check_rows(report: dict) -> list[list[str]]:
    """``[[check, "ok" | "FAIL", detail]]`` from an export's consistency report (``<name>.consistency.json``)."""
    checks = (report.get("consistency") or {}).get("checks") or []
    return [[c.get("name", ""), "ok" if c.get("ok") else "FAIL", c.get("detail", "")] for c in checks]


def report_markdown(rep: dict) -> str:
    """The decision report's verdict and metric table (value [95% CI] per run, wins/losses) as Markdown."""
    runs = rep["runs"]
    lines = [f"**Verdict:** {escape(rep['verdict'])}", ""]
    lines += [f"- {escape(x)}" for x in rep["verdict_lines"]]
    lines += ["", "| metric | " + " | ".join(escape(r.name) for r in runs) + " | target |"]
    lines.append("|---" * (len(runs) + 2) + "|")
    for name in rep["metrics"]:
        cells = []
        for i, run in enumerate(runs):
            value, ci, wl = run.metrics["task_metrics"][name], run.ci.get(name), rep["wins"].get((i, name))
            cells.append(
                f"{value:.4f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "") + (f" +{wl[0]}/-{wl[1]}" if wl else "")
            )
        target = rep["targets"].get(name)
        lines.append(f"| {escape(name)} | " + " | ".join(cells) + f" | {'' if target is None else target} |")
    return "\n".join(lines)


def iframe(html_text: str, *, height: int = 720) -> str:
    """A whole HTML page shown inside the page (a sandboxed ``<iframe srcdoc>``: its scripts do not run)."""
    return (
        f"<iframe sandbox='' style='width:100%;height:{height}px;border:1px solid #ddd;border-radius:6px' "
        f'srcdoc="{escape(html_text, quote=True)}"></iframe>'
    )
