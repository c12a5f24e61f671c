"""Kill-and-resume: SIGKILL a real `tunesmith sft` process at a random checkpointed step, resume it, and get
bit-identical adapter weights to an uninterrupted run (fp32, CPU, same seed); SIGTERM saves a checkpoint,
exits 143 and says how to resume.

Each run is `python -m tunesmith sft` in a subprocess on a tiny random Llama (hidden 32), LoRA with a
named adapter and dropout 0.1 (so the dropout RNG must be restored), packing on, 8 steps, a checkpoint every 2.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, build_tiny_llama, slow_steps_env

ADAPTER = "myadapter"
STEPS, SAVE_EVERY = 8, 2


def _data(path: Path, n: int = 24) -> Path:
    rng = random.Random(0)
    words = "alpha beta gamma delta red blue green one two three cat dog".split()
    with path.open("w") as f:
        for _ in range(n):
            q, a = (" ".join(rng.choice(words) for _ in range(rng.randint(2, 6))) for _ in range(2))
            f.write(
                json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n"
            )
    return path


@pytest.fixture(scope="module")
def setup(smol_tokenizer, tmp_path_factory):
    """(config path, base dir): tiny model + data + config shared by every run of this module."""
    base = tmp_path_factory.mktemp("resume")
    model = build_tiny_llama(smol_tokenizer, base / "tiny", hidden=32, seed=3)
    data = _data(base / "data.jsonl")
    cfg = base / "cfg.yaml"
    cfg.write_text(f"""model: {{name: {model}, dtype: float32}}
data: {{path: {data}, eval_fraction: 0.25, max_eval_examples: 4}}
lora: {{r: 4, lora_alpha: 8, lora_dropout: 0.1, adapter_name: {ADAPTER}}}
train: {{max_steps: {STEPS}, save_steps: {SAVE_EVERY}, save_total_limit: null, per_device_train_batch_size: 2,
        max_length: 64, eval_strategy: 'no', logging_steps: 1, seed: 7, packing: true, learning_rate: 0.01}}
eval: {{num_samples: 1, max_new_tokens: 2, before_training: true}}
""")
    return cfg, base


def _cmd(cfg: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tunesmith", "sft", str(cfg), "--set", f"train.output_dir={out}", *extra]


SECRET = "hf_NotARealTokenButLooksLikeOne1234"


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_TOKEN=SECRET)


def _wait_for_checkpoint(proc: subprocess.Popen, run_dir: Path, step: int, timeout: float = 240) -> None:
    """Poll until checkpoint-<step> is complete (trainer_state.json is written last)."""
    deadline = time.time() + timeout
    while not (run_dir / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json").is_file():
        assert proc.poll() is None, (
            f"run ended (rc {proc.returncode}) before checkpoint-{step}: {proc.stderr.read()[-2000:]}"
        )
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.02)


def _adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "adapter" / ADAPTER / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def reference_and_killed(setup):
    """Run the uninterrupted reference and the to-be-killed run at the same time (halves the wall time)."""
    cfg, base = setup
    ref = subprocess.Popen(
        _cmd(cfg, base / "ref"), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    victim = subprocess.Popen(
        _cmd(cfg, base / "killed"),
        env=slow_steps_env(_env(), base / "slow"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    # checkpoint 2 or 4 of 8: on a quiet machine a tiny-model step takes only tens of milliseconds, so a later kill
    # could land after training ended (final artifacts half written), which is not what this test is about
    kill_after = random.Random(time.time_ns()).choice(range(SAVE_EVERY, STEPS // 2 + 1, SAVE_EVERY))
    _wait_for_checkpoint(victim, base / "killed", kill_after)
    time.sleep(random.uniform(0, 0.05))  # land inside the next step or two
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert ref.wait() == 0, ref.stderr.read()[-3000:]
    return base / "ref", base / "killed", kill_after


def test_killed_run_resumes_bit_exact(setup, reference_and_killed):
    cfg, _ = setup
    ref, killed, kill_after = reference_and_killed
    assert not (killed / "metrics.json").exists() and not (killed / "adapter").exists(), (
        "a killed run must not look complete"
    )
    # a plain re-run refuses to mix with the killed run's files
    again = subprocess.run(_cmd(cfg, killed), env=_env(), capture_output=True, text=True)
    assert again.returncode == 2 and "--resume" in again.stderr and "Traceback" not in again.stderr
    res = subprocess.run(_cmd(cfg, killed, "--resume", "latest"), env=_env(), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = _adapter(ref), _adapter(killed)
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume (killed after checkpoint-{kill_after})"
    assert not torch.equal(a[next(iter(a))], torch.zeros_like(a[next(iter(a))]))
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (ref, killed))
    assert int(mb["resumed_from"].rsplit("-", 1)[1]) >= kill_after
    assert mb["global_step"] == ma["global_step"] == STEPS
    # counters and the before-training eval survive the kill (restored from the checkpoint / run_state.json)
    assert mb["tokens_seen"] == ma["tokens_seen"] and mb["trained_tokens"] == ma["trained_tokens"]
    assert mb["eval_loss_before"] == ma["eval_loss_before"] is not None
    assert mb["eval_loss"] == ma["eval_loss"]
    manifest = json.loads((killed / "manifest.json").read_text())
    assert manifest["resumes"][0]["from"] == mb["resumed_from"]


def test_sigterm_saves_checkpoint_and_says_how_to_resume(setup, reference_and_killed):
    cfg, base = setup
    ref, _, _ = reference_and_killed
    run = base / "termed"
    proc = subprocess.Popen(
        _cmd(cfg, run),
        env=slow_steps_env(_env(), base / "slow"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_checkpoint(proc, run, SAVE_EVERY)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert "SIGTERM" in err and "--resume latest" in err and "Traceback" not in err
    assert not (run / "metrics.json").exists() and not (run / "adapter").exists()
    steps = sorted(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("checkpoint-*"))
    # the step that was running when the signal came was finished and checkpointed
    # (off the save_steps grid unless it fell on it)
    assert steps and steps[-1] > SAVE_EVERY, steps
    res = subprocess.run(_cmd(cfg, run, "--resume", "latest"), env=_env(), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = _adapter(ref), _adapter(run)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_manifest_records_the_run_and_no_secret(setup, reference_and_killed, smol_tokenizer):
    import subprocess as sp

    import yaml

    from tunesmith.config.load import load_config
    from tunesmith.data.conversations import load_conversations
    from tunesmith.data.split import fingerprint, split
    from tunesmith.runtime.manifest import template_hash

    cfg_path, _ = setup
    ref, _, _ = reference_and_killed
    m = json.loads((ref / "manifest.json").read_text())
    for lib in ("tunesmith", "torch", "transformers", "trl", "peft"):
        assert m["versions"][lib] not in ("", "not installed")
    assert m["versions"]["torch"] == torch.__version__.split("+")[0] or m["versions"]["torch"] == torch.__version__
    assert m["seed"] == 7 and m["config"]["train"]["seed"] == 7
    assert m["config"] == yaml.safe_load((ref / "config.yaml").read_text())
    assert m["config"]["lora"]["adapter_name"] == ADAPTER and m["config"]["train"]["output_dir"] == str(ref)
    cfg = load_config(cfg_path, [f"train.output_dir={ref}"])
    train, evals = split(load_conversations(cfg.data)[0], cfg.data.eval_fraction, cfg.data.split_seed)
    assert m["dataset_fingerprint"] == fingerprint(train + evals[: cfg.data.max_eval_examples])
    assert m["chat_template_sha256"] == template_hash(smol_tokenizer) and len(m["chat_template_sha256"]) == 16
    assert m["command"][1:3] == ["sft", str(cfg_path)] and f"train.output_dir={ref}" in m["command"]
    head = sp.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip() or None
    assert m["git_commit"] == head
    # HF_TOKEN was in the environment of every run: it appears in no file of the run dir (checkpoints included)
    for f in ref.rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f


def test_kill_after_the_last_step_resumes_without_an_extra_step(setup, reference_and_killed):
    """A run killed after its last checkpoint, while writing its final artifacts, is restored from that checkpoint:
    no ninth step (transformers' train() would run one), the same weights and counts as the uninterrupted run."""
    cfg, base = setup
    ref, _, _ = reference_and_killed
    run = base / "finished"
    assert subprocess.run(_cmd(cfg, run), env=_env(), capture_output=True, text=True).returncode == 0
    for name in ("metrics.json", "samples.jsonl", "log_history.jsonl", "loss_curve.png", "reload_check.json"):
        (run / name).unlink()
    shutil.rmtree(run / "adapter")
    res = subprocess.run(_cmd(cfg, run, "--resume", "latest"), env=_env(), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (ref, run))
    assert mb["global_step"] == STEPS and mb["resumed_from"].endswith(f"checkpoint-{STEPS}")
    assert mb["tokens_seen"] == ma["tokens_seen"] and mb["eval_loss"] == ma["eval_loss"]
    a, b = _adapter(ref), _adapter(run)
    assert all(torch.equal(a[k], b[k]) for k in a)
