"""Synthetic damage: graded degradations of a photo, and frames anyone would call bad.

Two uses share these definitions so that they cannot drift apart: training (ranking pairs "a
photo above its degraded copy", and bad frames as anchors at the bottom of the scale) and the
ship gate's damage checks (benchmarks/ship_gate.py). Training draws its photos from the
training sets; the gate builds its suite from other photos.

Every function is deterministic given its arguments (noise takes a seed), works on 8-bit RGB
(other modes are read as :func:`~contentiqa.data.imageio.load_image` reads files) and returns a
new 8-bit RGB image of the same size.
"""
from __future__ import annotations

import functools
import hashlib
import io
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageFilter

from .imageio import to_rgb8

LEVELS = (1, 2, 3, 4)
"""Severity levels of every degradation type (0 would be the photo itself)."""


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """A hash of the code that makes a damaged image's pixels (this module and the image reading
    it relies on): what is stored of damaged images (training's cached encodings, the ship
    gate's suite) is keyed by it, so a retuned or fixed degradation is never served as before."""
    from . import imageio

    h = hashlib.sha1()
    for module_file in (__file__, imageio.__file__):
        h.update(Path(module_file).read_bytes())
    return h.hexdigest()[:12]


def _blur(img: Image.Image, level: int, seed: int) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur((0.0, 1.0, 2.0, 4.0, 8.0)[level]))


def _jpeg(img: Image.Image, level: int, seed: int) -> Image.Image:
    return jpeg(img, (95, 30, 15, 8, 4)[level])


def _noise(img: Image.Image, level: int, seed: int) -> Image.Image:
    sigma = (0.0, 10.0, 20.0, 40.0, 80.0)[level]
    arr = np.asarray(img.convert("RGB"), dtype=np.float32)
    arr = arr + np.random.default_rng(seed).normal(0.0, sigma, arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))


def _gain(img: Image.Image, factor: float) -> Image.Image:
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) * factor
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))


def _under(img: Image.Image, level: int, seed: int) -> Image.Image:
    return _gain(img, (1.0, 0.55, 0.35, 0.2, 0.1)[level])


def _over(img: Image.Image, level: int, seed: int) -> Image.Image:
    return _gain(img, (1.0, 1.6, 2.3, 3.3, 5.0)[level])


DEGRADATIONS: dict[str, Callable[[Image.Image, int, int], Image.Image]] = {
    "blur": _blur,
    "jpeg": _jpeg,
    "noise": _noise,
    "underexposure": _under,
    "overexposure": _over,
}
"""Type -> ``fn(image, level, seed)``; level 1 is visible, level 4 severe."""


def degrade(img: Image.Image, kind: str, level: int, seed: int = 0) -> Image.Image:
    """``img`` with degradation ``kind`` at ``level`` (1-4; 0 returns a copy)."""
    if kind not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {kind!r}; known: {', '.join(DEGRADATIONS)}")
    if level not in (0, *LEVELS):
        raise ValueError(f"level must be 0-{LEVELS[-1]}, not {level!r}")
    img = to_rgb8(img)
    return img.copy() if level == 0 else DEGRADATIONS[kind](img, level, seed)


def jpeg(img: Image.Image, quality: int) -> Image.Image:
    """``img`` compressed as a JPEG of ``quality`` and decoded again."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as out:
        return out.convert("RGB")


def _flat(img: Image.Image, value: int, seed: int) -> Image.Image:
    return Image.new("RGB", img.size, (value,) * 3)


def _uniform_noise(img: Image.Image, seed: int) -> Image.Image:
    w, h = img.size
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _pixelate(img: Image.Image, factor: int) -> Image.Image:
    w, h = img.size
    small = img.resize((max(1, w // factor), max(1, h // factor)), Image.BILINEAR)
    return small.resize((w, h), Image.NEAREST)


BAD_FRAMES: dict[str, Callable[[Image.Image, int], Image.Image]] = {
    "black": lambda img, seed: _flat(img, 0, seed),
    "white": lambda img, seed: _flat(img, 255, seed),
    "gray": lambda img, seed: _flat(img, 128, seed),
    "uniform noise": _uniform_noise,
    "blur r16": lambda img, seed: img.convert("RGB").filter(ImageFilter.GaussianBlur(16)),
    "blur r32": lambda img, seed: img.convert("RGB").filter(ImageFilter.GaussianBlur(32)),
    "pixelated 8x": lambda img, seed: _pixelate(img.convert("RGB"), 8),
    "jpeg q5": lambda img, seed: jpeg(img, 5),
    "jpeg q2": lambda img, seed: jpeg(img, 2),
}
"""Frames anyone would call bad, made from a photo (its size; its content where it has any)."""


def bad_frame(img: Image.Image, kind: str, seed: int = 0) -> Image.Image:
    """The bad frame ``kind`` made from ``img`` (see :data:`BAD_FRAMES`)."""
    if kind not in BAD_FRAMES:
        raise ValueError(f"unknown bad frame {kind!r}; known: {', '.join(BAD_FRAMES)}")
    return BAD_FRAMES[kind](to_rgb8(img), seed)


def parse_spec(spec: str) -> tuple[str, str, int]:
    """``"degrade:noise:3"`` -> ("degrade", "noise", 3); ``"bad:jpeg q5"`` -> ("bad", "jpeg q5", 0)."""
    family, _, rest = spec.partition(":")
    if family == "degrade":
        kind, _, level = rest.rpartition(":")
        return family, kind, int(level)
    if family == "bad":
        return family, rest, 0
    raise ValueError(f"damage spec must start with 'degrade:' or 'bad:', not {spec!r}")


def apply_spec(img: Image.Image, spec: str, seed: int = 0) -> Image.Image:
    """The damage a spec names, applied to ``img`` (``""`` = the photo itself)."""
    if not spec:
        return img
    family, kind, level = parse_spec(spec)
    return degrade(img, kind, level, seed) if family == "degrade" else bad_frame(img, kind, seed)
