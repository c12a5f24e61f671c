"""Write a model as a GGUF file with the ``gguf`` library (f32, f16, q8_0; other types through llama.cpp's
``llama-quantize``) and read it back.

Used by ``tunesmith export --format gguf`` (see :mod:`tunesmith.export.gguf`).  The families, their tensor names and
hyperparameters are a table (:mod:`tunesmith.export.architectures`).  Metadata: ``<arch>.*`` hyperparameters,
``tokenizer.ggml.*`` (BPE ``gpt2`` model: tokens, token types, merges, bos/eos/unk/pad ids) and
``tokenizer.chat_template``.  ``q8_0`` is quantised by ``gguf.quants`` (blocks of 32 weights with one f16 scale, as
llama.cpp's ``convert_hf_to_gguf.py --outtype q8_0``); 1-D tensors (norms, biases) stay f32, and a matrix whose rows
are not a multiple of 32 falls back to f16, as there.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from tunesmith.errors import ModelError, Problem

OUTTYPES = ("f32", "f16", "q8_0")
"""Tensor types the ``gguf`` package writes: f32 (exact round trip), f16 (matrices in half precision, norms stay f32),
q8_0 (matrices in 8-bit blocks)."""

LLAMA_QUANTIZE_TYPES = (
    "q4_0",
    "q4_1",
    "q5_0",
    "q5_1",
    "q2_k",
    "q3_k_s",
    "q3_k_m",
    "q3_k_l",
    "q4_k_s",
    "q4_k_m",
    "q5_k_s",
    "q5_k_m",
    "q6_k",
)
"""Types written by llama.cpp's ``llama-quantize`` from an f32 file (it must be on PATH, or built with
``scripts/build-llama-cpp.sh``)."""


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


def _tensor(arr: np.ndarray, outtype: str):
    """``(data, raw_dtype or None)`` of one tensor in ``outtype`` (see the module doc for the f32/f16 fallbacks)."""
    import gguf

    if arr.ndim < 2 or outtype == "f32":
        return arr, None
    if outtype == "q8_0" and arr.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
        return gguf.quants.quantize(arr, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
    return arr.astype(np.float16), None


FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0"}
"""``--outtype`` -> ``gguf.LlamaFileType`` member (``general.file_type``)."""


def write_gguf(
    model,
    tokenizer,
    path: str | Path,
    *,
    eos_id: int,
    chat_template: str | None,
    pre: str | None = None,
    outtype: str = "f32",
    name: str = "tunesmith-export",
) -> Path:
    """Write ``model`` (a plain, merged ``PreTrainedModel`` of a family in
    :data:`tunesmith.export.architectures.ARCHITECTURES`) and its tokenizer to ``path`` atomically, with the umask's
    file mode.

    Args:
        outtype: one of :data:`OUTTYPES`.
        pre: ``tokenizer.ggml.pre``; None takes the family's default.

    Returns:
        ``path``.

    Raises:
        ModelError: an unknown ``outtype``, an unsupported architecture or tokenizer.
    """
    import gguf

    from tunesmith.export.architectures import add_hparams, architecture, gguf_tensors
    from tunesmith.runtime.files import share

    if outtype not in OUTTYPES:
        raise ModelError(
            "Unknown GGUF tensor type", [Problem("--outtype", f"{outtype!r}", f"use one of {', '.join(OUTTYPES)}")]
        )
    arch = architecture(model.config)
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, arch.arch_name)
        add_hparams(writer, model.config, name)
        writer.add_file_type(int(getattr(gguf.LlamaFileType, FILE_TYPES[outtype])))
        add_tokenizer(
            writer,
            tokenizer,
            int(model.config.vocab_size),
            pre=pre or arch.pre,
            eos_id=eos_id,
            chat_template=chat_template,
        )
        for gname, arr in gguf_tensors(model):
            data, raw = _tensor(arr, outtype)
            writer.add_tensor(gname, data, raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        share(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def find_llama_quantize() -> str | None:
    """Path of llama.cpp's ``llama-quantize``: on PATH, else in ``$TUNESMITH_HOME/llama.cpp/bin`` (where
    ``scripts/build-llama-cpp.sh`` puts it), else None."""
    import shutil

    from tunesmith.runtime.paths import tunesmith_home

    found = shutil.which("llama-quantize")
    built = tunesmith_home() / "llama.cpp" / "bin" / "llama-quantize"
    return found or (str(built) if built.is_file() and os.access(built, os.X_OK) else None)


def llama_quantize(source: Path, path: Path, qtype: str) -> Path:
    """Quantise the f32 GGUF ``source`` into ``path`` (atomically, umask file mode) with llama.cpp's ``llama-quantize``.

    Args:
        qtype: one of :data:`LLAMA_QUANTIZE_TYPES` (e.g. ``q4_k_m``).

    Returns:
        ``path``.

    Raises:
        ModelError: ``llama-quantize`` is not installed (naming it and how to get it), or it failed (its last output).
    """
    import subprocess

    from tunesmith.runtime.files import share

    exe = find_llama_quantize()
    if exe is None:
        raise ModelError(
            f"--outtype {qtype} needs llama.cpp's llama-quantize",
            [
                Problem(
                    "llama-quantize",
                    "not on PATH (nor built under $TUNESMITH_HOME/llama.cpp/bin)",
                    "install llama.cpp, or build it with scripts/build-llama-cpp.sh (about 30 minutes on 2 cores); "
                    "or use --outtype q8_0, which needs no llama.cpp",
                )
            ],
        )
    tmp = path.with_name(f".{path.name}.quantize")
    try:
        proc = subprocess.run(
            [exe, str(source), str(tmp), qtype.upper()], capture_output=True, text=True, timeout=3600, check=False
        )
        if proc.returncode != 0 or not tmp.is_file():
            raise ModelError(
                "llama-quantize failed",
                [Problem(exe, (proc.stderr or proc.stdout).strip()[-500:], "see llama.cpp's message above")],
            )
        share(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
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
