"""Shared fixtures: the embedded tokenizer and tiny random Llama models built in-process (no network)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TUNESMITH_SHARED_DATA") or REPO.parent / "shared" / "data")
"""The public test data sets beside the checkout (``../shared/data``; CI has them, a user's clone does not)."""


def needs_shared(*names: str):
    """Skip a test, saying why, when the shared data sets it reads are not beside the checkout."""
    missing = [n for n in names or ("",) if not (SHARED_DATA / n).exists()]
    return pytest.mark.skipif(
        bool(missing),
        reason=f"needs the shared data sets ({', '.join(names) or 'any'}) at {SHARED_DATA}: not beside this checkout "
        "(CI has ../shared; set TUNESMITH_SHARED_DATA to point elsewhere)",
    )


FIXTURES = Path(__file__).parent / "fixtures"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def embedded_source():
    """The embedded SmolLM2-135M-Instruct, converted once into $TUNESMITH_HOME (about 20 s the first time)."""
    from tunesmith.models.sources import resolve_model

    return resolve_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smol_tokenizer(embedded_source):
    """SmolLM2's tokenizer with its ChatML chat template (end-of-turn token <|im_end|>, id 2)."""
    from tunesmith.models.loading import load_tokenizer

    return load_tokenizer(embedded_source)


def build_tiny_llama(
    tokenizer, out_dir: Path, *, seed: int = 0, hidden: int = 64, layers: int = 2, tie: bool = True
) -> Path:
    """Save a randomly initialised tiny Llama (hidden 64, 2 layers, 4 heads, 2 kv heads) with ``tokenizer``.

    Returns:
        ``out_dir``, loadable by ``from_pretrained`` and usable as ``model.name``.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=tie,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(cfg)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_llama_dir(smol_tokenizer, tmp_path_factory):
    """A tiny random Llama with SmolLM2's tokenizer and chat template, saved to a temp folder."""
    return build_tiny_llama(smol_tokenizer, tmp_path_factory.mktemp("tiny-llama"))


PROBE = (
    "<|im_start|>user\nHello there, tell me about tea.<|im_end|>\n<|im_start|>assistant\nTea is a drink.<|im_end|>\n"
)
"""A ChatML conversation whose logits :func:`logits` compares."""


def make_adapter(
    base_dir,
    tokenizer,
    out,
    *,
    target_modules=("q_proj", "v_proj", "down_proj"),
    modules_to_save=None,
    scale=0.05,
    seed=1,
    added_tokens=(),
):
    """A LoRA adapter with random (non-zero) B matrices, saved like `tunesmith sft` saves one (with the tokenizer).

    Returns:
        (the in-memory PeftModel, its tokenizer).
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if added_tokens:
        tok.add_special_tokens({"additional_special_tokens": list(added_tokens)})
        base.resize_token_embeddings(len(tok), mean_resizing=False)
    cfg = LoraConfig(
        r=4, lora_alpha=8, target_modules=list(target_modules), modules_to_save=modules_to_save, lora_dropout=0.0
    )
    model = get_peft_model(base, cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                p.add_(torch.randn_like(p) * scale)
    model.eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return model, tok


def logits(model, tok, text=PROBE):
    """Last-layer logits ``FloatTensor[seq, vocab]`` of ``text`` (no special tokens added)."""
    import torch

    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits[0].float()


HAS_BITSANDBYTES = importlib.util.find_spec("bitsandbytes") is not None
needs_bitsandbytes = pytest.mark.skipif(
    not HAS_BITSANDBYTES,
    reason="needs bitsandbytes (the qlora extra: pip install -e '.[qlora]'; make install adds it)",
)
"""Skip a QLoRA test, saying why, where bitsandbytes is not installed."""


def make_qlora_adapter(base_dir, out, quantization="nf4", *, scale=0.05, seed=1):
    """A LoRA adapter with random (non-zero) B matrices on the ``quantization``-quantised ``base_dir``, saved like
    `tunesmith sft` saves a QLoRA adapter (with the tokenizer and its quantization record).

    Returns:
        The in-memory PeftModel on the quantised base (eval mode).
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    from tunesmith.models.loading import load_causal_lm
    from tunesmith.models.quantization import ADAPTER_RECORD, adapter_record, prepare_for_training
    from tunesmith.models.sources import resolve_model

    torch.manual_seed(seed)
    base = prepare_for_training(load_causal_lm(resolve_model(str(base_dir)), quantization=quantization))
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0)
    model = get_peft_model(base, cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn_like(p) * scale)
    model.eval()
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)
    (Path(out) / ADAPTER_RECORD).write_text(adapter_record(quantization, torch.float32))
    return model
