"""The fast SFT path: packing layout, chunked loss, threads and the GPU choices, decided once per run.

``tunesmith sft`` calls :func:`plan_speed` and then :func:`sft_overrides`, :func:`build_datasets` and
:func:`attach`; every choice is a ``train.*`` field (see ``tunesmith config``), measured by ``make bench``
(bench/bench_sft.py) against plain TRL.  Tested by ``pytest tests/train/speed/test_plan.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tunesmith.models.heads import plain_head_blocker
from tunesmith.models.loading import choose_attention
from tunesmith.runtime.hardware import is_installed
from tunesmith.train.speed import varlen
from tunesmith.train.speed.fastloss import DEFAULT_CHUNK, install_chunked_loss
from tunesmith.train.speed.packrows import PackedRowsCollator, pack_rows

VARLEN_ATTENTION = (
    "flash_attention_2",
    "flash_attention_3",
    "kernels-community/flash-attn",
    "kernels-community/flash-attn3",
)
"""Attention implementations that run padding-free batches as variable-length sequences (cost ~ sum of sample lengths
squared)."""


@dataclass
class SpeedPlan:
    """What the run does for speed.

    Attributes:
        layout: ``rows`` (packed rows, [batch, max_length]), ``flat`` (TRL padding-free: one concatenated sequence)
            or ``padded`` (no packing).
        chunked_loss: loss through :mod:`tunesmith.train.speed.fastloss` (trained positions only, chunked).
        attn_implementation: the attention kernel to load the model with.
        liger: Liger kernels (RMSNorm, RoPE, SwiGLU) through ``use_liger_kernel``; CUDA with ``liger-kernel`` installed.
        threads: torch intra-op threads (None: torch's default).
        micro_batches: micro-batches per optimizer step (``train.micro_batch_size``; 1: no split).
        varlen: packed samples attend through :mod:`tunesmith.train.speed.varlen` (``rows`` layout with SDPA).
        compile: ``torch.compile`` each decoder layer (``train.compile``).
        rows_per_pass: packed rows per forward/backward pass.
        notes: one line per decision, for the log.
    """

    layout: str
    chunked_loss: bool
    attn_implementation: str
    liger: bool = False
    threads: int | None = None
    micro_batches: int = 1
    rows_per_pass: int | None = None
    varlen: bool = False
    compile: bool = False
    notes: list[str] = field(default_factory=list)


def plan_speed(train_cfg, attn_requested: str, device: str | None = None) -> SpeedPlan:
    """Decide the speed settings of a run from the ``train`` section and the hardware.

    Args:
        train_cfg: :class:`tunesmith.config.sft.TrainSection`.
        attn_requested: ``model.attn_implementation`` (``auto``, ``sdpa``, ``eager``, ``flash_attention_2``, ...).
        device: ``cuda`` or ``cpu`` (default: cuda when available).

    Returns:
        :class:`SpeedPlan`.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    attn = choose_attention(attn_requested, device)
    layout = "padded" if not train_cfg.packing else train_cfg.packing_layout
    if train_cfg.packing and train_cfg.packing_strategy == "wrapped":
        layout = "flat"  # TRL's wrapped packing has no sample boundaries to keep
    if layout == "auto":
        layout = "flat" if attn in VARLEN_ATTENTION else "rows"
    liger = device == "cuda" and is_installed("liger_kernel")
    batch = train_cfg.per_device_train_batch_size
    rows_per_pass = train_cfg.micro_batch_size or (
        cpu_rows_per_pass(batch, getattr(train_cfg, "max_length", None))
        if device == "cpu" and layout == "rows"
        else batch
    )
    micro = train_cfg.per_device_train_batch_size // rows_per_pass
    plan = SpeedPlan(
        layout=layout,
        chunked_loss=train_cfg.chunked_loss,
        attn_implementation=attn,
        liger=liger,
        threads=train_cfg.num_threads,
        micro_batches=micro,
        varlen=layout == "rows" and attn == "sdpa" and getattr(train_cfg, "varlen_attention", False),
        compile=bool(getattr(train_cfg, "compile", False)),
    )
    if micro > 1:
        plan.notes.append(f"{micro} micro-batches of {rows_per_pass} row(s) per optimizer step")
    plan.rows_per_pass = rows_per_pass
    plan.notes.append(
        f"packing layout {layout}"
        + (" (packed rows of max_length: dense attention masks stay max_length^2 per row)" if layout == "rows" else "")
    )
    plan.notes.append(
        f"attention {attn}"
        + (" per packed sample (tunesmith.train.speed.varlen)" if plan.varlen else "")
        + ("; Liger kernels" if liger else "")
    )
    plan.notes.append(
        "loss: chunked at trained positions (tunesmith.train.speed.fastloss)" if plan.chunked_loss else "loss: TRL's"
    )
    return plan


CPU_TOKENS_PER_PASS = 512
"""Packed tokens per forward/backward pass on CPU: measured on a 2-core AMD EPYC (bf16, 2026-12-07), 256-token rows
ran 1.25-1.4x faster two per pass than one, and 512-token rows fastest one per pass (docs/performance.md)."""


def cpu_rows_per_pass(batch: int, max_length: int | None) -> int:
    """Packed rows per pass on CPU: the largest divisor of ``batch`` with at most :data:`CPU_TOKENS_PER_PASS` tokens
    (at least 1 row).

    Args:
        batch: ``per_device_train_batch_size`` (rows per optimizer step).
        max_length: tokens per packed row (None: 1 row per pass).

    Returns:
        Rows per forward/backward pass, a divisor of ``batch``.
    """
    most = max(1, CPU_TOKENS_PER_PASS // max_length) if max_length else 1
    return max(d for d in range(1, min(batch, most) + 1) if batch % d == 0)


def apply_threads(plan: SpeedPlan) -> None:
    """Set torch's intra-op thread count when ``train.num_threads`` is set (``torch.set_num_threads``)."""
    if plan.threads:
        torch.set_num_threads(plan.threads)


def sft_overrides(plan: SpeedPlan, train_cfg=None) -> dict:
    """``trl.SFTConfig`` keyword overrides for the plan: with the ``rows`` layout tunesmith packs and collates itself,
    so TRL's own packing and padding-free collation are off and its dataset preparation is skipped; micro-batches
    become gradient accumulation (transformers normalises the loss by the whole step's trained tokens)."""
    kw: dict = {"use_liger_kernel": plan.liger} if plan.liger else {}
    if plan.micro_batches > 1 and train_cfg is not None:
        kw.update(
            per_device_train_batch_size=plan.rows_per_pass,
            gradient_accumulation_steps=train_cfg.gradient_accumulation_steps * plan.micro_batches,
        )
    if plan.layout == "rows":
        kw.update(packing=False, padding_free=False, eval_packing=False, dataset_kwargs={"skip_prepare_dataset": True})
    return kw


def build_datasets(plan: SpeedPlan, train_ds, eval_ds, max_length: int, pad_token_id: int):
    """Pack the tokenised datasets for the ``rows`` layout.

    Returns:
        (train dataset, eval dataset or None, data collator or None); unchanged datasets and None for other layouts
        (TRL packs and collates them).
    """
    if plan.layout != "rows":
        return train_ds, eval_ds, None
    packed_eval = pack_rows(eval_ds, max_length) if eval_ds is not None else None
    collator = PackedRowsCollator(pad_token_id, pad_to_multiple_of=max_length if plan.compile else None)
    return pack_rows(train_ds, max_length), packed_eval, collator  # compiled: one shape, no recompiles


def attach(trainer, plan: SpeedPlan, chunk_size: int = DEFAULT_CHUNK) -> list[str]:
    """Install the chunked loss and the per-sample attention on the trainer's model when the plan asks for them and the
    model allows them.

    Returns:
        Notes for the log (why the chunked loss or the per-sample attention is off, when it is).
    """
    model = trainer.model
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    notes = []
    if plan.varlen and not varlen.enable(base):
        notes.append(f"attention per packed sample off: {varlen.supports_varlen(base)}")
    if plan.compile:
        notes.append(f"torch.compile on {compile_layers(base)} decoder layers")
    why = plain_head_blocker(base) if plan.chunked_loss else None
    if plan.chunked_loss and why is None:
        install_chunked_loss(base, chunk_size)
        trainer.tunesmith_chunked_loss = True
        return notes
    trainer.tunesmith_chunked_loss = False
    return notes + ([f"chunked loss off: {why}"] if why else [])


def compile_layers(model) -> int:
    """``torch.compile`` (inductor, default mode) every decoder layer of ``model`` in place (``nn.Module.compile``);
    identical layers share one compiled graph.

    Returns:
        The number of layers compiled (0 when the model has no ``model.layers`` list).
    """
    layers = getattr(getattr(model, "model", None), "layers", None) or []
    for layer in layers:
        layer.compile()
    return len(layers)


def detach(trainer) -> None:
    """Undo what :func:`attach` changed that must not outlive training: the attention goes back to SDPA (for
    generation, saving and serving).  The chunked loss stays: it is only used when asked for."""
    model = trainer.model
    varlen.disable(model.get_base_model() if hasattr(model, "get_base_model") else model)


class FastLossTrainerMixin:
    """An ``SFTTrainer`` mixin: ``compute_loss`` through the chunked loss (same normalisation and logged metrics as TRL:
    ``num_items_in_batch``, ``average_tokens_across_devices``, entropy, mean_token_accuracy, num_tokens)."""

    tunesmith_chunked_loss = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: D102
        """Trainer.compute_loss with the chunked loss at trained positions, normalised by ``num_items_in_batch``
        (trained tokens of the global batch), as transformers does."""
        real = inputs.pop("num_real_tokens", None)
        if not self.tunesmith_chunked_loss or return_outputs or "shift_labels" in inputs:
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        mode = "train" if self.model.training else "eval"
        out = model(**inputs, num_items_in_batch=num_items_in_batch, tunesmith_chunked_loss=True)
        loss = out.loss
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (
                self.accelerator.num_processes // self.get_tp_size()
            )  # DDP averages gradients: undo it (as TRL does)
        gather = self.accelerator.gather_for_metrics
        n = gather(out.n_trained.detach().reshape(1)).sum()
        correct, entropy = gather(out.n_correct.reshape(1)).sum(), gather(out.entropy_sum.reshape(1).float()).sum()
        self._metrics[mode]["entropy"].append((entropy / n).item() if n > 0 else 0.0)
        self._metrics[mode]["mean_token_accuracy"].append((correct / n).item() if n > 0 else 0.0)
        if mode == "train":
            local = real if real is not None else torch.tensor(inputs["input_ids"].numel())
            self._total_train_tokens += gather(local.reshape(1).to(loss.device)).sum().item() // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return loss
