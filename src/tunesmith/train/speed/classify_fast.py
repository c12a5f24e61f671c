"""The fast classification path: padding-free packed rows, each example pooled at its own last token.

Used by ``tunesmith classify`` when ``train.packing`` is true (the default).  Tested by
``pytest tests/train/speed/test_classify_fast.py``.

A padded batch of short texts is mostly padding (the bundled chatterbot topics: 2.2 padded tokens per real token
at batch 16), and every padded token costs a full pass through the body.  Here the examples of a micro-batch are
concatenated into as few rows as fit ``row_tokens`` (best-fit decreasing), with ``position_ids`` restarting at 0 for
every example and no ``attention_mask``: transformers then builds a block-diagonal causal mask from the position ids
(``masking_utils.find_packed_sequence_indices``), so attention never crosses examples and each example's hidden
states equal those of its own padded row.  Each example's last token is gathered from the body's hidden states and
scored by the model's ``score`` head (``[examples, num_labels]``); neither a ``[tokens, vocab]`` head nor a
``[tokens, num_labels]`` score of the whole row is computed.

Before training, :func:`packing_matches` runs a few examples both ways (eval mode, no gradient) and the trainer falls
back to padded batches when the logits differ (an architecture that ignores packed position ids).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ROW_TOKENS = 512
"""Default token budget of one packed row: one row per micro-batch for short texts; a long micro-batch is split so
the dense block-diagonal mask (and the attention it wastes between examples) stays ``row_tokens^2`` per row."""


def pack_examples(lengths: list[int], row_tokens: int) -> list[list[int]]:
    """Group examples into rows of at most ``row_tokens`` tokens, best-fit decreasing (an example longer than
    ``row_tokens`` gets a row of its own).

    Args:
        lengths: tokens per example (each >= 1).
        row_tokens: the token budget of one row (>= 1).

    Returns:
        Rows as lists of example indices (every index exactly once), the longest row first.

    Raises:
        ValueError: ``row_tokens`` < 1 or an example without tokens.
    """
    if row_tokens < 1:
        raise ValueError(f"row_tokens must be >= 1, got {row_tokens}")
    if any(n < 1 for n in lengths):
        raise ValueError("every example needs at least one token")
    rows: list[list[int]] = []
    used: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        n = lengths[i]
        best = min(
            (r for r in range(len(rows)) if used[r] + n <= row_tokens),
            key=lambda r: row_tokens - used[r] - n,
            default=None,
        )
        if best is None:
            rows.append([i])
            used.append(n)
        else:
            rows[best].append(i)
            used[best] += n
    order = sorted(range(len(rows)), key=lambda r: -used[r])
    return [rows[r] for r in order]


@dataclass
class PackedClassifyCollator:
    """Collate encoded examples (``{"input_ids": list[int], "labels": int}``) into packed rows.

    Returns a dict with ``input_ids`` (LongTensor[rows, L], ``pad_token_id`` in each row's tail, L = the longest
    row), ``position_ids`` (LongTensor[rows, L], 0..n-1 per example, then 0..tail-1 for the tail, a pseudo-example no
    real token attends to), ``pool_index`` (LongTensor[examples], the flat index into ``rows * L`` of each example's
    last token, in the order the examples came), ``labels`` (LongTensor[examples], same order; only when the examples
    have labels) and ``num_real_tokens`` (LongTensor[], the examples' tokens).  No ``attention_mask``.
    """

    pad_token_id: int
    row_tokens: int = ROW_TOKENS

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:  # noqa: D102
        lengths = [len(e["input_ids"]) for e in examples]
        rows = pack_examples(lengths, self.row_tokens)
        width = max(sum(lengths[i] for i in row) for row in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        pos = torch.empty((len(rows), width), dtype=torch.long)
        pool = torch.empty(len(examples), dtype=torch.long)
        seg_index = torch.empty((len(examples), max(lengths)), dtype=torch.long)
        for r, row in enumerate(rows):
            start = 0
            for i in row:
                n = lengths[i]
                ids[r, start : start + n] = torch.as_tensor(examples[i]["input_ids"], dtype=torch.long)
                pos[r, start : start + n] = torch.arange(n)
                pool[i] = r * width + start + n - 1
                seg_index[i] = r * width + start + torch.arange(seg_index.shape[1]).clamp(max=n - 1)
                start += n
            pos[r, start:] = torch.arange(width - start)
        seg_valid = torch.arange(seg_index.shape[1])[None, :] < torch.tensor(lengths)[:, None]
        batch = {
            "seg_index": seg_index,
            "seg_valid": seg_valid,
            "input_ids": ids,
            "position_ids": pos,
            "pool_index": pool,
            "num_real_tokens": torch.tensor(sum(lengths)),
        }
        if examples and "labels" in examples[0]:
            batch["labels"] = torch.tensor([e["labels"] for e in examples], dtype=torch.long)
        return batch


def _classifier(model):
    """The ``*ForSequenceClassification`` module inside ``model`` (a PEFT wrapper or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports_packing(model) -> bool:
    """True when ``model`` (or the classifier inside a PEFT wrapper) has a decoder body and a ``score`` head, the
    layout :func:`pooled_logits` needs (Llama, Qwen2, Mistral, Gemma and other ``GenericForSequenceClassification``
    models)."""
    inner = _classifier(model)
    prefix = getattr(inner, "base_model_prefix", "")
    return bool(prefix) and hasattr(inner, prefix) and hasattr(inner, "score")


SEGMENT_ATTENTION = "tunesmith_segments"
"""The attention implementation :func:`pooled_logits` switches an SDPA or eager model to for one forward pass."""


def segment_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Causal attention within each example of packed rows, as a transformers attention function.

    The packed tokens are gathered into one right-padded row per example (``seg_index``), attended (in fp32 on CPU)
    with SDPA's causal kernel (no mask: a real query never sees the padding after it), and scattered back; the rows'
    padding tails get zeros (no example reads them).  The dense ``[L, L]`` mask of a packed row and the attention it
    wastes between examples are never built.

    Args:
        query: ``[rows, heads, L, head_dim]``; key, value: ``[rows, kv_heads, L, head_dim]``.
        attention_mask: ignored (None: the mask function of this implementation builds none).
        scaling: the softmax scale; dropout: must be 0 (attention dropout is not supported here).
        kwargs: ``seg_index`` (LongTensor[examples, longest], flat token indices into ``rows * L``, each example's
            last index repeated after its end) and ``seg_valid`` (BoolTensor[examples, longest]).

    Returns:
        (``[rows, L, heads, head_dim]``, None).

    Raises:
        ValueError: attention dropout > 0.
    """
    if dropout:
        raise ValueError("segment attention does not support attention dropout")
    seg_index, seg_valid = kwargs["seg_index"], kwargs["seg_valid"]
    rows, heads, length, dim = query.shape

    on_cpu = query.device.type == "cpu"  # CPU SDPA is several times slower in bf16 at these sizes: fp32 there

    def gather(t):  # [rows, h, L, d] -> [examples, h, longest, d]
        flat = t.transpose(1, 2).reshape(rows * length, t.shape[1], dim)
        picked = flat.index_select(0, seg_index.flatten()).view(*seg_index.shape, t.shape[1], dim).transpose(1, 2)
        return picked.float() if on_cpu else picked

    with torch.autocast("cpu", enabled=False):  # CPU autocast only; a GPU's autocast still applies
        out = torch.nn.functional.scaled_dot_product_attention(
            gather(query), gather(key), gather(value), is_causal=True, scale=scaling, enable_gqa=key.shape[1] != heads
        ).to(query.dtype)
    real = out.transpose(1, 2)[seg_valid]  # [real tokens, heads, d]
    flat = out.new_zeros(rows * length, heads, dim).index_copy(0, seg_index[seg_valid], real)
    return flat.view(rows, length, heads, dim), None


def _no_mask(*args, **kwargs):
    return None


def _register_segment_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(SEGMENT_ATTENTION, segment_attention)
    AttentionMaskInterface.register(SEGMENT_ATTENTION, _no_mask)


def pooled_logits(
    model,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    pool_index: torch.Tensor,
    seg_index: torch.Tensor | None = None,
    seg_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Class logits of packed examples: the body's last hidden state at each example's last token, through ``score``.

    With ``seg_index``/``seg_valid`` and an ``sdpa`` or ``eager`` model, attention runs per example
    (:func:`segment_attention`) for this pass; otherwise the model's own attention uses the block-diagonal mask that
    transformers derives from ``position_ids``.

    Args:
        model: a sequence-classification model (``supports_packing``), PEFT-wrapped or not; LoRA layers and the
            trained ``score`` copy (``modules_to_save``) are used as in the model's own forward.
        input_ids: LongTensor[rows, L] packed rows (:class:`PackedClassifyCollator`).
        position_ids: LongTensor[rows, L], restarting at 0 per example.
        pool_index: LongTensor[examples], flat indices into ``rows * L``.
        seg_index, seg_valid: the collator's per-example layout (optional).

    Returns:
        ``Tensor[examples, num_labels]`` in the head's compute dtype (bf16 under bf16 autocast).
    """
    inner = _classifier(model)
    body = getattr(inner, inner.base_model_prefix)
    config = body.config
    before = config._attn_implementation
    extra = {}
    if seg_index is not None and before in ("sdpa", "eager") and not getattr(config, "attention_dropout", 0.0):
        _register_segment_attention()
        config._attn_implementation, extra = SEGMENT_ATTENTION, {"seg_index": seg_index, "seg_valid": seg_valid}
    try:
        hidden = body(input_ids=input_ids, position_ids=position_ids, use_cache=False, **extra).last_hidden_state
    finally:
        config._attn_implementation = before
    return inner.score(hidden.flatten(0, 1).index_select(0, pool_index))


@torch.no_grad()
def packing_matches(model, rows: list[dict], pad_id: int, *, atol: float = 1e-4, rtol: float = 1e-3) -> bool:
    """Check on ``rows`` (a few encoded examples) that packed pooling gives the logits of the model's own forward on
    right-padded batches with an attention mask (eval mode, no gradient, no autocast); the training mode is restored.

    Returns:
        True when every example's logits agree within ``atol``/``rtol`` (fp32), False otherwise or when the model
        lacks the layout (:func:`supports_packing`).
    """
    from tunesmith.models.classifier import pad_batch

    if not supports_packing(model) or len(rows) < 2:
        return False
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with torch.autocast(device.type, enabled=False):
            padded = pad_batch(rows, pad_id, "right")
            want = model(input_ids=padded["input_ids"].to(device), attention_mask=padded["attention_mask"].to(device))
            packed = PackedClassifyCollator(pad_id, row_tokens=sum(len(r["input_ids"]) for r in rows))(rows)
            packed.pop("num_real_tokens")
            packed.pop("labels", None)
            got = pooled_logits(model, **{k: v.to(device) for k, v in packed.items()})
        return bool(torch.allclose(got.float(), want.logits.float(), atol=atol, rtol=rtol))
    finally:
        model.train(was_training)


def probe_rows(rows: list[dict], count: int = 4) -> list[dict]:
    """A few examples of different lengths for :func:`packing_matches` (the shortest, the longest, two between)."""
    ordered = sorted(rows, key=lambda r: len(r["input_ids"]))
    if len(ordered) <= count:
        return ordered
    step = (len(ordered) - 1) / (count - 1)
    return [ordered[round(k * step)] for k in range(count)]
