"""The training precision of a run: fp32, bf16 base weights with fp32 LoRA, or bf16 autocast over fp32 weights.

``tunesmith sft``, ``dpo`` and ``classify`` call :func:`resolve_precision`; ``model.dtype: auto`` is decided by
:func:`probe_precision`, a timed training step in each precision on this machine, cached per machine and model shape.
Tested by ``pytest tests/train/speed/test_precision.py``; measured by ``make bench`` (bench/bench_sft.py).

Three precisions:

* ``fp32``: weights, activations and LoRA in fp32.
* ``bf16``: with LoRA, the frozen base weights are stored once in bf16 (half the memory) and the LoRA weights and
  their optimizer state stay fp32 (PEFT's ``autocast_adapter_dtype``); the matmuls run in bf16 under autocast, which
  then casts only the small LoRA matrices, never a base weight, and PEFT's cast of every LoRA input to fp32 is off
  during training (:func:`fast_lora_inputs`).  This is QLoRA's layout (Dettmers et al. 2023, arXiv:2305.14314) with
  bf16 in place of 4-bit weights.  Without LoRA (full fine-tuning) ``bf16`` means ``bf16-mixed``.
* ``bf16-mixed``: fp32 weights, bf16 autocast (the trainer's ``bf16=True``): every frozen weight is re-cast to bf16 on
  every forward pass.

Why a probe and not a matmul benchmark: end to end, the step also pays for casts, norms, attention and the optimizer;
on a 2-core AMD EPYC with avx512_bf16 (no AMX) a bf16 matmul ran 2.5x faster than fp32 but bf16 autocast trained
slower than fp32.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch

PRECISIONS = ("fp32", "bf16", "bf16-mixed")


@dataclass(frozen=True)
class Precision:
    """How a run stores and computes.

    Attributes:
        name: ``fp32``, ``bf16`` (bf16 base weights, fp32 LoRA) or ``bf16-mixed`` (fp32 weights, bf16 autocast).
        why: one line for the log (what decided it, with the probe's timings when there was one).
    """

    name: str
    why: str

    @property
    def weights(self) -> torch.dtype:
        """The dtype the base model is loaded in."""
        return torch.bfloat16 if self.name == "bf16" else torch.float32

    @property
    def autocast(self) -> bool:
        """bf16 autocast in the trainer (``TrainingArguments.bf16``)."""
        return self.name != "fp32"


def resolve_precision(cfg, *, seq_len: int = 512, rows: int = 1, device: str | None = None) -> Precision:
    """The precision of a run from ``model.dtype``, ``train.bf16``, LoRA and (for ``auto`` on CPU) a timed probe.

    Args:
        cfg: a run config (``model``, ``train``, ``lora`` sections; ``model.quantization`` keeps its own path).
        seq_len: tokens per row of the probe step (the run's max_length).
        rows: rows per forward/backward pass of the probe step.
        device: ``cuda`` or ``cpu`` (default: cuda when available).

    Returns:
        :class:`Precision`.

    A probe that cannot build the model (an architecture outside transformers' Auto classes, say) falls back to the
    matmul test (:func:`tunesmith.runtime.hardware.hardware_supports_bf16`) and says so in ``why``.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    lora = bool(getattr(getattr(cfg, "lora", None), "enabled", False)) and not cfg.model.quantization
    bf16 = "bf16" if lora else "bf16-mixed"
    flag, dtype = cfg.train.bf16, cfg.model.dtype
    if flag is False:
        return Precision("fp32", "train.bf16=false")
    if dtype == "bfloat16":
        return Precision(bf16, "model.dtype=bfloat16")
    if dtype in ("float32", "float16"):
        return Precision(
            "bf16-mixed" if flag else "fp32", f"model.dtype={dtype}" + (", train.bf16=true" if flag else "")
        )
    if flag:
        return Precision(bf16, "train.bf16=true")
    if device.startswith("cuda"):
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return Precision(bf16 if ok else "fp32", "CUDA " + ("with" if ok else "without") + " bf16")
    from tunesmith.runtime.hardware import cpu_has_bf16

    if not cpu_has_bf16():
        return Precision("fp32", "this CPU has no native bf16 (no avx512_bf16 or amx_bf16)")
    try:
        return probe_precision(cfg, candidates=("fp32", bf16), seq_len=seq_len, rows=rows)
    except Exception as e:  # noqa: BLE001 - an architecture the probe cannot build: fall back to the matmul test
        from tunesmith.runtime.hardware import hardware_supports_bf16

        name = bf16 if hardware_supports_bf16("cpu") else "fp32"
        return Precision(name, f"matmul test (the training-step probe failed: {type(e).__name__}: {e})"[:300])


def probe_precision(cfg, *, candidates: tuple[str, ...], seq_len: int, rows: int) -> Precision:
    """Time one training step of the run's own architecture in each candidate precision; the fastest wins.

    The probe model is the run's model config cut to 2 decoder layers, with random weights, LoRA as configured and
    the chunked loss; each precision does one warm-up step and two timed steps on ``rows x seq_len`` random tokens
    (a third of them trained), alternating.  The answer is cached in ``$TUNESMITH_HOME/hardware.json`` per CPU,
    core count, torch version, thread count and model shape.

    Returns:
        :class:`Precision` whose ``why`` gives the timings (seconds per step).
    """
    from tunesmith.runtime.hardware import cached_measurement

    model_cfg = _probe_config(cfg)
    shape = [getattr(model_cfg, k, None) for k in ("model_type", "hidden_size", "intermediate_size")]
    shape += [getattr(model_cfg, k, None) for k in ("num_attention_heads", "num_key_value_heads", "vocab_size")]
    key = f"train-step|{'/'.join(map(str, shape))}|{rows}x{seq_len}|r{cfg.lora.r}|{'/'.join(candidates)}"
    timings = cached_measurement(key, lambda: _time_steps(model_cfg, cfg, candidates, seq_len, rows))
    best = min(candidates, key=lambda c: timings[c])
    shown = ", ".join(f"{c} {timings[c]:.3f} s" for c in candidates)
    return Precision(best, f"model.dtype=auto: timed training step on this machine ({shown} per step)")


def _probe_config(cfg):
    from transformers import AutoConfig

    from tunesmith.models.sources import resolve_model

    source = resolve_model(cfg.model.name)
    mc = AutoConfig.from_pretrained(source.location, trust_remote_code=False, local_files_only=True)
    mc.num_hidden_layers = min(2, getattr(mc, "num_hidden_layers", 2) or 2)
    return mc


def _time_steps(model_cfg, cfg, candidates, seq_len: int, rows: int) -> dict[str, float]:
    import gc

    with torch.random.fork_rng(devices=[]):  # the run's own random stream (LoRA init, data order) is untouched
        steps = {c: _probe_step(model_cfg, cfg, c, seq_len, rows) for c in candidates}
        best = {c: float("inf") for c in candidates}
        for _ in range(3):  # the first round warms up, then best of two, alternating
            for c, step in steps.items():
                t0 = time.perf_counter()
                step()
                best[c] = min(best[c], time.perf_counter() - t0)
    del steps
    gc.collect()
    return {c: round(t, 4) for c, t in best.items()}


def _probe_step(model_cfg, cfg, name: str, seq_len: int, rows: int):
    from transformers import AutoModelForCausalLM

    from tunesmith.models.adapters import apply_lora
    from tunesmith.train.speed.fastloss import install_chunked_loss

    p = Precision(name, "probe")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(model_cfg, dtype=p.weights, attn_implementation="sdpa")
    model = apply_lora(model, cfg.lora) if cfg.lora.enabled else model
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    install_chunked_loss(base, 1024)
    if p.name == "bf16":
        fast_lora_inputs(model)
    model.train()
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-5)
    ids = torch.randint(0, model_cfg.vocab_size, (rows, seq_len))
    labels = ids.clone()
    labels[:, : 2 * seq_len // 3] = -100

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=p.autocast):
            out = model(input_ids=ids, labels=labels, tunesmith_chunked_loss=True, num_items_in_batch=labels.numel())
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def fast_lora_inputs(model, enabled: bool = True) -> int:
    """Turn PEFT's cast of every LoRA layer's input to the adapter's dtype off (``enabled``) or back on.

    With bf16 base weights and fp32 LoRA weights under bf16 autocast the cast is waste: autocast runs the LoRA
    matmuls in bf16 anyway (casting the small LoRA matrices, not the activations).  Outside autocast (serving,
    a reload) the cast must be on, so :func:`tunesmith.train.sft` turns it back on after training
    (``peft.helpers.disable_input_dtype_casting`` does the same as a context manager).

    Returns:
        The number of LoRA layers changed.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    n = 0
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = not enabled
            n += 1
    return n


@contextlib.contextmanager
def lora_input_casts(model):
    """Within the block, PEFT casts every LoRA layer's input to the adapter's dtype again (needed outside autocast,
    e.g. for an evaluation in the weights' own precision); the previous setting comes back afterwards."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    before = [getattr(m, "cast_input_dtype_enabled", True) for m in layers]
    for m in layers:
        m.cast_input_dtype_enabled = True
    try:
        yield
    finally:
        for m, b in zip(layers, before):
            m.cast_input_dtype_enabled = b
