"""``tunesmith models``, ``config`` and ``estimate``: what is here, what each field means, and what a run will need."""

from __future__ import annotations

import typer
from rich.table import Table

from tunesmith.cli._options import ConfigArg, Opt, SetOpt, handles_errors, out, print_fields


@handles_errors
def models():
    """List embedded models and cached checkpoints with their sizes."""
    from tunesmith.models.sources import list_models
    from tunesmith.runtime.paths import tunesmith_home

    table = Table(title=f"models (cache: {tunesmith_home()})")
    for col in ("name", "kind", "size", "path"):
        table.add_column(col)
    for row in list_models():
        table.add_row(row["name"], row["kind"], f"{row['bytes'] / 1e6:.1f} MB", row["path"])
    out.print(table)


@handles_errors
def config(
    config: Opt[str] = ConfigArg,
    set_: Opt[list[str]] = SetOpt,
    markdown: bool = typer.Option(False, "--markdown", help="Print the field reference as Markdown (docs/config.md)."),
):
    """Print every config field with its resolved value and documentation (validates CONFIG too)."""
    from tunesmith.config.load import load_config
    from tunesmith.config.reference import config_reference_markdown
    from tunesmith.config.sft import RunConfig

    if markdown:
        return print(config_reference_markdown(), end="")
    print_fields(load_config(config, set_), RunConfig)


@handles_errors
def estimate(
    model: str = typer.Argument(
        "smollm2-135m-instruct", help="Embedded name, local checkpoint folder, .gguf file or cached hub id."
    ),
    batch: int = typer.Option(8, "--batch", min=1, help="Sequences (packed rows) per micro-batch."),
    seq_len: int = typer.Option(512, "--seq-len", min=1, help="Tokens per sequence (train.max_length)."),
    rank: int = typer.Option(16, "--rank", min=1, help="LoRA rank r (all linear layers)."),
    checkpointing: bool = typer.Option(
        False, "--gradient-checkpointing", help="Estimate with gradient checkpointing on."
    ),
    use_probe: bool = typer.Option(
        True, "--probe/--no-probe", help="Calibrate with two short probe runs when the model is local."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    allow_pickle: bool = typer.Option(
        False, "--allow-pickle", help="Let the probe load pickle (.bin/.pt) weights; unpickling can run code."
    ),
):
    """Memory needed for full fine-tuning, LoRA and QLoRA: weights, gradients, AdamW states, activations by batch and \
length."""
    from tunesmith.train.estimate import estimate_command

    estimate_command(
        model,
        batch=batch,
        seq_len=seq_len,
        r=rank,
        checkpointing=checkpointing,
        use_probe=use_probe,
        as_json=as_json,
        console=out,
        allow_pickle=allow_pickle,
    )
