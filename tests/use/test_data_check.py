"""`tunesmith data check` / `data preview` through the CLI: report values and exit codes."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from conftest import SHARED_DATA, needs_shared
from tunesmith.cli import app

runner = CliRunner()


def _file(tmp_path, bad: bool):
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"answer {i}"}]}
        for i in range(3)
    ]
    rows.append(rows[0])  # one duplicate
    lines = [json.dumps(r) for r in rows] + (['{"messages": [broken'] if bad else [])
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_data_check_reports_and_exits_2_on_invalid(tmp_path, embedded_source):
    p = _file(tmp_path, bad=True)
    res = runner.invoke(app, ["data", "check", "--set", f"data.path={p}"], env={"COLUMNS": "200"})
    assert res.exit_code == 2, res.output
    out = res.output
    assert "5 / 4 / 1" in out  # rows read / kept / skipped
    assert "malformed JSON" in out and f"{p}:5" in out
    assert re.search(r"duplicate records\s*│\s*1\s", out)
    assert "user 4, assistant 4" in out and "named SmolLM" in out  # role counts, injected default system prompt
    res = runner.invoke(app, ["data", "check", "--set", f"data.path={p}", "--skip-invalid"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output


def test_data_preview_marks_trained_tokens(tmp_path, embedded_source):
    p = _file(tmp_path, bad=False)
    res = runner.invoke(
        app, ["data", "preview", "--set", f"data.path={p}", "-n", "1", "--plain"], env={"COLUMNS": "200"}
    )
    assert res.exit_code == 0, res.output
    assert "[[answer 0<|im_end|>]]" in res.output and "<|im_start|>user\nq0<|im_end|>" in res.output
    assert res.output.count("[[") == 2  # the legend's and the one reply's: system, user and header are masked


def test_data_check_missing_file_is_clean_error(tmp_path):
    res = runner.invoke(app, ["data", "check", "--set", f"data.path={tmp_path / 'nope.jsonl'}"])
    assert res.exit_code == 2 and "file not found" in res.output


# --- fuzz: data check raises only TunesmithError, whatever the file holds ---


def _fuzz_settings():
    from hypothesis import HealthCheck, settings

    return settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def check_file(tiny_llama_dir, smol_tokenizer, tmp_path_factory):
    """``check_file(name, data: bytes)``: write a data file and run `tunesmith data check` on it in this process, with
    the tokenizer loaded once. Returns the exit code; any exception but TunesmithError escapes."""
    from tunesmith.config.load import load_config
    from tunesmith.errors import TunesmithError
    from tunesmith.use.data_check import run_check

    folder = tmp_path_factory.mktemp("fuzz")
    counter = iter(range(10**9))

    def check(name: str, data: bytes) -> int:
        path = folder / f"{next(counter)}-{name}"
        path.write_bytes(data)
        cfg = load_config(None, [f"model.name={tiny_llama_dir}", f"data.path={path}", "train.max_length=64"])
        with pytest.MonkeyPatch.context() as mp:  # only for this call: later tests load their own tokenizer
            mp.setattr("tunesmith.models.loading.load_tokenizer", lambda *a, **k: smol_tokenizer)
            try:
                return run_check(cfg)
            except TunesmithError as exc:
                assert exc.exit_code == 2 and exc.problems, exc.render()
                return 2

    return check


def _lines(values, *, ascii_only: bool, raw: list[bytes]) -> bytes:
    from conftest import to_json_text

    text = "\n".join(to_json_text(v, ascii_only=ascii_only) for v in values)
    return text.encode("utf-8", "surrogatepass") + b"\n" + b"\n".join(raw)


def test_fuzz_jsonl_and_json(check_file):
    from hypothesis import given
    from hypothesis import strategies as st

    from conftest import fuzz_strategies

    s = fuzz_strategies()
    garbage = st.binary(max_size=60) | st.sampled_from([b"[" * 3000 + b"]" * 3000, b"{" * 50, b"\x00\x00", b"\xff\xfe"])

    @_fuzz_settings()
    @given(
        records=st.lists(s["record"] | s["value"], min_size=1, max_size=5),
        ascii_only=st.booleans(),
        raw=st.lists(garbage, max_size=2),
    )
    def run(records, ascii_only, raw):
        assert check_file("d.jsonl", _lines(records, ascii_only=ascii_only, raw=raw)) in (0, 2)
        assert check_file("d.json", _lines([records], ascii_only=ascii_only, raw=[])) in (0, 2)

    run()


def test_fuzz_csv(check_file):
    import csv
    import io

    from hypothesis import given
    from hypothesis import strategies as st

    from conftest import FUZZ_KEYS, fuzz_strategies

    text = fuzz_strategies()["text"]

    @_fuzz_settings()
    @given(
        header=st.lists(st.sampled_from(FUZZ_KEYS) | text, min_size=1, max_size=4),
        rows=st.lists(st.lists(text, max_size=5), max_size=5),
    )
    def run(header, rows):
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(header)
        writer.writerows(rows)
        assert check_file("d.csv", buf.getvalue().encode("utf-8", "surrogatepass")) in (0, 2)

    run()


def _long_file(tmp_path):
    reply = lambda i: "tea " * (4 if i else 80)  # the first reply is long
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": reply(i)}]}
        for i in range(10)
    ]
    p = tmp_path / "long.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_data_check_warns_when_truncation_cuts_over_5_percent(tmp_path, embedded_source):
    """1 of 10 examples (10%) is longer than max_length 64: the warning names the max_length that keeps 95%."""
    p = _long_file(tmp_path)
    res = runner.invoke(
        app, ["data", "check", "--set", f"data.path={p}", "--set", "train.max_length=64"], env={"COLUMNS": "200"}
    )
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "1 of 10 (10.0%)" in out
    m = re.search(r"truncation warning: max_length 64: 1 of 10 examples \(10\.0%\) are longer and cut", out)
    assert m, out
    assert re.search(r"train\.max_length=(\d+) would keep 95% of the examples", out)
    res = runner.invoke(app, ["data", "check", "--set", f"data.path={p}"], env={"COLUMNS": "200"})  # 256: no cut
    assert res.exit_code == 0 and "truncation warning" not in res.output


def test_data_check_error_policy_exits_2_and_drop_policy_counts(tmp_path, embedded_source):
    p = _long_file(tmp_path)
    args = ["data", "check", "--set", f"data.path={p}", "--set", "train.max_length=64"]
    res = runner.invoke(app, [*args, "--set", "data.truncation=error"], env={"COLUMNS": "200"})
    assert res.exit_code == 2, res.output
    out = " ".join(res.output.split())
    assert "1 example(s) are longer than max_length 64 and data.truncation=error" in out and f"{p}:1" in out
    res = runner.invoke(app, [*args, "--set", "data.truncation=drop"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert re.search(r"dropped: longer than max_length \(data.truncation=drop\)\s*│\s*1\s", res.output)
    assert "are longer and left out (data.truncation=drop)" in " ".join(res.output.split())


GLAIVE = [
    {
        "conversations": [
            {"from": "human", "value": "Weather in Oslo?"},
            {"from": "function_call", "value": '{"name": "get_weather", "arguments": {"city": "Oslo"}}'},
            {"from": "observation", "value": '{"temp": 3}'},
            {"from": "gpt", "value": "It is 3 degrees."},
        ],
        "tools": json.dumps(
            [{"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {}}}]
        ),
    }
]


def test_data_check_refuses_a_template_that_drops_tools_and_offers_the_tool_template(tmp_path, embedded_source):
    p = tmp_path / "g.json"
    p.write_text(json.dumps(GLAIVE))
    res = runner.invoke(app, ["data", "check", "--set", f"data.path={p}"], env={"COLUMNS": "200"})
    assert res.exit_code == 2, res.output
    assert (
        "does not render assistant tool calls, tool specs" in res.output
        and "model.chat_template=chatml-tools" in res.output
    )
    res = runner.invoke(
        app,
        ["data", "check", "--set", f"data.path={p}", "--set", "model.chat_template=chatml-tools"],
        env={"COLUMNS": "200"},
    )
    assert res.exit_code == 0, res.output
    assert "1 records declare tools; 1 calls in 1 assistant turns (trained); 1 tool results (masked)" in res.output


def test_data_preview_shows_tool_calls_trained_and_results_masked(tmp_path, embedded_source):
    p = tmp_path / "g.json"
    p.write_text(json.dumps(GLAIVE))
    res = runner.invoke(
        app,
        [
            "data",
            "preview",
            "--set",
            f"data.path={p}",
            "--set",
            "model.chat_template=chatml-tools",
            "-n",
            "1",
            "--plain",
        ],
        env={"COLUMNS": "200"},
    )
    assert res.exit_code == 0, res.output
    out = res.output
    assert '[[<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>]]' in out
    assert (
        '<|im_start|>user\n<tool_response>\n{"temp": 3}\n</tool_response><|im_end|>\n<|im_start|>assistant\n[[' in out
    )
    assert "[[It is 3 degrees.<|im_end|>]]" in out and out.count("[[") == 3  # legend + the two replies


@needs_shared("glaive_toolcall_en_demo", "reason_tool_use_demo")
def test_data_check_passes_on_the_tool_calling_sets():
    for path, counts in (
        ("glaive_toolcall_en_demo/glaive_toolcall_en_demo.json", "158 records declare tools; 179 calls in 179"),
        ("reason_tool_use_demo/reason_tool_use_demo_50.jsonl", "40 records declare tools; 58 calls in 43"),
    ):
        res = runner.invoke(
            app,
            [
                "data",
                "check",
                "--set",
                f"data.path={SHARED_DATA / path}",
                "--set",
                "model.chat_template=chatml-tools",
                "--set",
                "train.max_length=4096",
            ],
            env={"COLUMNS": "250"},
        )
        assert res.exit_code == 0, res.output
        assert counts in res.output
    assert "88 turns with reasoning" in res.output and "reasoning the template renders is trained" in res.output


def test_data_check_says_when_the_template_drops_reasoning(tmp_path, embedded_source):
    p = tmp_path / "r.jsonl"
    rec = {
        "messages": [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": [{"type": "reasoning", "value": "Add."}, {"type": "text", "value": "4"}]},
        ]
    }
    p.write_text(json.dumps(rec) + "\n")
    res = runner.invoke(app, ["data", "check", "--set", f"data.path={p}"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "1 assistant turns carry reasoning that the chat template does not render: it is not trained" in res.output
    res = runner.invoke(
        app, ["data", "check", "--set", f"data.path={p}", "--set", "data.train_reasoning=true"], env={"COLUMNS": "200"}
    )
    assert res.exit_code == 2 and "does not render reasoning" in res.output and "chatml-tools" in res.output
    res = runner.invoke(
        app,
        ["data", "preview", "--set", f"data.path={p}", "--set", "model.chat_template=chatml-tools", "--plain"],
        env={"COLUMNS": "200"},
    )
    assert "[[<think>\nAdd.\n</think>\n\n4<|im_end|>]]" in res.output
    res = runner.invoke(
        app,
        [
            "data",
            "preview",
            "--set",
            f"data.path={p}",
            "--set",
            "model.chat_template=chatml-tools",
            "--set",
            "data.train_reasoning=false",
            "--plain",
        ],
        env={"COLUMNS": "200"},
    )
    assert "<think>\nAdd.\n</think>\n\n[[4<|im_end|>]]" in res.output
