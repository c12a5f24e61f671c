"""Chunked cross-entropy at trained positions only: the [tokens, vocab] logits are never materialised whole.

Used by ``tunesmith sft`` when ``train.chunked_loss`` is true (the default); checked against transformers' own
loss by ``pytest tests/train/speed/test_fastloss.py``.

The causal-LM loss needs the output head only where a label is trained (``labels != -100`` after the shift).
With assistant-only loss on chat data that is about a third of the tokens (chatterbot: 32%), so the head's
``2 * hidden * vocab`` FLOPs per token are spent on a third of the tokens, in chunks of ``chunk_size`` tokens.
Each chunk's gradient with respect to the hidden states (and to the head weight, when it is trained) is computed
in the forward pass, while the chunk's logits are at hand, as Liger-Kernel's fused linear cross-entropy does
(Hsu et al. 2024, arXiv:2410.10989); the backward pass only scales the stored gradients.  That is two matmuls per
chunk instead of three (forward, recompute, gradient) for TRL's chunked log-probabilities.
"""

from __future__ import annotations

import types
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100
DEFAULT_CHUNK = 1024
"""Tokens per chunk: a [1024, 49152] fp32 logits tile is 200 MB."""


class ChunkedCrossEntropy(torch.autograd.Function):
    """Summed token cross-entropy of ``hidden @ weight.T (+ bias)`` against ``targets``, chunk by chunk.

    Forward args:
        hidden: FloatTensor[n, hidden] (only the trained positions).
        weight: FloatTensor[vocab, hidden] (the output head).
        bias: FloatTensor[vocab] or None.
        targets: LongTensor[n], each in [0, vocab).
        chunk_size: tokens per chunk (int).
        grad_enabled: compute the gradients (False under ``torch.no_grad``, e.g. evaluation).

    Returns:
        (loss_sum: FloatTensor[] in nats, summed over the n tokens; n_correct: LongTensor[] (argmax == target);
        entropy_sum: FloatTensor[] (nats)).  Only ``loss_sum`` has a gradient.

    The matmuls follow autocast (bf16 under bf16 autocast); softmax, log-sum-exp and the loss are computed in fp32.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_size, grad_enabled=True):  # noqa: D102
        """Loss sum and counts over ``hidden: [n, d]`` at ``targets: LongTensor[n]`` through ``weight: [vocab, d]``,
        ``chunk_size`` rows at a time; gradients are computed in the same pass and saved for :meth:`backward`."""
        need_h, need_w, need_b = (grad_enabled and x for x in ctx.needs_input_grad[:3])
        acc = torch.promote_types(hidden.dtype, torch.float32)  # fp32, or fp64 for fp64 inputs
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=acc, device=bias.device) if need_b else None
        loss = torch.zeros((), dtype=acc, device=hidden.device)
        correct = torch.zeros((), dtype=torch.long, device=hidden.device)
        entropy = torch.zeros((), dtype=acc, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_size):
            h, t = hidden[start : start + chunk_size], targets[start : start + chunk_size]
            z = torch.nn.functional.linear(h, weight, bias).to(acc)  # [c, vocab]
            lse = torch.logsumexp(z, dim=-1)
            target_z = z.gather(1, t[:, None]).squeeze(1)
            loss += (lse - target_z).sum()
            correct += (z.argmax(dim=-1) == t).sum()
            p = (z - lse[:, None]).exp_()  # softmax
            entropy += (lse - torch.linalg.vecdot(p, z)).sum()  # H = lse - sum_v p_v z_v
            del z
            if need_h or need_w or need_b:
                p[torch.arange(len(t), device=t.device), t] -= 1.0  # d(lse - z_t)/dz = p - onehot(t)
                g = p.to(
                    torch.get_autocast_dtype(h.device.type) if torch.is_autocast_enabled(h.device.type) else h.dtype
                )
                if need_h:
                    grad_h[start : start + chunk_size] = (g @ weight.to(g.dtype)).to(hidden.dtype)
                if need_w:
                    grad_w += (g.t() @ h.to(g.dtype)).to(acc)
                if need_b:
                    grad_b += p.sum(0)
        ctx.save_for_backward(*(x for x in (grad_h, grad_w, grad_b) if x is not None))
        ctx.have = (need_h, need_w, need_b)
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        ctx.mark_non_differentiable(correct, entropy)
        return loss, correct, entropy

    @staticmethod
    def backward(ctx, grad_loss, *_):  # noqa: D102
        """Scale the gradients saved by :meth:`forward` by ``grad_loss`` (autograd.Function protocol)."""
        saved = iter(ctx.saved_tensors)
        need_h, need_w, need_b = ctx.have
        grad_h = next(saved) * grad_loss.to(ctx.dtypes[0]) if need_h else None
        grad_w = (next(saved) * grad_loss).to(ctx.dtypes[1]) if need_w else None
        grad_b = (next(saved) * grad_loss).to(ctx.dtypes[2]) if need_b else None
        return grad_h, grad_w, grad_b, None, None, None


def chunked_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    shift: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy over trained positions, without the full logits.

    Args:
        hidden: FloatTensor[batch, seq, hidden], the final hidden states (after the last norm).
        weight: FloatTensor[vocab, hidden], the output head; bias: FloatTensor[vocab] or None.
        labels: LongTensor[batch, seq] with -100 on untrained positions (not yet shifted when ``shift``).
        chunk_size: tokens per chunk.
        shift: predict ``labels[:, t+1]`` from ``hidden[:, t]`` (causal LM), as transformers' ``ForCausalLMLoss`` does.

    Returns:
        (loss_sum FloatTensor[] in nats, n_trained LongTensor[], n_correct LongTensor[], entropy_sum FloatTensor[]).
        Divide ``loss_sum`` by the trained-token count of the whole optimizer step for the mean token loss.
    """
    if shift:
        hidden, labels = hidden[:, :-1], labels[:, 1:]
    mask = labels != IGNORE_INDEX
    n = mask.sum()
    picked = hidden[mask]  # [n, hidden]
    if picked.shape[0] == 0:  # keep the graph connected: a differentiable zero
        zero = hidden.sum() * 0.0
        return zero.float(), n, torch.zeros((), dtype=torch.long), torch.zeros(())
    loss, correct, entropy = ChunkedCrossEntropy.apply(
        picked, weight, bias, labels[mask], chunk_size, torch.is_grad_enabled()
    )
    return loss, n, correct, entropy


@dataclass
class ChunkedLossOutput:
    """What the chunked-loss forward returns: ``loss`` (sum / denominator, FloatTensor[]), and statistics for logging:
    ``n_trained`` (LongTensor[]), ``n_correct`` (LongTensor[]), ``entropy_sum`` (FloatTensor[], nats)."""

    loss: torch.Tensor
    n_trained: torch.Tensor
    n_correct: torch.Tensor
    entropy_sum: torch.Tensor

    def __getitem__(self, key):  # DDP/accelerate walk outputs like dicts
        return getattr(self, key)

    def keys(self):  # noqa: D102
        """Field names, so the result unpacks like a mapping."""
        return ("loss", "n_trained", "n_correct", "entropy_sum")


def install_chunked_loss(model, chunk_size: int = DEFAULT_CHUNK) -> None:
    """Let ``model(..., labels=..., tunesmith_chunked_loss=True)`` return a :class:`ChunkedLossOutput`.

    ``model`` is the transformers causal LM (``peft_model.get_base_model()``); the call can go through PEFT, DDP and
    accelerate wrappers, since they pass keyword arguments on.  Without the keyword the previous ``forward`` runs
    unchanged (generation, TRL's own loss).  ``num_items_in_batch`` (the trained-token count of the whole optimizer
    step, transformers' gradient-accumulation fix) is the denominator when given.
    """
    previous = model.forward
    if getattr(previous, "_tunesmith_chunked", False):
        return

    def forward(self, *args, tunesmith_chunked_loss=False, labels=None, num_items_in_batch=None, **kwargs):
        """The wrapped model's forward; with ``tunesmith_chunked_loss`` the loss comes from
        :func:`chunked_cross_entropy` on the final hidden states and no full logits are built."""
        if not tunesmith_chunked_loss:
            if labels is not None:
                kwargs["labels"] = labels
            if num_items_in_batch is not None:
                kwargs["num_items_in_batch"] = num_items_in_batch
            return previous(*args, **kwargs)
        kwargs["use_cache"] = False
        out = getattr(self, self.base_model_prefix)(*args, **kwargs)
        head = self.get_output_embeddings()
        loss_sum, n, correct, entropy = chunked_cross_entropy(
            out.last_hidden_state, head.weight, labels, head.bias, chunk_size=chunk_size
        )
        denom = torch.as_tensor(
            num_items_in_batch if num_items_in_batch is not None else n, device=loss_sum.device
        ).clamp(min=1)
        return ChunkedLossOutput(loss_sum / denom, n, correct, entropy)

    forward._tunesmith_chunked = True
    model.forward = types.MethodType(forward, model)
