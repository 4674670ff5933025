"""Tiny random contentiqa models for the CLI / report / explain tests (no shipped weights)."""
from __future__ import annotations

import atexit
import copy
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import pytest
import torch

TINY = dict(pretrained=False, backbone_pretrained=False, dim=16, heads=2, mlp_dim=32, grid=(2, 2), depth=1)


def tiny_model(name: str = "iqa-cr", seed: int = 0, **overrides):
    import contentiqa

    torch.manual_seed(seed)
    return contentiqa.create_model(name, **{**TINY, **overrides}).eval()


@lru_cache(maxsize=None)
def tiny_checkpoint(name: str = "iqa-cr") -> str:
    """A checkpoint of a tiny random model, written once per test session."""
    from contentiqa.models.registry import save_checkpoint

    folder = Path(tempfile.mkdtemp(prefix="contentiqa-tiny-"))
    atexit.register(shutil.rmtree, folder, True)
    return str(save_checkpoint(tiny_model(name), folder / f"tiny-{name}.pt"))


_LOADED: dict[str, object] = {}


def cached_loader(real_load):
    """Wrap ``load_checkpoint`` so each checkpoint is read once per session (a fresh deep copy
    every call, so no state leaks between commands)."""

    def load(path, device="cpu"):
        key = str(Path(path).resolve())
        if key not in _LOADED:
            _LOADED[key] = real_load(path, device)
        return copy.deepcopy(_LOADED[key]).to(device)

    return load


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models on a shared CPU: one intra-op thread is faster (no spinning contention)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
