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


_SLOW_STEPS = """\
import time
from transformers import trainer_callback

_on_step_end = trainer_callback.CallbackHandler.on_step_end


def _slow_on_step_end(self, *args, **kwargs):
    time.sleep({seconds})
    return _on_step_end(self, *args, **kwargs)


trainer_callback.CallbackHandler.on_step_end = _slow_on_step_end
"""


def slow_steps_env(env: dict, where: Path, seconds: float = 0.3) -> dict:
    """``env`` for a subprocess whose every optimizer step takes at least ``seconds`` longer, so a test's signal lands
    while training still runs, even on a loaded machine. Weights and RNG are untouched (a sleep in
    ``CallbackHandler.on_step_end``, loaded by a ``sitecustomize.py`` written under ``where``)."""
    where.mkdir(parents=True, exist_ok=True)
    (where / "sitecustomize.py").write_text(_SLOW_STEPS.format(seconds=seconds))
    return dict(env, PYTHONPATH=os.pathsep.join([str(where), env.get("PYTHONPATH", "")]))


def run_tunesmith(*args, cwd=None, env: dict | None = None, input: str | None = None, timeout: float = 300):
    """Run ``python -m tunesmith ARGS`` as a user would (a subprocess, offline), and return the ``CompletedProcess``
    (text ``stdout``/``stderr``, ``returncode``)."""
    import subprocess
    import sys

    full = dict(os.environ, PYTHONPATH=str(REPO / "src"), HF_HUB_OFFLINE="1", COLUMNS="4000", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "tunesmith", *map(str, args)],
        cwd=cwd,
        env=full,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tree_hash(root: Path, *, skip: tuple[Path, ...] = ()) -> dict[str, str]:
    """Every file, folder and link under ``root`` (links not followed) -> a SHA-256 of its content (``dir`` for folders,
    ``link:<target>`` for links); entries under ``skip`` are left out. Two equal results mean nothing changed."""
    import hashlib

    out: dict[str, str] = {}
    skip = tuple(Path(s) for s in skip)
    found = []
    for folder, dirs, files in os.walk(root):  # never follows links
        found += [Path(folder) / n for n in dirs + files]
    for path in sorted(found):
        if any(path == s or s in path.parents for s in skip):
            continue
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = f"link:{os.readlink(path)}"
        elif path.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


# --- fuzzing: hypothesis strategies shared by the fuzz tests of data check and config loading ---

FUZZ_KEYS = (
    "messages",
    "role",
    "content",
    "prompt",
    "completion",
    "text",
    "conversations",
    "from",
    "value",
    "instruction",
    "output",
    "input",
    "system",
    "weight",
    "name",
    "chosen",
    "rejected",
    "label",
    "id",
)
"""Keys the readers look for, so generated records reach the format converters, not only the "unknown" path."""


def fuzz_strategies():
    """Hypothesis strategies: (``text``: odd Unicode, NUL bytes, lone surrogates; ``number``: huge and non-finite;
    ``value``: any JSON-able value, deeply nested; ``record``: a dict biased towards the keys of every data format)."""
    from hypothesis import strategies as st

    text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40) | st.sampled_from(
        ["", " ", "\x00", "\ud800", "user", "assistant", "system", "tool", "human", "gpt", "<|im_end|>", "{{", "\u202e"]
    )
    number = (
        st.integers()
        | st.floats()
        | st.sampled_from([2**64, -(2**63) - 1, float("inf"), float("nan"), 1e308, -0.0])
        | st.builds(pow, st.just(10), st.integers(4400, 6000))  # past Python's 4,300-digit int conversion limit
    )
    leaf = st.none() | st.booleans() | number | text
    key = st.sampled_from(FUZZ_KEYS) | text
    value = st.recursive(
        leaf, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(key, kids, max_size=4), max_leaves=20
    )
    message = st.fixed_dictionaries(
        {"role": value | st.sampled_from(["user", "assistant", "system"]), "content": value}
    )
    record = st.dictionaries(key, value, max_size=5) | st.fixed_dictionaries(
        {"messages": st.lists(message, max_size=4)}
    )
    return {"text": text, "number": number, "value": value, "record": record}


def to_json_text(value, *, ascii_only: bool) -> str:
    """``json.dumps`` that also writes integers past Python's 4,300-digit conversion limit (the reader must refuse
    them, not this writer)."""
    import json
    import sys

    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        return json.dumps(value, ensure_ascii=ascii_only, allow_nan=True)
    finally:
        sys.set_int_max_str_digits(limit)


def tiny_bpe_tokenizer(chat_template: str):
    """A byte-level BPE tokenizer with 325 tokens (ids 0-2: <|endoftext|>, <|im_start|>, <|im_end|>) and the given chat
    template. Reading a GGUF with SmolLM2's 49,152 tokens takes gguf's reader 10-30 s, so the fast tests use this one;
    tests/use/test_embedded.py (slow) exports the real SmolLM2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tk.train_from_iterator(
        [
            "Hello there, how are you? The capital of France is Paris. system user assistant You are a "
            "helpful AI assistant"
        ]
        * 20,
        trainer,
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
    )
    tok.chat_template = chat_template
    return tok


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
