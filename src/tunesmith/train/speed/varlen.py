"""Variable-length attention for packed rows without a varlen kernel: each packed sample attends only to itself.

Used by ``tunesmith sft`` when ``train.varlen_attention`` is true (the default) and the model loaded with SDPA; tested
by ``pytest tests/train/speed/test_varlen.py`` (logits and gradients equal to SDPA's with the block-diagonal mask).

A packed row holds several samples, told apart by ``position_ids`` that restart at 0.  With SDPA transformers builds a
dense block-diagonal causal mask over the whole row, and the kernel then spends ``max_length^2 / 2`` work per head on a
row whose samples only need ``sum(len_i^2) / 2`` (chatterbot: 8 samples of ~60 tokens in a 512-token row, 1/8 of
the work).  Here the attention function cuts the row at the sample boundaries and runs SDPA's causal kernel
(``is_causal=True``, no mask tensor) on each sample, as flash-attention's varlen kernel does on CUDA.

Any call this does not cover falls back to transformers' own SDPA path: a padding mask, a KV cache (query and key
lengths differ), no ``position_ids``, a non-causal module, or attention dropout.
"""

from __future__ import annotations

import torch

NAME = "tunesmith_varlen_sdpa"
"""The attention implementation name registered with transformers (``model.config._attn_implementation``)."""


def segment_bounds(position_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    """Sample boundaries of each packed row.

    Args:
        position_ids: LongTensor[batch, seq] (or [1, seq], broadcast), restarting at 0 (or jumping) at every sample.

    Returns:
        One list per row of ``(start, end)`` index pairs (end exclusive) covering the row, one per sample.
    """
    pos = position_ids.detach().cpu()
    out = []
    for row in pos:
        starts = [0] + (torch.nonzero(row[1:] != row[:-1] + 1).flatten() + 1).tolist()
        ends = starts[1:] + [row.numel()]
        out.append(list(zip(starts, ends)))
    return out


@torch.compiler.disable  # sample boundaries differ per batch: traced, every batch would recompile
def varlen_sdpa_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """A transformers attention function (``AttentionInterface``) running causal SDPA per packed sample.

    Args:
        module: the attention module (its ``is_causal`` and ``num_key_value_groups`` are read).
        query: FloatTensor[batch, heads, seq, head_dim]; key, value: FloatTensor[batch, kv_heads, seq, head_dim].
        attention_mask: None (the mask function below returns None when packing is all there is), or a mask tensor,
            which sends the call to transformers' SDPA path.
        dropout: attention dropout probability (non-zero: transformers' SDPA path).
        scaling: softmax scale (default 1/sqrt(head_dim)).
        kwargs: ``position_ids`` (LongTensor[batch or 1, seq]) among transformers' attention kwargs.

    Returns:
        (attn_output: FloatTensor[batch, seq, heads, head_dim], None).
    """
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    pos = kwargs.get("position_ids")
    plain = (
        attention_mask is not None
        or pos is None
        or dropout
        or query.shape[2] != key.shape[2]
        or not getattr(module, "is_causal", True)
    )
    if plain:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    groups = getattr(module, "num_key_value_groups", 1)
    dtype = query.dtype
    if dtype == torch.bfloat16 and query.device.type == "cpu":  # see _causal: fp32 per sample, cast once per layer
        query, key, value = query.float(), key.float(), value.float()
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    bounds = _bounds(pos, query.shape[0])
    with torch.autocast(query.device.type, enabled=False):  # autocast would run the kernel in bf16 again
        out = _per_sample(query, key, value, bounds, scaling)
    return out.transpose(1, 2).contiguous().to(dtype), None


def _per_sample(query, key, value, bounds, scaling) -> torch.Tensor:
    """Causal SDPA on each ``(start, end)`` sample of each row; FloatTensor[batch, heads, seq, head_dim]."""
    rows = []
    for q, k, v, segs in zip(query.split(1), key.split(1), value.split(1), bounds):
        if len(segs) == 1:  # one sample: the plain causal kernel on the whole row
            rows.append(_causal(q, k, v, scaling))
            continue
        # split, not slicing: a slice's gradient is a zero-filled full-size tensor per sample, split's one concat
        lengths = [e - s for s, e in segs]
        parts = [_causal(*qkv, scaling) for qkv in zip(q.split(lengths, 2), k.split(lengths, 2), v.split(lengths, 2))]
        rows.append(torch.cat(parts, dim=2))
    return torch.cat(rows, dim=0) if len(rows) > 1 else rows[0]


_LAST: list = [None, None]
"""The last ``(position_ids, bounds)``: every layer of a forward pass gets the same ``position_ids`` tensor."""


def _bounds(position_ids: torch.Tensor, batch: int) -> list[list[tuple[int, int]]]:
    """:func:`segment_bounds` of ``position_ids`` broadcast to ``batch`` rows, computed once per forward pass rather
    than once per layer (the same tensor object reaches every layer)."""
    if _LAST[0] is not position_ids or len(_LAST[1]) != batch:
        _LAST[:] = [position_ids, segment_bounds(position_ids.expand(batch, -1))]
    return _LAST[1]


def _causal(q, k, v, scaling):
    """Causal SDPA on one sample.  The caller passes fp32 on CPU for bf16 models, with autocast off: the CPU kernel's
    forward and backward ran 2.6x faster in fp32 than in bf16 on 60-token samples (docs/performance.md)."""
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling)


def varlen_mask(*args, attention_mask=None, **kwargs):
    """transformers mask function for :data:`NAME`: no mask when there is no padding mask (the attention function
    cuts packed samples apart itself), else SDPA's own mask (which then takes the SDPA path)."""
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def register() -> str:
    """Register :data:`NAME` with transformers' attention and mask interfaces (idempotent).

    Returns:
        :data:`NAME`.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, varlen_sdpa_forward)
    AttentionMaskInterface.register(NAME, varlen_mask)
    return NAME


def supports_varlen(model) -> str | None:
    """Why packed-sample attention cannot replace ``model``'s SDPA, or None when it can.

    Covered: decoder-only models whose attention runs through transformers' attention interface with SDPA, without
    sliding windows or attention dropout (sliding windows and chunked attention need their own mask).
    """
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "_attn_implementation", None) != "sdpa":
        return "the model does not run SDPA attention"
    for name in ("sliding_window", "attention_chunk_size"):
        if getattr(cfg, name, None) and getattr(cfg, "use_sliding_window", True):
            return f"the model uses {name}"
    if getattr(cfg, "attention_dropout", 0.0):
        return "the model has attention dropout"
    if getattr(cfg, "is_encoder_decoder", False):
        return "encoder-decoder model"
    return None


def enable(model) -> bool:
    """Switch ``model`` (a ``PreTrainedModel``) to :data:`NAME` for training; :func:`disable` switches it back.

    Returns:
        True when switched; False (unchanged) when :func:`supports_varlen` says no.
    """
    if supports_varlen(model) is not None:
        return False
    register()
    model.set_attn_implementation(NAME)
    return True


def disable(model) -> None:
    """Put SDPA back (before saving or serving ``model``), when :func:`enable` switched it."""
    cfg = getattr(model, "config", None)
    if cfg is not None and getattr(cfg, "_attn_implementation", None) == NAME:
        model.set_attn_implementation("sdpa")
