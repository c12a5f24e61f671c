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
    again = write_report(list(runs), tmp_path / "report.html", echo=False)  # never overwritten without asking
    assert again["html"] == tmp_path / "report-2.html" and (tmp_path / "report.html").read_text() == html
    assert write_report(list(runs), tmp_path / "report.html", echo=False)["html"] == tmp_path / "report-3.html"
    replaced = write_report(list(runs), tmp_path / "report.html", echo=False, overwrite=True)
    assert replaced["html"] == tmp_path / "report.html"


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
    """The high-water mark restarts from the current RSS. The 200 MiB block is an anonymous mmap, so closing it
    returns every page to the OS (a freed numpy array may stay in malloc's heap and keep the RSS up)."""
    import mmap

    from tunesmith.runtime.memory import peak_memory_bytes, reset_peak_memory

    size = 200 * 2**20
    reset_peak_memory()
    start = peak_memory_bytes()
    block = mmap.mmap(-1, size)
    for _ in range(size // 2**20):
        block.write(b"\x01" * 2**20)  # every page touched, so resident
    high = peak_memory_bytes()
    assert high >= start + 180 * 2**20
    block.close()
    reset_peak_memory()
    assert peak_memory_bytes() <= high - 150 * 2**20


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


def _label_run(path, kind, method, preds, refs, names=("ham", "spam")):
    path.mkdir(parents=True)
    rows = [
        {"id": i, "prompt": f"t{i}", "prediction": p, "reference": r, "scores": {"accuracy": float(p == r)}}
        for i, (p, r) in enumerate(zip(preds, refs))
    ]
    (path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    acc = sum(p == r for p, r in zip(preds, refs)) / len(refs)
    from tunesmith.evaluate.stats import macro_f1

    f1 = macro_f1(refs, preds, labels=list(names))
    (path / "metrics.json").write_text(
        json.dumps(
            {
                "kind": kind,
                "method": method,
                "model": "m",
                "task": "classification",
                "labels": list(names),
                "task_metrics": {"accuracy": acc, "macro_f1": f1},
            }
        )
    )
    return path


def test_label_task_gets_majority_and_uniform_references_and_flags_prompting_below(tmp_path):
    """7 ham, 1 spam: always "ham" scores 0.875; prompting that says "spam" every time scores 0.125 and is
    flagged."""
    refs = ["ham"] * 7 + ["spam"]
    prompt = _label_run(tmp_path / "p", "baseline", "prompting", ["spam"] * 8, refs)
    head = _label_run(tmp_path / "h", "classify", "head", refs, refs)
    rep = write_report([prompt, head], tmp_path / "r.html", echo=False)
    major, uniform = rep["references"]
    assert major.name == "majority class ('ham')" and major.values["accuracy"] == 0.875
    # macro-F1 of always "ham": ham F1 = 2*7/(7+8) = 14/15, spam 0 -> 7/15
    assert major.values["macro_f1"] == pytest.approx(7 / 15)
    assert uniform.name == "uniform random guess (1 of 2)" and uniform.values["accuracy"] == 0.5
    # expected counts: ham 2*(7/2)/(7+4) = 7/11, spam 2*(1/2)/(1+4) = 1/5
    assert uniform.values["macro_f1"] == pytest.approx((7 / 11 + 1 / 5) / 2)
    lo, hi = major.ci["accuracy"]
    assert lo <= 0.875 <= hi
    flags = rep["flags"]
    assert flags[0] == (
        "prompting scores accuracy 0.125, below the trivial reference majority class ('ham') (0.875): prompting does "
        "worse than not using the model"
    )
    assert any("uniform random guess (1 of 2)" in f and "accuracy" in f for f in flags)
    assert not any(f.startswith("head") for f in flags)  # only prompting runs are flagged
    assert rep["verdict_lines"][: len(flags)] == flags
    html = rep["html"].read_text()
    assert "reference: majority class (&#x27;ham&#x27;)" in html and "class='flag'" in html


def test_without_targets_the_best_run_per_metric_and_whether_its_interval_separates_it(runs, tmp_path):
    base, sft = runs
    rep = build_report([base, sft], {})
    best = [line for line in rep["verdict_lines"] if line.startswith("json_schema:")][0]
    assert best.startswith("json_schema: best SFT 0.800, ahead of prompting, zero-shot by 0.400 (95% CI")
    assert best.endswith("separated)")  # paired: 12 wins, 4 losses of 20
    loss = [line for line in rep["verdict_lines"] if line.startswith("eval_loss:")][0]
    assert loss.startswith("eval_loss: best SFT 1.300") and "separated" in loss
    assert rep["verdict"] == "No targets set (eval.targets or --target): the best run per metric is listed above."
    # two near-identical runs: not separated
    twin = _write_run(tmp_path / "twin", "eval", "twin", [0, 1, 0, 1, 1] * 4, [3.0, 2.0, 2.0, 3.0, 2.5] * 4)
    rep = build_report([base, twin], {})
    line = [x for x in rep["verdict_lines"] if x.startswith("json_schema:")][0]
    assert line.startswith("json_schema: best twin 0.600") and "not separated" in line


def test_generation_references_copy_the_prompt_and_empty_answer_where_above_zero(tmp_path):
    path = tmp_path / "g"
    path.mkdir()
    rows = [
        {"id": i, "input": q, "prompt": q, "prediction": "x", "reference": r, "scores": {"contains": 0.0, "chrf": 0.1}}
        for i, (q, r) in enumerate([("Say hi", "hi"), ("Repeat: tea", "tea"), ("2+2?", "4"), ("Name?", "Bob")])
    ]
    (path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / "metrics.json").write_text(
        json.dumps({"kind": "baseline", "method": "prompting", "task_metrics": {"contains": 0.0, "chrf": 0.1}})
    )
    rep = build_report([path], {})
    (copy,) = rep["references"]  # the empty answer scores 0 on both metrics: not shown
    assert copy.name == "copy the prompt" and copy.values["contains"] == 0.5  # "hi" in "say hi", "tea" in "...tea"
    assert copy.values["chrf"] > 0.1
    assert any(
        f.startswith("prompting scores contains 0.000, below the trivial reference copy the prompt")
        for f in rep["flags"]
    )


def test_no_reference_is_made_up_without_the_run_metric_options(tmp_path):
    """A run dir without `scoring` (written before it existed): a regex metric cannot be re-scored (the empty answer
    would full-match an empty pattern), so no trivial reference is shown for it."""
    path = tmp_path / "old"
    path.mkdir()
    rows = [{"id": i, "prompt": "p", "prediction": "x", "reference": "y", "scores": {"regex": 0.0}} for i in range(4)]
    (path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / "metrics.json").write_text(json.dumps({"kind": "baseline", "task_metrics": {"regex": 0.0}}))
    assert build_report([path], {})["references"] == []
    metrics = json.loads((path / "metrics.json").read_text())
    metrics["scoring"] = {"regex": r"\d+"}
    (path / "metrics.json").write_text(json.dumps(metrics))
    assert build_report([path], {})["references"] == []  # with its pattern: the empty answer scores 0, not shown
