"""``tunesmith sft``, ``classify`` and ``dpo``: the training commands, each run through the decision order
(:mod:`tunesmith.pipeline`) and the one run lifecycle (:mod:`tunesmith.train.lifecycle`)."""

from __future__ import annotations

import typer

from tunesmith.cli._options import (
    ConfigArg,
    NumProcOpt,
    Opt,
    OverwriteOpt,
    ResumeOpt,
    SetOpt,
    ShowConfigOpt,
    SkipInvalidOpt,
    handles_errors,
    print_fields,
    with_skip_invalid,
)

EPILOG = (
    "train.report_to=tensorboard (or trackio) also logs to TensorBoard/Trackio when installed; "
    "the console log is always copied to <output_dir>/run.log."
)
"""Shown under each training command's --help."""


@handles_errors
def sft(
    config: Opt[str] = ConfigArg,
    set_: Opt[list[str]] = SetOpt,
    overwrite: bool = OverwriteOpt,
    resume: Opt[str] = ResumeOpt,
    skip_invalid: bool = SkipInvalidOpt,
    num_processes: Opt[int] = NumProcOpt,
):
    """Supervised fine-tuning with LoRA on TRL's SFTTrainer (default: embedded SmolLM2 on chatterbot)."""
    from tunesmith import pipeline
    from tunesmith.config.load import load_config
    from tunesmith.runtime.distributed import quiet_workers, relaunch

    cfg = load_config(config, with_skip_invalid(set_, skip_invalid))
    if (code := relaunch(num_processes)) is not None:
        raise typer.Exit(code)
    quiet_workers()
    pipeline.run("sft", cfg, overwrite=overwrite, resume=resume)


@handles_errors
def classify(
    config: Opt[str] = ConfigArg,
    set_: Opt[list[str]] = SetOpt,
    overwrite: bool = OverwriteOpt,
    resume: Opt[str] = ResumeOpt,
    baseline: bool = typer.Option(
        False, "--baseline", help="Measure prompting first (eval.baseline): <output_dir>/baseline and report.html."
    ),
    show_config: bool = ShowConfigOpt,
):
    """Task fine-tuning: a classification head on a decoder LLM (LoRA body + trained head; default: chatterbot \
topics)."""
    from tunesmith import pipeline
    from tunesmith.config.classify import ClassifyConfig
    from tunesmith.config.load import load_config

    cfg = load_config(config, (set_ or []) + (["eval.baseline=true"] if baseline else []), model_cls=ClassifyConfig)
    if show_config:
        return print_fields(cfg, ClassifyConfig)
    pipeline.run("classify", cfg, overwrite=overwrite, resume=resume)


@handles_errors
def dpo(
    config: Opt[str] = ConfigArg,
    set_: Opt[list[str]] = SetOpt,
    overwrite: bool = OverwriteOpt,
    resume: Opt[str] = ResumeOpt,
    skip_invalid: bool = SkipInvalidOpt,
    show_config: bool = ShowConfigOpt,
):
    """Preference tuning (DPO, TRL) after SFT: LoRA from the SFT adapter; held-out reward accuracy with a CI, win rate \
vs the start."""
    from tunesmith import pipeline
    from tunesmith.config.dpo import DPORunConfig
    from tunesmith.config.load import load_config

    cfg = load_config(config, with_skip_invalid(set_, skip_invalid), model_cls=DPORunConfig)
    if show_config:
        return print_fields(cfg, DPORunConfig)
    pipeline.run("dpo", cfg, overwrite=overwrite, resume=resume)
