"""Run directories: refuse to mix runs, write artifacts atomically, record a reproducible manifest."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from tunesmith.errors import Problem, TunesmithError

FINAL_ARTIFACTS = ("metrics.json", "adapter", "model", "manifest.json")
"""Files whose presence marks a finished run; a new run never writes over them without ``--overwrite``."""

LIBRARIES = ("tunesmith", "torch", "transformers", "trl", "peft", "datasets", "accelerate", "gguf", "pydantic")


def prepare_run_dir(path: str | Path, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Create (or check) a run directory.

    In a multi-process run only the main process checks and creates it; the others wait for it
    (and exit with the same code when it fails).  A directory that already holds a finished run (any of :data:`FINAL_ARTIFACTS`) or another
    run's checkpoints is refused unless ``overwrite`` (which deletes it) or ``resume`` is given.

    Returns:
        The directory, created.

    Raises:
        TunesmithError: when the directory would mix two runs, or is not writable.
    """
    from tunesmith.distributed import on_main

    return on_main(_prepare_run_dir, Path(path), overwrite=overwrite, resume=resume)


def _prepare_run_dir(out: Path, *, overwrite: bool, resume: bool) -> Path:
    if out.exists() and not out.is_dir():
        raise TunesmithError("Output path is a file", [Problem(str(out), "train.output_dir must be a directory", "choose another train.output_dir")])
    if out.is_dir() and any(out.iterdir()) and not resume:
        if not overwrite:
            raise TunesmithError("Output directory already holds a run", [Problem(
                str(out), "it is not empty; writing here would overwrite or mix two runs' files",
                "pass --overwrite to replace it, --resume to continue it, or set train.output_dir to a new folder")])
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise TunesmithError("Cannot write to the output directory", [Problem(str(out), exc.strerror or str(exc), "choose a writable train.output_dir with free space")]) from None
    return out


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace`` (never half-written)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj) -> None:
    """Write ``obj`` as indented JSON atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def atomic_write_jsonl(path: str | Path, rows) -> None:
    """Write an iterable of dicts as JSON Lines atomically."""
    atomic_write_text(path, "".join(json.dumps(r, default=str, ensure_ascii=False) + "\n" for r in rows))


def atomic_save_dir(final: str | Path, save_fn) -> Path:
    """Call ``save_fn(tmp_dir)`` then rename ``tmp_dir`` to ``final``: a crash leaves no complete-looking folder."""
    final = Path(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        save_fn(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def library_versions() -> dict[str, str]:
    """Installed versions of tunesmith and the libraries it trains with."""
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def template_hash(tokenizer) -> str | None:
    """SHA-256 (hex, 16 chars) of the tokenizer's chat template, or None when it has none."""
    tpl = getattr(tokenizer, "chat_template", None)
    if not tpl:
        return None
    tpl = tpl if isinstance(tpl, str) else json.dumps(tpl, sort_keys=True)
    return hashlib.sha256(tpl.encode()).hexdigest()[:16]


_SECRET_HINTS = ("token", "secret", "password", "api_key", "hub_token")


def redact(obj):
    """Return a copy of a config dict with secret-looking values (``*token*``, ``*password*``...) replaced."""
    if isinstance(obj, dict):
        return {k: ("***" if any(h in str(k).lower() for h in _SECRET_HINTS) and obj[k] not in (None, "", False) else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


def write_manifest(run_dir: Path, *, config: dict, seed: int, dataset_fingerprint: str | None, tokenizer=None, extra: dict | None = None) -> dict:
    """Write ``manifest.json``: versions, resolved config, dataset fingerprint, chat-template hash, seed,
    command line, git commit and platform.  Secrets are redacted.

    Returns:
        The manifest dict.
    """
    argv = [("***" if any(h in a.lower() for h in ("hf_", "token=")) else a) for a in sys.argv]
    manifest = {
        "versions": library_versions(), "python": sys.version.split()[0], "platform": platform.platform(),
        "command": argv, "git_commit": _git_commit(), "seed": seed, "dataset_fingerprint": dataset_fingerprint,
        "chat_template_sha256": template_hash(tokenizer) if tokenizer is not None else None,
        "config": redact(config), **(extra or {}),
    }
    atomic_write_json(run_dir / "manifest.json", manifest)
    return manifest
