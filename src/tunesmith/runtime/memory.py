"""Peak memory of this process: one reset/peak pair used by every command that reports a cost."""

from __future__ import annotations

from pathlib import Path


def reset_peak_memory() -> None:
    """Start a new peak-memory measurement: CUDA peak stats, or on Linux the process's RSS high-water mark
    (writing ``5`` to ``/proc/self/clear_refs``, proc(5), Linux >= 4.0); elsewhere nothing is reset."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory_bytes() -> int | None:
    """Peak memory since :func:`reset_peak_memory`, in bytes: CUDA max allocated, else ``VmHWM`` of
    ``/proc/self/status`` (peak resident set), else ``ru_maxrss`` (peak since the process started)."""
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
