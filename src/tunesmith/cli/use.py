"""``tunesmith chat``, ``generate``, ``merge``, ``export`` and ``predict``: use the trained model, served exactly as it
was trained (template, end-of-turn token), checked at export."""

from __future__ import annotations

import typer

from tunesmith.cli._options import AdapterOpt, ModelOpt, Opt, handles_errors, log

MaxNewOpt = typer.Option(
    None,
    "--max-new-tokens",
    min=1,
    help="Tokens per reply at most (default: the trained model's, else 256).",
    show_default=False,
)
SystemOpt = typer.Option(
    None,
    "--system",
    help="System prompt for conversations without one (default: the one the model was trained with, else the "
    "template's).",
    show_default=False,
)
ToolsOpt = typer.Option(
    None, "--tools", help="JSON file with a list of tool (function) specs the model may call; parsed calls are shown."
)
SeedOpt = typer.Option(0, "--seed", help="Sampling seed.")


@handles_errors
def chat(
    model: Opt[str] = ModelOpt,
    adapter: Opt[str] = AdapterOpt,
    system: Opt[str] = SystemOpt,
    temperature: Opt[float] = typer.Option(
        None, "--temperature", min=0.0, help="Sample at this temperature (default: greedy).", show_default=False
    ),
    top_p: float = typer.Option(0.9, "--top-p", min=0.0, max=1.0, help="Nucleus sampling mass (with --temperature)."),
    max_new_tokens: Opt[int] = MaxNewOpt,
    seed: int = SeedOpt,
    tools: Opt[str] = ToolsOpt,
):
    """Interactive chat through the chat template, tokens streamed; /reset, /system TEXT, /tool RESULT, /exit. Reads \
stdin when piped."""
    from tunesmith.use.chat import run_chat

    run_chat(
        model,
        adapter,
        system=system,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        seed=seed,
        tools=tools,
    )


@handles_errors
def generate(
    source: str = typer.Argument(
        ..., help="JSONL (prompt or messages), JSON list, or text file (one prompt a line); - for stdin."
    ),
    model: Opt[str] = ModelOpt,
    adapter: Opt[str] = AdapterOpt,
    output: Opt[str] = typer.Option(None, "--output", "-o", help="Write JSONL here (atomically) instead of stdout."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --output file."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Prompts per batch (left padding)."),
    max_new_tokens: Opt[int] = MaxNewOpt,
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 = greedy (default); > 0 samples."),
    top_p: float = typer.Option(
        1.0, "--top-p", min=0.0, max=1.0, help="Nucleus sampling mass (with --temperature > 0)."
    ),
    system: Opt[str] = SystemOpt,
    seed: int = SeedOpt,
    tools: Opt[str] = ToolsOpt,
):
    """Batched generation: one JSON line per prompt (id, prompt, prediction, reference, finish_reason), greedy by \
default."""
    from tunesmith.use.generate import run_generate

    run_generate(
        source,
        model=model,
        adapter=adapter,
        output=output,
        overwrite=overwrite,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        temperature=temperature,
        top_p=top_p,
        system=system,
        tools=tools,
        seed=seed,
        log=log,
    )


@handles_errors
def merge(
    adapter: str = typer.Option(..., "--adapter", help="LoRA adapter folder or `tunesmith sft` run folder."),
    model: Opt[str] = typer.Option(
        None, "--model", help="Base model (default: the adapter's base).", show_default=False
    ),
    output: str = typer.Option(..., "--output", "-o", help="Folder for the merged safetensors checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --output folder."),
    untie: bool = typer.Option(
        True,
        "--untie/--refuse-tied",
        help="When the adapter trains tied embeddings: untie and save both (default) or refuse.",
    ),
):
    """Merge a LoRA adapter into its base (fp32) and save safetensors + tokenizer + chat template + generation \
config."""
    from tunesmith.export.merge import run_merge

    run_merge(adapter, model=model, output=output, overwrite=overwrite, untie=untie, log=log)


@handles_errors
def export(
    model: Opt[str] = ModelOpt,
    adapter: Opt[str] = AdapterOpt,
    fmt: str = typer.Option("gguf", "--format", help="Export format: gguf."),
    output: str = typer.Option(..., "--output", "-o", help="The .gguf file to write."),
    outtype: str = typer.Option(
        "f32",
        "--outtype",
        help="Tensor type: f32 (exact), f16, q8_0, or a llama.cpp type such as q4_k_m (llama-quantize).",
    ),
    modelfile: bool = typer.Option(False, "--modelfile", help="Also write an Ollama Modelfile next to the GGUF."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace existing output files (the GGUF, its .consistency.json, the Modelfile)."
    ),
    stop_check: bool = typer.Option(
        True, "--stop-check/--no-stop-check", help="Run the 'does it stop' smoke test (off for untrained models)."
    ),
):
    """Export to GGUF (Llama, Mistral, Qwen2), reload it, and check greedy outputs and train = serve consistency \
(report: <name>.consistency.json)."""
    from tunesmith.export.gguf import run_export

    run_export(
        model,
        adapter,
        output=output,
        fmt=fmt,
        outtype=outtype,
        modelfile=modelfile,
        overwrite=overwrite,
        stop_check=stop_check,
        log=log,
    )


@handles_errors
def predict(
    source: str = typer.Argument("-", help="JSONL/CSV/TSV/Parquet/text file, or - for stdin (one example per line)."),
    model: str = typer.Option(..., "--model", help="Run directory of `tunesmith classify`."),
    output: Opt[str] = typer.Option(None, "--output", "-o", help="Write JSONL here instead of stdout."),
    batch_size: int = typer.Option(32, "--batch-size", help="Examples per forward pass."),
):
    """Labels and probabilities from a trained classifier, as JSON lines (batched; reads stdin with -)."""
    from tunesmith.use.predict import run_predict

    run_predict(model, source, output=output, batch_size=batch_size)
