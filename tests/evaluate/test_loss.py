"""The one eval_loss: the output head run only at trained positions gives the full-logits figure, row by row.

PYTHONPATH=src python -m pytest -q tests/evaluate/test_loss.py
"""

import pytest
import torch

from conftest import make_adapter
from tunesmith.evaluate.loss import mean_token_loss, row_losses
from tunesmith.models.heads import body_and_head, plain_head_blocker
from tunesmith.render.templates import Rendered


def _rows(vocab: int, lengths=(5, 17, 9, 30, 12, 3, 21)) -> list[Rendered]:
    """Rows of several lengths (padded batches), with trained spans in the middle and at the end."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for n in lengths:
        ids = torch.randint(0, vocab, (n,), generator=g).tolist()
        labels = [t if i >= n // 2 or i % 4 == 1 else -100 for i, t in enumerate(ids)]
        rows.append(Rendered(input_ids=ids, labels=labels))
    return rows


def test_head_only_equals_the_full_logits_on_a_lora_model(tiny_llama_dir, smol_tokenizer, tmp_path):
    model, _ = make_adapter(tiny_llama_dir, smol_tokenizer, tmp_path / "adapter")
    assert body_and_head(model) is not None
    rows = _rows(model.config.vocab_size)
    fast = row_losses(model, rows, pad_id=0, batch_size=3)
    full = row_losses(model, rows, pad_id=0, batch_size=3, head_only=False)
    assert [n for _, n in fast] == [n for _, n in full] == [sum(t != -100 for t in r.labels[1:]) for r in rows]
    for (a, _), (b, _) in zip(fast, full):
        assert a == pytest.approx(b, rel=1e-5)
    assert mean_token_loss(*zip(*fast)) == pytest.approx(mean_token_loss(*zip(*full)), rel=1e-6)
    assert model.training is False  # make_adapter left it in eval mode; row_losses restores the mode it found


def test_models_with_logit_transforms_or_virtual_tokens_keep_the_full_logits(tiny_llama_dir):
    from peft import PrefixTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    assert plain_head_blocker(model) is None
    model.config.final_logit_softcapping = 30.0
    assert plain_head_blocker(model) == "the model config sets final_logit_softcapping"
    assert body_and_head(model) is None
    model.config.final_logit_softcapping = None
    prefix = get_peft_model(model, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2))
    assert body_and_head(prefix) is None  # the body call would skip the virtual tokens
