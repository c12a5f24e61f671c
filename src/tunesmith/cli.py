"""The ``tunesmith`` command: a dispatch table, each command calling one function.

    tunesmith sft [CONFIG] [--set key=value ...]     # supervised fine-tuning (LoRA, TRL)
    tunesmith models                                 # embedded and cached models
    tunesmith config [CONFIG]                        # every config field, its value and its documentation
    tunesmith data check|preview [CONFIG]            # the data as SFT will train on it
"""
from __future__ import annotations

import functools
import sys
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from tunesmith.distributed import is_rank_zero
from tunesmith.errors import TunesmithError

app = typer.Typer(add_completion=False, rich_markup_mode="rich", pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Fine-tune LLMs the way best practice says: measure prompting first, then SFT (LoRA, TRL), then optional DPO.")
out = Console()
err = Console(stderr=True)

ConfigArg = typer.Argument(None, help="YAML run config; omit to use the defaults (see `tunesmith config`).", show_default=False)
SetOpt = typer.Option(None, "--set", help="Override a field, e.g. --set train.learning_rate=1e-4 (repeatable).", show_default=False)
# --- scale out (issue 8) ---
NumProcOpt = typer.Option(None, "--num-processes", min=1, show_default=False,
                          help="Train on N processes (GPUs, or CPU processes over gloo): re-launches through `accelerate launch`.")


def handles_errors(fn):
    """Turn :class:`TunesmithError` into a red message on stderr and exit code 2 (no traceback)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TunesmithError as exc:
            if is_rank_zero():  # under a distributed launch, only rank 0 reports (scale out, issue 8)
                err.print("[bold red]error:[/] " + _escape(exc.render()), highlight=False)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None
    return wrapper


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _fields_epilog() -> str:
    """List every config field with its default and docstring for ``--help`` (same text as `tunesmith config`)."""
    from tunesmith.config import describe_fields

    lines = ["[bold]Config fields[/] (set in CONFIG or with --set KEY=VALUE):\n\n"]
    lines += [f"[cyan]{key}[/] = {_escape(default)}: {_escape(doc)}\n\n" for key, default, doc in describe_fields()]
    return "".join(lines)


@app.command(epilog=_fields_epilog())
@handles_errors
def sft(config: Optional[str] = ConfigArg, set_: Optional[list[str]] = SetOpt,
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing train.output_dir."),
        resume: Optional[str] = typer.Option(None, "--resume", help="Continue from a checkpoint: `latest` or a path."),
        skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Skip (log and count) invalid data records instead of stopping."),
        num_processes: Optional[int] = NumProcOpt):
    """Supervised fine-tuning with LoRA on TRL's SFTTrainer (default: embedded SmolLM2 on chatterbot)."""
    from tunesmith.config import load_config
    from tunesmith.distributed import quiet_workers, relaunch

    cfg = load_config(config, (set_ or []) + (["data.skip_invalid=true"] if skip_invalid else []))
    if (code := relaunch(num_processes)) is not None:
        raise typer.Exit(code)
    quiet_workers()
    from tunesmith.train.sft import run_sft

    run_sft(cfg, overwrite=overwrite, resume=(True if resume == "latest" else resume))


@app.command()
@handles_errors
def models():
    """List embedded models and cached checkpoints with their sizes."""
    from tunesmith.models import list_models, tunesmith_home

    table = Table(title=f"models (cache: {tunesmith_home()})")
    for col in ("name", "kind", "size", "path"):
        table.add_column(col)
    for row in list_models():
        table.add_row(row["name"], row["kind"], f"{row['bytes'] / 1e6:.1f} MB", row["path"])
    out.print(table)


@app.command("config")
@handles_errors
def config_cmd(config: Optional[str] = ConfigArg, set_: Optional[list[str]] = SetOpt,
               markdown: bool = typer.Option(False, "--markdown", help="Print the field reference as Markdown (docs/config.md).")):
    """Print every config field with its resolved value and documentation (validates CONFIG too)."""
    import yaml

    from tunesmith.config import config_reference_markdown, describe_fields, load_config

    if markdown:
        print(config_reference_markdown(), end="")
        return
    cfg = load_config(config, set_)
    values = cfg.model_dump(mode="json")
    table = Table(show_lines=False)
    for col in ("field", "value", "documentation"):
        table.add_column(col, overflow="fold")
    for key, _default, doc in describe_fields():
        section, name = key.split(".", 1)
        table.add_row(key, yaml.safe_dump(values[section][name], default_flow_style=True).removesuffix("...\n").strip(), doc)
    out.print(table)


# --- data (issue 3) ---
data_app = typer.Typer(no_args_is_help=True, help="Check and preview SFT data exactly as `tunesmith sft` will train on it.")
app.add_typer(data_app, name="data")


@data_app.command("check")
@handles_errors
def data_check(config: Optional[str] = ConfigArg, set_: Optional[list[str]] = SetOpt,
               skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Count invalid records as skipped (exit 0) instead of as errors.")):
    """Report rows kept/skipped (with reasons), token lengths, trained-token share, truncation, roles, duplicates, template findings."""
    from tunesmith.config import load_config
    from tunesmith.datacheck import run_check

    raise typer.Exit(run_check(load_config(config, set_), skip_invalid=skip_invalid))


@data_app.command("preview")
@handles_errors
def data_preview(config: Optional[str] = ConfigArg, set_: Optional[list[str]] = SetOpt,
                 n: int = typer.Option(3, "-n", help="Number of examples to show."),
                 plain: Optional[bool] = typer.Option(None, "--plain/--color", help="Mark trained tokens with [[...]] instead of colours (default: plain when not a terminal).")):
    """Print N rendered examples with trained tokens highlighted and masked tokens dimmed."""
    from tunesmith.config import load_config
    from tunesmith.datacheck import run_preview

    raise typer.Exit(run_preview(load_config(config, set_), n, plain=plain))


def main() -> None:
    """Console entry point (``tunesmith``)."""
    app(prog_name="tunesmith")


if __name__ == "__main__":
    sys.exit(main())
