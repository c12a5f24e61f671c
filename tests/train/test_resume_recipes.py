"""Kill-and-resume for `tunesmith classify` and `tunesmith dpo`, through the same run lifecycle as SFT: SIGKILL a real
process after a checkpoint, resume it with `--resume latest`, and get bit-identical adapter weights to an uninterrupted
run (fp32, CPU, same seed); SIGTERM saves a checkpoint, exits 143 and prints the resume command.

Each run is `python -m tunesmith <command>` in a subprocess on a tiny random Llama (hidden 32), LoRA with dropout 0.1
(so the dropout RNG must be restored), 8 steps, a checkpoint every 2.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, build_tiny_llama, slow_steps_env

STEPS, SAVE_EVERY = 8, 2
WORDS = "alpha beta gamma delta red blue green one two three cat dog sun moon".split()


def _classify_data(path: Path) -> str:
    rng = random.Random(0)
    with path.open("w") as f:
        for i in range(40):
            label = ["colour", "number", "animal"][i % 3]
            f.write(
                json.dumps(
                    {
                        "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))) + f" {label}",
                        "label": label,
                    }
                )
                + "\n"
            )
    return (
        f"data: {{path: {path}, eval_fraction: 0.25}}\n"
        f"train: {{max_steps: {STEPS}, save_steps: {SAVE_EVERY}, save_total_limit: null, "
        "per_device_train_batch_size: 4,\n"
        "        eval_strategy: 'no', logging_steps: 1, seed: 7, learning_rate: 0.01, max_length: 32}\n"
    )


def _dpo_data(path: Path) -> str:
    rng = random.Random(0)
    with path.open("w") as f:
        for _ in range(24):
            prompt, good, bad = (" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 5))) for _ in range(3))
            f.write(
                json.dumps(
                    {
                        "prompt": [{"role": "user", "content": prompt}],
                        "chosen": [{"role": "assistant", "content": good}],
                        "rejected": [{"role": "assistant", "content": bad + " no"}],
                    }
                )
                + "\n"
            )
    return (
        f"data: {{path: {path}, eval_fraction: 0.25}}\n"
        f"train: {{max_steps: {STEPS}, save_steps: {SAVE_EVERY}, save_total_limit: null, "
        "per_device_train_batch_size: 2,\n"
        "        eval_strategy: 'no', logging_steps: 1, seed: 7, learning_rate: 0.01, max_length: 64}\n"
        "eval: {win_rate_prompts: 2, max_new_tokens: 2}\n"
    )


DATA = {"classify": _classify_data, "dpo": _dpo_data}


@pytest.fixture(scope="module", params=["classify", "dpo"])
def setup(request, smol_tokenizer, tmp_path_factory):
    """(command, config path, base dir) for one recipe."""
    kind = request.param
    base = tmp_path_factory.mktemp(f"resume-{kind}")
    model = build_tiny_llama(smol_tokenizer, base / "tiny", hidden=32, seed=3)
    body = DATA[kind](base / "data.jsonl")
    cfg = base / "cfg.yaml"
    cfg.write_text(
        f"model: {{name: {model}, dtype: float32}}\nlora: {{r: 4, lora_alpha: 8, lora_dropout: 0.1}}\n{body}"
    )
    return kind, cfg, base


def _cmd(kind: str, cfg: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tunesmith", kind, str(cfg), "--set", f"train.output_dir={out}", *extra]


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")


def _wait_for_checkpoint(proc: subprocess.Popen, run_dir: Path, step: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not (run_dir / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json").is_file():
        assert proc.poll() is None, (
            f"run ended (rc {proc.returncode}) before checkpoint-{step}: {proc.stderr.read()[-3000:]}"
        )
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.02)


def _adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


def _assert_same_adapter(ref: Path, other: Path) -> None:
    a, b = _adapter(ref), _adapter(other)
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"


@pytest.fixture(scope="module")
def runs(setup):
    """The uninterrupted reference, a run killed with SIGKILL after a checkpoint and one stopped with SIGTERM,
    started together (a third of the wall time)."""
    kind, cfg, base = setup
    ref = subprocess.Popen(
        _cmd(kind, cfg, base / "ref"), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    slow = slow_steps_env(_env(), base / "slow")
    killed = subprocess.Popen(
        _cmd(kind, cfg, base / "killed"), env=slow, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    termed = subprocess.Popen(
        _cmd(kind, cfg, base / "termed"), env=slow, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    kill_after = random.Random(time.time_ns()).choice(range(SAVE_EVERY, STEPS // 2 + 1, SAVE_EVERY))
    _wait_for_checkpoint(killed, base / "killed", kill_after)
    time.sleep(random.uniform(0, 0.05))
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    _wait_for_checkpoint(termed, base / "termed", SAVE_EVERY)
    termed.send_signal(signal.SIGTERM)
    _, term_err = termed.communicate(timeout=180)
    assert ref.wait() == 0, ref.stderr.read()[-3000:]
    return {
        "ref": base / "ref",
        "killed": base / "killed",
        "termed": base / "termed",
        "kill_after": kill_after,
        "term_rc": termed.returncode,
        "term_err": term_err,
    }


def test_killed_run_resumes_bit_exact(setup, runs):
    kind, cfg, _ = setup
    killed = runs["killed"]
    assert not (killed / "metrics.json").exists() and not (killed / "adapter").exists(), (
        "a killed run must not look complete"
    )
    again = subprocess.run(_cmd(kind, cfg, killed), env=_env(), capture_output=True, text=True)
    assert again.returncode == 2 and "--resume" in again.stderr and "Traceback" not in again.stderr
    res = subprocess.run(_cmd(kind, cfg, killed, "--resume", "latest"), env=_env(), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    _assert_same_adapter(runs["ref"], killed)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (runs["ref"], killed))
    assert int(mb["resumed_from"].rsplit("-", 1)[1]) >= runs["kill_after"]
    assert mb["global_step"] == ma["global_step"] == STEPS
    assert mb["task_metrics"] == ma["task_metrics"]
    manifest = json.loads((killed / "manifest.json").read_text())
    assert manifest["resumes"][0]["from"] == mb["resumed_from"] and manifest["command_kind"] == kind


def test_sigterm_saves_checkpoint_and_says_how_to_resume(setup, runs):
    kind, cfg, _ = setup
    run, err = runs["termed"], runs["term_err"]
    assert runs["term_rc"] == 143, err[-3000:]
    assert "SIGTERM" in err and f"tunesmith {kind}" in err and "--resume latest" in err and "Traceback" not in err
    assert not (run / "metrics.json").exists() and not (run / "adapter").exists()
    assert sorted((run / "checkpoints").glob("checkpoint-*")), "no checkpoint saved on SIGTERM"
    res = subprocess.run(_cmd(kind, cfg, run, "--resume", "latest"), env=_env(), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    _assert_same_adapter(runs["ref"], run)
    log = (run / "run.log").read_text()
    assert log.count(f"tunesmith {kind}") >= 2 and "SIGTERM" in log  # the first attempt, its stop, and the resume
