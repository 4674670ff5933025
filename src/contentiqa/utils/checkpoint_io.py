"""Model and trainer files are data, never code.

Every ``.pt`` file contentiqa reads goes through :func:`load_torch_file`, which unpickles with
``torch.load(weights_only=True)``: only tensors, numbers, strings, lists, tuples, dicts (and
the few torch types allowed below) can come out, so a file whose pickle would run code is
refused before anything runs. What contentiqa writes is made of those plain types by
:func:`plain_data`, so every file it produces loads back the same way.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .io import read_head

# torch.__version__ is a TorchVersion (a str subclass); the shipped weights of 0.1.0 hold one
# in their provenance. It is a plain string with comparison methods, so it may be unpickled.
SAFE_GLOBALS: list = [torch.torch_version.TorchVersion]


class CheckpointReadError(ValueError):
    """A model or trainer file cannot be used: damaged, truncated, or not what was expected."""


class UnsafeCheckpointError(CheckpointReadError):
    """A checkpoint holds objects other than plain data (its pickle could run code)."""


def load_torch_file(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` with messages that name the file (see
    :func:`read_torch_file`)."""
    return read_torch_file(path, what)[0]


def read_torch_file(path: str | os.PathLike, what: str = "checkpoint") -> tuple[Any, str]:
    """``(payload, sha256)``: ``torch.load(weights_only=True)`` of the file's bytes, read once, and
    the SHA-256 of those same bytes, so what identifies a model (result rows, export cache keys)
    is what was loaded even if the file is replaced meanwhile (a training run writing best.pt).

    Raises :class:`UnsafeCheckpointError` for a file whose pickle asks for anything outside
    plain data (nothing in it is executed), :class:`CheckpointReadError` (a ValueError) for a
    file that is not a readable PyTorch file (truncated, not a checkpoint), ``FileNotFoundError`` when it does not exist."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointReadError(f"{what} {path} is a folder, not a model file")
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        data = path.read_bytes()
        with torch.serialization.safe_globals(SAFE_GLOBALS), warnings.catch_warnings():
            # a pickle of another protocol than torch.save's: its advice to "file an issue" is
            # not the user's business; the file is refused below with what it is
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True), hashlib.sha256(data).hexdigest()
    except pickle.UnpicklingError as exc:
        detail = str(exc)
        culprit = _unsafe_globals(path)
        # Only a pickle that asks for a global is unsafe; any other file (a photo, a CSV, an
        # ONNX graph) also fails "weights only" loading, and is simply not a checkpoint.
        low = detail.lower()
        if culprit or "unsupported global" in low or "not an allowed global" in low:
            raise UnsafeCheckpointError(
                f"refusing to load {what} {path}: it contains Python objects other than tensors and plain "
                f"data{f' ({culprit})' if culprit else ''}, which could run code when unpickled. Nothing in it "
                "was executed. Use a checkpoint written by contentiqa (`contentiqa train`, save_checkpoint), "
                "or re-save the state dict alone from a source you trust."
            ) from None
        if _is_pickle(path):  # pickle.dump's, not torch.save's: whether it asks for code cannot be told unread
            raise CheckpointReadError(f"refusing to load {what} {path}: it is a Python pickle, not a file `torch.save` "
                                      "wrote, and a pickle may run code when loaded. Nothing in it was executed. Use a "
                                      "checkpoint written by contentiqa (`contentiqa train`, save_checkpoint)") from None
        onnx = " (an ONNX graph is read as one only when its name ends in .onnx)" if _looks_like_onnx(path) else ""
        raise CheckpointReadError(_other_format(path, what) or f"{what} {path} is not a PyTorch checkpoint (not a file "
                                  f"`torch.save` wrote, or damaged){onnx}") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, AttributeError, TypeError,
            struct.error) as exc:  # (struct.error: a legacy torch.save file cut short)
        other = _other_format(path, what)
        if other:
            raise CheckpointReadError(other) from None
        raise CheckpointReadError(
            f"{what} {path} is not a readable PyTorch file (truncated or damaged?): {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None


def _other_format(path: Path, what: str) -> str | None:
    """What to say of a weights file of another library's format (timm's hub gives
    ``model.safetensors``), which is not damaged, only not read here; None for any other file."""
    head = read_head(path, 16)
    if len(head) >= 10 and int.from_bytes(head[:8], "little") < 100_000_000 and head[8:10] in (b'{"', b"{ "):
        kind = "a safetensors file"
    elif head[:2] == b"PK" and path.suffix.lower() == ".npz":
        kind = "a NumPy archive (.npz)"
    else:
        return None
    return (f"{what} {path} is {kind}, not a PyTorch file: load it with its library and save the state dict "
            "with torch.save")


def _looks_like_onnx(path: Path) -> bool:
    """An ONNX ModelProto's first bytes: its IR version (field 1), then the producer's name."""
    head = read_head(path, 64)
    return head[:1] == b"\x08" and (b"pytorch" in head or b"onnx" in head.lower())


def _is_pickle(path: Path) -> bool:
    """Whether the file starts as a pickle of protocol 2 or later does (its PROTO opcode)."""
    head = read_head(path, 2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _unsafe_globals(path: Path) -> str:
    """The globals the file asks for, e.g. 'posix.system', for the message (never loaded)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # a damaged file: the message goes without the names
        return ""
    return ", ".join(names[:5])


def plain_data(obj: Any) -> Any:
    """``obj`` with numpy scalars/arrays, paths and str/int/float subclasses turned into the
    built-in types, tensors moved to the CPU, so ``torch.save(plain_data(x))`` always loads back
    under ``weights_only=True``. Anything else raises TypeError (naming it) at save time,
    rather than writing a file that later cannot be read safely."""
    if obj is None or type(obj) in (bool, int, float, str, bytes):
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, (torch.dtype, torch.device, torch.Size)):
        return obj
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj)
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, dict):
        return {plain_data(k): plain_data(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(plain_data(v) for v in obj)
    if isinstance(obj, (list, set, frozenset)):
        return [plain_data(v) for v in obj]
    raise TypeError(f"cannot store a {type(obj).__module__}.{type(obj).__qualname__} in a checkpoint: use plain data")
