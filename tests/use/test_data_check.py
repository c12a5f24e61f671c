"""`tunesmith data check` / `data preview` through the CLI: report values and exit codes."""

from __future__ import annotations

import json
import re

from typer.testing import CliRunner

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
