"""Shared fixtures for contentiqa's tests.

Real data (the LIVE Challenge copies) lives in ``<repo>/../shared/data``; point the environment
variable ``CONTENTIQA_SHARED`` at another ``shared`` folder to use a copy elsewhere. Tests that
need it are marked ``@pytest.mark.shared`` and skip, saying where they looked, when it is absent.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES_DIR = REPO_ROOT / "examples" / "images"


def shared_root() -> Path:
    env = os.environ.get("CONTENTIQA_SHARED")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``<shared>/data``; skips the test (naming the path) when it is absent."""
    data = shared_root() / "data"
    if not data.is_dir():
        pytest.skip(f"shared data not found at {data} (set CONTENTIQA_SHARED to the 'shared' folder)")
    return data


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    if not EXAMPLES_DIR.is_dir():
        pytest.skip(f"example images not found at {EXAMPLES_DIR}")
    return EXAMPLES_DIR


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


def random_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    """An ``h x w x 3`` uint8 array of random pixels."""
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def write_image(path: Path, h: int = 40, w: int = 48, seed: int = 0, fmt: str | None = None) -> Path:
    """Write a small random RGB image (format from the suffix unless ``fmt``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(random_rgb(h, w, seed)).save(path, format=fmt)
    return path


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk (length, type, data, CRC): for files made byte by byte."""
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width x height`` RGB but carries almost no pixel data."""
    import struct
    import zlib

    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b""))


@pytest.fixture
def make_image():
    """``make_image(path, h=40, w=48, seed=0)`` writes a tiny random RGB image and returns its path."""
    return write_image


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """`make test` runs two pytest workers on two cores: one intra-op thread each avoids
    oversubscription, which makes small forward passes many times slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True, scope="session")
def _private_export_cache(tmp_path_factory):
    """`contentiqa score` exports models to ONNX in the user's cache by default (--runtime auto
    on a CPU): the tests use a cache of their own, shared by the session (each tiny model is
    exported once), never ~/.cache. A test may still point CONTENTIQA_CACHE_DIR elsewhere."""
    saved = os.environ.get("CONTENTIQA_CACHE_DIR")
    os.environ["CONTENTIQA_CACHE_DIR"] = str(tmp_path_factory.mktemp("contentiqa-cache"))
    yield
    if saved is None:
        os.environ.pop("CONTENTIQA_CACHE_DIR", None)
    else:
        os.environ["CONTENTIQA_CACHE_DIR"] = saved
