"""Multi-process and multi-node runs on accelerate: who writes, who waits, and the ``--num-processes`` shortcut.

Every training command runs unchanged under a distributed launcher::

    accelerate launch --config_file configs/accelerate/ddp.yaml -m tunesmith sft cfg.yaml
    torchrun --nproc_per_node 4 -m tunesmith sft cfg.yaml
    tunesmith sft cfg.yaml --num-processes 4         # shortcut: re-launches itself through `accelerate launch`

tunesmith has no distributed code of its own: the Trainer (transformers/TRL) prepares the model and data
loaders through accelerate (DDP, FSDP or DeepSpeed from the launch config).  This module only decides that the
main process (global rank 0) creates the run directory and writes the artifacts while the others wait.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable, TypeVar

from tunesmith.runtime.files import share

T = TypeVar("T")

_LAUNCH_ENV = ("WORLD_SIZE", "LOCAL_RANK")


def dist_state():
    """Return accelerate's process state (``PartialState``), initialising the process group once.

    Under ``torchrun``/``accelerate launch`` this joins the process group (NCCL on CUDA, gloo on CPU);
    in a plain single process it is a no-op state with ``num_processes == 1``.  TrainingArguments reuses it.

    Returns:
        accelerate.PartialState
    """
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def is_main_process() -> bool:
    """True on global rank 0 (the one process that writes artifacts and prints summaries)."""
    return dist_state().is_main_process


def wait_for_everyone() -> None:
    """Barrier across all processes (no-op in a single process)."""
    dist_state().wait_for_everyone()


def on_main(fn: Callable[..., T], *args, **kwargs) -> T:
    """Run ``fn`` on the main process only; the others wait and receive its (picklable) return value.

    A :class:`~tunesmith.errors.TunesmithError` (or any exception) raised on the main process ends the
    other processes too: they exit quietly with the same exit code, the main process reports the error.

    Returns:
        ``fn(*args, **kwargs)`` as computed on the main process.

    Raises:
        Whatever ``fn`` raises (main process); ``SystemExit`` on the other processes.
    """
    if not in_launched_process():  # a plain single process: no torch import needed (keeps bad-input errors fast)
        return fn(*args, **kwargs)
    state = dist_state()
    if state.num_processes == 1:
        return fn(*args, **kwargs)
    from accelerate.utils import broadcast_object_list

    box: list = [None]
    error: BaseException | None = None
    if state.is_main_process:
        try:
            box[0] = ("ok", fn(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 - re-raised below after telling the others
            error = exc
            box[0] = ("error", getattr(exc, "exit_code", 1))
    broadcast_object_list(box, from_process=0)
    kind, value = box[0]
    if error is not None:
        raise error
    if kind == "error":
        raise SystemExit(value)
    return value


def main_first(fn: Callable[..., T], *args, **kwargs) -> T:
    """Run ``fn`` on the main process, then on the others (e.g. a cache the main process fills once).

    Errors behave as in :func:`on_main`.  Returns each process's own ``fn(*args, **kwargs)``.
    """
    result = on_main(fn, *args, **kwargs)
    return result if dist_state().is_main_process else fn(*args, **kwargs)


def params_sharded() -> bool:
    """True under FSDP or DeepSpeed ZeRO-3, where every forward pass needs all processes (so the main process
    cannot generate samples alone).  False before a Trainer/Accelerator exists and in DDP."""
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType

    kind = dist_state().distributed_type
    if kind == DistributedType.FSDP:
        return True
    if kind == DistributedType.DEEPSPEED:
        plugin = getattr(AcceleratorState(), "deepspeed_plugin", None)
        return plugin is not None and plugin.zero_stage == 3
    return False


def gather_sum(value: int | float) -> int | float:
    """Sum a per-process number (e.g. tokens seen) over all processes; every process gets the total.

    A collective call: every process must call it.  Returns ``value`` unchanged in a single process.
    """
    state = dist_state()
    if state.num_processes == 1:
        return value
    import torch
    from accelerate.utils import reduce

    total = reduce(torch.tensor([float(value)], dtype=torch.float64, device=state.device), reduction="sum")
    return type(value)(total.item())


def is_rank_zero() -> bool:
    """True unless the launcher's environment names this process a non-zero global rank (no torch import)."""
    return os.environ.get("RANK", "0") == "0"


def quiet_workers() -> None:
    """On non-zero ranks, turn off datasets/transformers progress bars (rank 0 shows them once)."""
    if is_rank_zero():
        return
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def in_launched_process() -> bool:
    """True when this process was started by ``torchrun`` / ``accelerate launch`` (its env says so)."""
    return any(k in os.environ for k in _LAUNCH_ENV)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def strip_option(argv: list[str], option: str) -> list[str]:
    """Remove ``option VALUE`` and ``option=VALUE`` from ``argv`` (the shortcut must not recurse)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out


def launch_command(argv: list[str], num_processes: int) -> list[str]:
    """The ``accelerate launch`` command (through :func:`accelerate_launch`) that runs ``python -m tunesmith <argv>`` on
    ``num_processes`` processes.

    One machine; ``--multi_gpu`` is accelerate's torchrun-based launcher (one process per GPU on CUDA; on a
    CPU-only machine the processes train on CPU over gloo).  The rendezvous port is a free one unless
    ``MASTER_PORT`` is set.

    Returns:
        The command as an argv list.
    """
    port = os.environ.get("MASTER_PORT") or str(_free_port())
    return [
        sys.executable,
        "-m",
        "tunesmith.runtime.distributed",
        "--multi_gpu",
        "--num_processes",
        str(num_processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        port,
        "-m",
        "tunesmith",
        *argv,
    ]


def accelerate_launch(argv: list[str]) -> int:
    """``accelerate launch ARGV`` called programmatically; a failed worker gives its exit code, not a traceback.

    Returns:
        0, or the largest positive exit code among the failed processes (2 for a bad config or dataset).
    """
    from accelerate.commands.launch import launch_command as accelerate_launch_command
    from accelerate.commands.launch import launch_command_parser
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    try:
        accelerate_launch_command(launch_command_parser().parse_args(argv))
    except ChildFailedError as exc:
        return max([f.exitcode for f in exc.failures.values() if f.exitcode > 0], default=1)
    return 0


def relaunch(num_processes: int | None, argv: list[str] | None = None) -> int | None:
    """The ``--num-processes N`` shortcut: re-run this command under ``accelerate launch`` with N processes.

    Args:
        num_processes: requested process count; None or 1 (or already inside a launched process) does nothing.
        argv: the command line after ``tunesmith`` (default ``sys.argv[1:]``); ``--num-processes`` is removed.

    Returns:
        None when no re-launch happened (the caller trains in this process), else the launcher's exit code.
    """
    if not num_processes or num_processes <= 1 or in_launched_process():
        return None
    argv = strip_option(list(sys.argv[1:] if argv is None else argv), "--num-processes")
    return subprocess.run(launch_command(argv, num_processes), check=False).returncode


def save_trained_model(trainer, final: str | Path, extra_files: dict[str, str] | None = None) -> Path:
    """Save the trained adapter (or model) and tokenizer into ``final`` once, atomically; every process calls it.

    ``Trainer.save_model`` gathers FSDP (FULL_STATE_DICT) and ZeRO-3 shards, a collective step, and writes on
    the main process only (``TrainingArguments.should_save``).  It writes into ``.<name>.tmp-save`` first; the
    main process then renames that to ``final``, so a crash never leaves a complete-looking folder.

    Args:
        trainer: a transformers ``Trainer`` (TRL's SFTTrainer, DPOTrainer, ...) after training.
        final: destination folder, e.g. ``run_dir / "adapter"``.
        extra_files: file name -> text written into the folder before the rename (e.g. ``generation_config.json``,
            which PEFT's save skips).

    Returns:
        ``final`` as a Path.
    """
    import shutil

    final = Path(final)
    tmp = final.with_name(f".{final.name}.tmp-save")
    main = is_main_process()
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    wait_for_everyone()
    trainer.save_model(str(tmp))
    wait_for_everyone()
    if main:
        (tmp / "training_args.bin").unlink(missing_ok=True)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        share(tmp)  # the umask's modes, not the owner-only ones safetensors writes
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    wait_for_everyone()
    return final


if __name__ == "__main__":  # the launcher process of the --num-processes shortcut
    sys.exit(accelerate_launch(sys.argv[1:]))
