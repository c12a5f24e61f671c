"""What the page shows, built without a browser: the mask preview (trained tokens marked, text escaped), the Data
tab's check on a real tokenizer (a path outside the root refused, max_length and the template changing the mask), the
status line, the runs table, the report table and the sandboxed report frame."""

from __future__ import annotations

import json
import re
import shutil
from html import unescape
from pathlib import Path

import pytest

from tunesmith.errors import Problem, TunesmithError
from tunesmith.use.data_check import PreviewExample
from tunesmith.use.ui import actions, views
from tunesmith.use.ui.runs import Progress, RunState
from tunesmith.use.ui.workspace import Workspace


def test_mask_html_marks_trained_spans_and_escapes_text():
    ex = PreviewExample("data.jsonl:3", 9, 3, [("<|im_start|>user\n<b>hi</b>", False), ("<script>x</script>", True)])
    html = views.mask_html([ex], 64)
    assert "<mark class='trained'>&lt;script&gt;x&lt;/script&gt;</mark>" in html
    assert "&lt;b&gt;hi&lt;/b&gt;" in html and "<script>" not in html and "<b>hi" not in html
    assert "data.jsonl:3" in html and "9 tokens, 3 trained" in html and "max_length=64" in html
    assert "No example keeps a trained token at max_length=64" in views.mask_html([], 64)


def test_error_markdown_lists_every_problem():
    exc = TunesmithError("Bad", [Problem("data.path", "outside", "use a path under /r"), Problem("x", "y")])
    assert views.error_markdown(exc) == "**Bad**\n- `data.path`: outside (fix: use a path under /r)\n- `x`: y"


def test_progress_line_and_runs_table(tmp_path):
    state = RunState(
        tmp_path / "r", "sft", "running", pid=1, checkpoint=tmp_path / "r" / "checkpoints" / "checkpoint-2"
    )
    prog = Progress(
        [{"step": 1, "series": "loss", "value": 2.0}, {"step": 2, "series": "eval_loss", "value": 1.5}], 2, 4, 30
    )
    line = views.progress_markdown(state, prog)
    assert (
        line == "`r` (sft): **running** · step 2/4 · loss 2.0000 · eval_loss 1.5000 · ETA 30s · checkpoint checkpoint-2"
    )
    done = RunState(tmp_path / "d", "eval", "complete", metrics={"task_metrics": {"exact_match": 0.5}}, updated=1.0)
    rows = views.run_rows([state, done], lambda p: Path(p).name, {state.path: prog})
    assert rows[0][:4] == ["r", "sft", "running", "2/4"] and rows[1][:5] == [
        "d",
        "eval",
        "complete",
        "",
        "exact_match 0.5",
    ]


def test_report_frame_is_sandboxed_and_escaped():
    frame = views.iframe('<html><script>alert(1)</script><p class="v">ok</p></html>')
    assert frame.startswith("<iframe sandbox=''") and "<script>" not in frame
    assert (
        unescape(re.search(r'srcdoc="([^"]*)"', frame).group(1))
        == '<html><script>alert(1)</script><p class="v">ok</p></html>'
    )


def test_consistency_rows():
    report = {
        "consistency": {
            "checks": [
                {"name": "ids_gguf", "ok": True, "detail": "same"},
                {"name": "stops", "ok": False, "detail": "no"},
            ]
        }
    }
    assert views.check_rows(report) == [["ids_gguf", "ok", "same"], ["stops", "FAIL", "no"]]
    assert views.check_rows({}) == []


@pytest.fixture
def ws(tmp_path, tiny_llama_dir):
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    long_answer = " ".join(["word"] * 60)
    rows = [
        {"messages": [{"role": "user", "content": "hi <b>"}, {"role": "assistant", "content": long_answer}]},
        {"messages": [{"role": "user", "content": "no answer"}]},
    ]
    (root / "data" / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "secret.jsonl").write_text((root / "data" / "d.jsonl").read_text())
    (root / "data" / "link.jsonl").symlink_to(tmp_path / "secret.jsonl")
    shutil.copytree(tiny_llama_dir, root / "models" / "tiny")  # the model lives under the root too
    return Workspace(root), "models/tiny"


def test_data_tab_checks_a_file_and_the_mask_follows_max_length_and_template(ws):
    w, model = ws
    v = actions.data_view(w, path="data/d.jsonl", bundled=None, model=model, template=None, max_length=512)
    assert "1 invalid record" in v.message  # the record without an assistant turn, with its file:line
    assert v.problems == [
        [
            f"{w.root}/data/d.jsonl:2",
            "conversation has no assistant turn, so nothing would be trained",
            "add an assistant reply",
        ]
    ]
    assert "<mark class='trained'>" in v.mask and "hi &lt;b&gt;" in v.mask and "&lt;|im_end|&gt;</mark>" in v.mask
    assert any(r[0] == "rows read / kept / skipped" and r[1] == "2 / 1 / 1" for r in v.rows)
    short = actions.data_view(w, path="data/d.jsonl", bundled=None, model=model, template=None, max_length=40)
    assert short.mask != v.mask and "max_length=40" in short.mask
    assert any(r[0].startswith("longer than max_length") and r[1].startswith("1 of ") for r in short.rows)
    llama = actions.data_view(w, path="data/d.jsonl", bundled=None, model=model, template="llama3", max_length=512)
    assert "<|eot_id|>" in unescape(llama.mask) and "<|eot_id|>" not in unescape(v.mask)


@pytest.mark.parametrize("path", ["../secret.jsonl", "data/link.jsonl", "/etc/passwd"])
def test_data_tab_refuses_a_path_outside_the_root(ws, path):
    w, model = ws
    v = actions.data_view(w, path=path, bundled=None, model=model, template=None, max_length=128)
    assert "Path refused" in v.message and "outside the workspace root" in v.message and v.mask == ""
