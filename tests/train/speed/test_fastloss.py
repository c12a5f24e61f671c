"""Chunked cross-entropy (tunesmith.train.speed.fastloss) against transformers' own causal-LM loss and autograd
gradients.

PYTHONPATH=src python -m pytest -q tests/train/speed/test_fastloss.py
"""

from __future__ import annotations

import pytest
import torch

from tunesmith.train.speed.fastloss import ChunkedLossOutput, chunked_cross_entropy, install_chunked_loss


def _labels(seed: int, shape, vocab: int, masked: float = 0.6) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, vocab, shape, generator=g)
    labels[torch.rand(shape, generator=g) < masked] = -100
    return labels


@pytest.mark.parametrize("chunk", [1, 7, 4096])
@pytest.mark.parametrize("train_head", [False, True])
def test_loss_and_gradients_match_full_logits(chunk, train_head):
    torch.manual_seed(0)
    hidden = torch.randn(2, 11, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(37, 16, dtype=torch.float64, requires_grad=train_head)
    bias = torch.randn(37, dtype=torch.float64, requires_grad=train_head)
    labels = _labels(1, (2, 11), 37)
    loss_sum, n, correct, entropy = chunked_cross_entropy(hidden, weight, labels, bias, chunk_size=chunk)
    (loss_sum / n).backward()
    got = [hidden.grad.clone()] + ([weight.grad.clone(), bias.grad.clone()] if train_head else [])
    for t in (hidden, weight, bias):
        t.grad = None

    logits = (hidden @ weight.t() + bias)[:, :-1].reshape(-1, 37)
    target = labels[:, 1:].reshape(-1)
    ref = torch.nn.functional.cross_entropy(logits, target, ignore_index=-100)
    ref.backward()
    want = [hidden.grad] + ([weight.grad, bias.grad] if train_head else [])
    keep = target != -100
    assert int(n) == int(keep.sum())
    assert torch.allclose(loss_sum / n, ref, atol=1e-12)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-12)
    assert int(correct) == int((logits[keep].argmax(-1) == target[keep]).sum())
    p = logits[keep].softmax(-1)
    assert torch.allclose(entropy.double(), -(p * p.log()).sum(), atol=1e-6)


def test_no_trained_position_gives_a_differentiable_zero():
    hidden = torch.randn(1, 5, 8, requires_grad=True)
    loss_sum, n, _, _ = chunked_cross_entropy(hidden, torch.randn(11, 8), torch.full((1, 5), -100))
    loss_sum.backward()
    assert float(loss_sum) == 0.0 and int(n) == 0 and torch.count_nonzero(hidden.grad) == 0


def test_matches_transformers_loss_with_num_items_in_batch(tiny_llama_dir):
    """Two micro-batches normalised by the step's trained-token count (transformers' gradient-accumulation fix):
    the chunked loss equals the model's own loss and gives the same LoRA-free gradients within 1e-5 (fp32)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    model.train()
    vocab = model.config.vocab_size
    batches = [
        (torch.randint(0, vocab, (2, 9), generator=torch.Generator().manual_seed(s)), _labels(s + 10, (2, 9), vocab))
        for s in (0, 1)
    ]
    num_items = sum(int((lab[:, 1:] != -100).sum()) for _, lab in batches)

    def run(chunked: bool):
        model.zero_grad()
        total = 0.0
        for ids, lab in batches:
            out = model(input_ids=ids, labels=lab, num_items_in_batch=num_items, tunesmith_chunked_loss=chunked)
            out.loss.backward()
            total += float(out.loss)
        return total, {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    ref_loss, ref_grads = run(False)
    install_chunked_loss(model, chunk_size=5)
    install_chunked_loss(model, chunk_size=5)  # idempotent
    out = model(input_ids=batches[0][0], labels=batches[0][1], tunesmith_chunked_loss=True)
    assert isinstance(out, ChunkedLossOutput) and int(out.n_trained) == int((batches[0][1][:, 1:] != -100).sum())
    loss, grads = run(True)
    assert abs(loss - ref_loss) < 1e-5
    assert grads.keys() == ref_grads.keys()
    for k in grads:
        assert torch.allclose(grads[k], ref_grads[k], atol=1e-5), k
    # without the keyword the forward is the model's own (logits come back)
    assert model(input_ids=batches[0][0]).logits.shape == (2, 9, vocab)
