"""`tunesmith baseline` and `tunesmith eval`: score a model on the config's eval split and write a contract run dir.

    tunesmith baseline configs/sft/decision-chatterbot-json.yaml    # -> runs/decision-chatterbot-json-baseline/
    tunesmith eval configs/sft/decision-chatterbot-json.yaml --adapter runs/decision-chatterbot-json/adapter
    tunesmith sft configs/sft/decision-chatterbot-json.yaml         # eval.baseline: true -> baseline, SFT, eval, report

Both commands load the data exactly as `tunesmith sft` does (same split, caps and system prompt), render the prompts
with the config's tokenizer and chat template (:func:`tunesmith.evaluate.generative.build_examples`) and run the one
evaluation step :func:`tunesmith.evaluate.generative.evaluate_examples`, so baseline and fine-tuned numbers come from
the same code, the same examples and the same prompt token ids. Each run dir holds ``metrics.json`` (written last),
``predictions.jsonl``, ``config.yaml`` and ``manifest.json``.
"""

from __future__ import annotations

import time
from pathlib import Path

from tunesmith.config.load import config_inputs, dump_config
from tunesmith.config.metric_names import REFERENCE_METRICS, is_custom_metric
from tunesmith.config.sft import RunConfig
from tunesmith.errors import Problem
from tunesmith.evaluate.generative import build_examples, evaluate_examples, load_schema, loss_rows
from tunesmith.evaluate.metrics import Scoring, describe_custom_metric
from tunesmith.models.adapters import require_adapter
from tunesmith.models.for_use import load_for_use, serving_contract
from tunesmith.runtime.console import console
from tunesmith.runtime.files import atomic_write_json, atomic_write_jsonl, atomic_write_text
from tunesmith.runtime.manifest import write_manifest
from tunesmith.runtime.memory import peak_memory_bytes, reset_peak_memory
from tunesmith.runtime.rundir import prepare_run_dir


def _load(cfg: RunConfig, *, adapter: str | Path | None = None, model_dir: str | Path | None = None):
    """Load the model to evaluate (base, base + merged adapter, or a merged model folder) with the config's tokenizer,
    through the one loader :func:`tunesmith.models.for_use.load_for_use`.

    Returns:
        (source name, model, tokenizer, adapter parameter count).

    Raises:
        ModelError: an adapter folder without ``adapter_config.json``; any load failure.
    """
    loaded = load_for_use(
        str(model_dir) if model_dir else cfg.model.name,
        str(adapter) if adapter else None,
        chat_template=cfg.model.chat_template,
        tokenizer_from=cfg.model.name,
        allow_pickle=cfg.model.allow_pickle,
        attn_implementation=cfg.model.attn_implementation,
        trust_remote_code=cfg.model.trust_remote_code,
        revision=cfg.model.revision,
    )
    model, adapter_params = loaded.model, 0
    if adapter:
        adapter_params = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
        model = model.merge_and_unload()  # the served model: base weights + B@A, no adapter overhead per token
    return (str(model_dir) if model_dir else loaded.base_name), model.eval(), loaded.tokenizer, adapter_params


def _trained_system_prompt(cfg: RunConfig, contract) -> RunConfig:
    """The config with the system prompt the evaluated model was trained with (its serving contract) when the config
    sets none; a config that sets another one keeps it, with a note."""
    trained = contract.system_prompt if contract is not None else None
    if trained is None or cfg.data.system_prompt == trained:
        return cfg
    if cfg.data.system_prompt is not None:
        console.print(
            f"[yellow]note:[/] data.system_prompt {cfg.data.system_prompt!r} differs from the one the model was "
            f"trained with ({trained!r}); evaluating with the config's",
            highlight=False,
        )
        return cfg
    cfg = cfg.model_copy(deep=True)
    cfg.data.system_prompt = trained
    console.print(f"system prompt from the model's serving contract: {trained!r}", highlight=False)
    return cfg


def _data(cfg: RunConfig):
    from tunesmith.data.conversations import load_sft_data

    train, evals, _ = load_sft_data(cfg)
    if not evals:
        from tunesmith.errors import ConfigError

        raise ConfigError(
            "No eval examples",
            [Problem("data.eval_fraction", "the eval split is empty", "set data.eval_fraction > 0 or data.eval_path")],
        )
    return train, evals


def evaluate_run(
    cfg: RunConfig,
    out_dir: Path,
    *,
    kind: str,
    method: str,
    k_shot: int = 0,
    adapter=None,
    model_dir=None,
    data=None,
    overwrite: bool = False,
) -> dict:
    """Evaluate one model on the config's eval split and write the run dir.

    Args:
        cfg: the run config (model, data, eval sections are used).
        out_dir: run directory to create (refused when it holds a run, unless ``overwrite``).
        kind: ``"baseline"`` or ``"eval"`` (``metrics.json`` ``kind``).
        method: display name in the report, e.g. ``"prompting, zero-shot"``.
        k_shot: demonstrations prepended to every prompt.
        adapter / model_dir: a LoRA adapter folder (merged into the base for evaluation) / a merged model folder.
        data: (train, eval) conversations when the caller already loaded them.

    Returns:
        The metrics dict written to ``metrics.json``.

    Raises:
        TunesmithError: bad config, data, schema, model or output folder.
    """

    from tunesmith.models.sources import resolve_model

    schema = load_schema(cfg.eval)
    scoring = Scoring.from_eval(cfg.eval, schema)  # a custom metric that cannot be imported fails before any work
    if data is None and (adapter or model_dir):
        cfg = _trained_system_prompt(
            cfg, serving_contract(str(model_dir) if model_dir else None, adapter and str(adapter))
        )
    train, evals = data or _data(cfg)
    if model_dir:
        resolve_model(str(model_dir))  # a missing folder fails before the run dir is created
    if adapter:
        require_adapter(adapter, f"--adapter {adapter}")
    inputs = config_inputs(cfg) + tuple(str(x) for x in (adapter, model_dir) if x)
    out_dir = prepare_run_dir(out_dir, overwrite=overwrite, inputs=inputs, kind=kind)
    reset_peak_memory()
    name, model, tokenizer, adapter_params = _load(cfg, adapter=adapter, model_dir=model_dir)
    examples = build_examples(tokenizer, evals, train, k_shot=k_shot, seed=cfg.eval.k_shot_seed)
    from tunesmith.render.rows import resolve_max_length
    from tunesmith.render.templates import end_of_turn_ids

    max_length, _ = resolve_max_length(cfg.train.max_length, tokenizer, model.config)
    rows_for_loss = None
    if any(m in REFERENCE_METRICS for m in cfg.eval.metrics):
        rows_for_loss = loss_rows(
            tokenizer, evals, max_length, truncation=cfg.data.truncation, generation_config=model.generation_config
        )
    console.print(
        f"[bold]tunesmith {kind}[/] {method}: model={name}, {len(examples)} eval examples, metrics "
        f"{', '.join(cfg.eval.metrics)}",
        highlight=False,
    )
    start = time.perf_counter()
    rows, task, timing = evaluate_examples(
        model,
        tokenizer,
        examples,
        cfg.eval,
        batch_size=cfg.train.per_device_eval_batch_size,
        eot_ids=end_of_turn_ids(tokenizer, model.generation_config),
        scoring=scoring,
        rows_for_loss=rows_for_loss,
    )
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    cost = {
        "parameters": total,
        "trainable_parameters": adapter_params,
        "generation_tokens_per_second": timing["generated_tokens"] / timing["generation_seconds"]
        if timing["generation_seconds"]
        else None,
        "peak_memory_bytes": peak_memory_bytes(),
    }
    metrics = {
        "kind": kind,
        "method": method,
        "model": name,
        "adapter": str(adapter) if adapter else None,
        "k_shot": k_shot,
        "task_metrics": task,
        "cost": cost,
        "eval_examples": len(rows),
        "targets": dict(cfg.eval.targets),
        "scoring": scoring.options(),
        "max_new_tokens": cfg.eval.max_new_tokens,
        "eval_loss_rows": {
            "max_length": max_length,
            "truncation": cfg.data.truncation,
            "rows": sum(1 for r in rows if r.get("reference_tokens")),
            "trained_tokens": sum(r.get("reference_tokens", 0) for r in rows),
        },
        "eval_seconds": time.perf_counter() - start,
        **timing,
    }
    atomic_write_jsonl(out_dir / "predictions.jsonl", rows)
    atomic_write_text(out_dir / "config.yaml", dump_config(cfg))
    write_manifest(
        out_dir,
        config=cfg.model_dump(mode="json"),
        seed=cfg.train.seed,
        dataset_fingerprint=None,
        tokenizer=tokenizer,
        extra={
            "evaluated": {"model": name, "adapter": str(adapter) if adapter else None, "k_shot": k_shot},
            "custom_metrics": [describe_custom_metric(m) for m in cfg.eval.metrics if is_custom_metric(m)],
        },
    )
    atomic_write_json(out_dir / "metrics.json", metrics)
    console.print(
        f"[bold green]{kind}[/] in {metrics['eval_seconds']:.0f}s: "
        + ", ".join(f"{k} {v:.4f}" for k, v in task.items())
        + f"\n  artifacts: {out_dir}/"
    )
    return metrics


def default_dir(cfg: RunConfig, suffix: str) -> Path:
    """``<train.output_dir>-<suffix>`` (beside, not inside, the SFT run dir, which must start empty)."""
    return Path(str(cfg.train.output_dir).rstrip("/") + f"-{suffix}")


def run_baseline(cfg: RunConfig, *, output: str | Path | None = None, overwrite: bool = False, data=None) -> list[Path]:
    """Prompt the instruction-tuned model zero-shot (and ``eval.k_shot``-shot when > 0) on the eval split.

    Returns:
        The run dirs written: ``output`` (default ``<train.output_dir>-baseline``) and ``<output>-<k>shot``.
    """
    out = Path(output) if output else default_dir(cfg, "baseline")
    data = data or _data(cfg)
    evaluate_run(cfg, out, kind="baseline", method="prompting, zero-shot", data=data, overwrite=overwrite)
    dirs = [out]
    if cfg.eval.k_shot:
        kdir = Path(str(out).rstrip("/") + f"-{cfg.eval.k_shot}shot")
        evaluate_run(
            cfg,
            kdir,
            kind="baseline",
            method=f"prompting, {cfg.eval.k_shot}-shot",
            k_shot=cfg.eval.k_shot,
            data=data,
            overwrite=overwrite,
        )
        dirs.append(kdir)
    return dirs


def run_eval(cfg: RunConfig, *, adapter=None, model_dir=None, output=None, overwrite: bool = False, data=None) -> Path:
    """Evaluate a fine-tuned model (``adapter`` folder or merged ``model_dir``) exactly as the zero-shot baseline.

    Returns:
        The run dir (default ``<train.output_dir>-eval``).

    Raises:
        ConfigError: neither or both of ``adapter`` and ``model_dir`` given.
    """
    from tunesmith.errors import ConfigError

    if (adapter is None) == (model_dir is None):
        raise ConfigError(
            "Say which model to evaluate",
            [
                Problem(
                    "tunesmith eval",
                    "give exactly one of --adapter DIR or --model DIR",
                    "e.g. --adapter runs/sft/adapter",
                )
            ],
        )
    out = Path(output) if output else default_dir(cfg, "eval")
    method = "SFT (LoRA adapter)" if adapter else "fine-tuned (merged model)"
    evaluate_run(
        cfg, out, kind="eval", method=method, adapter=adapter, model_dir=model_dir, data=data, overwrite=overwrite
    )
    return out
