"""Write a llama-architecture model as a GGUF file with the ``gguf`` library, read it back, and write an Ollama
Modelfile.

Used by ``tunesmith export --format gguf`` (see :mod:`tunesmith.export.gguf`).  Tensor names follow llama.cpp
(``gguf.get_tensor_name_map``: ``token_embd``, ``blk.N.attn_q``, ..., ``output_norm``, ``output``); the
q/k projection rows are permuted as llama.cpp's ``convert_hf_to_gguf.py`` (``LlamaModel.permute``) does,
and transformers' GGUF loader undoes it (``LlamaTensorProcessor._reverse_permute_weights``).  Metadata:
``llama.*`` hyperparameters, ``tokenizer.ggml.*`` (BPE ``gpt2`` model: tokens, token types, merges,
bos/eos/unk/pad ids) and ``tokenizer.chat_template``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from tunesmith.errors import ModelError, Problem

OUTTYPES = ("f32", "f16")
"""Tensor types written: f32 (exact round trip) or f16 (matrices in half precision, norms stay f32)."""


def permute_qk(w: torch.Tensor, n_head: int, n_head_kv: int | None = None) -> torch.Tensor:
    """llama.cpp's q/k row permutation (rotary pairs interleaved instead of split in halves).

    Args:
        w: ``[n_head * head_dim, hidden]`` projection weight.
        n_head: query heads; ``n_head_kv`` replaces it for k when given and different.

    Returns:
        The permuted tensor, same shape. Source: llama.cpp ``convert_hf_to_gguf.py`` ``LlamaModel.permute``.
    """
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def check_supported(config) -> None:
    """Refuse models this writer does not cover (only plain llama: no biases, default RoPE).

    Raises:
        ModelError: naming the config field and the fix.
    """
    problems = []
    if getattr(config, "model_type", None) != "llama":
        problems.append(
            Problem(
                "config.model_type",
                f"{getattr(config, 'model_type', None)!r} is not llama",
                "GGUF export covers llama-architecture models; use llama.cpp's convert_hf_to_gguf.py on the "
                "merged folder",
            )
        )
    for name in ("attention_bias", "mlp_bias"):
        if getattr(config, name, False):
            problems.append(
                Problem(f"config.{name}", "biases are not exported", "use llama.cpp's convert_hf_to_gguf.py")
            )
    rope = getattr(config, "rope_parameters", None) or {}
    if (rope.get("rope_type") or "default") != "default":
        problems.append(
            Problem(
                "config.rope_parameters",
                f"RoPE scaling {rope.get('rope_type')!r} is not exported",
                "use llama.cpp's convert_hf_to_gguf.py",
            )
        )
    if problems:
        raise ModelError("Cannot export this model to GGUF", problems)


def _token_types(tokenizer, n: int) -> list[int]:
    import gguf

    types = [int(gguf.TokenType.NORMAL)] * n
    for tid, tok in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if tid < n:
            types[tid] = int(gguf.TokenType.CONTROL if tok.special else gguf.TokenType.USER_DEFINED)
    for tid in tokenizer.all_special_ids:
        if tid < n:
            types[tid] = int(gguf.TokenType.CONTROL)
    return types


def _merges(tokenizer) -> list[str]:
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    if model.get("type") != "BPE":
        raise ModelError(
            "Cannot export this tokenizer to GGUF",
            [
                Problem(
                    "tokenizer.json",
                    f"model type {model.get('type')!r} is not BPE",
                    "GGUF export covers byte-level BPE tokenizers (tokenizer.ggml.model=gpt2)",
                )
            ],
        )
    return [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]


def add_tokenizer(writer, tokenizer, vocab_size: int, *, pre: str, eos_id: int, chat_template: str | None) -> None:
    """Write ``tokenizer.ggml.*`` and ``tokenizer.chat_template``.

    Args:
        vocab_size: rows of the embedding matrix; ids past ``len(tokenizer)`` become ``[PAD<id>]`` unused tokens.
        pre: ``tokenizer.ggml.pre`` (llama.cpp's pre-tokenizer name).
        eos_id: the EOS id to record (the template's end-of-turn id, so llama.cpp-style runtimes stop at it).
    """
    import gguf

    tokens = tokenizer.convert_ids_to_tokens(list(range(min(len(tokenizer), vocab_size))))
    tokens += [f"[PAD{i}]" for i in range(len(tokens), vocab_size)]
    types = _token_types(tokenizer, len(tokenizer))[:vocab_size] + [int(gguf.TokenType.UNUSED)] * (
        vocab_size - len(tokenizer)
    )
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(_merges(tokenizer))
    for add, tid in (
        (writer.add_bos_token_id, tokenizer.bos_token_id),
        (writer.add_eos_token_id, eos_id),
        (writer.add_unk_token_id, tokenizer.unk_token_id),
        (writer.add_pad_token_id, tokenizer.pad_token_id),
    ):
        if tid is not None:
            add(int(tid))
    if tokenizer.eos_token_id is not None and int(tokenizer.eos_token_id) != eos_id:
        writer.add_eot_token_id(int(eos_id))
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
    writer.add_add_space_prefix(False)
    if chat_template:
        writer.add_chat_template(chat_template)


def _add_hparams(writer, config, outtype: str, name: str) -> None:
    import gguf

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_name(name)
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(int(config.num_attention_heads))
    writer.add_head_count_kv(int(config.num_key_value_heads))
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_dimension_count(int(head_dim))
    writer.add_vocab_size(int(config.vocab_size))
    writer.add_file_type(int(gguf.LlamaFileType.ALL_F32 if outtype == "f32" else gguf.LlamaFileType.MOSTLY_F16))


def gguf_tensors(model, outtype: str = "f32"):
    """Yield ``(gguf_name, numpy array)`` for every weight of a llama model, q/k permuted, tied ``lm_head`` skipped.

    Raises:
        ModelError: a weight with no llama.cpp name.
    """
    import gguf

    cfg = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    tied = (
        model.get_output_embeddings() is not None
        and model.get_output_embeddings().weight is model.get_input_embeddings().weight
    )
    for hf_name, t in model.state_dict().items():
        if hf_name == "lm_head.weight" and tied:
            continue
        new = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise ModelError(
                "Cannot export this model to GGUF",
                [Problem(hf_name, "no llama.cpp tensor name for this weight", "export covers plain llama models")],
            )
        t = t.detach().to(torch.float32).cpu()
        if hf_name.endswith("self_attn.q_proj.weight"):
            t = permute_qk(t, cfg.num_attention_heads)
        elif hf_name.endswith("self_attn.k_proj.weight"):
            t = permute_qk(t, cfg.num_attention_heads, cfg.num_key_value_heads)
        arr = t.numpy()
        yield new, (arr.astype(np.float16) if outtype == "f16" and arr.ndim > 1 else arr)


def write_gguf(
    model,
    tokenizer,
    path: str | Path,
    *,
    eos_id: int,
    chat_template: str | None,
    pre: str = "default",
    outtype: str = "f32",
    name: str = "tunesmith-export",
) -> Path:
    """Write ``model`` (a plain, merged llama ``PreTrainedModel``) and its tokenizer to ``path`` atomically.

    Returns:
        ``path``.

    Raises:
        ModelError: an unsupported architecture or tokenizer (:func:`check_supported`).
    """
    import gguf

    if outtype not in OUTTYPES:
        raise ModelError(
            "Unknown GGUF tensor type", [Problem("--outtype", f"{outtype!r}", f"use one of {', '.join(OUTTYPES)}")]
        )
    check_supported(model.config)
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, "llama")
        _add_hparams(writer, model.config, outtype, name)
        add_tokenizer(
            writer, tokenizer, int(model.config.vocab_size), pre=pre, eos_id=eos_id, chat_template=chat_template
        )
        for gname, arr in gguf_tensors(model, outtype):
            writer.add_tensor(gname, arr)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def read_metadata(
    path: str | Path,
    keys: tuple[str, ...] = (
        "tokenizer.chat_template",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.pre",
        "general.architecture",
    ),
) -> dict:
    """Selected metadata values of a GGUF file (missing keys are left out)."""
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields
    return {k: fields[k].contents() for k in keys if k in fields}


def source_pre_tokenizer(location: str | Path) -> str | None:
    """``tokenizer.ggml.pre`` of the GGUF a checkpoint was converted from (``tunesmith_source.json``, written by
    :func:`tunesmith.models.sources.convert_gguf`, or ``tunesmith_merge.json``), else None."""
    loc = Path(location)
    for name in ("tunesmith_merge.json", "tunesmith_source.json"):
        f = loc / name
        if f.is_file():
            info = json.loads(f.read_text())
            if info.get("gguf_pre"):
                return str(info["gguf_pre"])
            if info.get("gguf") and Path(info["gguf"]).is_file():
                return read_metadata(info["gguf"], ("tokenizer.ggml.pre",)).get("tokenizer.ggml.pre")
    return None


def load_gguf(path: str | Path, dtype: torch.dtype = torch.float32):
    """Load a GGUF file with transformers (``from_pretrained(folder, gguf_file=name)``).

    Returns:
        ``(model in eval mode, tokenizer)``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    return model.eval(), tok
