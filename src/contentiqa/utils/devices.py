"""Which device a spec names: one place for every layer (models load onto it, scorers pick a
runtime by it), so ``cpu:0`` is the CPU everywhere and a GPU that is not there is a ValueError
before any weights load, not torch's driver error after."""
from __future__ import annotations

from typing import Any


def is_cpu(device: Any) -> bool:
    """Whether a device spec names the CPU (``cpu``, ``cpu:0``, ``torch.device('cpu')``), without torch."""
    return str(device).strip().lower().split(":", 1)[0] == "cpu"


def resolve_device(spec: Any) -> Any:
    """A ``torch.device`` from a string such as ``cpu``, ``cuda:1`` or ``mps``; ValueError when
    it is unknown or not available here."""
    import torch

    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {spec!r} (use cpu, cuda, cuda:1, mps)") from None
    if device.type not in ("cpu", "cuda", "mps"):  # xpu, hip, meta...: torch's traceback while the model loads
        raise ValueError(f"device {spec!r}: contentiqa runs on cpu, cuda (cuda:1) or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} requested but CUDA is not available here; use the CPU")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {spec!r} requested but MPS is not available here; use the CPU")
    return device
