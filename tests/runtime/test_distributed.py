"""Scale-out: two CPU processes on gloo train exactly like one process with the same global batch.

Runs the real entry point three times on a tiny Llama (about 50 s of CPU in all):
  A. ``python -m tunesmith sft CFG --num-processes 2`` (accelerate launch, 2 processes, gloo), per-device batch 2;
  B. ``python -m tunesmith sft CFG`` in one process, per-device batch 4 (same global batch of 4);
  C. one process resuming A's step-2 checkpoint with per-device batch 2 and gradient accumulation 2.
The training set holds exactly 4 conversations, so every optimizer step sees all of them: the global batch is
the same whatever the sampler's order, and the curves must agree to 1e-4.  The model's embeddings are
scaled up so per-token losses differ a lot between conversations; then averaging per process (or per
micro-batch) instead of over the global batch's trained tokens would move the loss by far more than 1e-4.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, build_tiny_llama

TRAIN = [
    ("What colour is the sky?", "Blue."),
    ("Count to twelve.", "one two three four five six seven eight nine ten eleven twelve"),
    ("Say hi.", "hi"),
    (
        "Describe a cat in one sentence.",
        "A cat is a small furry animal that purrs, sleeps most of the day and chases mice at night.",
    ),
]
EVAL = [("Name a fruit.", "Apple."), ("What is 2+2?", "4")]
ARTIFACTS = {
    "adapter",
    "metrics.json",
    "manifest.json",
    "config.yaml",
    "samples.jsonl",
    "log_history.jsonl",
    "loss_curve.png",
    "reload_check.json",
    "run_state.json",
    "run.log",
}


def _jsonl(path: Path, pairs) -> Path:
    path.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": u}, {"role": "assistant", "content": a}]}) + "\n"
            for u, a in pairs
        )
    )
    return path


@pytest.fixture(scope="module")
def setup(smol_tokenizer, tmp_path_factory):
    """A tiny Llama with sharp (non-uniform) predictions, 4 train + 2 eval conversations, and a run config."""
    import torch
    from transformers import LlamaForCausalLM

    root = tmp_path_factory.mktemp("dist")
    model_dir = build_tiny_llama(smol_tokenizer, root / "tiny")
    model = LlamaForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(30.0)  # tied with lm_head: logits spread, token losses differ
    model.save_pretrained(model_dir)
    cfg = {
        "model": {"name": str(model_dir), "dtype": "float32"},
        "data": {"path": str(_jsonl(root / "train.jsonl", TRAIN)), "eval_path": str(_jsonl(root / "eval.jsonl", EVAL))},
        "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0},
        "train": {
            "max_steps": 4,
            "per_device_train_batch_size": 2,
            "per_device_eval_batch_size": 2,
            "learning_rate": 0.02,
            "lr_scheduler_type": "constant",
            "warmup_steps": 0,
            "packing": False,
            "max_length": 64,
            "bf16": False,
            "logging_steps": 1,
            "eval_strategy": "no",
            "save_steps": 2,
            "save_total_limit": None,
            "seed": 7,
        },
        "eval": {"before_training": False, "num_samples": 1, "max_new_tokens": 4},
    }
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return root


def _sft(root: Path, out: str, *extra: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests" / "dist_trace")]),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TUNESMITH_TRACE_WRITES": str(root / f"{out}.writes"),
    }
    cmd = [
        sys.executable,
        "-m",
        "tunesmith",
        "sft",
        str(root / "cfg.yaml"),
        "--set",
        f"train.output_dir={root / out}",
        *extra,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "log_history.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.fixture(scope="module")
def runs(setup):
    two = _sft(setup, "two", "--num-processes", "2")
    one = _sft(setup, "one", "--set", "train.per_device_train_batch_size=4")
    resumed = _sft(
        setup,
        "resumed",
        "--set",
        "train.gradient_accumulation_steps=2",
        "--resume",
        str(setup / "two" / "checkpoints" / "checkpoint-2"),
    )
    return {"two": two, "one": one, "resumed": resumed}


def test_two_processes_match_one_process_loss_curve(setup, runs):
    two, one = _losses(setup / "two"), _losses(setup / "one")
    assert sorted(two) == [1, 2, 3, 4] and sorted(one) == [1, 2, 3, 4]
    for step in two:
        assert two[step] == pytest.approx(one[step], abs=1e-4), (step, two, one)
    assert two[4] < two[1] - 0.05  # it trains: the comparison is not between two flat lines
    m2, m1 = (json.loads((setup / r / "metrics.json").read_text()) for r in ("two", "one"))
    assert (m2["num_processes"], m1["num_processes"]) == (2, 1)
    # token counters are summed over processes: 4 steps x all 4 conversations, the same in both runs
    assert m2["trained_tokens"] == m1["trained_tokens"] > 0 and m2["tokens_seen"] == m1["tokens_seen"]


def test_step_loss_is_normalised_by_global_trained_tokens(setup, runs, smol_tokenizer):
    """Step 1 runs on the untouched base (LoRA's B is zero): its loss is sum(token losses) / trained tokens over
    all 4 conversations; the mean of two per-process means would differ, whichever way the 4 are split."""
    import torch
    import torch.nn.functional as F
    from transformers import LlamaForCausalLM

    from tunesmith.config.base import DataSection
    from tunesmith.data.conversations import load_conversations
    from tunesmith.render.rows import render_all

    model = LlamaForCausalLM.from_pretrained(setup / "tiny").eval()
    convs, _ = load_conversations(DataSection(path=str(setup / "train.jsonl")))
    rows, _ = render_all(smol_tokenizer, convs, 64, generation_config=model.generation_config)
    sums, counts = [], []
    with torch.no_grad():
        for r in rows:
            logits = model(torch.tensor([r.input_ids])).logits[0, :-1]
            labels = torch.tensor(r.labels[1:])
            sums.append(F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum").item())
            counts.append(int((labels != -100).sum()))
    global_mean = sum(sums) / sum(counts)
    assert _losses(setup / "two")[1] == pytest.approx(global_mean, abs=1e-4)
    for half in itertools.combinations(range(4), 2):
        rest = [i for i in range(4) if i not in half]
        per_process = 0.5 * (
            sum(sums[i] for i in half) / sum(counts[i] for i in half)
            + sum(sums[i] for i in rest) / sum(counts[i] for i in rest)
        )
        assert abs(per_process - global_mean) > 1e-2, half


def test_artifacts_written_once_by_the_main_process(setup, runs):
    run = setup / "two"
    writes = [line.split("\t") for line in (setup / "two.writes").read_text().splitlines()]
    finals = [
        (rank, Path(dst).relative_to(run))
        for rank, dst in writes
        if Path(dst).is_relative_to(run) and Path(dst).relative_to(run).parts[0] != "checkpoints"
    ]
    # each exactly once (run.log is appended to by rank 0, not replaced; the model card goes into adapter/ after it)
    assert len({path for _, path in finals}) == len(finals), finals
    assert {path.parts[0] for _, path in finals} == ARTIFACTS - {"run.log"}
    assert {rank for rank, _ in finals} == {"0"}
    assert {p.name for p in run.iterdir()} == ARTIFACTS | {
        "checkpoints",
        ".tunesmith-run.json",
    }  # no stray temporary files
    err = runs["two"].stderr
    assert err.count("done in ") == 1 and err.count("tunesmith sft model=") == 1
    assert (run / "run.log").read_text().count("done in ") == 1  # the main process's console, once
    ckpt = run / "checkpoints" / "checkpoint-2"
    assert (ckpt / "rng_state_0.pth").is_file() and (ckpt / "rng_state_1.pth").is_file()
    from safetensors.torch import load_file

    final, last = (
        load_file(d / "adapter_model.safetensors") for d in (run / "adapter", run / "checkpoints" / "checkpoint-4")
    )
    assert final.keys() == last.keys() and all(
        final[k].equal(last[k]) for k in final
    )  # the trained adapter, saved whole
    assert (run / "adapter" / "tokenizer.json").is_file() and not (run / "adapter" / "training_args.bin").exists()


def test_checkpoint_from_two_processes_resumes_on_one(setup, runs):
    """Two processes x batch 2 wrote checkpoint-2; one process x batch 2 x accumulation 2 continues it."""
    resumed, one = _losses(setup / "resumed"), _losses(setup / "one")
    assert {3, 4} <= set(resumed)
    for step in (3, 4):
        assert resumed[step] == pytest.approx(one[step], abs=1e-4), (step, resumed, one)
    assert json.loads((setup / "resumed" / "metrics.json").read_text())["global_step"] == 4


def test_launch_command_strips_the_shortcut():
    from tunesmith.runtime.distributed import launch_command, strip_option

    argv = strip_option(
        ["sft", "c.yaml", "--num-processes", "4", "--set", "a=1", "--num-processes=4"], "--num-processes"
    )
    assert argv == ["sft", "c.yaml", "--set", "a=1"]
    cmd = launch_command(argv, 4)
    assert cmd[1:3] == ["-m", "tunesmith.runtime.distributed"] and cmd[cmd.index("--num_processes") + 1] == "4"
    assert cmd[-6:] == ["-m", "tunesmith", "sft", "c.yaml", "--set", "a=1"] and "--multi_gpu" in cmd


@pytest.mark.parametrize(
    "name, kind",
    [
        ("ddp", "multi_gpu"),
        ("fsdp", "use_fsdp"),
        ("deepspeed_zero2", "use_deepspeed"),
        ("deepspeed_zero3", "use_deepspeed"),
        ("multinode", "multi_gpu"),
    ],
)
def test_shipped_accelerate_configs_are_valid(name, kind):
    """Each file loads with accelerate's own config loader (unknown keys are refused there) and resolves, through
    `accelerate launch`'s argument handling, to the intended engine; nested keys are real launch flags."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    path = REPO / "configs" / "accelerate" / f"{name}.yaml"
    cfg = load_config_from_file(str(path))
    parser = launch_command_parser()
    flags = {a.dest for a in parser._actions}
    nested = {**(cfg.fsdp_config or {}), **(cfg.deepspeed_config or {})}
    assert set(nested) <= flags, set(nested) - flags
    args, _, _ = _validate_launch_command(parser.parse_args(["--config_file", str(path), "-m", "tunesmith", "sft"]))
    assert getattr(args, kind) is True
    if name == "multinode":
        assert (args.num_machines, args.machine_rank, args.main_process_port) == (2, 0, 29500) and args.main_process_ip
    if name == "fsdp":
        assert (args.fsdp_version, args.fsdp_state_dict_type) == (2, "FULL_STATE_DICT")
    if name.startswith("deepspeed"):
        assert args.zero_stage == int(name[-1])


def test_sft_config_normalises_over_the_global_batch(tmp_path):
    """transformers 5.24 defaults average_tokens_across_devices to True; tunesmith sets it explicitly (a changed
    default would silently average per device) and turns DDP's unused-parameter search off unless asked."""
    from tunesmith.config.load import load_config
    from tunesmith.train.sft import build_sft_config

    args = build_sft_config(load_config(None, ["train.gradient_accumulation_steps=3"]), tmp_path, False)
    assert args.average_tokens_across_devices is True and args.gradient_accumulation_steps == 3
    assert args.ddp_find_unused_parameters is False
    asked = build_sft_config(load_config(None, ["train.ddp_find_unused_parameters=true"]), tmp_path, False)
    assert asked.ddp_find_unused_parameters is True
