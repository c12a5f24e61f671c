"""Options every command group shares, the error handler that turns a :class:`TunesmithError` into a message and exit
code 2, and the field table of ``--show-config``. No logic: each command is its options plus one call."""

from __future__ import annotations

import functools
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tunesmith.errors import TunesmithError
from tunesmith.runtime.console import console as err
from tunesmith.runtime.distributed import is_rank_zero

out = Console()
"""Results a command prints for the user to read or pipe (stdout); progress and errors go to stderr."""

ConfigArg = typer.Argument(
    None, help="YAML run config; omit to use the defaults (see `tunesmith config`).", show_default=False
)
SetOpt = typer.Option(
    None, "--set", help="Override a field, e.g. --set train.learning_rate=1e-4 (repeatable).", show_default=False
)
OverwriteOpt = typer.Option(False, "--overwrite", help="Replace a run folder tunesmith made before.")
ResumeOpt = typer.Option(
    None, "--resume", help="Continue from a checkpoint: `latest` or a checkpoints/checkpoint-N path."
)
SkipInvalidOpt = typer.Option(
    False, "--skip-invalid", help="Skip (log and count) invalid data records instead of stopping."
)
ShowConfigOpt = typer.Option(
    False, "--show-config", help="Print every config field with its value and documentation, then exit."
)
NumProcOpt = typer.Option(
    None,
    "--num-processes",
    min=1,
    show_default=False,
    help="Train on N processes (GPUs, or CPU processes over gloo): re-launches through `accelerate launch`.",
)
ModelOpt = typer.Option(
    None,
    "--model",
    help="Base model (embedded name, HF id, folder, .gguf) or a `tunesmith sft` run folder.",
    show_default=False,
)
AdapterOpt = typer.Option(
    None,
    "--adapter",
    help="LoRA adapter folder (or run folder holding adapter/); its base comes from the run config.",
    show_default=False,
)
Opt = Optional


def handles_errors(fn):
    """Turn :class:`TunesmithError` into a red message on stderr and its exit code (2; 130/143 after a graceful stop),
    never a traceback; Ctrl-C outside training exits 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TunesmithError as exc:
            if is_rank_zero():  # under a distributed launch, only rank 0 reports
                err.print(
                    "[bold red]error:[/] " + escape(exc.render()), highlight=False, soft_wrap=True
                )  # commands stay copyable
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper


def with_skip_invalid(overrides: list[str] | None, skip_invalid: bool) -> list[str]:
    """``--set`` overrides plus ``data.skip_invalid=true`` when ``--skip-invalid`` was given."""
    return (overrides or []) + (["data.skip_invalid=true"] if skip_invalid else [])


def log(text: str) -> None:
    """Print a progress line on stderr (markup escaped)."""
    err.print(escape(text), highlight=False)


def print_fields(cfg, model_cls) -> None:
    """Print every field of ``model_cls`` with ``cfg``'s value and the field's documentation as a table."""
    import yaml

    from tunesmith.config.reference import describe_fields

    values = cfg.model_dump(mode="json")
    table = Table()
    for col in ("field", "value", "documentation"):
        table.add_column(col, overflow="fold")
    for key, _default, doc in describe_fields(model_cls):
        section, name = key.split(".", 1)
        table.add_row(
            key, yaml.safe_dump(values[section][name], default_flow_style=True).removesuffix("...\n").strip(), doc
        )
    out.print(table)


def fields_epilog() -> str:
    """Every SFT config field with its default and docstring, for ``tunesmith sft --help``."""
    from tunesmith.config.reference import describe_fields

    lines = ["[bold]Config fields[/] (set in CONFIG or with --set KEY=VALUE):\n\n"]
    lines += [f"[cyan]{key}[/] = {escape(default)}: {escape(doc)}\n\n" for key, default, doc in describe_fields()]
    return "".join(lines)
