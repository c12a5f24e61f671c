"""`tunesmith data check` / `data preview` through the CLI: report values and exit codes."""

from __future__ import annotations

import json
import re

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
