"""QLoRA: ``model.quantization`` (``nf4`` | ``int8``) as a bitsandbytes ``BitsAndBytesConfig``, the PEFT preparation
of a quantised base for training, and the record a QLoRA adapter keeps of its base's quantisation.

    tunesmith sft my-run.yaml --set model.quantization=nf4        # LoRA on a 4-bit NF4 base (QLoRA)
    tunesmith merge --adapter runs/my-run --output runs/merged     # into a dequantised fp32 copy of that base

``nf4`` is the QLoRA recipe (Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs"): 4-bit
NormalFloat weights with double-quantised block constants, computed in ``compute_dtype``. ``int8`` is LLM.int8()
(Dettmers et al. 2022): 8-bit row-wise weights with fp16 outlier columns. bitsandbytes ships its CPU backend in the
x86-64 wheel, so both run (slowly) without a GPU. Tested by ``pytest tests/models/test_quantization.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tunesmith.config.base import QUANTIZATIONS
from tunesmith.errors import ModelError, Problem
from tunesmith.runtime.hardware import is_installed

ADAPTER_RECORD = "tunesmith_quantization.json"
"""File in an adapter folder naming the quantisation its base was trained in: ``{"quantization": "nf4", ...}``."""


def require_bitsandbytes(name: str) -> None:
    """Check that ``model.quantization=name`` can be loaded here.

    Raises:
        ModelError: an unknown name, or bitsandbytes not installed (the fix names the ``qlora`` extra).
    """
    if name not in QUANTIZATIONS:
        raise ModelError(
            "Unknown quantization",
            [
                Problem(
                    f"model.quantization={name}", "not a known quantization", f"use one of {', '.join(QUANTIZATIONS)}"
                )
            ],
        )
    if not is_installed("bitsandbytes"):
        raise ModelError(
            "bitsandbytes is not installed",
            [
                Problem(
                    f"model.quantization={name}",
                    "QLoRA loads the base through bitsandbytes, which is not installed here",
                    "pip install 'tunesmith[qlora]' (bitsandbytes; its x86-64 wheel has a CPU backend), or remove "
                    "model.quantization",
                )
            ],
        )


def bnb_config(name: str, compute_dtype: torch.dtype = torch.bfloat16):
    """The ``transformers.BitsAndBytesConfig`` of ``model.quantization=name``.

    Args:
        name: ``nf4`` (4-bit NormalFloat, double quantisation, QLoRA) or ``int8`` (LLM.int8(), outlier threshold 6).
        compute_dtype: dtype the 4-bit layers dequantise to and compute in (bf16 where native, else fp32).

    Returns:
        ``BitsAndBytesConfig``; the output head stays unquantised (transformers keeps ``lm_head`` in full precision).

    Raises:
        ModelError: see :func:`require_bitsandbytes`.
    """
    from transformers import BitsAndBytesConfig

    require_bitsandbytes(name)
    if name == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
            bnb_4bit_quant_storage=torch.uint8,
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=6.0)


def quantized_load_kwargs(name: str | None, compute_dtype: torch.dtype) -> dict:
    """``from_pretrained`` keyword arguments that load a base quantised: ``quantization_config`` and a ``device_map``
    that puts the whole model on this process's device (bitsandbytes quantises while loading, on that device;
    the Trainer does not move a quantised model).

    Returns:
        ``{}`` for ``name=None``, else ``{"quantization_config": BitsAndBytesConfig, "device_map": {"": device}}``.
    """
    if name is None:
        return {}
    import os

    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
    return {"quantization_config": bnb_config(name, compute_dtype), "device_map": {"": device}}


def keep_training_layout(model) -> int:
    """Keep every 4-bit layer in the weight layout it trains in.

    On a CPU with AVX512-BF16, bitsandbytes (0.50) repacks a ``Linear4bit`` layer's weights into a CPU inference
    layout (block constants rounded to bf16) the first time it runs without gradients, e.g. the eval before training
    or a sample generation, and its training pass through that layout has no autograd kernel: measured on a tiny
    Llama, LoRA gradients after one eval pass were 93% off those of the same model dequantised
    (``tests/models/test_quantization.py``). The layer's own ``support_avx512bf16_for_cpu`` switch turns the repacking
    off, so training, evaluation and the merge reference compute with the weights as loaded.

    Returns:
        How many 4-bit layers were set.
    """
    n = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


def prepare_for_training(model, gradient_checkpointing: bool = False):
    """Prepare a quantised base for LoRA training the PEFT way (``peft.prepare_model_for_kbit_training``): freeze
    every base weight, cast the non-quantised ones (norms, embeddings, head) to fp32 for stable training, make the
    input embeddings' output require grad (so checkpointed layers get gradients), and turn on gradient checkpointing
    (non-reentrant) only when asked.

    Returns:
        The same model, ready for :func:`tunesmith.models.adapters.apply_lora`.
    """
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(
        model,
        use_gradient_checkpointing=gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if gradient_checkpointing else None,
    )


def model_quantization(model) -> str | None:
    """``nf4``/``int8`` when ``model`` (or a PEFT model's base) was loaded quantised by bitsandbytes, else None."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    qc = getattr(base.config, "quantization_config", None)
    if qc is None:
        return None
    qc = qc if isinstance(qc, dict) else qc.to_dict()
    if qc.get("load_in_4bit"):
        return "nf4" if qc.get("bnb_4bit_quant_type", "nf4") == "nf4" else str(qc["bnb_4bit_quant_type"])
    return "int8" if qc.get("load_in_8bit") else None


def adapter_record(name: str, compute_dtype: torch.dtype) -> str:
    """The JSON text of :data:`ADAPTER_RECORD` for an adapter trained on a ``name``-quantised base."""
    return json.dumps({"quantization": name, "compute_dtype": str(compute_dtype).removeprefix("torch.")}, indent=1)


def adapter_quantization(adapter_dir: Path) -> str | None:
    """The quantisation an adapter's base was trained in (:data:`ADAPTER_RECORD`), or None for a plain LoRA adapter.

    Raises:
        ModelError: an unreadable or unknown record.
    """
    path = Path(adapter_dir) / ADAPTER_RECORD
    if not path.is_file():
        return None
    try:
        name = json.loads(path.read_text())["quantization"]
    except (OSError, ValueError, KeyError, TypeError):
        name = None
    if name not in QUANTIZATIONS:
        raise ModelError(
            "Unreadable quantization record",
            [
                Problem(
                    str(path), f"expected {{'quantization': one of {QUANTIZATIONS}}}", "restore the file from the run"
                )
            ],
        )
    return name


def dequantize(model):
    """Replace every bitsandbytes layer of a quantised base by a plain ``nn.Linear`` holding its dequantised weights
    (transformers ``PreTrainedModel.dequantize``): the exact weights the quantised layers computed with, now in
    full precision, and drop ``quantization_config`` from the config so a saved copy loads as a plain checkpoint.

    Returns:
        The same model, unquantised, in fp32.
    """
    model = model.dequantize()
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model.float()
