"""One GPU-check run in a fresh process: one variant (tunesmith / TRL, LoRA / QLoRA) on one random-weight model.

    python bench/gpu/gpu_worker.py VARIANT --model-dir DIR --data DIR --out RESULT.json   # called by gpu_bench.py

Every variant loads the same saved random weights (so eval_loss is compared on the same init), trains the same LoRA
(r=16, all linear layers) on the same pre-tokenised rows for the same optimizer steps, and is scored by the same
eval_loss function (bench/variants.py ``eval_loss``); only the training path differs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # bench/: variants.py (StepClock, eval_loss, train_and_measure, common_args)

from variants import common_args  # noqa: E402 (bench/ is put on the path just above)

VARIANTS = {
    "tunesmith": "tunesmith sft path, defaults (precision from the hardware, packed rows, chunked loss)",
    "trl_padfree_liger": (
        "TRL SFTTrainer at its best: bf16 weights, packing BFD, padding_free=True, use_liger_kernel=True where "
        "liger-kernel installs, flash-attention 2 where flash_attn is installed (else SDPA), no checkpointing"
    ),
    "trl_shipped": "TRL SFTTrainer as shipped: fp32 load, bf16 autocast, gradient checkpointing, padded, no packing",
    "tunesmith_qlora": "tunesmith sft path with model.quantization=nf4 (QLoRA), defaults otherwise",
    "trl_padfree_liger_qlora": "TRL at its best (as trl_padfree_liger) on an nf4 base (BitsAndBytesConfig, QLoRA)",
}
"""Variant name -> what it runs. ``*_qlora`` variants need bitsandbytes."""

REFERENCE = {
    "tunesmith": "trl_padfree_liger",
    "trl_shipped": "trl_padfree_liger",
    "tunesmith_qlora": "trl_padfree_liger_qlora",
}
"""The TRL run each variant's speed, memory and eval_loss are compared with (same model, same init)."""


def _tunesmith(a, train_ds, tokenizer) -> tuple[object, dict]:
    """tunesmith's SFT path on the saved model: its config defaults, its loader (QLoRA included), trainer and plan."""
    from tunesmith.config.sft import RunConfig
    from tunesmith.models.sources import resolve_model
    from tunesmith.train.common import run_precision
    from tunesmith.train.sft import _make_trainer, build_sft_config, load_sft_model
    from tunesmith.train.speed.plan import apply_threads, plan_speed, sft_overrides
    from tunesmith.train.speed.precision import fast_lora_inputs

    cfg = RunConfig()
    cfg.model.name = str(a.model_dir)
    cfg.model.quantization = "nf4" if a.variant.endswith("_qlora") else None
    for k, v in common_args(a).items():
        if k in type(cfg.train).model_fields:
            setattr(cfg.train, k, v)
    plan = plan_speed(cfg.train, cfg.model.attn_implementation)
    apply_threads(plan)
    prec = run_precision(cfg, plan)
    model = load_sft_model(cfg, resolve_model(cfg.model.name), plan.attn_implementation, prec)
    fast_lora_inputs(model, prec.name == "bf16")
    args = build_sft_config(
        cfg, Path(a.out).parent / f"ckpt-{a.variant}", prec.autocast, overrides=sft_overrides(plan, cfg.train)
    )
    args.save_strategy, args.eval_strategy, args.disable_tqdm = "no", "no", True
    trainer = _make_trainer(model, tokenizer, args, train_ds, None, plan)
    info = {
        "precision": prec.name,
        "attn_implementation": plan.attn_implementation,
        "layout": plan.layout,
        "liger": plan.liger,
        "chunked_loss": trainer.tunesmith_chunked_loss,
        "quantization": cfg.model.quantization,
    }
    return trainer, info


def _trl(a, train_ds, tokenizer) -> tuple[object, dict]:
    """Plain TRL: the model given as a path (TRL loads it), LoRA through ``peft_config``."""
    from trl import SFTConfig, SFTTrainer

    from tunesmith.config.base import LoraSection
    from tunesmith.models.adapters import to_peft_config
    from tunesmith.runtime.hardware import is_installed

    cuda = torch.cuda.is_available()
    kw = common_args(a)
    info = {"quantization": None, "liger": False, "layout": "padded", "chunked_loss": False}
    init: dict = {}
    if a.variant.startswith("trl_padfree_liger"):
        info.update(liger=cuda and is_installed("liger_kernel"), layout="flat")
        init["attn_implementation"] = "flash_attention_2" if cuda and is_installed("flash_attn") else "sdpa"
        init["dtype"] = "bfloat16" if cuda else "float32"
        kw.update(
            packing=True,
            packing_strategy="bfd",
            padding_free=True,
            use_liger_kernel=info["liger"],
            gradient_checkpointing=False,
            bf16=cuda,
        )
    if a.variant.endswith("_qlora"):
        from tunesmith.models.quantization import quantized_load_kwargs

        init.update(quantized_load_kwargs("nf4", torch.bfloat16 if cuda else torch.float32))
        info["quantization"] = "nf4"
    if init:
        kw["model_init_kwargs"] = init
    args = SFTConfig(**kw)
    trainer = SFTTrainer(
        model=str(a.model_dir),
        args=args,
        train_dataset=train_ds,
        processing_class=tokenizer,
        peft_config=to_peft_config(LoraSection()),  # the same LoRA as tunesmith's defaults
    )
    info["precision"] = ("bf16" if init.get("dtype") == "bfloat16" else "fp32") + ("-autocast" if args.bf16 else "")
    info["attn_implementation"] = trainer.model.config._attn_implementation
    return trainer, info


def run(a) -> dict:
    """Train one variant and measure it (bench/variants.py ``train_and_measure``)."""
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    from variants import StepClock, train_and_measure

    tokenizer = AutoTokenizer.from_pretrained(a.model_dir)
    train_ds = load_from_disk(str(Path(a.data) / "train"))
    eval_rows = json.loads((Path(a.data) / "eval.json").read_text())
    torch.manual_seed(42)
    trainer, info = (_tunesmith if a.variant.startswith("tunesmith") else _trl)(a, train_ds, tokenizer)
    clock = StepClock()
    trainer.add_callback(clock.callback)
    measured = train_and_measure(trainer, clock, eval_rows, a.warmup)
    return {"variant": a.variant, "description": VARIANTS[a.variant], **info, **measured}


def main(argv=None) -> int:
    """Entry of one worker process: writes the result JSON to ``--out``."""
    p = argparse.ArgumentParser()
    p.add_argument("variant", choices=sorted(VARIANTS))
    p.add_argument("--model-dir", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-length", type=int, default=2048)
    a = p.parse_args(argv)
    Path(a.out).write_text(json.dumps(run(a), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
