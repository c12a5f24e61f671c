"""The bad-input corpus: every case runs the real CLI (`python -m tunesmith sft ...`) in a subprocess and must
exit with code 2, print no traceback, name the location (file:line, field path or folder), and leave no output
that looks complete (no metrics.json, no adapter/).

Files live in tests/bad_inputs/; large or environment-specific inputs (a 10 MB line, 100,000 nested brackets, a
read-only folder, a full disk) are built in the test.  All but six cases (``needs="model"``) fail before the model
loads (preflight: config, output folder, data), in about a second each.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from conftest import REPO

BAD = REPO / "tests" / "bad_inputs"
OK = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]}


@dataclass
class Ctx:
    """Per-case scratch folder, the tiny model and the run's output folder."""

    tmp: Path
    tiny: Path
    out: Path

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


def _limit(nbytes: int | None):
    if nbytes is None:
        return None
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tiny_llama_dir, tmp_path):
    ctx = Ctx(tmp_path, Path(tiny_llama_dir), tmp_path / "out")
    argv = case.build(ctx)
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO / "src"),
        HF_HUB_OFFLINE="1",
        COLUMNS="4000",
        HF_TOKEN="hf_envsecretvalue0123456789",
        **case.extra_env,
    )
    try:
        res = subprocess.run(
            [sys.executable, "-m", "tunesmith", *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            preexec_fn=_limit(case.limit_file_bytes),
        )
    finally:
        ro = tmp_path / "readonly"
        if ro.exists() and shutil.which("chattr"):
            subprocess.run(["chattr", "-i", str(ro)], capture_output=True)
    err = res.stderr
    assert res.returncode == 2, f"exit {res.returncode}\n{err[-3000:]}"
    assert "Traceback" not in err and "Traceback" not in res.stdout
    assert "error:" in err, err[:500]
    for text in case.where(ctx):
        assert text in err, f"{text!r} not in:\n{err[:3000]}"
    assert len(err) < 20_000, "the error must not echo huge input"
    if case.needs != "model":  # caught by the preflight, before torch and the model load
        assert "Loading weights" not in err and "tunesmith sft model=" not in err, err[:1000]
    assert "hf_abcdefghijklmnopqrstuvwxyz123456" not in err and "hf_envsecretvalue" not in err
    out = ctx.out
    if out.is_dir():
        assert not (out / "metrics.json").exists() or case.id == "output-holds-a-run"
        assert not (out / "adapter").exists() and not (out / "manifest.json").exists()


def test_corpus_has_at_least_30_cases():
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)
