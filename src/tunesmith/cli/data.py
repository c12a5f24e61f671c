"""``tunesmith data check`` and ``tunesmith data preview``: the data exactly as ``tunesmith sft`` will train on it."""

from __future__ import annotations

import typer

from tunesmith.cli._options import ConfigArg, Opt, SetOpt, handles_errors


@handles_errors
def check(
    config: Opt[str] = ConfigArg,
    set_: Opt[list[str]] = SetOpt,
    skip_invalid: bool = typer.Option(
        False, "--skip-invalid", help="Count invalid records as skipped (exit 0) instead of as errors."
    ),
):
    """Report rows kept/skipped (with reasons), token lengths, trained-token share, truncation, roles, duplicates, \
template findings."""
    from tunesmith.config.load import load_config
    from tunesmith.use.data_check import run_check

    raise typer.Exit(run_check(load_config(config, set_), skip_invalid=skip_invalid))


@handles_errors
def preview(
    config: Opt[str] = ConfigArg,
    set_: Opt[list[str]] = SetOpt,
    n: int = typer.Option(3, "-n", help="Number of examples to show."),
    plain: Opt[bool] = typer.Option(
        None,
        "--plain/--color",
        help="Mark trained tokens with [[...]] instead of colours (default: plain when not a terminal).",
    ),
):
    """Print N rendered examples with trained tokens highlighted and masked tokens dimmed."""
    from tunesmith.config.load import load_config
    from tunesmith.use.data_check import run_preview

    raise typer.Exit(run_preview(load_config(config, set_), n, plain=plain))
