"""The page of ``tunesmith ui``: the Gradio layout of the Data, Train, Decide, Chat, Export and Runs tabs.

Only layout and wiring live here; each click calls a plain function of :mod:`tunesmith.use.ui.actions` or
:mod:`tunesmith.use.ui.use_actions`. Timers re-read the run folders every few seconds, so what the page shows is
what the folders say, for every page open at the time.
"""

from __future__ import annotations

from itertools import groupby

import gradio as gr

from tunesmith.data.bundled import BUNDLED
from tunesmith.errors import TunesmithError
from tunesmith.render.chat_templates import builtin_templates
from tunesmith.use.ui import actions, forms, use_actions
from tunesmith.use.ui.jobs import TRAIN_KINDS
from tunesmith.use.ui.runs import COMPLETE
from tunesmith.use.ui.views import RUN_COLUMNS, error_markdown
from tunesmith.use.ui.workspace import Workspace

OWN_TEMPLATE = "the model's own"
"""The template choice that keeps the model's chat template."""
CSS = (
    ".ts-error input, .ts-error textarea {border-color:#d33 !important}"
    ".ts-error .ts-info, .ts-error [data-testid='block-info'] {color:#b00 !important}"
    "#data-mask {max-height:520px; overflow:auto}"
)
"""Fields with a validation problem get a red border and red text."""


def launch_options(ws: Workspace, max_upload_bytes: int) -> dict:
    """Keyword arguments of ``Blocks.launch``: files served from the root only, the upload limit, no share link, no
    server-side rendering (no Node.js needed), system fonts (no font download)."""
    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )
    return dict(
        allowed_paths=[str(ws.root)],
        max_file_size=max_upload_bytes,
        share=False,
        ssr_mode=False,
        show_error=True,
        footer_links=[],
        theme=theme,
        css=CSS,
    )


def build_app(ws: Workspace, *, max_upload_bytes: int) -> gr.Blocks:
    """Build the page for the workspace ``ws``.

    Args:
        max_upload_bytes: the upload size limit (also given to ``launch`` by :func:`launch_options`).

    Returns:
        The ``gr.Blocks``, not launched.
    """
    with gr.Blocks(title="tunesmith", analytics_enabled=False) as demo:
        gr.Markdown(
            f"## tunesmith\nPrompting first, then SFT (LoRA), then optional DPO: the decision order, one tab a step. "
            f"Workspace root: `{ws.root}` (every path below is relative to it)."
        )
        with gr.Tabs():
            with gr.Tab("Data", id="data"):
                _data_tab(ws, max_upload_bytes)
            with gr.Tab("Train", id="train"):
                train_run = _train_tab(ws)
            with gr.Tab("Decide", id="decide"):
                decide_run = _decide_tab(ws)
            with gr.Tab("Chat", id="chat"):
                chat_run = _chat_tab(ws)
            with gr.Tab("Export", id="export"):
                export_run = _export_tab(ws)
            with gr.Tab("Runs", id="runs"):
                _runs_tab(ws)
        pickers = [train_run, decide_run, chat_run, export_run]
        train_run.change(lambda r: (r, r, r), train_run, pickers[1:], show_progress="hidden")
        demo.load(lambda: _choices(ws), None, pickers, show_progress="hidden")  # runs started before this page opened
    return demo


def _choices(ws: Workspace) -> list:
    trained = actions.run_choices(ws, kinds=TRAIN_KINDS)
    complete = actions.run_choices(ws, kinds=("sft", "dpo"), statuses=(COMPLETE,))
    return [
        gr.update(choices=trained),
        gr.update(choices=actions.run_choices(ws, kinds=("sft",), statuses=(COMPLETE,))),
        gr.update(choices=complete + ["smollm2-135m-instruct"]),
        gr.update(choices=complete),
    ]


def _run_picker(ws: Workspace, label: str, elem_id: str, **filters) -> gr.Dropdown:
    choices = actions.run_choices(ws, **filters)
    return gr.Dropdown(choices, value=None, allow_custom_value=True, label=label, elem_id=elem_id)


def _data_tab(ws: Workspace, max_upload_bytes: int) -> None:
    conversations = sorted(n for n, b in BUNDLED.items() if b.kind == "conversations")
    with gr.Row():
        path = gr.Textbox(label="data file (relative to the root; empty: the bundled set)", elem_id="data-path")
        pick = gr.Dropdown(ws.files(), value=None, label="or pick a file under the root", elem_id="data-pick")
        bundled = gr.Dropdown(conversations, value="chatterbot", label="bundled set", elem_id="data-bundled")
        up = gr.File(label=f"upload (to uploads/, at most {max_upload_bytes / 2**20:.0f} MiB)", type="filepath",
                     elem_id="data-upload", height=90)  # fmt: skip
    with gr.Row():
        model = gr.Textbox("smollm2-135m-instruct", label="model.name (its tokenizer renders the data)",
                           elem_id="data-model")  # fmt: skip
        template = gr.Radio([OWN_TEMPLATE, *builtin_templates()], value=OWN_TEMPLATE, label="model.chat_template",
                            elem_id="data-template")  # fmt: skip
        max_length = gr.Number(256, minimum=8, maximum=131072, precision=0, label="train.max_length (Enter applies)",
                               elem_id="data-max-length")  # fmt: skip
        check = gr.Button("Check", variant="primary", elem_id="data-check")
    message = gr.Markdown(elem_id="data-message")
    mask = gr.HTML(label="mask preview", elem_id="data-mask")
    table = gr.Dataframe(headers=["what", "value"], label="data check", elem_id="data-table", wrap=True)
    problems = gr.Dataframe(headers=["where (file:line)", "reason", "fix"], label="problems", elem_id="data-problems",
                            wrap=True)  # fmt: skip

    def run(p, b, m, t, n):
        v = actions.data_view(ws, path=p, bundled=b, model=m, template=None if t == OWN_TEMPLATE else t,
                              max_length=int(n or 256))  # fmt: skip
        return v.message, v.mask, v.rows, v.problems

    ins, outs = [path, bundled, model, template, max_length], [message, mask, table, problems]
    check.click(run, ins, outs)
    template.change(run, ins, outs)
    max_length.submit(run, ins, outs)
    pick.change(lambda f: f or gr.update(), pick, path)
    up.upload(lambda f: actions.upload(ws, f, max_upload_bytes), up, [path, message])


def _train_tab(ws: Workspace) -> gr.Dropdown:
    kind = gr.Radio(list(TRAIN_KINDS), value="sft", label="command", elem_id="train-kind")
    with gr.Row():
        cfg_path = gr.Textbox(label="start from a config YAML (relative to the root)", elem_id="train-config", scale=4)
        load = gr.Button("Load into the form", elem_id="train-load")
    with gr.Row():
        validate = gr.Button("Validate", elem_id="train-validate")
        start = gr.Button("Start", variant="primary", elem_id="train-start")
        stop = gr.Button("Stop (SIGTERM: saves a checkpoint)", variant="stop", elem_id="train-stop")
        resume = gr.Button("Resume (from the latest checkpoint)", elem_id="train-resume")
    overwrite = gr.Checkbox(False, label="overwrite: replace the run folder if it already holds a run (deletes it)")
    message = gr.Markdown(elem_id="train-message")
    run = _run_picker(ws, "run folder (Stop, Resume and the plot act on it)", "train-run", kinds=TRAIN_KINDS)
    status = gr.Markdown(elem_id="train-status")
    with gr.Row():
        plot = gr.LinePlot(x="step", y="value", color="series", label="loss and eval_loss", elem_id="train-plot",
                           x_title="optimizer step", y_title="loss (nats per trained token)", height=360,
                           color_map={"loss": "#1f77b4", "eval_loss": "#d62728"},
                           scale=3)  # fmt: skip
        log = gr.Textbox(label="run.log (newest lines)", lines=14, max_lines=14, autoscroll=True, elem_id="train-log",
                         scale=2)  # fmt: skip
    with gr.Row():
        yaml_box = gr.Code(label="the form's YAML (Start writes it to .tunesmith-ui/configs/; the CLI runs it as is)",
                           language="yaml", elem_id="train-yaml", max_lines=14)  # fmt: skip
        run_yaml = gr.Code(label="config.yaml of the run folder (every field, resolved)", language="yaml",
                           elem_id="train-run-yaml", max_lines=14)  # fmt: skip
    groups, boxes, sections, extra = _config_form()
    keys = list(boxes)

    def texts_of(k, values):
        return {key: v for (kk, key), v in zip(keys, values) if kk == k}

    def marks(k, result):
        """Field updates (problem text, red border) then section updates (a section with a problem opens)."""
        out = []
        for kk, key in keys:
            errors = result.fields.get(key) if kk == k else None
            out.append(gr.update(info=_info(_field(kk, key), errors), elem_classes=["ts-error"] if errors else [])
                       if kk == k else gr.update())  # fmt: skip
        bad = {key.split(".")[0] for key in result.fields}
        return out + [gr.update(open=True) if kk == k and sec in bad else gr.update() for kk, sec in sections]

    def on_validate(k, ex, *values):
        _, result = actions.check_form(ws, k, texts_of(k, values), ex)
        return [_form_message(result), result.yaml, *marks(k, result)]

    def on_start(k, ex, ow, *values):
        result = actions.start_training(ws, k, texts_of(k, values), ex, overwrite=ow)
        picked = (
            gr.update(value=result.run, choices=actions.run_choices(ws, kinds=TRAIN_KINDS))
            if result.run
            else gr.update()
        )
        return [_form_message(result), result.yaml, picked, *marks(k, result)]

    def on_load(k, p):
        try:
            texts = forms.load_texts(ws, k, p)
        except TunesmithError as exc:
            return [error_markdown(exc)] + [gr.update()] * len(keys)
        return [f"loaded `{p}` into the {k} form"] + [gr.update(value=texts[key]) if kk == k else gr.update()
                                                       for kk, key in keys]  # fmt: skip

    def refresh(r):
        v = actions.run_view(ws, r)
        return v.status, _plot_frame(v.points), v.log, v.yaml

    form = [boxes[k] for k in keys]
    kind.change(lambda k: [gr.update(visible=k == kk) for kk in TRAIN_KINDS], kind, [groups[k] for k in TRAIN_KINDS])
    folds = list(sections.values())
    validate.click(on_validate, [kind, extra, *form], [message, yaml_box, *form, *folds])
    start.click(on_start, [kind, extra, overwrite, *form], [message, yaml_box, run, *form, *folds])
    load.click(on_load, [kind, cfg_path], [message, *form])
    stop.click(lambda r: actions.stop(ws, r), run, message)
    resume.click(lambda r: actions.resume(ws, r), run, message)
    timer = gr.Timer(2.0)
    timer.tick(refresh, run, [status, plot, log, run_yaml], show_progress="hidden")
    run.change(refresh, run, [status, plot, log, run_yaml], show_progress="hidden")
    return run


def _plot_frame(points: list[dict]):
    """The loss points as a DataFrame (numeric step and value), or None when there are none yet.

    The chart fixes its colours from the series in its first data: an empty frame would leave it with none, and a
    series that appears later (eval_loss after the first evaluation) would be drawn in no colour. So both series are
    always present, a missing one as a single empty (NaN) point.
    """
    import pandas as pd

    if not points:
        return None
    rows = list(points)
    for series in ("loss", "eval_loss"):
        if not any(p["series"] == series for p in rows):
            rows.append({"step": rows[0]["step"], "series": series, "value": float("nan")})
    return pd.DataFrame(rows, columns=["step", "series", "value"]).astype({"step": "int64", "value": "float64"})


def _config_form() -> tuple[dict, dict, dict, gr.Textbox]:
    """One group of textboxes per training command (only the chosen one visible), a section per accordion.

    Returns:
        (command -> group, (command, key) -> textbox, (command, section) -> accordion, the extra-fields box).
    """
    boxes: dict[tuple[str, str], gr.Textbox] = {}
    groups, sections = {}, {}
    gr.Markdown("**The config**: every field with its documentation and default; a problem shows in red beside its "
                "field. A field's text is read like `--set` (YAML); empty means null.")  # fmt: skip
    for k in TRAIN_KINDS:
        with gr.Group(visible=k == "sft") as groups[k]:
            for section, fields in groupby(forms.form_fields(k), key=lambda f: f.key.split(".")[0]):
                with gr.Accordion(section, open=section in ("model", "data")) as sections[(k, section)]:
                    for f in fields:
                        boxes[(k, f.key)] = gr.Textbox(f.default, label=f.key, info=_info(f), max_lines=1,
                                                       elem_id=f"f-{k}-{f.key.replace('.', '-')}")  # fmt: skip
    extra = gr.Textbox(label="more fields, one `section.key=value` a line (e.g. train.beta=0.1)", lines=2,
                       elem_id="train-extra")  # fmt: skip
    return groups, boxes, sections, extra


_FIELDS: dict = {}


def _field(kind: str, key: str) -> forms.FormField:
    if kind not in _FIELDS:
        _FIELDS[kind] = {f.key: f for f in forms.form_fields(kind)}
    return _FIELDS[kind][key]


def _info(f: forms.FormField, errors: list[str] | None = None) -> str:
    doc = f"{f.doc} (default: {f.default})"
    return "⚠ " + "; ".join(errors) + " | " + doc if errors else doc


def _form_message(result) -> str:
    parts = []
    if result.fields:
        parts.append(f"**{sum(len(v) for v in result.fields.values())} problem(s)**, shown beside their fields: "
                     + ", ".join(f"`{k}`" for k in result.fields))  # fmt: skip
    parts += [f"- {x}" for x in result.other]
    if result.run:
        parts.append(f"started `{result.cli}` → run folder `{result.run}`")
    elif result.ok and not parts:
        parts.append("**valid**: the config below runs as it is from the CLI")
    return "\n".join(parts)


def _decide_tab(ws: Workspace) -> gr.Dropdown:
    gr.Markdown("Prompting first: score the untrained model (baseline) and the fine-tuned one (eval) on the same "
                "examples, then read the decision report.")  # fmt: skip
    with gr.Row():
        run = _run_picker(ws, "SFT run", "decide-run", kinds=("sft",), statuses=(COMPLETE,))
        overwrite = gr.Checkbox(False, label="overwrite earlier baseline / eval / report")
    with gr.Row():
        b = gr.Button("1. Baseline (prompting)", elem_id="decide-baseline")
        e = gr.Button("2. Eval (fine-tuned)", elem_id="decide-eval")
        r = gr.Button("3. Report", variant="primary", elem_id="decide-report")
    message = gr.Markdown(elem_id="decide-message")
    with gr.Row():
        bjob = gr.Markdown(elem_id="decide-baseline-job")
        ejob = gr.Markdown(elem_id="decide-eval-job")
    summary = gr.Markdown(elem_id="decide-summary")
    page = gr.HTML(elem_id="decide-report-page")
    b.click(lambda x, o: use_actions.start_decide_step(ws, x, "baseline", overwrite=o), [run, overwrite], message)
    e.click(lambda x, o: use_actions.start_decide_step(ws, x, "eval", overwrite=o), [run, overwrite], message)
    r.click(lambda x, o: use_actions.report(ws, x, overwrite=o), [run, overwrite], [summary, page])
    gr.Timer(3.0).tick(lambda x: use_actions.decide_view(ws, x), run, [bjob, ejob], show_progress="hidden")
    return run


def _chat_tab(ws: Workspace) -> gr.Dropdown:
    models = use_actions.ChatModels()
    with gr.Row():
        run = gr.Dropdown(actions.run_choices(ws, kinds=("sft", "dpo")) + ["smollm2-135m-instruct"], value=None,
                          allow_custom_value=True, label="run, adapter or model", elem_id="chat-run")  # fmt: skip
        compare = gr.Checkbox(True, label="side by side with the base model")
        temperature = gr.Slider(0.0, 1.5, value=0.0, step=0.05, label="temperature (0: greedy)")
        max_new = gr.Number(128, minimum=1, maximum=4096, precision=0, label="max new tokens")
    system = gr.Textbox(label="system prompt (empty: the template's)", elem_id="chat-system")
    with gr.Row():
        tuned = gr.Chatbot(label="fine-tuned (the chosen run)", elem_id="chat-tuned", height=360)
        base = gr.Chatbot(label="base model, same message", elem_id="chat-base", height=360)
    with gr.Row():
        text = gr.Textbox(label="message", elem_id="chat-message", scale=5)
        send = gr.Button("Send", variant="primary", elem_id="chat-send")
        reset = gr.Button("Reset", elem_id="chat-reset")
    note = gr.Markdown(elem_id="chat-note")

    def turn(r, m, t, b, c, s, temp, n):
        yield from use_actions.chat_turn(models, ws, r, m, t, b, compare=c, system=s, temperature=temp,
                                         max_new_tokens=int(n or 128))  # fmt: skip

    ins = [run, text, tuned, base, compare, system, temperature, max_new]
    send.click(turn, ins, [tuned, base, note]).then(lambda: "", None, text)
    text.submit(turn, ins, [tuned, base, note]).then(lambda: "", None, text)
    reset.click(lambda: ([], [], "history cleared"), None, [tuned, base, note])
    return run


def _export_tab(ws: Workspace) -> gr.Dropdown:
    gr.Markdown("Merge the adapter into its base (fp32, checked), then write a GGUF file with an Ollama Modelfile and "
                "check that it serves exactly as it was trained.")  # fmt: skip
    with gr.Row():
        run = _run_picker(ws, "run", "export-run", kinds=("sft", "dpo"), statuses=(COMPLETE,))
        outtype = gr.Radio(["f32", "f16"], value="f32", label="GGUF tensor type")
        stop_check = gr.Checkbox(True, label="'does it stop' check (off for an untrained model)")
        overwrite = gr.Checkbox(False, label="overwrite earlier merge / GGUF")
    with gr.Row():
        merge = gr.Button("1. Merge", elem_id="export-merge")
        export = gr.Button("2. Export GGUF", variant="primary", elem_id="export-gguf")
    message = gr.Markdown(elem_id="export-message")
    mjob = gr.Markdown(elem_id="export-merge-job")
    mreport = gr.JSON(label="merge check (tunesmith_merge.json)", elem_id="export-merge-report")
    checks = gr.Dataframe(headers=["check", "result", "detail"], label="consistency report, check by check",
                          elem_id="export-checks", wrap=True)  # fmt: skip
    ejob = gr.Markdown(elem_id="export-gguf-job")
    merge.click(lambda r, o: use_actions.start_merge(ws, r, overwrite=o), [run, overwrite], message)
    export.click(lambda r, t, s, o: use_actions.start_export(ws, r, outtype=t, stop_check=s, overwrite=o),
                 [run, outtype, stop_check, overwrite], message)  # fmt: skip
    gr.Timer(3.0).tick(lambda r: use_actions.export_view(ws, r), run, [mjob, mreport, checks, ejob],
                       show_progress="hidden")  # fmt: skip
    return run


def _runs_tab(ws: Workspace) -> None:
    refresh = gr.Button("Refresh", elem_id="runs-refresh")
    table = gr.Dataframe(lambda: actions.runs_table(ws), headers=RUN_COLUMNS, label="run folders under the root",
                         elem_id="runs-table", wrap=True)  # fmt: skip
    pick = gr.Dropdown([], value=None, allow_custom_value=True, label="show a run's plots and files",
                       elem_id="runs-pick")  # fmt: skip
    with gr.Row():
        plots = gr.Gallery(
            label="plots", elem_id="runs-plots", columns=2, height=360, object_fit="contain", preview=False
        )
        metrics = gr.JSON(label="metrics.json", elem_id="runs-metrics")
    files = gr.File(label="files (click to download)", file_count="multiple", elem_id="runs-files", interactive=False)

    def table_and_choices(current):
        rows = actions.runs_table(ws)
        return rows, gr.update(choices=[r[0] for r in rows], value=current)

    refresh.click(table_and_choices, pick, [table, pick])
    gr.Timer(5.0).tick(table_and_choices, pick, [table, pick], show_progress="hidden")

    def details(r):
        paths, pictures, values = actions.run_files(ws, r)
        return pictures, values, paths

    def clicked(evt: gr.SelectData):
        return evt.row_value[0] if evt.row_value else gr.update()

    pick.change(details, pick, [plots, metrics, files])
    table.select(clicked, None, pick)  # a click on a row shows that run
