"""The bad-input corpus: every case runs the real CLI (`python -m tunesmith ...`) in a subprocess and must exit with
its expected code (2 for every bad input), print no traceback, name the location (file:line, field path or folder),
and leave no output that looks complete (no metrics.json, no adapter/).

Round 1 (49 cases, the SFT command) is the ``CASES`` table below. Round 2 (every command: non-finite numbers, huge
integers, lone surrogates, --overwrite refusals, broken chat templates, empty inputs, classification adapters where
text is generated, a full disk at a checkpoint, diverging training) is the tracked table
``tests/bad_inputs/cases.yaml``, each case with its expected exit code and message fragments. Files live in
tests/bad_inputs/; large or environment-specific inputs (a 10 MB line, 100,000 nested brackets, a read-only folder,
a full disk) are built by the harness. Cases without ``needs: model`` must fail before any weights load, in about a
second each. Cases run three at a time (each in its own folder), so the whole corpus fits in ``make test``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import yaml

from conftest import REPO, make_adapter

BAD = REPO / "tests" / "bad_inputs"
OK = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]}


@dataclass
class Ctx:
    """Per-case scratch folder, the tiny model, the run's output folder and the shared runs (a classify run, an SFT
    adapter run) some cases point at."""

    tmp: Path
    tiny: Path
    out: Path
    cls_run: Path | None = None
    sft_run: Path | None = None
    arg: str = ""

    def good_data(self, n: int = 6) -> Path:
        path = self.tmp / "good.jsonl"
        path.write_text("".join(json.dumps(OK) + "\n" for _ in range(n)))
        return path

    def sft(self, *args: str, data: Path | None = None, out: Path | None = None) -> list[str]:
        """Arguments of `tunesmith sft` with the tiny model, tiny steps and good data unless replaced."""
        base = [
            "--set",
            f"model.name={self.tiny}",
            "--set",
            f"train.output_dir={out or self.out}",
            "--set",
            "train.max_steps=1",
            "--set",
            f"data.path={data or self.good_data()}",
        ]
        return ["sft", *base, *args]


@dataclass
class Case:
    """One bad input: ``build(ctx) -> argv`` and the text the error must contain to locate the problem."""

    id: str
    build: Callable[[Ctx], list[str]]
    where: Callable[[Ctx], list[str]]
    limit_file_bytes: int | None = None
    needs: str | None = None
    """``"model"`` for the few cases that can only be detected once the model/tokenizer loads."""
    extra_env: dict = field(default_factory=dict)
    exit: int = 2
    stdin: str | None = None
    cwd: Callable[[Ctx], Path] | None = None
    timeout: float = 300


def _data(name: str) -> Callable[[Ctx], list[str]]:
    return lambda c: c.sft(data=BAD / name)


def _at(name: str, line: int | str) -> Callable[[Ctx], list[str]]:
    sep = "#" if name.endswith(".json") and isinstance(line, str) else ":"
    return lambda c: [f"{BAD / name}{sep}{line}"]


def _cfg(name: str) -> Callable[[Ctx], list[str]]:
    return lambda c: c.sft(str(BAD / name))


def _huge_line(c: Ctx) -> list[str]:
    path = c.tmp / "huge.jsonl"
    with path.open("w") as f:
        f.write(json.dumps(OK) + "\n")
        f.write(
            '{"messages": [{"role": "user", "content": "'
            + "x" * 10_000_000
            + '"}, {"role": "assistant", "content": 3}]}\n'
        )
    return c.sft(data=path)


def _huge_garbage(c: Ctx) -> list[str]:
    path = c.tmp / "huge_garbage.jsonl"
    path.write_text(json.dumps(OK) + "\n" + "{" * 1 + "y" * 10_000_000 + "\n")
    return c.sft(data=path)


def _deep(c: Ctx) -> list[str]:
    path = c.tmp / "deep.jsonl"
    path.write_text(json.dumps(OK) + "\n" + "[" * 100_000 + "]" * 100_000 + "\n")
    return c.sft(data=path)


def _long_system(c: Ctx) -> list[str]:
    path = c.tmp / "long.jsonl"
    rec = {"messages": [{"role": "system", "content": "rules " * 50}, *OK["messages"]]}
    path.write_text("".join(json.dumps(rec) + "\n" for _ in range(4)))
    return c.sft("--set", "train.max_length=16", data=path)


def _model_max_1e30(c: Ctx) -> list[str]:
    """A tokenizer_config with model_max_length 1e30 is never used as a length: the conversations are
    truncated by train.max_length (here 16, so nothing trainable is left) and the error names that field."""
    model = c.tmp / "model1e30"
    shutil.copytree(c.tiny, model)
    tc = json.loads((model / "tokenizer_config.json").read_text())
    tc["model_max_length"] = 1e30
    (model / "tokenizer_config.json").write_text(json.dumps(tc))
    return _long_system(c) + ["--set", f"model.name={model}"]


def _pickle_only(c: Ctx) -> list[str]:
    model = c.tmp / "pickled"
    shutil.copytree(c.tiny, model)
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    return c.sft("--set", f"model.name={model}")


def _no_config_json(c: Ctx) -> list[str]:
    (c.tmp / "notamodel").mkdir()
    (c.tmp / "notamodel" / "weights.txt").write_text("x")
    return c.sft("--set", f"model.name={c.tmp / 'notamodel'}")


def _existing_run(c: Ctx) -> list[str]:
    c.out.mkdir()
    (c.out / "metrics.json").write_text("{}")
    return c.sft()


def _out_is_file(c: Ctx) -> list[str]:
    c.out.write_text("not a folder")
    return c.sft()


def _out_parent_is_file(c: Ctx) -> list[str]:
    (c.tmp / "afile").write_text("x")
    return c.sft(out=c.tmp / "afile" / "run")


def _read_only(c: Ctx) -> list[str]:
    """Root ignores permission bits, so the folder is made immutable (chattr +i) instead."""
    ro = c.tmp / "readonly"
    ro.mkdir()
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(ro)], capture_output=True).returncode != 0:
        if os.geteuid() == 0:
            pytest.skip("no way to make a read-only folder for root here (chattr +i unsupported)")
        ro.chmod(0o500)
    return c.sft(out=ro / "run")


def _read_only_existing(c: Ctx) -> list[str]:
    """The output folder itself exists, is empty and immutable."""
    _read_only(c)
    return c.sft(out=c.tmp / "readonly")


def _resume_nothing(c: Ctx) -> list[str]:
    return c.sft("--resume", "latest")


def _resume_changed(c: Ctx) -> list[str]:
    c.out.mkdir()
    (c.out / "config.yaml").write_text("lora:\n  r: 8\n")
    ck = c.out / "checkpoints" / "checkpoint-2"
    ck.mkdir(parents=True)
    for f in ("trainer_state.json", "optimizer.pt", "scheduler.pt", "rng_state.pth", "adapter_model.safetensors"):
        (ck / f).write_text("{}")
    return c.sft("--resume", "latest", "--set", "lora.r=4")


def _classify_csv(c: Ctx, name: str, text: str, *extra: str) -> list[str]:
    """`tunesmith classify` on a small CSV written into the case folder."""
    path = c.tmp / name
    path.write_text(text)
    return [
        "classify",
        "--set",
        f"model.name={c.tiny}",
        "--set",
        f"train.output_dir={c.out}",
        "--set",
        f"data.path={path}",
        *extra,
    ]


def _eval_path_bad(c: Ctx) -> list[str]:
    return c.sft("--set", f"data.eval_path={BAD / 'malformed.jsonl'}")


CASES = [
    # --- data files ---
    Case("malformed-jsonl", _data("malformed.jsonl"), _at("malformed.jsonl", 2)),
    Case("wrong-types", _data("wrong_types.jsonl"), _at("wrong_types.jsonl", 2)),
    Case("huge-line-10MB", _huge_line, lambda c: [f"{c.tmp / 'huge.jsonl'}:2"]),
    Case("huge-garbage-line-10MB", _huge_garbage, lambda c: [f"{c.tmp / 'huge_garbage.jsonl'}:2"]),
    Case("deeply-nested-json", _deep, lambda c: [f"{c.tmp / 'deep.jsonl'}:2"]),
    Case("empty-file", _data("empty.jsonl"), lambda c: [f"data.path={BAD / 'empty.jsonl'}"]),
    Case("only-blank-lines", _data("blank_lines.jsonl"), lambda c: [f"data.path={BAD / 'blank_lines.jsonl'}"]),
    Case("binary-file", _data("binary.jsonl"), _at("binary.jsonl", 1)),
    Case("latin-1-encoding", _data("latin1.jsonl"), _at("latin1.jsonl", 1)),
    Case("utf-16-encoding", _data("utf16.jsonl"), _at("utf16.jsonl", 1)),
    Case("missing-messages", _data("missing_messages.jsonl"), _at("missing_messages.jsonl", 3)),
    Case("unknown-role", _data("unknown_role.jsonl"), _at("unknown_role.jsonl", 1)),
    Case("empty-content", _data("empty_content.jsonl"), _at("empty_content.jsonl", 1)),
    Case("null-content", _data("null_content.jsonl"), _at("null_content.jsonl", 1)),
    Case("no-assistant-turn", _data("no_assistant.jsonl"), _at("no_assistant.jsonl", 2)),
    Case("message-not-object", _data("message_not_object.jsonl"), _at("message_not_object.jsonl", 1)),
    Case("messages-not-list", _data("messages_not_list.jsonl"), _at("messages_not_list.jsonl", 1)),
    Case("line-is-array", _data("line_is_array.jsonl"), _at("line_is_array.jsonl", 1)),
    Case("malformed-json-file", _data("malformed.json"), _at("malformed.json", 3)),
    Case("json-without-records", _data("not_records.json"), lambda c: [f"{BAD / 'not_records.json'}:1", "data.format"]),
    Case("eval-file-malformed", _eval_path_bad, _at("malformed.jsonl", 2)),
    Case(
        "tool-call-arguments-not-json",
        _data("tool_call_bad_arguments.jsonl"),
        lambda c: [f"{BAD / 'tool_call_bad_arguments.jsonl'}:2", "arguments is a string but not JSON"],
    ),
    Case(
        "glaive-tools-not-json",
        _data("glaive_tools_not_json.json"),
        lambda c: [f"{BAD / 'glaive_tools_not_json.json'}:23", "tools is a string but not JSON"],
    ),
    Case(
        "bfcl-question-malformed",
        _data("bfcl_question_malformed.json"),
        lambda c: [f"{BAD / 'bfcl_question_malformed.json'}:2", "question is not a list of turns"],
    ),
    Case(
        "template-would-drop-tools",
        lambda c: c.sft("--skip-invalid", data=BAD / "tool_call_bad_arguments.jsonl"),
        lambda c: ["model.chat_template", "does not render assistant tool calls", "chatml-tools"],
        needs="model",
    ),
    Case("truncates-to-nothing", _long_system, lambda c: ["train.max_length=16"], needs="model"),
    Case("model-max-length-1e30", _model_max_1e30, lambda c: ["train.max_length=16"], needs="model"),
    # --- classification data (tunesmith classify) ---
    Case(
        "csv-missing-columns",
        lambda c: _classify_csv(c, "cols.csv", "message,topic\nhello there,greet\nbye now,farewell\n"),
        lambda c: [f"{c.tmp / 'cols.csv'}:2", "labels.text_column", "labels.label_column"],
    ),
    Case(
        "label-outside-label-set",
        lambda c: _classify_csv(
            c,
            "labels.csv",
            "text,label\nhello,greet\nbye,farewell\nrain?,weather\nhi,greet\n",
            "--set",
            "labels.names=[greet,farewell]",
        ),
        lambda c: [f"{c.tmp / 'labels.csv'}:4", "weather", "labels.unknown_labels=drop"],
    ),
    # --- config ---
    Case("data-file-missing", lambda c: c.sft(data=c.tmp / "nope.jsonl"), lambda c: ["data.path", "nope.jsonl"]),
    Case(
        "data-path-is-folder",
        lambda c: c.sft(data=c.tmp),
        lambda c: [str(c.tmp), "not a saved Hugging Face dataset", "point data.path at a file"],
    ),
    Case("config-file-missing", lambda c: c.sft(str(c.tmp / "missing.yaml")), lambda c: [str(c.tmp / "missing.yaml")]),
    Case("config-is-folder", lambda c: c.sft(str(c.tmp)), lambda c: [str(c.tmp), "is a directory"]),
    Case("bad-yaml", _cfg("bad_yaml.yaml"), lambda c: [f"{BAD / 'bad_yaml.yaml'}:3"]),
    Case("yaml-not-mapping", _cfg("yaml_list.yaml"), lambda c: [str(BAD / "yaml_list.yaml")]),
    Case("config-not-utf8", _cfg("not_utf8.yaml"), lambda c: [str(BAD / "not_utf8.yaml")]),
    Case(
        "unknown-keys",
        _cfg("unknown_key.yaml"),
        lambda c: ["model.nmae", "model.name", "train.max_step", "train.max_steps"],
    ),
    Case("wrong-types-config", _cfg("wrong_type.yaml"), lambda c: ["train.learning_rate", "train.packing", "lora.r"]),
    Case(
        "set-without-equals", lambda c: c.sft("--set", "train.learning_rate"), lambda c: ["--set train.learning_rate"]
    ),
    Case(
        "eval-fraction-out-of-range",
        lambda c: c.sft("--set", "data.eval_fraction=1.5"),
        lambda c: ["data.eval_fraction"],
    ),
    Case("secret-in-config", _cfg("secret.yaml"), lambda c: ["train.hub_token"]),
    # --- model ---
    Case(
        "model-path-missing",
        lambda c: c.sft("--set", f"model.name={c.tmp / 'no-model'}"),
        lambda c: ["model.name="],
        needs="model",
    ),
    Case("model-folder-without-config", _no_config_json, lambda c: [str(c.tmp / "notamodel")], needs="model"),
    Case("pickle-only-weights", _pickle_only, lambda c: [str(c.tmp / "pickled"), "model.allow_pickle"], needs="model"),
    # --- output folder ---
    Case("output-holds-a-run", _existing_run, lambda c: [f"train.output_dir={c.out}", "--overwrite"]),
    Case("output-is-a-file", _out_is_file, lambda c: [f"train.output_dir={c.out}"]),
    Case("output-parent-is-a-file", _out_parent_is_file, lambda c: ["train.output_dir=", "afile"]),
    Case("output-read-only", _read_only, lambda c: ["train.output_dir=", "readonly"]),
    Case("output-read-only-existing", _read_only_existing, lambda c: [f"train.output_dir={c.tmp / 'readonly'}"]),
    Case(
        "output-under-proc",
        lambda c: c.sft(out=Path("/proc/tunesmith-run")),
        lambda c: ["train.output_dir=/proc/tunesmith-run"],
    ),
    Case("disk-full", lambda c: c.sft(), lambda c: [str(c.out / "config.yaml")], limit_file_bytes=512),
    Case("resume-without-checkpoint", _resume_nothing, lambda c: [str(c.out / "checkpoints")]),
    Case(
        "resume-and-overwrite", lambda c: c.sft("--resume", "latest", "--overwrite"), lambda c: ["--resume/--overwrite"]
    ),
    Case("resume-with-other-config", _resume_changed, lambda c: ["lora.r"]),
]


# --- round 2: the table in tests/bad_inputs/cases.yaml ---


def _write_lines(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _tunesmith_run(folder: Path, *extra: str) -> Path:
    """A folder as a finished `tunesmith sft` run leaves it (marker, config, metrics, adapter), plus files ``extra``."""
    from tunesmith.runtime.rundir import write_marker

    folder.mkdir(parents=True)
    write_marker(folder, "sft")
    (folder / "config.yaml").write_text("train: {max_steps: 1}\n")
    (folder / "metrics.json").write_text("{}\n")
    for name in extra:
        (folder / name).write_text("mine\n")
    return folder


def _pickle(src: Path, dst: Path, name: str, pickled: str) -> None:
    import torch
    from safetensors.torch import load_file

    shutil.copytree(src, dst)
    weights = next(dst.rglob(name))
    torch.save(load_file(weights), weights.with_name(pickled))
    weights.unlink()


SETUPS: dict[str, Callable[[Ctx], object]] = {
    "seed_5000_digits": lambda c: setattr(c, "arg", "train.seed=" + "9" * 5000),
    "not_utf8_argument": lambda c: setattr(c, "arg", os.fsdecode(b"data.system_prompt=be \xff nice")),
    "deep_yaml": lambda c: (c.tmp / "deep.yaml").write_text("train: " + "[" * 20_000 + "]" * 20_000 + "\n"),
    "long_message": lambda c: _write_lines(
        c.tmp / "long.jsonl",
        json.dumps(OK),
        json.dumps({"messages": [{"role": "user", "content": "x" * 2_000_000}, {"role": "assistant", "content": "y"}]}),
    ),
    "long_text": lambda c: _write_lines(c.tmp / "long_text.jsonl", json.dumps({"text": "word " * 400_000})),
    "long_label_text": lambda c: _write_lines(
        c.tmp / "long.jsonl",
        json.dumps({"text": "hello", "label": "greet"}),
        json.dumps({"text": "z" * 2_000_000, "label": "bye"}),
    ),
    "long_csv_field": lambda c: _write_lines(c.tmp / "long.csv", "text,label", "hello,greet", "z" * 1_500_000 + ",bye"),
    "work_folder": lambda c: (
        (c.tmp / "work").mkdir(),
        _write_lines(c.tmp / "work" / "d.jsonl", *[json.dumps(OK)] * 6),
        _write_lines(c.tmp / "work" / "notes.txt", "my notes"),
    ),
    "notes_folder": lambda c: ((c.tmp / "notes").mkdir(), _write_lines(c.tmp / "notes" / "todo.txt", "buy tea")),
    "git_checkout": lambda c: (
        (c.tmp / "repo" / ".git").mkdir(parents=True),
        _write_lines(c.tmp / "repo" / "a.py", ""),
    ),
    "run_link": lambda c: (_tunesmith_run(c.tmp / "old"), (c.tmp / "link").symlink_to(c.tmp / "old")),
    "run_with_notes": lambda c: _tunesmith_run(c.tmp / "old", "notes.txt"),
    "run_with_config": lambda c: _tunesmith_run(c.tmp / "old"),
    "never_trained": lambda c: (
        _tunesmith_run(c.out),
        (c.out / "metrics.json").unlink(),
        (c.out / ".tunesmith.lock").write_text("999999999"),
        _write_lines(c.out / "run.log", "tunesmith sft (stopped by SIGTERM while the model loaded)"),
    ),
    "pickled_classify_run": lambda c: _pickle(
        c.cls_run, c.tmp / "pickled-run", "adapter/adapter_model.safetensors", "adapter_model.bin"
    ),
    "two_distinct_labels": lambda c: _write_lines(
        c.tmp / "dup.csv", "text,label", *["hello,greet", "bye,farewell"] * 4
    ),
    "tiny_copy": lambda c: shutil.copytree(c.tiny, c.tmp / "tiny"),  # a case that must not touch the shared model
    "pickled_model": lambda c: _pickle(c.tiny, c.tmp / "pickled", "model.safetensors", "pytorch_model.bin"),
}
"""Named setups of ``cases.yaml``: files a case needs that cannot be tracked (symlinks, huge files, fixtures)."""

GOOD_CSV = "text,label\n" + "".join(
    f"{t},{lab}\n"
    for t, lab in [("hello there", "greet"), ("hi", "greet"), ("hey you", "greet"), ("good morning", "greet")]
    + [("bye now", "farewell"), ("see you", "farewell"), ("ciao", "farewell"), ("good night", "farewell")]
)
GOOD_PAIR = {
    "prompt": [{"role": "user", "content": "a question"}],
    "chosen": [{"role": "assistant", "content": "a good answer"}],
    "rejected": [{"role": "assistant", "content": "no"}],
}


def _expand(ctx: Ctx, text: str) -> str:
    names = {
        "tiny": ctx.tiny,
        "out": ctx.out,
        "tmp": ctx.tmp,
        "bad": BAD,
        "good": ctx.tmp / "good.jsonl",
        "good_csv": ctx.tmp / "good.csv",
        "good_pairs": ctx.tmp / "pairs.jsonl",
        "cls_run": ctx.cls_run,
        "sft_run": ctx.sft_run,
        "arg": ctx.arg,
        "long_name": "x" * 5000,
    }
    for key, value in names.items():
        text = text.replace("{" + key + "}", str(value))
    return text


def _argv(ctx: Ctx, run: list[str]) -> list[str]:
    """Expand ``@sft``/``@classify``/``@dpo``/``@data`` and the ``{name}`` placeholders of a table row."""
    ctx.good_data()
    (ctx.tmp / "good.csv").write_text(GOOD_CSV)
    _write_lines(ctx.tmp / "pairs.jsonl", *[json.dumps(GOOD_PAIR)] * 8)
    common = ["--set", f"model.name={ctx.tiny}", "--set", f"train.output_dir={ctx.out}", "--set", "train.max_steps=1"]
    splice = {
        "@sft": common + ["--set", "data.path={good}"],
        "@classify": common + ["--set", "data.path={good_csv}", "--set", "data.eval_fraction=0.25"],
        "@dpo": common + ["--set", "data.path={good_pairs}", "--set", "eval.win_rate_prompts=1"],
        "@data": ["--set", f"model.name={ctx.tiny}", "--set", "data.path={good}"],
    }
    out = []
    for item in run:
        out += splice.get(item, [item])
    return [_expand(ctx, str(x)) for x in out]


def _table_case(row: dict) -> Case:
    def build(c: Ctx) -> list[str]:
        if row.get("setup"):
            SETUPS[row["setup"]](c)
        return _argv(c, row["run"])

    return Case(
        row["id"],
        build,
        lambda c: [_expand(c, str(s)) for s in row["says"]],
        limit_file_bytes=row.get("fsize"),
        needs=row.get("needs"),
        extra_env=row.get("env", {}),
        exit=row["exit"],
        stdin=row.get("stdin"),
        cwd=(lambda c: Path(_expand(c, row["cwd"]))) if row.get("cwd") else None,
        timeout=row.get("timeout", 300),
    )


TABLE = yaml.safe_load((BAD / "cases.yaml").read_text())
"""Round 2, as tracked in tests/bad_inputs/cases.yaml."""
CASES += [_table_case(row) for row in TABLE]


# --- the runner ---


def _command(case: Case, argv: list[str]) -> list[str]:
    """``python -m tunesmith ARGV``; with a file-size limit (a full disk) set inside the child before tunesmith runs
    (``preexec_fn`` is not safe while other cases run in threads)."""
    if case.limit_file_bytes is None:
        return [sys.executable, "-m", "tunesmith", *argv]
    n = case.limit_file_bytes
    code = (
        "import resource, runpy, sys; "
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({n}, {n})); "
        "sys.argv = ['tunesmith'] + sys.argv[1:]; runpy.run_module('tunesmith', run_name='__main__')"
    )
    return [sys.executable, "-c", code, *argv]


def _run_case(case: Case, ctx: Ctx) -> subprocess.CompletedProcess:
    argv = case.build(ctx)
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO / "src"),
        HF_HUB_OFFLINE="1",
        COLUMNS="4000",
        HF_TOKEN="hf_envsecretvalue0123456789",
        **{k: _expand(ctx, v) for k, v in case.extra_env.items()},
    )
    try:
        return subprocess.run(
            _command(case, argv),
            env=env,
            cwd=case.cwd(ctx) if case.cwd else None,
            input=case.stdin,
            capture_output=True,
            text=True,
            timeout=case.timeout,
        )
    finally:
        ro = ctx.tmp / "readonly"
        if ro.exists() and shutil.which("chattr"):
            subprocess.run(["chattr", "-i", str(ro)], capture_output=True)


@pytest.fixture(scope="module")
def shared_runs(smol_tokenizer, tiny_llama_dir, tmp_path_factory) -> tuple[Path, Path]:
    """(a finished `tunesmith classify` run of the tiny model, an SFT run folder holding a LoRA adapter)."""
    base = tmp_path_factory.mktemp("shared-runs")
    (base / "good.csv").write_text(GOOD_CSV)
    cls_run = base / "cls-run"
    res = subprocess.run(
        [sys.executable, "-m", "tunesmith", "classify", "--set", f"model.name={tiny_llama_dir}"]
        + ["--set", f"data.path={base / 'good.csv'}", "--set", "train.max_steps=1", "--set", "data.eval_fraction=0.25"]
        + ["--set", f"train.output_dir={cls_run}"],
        env=dict(os.environ, PYTHONPATH=str(REPO / "src"), HF_HUB_OFFLINE="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    sft_run = base / "sft-run"
    make_adapter(tiny_llama_dir, smol_tokenizer, sft_run / "adapter")
    (sft_run / "config.yaml").write_text(f"model: {{name: {tiny_llama_dir}}}\neval: {{metrics: [exact_match]}}\n")
    return cls_run, sft_run


@pytest.fixture(scope="module")
def results(request, tiny_llama_dir, shared_runs, tmp_path_factory):
    """Run every selected case, three at a time: case id -> (its Ctx, the finished process)."""
    wanted = [
        item.callspec.params["case"]
        for item in request.session.items
        if item.module is request.module and hasattr(item, "callspec") and "case" in item.callspec.params
    ]
    cls_run, sft_run = shared_runs

    def one(case: Case):
        tmp = tmp_path_factory.mktemp(case.id[:40])
        ctx = Ctx(tmp, Path(tiny_llama_dir), tmp / "out", cls_run, sft_run)
        return ctx, _run_case(case, ctx)

    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {case.id: pool.submit(one, case) for case in wanted}
        yield futures


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, results):
    ctx, res = results[case.id].result()
    err = res.stderr
    assert res.returncode == case.exit, f"exit {res.returncode}\n{err[-3000:]}"
    assert "Traceback" not in err and "Traceback" not in res.stdout, err[-3000:]
    if case.exit == 2:
        assert "error:" in err, err[:500]
    for text in case.where(ctx):
        assert text in err, f"{text!r} not in:\n{err[:3000]}"
    assert len(err) < 20_000, "the error must not echo huge input"
    if case.needs != "model":  # caught by the preflight, before torch and the model load
        assert "Loading weights" not in err and "tunesmith sft model=" not in err, err[:1000]
    assert "hf_abcdefghijklmnopqrstuvwxyz123456" not in err and "hf_envsecretvalue" not in err
    out = ctx.out
    if out.is_dir() and case.exit != 0:
        assert not (out / "metrics.json").exists() or case.id == "output-holds-a-run"
        assert not (out / "adapter").exists()
        assert case.needs == "model" or not (out / "manifest.json").exists()


def test_corpus_size():
    """49 cases of round 1, at least 110 more in the tracked table; ids unique."""
    assert len(CASES) >= 49 + 110 and len(TABLE) >= 110
    assert len({c.id for c in CASES}) == len(CASES)
    assert all(row["exit"] in (0, 2) and row["says"] for row in TABLE)
