"""The ``tunesmith`` command: a dispatch table, each command calling one function.

    tunesmith sft [CONFIG] [--set key=value ...]     # supervised fine-tuning (LoRA, TRL)
    tunesmith models                                 # embedded and cached models
    tunesmith config [CONFIG]                        # every config field, its value and its documentation
    tunesmith classify [CONFIG] [--baseline]         # classification head on a decoder LLM (LoRA + trained head)
    tunesmith classify-baseline [CONFIG]             # prompting baseline of the same task and eval set
    tunesmith predict --model RUN_DIR [FILE|-]       # labels and probabilities as JSON lines
    tunesmith data check|preview [CONFIG]            # the data as SFT will train on it
    tunesmith baseline [CONFIG]                      # prompting the instruction-tuned model, scored with eval.metrics
    tunesmith eval [CONFIG] --adapter DIR            # the same examples, prompts and metrics for a fine-tuned model
    tunesmith report RUN_DIR...                      # decision report: CIs, wins/losses, cost, verdict
    tunesmith chat|generate|merge|export             # use the result (issue 6)
    tunesmith dpo [CONFIG]                           # preference tuning (DPO) after SFT
    tunesmith estimate [MODEL]                       # memory for full fine-tuning, LoRA, QLoRA
"""
from __future__ import annotations

import functools
import sys
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from tunesmith.runtime.distributed import is_rank_zero
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
    from tunesmith.config.reference import describe_fields

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
    from tunesmith.config.load import load_config
    from tunesmith.runtime.distributed import quiet_workers, relaunch
    from tunesmith.train.lifecycle import check_sft_inputs

    cfg = load_config(config, (set_ or []) + (["data.skip_invalid=true"] if skip_invalid else []))
    if (code := relaunch(num_processes)) is not None:
        raise typer.Exit(code)
    quiet_workers()
    # --- reliability --- (validate config, data and output dir before torch is imported: bad input fails in ~1 s)
    checked = check_sft_inputs(cfg, overwrite=overwrite, resume=resume)
    from tunesmith.train.sft import run_sft

    run_sft(cfg, overwrite=overwrite, resume=resume, checked=checked)


@app.command()
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


@app.command("config")
@handles_errors
def config_cmd(config: Optional[str] = ConfigArg, set_: Optional[list[str]] = SetOpt,
               markdown: bool = typer.Option(False, "--markdown", help="Print the field reference as Markdown (docs/config.md).")):
    """Print every config field with its resolved value and documentation (validates CONFIG too)."""
    import yaml

    from tunesmith.config.reference import config_reference_markdown, describe_fields
    from tunesmith.config.load import load_config

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


# --- classification (issue 5) ---
@app.command(epilog="Config fields: run `tunesmith classify --show-config` for every field with its value and documentation.")
@handles_errors
def classify(config: Optional[str] = ConfigArg, set_: Optional[list[str]] = SetOpt,
             overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing train.output_dir."),
             baseline: bool = typer.Option(False, "--baseline", help="Also run the prompting baseline into <output_dir>-baseline."),
             show_config: bool = typer.Option(False, "--show-config", help="Print every classify config field and exit.")):
    """Task fine-tuning: a classification head on a decoder LLM (LoRA body + trained head; default: chatterbot topics)."""
    from tunesmith.config.classify import ClassifyConfig
    from tunesmith.config.load import load_config

    cfg = load_config(config, set_, model_cls=ClassifyConfig)
    if show_config:
        return _print_fields(cfg, ClassifyConfig)
    from tunesmith.train.classify import run_classify

    run_classify(cfg, overwrite=overwrite)
    if baseline or cfg.eval.baseline:
        from tunesmith.evaluate.classify_baseline import run_classify_baseline

        run_classify_baseline(cfg, overwrite=overwrite)


@app.command("classify-baseline")
@handles_errors
def classify_baseline(config: Optional[str] = ConfigArg, set_: Optional[list[str]] = SetOpt,
                      output: Optional[str] = typer.Option(None, "--output", help="Run directory (default: <train.output_dir>-baseline)."),
                      overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run directory.")):
    """Prompting baseline of a classify config: the instruction-tuned model picks a label, scored on the same eval set."""
    from tunesmith.config.classify import ClassifyConfig
    from tunesmith.config.load import load_config
    from tunesmith.evaluate.classify_baseline import run_classify_baseline

    run_classify_baseline(load_config(config, set_, model_cls=ClassifyConfig), output_dir=output, overwrite=overwrite)


@app.command()
@handles_errors
def predict(source: str = typer.Argument("-", help="JSONL/CSV/TSV/Parquet/text file, or - for stdin (one example per line)."),
            model: str = typer.Option(..., "--model", help="Run directory of `tunesmith classify`."),
            output: Optional[str] = typer.Option(None, "--output", "-o", help="Write JSONL here instead of stdout."),
            batch_size: int = typer.Option(32, "--batch-size", help="Examples per forward pass.")):
    """Labels and probabilities from a trained classifier, as JSON lines (batched; reads stdin with -)."""
    from tunesmith.use.predict import run_predict

    run_predict(model, source, output=output, batch_size=batch_size)


def _print_fields(cfg, model_cls) -> None:
    import yaml

    from tunesmith.config.reference import describe_fields

    values = cfg.model_dump(mode="json")
    table = Table()
    for col in ("field", "value", "documentation"):
        table.add_column(col, overflow="fold")
    for key, _default, doc in describe_fields(model_cls):
        section, name = key.split(".", 1)
        table.add_row(key, yaml.safe_dump(values[section][name], default_flow_style=True).removesuffix("...\n").strip(), doc)
    out.print(table)
# --- end classification ---


# --- data (issue 3) ---
data_app = typer.Typer(no_args_is_help=True, help="Check and preview SFT data exactly as `tunesmith sft` will train on it.")
app.add_typer(data_app, name="data")


@data_app.command("check")
@handles_errors
def data_check(config: Optional[str] = ConfigArg, set_: Optional[list[str]] = SetOpt,
               skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Count invalid records as skipped (exit 0) instead of as errors.")):
    """Report rows kept/skipped (with reasons), token lengths, trained-token share, truncation, roles, duplicates, template findings."""
    from tunesmith.config.load import load_config
    from tunesmith.use.data_check import run_check

    raise typer.Exit(run_check(load_config(config, set_), skip_invalid=skip_invalid))


@data_app.command("preview")
@handles_errors
def data_preview(config: Optional[str] = ConfigArg, set_: Optional[list[str]] = SetOpt,
                 n: int = typer.Option(3, "-n", help="Number of examples to show."),
                 plain: Optional[bool] = typer.Option(None, "--plain/--color", help="Mark trained tokens with [[...]] instead of colours (default: plain when not a terminal).")):
    """Print N rendered examples with trained tokens highlighted and masked tokens dimmed."""
    from tunesmith.config.load import load_config
    from tunesmith.use.data_check import run_preview

    raise typer.Exit(run_preview(load_config(config, set_), n, plain=plain))


# --- decision order (issue 4) ---
@app.command()
@handles_errors
def baseline(config: Optional[str] = ConfigArg, set_: Optional[list[str]] = SetOpt,
             output: Optional[str] = typer.Option(None, "--output", help="Run directory (default: <train.output_dir>-baseline; k-shot: <output>-<k>shot)."),
             overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run directory.")):
    """Is prompting enough? Prompt the instruction-tuned model on the eval split (zero-shot, and eval.k_shot-shot) and score it with eval.metrics."""
    from tunesmith.config.load import load_config
    from tunesmith.evaluate.baseline import run_baseline

    run_baseline(load_config(config, set_), output=output, overwrite=overwrite)


@app.command("eval")
@handles_errors
def eval_cmd(config: Optional[str] = ConfigArg, set_: Optional[list[str]] = SetOpt,
             adapter: Optional[str] = typer.Option(None, "--adapter", help="LoRA adapter folder (e.g. runs/sft/adapter), merged into model.name."),
             model: Optional[str] = typer.Option(None, "--model", help="A merged (full) model folder."),
             output: Optional[str] = typer.Option(None, "--output", help="Run directory (default: <train.output_dir>-eval)."),
             overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run directory.")):
    """Score a fine-tuned model with the same examples, prompts and metrics as `tunesmith baseline`."""
    from tunesmith.config.load import load_config
    from tunesmith.evaluate.baseline import run_eval

    run_eval(load_config(config, set_), adapter=adapter, model_dir=model, output=output, overwrite=overwrite)


@app.command()
@handles_errors
def report(run_dirs: list[str] = typer.Argument(..., help="Run directories; the first is the reference (the prompting baseline)."),
           output: Optional[str] = typer.Option(None, "--output", "-o", help="HTML file (default: <last RUN_DIR>/report.html)."),
           target: Optional[list[str]] = typer.Option(None, "--target", help="METRIC=VALUE, e.g. json_schema=0.95 (repeatable; default: eval.targets of the runs)."),
           overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing report file.")):
    """Decision report: baseline vs fine-tuned per metric with bootstrap CIs, wins/losses, cost and a verdict against targets."""
    from tunesmith.evaluate.report import parse_targets, write_report

    write_report(run_dirs, output, targets=parse_targets(target) if target else None, overwrite=overwrite)
# --- end decision order ---


# --- use (issue 6) ---
ModelOpt = typer.Option(None, "--model", help="Base model (embedded name, HF id, folder, .gguf) or a `tunesmith sft` run folder.", show_default=False)
AdapterOpt = typer.Option(None, "--adapter", help="LoRA adapter folder (or run folder holding adapter/); its base comes from the run config.", show_default=False)


def _log(text: str) -> None:
    err.print(_escape(text), highlight=False)


@app.command()
@handles_errors
def chat(model: Optional[str] = ModelOpt, adapter: Optional[str] = AdapterOpt,
         system: Optional[str] = typer.Option(None, "--system", help="System prompt (default: the template's)."),
         temperature: float = typer.Option(0.7, "--temperature", min=0.0, help="Sampling temperature; 0 = greedy."),
         top_p: float = typer.Option(0.9, "--top-p", min=0.0, max=1.0, help="Nucleus sampling mass."),
         max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1, help="Tokens per reply at most."),
         seed: int = typer.Option(0, "--seed", help="Sampling seed.")):
    """Interactive chat through the chat template, tokens streamed; /reset, /system TEXT, /exit. Reads stdin when piped."""
    from tunesmith.use.chat import run_chat

    run_chat(model, adapter, system=system, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)


@app.command()
@handles_errors
def generate(source: str = typer.Argument(..., help="JSONL (prompt or messages), JSON list, or text file (one prompt a line); - for stdin."),
             model: Optional[str] = ModelOpt, adapter: Optional[str] = AdapterOpt,
             output: Optional[str] = typer.Option(None, "--output", "-o", help="Write JSONL here (atomically) instead of stdout."),
             overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --output file."),
             batch_size: int = typer.Option(8, "--batch-size", min=1, help="Prompts per batch (left padding)."),
             max_new_tokens: int = typer.Option(128, "--max-new-tokens", min=1, help="Tokens per reply at most."),
             temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 = greedy (default); > 0 samples."),
             top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0, help="Nucleus sampling mass (with --temperature > 0)."),
             system: Optional[str] = typer.Option(None, "--system", help="System prompt for records without one."),
             seed: int = typer.Option(0, "--seed", help="Sampling seed.")):
    """Batched generation: one JSON line per prompt (id, prompt, prediction, reference, finish_reason), greedy by default."""
    from tunesmith.use.generate import run_generate

    run_generate(source, model=model, adapter=adapter, output=output, overwrite=overwrite, max_new_tokens=max_new_tokens,
                 batch_size=batch_size, temperature=temperature, top_p=top_p, system=system, seed=seed, log=_log)


@app.command()
@handles_errors
def merge(adapter: str = typer.Option(..., "--adapter", help="LoRA adapter folder or `tunesmith sft` run folder."),
          model: Optional[str] = typer.Option(None, "--model", help="Base model (default: the adapter's base).", show_default=False),
          output: str = typer.Option(..., "--output", "-o", help="Folder for the merged safetensors checkpoint."),
          overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --output folder."),
          untie: bool = typer.Option(True, "--untie/--refuse-tied", help="When the adapter trains tied embeddings: untie and save both (default) or refuse.")):
    """Merge a LoRA adapter into its base (fp32) and save safetensors + tokenizer + chat template + generation config."""
    from tunesmith.export.merge import run_merge

    run_merge(adapter, model=model, output=output, overwrite=overwrite, untie=untie, log=_log)


@app.command()
@handles_errors
def export(model: Optional[str] = ModelOpt, adapter: Optional[str] = AdapterOpt,
           fmt: str = typer.Option("gguf", "--format", help="Export format: gguf."),
           output: str = typer.Option(..., "--output", "-o", help="The .gguf file to write."),
           outtype: str = typer.Option("f32", "--outtype", help="Tensor type: f32 (exact) or f16."),
           modelfile: bool = typer.Option(False, "--modelfile", help="Also write an Ollama Modelfile next to the GGUF."),
           overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --output file."),
           stop_check: bool = typer.Option(True, "--stop-check/--no-stop-check", help="Run the 'does it stop' smoke test (off for untrained models).")):
    """Export to GGUF (llama models), reload it, and check greedy outputs and template consistency (report: <name>.consistency.json)."""
    from tunesmith.export.gguf import run_export

    run_export(model, adapter, output=output, fmt=fmt, outtype=outtype, modelfile=modelfile, overwrite=overwrite, stop_check=stop_check, log=_log)
# --- end use ---


# --- preference tuning (issue 7) ---
@app.command(epilog="Config fields: run `tunesmith dpo --show-config` for every field with its value and documentation.")
@handles_errors
def dpo(config: Optional[str] = ConfigArg, set_: Optional[list[str]] = SetOpt,
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing train.output_dir."),
        skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Skip (log and count) invalid preference pairs instead of stopping."),
        show_config: bool = typer.Option(False, "--show-config", help="Print every dpo config field and exit.")):
    """Preference tuning (DPO, TRL) after SFT: LoRA from the SFT adapter; held-out reward accuracy with a CI, win rate vs the start."""
    from tunesmith.config.load import load_config
    from tunesmith.config.dpo import DPORunConfig

    cfg = load_config(config, (set_ or []) + (["data.skip_invalid=true"] if skip_invalid else []), model_cls=DPORunConfig)
    if show_config:
        return _print_fields(cfg, DPORunConfig)
    from tunesmith.train.dpo import run_dpo

    run_dpo(cfg, overwrite=overwrite)
# --- end preference tuning ---


# --- performance (issue 10) ---
@app.command()
@handles_errors
def estimate(model: str = typer.Argument("smollm2-135m-instruct", help="Embedded name, local checkpoint folder, .gguf file or cached hub id."),
             batch: int = typer.Option(8, "--batch", min=1, help="Sequences (packed rows) per micro-batch."),
             seq_len: int = typer.Option(512, "--seq-len", min=1, help="Tokens per sequence (train.max_length)."),
             rank: int = typer.Option(16, "--rank", min=1, help="LoRA rank r (all linear layers)."),
             checkpointing: bool = typer.Option(False, "--gradient-checkpointing", help="Estimate with gradient checkpointing on."),
             use_probe: bool = typer.Option(True, "--probe/--no-probe", help="Calibrate with two short probe runs when the model is local."),
             as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")):
    """Memory needed for full fine-tuning, LoRA and QLoRA: weights, gradients, AdamW states, activations by batch and length."""
    from tunesmith.train.estimate import estimate_command

    estimate_command(model, batch=batch, seq_len=seq_len, r=rank, checkpointing=checkpointing, use_probe=use_probe, as_json=as_json, console=out)
# --- end performance ---


def main() -> None:
    """Console entry point (``tunesmith``)."""
    app(prog_name="tunesmith")


if __name__ == "__main__":
    sys.exit(main())
