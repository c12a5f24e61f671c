"""The decision order, composed once for every training command: prompting baseline -> training -> evaluation ->
decision report.

    tunesmith sft configs/sft/decision-chatterbot-json.yaml    # eval.baseline: true -> baseline, SFT, eval, report.html
    tunesmith classify configs/classify/chatterbot-topics.yaml --baseline
    tunesmith dpo configs/dpo/chatterbot-pairs.yaml               # DPO reports against its starting model itself

Top to bottom, one run::

    run = start_run(cfg, kind)                 # secrets, integrations, resume target, data, run folder (no torch yet)
    baselines = prompting baseline(s)          # <run>/baseline[-Kshot]: the instruction-tuned model, same eval set
    metrics = train(cfg, run)                  # tunesmith.train.<kind>: checkpoints, graceful stop, metrics.json last
    evaluated = the trained model, scored      # <run>/eval (SFT: same prompts and metrics) or the run itself (classify)
    report(baselines + evaluated)              # <run>/report.html, decision.json: CIs, wins/losses, cost, verdict

Only the main process runs the baseline, the evaluation and the report; every process trains. The recipes
never call evaluation or the report themselves: this module is the one place the stages meet.
"""

from __future__ import annotations

from pathlib import Path

from tunesmith.runtime.console import console
from tunesmith.runtime.distributed import is_main_process
from tunesmith.train.lifecycle import Run, start_run

KINDS = ("sft", "classify", "dpo")
"""The training commands."""


def wants_baseline(kind: str, cfg) -> bool:
    """True when the run measures prompting first (``eval.baseline``); DPO compares against its starting model
    itself."""
    return kind in ("sft", "classify") and bool(getattr(cfg.eval, "baseline", False))


def start(kind: str, cfg, *, overwrite: bool = False, resume: str | bool | None = None) -> Run:
    """Claim the run folder after checking config, data and output (no model loads; bad input fails in a second).

    Raises:
        TunesmithError: every problem with its location, exit code 2 from the CLI.
    """
    return start_run(cfg, kind, overwrite=overwrite, resume=resume)


def run(
    kind: str, cfg, *, overwrite: bool = False, resume: str | bool | None = None, started: Run | None = None
) -> dict:
    """Run one training command through the decision order.

    Args:
        kind: ``sft``, ``classify`` or ``dpo``.
        cfg: its validated config.
        overwrite / resume: as the CLI options.
        started: the :class:`Run` from :func:`start` when the caller already claimed it.

    Returns:
        The training metrics (``metrics.json`` of the run).

    Raises:
        TunesmithError: bad input, before training; ``TrainingStopped`` on SIGINT/SIGTERM (a checkpoint was saved).
    """
    the_run = started or start(kind, cfg, overwrite=overwrite, resume=resume)
    with the_run.guard():
        baselines = _baselines(kind, cfg, the_run) if wants_baseline(kind, cfg) and is_main_process() else []
        if baselines and kind == "sft":
            the_run.after_training.append(_eval_estimate(baselines[0]))
        metrics = _train(kind, cfg, the_run)
        if baselines and is_main_process():
            evaluated = _evaluate(kind, cfg, the_run)
            _report([*baselines, evaluated], the_run)
    return metrics


def _train(kind: str, cfg, the_run: Run) -> dict:
    if kind == "sft":
        from tunesmith.train.sft import run_sft

        return run_sft(cfg, run=the_run)
    if kind == "classify":
        from tunesmith.train.classify import run_classify

        return run_classify(cfg, run=the_run)
    from tunesmith.train.dpo import run_dpo

    return run_dpo(cfg, run=the_run)


def _baselines(kind: str, cfg, the_run: Run) -> list[Path]:
    """Prompting baseline(s) into ``<run>/baseline`` on the run's own eval set; a resumed run keeps those it has."""
    out = the_run.run_dir / "baseline"
    if the_run.resumed and (out / "metrics.json").is_file():
        return sorted(p for p in the_run.run_dir.glob("baseline*") if (p / "metrics.json").is_file())
    console.print("[bold]decision order[/]: measuring prompting first (eval.baseline)")
    if kind == "classify":
        from tunesmith.evaluate.classify_baseline import run_classify_baseline

        run_classify_baseline(cfg, output_dir=str(out), overwrite=True)
        return [out]
    from tunesmith.evaluate.baseline import run_baseline

    return run_baseline(cfg, output=out, overwrite=True, data=(the_run.data.train, the_run.data.eval))


def _eval_estimate(baseline_dir: Path) -> tuple[str, float | None]:
    """What the decision order runs after SFT training and how long it should take: the trained model is scored like
    the zero-shot baseline, which took ``eval_seconds``."""
    import json

    try:
        m = json.loads((baseline_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return ("scoring the trained model like the baseline, then the report", None)
    return (f"scoring the trained model on {m.get('eval_examples')} examples, then the report", m.get("eval_seconds"))


def _evaluate(kind: str, cfg, the_run: Run) -> Path:
    """The trained model scored like the baseline: SFT through the same evaluation step into ``<run>/eval``; a
    classify run already scored its eval set (its own ``predictions.jsonl``)."""
    if kind == "classify":
        return the_run.run_dir
    from tunesmith.evaluate.baseline import run_eval

    saved = {"adapter": the_run.run_dir / "adapter"} if cfg.lora.enabled else {"model_dir": the_run.run_dir / "model"}
    return run_eval(
        cfg, output=the_run.run_dir / "eval", overwrite=True, data=(the_run.data.train, the_run.data.eval), **saved
    )


def _report(run_dirs: list[Path], the_run: Run) -> None:
    """``<run>/report.html``; the verdict goes to ``<run>/decision.json`` and into the trained model's card."""
    from tunesmith.evaluate.report import write_report
    from tunesmith.export.card import DECISION_FILE
    from tunesmith.runtime.files import atomic_write_json
    from tunesmith.train.common import write_adapter_card

    rep = write_report(run_dirs, the_run.run_dir / "report.html", overwrite=True)
    decision = {"verdict": rep["verdict"], "verdict_lines": rep["verdict_lines"], "report": "report.html"}
    atomic_write_json(the_run.run_dir / DECISION_FILE, decision)
    for name in ("adapter", "model"):
        write_adapter_card(the_run, the_run.run_dir / name)
