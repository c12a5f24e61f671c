"""Probe run for ``tunesmith estimate``: one LoRA training step on random tokens; prints the step's peak RSS as JSON.

    python -m tunesmith.train.estimate_probe MODEL_DIR SEQ_LEN [RANK] [--allow-pickle]

Runs in a fresh process (called by :func:`tunesmith.train.estimate.probe`), so the peak belongs to this step alone;
RSS is sampled every 2 ms by a thread (psutil), and on CUDA ``torch.cuda.max_memory_allocated`` is reported too.
"""

from __future__ import annotations

import json
import sys
import threading


def main(argv: list[str]) -> int:
    """Run the probe step and print ``{"tokens": int, "peak_bytes": int, "gpu_peak_bytes": int | None}``."""
    import psutil
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunesmith.models.loading import from_pretrained
    from tunesmith.models.sources import ModelSource
    from tunesmith.train.speed.fastloss import install_chunked_loss

    allow_pickle = "--allow-pickle" in argv
    argv = [a for a in argv if a != "--allow-pickle"]
    location, n, r = argv[0], int(argv[1]), int(argv[2]) if len(argv) > 2 else 16
    proc, peak, stop = psutil.Process(), [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            stop.wait(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    source = ModelSource(location, location, "local")
    model = from_pretrained(AutoModelForCausalLM, source, allow_pickle=allow_pickle, dtype=torch.float32).to(dev)
    model = get_peft_model(
        model, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    install_chunked_loss(model.get_base_model())
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(3, model.config.vocab_size, (1, n), generator=torch.Generator().manual_seed(0)).to(dev)
    labels = ids.clone()
    labels[:, : n // 2] = -100
    out = model(input_ids=ids, labels=labels, tunesmith_chunked_loss=True)
    out.loss.backward()
    opt.step()
    stop.set()
    thread.join()
    peak[0] = max(peak[0], proc.memory_info().rss)
    gpu = torch.cuda.max_memory_allocated() if dev == "cuda" else None
    print(json.dumps({"tokens": n, "peak_bytes": peak[0], "gpu_peak_bytes": gpu}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
