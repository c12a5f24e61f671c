"""Decision report: bootstrap CIs, wins/losses, verdict text and HTML, on hand-made run dirs."""

import json
import re

import pytest

from tunesmith.errors import DataError
from tunesmith.evaluate.report import build_report, meets, parse_targets, wins_losses, write_report


def _write_run(path, kind, method, schema_scores, losses, labels=None):
    path.mkdir(parents=True)
    rows = []
    for i, (s, l) in enumerate(zip(schema_scores, losses)):  # noqa: E741
        row = {
            "id": f"ex{i}",
            "prompt": f"p{i}",
            "prediction": "x",
            "reference": "y",
            "prompt_ids_sha256": f"h{i}",
            "scores": {"json_schema": float(s), "eval_loss": l},
            "reference_tokens": 2,
        }
        if labels:
            row["labels"] = {"prediction": labels[0][i], "reference": labels[1][i]}
        rows.append(row)
    (path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = {"json_schema": sum(schema_scores) / len(schema_scores), "eval_loss": sum(losses) / len(losses)}
    if labels:
        task["label_macro_f1"] = 0.0
    (path / "metrics.json").write_text(
        json.dumps(
            {
                "kind": kind,
                "method": method,
                "model": "m",
                "task_metrics": task,
                "targets": {"json_schema": 0.95},
                "cost": {
                    "parameters": 100,
                    "trainable_parameters": 0,
                    "generation_tokens_per_second": 12.5,
                    "peak_memory_bytes": 2**30,
                },
            }
        )
    )
    return path


@pytest.fixture
def runs(tmp_path):
    base = _write_run(
        tmp_path / "base", "baseline", "prompting, zero-shot", [1, 0, 1, 0, 0] * 4, [3.0, 2.0, 2.0, 3.0, 2.5] * 4
    )
    sft = _write_run(tmp_path / "sft", "eval", "SFT", [1, 1, 0, 1, 1] * 4, [1.0, 1.0, 2.0, 1.0, 1.5] * 4)
    return base, sft


def test_wins_losses_hand_counted(runs):
    rep = build_report(list(runs))
    base, sft = rep["runs"]
    # per 5 examples: (1,1) tie, (0,1) win, (1,0) loss, (0,1) win, (0,1) win -> x4
    assert wins_losses(base, sft, "json_schema") == (12, 4, 4)
    # eval_loss, lower is better: 3->1 win, 2->1 win, 2->2 tie, 3->1 win, 2.5->1.5 win
    assert wins_losses(base, sft, "eval_loss") == (16, 0, 4)


def test_bootstrap_is_seeded_and_contains_the_point_estimate(runs):
    a, b = build_report(list(runs), seed=3), build_report(list(runs), seed=3)
    c = build_report(list(runs), seed=4)
    for ra, rb, rc in zip(a["runs"], b["runs"], c["runs"]):
        assert ra.ci == rb.ci and ra.delta_ci == rb.delta_ci
        assert ra.ci != rc.ci
        for name, (lo, hi) in ra.ci.items():
            assert lo <= ra.metrics["task_metrics"][name] <= hi
    sft = a["runs"][1]
    assert sft.delta_ci["json_schema"][0] <= 0.8 - 0.4 <= sft.delta_ci["json_schema"][1]
    assert sft.delta_ci["eval_loss"][1] < 0  # every resample: fine-tuned loss is lower


def test_verdict_text_and_html(runs, tmp_path):
    rep = write_report(list(runs), tmp_path / "report.html", echo=False)
    ci = r"\(95% CI \d\.\d{3}-\d\.\d{3}\)"
    assert re.fullmatch(
        f"json_schema ≥ 0.95: prompting, zero-shot 0.400 {ci}, not enough; SFT 0.800 {ci}, not enough",
        rep["verdict_lines"][0],
    )
    lo, hi = rep["runs"][1].ci["json_schema"]
    assert f"SFT 0.800 (95% CI {lo:.3f}-{hi:.3f})" in rep["verdict_lines"][0]
    assert rep["verdict"].startswith("No run meets every target")
    rep = build_report(list(runs), {"json_schema": 0.75})
    assert re.fullmatch(
        f"json_schema ≥ 0.75: prompting, zero-shot 0.400 {ci}, not enough; SFT 0.800 {ci}, meets the target",
        rep["verdict_lines"][0],
    )
    assert rep["verdict"] == "Prompting falls short; SFT meets every target. Fine-tune."
    rep = build_report([runs[0]], {"json_schema": 0.75})
    assert rep["verdict"].startswith("Prompting falls short of the targets: fine-tune")
    rep = build_report(list(runs), {"json_schema": 0.3, "eval_loss": 3.0})
    assert rep["verdict"].startswith("Prompting is enough: prompting, zero-shot meets every target")
    html = (tmp_path / "report.html").read_text()
    assert "Verdict:</b> No run meets every target" in html and html.count("data:image/png;base64,") == 2
    assert "wins 12 / losses 4 / ties 4" in html and "1,024 MiB" in html
    with pytest.raises(Exception, match="Report file exists"):
        write_report(list(runs), tmp_path / "report.html", echo=False)


def test_targets_direction_and_parsing():
    assert meets(0.95, "json_schema", 0.95) and not meets(0.94, "json_schema", 0.95)
    assert meets(1.9, "eval_loss", 2.0) and not meets(2.1, "perplexity", 2.0)
    assert parse_targets(["json_schema=0.95", "eval_loss=2"]) == {"json_schema": 0.95, "eval_loss": 2.0}
    with pytest.raises(Exception, match="Invalid --target"):
        parse_targets(["json_schema"])


def test_misaligned_runs_are_refused(tmp_path):
    a = _write_run(tmp_path / "a", "baseline", "p", [1, 0], [1.0, 1.0])
    b = _write_run(tmp_path / "b", "eval", "s", [1, 0, 1], [1.0, 1.0, 1.0])
    with pytest.raises(DataError) as exc:
        build_report([a, b])
    assert "2 examples" not in exc.value.problems[0].reason and "3 examples vs 2" in exc.value.problems[0].reason


def test_macro_f1_bootstrap_uses_labels(tmp_path):
    labels = (["a", "b", "a", None], ["a", "b", "b", "a"])
    a = _write_run(tmp_path / "a", "baseline", "p", [1, 0, 1, 0], [1.0] * 4, labels)
    rep = build_report([a])
    lo, hi = rep["runs"][0].ci["label_macro_f1"]
    assert 0.0 <= lo <= hi <= 1.0 and hi > 0


def test_fast_macro_f1_equals_sklearn():
    import numpy as np

    from tunesmith.evaluate.metrics import macro_f1
    from tunesmith.evaluate.stats import macro_f1_resampler

    rng = np.random.default_rng(0)
    refs = [str(x) for x in rng.integers(0, 4, 50)]
    preds = [str(x) if x < 5 else None for x in rng.integers(0, 6, 50)]
    f = macro_f1_resampler(refs, preds)
    for _ in range(20):
        idx = rng.integers(0, 50, 50)
        assert f(idx) == pytest.approx(macro_f1([refs[i] for i in idx], [preds[i] for i in idx]), abs=1e-12)


def test_peak_memory_is_measured_per_evaluation():
    import numpy as np

    from tunesmith.runtime.memory import peak_memory_bytes, reset_peak_memory

    big = np.ones(50 * 2**20 // 8)  # 50 MiB, touched
    high = peak_memory_bytes()
    del big
    reset_peak_memory()
    assert peak_memory_bytes() <= high - 40 * 2**20  # the high-water mark restarted from the current RSS


def test_classify_runs_follow_the_same_contract(tmp_path):
    """`tunesmith classify` run dirs (accuracy per example, macro_f1 from prediction/reference labels) are reported
    too."""
    refs, base_p, head_p = ["a", "b", "a", "c"] * 5, ["a", "a", "x", "c"] * 5, ["a", "b", "a", "b"] * 5
    for name, preds, kind in (("base", base_p, "baseline"), ("head", head_p, "classify")):
        d = tmp_path / name
        d.mkdir()
        rows = [
            {"id": i, "prompt": f"t{i}", "prediction": p, "reference": r, "scores": {"accuracy": float(p == r)}}
            for i, (p, r) in enumerate(zip(preds, refs))
        ]
        (d / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        acc = sum(p == r for p, r in zip(preds, refs)) / len(refs)
        (d / "metrics.json").write_text(
            json.dumps({"kind": kind, "model": "m", "task_metrics": {"accuracy": acc, "macro_f1": 0.5}})
        )
    rep = build_report([tmp_path / "base", tmp_path / "head"], {"accuracy": 0.7})
    base, head = rep["runs"]
    assert rep["wins"][(1, "accuracy")] == (
        10,
        5,
        5,
    )  # per 4: tie, win, win, loss and rep["wins"][(1, "macro_f1")] is None
    assert "macro_f1" in head.ci and rep["verdict"] == "Prompting falls short; classify meets every target. Fine-tune."
