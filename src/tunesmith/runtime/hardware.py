"""What this machine computes fast: measured matmul throughput per precision, cached per CPU, and the precision it
implies."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

import json
import os
from pathlib import Path

from tunesmith.runtime.paths import tunesmith_home


def matmul_gflops(dtype: torch.dtype, n: int = 512, seconds: float = 0.15) -> float:
    """Measured CPU matmul throughput for ``[n, n] @ [n, n]`` in ``dtype``, in GFLOP/s (2*n^3 FLOPs per product)."""
    import time

    import torch

    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)  # warm-up (kernel selection)
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def hardware_supports_bf16(device: str | None = None) -> bool:
    """True when bf16 matmuls are faster than fp32 here: CUDA with bf16, or a CPU where a measured bf16 matmul
    beats fp32 by at least 20%.

    CPU flags are not enough: the CI machine reports ``avx512_bf16`` yet a bf16 matmul there runs at about
    58 GFLOP/s against 220 for fp32, so tunesmith measures once (about 1 s) and caches the answer in
    ``$TUNESMITH_HOME/hardware.json`` keyed by CPU model, core count and torch version.
    """
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    if info and " avx512_bf16" not in info and " amx_bf16" not in info:
        return False
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "cpu")
    key = f"{model}|{os.cpu_count()}|{torch.__version__}|{torch.get_num_threads()}"
    cache = tunesmith_home() / "hardware.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        runs = [(matmul_gflops(torch.float32, 1024, 0.2), matmul_gflops(torch.bfloat16, 1024, 0.2)) for _ in range(2)]
        fp32, bf16 = (
            max(r[0] for r in runs),
            max(r[1] for r in runs),
        )  # alternated, best of two: less noise from other load
        known[key] = {"fp32_gflops": round(fp32, 1), "bf16_gflops": round(bf16, 1), "bf16_faster": bf16 > 1.2 * fp32}
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(known, indent=1))
        except OSError:
            pass
    return bool(known[key]["bf16_faster"])


def choose_dtype(requested: str = "auto") -> torch.dtype:
    """Map ``model.dtype`` to a torch dtype; ``auto`` is bf16 only where the hardware is native bf16."""
    import torch

    if requested == "auto":
        return torch.bfloat16 if hardware_supports_bf16() else torch.float32
    return getattr(torch, requested)


def is_installed(module: str) -> bool:
    """True when the Python package ``module`` can be imported here (found without importing it)."""
    import importlib.util

    return importlib.util.find_spec(module) is not None
