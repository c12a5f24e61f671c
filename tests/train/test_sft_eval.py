"""What `tunesmith sft` measures around training, run as a user runs it (subprocesses, stderr not a terminal): one
eval_loss (sft's before/after figures equal `tunesmith baseline`'s and `tunesmith eval --adapter`'s on the same
truncated rows), the plan printed before training, progress lines for every long step, and runs without eval rows."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tunesmith.render.rows import render_all
from tunesmith.render.templates import render_conversation


def _data(path, n: int, *, long_every: int = 0):
    """``n`` chat records; every ``long_every``-th reply is long (cut at a short max_length)."""
    with path.open("w") as f:
        for i in range(n):
            reply = f"{i} said" + (" and then some more words" * 12 if long_every and i % long_every == 0 else "")
            record = {"messages": [{"role": "user", "content": f"say {i}"}, {"role": "assistant", "content": reply}]}
            f.write(json.dumps(record) + "\n")
    return path


def _tunesmith(*args, code=0, timeout=900):
    proc = subprocess.run([sys.executable, "-m", "tunesmith", *args], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == code, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def one_loss(tmp_path_factory, tiny_llama_dir):
    """sft (3 steps, eval rows cut at max_length 48), then `baseline` and `eval --adapter` with the same config."""
    root = tmp_path_factory.mktemp("oneloss")
    data = _data(root / "d.jsonl", 40, long_every=3)
    cfg = root / "cfg.yaml"
    cfg.write_text(
        json.dumps(
            {
                "model": {"name": str(tiny_llama_dir), "dtype": "float32"},
                "data": {"path": str(data), "eval_fraction": 0.3},
                "train": {
                    "output_dir": str(root / "run"),
                    "max_steps": 3,
                    "max_length": 48,
                    "per_device_train_batch_size": 4,
                    "per_device_eval_batch_size": 5,
                    "eval_steps": 2,
                    "logging_steps": 1,
                    "save_strategy": "no",
                    "learning_rate": 1e-2,
                },
                "eval": {"num_samples": 2, "max_new_tokens": 4, "metrics": ["exact_match", "eval_loss", "perplexity"]},
            }
        )
    )
    sft = _tunesmith("sft", str(cfg))
    # baseline and eval in this process (CliRunner: its stderr is no terminal either), to keep the test short
    base = _cli("baseline", str(cfg), "--output", str(root / "base"))
    ev = _cli("eval", str(cfg), "--adapter", str(root / "run" / "adapter"), "--output", str(root / "eval"))
    return root, cfg, sft, base, ev


def _cli(*args):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, res.output[-3000:]
    return res


def test_sft_eval_loss_equals_baseline_and_eval_on_the_same_truncated_rows(one_loss, smol_tokenizer):
    root, cfg, *_ = one_loss
    sft = json.loads((root / "run" / "metrics.json").read_text())
    base = json.loads((root / "base" / "metrics.json").read_text())
    ev = json.loads((root / "eval" / "metrics.json").read_text())
    assert sft["data"]["eval"]["truncated"] > 0  # the rows really are cut at max_length
    assert ev["eval_loss_rows"]["max_length"] == 48 and ev["eval_loss_rows"]["rows"] == sft["data"]["eval"]["kept"]
    assert ev["eval_loss_rows"]["trained_tokens"] == sft["data"]["eval"]["trained_tokens"]
    # the untrained model: sft's before-training figure is the baseline's; the trained one: sft's is eval's
    assert sft["eval_loss_before"] == pytest.approx(base["task_metrics"]["eval_loss"], abs=1e-5)
    assert sft["eval_loss"] == pytest.approx(ev["task_metrics"]["eval_loss"], abs=1e-5)
    assert sft["eval_loss"] < sft["eval_loss_before"] - 0.01  # training changed it: the equality is not trivial
    assert sft["perplexity"] == pytest.approx(ev["task_metrics"]["perplexity"], rel=1e-5)
    # the in-training evaluation (step 2) and the final one (step 3) went through the same function and are logged
    log = [json.loads(line) for line in (root / "run" / "log_history.jsonl").read_text().splitlines()]
    evals = {e["step"]: e for e in log if "eval_loss" in e}
    assert set(evals) == {2, 3} and all(e["eval_rows"] == sft["data"]["eval"]["kept"] for e in evals.values())
    assert evals[3]["eval_loss"] == sft["eval_loss"]


def test_eval_rows_are_the_training_rows_cut_at_max_length(one_loss, smol_tokenizer):
    """A cut row scores only the trained tokens before max_length: its per-row token count equals the rendered,
    truncated row's (a full-sequence score would count more)."""
    from tunesmith.config.load import load_config
    from tunesmith.data.conversations import load_sft_data

    root, cfg, *_ = one_loss
    _, evals, _ = load_sft_data(load_config(cfg))
    rows = [json.loads(line) for line in (root / "eval" / "predictions.jsonl").read_text().splitlines()]
    kept, stats = render_all(smol_tokenizer, evals, 48)
    by_index = dict(zip(stats.kept_index, kept))
    cut = 0
    for i, (row, conv) in enumerate(zip(rows, evals)):
        full = render_conversation(smol_tokenizer, conv)
        want = by_index[i].num_trained if i in by_index else 0
        assert row["reference_tokens"] == want
        cut += full.num_trained > want
    assert cut > 0


def test_progress_lines_and_the_plan_appear_without_a_terminal(one_loss):
    root, _, sft, base, ev = one_loss
    err = sft.stderr
    plan = next(line for line in err.splitlines() if line.startswith("plan:"))
    assert plan.startswith("plan: 3 optimizer steps of 4 rows (max_length 48;") and "s per step, so training" in plan
    after = err[err.index("plan:") :].splitlines()[1]
    assert (
        after.startswith("  after training: eval_loss on 12 eval rows (about ") and "2 sample replies (about" in after
    )
    assert "in all about" in err
    assert "eval_loss: 12/12 rows (100%)" in err and "tokens/s" in err  # before and after training
    assert err.count("eval_loss: 12/12 rows (100%)") == 2  # in-training evaluations show in the train lines instead
    assert "samples before: 2/2 prompts (100%)" in err and "samples after: 2/2 prompts (100%)" in err
    assert "train: 3/3 steps (100%)" in err and "ETA" in err
    assert (root / "run" / "run.log").read_text().count("eval_loss: 12/12 rows") == 2  # also in the run's log
    for res in (base, ev):
        assert "generate: 12/12 examples (100%)" in res.output and "eval_loss: 12/12 rows (100%)" in res.output
        assert "ETA 0s" in res.output


def _sft_config(root, tiny_llama_dir, **sections):
    cfg = {
        "model": {"name": str(tiny_llama_dir), "dtype": "float32"},
        "data": {"path": str(_data(root / "d.jsonl", 24, long_every=1))},
        "train": {"output_dir": str(root / "run"), "max_steps": 1, "save_strategy": "no", "max_length": 256},
        "eval": {"num_samples": 0},
    }
    for section, values in sections.items():
        cfg[section].update(values)
    path = root / "cfg.yaml"
    path.write_text(json.dumps(cfg))
    return path


def test_no_eval_split_switches_evaluation_off_and_says_so(tmp_path, tiny_llama_dir):
    cfg = _sft_config(tmp_path, tiny_llama_dir, data={"eval_fraction": 0.0}, train={"eval_steps": 1})
    proc = _tunesmith("sft", str(cfg))
    assert "warning: no eval rows (data.eval_fraction=0.0 of data.path=" in proc.stderr  # one line, not wrapped
    assert "train.eval_strategy=steps is switched off for this run" in proc.stderr
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["global_step"] == 1 and m["eval_loss"] is None and m["eval_loss_before"] is None
    assert "warning: no eval rows" in (tmp_path / "run" / "run.log").read_text()


def test_no_eval_split_with_the_decision_order_stops_before_any_model_loads(tmp_path, tiny_llama_dir):
    cfg = _sft_config(tmp_path, tiny_llama_dir, data={"eval_fraction": 0.0}, eval={"baseline": True})
    proc = _tunesmith("sft", str(cfg), code=2)
    assert "No eval examples for the decision order" in proc.stderr
    assert "data.eval_fraction=0.0 of data.path=" in proc.stderr and "Loading weights" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_eval_rows_all_truncated_away_stop_with_the_source_max_length_and_counts(tmp_path, tiny_llama_dir):
    """Every eval reply is long: with data.truncation=drop at max_length 20 nothing is left to evaluate."""
    cfg = _sft_config(
        tmp_path,
        tiny_llama_dir,
        data={"eval_fraction": 0.25, "truncation": "drop"},
        train={"max_length": 40, "eval_steps": 1},
    )
    proc = _tunesmith("sft", str(cfg), code=2)
    err = " ".join(proc.stderr.split())
    assert "No eval row is left after truncation" in err
    assert "data.eval_fraction=0.25 of data.path=" in err
    assert "all 6 eval conversations are dropped at train.max_length=40 (data.truncation=drop: 6 longer" in err
    assert "raise train.max_length (to " in err
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_truncation_error_policy_lists_the_long_examples(tmp_path, tiny_llama_dir):
    cfg = _sft_config(tmp_path, tiny_llama_dir, data={"truncation": "error"}, train={"max_length": 40})
    proc = _tunesmith("sft", str(cfg), code=2)
    err = " ".join(proc.stderr.split())
    assert "Conversations longer than max_length (data.truncation=error)" in err
    assert f"{tmp_path / 'd.jsonl'}:1: longer than max_length 40" in err
    assert "data.truncation=error, train.max_length=40:" in err and "examples are longer" in err


def test_truncation_warning_at_sft_start(tmp_path, tiny_llama_dir):
    cfg = _sft_config(tmp_path, tiny_llama_dir, train={"max_length": 40, "eval_strategy": "no"})
    proc = _tunesmith("sft", str(cfg))
    line = next(x for x in proc.stderr.splitlines() if x.startswith("truncation warning:"))  # one line
    assert re.match(r"truncation warning: max_length 40: (\d+) of \1 examples \(100.0%\) are longer and cut", line)
    assert "would keep 95% of the examples" in line
