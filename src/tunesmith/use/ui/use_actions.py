"""What the Decide, Chat and Export tabs do, as plain functions (the Gradio layout only wires them up).

Decide: ``tunesmith baseline`` and ``tunesmith eval`` on a run's own config, each in its own process, then the
decision report (:func:`tunesmith.evaluate.report.write_report`, the same ``report.html`` as the CLI). Chat: the run's
adapter and its base loaded once (:func:`tunesmith.models.for_use.load_for_use`) and streamed through
:meth:`tunesmith.use.chat.ChatSession.stream`. Export: ``tunesmith merge`` then ``tunesmith export --format gguf`` in
their own processes, and the consistency report they write, check by check.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from pathlib import Path

from tunesmith.errors import Problem, TunesmithError
from tunesmith.use.ui import jobs, views
from tunesmith.use.ui.actions import run_dir
from tunesmith.use.ui.workspace import Workspace


def job_view(ws: Workspace, target: Path, kinds: tuple[str, ...]) -> str:
    """The latest job of ``kinds`` writing ``target``: its command, status and the tail of its output (Markdown)."""
    recent = jobs.list_jobs(ws.state_dir, target=target, kinds=kinds)
    if not recent:
        return ""
    job = recent[0]
    tail = jobs.log_tail(ws.state_dir, job, max_bytes=3000).replace("```", "'''")
    return f"`{job.cli}`: **{jobs.job_status(job)}**\n\n```\n{tail}\n```"


# -------------------------------------------------------------------------------------------------- Decide tab


def decide_dirs(run: Path) -> tuple[Path, Path]:
    """(baseline folder, eval folder) of a run: ``<run>/baseline`` and ``<run>/eval`` when ``eval.baseline`` made
    them, else ``<run>-baseline`` and ``<run>-eval`` (the CLI's defaults)."""
    inside = (run / "baseline", run / "eval")
    if all((d / "metrics.json").is_file() for d in inside):
        return inside
    return Path(f"{run}-baseline"), Path(f"{run}-eval")


def start_decide_step(ws: Workspace, value: str, step: str, *, overwrite: bool = False) -> str:
    """Start ``tunesmith baseline`` (``step="baseline"``) or ``tunesmith eval --adapter RUN`` (``"eval"``) with the
    run's ``config.yaml``, in its own process. Returns a message."""
    try:
        run = run_dir(ws, value)
        baseline, evaluated = decide_dirs(run)
        out = baseline if step == "baseline" else evaluated
        extra = ["--adapter", str(run)] if step == "eval" else []
        argv = jobs.tunesmith_argv(step, run / "config.yaml", *extra, "--output", out, *(["--overwrite"] * overwrite))
        job = jobs.launch(ws.state_dir, argv, kind=step, target=out, cwd=ws.root)
    except TunesmithError as exc:
        return views.error_markdown(exc)
    return f"started `{job.cli}`"


def decide_view(ws: Workspace, value: str | None) -> tuple[str, str]:
    """The baseline and eval jobs of the run (status and output), as Markdown: (baseline, eval)."""
    try:
        run = run_dir(ws, value)
    except TunesmithError:
        return "", ""
    baseline, evaluated = decide_dirs(run)
    return job_view(ws, baseline, ("baseline",)), job_view(ws, evaluated, ("eval",))


def report(ws: Workspace, value: str, *, overwrite: bool = False) -> tuple[str, str]:
    """Build the decision report of the run's baseline and eval, and write ``<eval>/report.html`` (or the run's own
    ``report.html``) unless it exists and ``overwrite`` is off (then the existing page is shown).

    Returns:
        (verdict and table as Markdown, the report page in a sandboxed iframe).
    """
    from tunesmith.evaluate.report import build_report, write_report

    try:
        run = run_dir(ws, value)
        baseline, evaluated = decide_dirs(run)
        out = run / "report.html" if evaluated.parent == run else evaluated / "report.html"
        if out.exists() and not overwrite:
            rep, note = (
                build_report([baseline, evaluated]),
                f"\n\n(the existing `{ws.rel(out)}`; tick overwrite to rebuild)",
            )
        else:
            rep, note = (
                write_report([baseline, evaluated], out, overwrite=True, echo=False),
                f"\n\nwrote `{ws.rel(out)}`",
            )
    except TunesmithError as exc:
        return views.error_markdown(exc), ""
    return views.report_markdown(rep) + note, views.iframe(out.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------------- Chat tab


class ChatModels:
    """Loaded models for the Chat tab, the ``size`` most recently used kept in memory (shared by every page).

    A key is ``(model, adapter)`` as :func:`tunesmith.models.for_use.load_for_use` takes them.
    """

    def __init__(self, size: int = 2):
        self.size = size
        self._loaded: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, model: str | None, adapter: str | None):
        """The :class:`tunesmith.models.for_use.Loaded` for ``(model, adapter)``, loaded on first use."""
        from tunesmith.models.for_use import load_for_use

        key = (model, adapter)
        with self._lock:
            if key not in self._loaded:
                self._loaded[key] = load_for_use(model, adapter)
                while len(self._loaded) > self.size:
                    self._loaded.popitem(last=False)
            self._loaded.move_to_end(key)
            return self._loaded[key]


def chat_source(ws: Workspace, value: str) -> tuple[str | None, str | None]:
    """What to chat with: a run or adapter folder under the root -> ``(None, adapter)``; a model folder or ``.gguf``
    under the root -> ``(path, None)``; anything else is a model name -> ``(value, None)``.

    Raises:
        TunesmithError: a path outside the root; nothing chosen.
    """
    from tunesmith.models.adapters import find_adapter

    text = (value or "").strip()
    if not text:
        raise TunesmithError("No model chosen", [Problem("model", "empty", "pick a run or type a model name")])
    if text.startswith(("/", ".", "~")) or (ws.root / text).exists():
        path = ws.path(text, "model")
        adapter = find_adapter(path)
        return (None, str(adapter)) if adapter is not None else (str(path), None)
    return text, None


def _history(messages: list[dict]):
    from tunesmith.data.records import Message

    out = []
    for m in messages or []:
        content = m.get("content")
        if isinstance(content, list):  # content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if m.get("role") in ("user", "assistant") and isinstance(content, str):
            out.append(Message(m["role"], content))
    return out


def chat_turn(models: ChatModels, ws: Workspace, value: str, message: str, tuned: list, base: list, *,
              compare: bool = True, system: str = "", temperature: float = 0.0, max_new_tokens: int = 128):  # fmt: skip
    """One user message to the chosen model (and, with ``compare``, to its base model) with streamed replies.

    Args:
        tuned / base: the two chats so far, as ``[{"role", "content"}]``.
        compare: also answer with the base model of the chosen adapter, on the same message.

    Yields:
        (tuned chat, base chat, a message) after each streamed piece.
    """
    from tunesmith.models.adapters import adapter_base_name
    from tunesmith.use.chat import ChatSession

    if not (message or "").strip():
        yield tuned, base, ""
        return
    try:
        model, adapter = chat_source(ws, value)
        sides = [("tuned", models.get(model, adapter))]
        if compare and adapter is not None:
            sides.append(("base", models.get(adapter_base_name(Path(adapter)), None)))
    except TunesmithError as exc:
        yield tuned, base, views.error_markdown(exc)
        return
    chats = {"tuned": list(tuned or []), "base": list(base or [])}
    for name, loaded in sides:
        session = ChatSession(loaded, system=system or None, temperature=temperature, max_new_tokens=max_new_tokens)
        session.history = _history(chats[name])
        chats[name] = chats[name] + [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
        for text in session.stream(message):
            chats[name][-1] = {"role": "assistant", "content": text}
            yield chats["tuned"], chats["base"], ""
    label = f"{sides[0][1].base_name}" + (f" + {Path(adapter).name}" if adapter else "")
    yield chats["tuned"], chats["base"], f"answered by {label}" + (" and its base model" if len(sides) > 1 else "")


# -------------------------------------------------------------------------------------------------- Export tab


def export_paths(run: Path) -> tuple[Path, Path]:
    """(merged folder, GGUF file) of a run: ``<run>-merged`` and ``<run>-gguf/<run name>.gguf``."""
    return Path(f"{run}-merged"), Path(f"{run}-gguf") / f"{run.name}.gguf"


def start_merge(ws: Workspace, value: str, *, overwrite: bool = False) -> str:
    """Start ``tunesmith merge --adapter RUN --output RUN-merged``. Returns a message."""
    try:
        run = run_dir(ws, value)
        merged, _ = export_paths(run)
        argv = jobs.tunesmith_argv("merge", "--adapter", run, "--output", merged, *(["--overwrite"] * overwrite))
        job = jobs.launch(ws.state_dir, argv, kind="merge", target=merged, cwd=ws.root)
    except TunesmithError as exc:
        return views.error_markdown(exc)
    return f"started `{job.cli}`"


def start_export(ws: Workspace, value: str, *, outtype: str = "f32", stop_check: bool = True,
                 overwrite: bool = False) -> str:  # fmt: skip
    """Start ``tunesmith export --model RUN-merged --format gguf -o RUN-gguf/NAME.gguf --modelfile``. Returns a
    message."""
    try:
        run = run_dir(ws, value)
        merged, gguf = export_paths(run)
        if not (merged / "config.json").is_file():
            raise TunesmithError("Merge first", [Problem(ws.rel(merged), "no merged model there", "click Merge")])
        argv = jobs.tunesmith_argv(
            "export", "--model", merged, "--format", "gguf", "-o", gguf, "--outtype", outtype, "--modelfile",
            *([] if stop_check else ["--no-stop-check"]), *(["--overwrite"] * overwrite),
        )  # fmt: skip
        job = jobs.launch(ws.state_dir, argv, kind="export", target=gguf, cwd=ws.root)
    except TunesmithError as exc:
        return views.error_markdown(exc)
    return f"started `{job.cli}`"


def export_view(ws: Workspace, value: str | None) -> tuple[str, dict, list[list[str]], str]:
    """The merge and export of a run: (merge job, ``tunesmith_merge.json``, consistency checks rows, export job)."""
    try:
        run = run_dir(ws, value)
    except TunesmithError:
        return "", {}, [], ""
    merged, gguf = export_paths(run)
    merge_report, checks = {}, []
    for path, kind in (
        (merged / "tunesmith_merge.json", "merge"),
        (gguf.with_name(gguf.stem + ".consistency.json"), ""),
    ):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if kind == "merge":
            merge_report = data
        else:
            checks = views.check_rows(data)
    return job_view(ws, merged, ("merge",)), merge_report, checks, job_view(ws, gguf, ("export",))
