"""Which model families export to GGUF, and how: one table entry per family.

A family is a row of :data:`ARCHITECTURES`: the transformers ``config.model_type`` it covers, the llama.cpp
architecture it is written as (``general.architecture``; the hyperparameter keys are ``<arch>.*``), whether q/k rows
are permuted (llama.cpp's ``LlamaModel.permute`` in ``convert_hf_to_gguf.py``: Llama-style rotary layout), which
biases it carries, and the pre-tokenizer name to fall back on. Tensor names come from the ``gguf`` package's own map
for that architecture (``gguf.get_tensor_name_map``: ``token_embd``, ``blk.N.attn_q``, ..., ``output_norm``,
``output``), so adding a family whose tensors llama.cpp already names is one entry, not new code::

    "qwen2": Architecture("qwen2", "QWEN2", permute_qk=False, biases=("q_proj", "k_proj", "v_proj"), pre="qwen2")

Sources: llama.cpp ``convert_hf_to_gguf.py`` (``LlamaModel``, ``Qwen2Model``); transformers
``modeling_gguf_pytorch_utils.py`` reads the same names back (``LlamaTensorProcessor`` undoes the permutation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tunesmith.errors import ModelError, Problem


@dataclass(frozen=True)
class Architecture:
    """How one model family is written to GGUF.

    Attributes:
        model_type: transformers ``config.model_type``.
        gguf_arch: the ``gguf.MODEL_ARCH`` member name (``LLAMA``, ``QWEN2``); its value names the architecture.
        permute_qk: permute q/k projection rows as llama.cpp's Llama converter does.
        biases: projections whose bias tensors are exported (``q_proj``...); any other bias is refused.
        pre: ``tokenizer.ggml.pre`` when neither the source GGUF nor the tokenizer's split regex names one.
    """

    model_type: str
    gguf_arch: str
    permute_qk: bool = False
    biases: tuple[str, ...] = ()
    pre: str = "default"

    @property
    def arch_name(self) -> str:
        """``general.architecture`` (``llama``, ``qwen2``)."""
        import gguf

        return gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[self.gguf_arch]]


ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture("llama", "LLAMA", permute_qk=True),
    "mistral": Architecture("mistral", "LLAMA", permute_qk=True),  # llama.cpp writes Mistral as llama
    "qwen2": Architecture("qwen2", "QWEN2", biases=("q_proj", "k_proj", "v_proj"), pre="qwen2"),
}
"""``config.model_type`` -> :class:`Architecture`: the families ``tunesmith export --format gguf`` writes."""


def permute_qk(w: torch.Tensor, n_head: int, n_head_kv: int | None = None) -> torch.Tensor:
    """llama.cpp's q/k row permutation (rotary pairs interleaved instead of split in halves).

    Args:
        w: ``[n_head * head_dim, hidden]`` projection weight (or ``[n_head * head_dim]`` bias).
        n_head: query heads; ``n_head_kv`` replaces it for k when given and different.

    Returns:
        The permuted tensor, same shape. Source: llama.cpp ``convert_hf_to_gguf.py`` ``LlamaModel.permute``.
    """
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def architecture(config) -> Architecture:
    """The table entry for ``config``, after checking that the writer covers this model.

    Raises:
        ModelError: an unknown family, a bias the family does not carry, or RoPE scaling; each with the field and a fix.
    """
    problems = []
    kind = getattr(config, "model_type", None)
    arch = ARCHITECTURES.get(kind)
    if arch is None:
        problems.append(
            Problem(
                "config.model_type",
                f"{kind!r} is not one of {', '.join(ARCHITECTURES)}",
                "add a row to tunesmith.export.architectures.ARCHITECTURES, or use llama.cpp's "
                "convert_hf_to_gguf.py on the merged folder",
            )
        )
    for name in ("attention_bias", "mlp_bias"):
        if getattr(config, name, False) and (arch is None or name == "mlp_bias" or not arch.biases):
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
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", kind == "mistral"):
        problems.append(
            Problem(
                "config.sliding_window",
                f"sliding-window attention ({config.sliding_window}) is not exported",
                "use llama.cpp's convert_hf_to_gguf.py",
            )
        )
    if problems:
        raise ModelError("Cannot export this model to GGUF", problems)
    return arch


def check_supported(config) -> None:
    """Refuse models this writer does not cover (see :func:`architecture`).

    Raises:
        ModelError: naming each config field and the fix.
    """
    architecture(config)


def add_hparams(writer, config, name: str) -> None:
    """Write the ``<arch>.*`` hyperparameters (context, sizes, heads, RoPE base, RMS-norm epsilon, vocabulary)."""
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


def gguf_tensors(model):
    """Yield ``(gguf_name, float32 numpy array)`` for every weight of a supported model: names from ``gguf``'s map
    for its architecture, q/k permuted where the family needs it, a tied ``lm_head`` skipped.

    Raises:
        ModelError: an unsupported model, or a weight with no llama.cpp name.
    """
    import gguf

    cfg = model.config
    arch = architecture(cfg)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.gguf_arch], cfg.num_hidden_layers)
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
                [Problem(hf_name, "no llama.cpp tensor name for this weight", f"export covers {arch.model_type}")],
            )
        t = t.detach().to(torch.float32).cpu()
        if arch.permute_qk and ".self_attn.q_proj." in hf_name:
            t = permute_qk(t, cfg.num_attention_heads)
        elif arch.permute_qk and ".self_attn.k_proj." in hf_name:
            t = permute_qk(t, cfg.num_attention_heads, cfg.num_key_value_heads)
        yield new, np.ascontiguousarray(t.numpy())
