"""Helpers shared by the sub-commands (not a command itself: main.py only imports the
modules it lists)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from .main import UsageError

if TYPE_CHECKING:  # torch is imported where a model is loaded, not at CLI start-up (seconds)
    import torch


def resolve_device(spec: str) -> "torch.device":
    import torch

    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError, ValueError):
        raise UsageError(f"unknown device {spec!r} (use cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {spec!r} requested but CUDA is not available here; use --device cpu")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError(f"device {spec!r} requested but MPS is not available here; use --device cpu")
    return device


def looks_like_checkpoint(spec: str) -> bool:
    return spec.endswith((".pt", ".pth")) or os.sep in spec or (os.altsep or "\0") in spec or Path(spec).is_file()


def weights_file_for(spec: str) -> tuple[Path, str | None] | None:
    """``(file, weights tag)`` that ``load_model(spec)`` would read, found without torch (the
    registry and a path check); None when ``spec`` names nothing loadable (``load_model`` then
    says why)."""
    if looks_like_checkpoint(spec):
        return (Path(spec), None) if os.path.isfile(spec) else None
    from ..models import registry

    try:
        return registry.weights_file(spec)
    except (ValueError, FileNotFoundError):
        return None


def load_model(spec: str, device: "torch.device | str" = "cpu"):
    """A model from a registered name (with its shipped weights) or a checkpoint path.

    Every failure a user can cause (unknown name, missing weights or checkpoint, a file that
    is no checkpoint) becomes a :class:`UsageError` with a message saying what to do."""
    from .. import DEFAULT_MODEL
    from ..models.registry import create_model, list_models, load_checkpoint, model_entry, split_name

    if looks_like_checkpoint(spec):
        try:
            return load_checkpoint(spec, device)
        except FileNotFoundError:
            raise UsageError(f"checkpoint {spec} does not exist") from None
        except (ValueError, TypeError, KeyError) as exc:
            raise UsageError(str(exc)) from None
    if split_name(spec)[0] not in list_models():
        raise UsageError(
            f"unknown model {spec!r}; available: {', '.join(list_models())} (or a checkpoint file .pt)"
        )
    try:
        return create_model(spec, pretrained=True, device=device)
    except ValueError as exc:  # an unknown weights tag
        raise UsageError(str(exc)) from None
    except FileNotFoundError:
        entry = model_entry(spec)
        which = "the default model" if spec == DEFAULT_MODEL else "model"
        shipped = list_models(pretrained_only=True)
        raise UsageError(
            f"{which} '{spec}' has no trained weights in this install (expected "
            f"contentiqa/weights/{entry.weights}). Pass a trained checkpoint with --model PATH.pt "
            f"(e.g. one written by `contentiqa train`)"
            + (f", or one of the models with shipped weights: {', '.join(shipped)}" if shipped else "")
            + "."
        ) from None


def resolve_runtime(args, default: str) -> None:
    """Settle ``--runtime`` / ``--onnx-model`` / ``--device`` into ``args.runtime``: 'torch',
    'onnx', or 'onnx_or_torch' (``auto`` on the CPU: ONNX Runtime, torch when the model cannot
    be exported). Shared by ``score`` and ``serve`` so both refuse the same combinations."""
    if args.onnx_model is not None:
        if args.runtime == "torch":
            raise UsageError("--onnx-model runs in ONNX Runtime: drop --runtime torch (or use --runtime onnx)")
        args.runtime = "onnx"
        if not os.path.isfile(args.onnx_model):
            raise UsageError(f"--onnx-model {args.onnx_model} does not exist")
    args.runtime = args.runtime or default
    if args.runtime == "auto":
        # ONNX Runtime is the faster CPU runtime (benchmarks/results/speed.md); it runs on the
        # CPU only, so another device means torch.
        args.runtime = "onnx_or_torch" if str(args.device) == "cpu" else "torch"
    if args.runtime == "onnx" and str(args.device) != "cpu":
        raise UsageError("--runtime onnx runs on the CPU: drop --device (or use --runtime torch)")
