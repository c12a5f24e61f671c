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


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_has_bf16() -> bool:
    """True unless /proc/cpuinfo exists and lists neither ``avx512_bf16`` nor ``amx_bf16``."""
    info = _cpuinfo()
    return not info or " avx512_bf16" in info or " amx_bf16" in info


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (``platform.processor()`` where there is none, else ``"cpu"``); every
    measurement is stamped with it."""
    import platform

    line = next((ln for ln in _cpuinfo().splitlines() if ln.startswith("model name")), "")
    return line.split(":", 1)[1].strip() if line else (platform.processor() or "cpu")


def machine_key() -> str:
    """This machine as the measurement cache knows it: CPU model, core count, torch version and torch threads."""
    import torch

    return f"{cpu_model()}|{os.cpu_count()}|{torch.__version__}|{torch.get_num_threads()}"


def cached_measurement(key: str, measure):
    """A measurement of this machine, cached in ``$TUNESMITH_HOME/hardware.json`` under ``machine_key()|key``.

    Args:
        key: what is measured (shape and settings).
        measure: a function taking no argument and returning a JSON-serialisable value; called on a cache miss.

    Returns:
        The cached or new value (an unwritable cache is ignored).
    """
    full = f"{machine_key()}|{key}"
    cache = tunesmith_home() / "hardware.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if full not in known:
        known[full] = measure()
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(known, indent=1))
            os.replace(tmp, cache)
        except OSError:
            pass
    return known[full]


def hardware_supports_bf16(device: str | None = None) -> bool:
    """True when bf16 matmuls are faster than fp32 here: CUDA with bf16, or a CPU where a measured bf16 matmul
    beats fp32 by at least 20%.

    CPU flags are not enough: the CI machine reports ``avx512_bf16`` yet a bf16 matmul there runs at about
    58 GFLOP/s against 220 for fp32, so tunesmith measures once (about 1 s) and caches the answer
    (:func:`cached_measurement`).  Training precision is decided end to end instead, by a timed training step
    (:func:`tunesmith.train.speed.precision.resolve_precision`); this matmul test serves inference.
    """
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if not cpu_has_bf16():
        return False

    def measure():
        runs = [(matmul_gflops(torch.float32, 1024, 0.2), matmul_gflops(torch.bfloat16, 1024, 0.2)) for _ in range(2)]
        fp32, bf16 = max(r[0] for r in runs), max(r[1] for r in runs)  # alternated, best of two: less noise from load
        return {"fp32_gflops": round(fp32, 1), "bf16_gflops": round(bf16, 1), "bf16_faster": bf16 > 1.2 * fp32}

    return bool(cached_measurement("matmul", measure)["bf16_faster"])


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
