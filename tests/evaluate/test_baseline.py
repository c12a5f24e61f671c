"""Decision order: the shared eval step, baseline/eval identity, eval_loss, and the end-to-end CLI on a tiny
Llama."""

import json

import pytest
import torch

from conftest import REPO
from tunesmith.data.bundled import SCHEMA, SYSTEM_PROMPT
from tunesmith.data.records import Conversation, Message
from tunesmith.evaluate.generative import build_examples, loss_rows
from tunesmith.evaluate.loss import row_losses
from tunesmith.render.templates import IGNORE_INDEX, render_conversation


def _conv(user, reply, src):
    return Conversation([Message("system", "Be brief."), Message("user", user), Message("assistant", reply)], src)


TRAIN = [_conv(f"question {i}", f"answer {i}", f"train#{i}") for i in range(6)]
EVAL = [_conv("What is 2+2?", '{"a": 4}', "eval#0"), _conv("Name a colour.", "Blue, I think.", "eval#1")]


def test_prompt_ids_are_the_training_context(smol_tokenizer):
    """The prompt is exactly the rendered conversation up to the reply: the tokens the model is trained to continue."""
    examples = build_examples(smol_tokenizer, EVAL)
    for ex in examples:
        r = render_conversation(smol_tokenizer, ex.conversation)
        n = len(ex.prompt_ids)
        assert r.input_ids[:n] == ex.prompt_ids
        assert all(x == IGNORE_INDEX for x in r.labels[:n]) and r.labels[n] != IGNORE_INDEX
        assert smol_tokenizer.decode(ex.prompt_ids).endswith("<|im_start|>assistant\n")
    assert [ex.id for ex in examples] == ["eval#0", "eval#1"] and examples[1].reference == "Blue, I think."


def test_k_shot_demonstrations_follow_the_system_turn(smol_tokenizer):
    a = build_examples(smol_tokenizer, EVAL, TRAIN, k_shot=2, seed=7)
    b = build_examples(smol_tokenizer, EVAL, TRAIN, k_shot=2, seed=7)
    assert [x.prompt_ids for x in a] == [x.prompt_ids for x in b]  # seeded
    roles = [m.role for m in a[0].conversation.messages]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user", "assistant"]
    demos = [m.content for m in a[0].conversation.messages[1:5]]
    assert demos == [m.content for m in a[1].conversation.messages[1:5]]  # the same demonstrations for every example
    assert all(d in {f"question {i}" for i in range(6)} | {f"answer {i}" for i in range(6)} for d in demos)
    # only the final reply is scored: demonstration replies are weight 0
    r = render_conversation(smol_tokenizer, a[0].conversation)
    trained = smol_tokenizer.decode([t for t in r.labels if t != IGNORE_INDEX])
    assert trained == '{"a": 4}<|im_end|>'


def test_row_loss_equals_transformers_loss(tiny_llama_dir, smol_tokenizer):
    """Batched, right-padded row NLL / tokens equals the model's own mean loss on each example alone."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    rows = loss_rows(smol_tokenizer, EVAL, 256)
    got = row_losses(model, rows, pad_id=smol_tokenizer.pad_token_id, batch_size=2)
    for r, (nll, n) in zip(rows, got):
        with torch.no_grad():
            want = model(input_ids=torch.tensor([r.input_ids]), labels=torch.tensor([r.labels])).loss.item()
        assert n == sum(1 for t in r.labels if t != IGNORE_INDEX)  # labels are shifted by one: every trained token
        assert nll / n == pytest.approx(want, abs=1e-4)


def _cli(*args, code=0):
    """Run the CLI in-process (no interpreter start-up); returns the click Result."""
    from typer.testing import CliRunner

    from tunesmith.cli import app

    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == code, res.output[-3000:]
    return res


@pytest.fixture(scope="module")
def decision_run(tmp_path_factory, tiny_llama_dir):
    """`tunesmith sft` with eval.baseline on the tiny Llama: baseline (zero- and 1-shot) -> 2 SFT steps -> eval ->
    report."""
    root = tmp_path_factory.mktemp("decision")
    cfg = root / "cfg.yaml"
    cfg.write_text(
        json.dumps(
            {
                "model": {"name": str(tiny_llama_dir)},
                "data": {"name": "chatterbot_json", "max_train_examples": 16, "max_eval_examples": 6},
                "train": {
                    "output_dir": str(root / "run"),
                    "max_steps": 2,
                    "per_device_train_batch_size": 4,
                    "eval_strategy": "no",
                    "save_strategy": "no",
                    "logging_steps": 1,
                    "learning_rate": 1e-3,
                },
                "eval": {
                    "baseline": True,
                    "before_training": False,
                    "num_samples": 0,
                    "max_new_tokens": 6,
                    "k_shot": 1,
                    "label_field": "topic",
                    "metrics": [
                        "json_valid",
                        "json_schema",
                        "label_accuracy",
                        "label_macro_f1",
                        "exact_match",
                        "contains",
                        "rouge_l",
                        "chrf",
                        "eval_loss",
                        "perplexity",
                    ],
                    "json_schema": SCHEMA,
                    "targets": {"json_schema": 0.95},
                },
            }
        )
    )
    _cli("sft", str(cfg))
    return cfg, root / "run"


def _rows(path):
    return [json.loads(line) for line in (path / "predictions.jsonl").read_text().splitlines()]


def test_sft_writes_baseline_eval_and_report(decision_run):
    _, run = decision_run
    for sub in ("baseline", "baseline-1shot", "eval"):
        m = json.loads((run / sub / "metrics.json").read_text())
        assert set(m["task_metrics"]) == {
            "json_valid",
            "json_schema",
            "label_accuracy",
            "label_macro_f1",
            "exact_match",
            "contains",
            "rouge_l",
            "chrf",
            "eval_loss",
            "perplexity",
        }
        assert m["eval_examples"] == 6 and m["cost"]["parameters"] > 0 and m["cost"]["generation_tokens_per_second"] > 0
        assert m["kind"] == ("eval" if sub == "eval" else "baseline")
    assert json.loads((run / "eval" / "metrics.json").read_text())["cost"]["trainable_parameters"] > 0
    html = (run / "report.html").read_text()
    assert (
        "Verdict:" in html and "json_schema ≥ 0.95: prompting, zero-shot" in html and "data:image/png;base64," in html
    )
    assert (run / "metrics.json").is_file() and (run / "adapter" / "adapter_config.json").is_file()


def test_baseline_and_eval_use_identical_examples_and_prompts(decision_run):
    _, run = decision_run
    base, ev, kshot = _rows(run / "baseline"), _rows(run / "eval"), _rows(run / "baseline-1shot")
    assert [r["id"] for r in base] == [r["id"] for r in ev] == [r["id"] for r in kshot]
    assert [r["prompt_ids_sha256"] for r in base] == [r["prompt_ids_sha256"] for r in ev]
    assert [r["prompt"] for r in base] == [r["prompt"] for r in ev]
    assert all(SYSTEM_PROMPT in r["prompt"] for r in base)
    assert all(
        a["prompt_ids_sha256"] != b["prompt_ids_sha256"] for a, b in zip(base, kshot)
    )  # k-shot prompts are longer
    assert [r["reference"] for r in base] == [r["reference"] for r in ev]
    # the adapter changed the model: reference likelihood differs
    assert any(abs(a["scores"]["eval_loss"] - b["scores"]["eval_loss"]) > 1e-4 for a, b in zip(base, ev))


def test_standalone_commands_reproduce_the_sft_numbers(decision_run, tmp_path):
    """`tunesmith baseline` and `tunesmith eval --adapter` (same config, same seed) reproduce the in-sft runs
    exactly."""
    cfg, run = decision_run
    from tunesmith.config.load import load_config
    from tunesmith.evaluate.baseline import run_baseline, run_eval

    config = load_config(cfg, ["eval.k_shot=0"])
    run_baseline(config, output=tmp_path / "b")
    run_eval(config, adapter=run / "adapter", output=tmp_path / "e")
    for mine, theirs in ((tmp_path / "b", run / "baseline"), (tmp_path / "e", run / "eval")):
        a, b = _rows(mine), _rows(theirs)
        assert [r["prediction"] for r in a] == [r["prediction"] for r in b]
        assert [r["prompt_ids_sha256"] for r in a] == [r["prompt_ids_sha256"] for r in b]
        for x, y in zip(a, b):
            assert x["scores"] == pytest.approx(y["scores"], abs=1e-5)


def test_report_cli_reruns_and_refusals(decision_run, tmp_path):
    _, run = decision_run
    out = tmp_path / "r.html"
    res = _cli("report", str(run / "baseline"), str(run / "eval"), "--output", str(out), "--target", "json_valid=0.5")
    assert "verdict:" in res.output and out.is_file() and "json_valid ≥ 0.5" in out.read_text()
    again = _cli("report", str(run / "baseline"), "--output", str(out))  # runs again: the first report is kept
    assert (tmp_path / "r-2.html").is_file() and "json_valid ≥ 0.5" in out.read_text()
    assert f"report: {tmp_path / 'r-2.html'} ({out} exists and is kept; --overwrite replaces it)" in " ".join(
        again.output.split()
    )
    missing = _cli("eval", "--model", str(tmp_path / "nope"), "--output", str(tmp_path / "e"), code=2)
    assert "Model path not found" in missing.output and not (tmp_path / "e").exists()
    misaligned = _cli(
        "report", str(run / "baseline"), str(tmp_path / "nothing"), "--output", str(tmp_path / "x.html"), code=2
    )
    assert "Not an evaluated run dir" in misaligned.output


def test_same_seed_reproduces_the_fine_tuned_numbers(decision_run, tmp_path):
    """A second SFT run with the same seed (without the baseline step) gives a bit-identical adapter and identical eval
    predictions."""
    from safetensors.torch import load_file

    from tunesmith.config.load import load_config
    from tunesmith.evaluate.baseline import run_eval
    from tunesmith.train.sft import run_sft

    cfg, run = decision_run
    again = tmp_path / "again"
    config = load_config(
        cfg, [f"train.output_dir={again}", "eval.baseline=false"]
    )  # the baseline step must not perturb training
    run_sft(config)
    a, b = (
        load_file(run / "adapter" / "adapter_model.safetensors"),
        load_file(again / "adapter" / "adapter_model.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    run_eval(config, adapter=again / "adapter", output=tmp_path / "e")
    mine, theirs = _rows(tmp_path / "e"), _rows(run / "eval")
    assert [r["prediction"] for r in mine] == [r["prediction"] for r in theirs]
    assert [r["prompt_ids_sha256"] for r in mine] == [r["prompt_ids_sha256"] for r in theirs]
    m1, m2 = (json.loads((p / "metrics.json").read_text())["task_metrics"] for p in (tmp_path / "e", run / "eval"))
    assert m1 == pytest.approx(m2, abs=1e-6)


@pytest.mark.slow
def test_shipped_example_prompting_falls_short_and_sft_meets_the_target(tmp_path):
    """The shipped decision-order example end to end on the embedded SmolLM2-135M-Instruct (about 20 min on 2 busy
    cores)."""

    config = REPO / "configs" / "sft" / "decision-chatterbot-json.yaml"
    run = tmp_path / "run"
    _cli("sft", str(config), "--set", f"train.output_dir={run}")
    base = json.loads((run / "baseline" / "metrics.json").read_text())["task_metrics"]
    sft = json.loads((run / "eval" / "metrics.json").read_text())["task_metrics"]
    assert base["json_schema"] < 0.95 <= sft["json_schema"], (base, sft)
    assert (
        "Prompting falls short; SFT (LoRA adapter) meets every target. Fine-tune." in (run / "report.html").read_text()
    )


def test_custom_metric_runs_in_baseline_and_is_recorded_in_the_manifest(decision_run, tmp_path, monkeypatch):
    from conftest import FIXTURES
    from tunesmith.config.load import load_config
    from tunesmith.evaluate.baseline import run_baseline

    monkeypatch.syspath_prepend(str(FIXTURES / "metric_hooks"))
    import tunesmith_test_hooks

    tunesmith_test_hooks.CALLS.clear()
    cfg, _ = decision_run
    name = "tunesmith_test_hooks:same_length"
    config = load_config(cfg, ["eval.k_shot=0", f"eval.metrics=[exact_match, '{name}']", "eval.targets={}"])
    (out,) = run_baseline(config, output=tmp_path / "b")
    rows = _rows(out)
    assert all(name in r["scores"] for r in rows)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task_metrics"][name] == pytest.approx(sum(r["scores"][name] for r in rows) / len(rows))
    (hook,) = json.loads((out / "manifest.json").read_text())["custom_metrics"]
    assert hook["name"] == name and hook["module_file"].endswith("tunesmith_test_hooks.py") and hook["sha256"]
    # called once per example with what the example is: its id, last user turn, turns before the reference
    assert [c[2]["id"] for c in tunesmith_test_hooks.CALLS] == [r["id"] for r in rows]
    pred, ref, example = tunesmith_test_hooks.CALLS[0]
    assert pred == rows[0]["prediction"] and ref == rows[0]["reference"] == example["reference"]
    assert example["prompt"] == rows[0]["input"] and example["messages"][-1] == {
        "role": "user",
        "content": rows[0]["input"],
    }
    # a hook that cannot be imported stops before any model loads or any folder is made
    res = _cli(
        "baseline",
        str(cfg),
        "--set",
        "eval.metrics=['no_such_mod:f']",
        "--set",
        "eval.targets={}",
        "--output",
        str(tmp_path / "x"),
        code=2,
    )
    assert "Cannot import a custom metric" in res.output and not (tmp_path / "x").exists()


def _bfcl_files(root):
    """Four BFCL-shaped questions (two functions) and their possible_answer file."""
    fns = {
        "get_weather": {"type": "dict", "required": ["city"], "properties": {"city": {"type": "string"}}},
        "add": {"type": "dict", "required": ["a", "b"], "properties": {"a": {"type": "float"}, "b": {"type": "float"}}},
    }
    qs, ans = [], []
    for k, (fn, question, truth) in enumerate(
        [
            ("get_weather", "Weather in Oslo?", {"city": ["Oslo"]}),
            ("add", "Add 2 and 3.", {"a": [2.0], "b": [3.0]}),
            ("get_weather", "Is it raining in Rome?", {"city": ["Rome", "Roma"]}),
            ("add", "What is 1.5 plus 4?", {"a": [1.5], "b": [4.0]}),
        ]
    ):
        qs.append(
            {
                "id": f"live_simple_{k}",
                "question": [[{"role": "user", "content": question}]],
                "function": [{"name": fn, "description": fn, "parameters": fns[fn]}],
            }
        )
        ans.append({"id": f"live_simple_{k}", "ground_truth": [{fn: truth}]})
    (root / "possible_answer").mkdir()
    q = root / "BFCL_v4_live_simple.json"
    q.write_text("\n".join(json.dumps(x) for x in qs))
    (root / "possible_answer" / q.name).write_text("\n".join(json.dumps(x) for x in ans) + "\n")
    return q


def test_bfcl_examples_reference_calls_and_k_shot_tools(tmp_path, smol_tokenizer):
    from tunesmith.data.conversations import load_file
    from tunesmith.render.chat_templates import resolve_chat_template

    convs, _ = load_file(_bfcl_files(tmp_path))
    template = resolve_chat_template("chatml-tools")
    (ex,) = build_examples(smol_tokenizer, convs[2:3], chat_template=template)
    assert ex.reference == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'
    assert ex.expected_calls == [{"get_weather": {"city": ["Rome", "Roma"]}}]  # the whole ground truth is the reference
    (shot,) = build_examples(smol_tokenizer, convs[2:3], convs[1:2], k_shot=1, chat_template=template)
    assert [t["function"]["name"] for t in shot.conversation.tools] == ["get_weather", "add"]  # own first, then demo's
    assert [m.role for m in shot.conversation.messages] == ["user", "assistant", "user", "assistant"]
    assert shot.conversation.messages[1].tool_calls[0].name == "add" and shot.conversation.messages[1].weight == 0
    text = smol_tokenizer.decode(shot.prompt_ids)
    assert text.endswith("Is it raining in Rome?<|im_end|>\n<|im_start|>assistant\n") and '"name": "add"' in text


def test_bfcl_baseline_cli_scores_tool_calls(tmp_path, tiny_llama_dir):
    """`tunesmith baseline` on BFCL data (zero- and 1-shot) writes the tool metrics and each reply's parsed calls and
    AST verdict; `tunesmith report` compares them."""
    q = _bfcl_files(tmp_path)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        json.dumps(
            {
                "model": {"name": str(tiny_llama_dir), "chat_template": "chatml-tools"},
                "data": {"name": None, "path": str(q), "format": "bfcl", "eval_fraction": 0.5},
                "train": {"output_dir": str(tmp_path / "run")},
                "eval": {
                    "max_new_tokens": 4,
                    "k_shot": 1,
                    "metrics": ["tool_call_ast", "tool_name_accuracy", "tool_call_valid_json", "eval_loss"],
                },
            }
        )
    )
    _cli("baseline", str(cfg))
    for sub in ("run-baseline", "run-baseline-1shot"):
        m = json.loads((tmp_path / sub / "metrics.json").read_text())
        assert m["eval_examples"] == 2 and m["task_metrics"]["tool_call_ast"] == 0.0  # a random model calls nothing
        assert m["task_metrics"]["tool_call_valid_json"] == 0.0 and m["task_metrics"]["eval_loss"] > 0
        rows = _rows(tmp_path / sub)
        assert all(r["tool_calls"] == [] and r["tool_call_error"] == "0 call(s), expected 1" for r in rows)
        assert all(r["reference"].startswith("<tool_call>\n{") for r in rows)
    res = _cli("report", str(tmp_path / "run-baseline"), str(tmp_path / "run-baseline-1shot"))
    assert "tool_call_ast" in res.output
