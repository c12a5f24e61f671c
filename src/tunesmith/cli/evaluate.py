"""``tunesmith baseline``, ``eval``, ``report`` and ``classify-baseline``: is prompting enough, and did fine-tuning
help? Every model is scored by the same evaluation step on the same examples."""

from __future__ import annotations

import typer

from tunesmith.cli._options import ConfigArg, Opt, SetOpt, handles_errors

OutputOpt = typer.Option(None, "--output", help="Run directory (default: <train.output_dir>-<command>).")
ReplaceOpt = typer.Option(False, "--overwrite", help="Replace a run directory tunesmith made before.")


@handles_errors
def baseline(
    config: Opt[str] = ConfigArg,
    set_: Opt[list[str]] = SetOpt,
    output: Opt[str] = OutputOpt,
    overwrite: bool = ReplaceOpt,
):
    """Is prompting enough? Prompt the instruction-tuned model on the eval split (zero-shot, and eval.k_shot-shot) and \
score it."""
    from tunesmith.config.load import load_config
    from tunesmith.evaluate.baseline import run_baseline

    run_baseline(load_config(config, set_), output=output, overwrite=overwrite)


@handles_errors
def eval_cmd(
    config: Opt[str] = ConfigArg,
    set_: Opt[list[str]] = SetOpt,
    adapter: Opt[str] = typer.Option(
        None, "--adapter", help="LoRA adapter folder or run folder, merged into model.name."
    ),
    model: Opt[str] = typer.Option(None, "--model", help="A merged (full) model folder."),
    output: Opt[str] = OutputOpt,
    overwrite: bool = ReplaceOpt,
):
    """Score a fine-tuned model with the same examples, prompts and metrics as `tunesmith baseline`."""
    from tunesmith.config.load import load_config
    from tunesmith.evaluate.baseline import run_eval

    run_eval(load_config(config, set_), adapter=adapter, model_dir=model, output=output, overwrite=overwrite)


@handles_errors
def report(
    run_dirs: list[str] = typer.Argument(
        ..., help="Run directories; the first is the reference (the prompting baseline)."
    ),
    output: Opt[str] = typer.Option(
        None,
        "--output",
        "-o",
        help="HTML file (default: <last RUN_DIR>/report.html); when it exists: the next free name (report-2.html).",
    ),
    target: Opt[list[str]] = typer.Option(
        None, "--target", help="METRIC=VALUE, e.g. json_schema=0.95 (repeatable; default: eval.targets)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing report file instead."),
):
    """Decision report: baseline vs fine-tuned per metric with bootstrap CIs, wins/losses, cost and a verdict against \
targets."""
    from tunesmith.evaluate.report import parse_targets, write_report

    write_report(run_dirs, output, targets=parse_targets(target) if target else None, overwrite=overwrite)


@handles_errors
def classify_baseline(
    config: Opt[str] = ConfigArg,
    set_: Opt[list[str]] = SetOpt,
    output: Opt[str] = OutputOpt,
    overwrite: bool = ReplaceOpt,
):
    """Prompting baseline of a classify config: the instruction-tuned model picks a label, scored on the same eval \
set."""
    from tunesmith.config.classify import ClassifyConfig
    from tunesmith.config.load import load_config
    from tunesmith.evaluate.classify_baseline import run_classify_baseline

    run_classify_baseline(load_config(config, set_, model_cls=ClassifyConfig), output_dir=output, overwrite=overwrite)
