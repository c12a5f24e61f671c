"""Run directories: refuse to mix runs, the run lock, write errors as clear messages, and which checkpoint is the
newest complete one (what ``--resume latest`` and ``tunesmith ui`` read)."""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import time
from pathlib import Path

from tunesmith.errors import Problem, TunesmithError
from tunesmith.runtime.lock import LOCK

FINAL_ARTIFACTS = ("metrics.json", "adapter", "model", "manifest.json")
"""Files whose presence marks a finished run; a new run never writes over them without ``--overwrite``."""

RUN_MARKER = ".tunesmith-run.json"
"""Written into every folder tunesmith creates for a run (training, baseline, eval, merge output). ``--overwrite``
replaces only a folder that holds it."""

RUN_FILES = (
    RUN_MARKER,
    LOCK,
    ".write-test",
    "config.yaml",
    "manifest.json",
    "run.log",
    "run_state.json",
    "metrics.json",
    "checkpoints",
    "adapter",
    "model",
    "log_history.jsonl",
    "loss_curve.png",
    "samples.jsonl",
    "reload_check.json",
    "predictions.jsonl",
    "answers.jsonl",
    "generations.jsonl",
    "confusion_matrix.png",
    "report.html",
    "logs",
    "eval",
    "baseline*",
    # `tunesmith merge`: a plain transformers checkpoint
    "*.safetensors",
    "model.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "tunesmith_merge.json",
)
"""Every name (``fnmatch`` pattern) a tunesmith command writes at the top of its output folder, plus the hidden
temporary names of its atomic writes (``.<name>.*``)."""

NEVER_TRAINED = (RUN_MARKER, LOCK, ".write-test", "config.yaml", "run.log", "manifest.json", "run_state.json", "logs")
"""What a run folder holds when the run stopped before its first checkpoint: it is reused without ``--overwrite``."""


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    """``name`` is one of ``patterns`` or the temporary name of an atomic write of one (``.<name>.<random>``)."""
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, f".{p}.*") for p in patterns)


def is_run_file(name: str) -> bool:
    """True when ``name`` (a top-level entry of an output folder) is one a tunesmith command writes."""
    return _matches(name, RUN_FILES)


def write_marker(folder: Path, kind: str) -> None:
    """Write :data:`RUN_MARKER` into ``folder``: tunesmith made it, so ``--overwrite`` may replace it later."""
    from tunesmith.runtime.manifest import library_versions

    text = json.dumps(
        {
            "made_by": "tunesmith",
            "kind": kind,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "tunesmith": library_versions().get("tunesmith"),
        },
        indent=2,
    )
    (folder / RUN_MARKER).write_text(text + "\n", encoding="utf-8")


def prepare_run_dir(
    path: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    inputs: tuple[str | Path, ...] = (),
    kind: str = "run",
) -> Path:
    """Create (or check) a run directory and mark it as tunesmith's (:data:`RUN_MARKER`).

    In a multi-process run only the main process checks and creates it; the others wait for it (and exit with the same
    code when it fails). A directory that already holds a run is refused unless ``resume``, or ``overwrite`` and
    :func:`replace_dir` agrees (the old folder is moved aside, never deleted). A run folder that stopped before its
    first checkpoint (only :data:`NEVER_TRAINED` files) is reused as it is.

    Args:
        path: the output folder.
        overwrite: replace a folder tunesmith made before (``--overwrite``).
        resume: continue the run in it (``--resume``).
        inputs: the files and folders this command reads (data, eval data, config, model, adapter): a folder holding
            one of them is never replaced.
        kind: what the folder holds (``sft``, ``baseline``, ``merge``...), recorded in the marker.

    Returns:
        The directory, created.

    Raises:
        TunesmithError: when the directory would mix two runs, cannot be replaced safely, or is not writable.
    """
    from tunesmith.runtime.distributed import on_main

    return on_main(
        _prepare_run_dir, Path(path).expanduser(), overwrite=overwrite, resume=resume, inputs=inputs, kind=kind
    )


def _prepare_run_dir(out: Path, *, overwrite: bool, resume: bool, inputs: tuple, kind: str) -> Path:
    if (out.exists() or out.is_symlink()) and not out.is_dir():
        raise TunesmithError(
            "Output path is not a folder",
            [Problem(str(out), "it is a file (or a broken link)", "choose another output folder")],
        )
    used = _used(out)
    if used and not resume and never_trained(out):
        _reuse(out)
    elif used and not resume:
        if not overwrite:
            raise TunesmithError(
                "Output directory already holds a run",
                [
                    Problem(
                        str(out),
                        "it is not empty; writing here would overwrite or mix two runs' files",
                        "pass --overwrite to replace it, --resume to continue it, or set train.output_dir "
                        "to a new folder",
                    )
                ],
            )
        replace_dir(out, inputs=inputs)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
        if not (out / RUN_MARKER).exists() and not any(p.name != LOCK for p in out.iterdir()):
            write_marker(out, kind)
    except OSError as exc:
        raise TunesmithError(
            "Cannot write to the output directory",
            [Problem(str(out), exc.strerror or str(exc), "choose a writable train.output_dir with free space")],
        ) from None
    return out


def _used(folder: Path) -> bool:
    """True when ``folder`` exists and holds anything besides a run lock."""
    return folder.is_dir() and any(p.name != LOCK for p in folder.iterdir())


def overwrite_refusals(folder: Path, *, inputs: tuple = ()) -> list[Problem]:
    """What stops ``--overwrite`` from replacing ``folder`` (see :func:`refusals`); nothing when there is nothing to
    replace (a missing or empty folder, or a run that never trained). Checked before the folder is locked, so a
    refused folder is never written to."""
    if folder.is_symlink():
        return refusals(folder, inputs=inputs)
    if not _used(folder) or never_trained(folder):
        return []
    return refusals(folder, inputs=inputs)


def never_trained(folder: Path) -> bool:
    """True for a folder tunesmith made whose run stopped before its first complete checkpoint (killed while loading
    data or the model, or while writing that checkpoint): it holds only :data:`NEVER_TRAINED` files and checkpoint
    folders without a ``trainer_state.json`` (which is written last)."""
    if not (folder / RUN_MARKER).is_file():
        return False
    names = [p.name for p in folder.iterdir()]
    checkpoints = folder / "checkpoints"
    if checkpoints.is_dir() and not any((c / "trainer_state.json").is_file() for c in checkpoints.iterdir()):
        names.remove("checkpoints")
    return all(_matches(n, NEVER_TRAINED) for n in names)


def _reuse(folder: Path) -> None:
    """Start again in a folder whose run never trained: its partial checkpoints (no ``trainer_state.json``) go."""
    from tunesmith.runtime.console import console

    if (folder / "checkpoints").is_dir():
        shutil.rmtree(folder / "checkpoints")
    console.print(f"{folder}: the run there stopped before its first checkpoint; starting again in it", highlight=False)


def _home_and_cwd() -> list[Path]:
    out = [Path("/"), Path.cwd().resolve()]
    try:
        out.append(Path.home().resolve())
    except (KeyError, RuntimeError):  # no home folder for this user
        pass
    return out


def refusals(folder: Path, *, inputs: tuple = ()) -> list[Problem]:
    """Why ``folder`` must not be replaced by ``--overwrite`` (empty when it may be): a link; ``/``, the home or
    current folder or one of their ancestors; a git checkout; a folder holding (or being) one of the command's
    ``inputs``; no :data:`RUN_MARKER`; a file no tunesmith command writes."""
    fix = "choose another output folder, or move this one away yourself; --overwrite replaces only a run folder "
    fix += "tunesmith made"
    if folder.is_symlink():
        return [Problem(str(folder), f"it is a symbolic link (to {os.readlink(folder)})", fix)]
    real = folder.resolve()
    problems = [
        Problem(str(folder), f"it is {'the' if real == p else 'an ancestor of the'} {what} folder ({p})", fix)
        for p, what in zip(_home_and_cwd(), ("root", "current", "home"), strict=False)
        if real == p or real in p.parents
    ]
    if (folder / ".git").exists():
        problems.append(Problem(str(folder), "it holds a git repository (.git)", fix))
    for item in inputs:
        path = Path(item).expanduser()
        if path.exists() and (path.resolve() == real or real in path.resolve().parents):
            problems.append(Problem(str(folder), f"it holds this command's own input {path.resolve()}", fix))
    if not problems and not (folder / RUN_MARKER).is_file():
        problems.append(Problem(str(folder), f"tunesmith did not make it (no {RUN_MARKER} inside)", fix))
    foreign = sorted(p.name for p in folder.iterdir() if not is_run_file(p.name)) if not problems else []
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        problems.append(Problem(str(folder), f"it holds files no tunesmith run writes: {shown}", fix))
    return problems


def replace_dir(folder: Path, *, inputs: tuple = ()) -> Path | None:
    """Clear the way for a new run in ``folder`` (``--overwrite``): move the old one aside to
    ``<folder>.old-<YYYYmmdd-HHMMSS>`` (a folder inside another run folder, such as ``<run>/baseline``, is deleted
    instead: it is part of the run being redone).

    Returns:
        Where the old folder went (None when it was deleted).

    Raises:
        TunesmithError: listing every :func:`refusals` reason; nothing is moved or deleted then.
    """
    from tunesmith.runtime.console import console

    problems = refusals(folder, inputs=inputs)
    if problems:
        raise TunesmithError(f"Refusing to replace {folder} (--overwrite)", problems)
    if (folder.parent / RUN_MARKER).is_file() and folder.parent.resolve() != folder.resolve():
        shutil.rmtree(folder)
        return None
    target = _move_aside(folder)
    lock = target / LOCK
    if lock.is_file() and lock.read_text().strip() == str(os.getpid()):
        lock.unlink()
    console.print(f"--overwrite: moved the previous run {folder} to {target}", highlight=False)
    return target


def _move_aside(path: Path) -> Path:
    """Rename ``path`` to ``<name>.old-<YYYYmmdd-HHMMSS>`` (``-N`` added when taken) in the same folder."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target, n = path.with_name(f"{path.name}.old-{stamp}"), 1
    while target.exists() or target.is_symlink():
        target, n = path.with_name(f"{path.name}.old-{stamp}-{n}"), n + 1
    os.rename(path, target)
    return target


def check_output_dir(folder: Path, *, overwrite: bool, inputs: tuple = ()) -> None:
    """Check, before any work, that a command may write its output folder (``tunesmith merge --output``): a used
    folder needs ``overwrite``, and then must pass :func:`overwrite_refusals`. :func:`replace_dir` moves it aside
    when the output is ready.

    Raises:
        TunesmithError: the folder is a file, holds something without ``overwrite``, or cannot be replaced safely.
    """
    if folder.is_symlink():
        raise TunesmithError(f"Refusing to write {folder}", refusals(folder, inputs=inputs))
    if folder.exists() and not folder.is_dir():
        raise TunesmithError(
            "Output path is not a folder", [Problem(str(folder), "it is a file", "choose another --output")]
        )
    if _used(folder) and not overwrite:
        raise TunesmithError(
            "Output exists",
            [Problem(str(folder), "it would be overwritten", "pass --overwrite or choose another --output")],
        )
    problems = overwrite_refusals(folder, inputs=inputs) if overwrite else []
    if problems:
        raise TunesmithError(f"Refusing to replace {folder} (--overwrite)", problems)


def file_refusals(path: Path, *, overwrite: bool, inputs: tuple = ()) -> list[Problem]:
    """Why a command must not write the output file ``path`` (``tunesmith export``): it is a folder, a link or one of
    the command's ``inputs``, or it exists and ``overwrite`` is off. Empty when it may."""
    fix = "choose another --output"
    if path.is_symlink():
        return [Problem(str(path), "it is a symbolic link", fix)]
    if path.is_dir():
        return [Problem(str(path), "it is a folder", "give the path of a file to write")]
    for item in inputs:  # the output is an input, or lies inside an input folder (a model's own weights)
        p = Path(item).expanduser()
        if p.exists() and (p.resolve() == path.resolve() or p.resolve() in path.resolve().parents):
            return [Problem(str(path), f"it is this command's own input {p.resolve()}", fix)]
    if path.exists() and not overwrite:
        return [Problem(str(path), "it would be overwritten", "pass --overwrite or choose another --output")]
    return []


def replace_file(path: Path) -> Path | None:
    """Move an existing output file aside to ``<name>.old-<YYYYmmdd-HHMMSS>`` (after :func:`file_refusals` found
    nothing), and say where it went.

    Returns:
        Where the old file went, or None when there was none.
    """
    from tunesmith.runtime.console import console

    if not path.exists():
        return None
    target = _move_aside(path)
    console.print(f"--overwrite: moved the previous {path} to {target}", highlight=False)
    return target
