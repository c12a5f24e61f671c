"""The workspace root of ``tunesmith ui``: every path the page accepts is resolved inside it.

    tunesmith ui --root ~/work      # data files, configs, runs and uploads all live under ~/work

A path typed or picked on the page is taken relative to the root (an absolute one must lie under it), resolved with
every symlink followed, and refused when the result is outside the root: ``../x``, ``/etc/passwd`` and a symlink
that leads out all fail the same way, with a message that names the root. Uploads are copied to ``<root>/uploads``
under a cleaned name, never over an existing file, and refused above a size limit. What the page itself keeps (the
configs it writes, the logs of the processes it starts) lives in ``<root>/.tunesmith-ui``.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from tunesmith.errors import Problem, TunesmithError

UPLOADS = "uploads"
"""Folder under the root that uploads are copied to."""
STATE = ".tunesmith-ui"
"""Folder under the root holding what the page writes for itself: ``configs/`` and ``jobs/``."""
MAX_UPLOAD_BYTES = 200 * 2**20
"""Largest upload accepted, in bytes (200 MiB); ``tunesmith ui --max-upload-mb`` changes it."""
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".gz", ".txt")
"""File endings the data pickers list."""
SKIP_DIRS = frozenset({".git", ".venv", "venv", "node_modules", "__pycache__", "checkpoints", STATE, "logs"})
"""Folders never listed (version control, environments, checkpoints, the page's own state)."""


class Workspace:
    """The root folder the page works in.

    Args:
        root: the ``--root`` folder (must exist); stored resolved (symlinks followed).

    Raises:
        TunesmithError: the root does not exist or is not a folder.
    """

    def __init__(self, root: str | Path):
        path = Path(root).expanduser()
        if not path.is_dir():
            raise TunesmithError(
                "The workspace root is not a folder",
                [Problem(f"--root {root}", "no such folder", "pass an existing folder (default: the current one)")],
            )
        self.root = path.resolve()

    @property
    def state_dir(self) -> Path:
        """``<root>/.tunesmith-ui`` (created on first use)."""
        return self.root / STATE

    def path(self, value: str | Path, what: str = "path") -> Path:
        """Resolve ``value`` inside the root.

        Args:
            value: a path relative to the root, or an absolute path under it.
            what: the field it came from, for the message (``data file``, ``train.output_dir``).

        Returns:
            The resolved absolute path (it need not exist yet).

        Raises:
            TunesmithError: an empty value, or a path that resolves outside the root (``..``, an absolute path
                elsewhere, or a symlink that leads out).
        """
        text = str(value).strip()
        if not text or "\x00" in text:
            raise TunesmithError(
                "Not a path", [Problem(what, "empty" if not text else "contains a NUL byte", "give a file path")]
            )
        p = Path(text).expanduser()
        p = p if p.is_absolute() else self.root / p
        resolved = p.resolve()
        if resolved == self.root or resolved.is_relative_to(self.root):
            return resolved
        lexical = Path(os.path.normpath(p))
        via_link = lexical == self.root or lexical.is_relative_to(self.root)
        reason = (
            f"{text!r} is a symlink (or goes through one) that leads to {resolved}, outside the workspace root"
            if via_link
            else f"{text!r} is outside the workspace root"
        )
        raise TunesmithError(
            "Path refused: the page only reads and writes inside its workspace root",
            [Problem(what, reason, f"use a path under {self.root} (or start `tunesmith ui --root` elsewhere)")],
        )

    def rel(self, path: str | Path) -> str:
        """``path`` relative to the root (as the page shows it); unchanged when it is not under the root."""
        p = Path(path)
        try:
            return p.resolve().relative_to(self.root).as_posix() or "."
        except ValueError:
            return str(p)

    def files(self, suffixes: tuple[str, ...] = DATA_SUFFIXES, *, limit: int = 500) -> list[str]:
        """Files under the root whose names end with one of ``suffixes``, as paths relative to the root, sorted.

        Hidden folders, :data:`SKIP_DIRS` and run artifacts (``adapter/``, ``model/``) are not entered; a symlink
        that leads out of the root is not listed. At most ``limit`` paths.
        """
        found: list[str] = []
        for folder, dirs, names in os.walk(self.root):
            dirs[:] = sorted(
                d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS and d not in ("adapter", "model")
            )
            for name in sorted(names):
                full = Path(folder) / name
                if name.endswith(suffixes) and full.resolve().is_relative_to(self.root):
                    found.append(full.relative_to(self.root).as_posix())
                    if len(found) >= limit:
                        return sorted(found)
        return sorted(found)

    def save_upload(self, source: str | Path, name: str | None = None, *, max_bytes: int = MAX_UPLOAD_BYTES) -> Path:
        """Copy an uploaded file into ``<root>/uploads`` under a cleaned name, never over an existing file.

        Args:
            source: where the web server stored the upload.
            name: the file name the browser sent (default: ``source``'s name); only its last part is kept, and
                characters other than letters, digits, ``.``, ``-`` and ``_`` become ``_``.
            max_bytes: the size limit, in bytes.

        Returns:
            The new file's path (``<root>/uploads/<name>``, or ``<name>-1`` ... when taken).

        Raises:
            TunesmithError: a file larger than ``max_bytes``, an unreadable upload, or an uploads folder that
                leads out of the root.
        """
        src = Path(source)
        size = src.stat().st_size if src.is_file() else -1
        if size < 0:
            raise TunesmithError("Upload failed", [Problem(str(name or src), "no file arrived", "upload it again")])
        if size > max_bytes:
            raise TunesmithError(
                "Upload refused: the file is too large",
                [
                    Problem(
                        str(name or src.name),
                        f"{size / 2**20:.1f} MiB, the limit is {max_bytes / 2**20:.1f} MiB",
                        "put the file under the workspace root yourself and pick it, or start "
                        "`tunesmith ui --max-upload-mb N`",
                    )
                ],
            )
        clean = re.sub(r"[^A-Za-z0-9._-]", "_", Path(str(name or src.name)).name).lstrip(".") or "upload"
        folder = self.path(UPLOADS, "uploads folder")
        folder.mkdir(parents=True, exist_ok=True)
        stem, suffix = _split_name(clean)
        dest, k = folder / clean, 0
        while dest.exists():
            k += 1
            dest = folder / f"{stem}-{k}{suffix}"
        dest = self.path(dest, "upload")
        with src.open("rb") as fin, open(dest, "xb") as fout:  # "x": never replace a file that appeared meanwhile
            shutil.copyfileobj(fin, fout)
        return dest


def _split_name(name: str) -> tuple[str, str]:
    """``data.jsonl.gz`` -> (``data``, ``.jsonl.gz``)."""
    stem, dot, rest = name.partition(".")
    return (stem, dot + rest) if stem else (name, "")
