"""The run manifest: library versions, resolved config, dataset fingerprint, chat-template hash, seed, command line."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from tunesmith.runtime.files import atomic_write_json
from tunesmith.runtime.secrets import redact, redact_argv

LIBRARIES = ("tunesmith", "torch", "transformers", "trl", "peft", "datasets", "accelerate", "gguf", "pydantic")


def _git_commit() -> str | None:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
            ).stdout.strip()
            or None
        )
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


def write_manifest(
    run_dir: Path,
    *,
    config: dict,
    seed: int,
    dataset_fingerprint: str | None,
    tokenizer=None,
    extra: dict | None = None,
) -> dict:
    """Write ``manifest.json``: versions, resolved config, dataset fingerprint, chat-template hash, seed,
    command line, git commit and platform.  Secrets are redacted.

    Returns:
        The manifest dict.
    """
    argv = redact_argv(sys.argv)
    manifest = {
        "versions": library_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "command": argv,
        "git_commit": _git_commit(),
        "seed": seed,
        "dataset_fingerprint": dataset_fingerprint,
        "chat_template_sha256": template_hash(tokenizer) if tokenizer is not None else None,
        "config": redact(config),
        **(extra or {}),
    }
    atomic_write_json(run_dir / "manifest.json", manifest)
    return manifest
