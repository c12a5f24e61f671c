"""What the Data, Train and Runs tabs do when clicked, as plain functions of the workspace and the inputs (the
Gradio layout in :mod:`tunesmith.use.ui.app` only wires them up). Every path is resolved inside the root; every
process is started from an argument list by :mod:`tunesmith.use.ui.jobs`; every state is read from the run
folders (:mod:`tunesmith.use.ui.runs`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.errors import Problem, TunesmithError
from tunesmith.use.ui import forms, jobs, runs, views
from tunesmith.use.ui.workspace import Workspace


def run_choices(ws: Workspace, *, kinds: tuple[str, ...] = (), statuses: tuple[str, ...] = ()) -> list[str]:
    """Run folders under the root (relative paths, newest first), only of ``kinds`` and ``statuses`` when given."""
    out = []
    for path in runs.find_runs(ws.root):
        state = runs.read_run(path)
        if (not kinds or state.kind in kinds) and (not statuses or state.status in statuses):
            out.append(ws.rel(path))
    return out


def run_dir(ws: Workspace, value: str | None, what: str = "run") -> Path:
    """The run folder ``value`` names, inside the root.

    Raises:
        TunesmithError: no value, a path outside the root, or a folder that is not a run (no ``config.yaml``).
    """
    if not value:
        raise TunesmithError("No run chosen", [Problem(what, "empty", "pick a run folder")])
    path = ws.path(value, what)
    if not (path / "config.yaml").is_file():
        raise TunesmithError(
            "Not a run folder", [Problem(value, "no config.yaml there", "pick a folder that tunesmith trained into")]
        )
    return path


# ---------------------------------------------------------------------------------------------------- Data tab


@dataclass
class DataView:
    """What the Data tab shows: the check table, every problem (``file:line``), the mask preview, a message."""

    rows: list[list[str]] = field(default_factory=list)
    problems: list[list[str]] = field(default_factory=list)
    mask: str = ""
    message: str = ""


def data_view(
    ws: Workspace,
    *,
    path: str | None,
    bundled: str | None,
    model: str,
    template: str | None,
    max_length: int,
    examples: int = 3,
) -> DataView:
    """Check and preview a data file under the root (or a bundled set) exactly as ``tunesmith sft`` trains on it.

    Args:
        path: a data file (relative to the root); None or empty uses ``bundled``.
        model: ``model.name`` (its tokenizer renders the data). template: ``model.chat_template`` (None: the model's).
        max_length: ``train.max_length``, in tokens. examples: how many to preview.

    Returns:
        :class:`DataView`; errors (a path outside the root, an unreadable file) become its message.
    """
    from tunesmith.use.data_check import check_data, prepare, preview_examples

    texts = {"model.name": model or "smollm2-135m-instruct", "train.max_length": str(max_length)}
    texts["data.path"] = path or ""
    texts["data.name"] = "" if path else (bundled or "chatterbot")
    if template:
        texts["model.chat_template"] = template
    try:
        raw, problems = forms.form_to_raw(ws, "sft", texts)
        if problems:
            raise TunesmithError("Path refused: the page only reads and writes inside its workspace root", problems)
        cfg, problems = forms.check(ws, "sft", raw)
        if cfg is None:
            raise TunesmithError("Invalid settings", problems)
        prepared = prepare(cfg)
        rep = check_data(cfg, prepared=prepared)
        shown, _, used = preview_examples(cfg, examples, prepared=prepared)
    except TunesmithError as exc:
        return DataView(message=views.error_markdown(exc))
    rows = [[rep.title, ""], *[[a, b] for a, b in rep.rows]]
    rows += [[f"template {f.level}", f.message] for f in rep.findings]
    message = f"**{rep.message}**" if rep.message else "**ok**: `tunesmith sft` would train on this data"
    return DataView(rows, views.problem_rows(rep.problems), views.mask_html(shown, used), message)


def upload(ws: Workspace, tmp_path: str | None, max_bytes: int) -> tuple[str, str]:
    """Copy an uploaded file into ``<root>/uploads``.

    Returns:
        (its path relative to the root or ``""``, a message).
    """
    if not tmp_path:
        return "", ""
    try:
        dest = ws.save_upload(tmp_path, Path(tmp_path).name, max_bytes=max_bytes)
    except TunesmithError as exc:
        return "", views.error_markdown(exc)
    return ws.rel(dest), f"uploaded to `{ws.rel(dest)}`"


# --------------------------------------------------------------------------------------------------- Train tab


@dataclass
class FormResult:
    """A checked form: the YAML (what the run starts from), messages per field, other messages, and what started."""

    yaml: str = ""
    fields: dict[str, list[str]] = field(default_factory=dict)
    other: list[str] = field(default_factory=list)
    run: str = ""
    cli: str = ""
    ok: bool = False


def check_form(ws: Workspace, kind: str, texts: dict[str, str], extra: str = ""):
    """Turn the form into a config and validate it (paths inside the root, then :func:`forms.check`).

    Returns:
        (the validated config or None, :class:`FormResult` with the YAML and every problem by field).
    """
    keys = [f.key for f in forms.form_fields(kind)]
    raw, problems = forms.form_to_raw(ws, kind, texts, extra)
    cfg, more = forms.check(ws, kind, raw)  # refused paths are left out of raw: every other field is checked too
    fields, other = forms.by_field(problems + more, keys)
    ok = cfg is not None and not problems
    return (cfg if ok else None), FormResult(forms.config_yaml(raw), fields, other, ok=ok)


def start_training(ws: Workspace, kind: str, texts: dict[str, str], extra: str = "", *, overwrite: bool = False):
    """Validate the form, write its YAML under ``<root>/.tunesmith-ui/configs`` and start ``tunesmith <kind>`` on it
    in its own process.

    Returns:
        :class:`FormResult` (``run``: the run folder relative to the root; ``cli``: the same command for a shell).
    """
    cfg, result = check_form(ws, kind, texts, extra)
    if cfg is None:
        return result
    raw, _ = forms.form_to_raw(ws, kind, texts, extra)
    path = forms.write_config(ws, kind, raw)
    run = Path(cfg.train.output_dir)
    job = jobs.launch(
        ws.state_dir, jobs.train_argv(kind, path, overwrite=overwrite), kind=kind, target=run, cwd=ws.root
    )
    result.run, result.cli = ws.rel(run), job.cli
    return result


def stop(ws: Workspace, value: str) -> str:
    """SIGTERM the process training the run: it saves a checkpoint and exits. Returns a message."""
    try:
        pid = runs.stop_run(run_dir(ws, value))
    except TunesmithError as exc:
        return views.error_markdown(exc)
    return f"sent SIGTERM to process {pid}: it finishes the current step, saves a checkpoint and stops"


def resume(ws: Workspace, value: str) -> str:
    """Start ``tunesmith <kind> <run>/config.yaml --resume latest``. Returns a message."""
    try:
        path = run_dir(ws, value)
        job = jobs.launch(ws.state_dir, jobs.resume_argv(path), kind=runs.read_run(path).kind, target=path, cwd=ws.root)
    except TunesmithError as exc:
        return views.error_markdown(exc)
    return f"resuming: `{job.cli}`"


@dataclass
class RunView:
    """A run as the Train tab shows it: a status line, loss points for the plot, the log's tail, its YAML."""

    status: str = ""
    points: list[dict] = field(default_factory=list)
    log: str = ""
    yaml: str = ""


def run_view(ws: Workspace, value: str | None, *, log_bytes: int = 4000, log_lines: int = 6) -> RunView:
    """Read the run's state, progress and log from its folder (and the log of the last process started for it,
    which holds errors printed before the run folder was claimed)."""
    if not value:
        return RunView()
    try:
        path = run_dir(ws, value)
    except TunesmithError as exc:  # not a run folder (yet): the process started for it may say why
        try:
            recent = jobs.list_jobs(ws.state_dir, target=ws.path(value, "run"))
        except TunesmithError:
            recent = []
        if not recent:
            return RunView(status=views.error_markdown(exc))
        return RunView(status=f"`{value}`: {jobs.job_status(recent[0])}", log=jobs.log_tail(ws.state_dir, recent[0]))
    state, prog = runs.read_run(path), runs.read_progress(path)
    recent = jobs.list_jobs(ws.state_dir, target=path)
    log = jobs.tail_text(path / "run.log", log_bytes)
    if recent and recent[0].returncode not in (None, 0, 130, 143):  # it failed: its own output says why
        log = jobs.log_tail(ws.state_dir, recent[0], max_bytes=log_bytes)
    try:
        yaml_text = (path / "config.yaml").read_text(encoding="utf-8")
    except OSError:
        yaml_text = ""
    log = "\n".join(log.splitlines()[-log_lines:])  # the newest lines: the box shows them without scrolling
    return RunView(views.progress_markdown(state, prog), views.plot_rows(prog), log, yaml_text)


# ---------------------------------------------------------------------------------------------------- Runs tab


def runs_table(ws: Workspace) -> list[list[str]]:
    """Every run under the root: :data:`tunesmith.use.ui.views.RUN_COLUMNS`."""
    states = [runs.read_run(p) for p in runs.find_runs(ws.root)]
    progress = {s.path: runs.read_progress(s.path) for s in states if s.status != runs.COMPLETE}
    return views.run_rows(states, ws.rel, progress)


PLOTS = (".png", ".jpg", ".svg")
"""Files the Runs tab shows as pictures."""


def run_files(ws: Workspace, value: str | None) -> tuple[list[str], list[str], dict]:
    """A run's files for download, its plots, and its ``metrics.json``.

    Returns:
        (absolute paths of the run folder's top-level files, those that are plots, metrics).
    """
    if not value:
        return [], [], {}
    try:
        path = run_dir(ws, value)
    except TunesmithError:
        return [], [], {}
    files = sorted(str(p) for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    return files, [f for f in files if f.endswith(PLOTS)], runs.read_run(path).metrics
