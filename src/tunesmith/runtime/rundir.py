"""Run directories: refuse to mix runs, write artifacts atomically, record a reproducible manifest."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
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
    from tunesmith.runtime.distributed import on_main

    return on_main(_prepare_run_dir, Path(path), overwrite=overwrite, resume=resume)


def _prepare_run_dir(out: Path, *, overwrite: bool, resume: bool) -> Path:
    if out.exists() and not out.is_dir():
        raise TunesmithError("Output path is a file", [Problem(str(out), "train.output_dir must be a directory", "choose another train.output_dir")])
    if out.is_dir() and any(p.name != LOCK for p in out.iterdir()) and not resume:
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
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not exc.filename:
            exc.filename = str(path)  # a full disk fails in write(), which names no file
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


_SECRET_KEY = re.compile(r"(^|_)((hub|hf|access|auth|api|bearer)_)?(token|key)$|password|secret|credential", re.IGNORECASE)
_NOT_SECRET = {"pad_token", "eos_token", "bos_token", "unk_token", "sep_token", "cls_token", "mask_token"}


def is_secret_key(name: str) -> bool:
    """True for config keys that hold credentials (``hub_token``, ``token``, ``api_key``, ``*password*``, ``*secret*``),
    false for token *settings* such as ``eos_token``/``pad_token`` or counts such as ``max_new_tokens``."""
    name = str(name).lower()
    if name in _NOT_SECRET:
        return False
    return bool(_SECRET_KEY.search(name)) and not name.endswith(("_key_name", "sort_key"))


def redact(obj):
    """Return a copy of a config dict with credential values (see :func:`is_secret_key`) replaced by ``***``."""
    if isinstance(obj, dict):
        return {k: ("***" if is_secret_key(k) and obj[k] not in (None, "", False) else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


def redact_argv(argv: list[str]) -> list[str]:
    """The command line with every argument that looks like a secret (an ``hf_...`` token, ``...token=...``,
    ``...password=...``, ``...secret=...``, ``...api_key=...``) replaced by ``***``."""
    return [("***" if _SECRET_ARG.search(a) else a) for a in argv]


_SECRET_ARG = re.compile(r"hf_[A-Za-z0-9]{16,}|(token|secret|password|api_key)[^=]*=", re.IGNORECASE)


def write_manifest(run_dir: Path, *, config: dict, seed: int, dataset_fingerprint: str | None, tokenizer=None, extra: dict | None = None) -> dict:
    """Write ``manifest.json``: versions, resolved config, dataset fingerprint, chat-template hash, seed,
    command line, git commit and platform.  Secrets are redacted.

    Returns:
        The manifest dict.
    """
    argv = redact_argv(sys.argv)
    manifest = {
        "versions": library_versions(), "python": sys.version.split()[0], "platform": platform.platform(),
        "command": argv, "git_commit": _git_commit(), "seed": seed, "dataset_fingerprint": dataset_fingerprint,
        "chat_template_sha256": template_hash(tokenizer) if tokenizer is not None else None,
        "config": redact(config), **(extra or {}),
    }
    atomic_write_json(run_dir / "manifest.json", manifest)
    return manifest


_WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.ENOTDIR}


@contextmanager
def write_errors(run_dir: str | Path):
    """Turn a failed write under ``run_dir`` (disk full, file too large, read-only, no permission) into a
    :class:`TunesmithError` naming the file; a run stopped this way has no ``metrics.json``, so it never looks complete.

    torch's checkpoint writer reports a full disk as ``RuntimeError("... PytorchStreamWriter failed writing file ...")``;
    that is converted too.  Other errors pass through unchanged.
    """
    try:
        yield
    except OSError as exc:
        if exc.errno not in _WRITE_ERRNOS:
            raise
        where = str(exc.filename or run_dir)
        raise TunesmithError("Cannot write the run's files; the run is incomplete (no metrics.json)", [Problem(
            where, exc.strerror or str(exc), "free disk space or choose a writable train.output_dir, then run again (--resume latest keeps saved checkpoints)")]) from None
    except RuntimeError as exc:
        if "failed writing file" not in str(exc) and "file write failed" not in str(exc):
            raise
        raise TunesmithError("Cannot write a checkpoint; the run is incomplete (no metrics.json)", [Problem(
            str(run_dir), str(exc).splitlines()[0][:200], "free disk space or choose a writable train.output_dir")]) from None


LOCK = ".tunesmith.lock"
"""File in a run dir holding the id of the process writing it."""


def lock_run_dir(run_dir: str | Path) -> Path:
    """Claim ``run_dir`` for this process, so two processes never write (or resume) the same run at once.

    A lock left by a process that no longer exists (killed with SIGKILL) is taken over; the lock is
    removed when this process exits.

    Returns:
        The lock file path.

    Raises:
        TunesmithError: when a live process (another pid) holds the lock.
    """
    import atexit

    lock = Path(run_dir) / LOCK
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid == os.getpid():
                return lock
            if pid > 0 and _alive(pid):
                raise TunesmithError("Another process is writing this run", [Problem(
                    str(run_dir), f"process {pid} holds {LOCK}", "wait for it to finish (or stop it), or choose another train.output_dir")]) from None
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        atexit.register(lambda: lock.unlink(missing_ok=True) if lock.is_file() and lock.read_text().strip() == str(os.getpid()) else None)
        return lock
    raise TunesmithError("Cannot lock the run directory", [Problem(str(lock), "another process keeps re-creating the lock", "choose another train.output_dir")])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
