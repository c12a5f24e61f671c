"""One translation from tunesmith's ``lora`` section into ``peft.LoraConfig`` (Hu et al. 2021, LoRA)."""
from __future__ import annotations


def to_peft_config(lora_cfg, task_type: str = "CAUSAL_LM"):
    """Build a ``peft.LoraConfig`` from a :class:`tunesmith.config.sft.LoraSection`.

    Args:
        lora_cfg: the ``lora`` section (r, lora_alpha, lora_dropout, target_modules, ...).
        task_type: ``CAUSAL_LM`` for SFT/DPO, ``SEQ_CLS`` for classification.

    Returns:
        ``peft.LoraConfig``; ``target_modules="all-linear"`` adapts every linear layer except the output head
        (PEFT's documented behaviour).
    """
    from peft import LoraConfig

    return LoraConfig(r=lora_cfg.r, lora_alpha=lora_cfg.lora_alpha, lora_dropout=lora_cfg.lora_dropout,
                      target_modules=lora_cfg.target_modules, bias=lora_cfg.bias, modules_to_save=lora_cfg.modules_to_save,
                      use_rslora=lora_cfg.use_rslora, task_type=task_type)


def apply_lora(model, lora_cfg, task_type: str = "CAUSAL_LM"):
    """Wrap ``model`` in a ``peft.PeftModel`` with the configured adapter (named ``lora_cfg.adapter_name``).

    Returns:
        The PEFT model; only adapter (and ``modules_to_save``) parameters require grad.
    """
    from peft import get_peft_model

    return get_peft_model(model, to_peft_config(lora_cfg, task_type), adapter_name=lora_cfg.adapter_name)


def count_parameters(model) -> tuple[int, int]:
    """Return (trainable, total) parameter counts; tied weights are counted once."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total
