"""Train = serve: a GSM8K-style adapter trained with a system prompt (and a named adapter) is served with exactly the
prompt ids it was trained on by every path: chat, generate, eval, merge, the GGUF and the Ollama Modelfile.

One `tunesmith sft` run on a tiny random Llama (a 325-token byte-level BPE with SmolLM2's chat template, so the GGUF
reads fast), then each serving path renders the run's own eval prompts, saved with the adapter in serving.json, and
must give the ids training rendered.

    .venv/bin/python -m pytest -q tests/use/test_served_as_trained.py
"""

import json
import os
import stat
import subprocess
import sys

import pytest
import yaml

from conftest import build_tiny_llama, tiny_bpe_tokenizer

SYSTEM = "Solve the problem step by step. End with #### <number>."
PROBLEMS = [
    ("Tom has 3 apples and buys 4 more. How many apples does he have?", "3 + 4 = 7\n#### 7"),
    ("A box holds 6 eggs. How many eggs are in 2 boxes?", "6 * 2 = 12\n#### 12"),
    ("Sara had 10 pencils and gave away 3. How many are left?", "10 - 3 = 7\n#### 7"),
    ("There are 5 cars with 4 wheels each. How many wheels?", "5 * 4 = 20\n#### 20"),
    ("A book costs $8. How much do 3 books cost?", "8 * 3 = 24\n#### 24"),
    ("Ben runs 2 km a day for 5 days. How far does he run?", "2 * 5 = 10\n#### 10"),
    ("Half of 18 students walk home. How many walk?", "18 / 2 = 9\n#### 9"),
    ("A pack has 12 cards; Mia uses 5. How many remain?", "12 - 5 = 7\n#### 7"),
]


def _cli(*args, timeout=900, **kw):
    """Run the CLI as a user does, under umask 022."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "tunesmith", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        preexec_fn=lambda: os.umask(0o022),
        **kw,
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory, smol_tokenizer):
    """`tunesmith sft` on GSM8K-style conversations (no system turn in the data) with data.system_prompt and
    lora.adapter_name=myada; 2 steps."""
    tmp = tmp_path_factory.mktemp("served")
    tiny_llama_dir = build_tiny_llama(tiny_bpe_tokenizer(smol_tokenizer.chat_template), tmp / "base")
    data = tmp / "gsm.jsonl"
    data.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n"
            for q, a in PROBLEMS
        )
    )
    out = tmp / "run"
    sets = {
        "model.name": tiny_llama_dir,
        "data.path": data,
        "data.eval_fraction": 0.5,
        "data.system_prompt": SYSTEM,
        "lora.adapter_name": "myada",
        "train.output_dir": out,
        "train.max_steps": 2,
        "train.max_length": 384,
        "train.per_device_train_batch_size": 2,
        "eval.num_samples": 1,
        "eval.max_new_tokens": 8,
    }
    proc = _cli("sft", *[x for k, v in sets.items() for x in ("--set", f"{k}={v}")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def _probes(run_dir):
    return json.loads((run_dir / "adapter" / "serving.json").read_text())["probes"]


def test_the_contract_is_saved_with_the_named_adapter(run):
    run_dir, proc = run
    adapter = run_dir / "adapter"
    assert (adapter / "myada" / "adapter_config.json").is_file()  # PEFT saves a named adapter one level down
    contract = json.loads((adapter / "serving.json").read_text())
    assert contract["system_prompt"] == SYSTEM  # '#' kept whole, not cut off as a YAML comment
    assert contract["end_of_turn"] == {"token": "<|im_end|>", "id": 2}
    assert contract["generation"] == {"do_sample": False, "max_new_tokens": 8}
    assert len(contract["probes"]) == 4 and all(p["messages"][0]["role"] == "user" for p in contract["probes"])
    for path in [adapter, adapter / "myada", *adapter.rglob("*"), *run_dir.glob("*.json*")]:  # umask 022
        assert stat.S_IMODE(path.stat().st_mode) == (0o755 if path.is_dir() else 0o644), path
    gen = json.loads((adapter / "generation_config.json").read_text())
    assert gen["do_sample"] is False and gen["max_new_tokens"] == 8
    assert "FutureWarning" not in proc.stderr  # the libraries' deprecations go to run.log
    assert "FutureWarning" in (run_dir / "run.log").read_text()


def test_chat_generate_eval_and_merge_render_the_training_prompt_ids(run, tmp_path):
    from tunesmith.config.load import load_config
    from tunesmith.data.records import Message
    from tunesmith.evaluate.baseline import evaluate_run
    from tunesmith.evaluate.generative import ids_digest
    from tunesmith.export.merge import run_merge
    from tunesmith.models.for_use import load_for_use
    from tunesmith.use.chat import ChatSession
    from tunesmith.use.generate import PromptRecord, record_prompt_ids

    run_dir, _ = run
    probes = _probes(run_dir)
    sent = [[Message(m["role"], m["content"]) for m in p["messages"]] for p in probes]
    trained = [p["prompt_ids"] for p in probes]
    loaded = load_for_use(str(run_dir))  # a run folder with a named adapter
    assert loaded.adapter_dir == run_dir / "adapter" / "myada" and loaded.serving.system_prompt == SYSTEM
    for msgs, ids in zip(sent, trained, strict=True):
        chat = ChatSession(loaded)
        chat.history = list(msgs)
        assert chat.prompt_ids() == ids  # chat
        assert chat.temperature == 0 and chat.max_new_tokens == 8  # greedy, the trained generation defaults
    records = [PromptRecord(p["source"], m) for p, m in zip(probes, sent)]
    assert record_prompt_ids(loaded, records) == trained  # generate
    other = record_prompt_ids(loaded, records, system="Answer in French.")  # a user's --system still wins
    assert other != trained and "Answer in French." in loaded.tokenizer.decode(other[0])
    # eval: a config without data.system_prompt evaluates with the trained one
    cfg_file = run_dir / "config.yaml"
    raw = yaml.safe_load(cfg_file.read_text())
    raw["data"]["system_prompt"] = None
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_config(tmp_path / "eval.yaml")
    evaluate_run(cfg, tmp_path / "eval", kind="eval", method="fine-tuned", adapter=run_dir)
    rows = [json.loads(x) for x in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert sorted(r["prompt_ids_sha256"] for r in rows) == sorted(ids_digest(i) for i in trained)
    # merge: the merged folder carries the contract and serves the same ids
    run_merge(str(run_dir), output=str(tmp_path / "merged"), log=lambda s: None)
    merged = load_for_use(str(tmp_path / "merged"))
    assert merged.serving.system_prompt == SYSTEM
    assert record_prompt_ids(merged, records) == trained


def test_gguf_and_modelfile_render_the_training_prompt_ids(run, tmp_path):
    from transformers import AutoTokenizer

    from tunesmith.export.consistency import render_go_template
    from tunesmith.export.gguf import run_export

    run_dir, _ = run
    report = run_export(
        str(run_dir), output=str(tmp_path / "m.gguf"), modelfile=True, stop_check=False, max_new_tokens=8, log=print
    )
    checks = {c["name"]: c for c in report["consistency"]["checks"]}
    for name in ("probe_ids_loaded", "probe_ids_saved_tokenizer", "probe_ids_gguf", "modelfile_eval_prompts"):
        assert checks[name]["ok"] and "4 of the run's eval prompts" in checks[name]["detail"], checks[name]
    assert checks["greedy_round_trip"]["ok"] and report["system_prompt"] == SYSTEM
    modelfile = (tmp_path / "Modelfile").read_text()
    assert f'SYSTEM """{SYSTEM}"""' in modelfile and "PARAMETER temperature 0" in modelfile
    tok = AutoTokenizer.from_pretrained(run_dir / "adapter")  # the GGUF's tokenizer gave the same ids (probe_ids_gguf)
    go = modelfile.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    for probe in _probes(run_dir):
        text = render_go_template(go, probe["messages"], SYSTEM)  # what Ollama renders
        assert tok(text, add_special_tokens=False)["input_ids"] == probe["prompt_ids"]


def test_chat_and_generate_from_the_command_line(run, tmp_path):
    """The user's path: `--model RUN` finds the named adapter; chat is greedy by default (two seeds, one reply);
    no library deprecation warning on the console."""
    run_dir, _ = run
    question = PROBLEMS[0][0]
    outs = []
    for seed in ("1", "2"):
        proc = _cli("chat", "--model", str(run_dir), "--seed", seed, input=f"{question}\n/exit\n")
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "FutureWarning" not in proc.stderr
        outs.append(proc.stdout)
    assert outs[0] == outs[1] and "assistant: " in outs[0]
    proc = _cli("generate", "-", "--model", str(run_dir), input=question + "\n")
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads(proc.stdout.splitlines()[-1])
    assert row["new_tokens"] <= 8 and "FutureWarning" not in proc.stderr


def test_model_card_of_the_adapter(run):
    run_dir, _ = run
    card = (run_dir / "adapter" / "README.md").read_text()
    assert card.startswith("---\n") and "[More Information Needed]" not in card
    front = yaml.safe_load(card.split("---\n")[1])
    base = yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["name"]
    assert front["library_name"] == "peft" and front["base_model"] == base
    assert front["datasets"] == ["gsm.jsonl"] and "sft" in front["tags"] and front["license"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert manifest["dataset_fingerprint"] in card
    assert f"| eval_loss | {metrics['eval_loss_before']:.4g} | {metrics['eval_loss']:.4g} |" in card
    assert "## Intended use" in card and SYSTEM in card and "## Training config" in card
