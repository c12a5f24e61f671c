"""Memory needed to fine-tune a model: full fine-tuning, LoRA and QLoRA, by batch size and sequence length.

    tunesmith estimate smollm2-135m-instruct --batch 8 --seq-len 512       # probe-calibrated (the model is local)
    tunesmith estimate HuggingFaceTB/SmolLM2-1.7B --no-probe              # analytical only (config from the HF cache)

Terms (bytes): weights (fp32 4 B/param as tunesmith trains; QLoRA, named after ``model.quantization``: ``nf4`` 0.5
B/param on the linear layers plus about 0.127 bits/param of double-quantised constants, Dettmers et al. 2023, ``int8``
1 B/param plus one fp32 scale per output row, and fp32 for the rest, which PEFT's ``prepare_model_for_kbit_training``
upcasts), gradients
(4 B per trainable parameter), AdamW states (two fp32 moments: 8 B per trainable parameter), activations saved for
the backward pass (per token and layer, see :func:`activation_bytes_per_token`), and a runtime constant (the
Python/torch process itself).  When the model is local, a probe run calibrates the activation slope and the
runtime constant: one LoRA step at two sequence lengths in fresh processes, peak RSS sampled every 2 ms.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, dataclass

from tunesmith.config.base import QUANTIZATIONS

RUNTIME_BYTES = 700e6
"""Resident size of a CPU process with torch, transformers, TRL and PEFT imported (measured: ~0.6-0.8 GB)."""
GIB = 1024**3


@dataclass
class Shape:
    """What the estimate needs from a model config (transformers ``PretrainedConfig`` names)."""

    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool

    @classmethod
    def from_config(cls, cfg) -> "Shape":
        """Read a Llama-family config (``vocab_size``, ``hidden_size``, ``intermediate_size``, ...)."""
        heads = cfg.num_attention_heads
        return cls(
            cfg.vocab_size,
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.num_hidden_layers,
            heads,
            getattr(cfg, "num_key_value_heads", None) or heads,
            getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
            bool(getattr(cfg, "tie_word_embeddings", False)),
        )

    def linear_modules(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of one decoder layer."""
        h, i, q, kv = self.hidden, self.intermediate, self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    def parameters(self) -> tuple[int, int]:
        """(linear-layer parameters in the decoder layers, all other parameters: embeddings, head, norms)."""
        linear = self.layers * sum(a * b for a, b in self.linear_modules().values())
        other = self.vocab * self.hidden * (1 if self.tied else 2) + self.layers * 2 * self.hidden + self.hidden
        return linear, other

    def quantized_linear_bytes(self, quantization: str) -> float:
        """Bytes of the decoder layers' linear weights stored by bitsandbytes as ``model.quantization`` names:
        ``nf4`` 4 bits a weight plus 0.127 bits of double-quantised block constants, ``int8`` 1 byte a weight plus an
        fp32 scale per output row."""
        linear, _ = self.parameters()
        if quantization == "nf4":
            return linear * (0.5 + 0.127 / 8)
        rows = self.layers * sum(out for _, out in self.linear_modules().values())
        return linear + 4 * rows

    def lora_parameters(self, r: int) -> int:
        """Adapter parameters of LoRA rank ``r`` on every linear layer (all-linear): r * (in + out) each."""
        return self.layers * sum(r * (a + b) for a, b in self.linear_modules().values())


def activation_bytes_per_token(s: Shape, *, lora: bool, checkpointing: bool = False, bytes_per_value: int = 4) -> float:
    """Activations kept for the backward pass, bytes per token (whole model).

    Per decoder layer and token, without checkpointing: the two norm inputs and outputs, q/k/v/attention output
    and the o_proj input (~6 hidden + 2 kv), the MLP's gate, up, activation and down input (4 intermediate), and
    for LoRA with dropout the dropped-out input of each adapted layer (~6 hidden + 1 intermediate).  With gradient
    checkpointing only each layer's input (1 hidden) is kept, plus one layer's activations during recomputation.
    The loss adds nothing per token with tunesmith's chunked loss (its chunk buffer is in the runtime term).
    """
    kv = s.kv_heads * s.head_dim
    per_layer = 6 * s.hidden + 2 * kv + 4 * s.intermediate + ((6 * s.hidden + s.intermediate) if lora else 0)
    if checkpointing:
        return bytes_per_value * (s.layers * s.hidden + per_layer)
    return bytes_per_value * s.layers * per_layer


def estimate(
    s: Shape,
    *,
    batch: int,
    seq_len: int,
    r: int = 16,
    checkpointing: bool = False,
    act_bytes_per_token: float | None = None,
    runtime_bytes: float = RUNTIME_BYTES,
) -> dict[str, dict]:
    """Memory of full fine-tuning, LoRA and QLoRA for ``batch`` x ``seq_len`` tokens per micro-batch.

    Args:
        s: the model shape.
        batch, seq_len: sequences per micro-batch and tokens per sequence (packed rows: max_length).
        r: LoRA rank (all linear layers).
        checkpointing: gradient checkpointing on.
        act_bytes_per_token: a calibrated activation slope (bytes/token) replacing the analytical one.
        runtime_bytes: the process's own size (calibrated by the probe).

    Returns:
        ``{"full"|"lora"|"qlora-nf4"|"qlora-int8": {"parameters", "trainable_parameters", "quantization",
        "weights", "gradients", "optimizer", "activations", "runtime", "total"}}``, sizes in bytes; ``quantization`` is
        the ``model.quantization`` value of that row (None for full and LoRA). QLoRA activations are counted in the
        bf16 compute dtype (2 bytes); on a CPU without native bf16 tunesmith computes in fp32 (twice that).
    """
    linear, other = s.parameters()
    n, n_lora, tokens = linear + other, s.lora_parameters(r), batch * seq_len
    out = {}
    for method, quant in (("full", None), ("lora", None), *((f"qlora-{q}", q) for q in QUANTIZATIONS)):
        lora = method != "full"
        weights = 4 * n if quant is None else s.quantized_linear_bytes(quant) + 4 * other
        trainable = n_lora if lora else n
        per_tok = (
            act_bytes_per_token
            if act_bytes_per_token is not None
            else activation_bytes_per_token(s, lora=lora, checkpointing=checkpointing)
        )
        if method == "full" and act_bytes_per_token is not None:  # the probe measured LoRA: drop its dropout copies
            per_tok *= activation_bytes_per_token(
                s, lora=False, checkpointing=checkpointing
            ) / activation_bytes_per_token(s, lora=True, checkpointing=checkpointing)
        if quant is not None:
            per_tok /= 2  # bf16 compute dtype: activations are 2 bytes
        terms = {
            "weights": weights,
            "gradients": 4 * trainable,
            "optimizer": 8 * trainable,
            "activations": per_tok * tokens,
            "runtime": runtime_bytes,
        }
        out[method] = {
            "parameters": n,
            "trainable_parameters": trainable,
            "quantization": quant,
            **{k: int(v) for k, v in terms.items()},
            "total": int(sum(terms.values())),
        }
    return out


def load_shape(model: str) -> tuple[Shape, str | None]:
    """The shape of ``model`` (embedded name, local folder, .gguf or a cached hub id) and its local folder, if any.

    Raises:
        ModelError: when the config cannot be found (not local, not in the offline cache).
    """
    from transformers import AutoConfig

    from tunesmith.errors import ModelError, Problem
    from tunesmith.models.sources import resolve_model

    source = resolve_model(model)
    try:
        cfg = AutoConfig.from_pretrained(source.location)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(
            "Cannot read the model config",
            [
                Problem(
                    model,
                    f"{type(exc).__name__}: {str(exc)[:200]}",
                    "pass an embedded name, a local checkpoint folder, or a hub id already in the cache",
                )
            ],
        ) from None
    return Shape.from_config(cfg), (source.location if source.kind != "hub" else None)


def probe(location: str, seq_lens=(128, 384), r: int = 16, *, allow_pickle: bool = False) -> dict:
    """Calibrate on the real model: one LoRA training step (batch 1) at each of ``seq_lens`` in a fresh process.

    Returns:
        ``{"points": [(tokens, peak_bytes), ...], "act_bytes_per_token": slope, "runtime_bytes": intercept minus
        the LoRA weights/optimizer terms}``.
    """
    points = []
    for n in seq_lens:
        proc = subprocess.run(
            [sys.executable, "-m", "tunesmith.train.estimate_probe", location, str(n), str(r)]
            + (["--allow-pickle"] if allow_pickle else []),
            capture_output=True,
            text=True,
            timeout=600,
        )
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-1500:])
        points.append((n, json.loads(proc.stdout.strip().splitlines()[-1])["peak_bytes"]))
    (t1, p1), (t2, p2) = points
    slope = max((p2 - p1) / (t2 - t1), 0.0)
    return {"points": points, "act_bytes_per_token": slope, "intercept_bytes": p1 - slope * t1}


def estimate_for_run(
    model: str, *, batch: int, seq_len: int, method: str = "lora", r: int = 16, use_probe: bool = True
) -> dict:
    """One method's estimate for the bench: ``{"predicted_peak_bytes", "terms", "calibrated"}``."""
    res = run_estimate(model, batch=batch, seq_len=seq_len, r=r, use_probe=use_probe)
    return {
        "predicted_peak_bytes": res["methods"][method]["total"],
        "terms": res["methods"][method],
        "calibrated": res["probe"] is not None,
        "batch": batch,
        "seq_len": seq_len,
    }


def run_estimate(
    model: str,
    *,
    batch: int = 8,
    seq_len: int = 512,
    r: int = 16,
    checkpointing: bool = False,
    use_probe: bool = True,
    allow_pickle: bool = False,
) -> dict:
    """Estimate memory for ``model``; with ``use_probe`` and a local model, calibrated by :func:`probe`.

    Returns:
        ``{"model", "shape", "batch", "seq_len", "probe" (or None), "methods": {...}}`` (see :func:`estimate`).

    Raises:
        ModelError: the config cannot be read, the weights are only pickle files and ``allow_pickle`` is off (the
            probe loads them through the one gate), or the probe run fails (the fix names ``--no-probe``).
    """
    shape, local = load_shape(model)
    if use_probe and local:
        from tunesmith.models.loading import check_weight_format
        from tunesmith.models.sources import ModelSource

        check_weight_format(ModelSource(model, local, "local"), allow_pickle, option="--allow-pickle (or --no-probe)")
    try:
        cal = probe(local, r=r, allow_pickle=allow_pickle) if use_probe and local else None
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        from tunesmith.errors import ModelError, Problem

        raise ModelError(
            "The probe run failed",
            [
                Problem(
                    f"{model} (probe)",
                    str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else type(exc).__name__,
                    "run with --no-probe for the analytical estimate",
                )
            ],
        ) from None
    kw = {}
    if cal is not None:
        lora = estimate(shape, batch=1, seq_len=0, r=r)["lora"]
        fixed = lora["weights"] + lora["gradients"] + lora["optimizer"]
        kw = {
            "act_bytes_per_token": cal["act_bytes_per_token"],
            "runtime_bytes": max(cal["intercept_bytes"] - fixed, 0.0),
        }
        if checkpointing:
            kw["act_bytes_per_token"] *= activation_bytes_per_token(
                shape, lora=True, checkpointing=True
            ) / activation_bytes_per_token(shape, lora=True)
    return {
        "model": model,
        "shape": asdict(shape),
        "batch": batch,
        "seq_len": seq_len,
        "r": r,
        "checkpointing": checkpointing,
        "probe": cal,
        "methods": estimate(shape, batch=batch, seq_len=seq_len, r=r, checkpointing=checkpointing, **kw),
    }


def print_estimate(res: dict, console) -> None:
    """Render :func:`run_estimate`'s result as a rich table (GiB)."""
    from rich.table import Table

    how = "calibrated by a probe run" if res["probe"] else "analytical (no probe)"
    t = Table(
        title=f"{res['model']}: batch {res['batch']} x {res['seq_len']} tokens, LoRA r={res['r']}"
        f"{', gradient checkpointing' if res['checkpointing'] else ''} ({how}; sizes in GiB)"
    )
    cols = ("weights", "gradients", "optimizer", "activations", "runtime", "total")
    for c in ("method", "trainable params", *cols):
        t.add_column(c, justify="right")
    for m, v in res["methods"].items():
        t.add_row(m, f"{v['trainable_parameters']:,}", *(f"{v[c] / GIB:.2f}" for c in cols))
    t.caption = "qlora-nf4 / qlora-int8: LoRA on a base loaded with model.quantization: nf4 / int8 (bf16 activations)"
    console.print(t)


def estimate_command(
    model: str,
    *,
    batch: int,
    seq_len: int,
    r: int,
    checkpointing: bool,
    use_probe: bool,
    as_json: bool,
    console,
    allow_pickle: bool = False,
) -> dict:
    """``tunesmith estimate``: run :func:`run_estimate` and print it as JSON (stdout) or a table (``console``).

    Raises:
        ModelError: when the model's config cannot be read.
    """
    res = run_estimate(
        model,
        batch=batch,
        seq_len=seq_len,
        r=r,
        checkpointing=checkpointing,
        use_probe=use_probe,
        allow_pickle=allow_pickle,
    )
    if as_json:
        print(json.dumps(res, indent=1))
    else:
        print_estimate(res, console)
    return res
