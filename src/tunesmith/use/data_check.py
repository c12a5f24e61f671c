"""``tunesmith data check`` and ``tunesmith data preview``: see the data exactly as SFT will train on it.

    tunesmith data check [CONFIG] [--set ...] [--skip-invalid]   # counts, lengths, masks, template findings
    tunesmith data preview [CONFIG] [--set ...] -n 3             # rendered examples, trained tokens highlighted

Both load the tokenizer only (no model weights), render through the same functions as
``tunesmith sft`` (:func:`tunesmith.data.conversations.load_conversations`, :func:`tunesmith.render.rows.render_all`)
and return exit code 2 when the data has errors that would stop training.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from tunesmith.data.conversations import LoadReport, load_conversations
from tunesmith.data.records import Conversation
from tunesmith.render.chat_templates import apply_chat_template_option
from tunesmith.render.checks import Finding, check_template
from tunesmith.render.features import MissingFeatures, template_features
from tunesmith.render.rows import TokenStats, render_all, resolve_max_length, truncation_warning
from tunesmith.render.templates import IGNORE_INDEX
from tunesmith.runtime.console import console as errors

console = Console()


@dataclass
class Prepared:
    """Everything both commands need: tokenizer, generation/model config, data, the bounded max_length."""

    tokenizer: object
    generation_config: object
    model_config: object
    convs: list[Conversation]
    load: LoadReport
    max_length: int
    max_length_note: str


def prepare(cfg) -> Prepared:
    """Load tokenizer (with ``model.chat_template``), configs and every record (invalid ones kept aside).

    Raises:
        TunesmithError: model, template or data problems that stop before any record is read.
    """
    from transformers import AutoConfig, GenerationConfig

    from tunesmith.models.loading import load_tokenizer
    from tunesmith.models.sources import resolve_model

    source = resolve_model(cfg.model.name)
    tok = load_tokenizer(source, trust_remote_code=cfg.model.trust_remote_code, revision=cfg.model.revision)
    apply_chat_template_option(tok, cfg.model.chat_template, require=False)
    try:
        gen = GenerationConfig.from_pretrained(source.location)
    except Exception:  # noqa: BLE001 - a checkpoint may have none
        gen = None
    try:
        mcfg = AutoConfig.from_pretrained(source.location, trust_remote_code=cfg.model.trust_remote_code)
    except Exception:  # noqa: BLE001
        mcfg = None
    convs, load = load_conversations(cfg.data.model_copy(update={"skip_invalid": True}), log_skipped=False)
    n, note = resolve_max_length(cfg.train.max_length, tok, mcfg)
    return Prepared(tok, gen, mcfg, convs, load, n, note)


def _reason_key(reason: str) -> str:
    return re.sub(r"\[\d+\]|turn \d+|byte \d+|column \d+|char \d+|token \d+", "#", reason)


def _duplicates(convs: list[Conversation]) -> int:
    from tunesmith.data.split import fingerprint

    seen = Counter(fingerprint([c]) for c in convs)
    return sum(v - 1 for v in seen.values())


def _tool_counts(convs: list[Conversation]) -> dict[str, int]:
    """Records declaring tools, assistant turns calling tools (and calls), tool results, turns with reasoning."""
    msgs = [m for c in convs for m in c.messages]
    return {
        "tools": sum(1 for c in convs if c.tools),
        "calling turns": sum(1 for m in msgs if m.tool_calls),
        "calls": sum(len(m.tool_calls or []) for m in msgs),
        "tool results": sum(1 for m in msgs if m.role == "tool"),
        "reasoning": sum(1 for m in msgs if m.reasoning_content),
    }


def _tool_findings(p: Prepared, counts: dict[str, int], train_reasoning) -> list[Finding]:
    """What the template does with the data's tools and reasoning (errors are raised by rendering)."""
    if not counts["reasoning"] or train_reasoning is True:
        return []
    if not template_features(p.tokenizer).reasoning:
        return [
            Finding(
                "warning",
                "reasoning_dropped",
                f"{counts['reasoning']} assistant turns carry reasoning that the chat template does not render: it is "
                "not trained (as at inference, where this template drops it); model.chat_template=chatml-tools "
                "renders it as <think>...</think>",
            )
        ]
    if train_reasoning is False:
        return [Finding("info", "reasoning_masked", "reasoning is rendered and masked (data.train_reasoning: false)")]
    return [Finding("info", "reasoning_trained", "reasoning the template renders is trained (data.train_reasoning)")]


@dataclass
class CheckReport:
    """The data check as data (what ``tunesmith data check`` prints and ``tunesmith ui`` shows).

    Attributes:
        title: the source and detected format.
        rows: (what, value) pairs: counts, token lengths, trained share, truncation, roles, duplicates.
        problems: every invalid record's :class:`~tunesmith.errors.Problem` (``where`` is ``file:line``).
        reasons: (count, reason, first at, fix) per kind of problem, most frequent first.
        findings: template findings (warnings and notes).
        exit_code: 0, or 2 when ``tunesmith sft`` would stop (invalid records without skip_invalid, nothing trained,
            a template that cannot render the data's tools, examples too long under ``data.truncation=error``).
        message: why the exit code is 2, or None.
        warning: the truncation warning (over 5% of examples or trained tokens cut), or None.
    """

    title: str
    rows: list[tuple[str, str]]
    problems: list
    reasons: list[tuple[int, str, str, str]]
    findings: list[Finding]
    exit_code: int = 0
    message: str | None = None
    warning: str | None = None


def check_data(cfg, *, skip_invalid: bool = False, prepared: Prepared | None = None) -> CheckReport:
    """Check ``cfg``'s data exactly as ``tunesmith sft`` will train on it.

    Args:
        skip_invalid: count invalid records as skipped (exit code 0) instead of as errors.
        prepared: what :func:`prepare` returned for ``cfg`` (loaded here when None).

    Returns:
        :class:`CheckReport`: rows read/kept/skipped, tokens per example (min/median/p95/max), trained token share,
        truncation losses, role counts, duplicates, template findings, every problem with its ``file:line``.
    """
    skip_invalid = skip_invalid or cfg.data.skip_invalid
    p = prepared or prepare(cfg)
    findings = check_template(p.tokenizer, p.generation_config) if p.tokenizer.chat_template else []
    if cfg.data.system_prompt:  # every conversation gets a system turn, so the template's default never shows
        findings = [f for f in findings if f.code != "default_system_prompt"]
    chat = [c for c in p.convs if c.kind not in ("text", "completion")]
    if chat and not p.tokenizer.chat_template:
        apply_chat_template_option(p.tokenizer, None)  # raises the clear "no chat template" error
    counts = _tool_counts(p.convs)
    findings = _tool_findings(p, counts, cfg.data.train_reasoning) + findings
    policy = getattr(cfg.data, "truncation", "keep_start")
    try:
        rows, stats = render_all(
            p.tokenizer,
            p.convs,
            p.max_length,
            generation_config=p.generation_config,
            skip_invalid=True,
            log_skipped=False,
            truncation="drop" if policy == "drop" else "keep_start",  # `error` is reported below, after the table
            train_reasoning=cfg.data.train_reasoning,
        )
    except MissingFeatures as exc:
        src = cfg.data.path or f"bundled:{cfg.data.name}"
        return CheckReport(f"data check: {src}", [], [], [], findings, 2, exc.render())
    problems = p.load.skipped + stats.invalid
    rep = _report(cfg, p, stats, findings, problems, counts)
    rep.warning = truncation_warning(stats, p.max_length, policy)
    rep.exit_code, rep.message = _verdict(stats, problems, bool(rows), p.max_length, policy, skip_invalid)
    return rep


def _verdict(stats: TokenStats, problems, any_rows: bool, max_length: int, policy: str, skip_invalid: bool):
    """(exit code, message): 2 with the reason when ``tunesmith sft`` would stop on this data, else (0, None)."""
    if policy == "error" and stats.truncated:
        return 2, (
            f"{stats.truncated} example(s) are longer than max_length {max_length} and data.truncation=error: "
            f"`tunesmith sft` would stop (first: {', '.join(stats.long_sources[:3])}). Raise train.max_length (to "
            f"{stats.max_length_for(policy='error')} to keep 95%) or choose data.truncation=drop or keep_start."
        )
    bad = len({x.where for x in problems})
    if bad and not skip_invalid:
        first = problems[0]
        return 2, (
            f"{bad} invalid record(s): `tunesmith sft` would stop before training (first: {first.where}: "
            f"{first.reason}). Fix them, or pass --skip-invalid to skip them."
        )
    if not any_rows:
        return 2, "no example has a trained token left; nothing would be trained."
    return 0, None


def run_check(cfg, *, skip_invalid: bool = False) -> int:
    """Print the data report for ``cfg`` (:func:`check_data`); return the exit code (0 ok, 2 when training would
    stop)."""
    rep = check_data(cfg, skip_invalid=skip_invalid)
    t = Table(title=rep.title, show_header=False)
    t.add_column("what")
    t.add_column("value", overflow="fold")
    for what, value in rep.rows:
        t.add_row(what, value)
    console.print(t)
    if rep.problems:
        r = Table(title=f"skipped records: {len({x.where for x in rep.problems})} ({len(rep.problems)} problems)")
        for col in ("count", "reason", "first at", "fix"):
            r.add_column(col, overflow="fold")
        for n, reason, where, fix in rep.reasons:
            r.add_row(str(n), reason, where, fix)
        console.print(r)
    for f in rep.findings:
        color = "yellow" if f.level == "warning" else "cyan"
        console.print(f"[{color}]template {f.level}:[/] {f.message}", highlight=False, soft_wrap=True)
    if rep.warning:
        console.print(f"[bold yellow]truncation warning:[/] {escape(rep.warning)}", highlight=False, soft_wrap=True)
    if rep.message:
        errors.print(f"[bold red]error:[/] {escape(rep.message)}", highlight=False)
    return rep.exit_code


def _report(cfg, p: Prepared, stats: TokenStats, findings: list[Finding], problems, counts) -> CheckReport:
    s = stats.summary()
    bad = len({x.where for x in problems})
    src = cfg.data.path or f"bundled:{cfg.data.name}"
    rows = [
        ("rows read / kept / skipped", f"{p.load.rows_read} / {s['kept']} / {bad}"),
        (
            "tokens per example (min / median / p95 / max)",
            f"{s['length_min']} / {s['length_median']} / {s['length_p95']} / {s['length_max']}",
        ),
        ("tokens / trained tokens (share)", f"{s['tokens']} / {s['trained_tokens']} ({s['trained_token_share']:.1%})"),
        ("max_length", p.max_length_note),
        (
            f"longer than max_length (data.truncation={getattr(cfg.data, 'truncation', 'keep_start')})",
            f"{s['truncated']} of {s['examples'] - s['invalid']} ({s['truncated_share']:.1%}); trained tokens lost: "
            f"{s['trained_tokens_lost_to_truncation']} ({s['trained_tokens_lost_share']:.1%}); max_length keeping "
            f"95%: {s['max_length_keeping_95pct']}",
        ),
        ("dropped: longer than max_length (data.truncation=drop)", str(s["dropped_too_long"])),
        ("dropped: no trained token after truncation", str(s["dropped_all_masked"])),
    ]
    roles = Counter(m.role for c in p.convs for m in c.messages if c.kind not in ("text", "completion"))
    kinds = Counter(c.kind for c in p.convs)
    rows.append(("role counts", ", ".join(f"{r} {n}" for r, n in roles.most_common()) or "-"))
    rows.append(("record kinds", ", ".join(f"{k} {n}" for k, n in kinds.most_common()) or "-"))
    rows.append(("duplicate records", str(_duplicates(p.convs))))
    if any(counts.values()):
        rows.append(
            (
                "tools / tool calls / reasoning",
                f"{counts['tools']} records declare tools; {counts['calls']} calls in {counts['calling turns']} "
                f"assistant turns (trained); {counts['tool results']} tool results (masked); {counts['reasoning']} "
                "turns with reasoning",
            )
        )
    reasons = []
    for reason, n in Counter(_reason_key(x.reason) for x in problems).most_common(12):
        first = next(x for x in problems if _reason_key(x.reason) == reason)
        reasons.append((n, reason, first.where, first.fix))
    return CheckReport(f"data check: {src} (format {p.load.format})", rows, list(problems), reasons, findings)


@dataclass
class PreviewExample:
    """One rendered example: where it came from, its length, and its text as (piece, trained) runs."""

    source: str
    tokens: int
    trained: int
    spans: list[tuple[str, bool]]


def preview_examples(cfg, n: int, *, prepared: Prepared | None = None) -> tuple[list[PreviewExample], list, int]:
    """Render the first ``n`` examples that keep a trained token, as :func:`tunesmith.render.rows.render_all` does for
    training.

    Returns:
        (examples, problems of the records that did not render, the max_length used).
    """
    p = prepared or prepare(cfg)
    rows, stats = render_all(
        p.tokenizer,
        p.convs[: max(n, 0) * 2 + 4],
        p.max_length,
        generation_config=p.generation_config,
        skip_invalid=True,
        log_skipped=False,
        train_reasoning=cfg.data.train_reasoning,
    )
    examples = [
        PreviewExample(r.source, len(r.input_ids), r.num_trained, mask_spans(p.tokenizer, r.input_ids, r.labels))
        for r in rows[:n]
    ]
    return examples, list(stats.invalid), p.max_length


def run_preview(cfg, n: int, *, plain: bool | None = None) -> int:
    """Print ``n`` rendered examples: trained tokens highlighted, masked tokens dimmed.

    Args:
        plain: mark trained spans as ``[[...]]`` instead of colours (default: when stdout is not a terminal).

    Returns:
        The exit code (2 when no example renders).
    """
    examples, invalid, max_length = preview_examples(cfg, n)
    plain = (not console.is_terminal) if plain is None else plain
    for x in invalid:
        console.print(f"[yellow]skipped[/] {x.where}: {x.reason}", highlight=False)
    if not examples:
        errors.print("[bold red]error:[/] no example could be rendered with a trained token")
        return 2
    legend = (
        escape("trained tokens in [[double brackets]], masked tokens plain")
        if plain
        else "[bold green]trained tokens highlighted[/], [dim]masked tokens dimmed[/]"
    )
    console.print(f"legend: {legend}; max_length={max_length}")
    for k, ex in enumerate(examples):
        console.rule(f"example {k + 1}: {ex.source} — {ex.tokens} tokens, {ex.trained} trained", style="dim")
        text = Text()
        for piece, trained in ex.spans:
            if plain:
                text.append(f"[[{piece}]]" if trained else piece)
            else:
                text.append(piece, style="bold black on green" if trained else "dim")
        console.print(text, highlight=False, markup=False, soft_wrap=True)
    return 0


def mask_spans(tok, ids: list[int], labels: list[int]) -> list[tuple[str, bool]]:
    """Group runs of trained / masked tokens and decode each run (keeps multi-byte characters whole).

    Args:
        ids: ``input_ids`` of one row; labels: its labels (``-100`` = masked).

    Returns:
        ``[(text, trained)]`` in order; joined, the texts are the decoded row.
    """
    out, start = [], 0
    for k in range(1, len(ids) + 1):
        if k == len(ids) or (labels[k] != IGNORE_INDEX) != (labels[start] != IGNORE_INDEX):
            out.append((tok.decode(ids[start:k], skip_special_tokens=False), labels[start] != IGNORE_INDEX))
            start = k
    return out
