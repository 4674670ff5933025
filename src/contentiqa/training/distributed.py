"""Multi-process training plumbing: ``torchrun`` environment -> ``torch.distributed``.

``torchrun --nproc_per_node N -m contentiqa train ...`` starts N copies of the command with
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` set.
:func:`init_from_env` turns them into a process group (``gloo`` on CPU, ``nccl`` on GPU, one GPU
per ``LOCAL_RANK``); with ``WORLD_SIZE`` unset or 1 nothing happens and everything below is a
no-op, so the same code serves a laptop and a cluster. :class:`~contentiqa.training.trainer.Trainer`
switches to DistributedDataParallel by itself when a process group of more than one process is
initialised (see its docstring for what each rank does).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False
    """True when :func:`init_from_env` created the process group (so the caller tears it down)."""

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_distributed() -> bool:
    """A process group of more than one process is initialised."""
    return torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1


def rank() -> int:
    return torch.distributed.get_rank() if is_distributed() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def device_for(device: str, local_rank: int) -> str:
    """Each process of a node takes its own GPU: ``cuda`` -> ``cuda:<LOCAL_RANK>``. An explicit
    index (``cuda:1``) is kept; CPU stays CPU."""
    if device == "cuda" or device == "gpu":
        return f"cuda:{local_rank}"
    return device


def init_from_env(device: str = "cpu", backend: str | None = None) -> DistInfo:
    """Join the process group described by the ``torchrun`` environment variables.

    Does nothing when ``WORLD_SIZE`` is unset or 1, or when a group already exists (its rank
    and size are returned). Backend: ``nccl`` for a CUDA ``device`` (after selecting the GPU
    ``LOCAL_RANK``), else ``gloo``; ``CONTENTIQA_DIST_BACKEND`` overrides. The collective timeout
    is ``CONTENTIQA_DIST_TIMEOUT`` seconds (default 3600: rank 0 caches encodings and writes checkpoints while the others wait).
    """
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), False)
    ws = env_world_size()
    if ws <= 1:
        return DistInfo()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    cuda = str(device).startswith("cuda")
    if cuda:
        from ..utils.devices import resolve_device

        # checked here, before CUDA is touched: ValueError, which the commands print in one line
        gpu = resolve_device(device_for(device, local_rank))
        count = torch.cuda.device_count()
        if gpu.index is not None and gpu.index >= count:
            raise ValueError(
                f"process {local_rank} of this machine needs GPU {gpu.index}, but it has {count}: start at most "
                "that many processes per machine" if device in ("cuda", "gpu") else
                f"device {device}: this machine has {count} GPU(s) (cuda:0 to cuda:{count - 1})")
        torch.cuda.set_device(gpu)
    backend = backend or os.environ.get("CONTENTIQA_DIST_BACKEND") or ("nccl" if cuda else "gloo")
    timeout = timedelta(seconds=_dist_timeout())
    try:
        dist.init_process_group(backend=backend, init_method="env://", timeout=timeout)
    except dist.DistError as exc:  # the processes never met: a rerun meets the same wall
        raise ValueError(f"the processes of the run did not all join ({_first_line(exc)}): check MASTER_ADDR, MASTER_PORT and "
                         "CONTENTIQA_DIST_TIMEOUT, or start it with torchrun") from None
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, True)


MAX_DIST_TIMEOUT = 1e9
"""Seconds (about 31 years): torch holds the wait as int64 nanoseconds, and a longer one fails at once."""


def _dist_timeout() -> float:
    """CONTENTIQA_DIST_TIMEOUT: seconds the processes wait for each other (default 3600)."""
    import math

    value = os.environ.get("CONTENTIQA_DIST_TIMEOUT", "3600")
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= MAX_DIST_TIMEOUT:  # (nan too)
        raise ValueError(f"CONTENTIQA_DIST_TIMEOUT={value!r}: give a number of seconds, e.g. 3600 (at most "
                         f"{MAX_DIST_TIMEOUT:g})")
    return seconds


PEER_GONE = ("Connection reset by peer", "Connection closed by peer", "NCCL communicator was aborted")
"""What gloo's and NCCL's errors say when another process of the run is gone (they are plain
RuntimeErrors, named only by their text)."""


def lost_peer(exc: BaseException) -> str | None:
    """For a process of a multi-process run (``WORLD_SIZE`` > 1): the first line of ``exc`` when
    it says another process is gone (crashed, killed, or stopped at its start by an error of its
    own), or is torch's own DistError, else None: a command says that in one line, not a
    traceback per process. (Processes that never met are :func:`init_from_env`'s ValueError.)"""
    if env_world_size() <= 1 or not isinstance(exc, RuntimeError):
        return None
    dist_error = torch.distributed.is_available() and isinstance(exc, torch.distributed.DistError)
    if not dist_error and not any(s in str(exc) for s in PEER_GONE):
        return None
    return _first_line(exc)


def _first_line(exc: BaseException) -> str:
    """What a one-line error quotes of ``exc`` (gloo's and c10d's run on over many lines)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def cleanup(info: DistInfo | None) -> None:
    """Destroy the process group if ``info`` says :func:`init_from_env` made it."""
    if info is not None and info.initialized_here and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        torch.distributed.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (picklable objects)."""
    if not is_distributed():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(values: list[float]) -> list[float]:
    """Element-wise sum of a list of numbers over all ranks (float64)."""
    if not is_distributed():
        return list(values)
    dist = torch.distributed
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.cpu().tolist()


class main_first:
    """Context manager: rank 0 runs the block first (e.g. writing a cache or split file), the
    other ranks then run it (and find the file there)."""

    def __enter__(self):
        if is_distributed() and not is_main():
            barrier()
        return self

    def __exit__(self, exc_type, exc, tb):
        if is_distributed() and is_main():
            barrier()
        return False
