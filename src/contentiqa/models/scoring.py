"""The torch-free half of scoring: inputs to RGB images, results to :class:`Prediction` rows.

What turns a file (or an array) into the image a model sees, and a model's normalised outputs
into the rows people read, needs numpy and Pillow only. :class:`~contentiqa.models.base.IQAModel`
uses these functions, and so do both scorers of :mod:`contentiqa.inference` (the ONNX Runtime
one scores a photo without importing torch, seconds of start-up saved, and must give the same
rows).
"""
from __future__ import annotations

import math
import os
import sys
import threading
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol, Sequence

import numpy as np
from PIL import Image

from ..data.imageio import (DEFAULT_MAX_PIXELS, MEMORY_HINT, ImageLoadError, colour_narrowed, load_image,
                            note_decoder_orientation, orientation_before_decoding, pil_to_rgb, pixels_to_uint8)

if TYPE_CHECKING:
    from ..data.table import MOSScale


class OnScale:
    """What a model and a scorer of either runtime say of their scale, from ``scale``: its ends
    (``score_range``) and direction (``higher_is_better``; ``lower_better``, pyiqa's name)."""

    scale: MOSScale

    @property
    def score_range(self) -> tuple[float, float]:
        return (self.scale.low, self.scale.high)

    @property
    def higher_is_better(self) -> bool:
        """False for a model trained on DMOS."""
        return bool(self.scale.higher_is_better)

    @property
    def lower_better(self) -> bool:
        return not self.higher_is_better


class ImageLimits(Protocol):
    """What reading an input for a model needs to know of it (a model, or a scorer of either
    runtime): the images it refuses and the size it sees them at."""

    max_pixels: int | None
    """Inputs over this many pixels are refused (decompression-bomb guard); None: no limit."""
    max_side: int | None
    """Native-resolution models: longer sides are downscaled to this first; None: never."""
    min_size: int
    """Inputs with a shorter side are refused."""

    @property
    def native_resolution(self) -> bool:
        """Whether images are fed at their own size (then ``max_side`` applies)."""
        ...


@dataclass
class Prediction:
    """The result for one input. ``score`` is on the model's MOS scale (``score_range``); a model
    without a calibration (older tags, one you trained without ``calibrate``) can score a little
    past its ends: :func:`clip_to_scale` bounds it."""

    path: str | None
    score: float | None
    category: str | None = None
    category_confidence: float | None = None
    probabilities: dict[str, float] | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self, with_probabilities: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not with_probabilities:
            d.pop("probabilities")
        d["notes"] = "; ".join(self.notes)
        return d


def clip_score(score: float, low: float, high: float) -> float:
    """``score`` inside the scale's ends (given in either order)."""
    lo, hi = sorted((low, high))
    return min(max(score, lo), hi)


DEFAULT_MAX_SIDE = 2048
"""Native-resolution models see images whose longest side is at most this many pixels; larger
ones are downscaled first (with a note in the row). Their memory grows with the pixels
(about 250 bytes per pixel for IQA-CR on a CPU: 6 GB for a 24 MP photo), so this bounds what
each run holds whatever the photos: under 1 GB (benchmarks/results/memory.md), and photos run
side by side only as many as half the available memory holds
(:func:`contentiqa.inference.threads.runs_within_memory`). None: never."""


def _check_pixels(width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise ValueError(
            f"image is {width}x{height} = {width * height / 1e6:.4g} MP, over the limit of {max_pixels / 1e6:.4g} MP "
            "(set model.max_pixels to allow it)"
        )


def to_pil(item: Any, max_pixels: int | None = DEFAULT_MAX_PIXELS, min_size: int = 32) -> tuple[Image.Image, str | None, list[str]]:
    """Accept a path, PIL image, HxWx3 / HxWx4 / HxW array or 3xHxW / 1xHxW tensor.

    Pixel values follow :func:`~contentiqa.data.imageio.pixels_to_uint8` (uint8 0-255, float 0-1, uint16 0-65535, other
    integers 0-255; NaN, inf, bool and out-of-range values are errors). ``max_pixels`` applies
    to every kind of input, not only files."""
    if isinstance(item, (str, os.PathLike)):
        loaded = load_image(item, max_pixels=max_pixels, min_size=min_size)
        return loaded.image, str(item), loaded.notes
    if isinstance(item, Image.Image):
        notes: list[str] = []
        _check_pixels(*item.size, max_pixels)
        narrowed = colour_narrowed(item)  # before decoding: its raw mode goes with its tile
        # kept on the object: the same image given twice gets its note twice, not once
        stored = item.__dict__.setdefault(_ORIENTATION, orientation_before_decoding(item))
        _decode_once(item)
        note_decoder_orientation(item, stored, notes)
        img = pil_to_rgb(item, notes, narrowed)
        return img, None, notes
    torch = sys.modules.get("torch")  # a tensor exists only once torch is imported: never import it here
    if torch is not None and isinstance(item, torch.Tensor):
        t = item.detach()
        if t.ndim != 3 or t.shape[0] not in (1, 3):
            raise ValueError(f"tensor input must be 3xHxW (or 1xHxW), got shape {tuple(t.shape)}")
        _check_pixels(int(t.shape[2]), int(t.shape[1]), max_pixels)
        if t.dtype == torch.bfloat16:
            t = t.float()
        a = t.cpu().permute(1, 2, 0).numpy()
        a = np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a
        return Image.fromarray(np.ascontiguousarray(pixels_to_uint8(a)), "RGB"), None, []
    if isinstance(item, np.ndarray):
        return to_pil(_array_image(item, max_pixels), max_pixels, min_size)
    raise TypeError(f"cannot score an input of type {type(item).__name__}")


_LAZY_DECODE = threading.Lock()  # guards the making of each image's own lock, not decoding
_DECODE_LOCK = "_contentiqa_decode_lock"
_DECODE_ERROR = "_contentiqa_decode_error"
_ORIENTATION = "_contentiqa_orientation"  # a TIFF's tag, read before its decoder turns the image and drops it


def _decode_once(image: Image.Image) -> None:
    """Decode an image opened lazily (``Image.open``, pixels not read yet) under its own lock:
    decoding threads given the same object twice ([im, im]) would read its one file handle at
    once, and score garbage pixels (left in the caller's image too); other images decode side by
    side. A failed decode is kept on the object: PIL would hand a second ``load`` the partial
    pixels without a word."""
    if getattr(image, _DECODE_ERROR, None) is None and not getattr(image, "tile", None):
        return  # decoded already (or never a file): nothing to read
    with _LAZY_DECODE:  # (images are unhashable, so the lock lives on the object)
        lock = image.__dict__.setdefault(_DECODE_LOCK, threading.Lock())
    with lock:
        failed = getattr(image, _DECODE_ERROR, None)
        if failed is not None:
            raise failed
        if getattr(image, "tile", None):
            try:
                if getattr(image, "fp", None) is None:  # Pillow's own error is a bare assertion
                    raise ValueError("the PIL image's file was closed before its pixels were read: score it "
                                     "inside its `with Image.open(...)` block, call .load() first, or pass the path")
                image.load()
            except Exception as exc:
                setattr(image, _DECODE_ERROR, exc)
                raise


def _array_image(a: np.ndarray, max_pixels: int | None) -> Image.Image:
    """An HxW / HxWx3 / HxWx4 array as a PIL image, checked; RGBA stays RGBA, so that its alpha
    is composited on white, with the note, as for an RGBA file or PIL image."""
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"array input must be HxWx3 (or HxW / HxWx4), got shape {a.shape}")
    _check_pixels(a.shape[1], a.shape[0], max_pixels)
    return Image.fromarray(np.ascontiguousarray(pixels_to_uint8(a)), "RGBA" if a.shape[2] == 4 else "RGB")


def limited_size(w: int, h: int, max_side: int | None) -> tuple[int, int]:
    """``(w, h)`` of an image once :func:`limit_side` has bounded its longest side (training
    groups photos by it from their headers alone)."""
    if max_side is None or max(w, h) <= max_side:
        return w, h
    f = max_side / max(w, h)
    return max(1, round(w * f)), max(1, round(h * f))


def limit_side(image: Image.Image, max_side: int | None, notes: list[str]) -> Image.Image:
    """``image`` downscaled (aspect kept, Lanczos) so its longest side is at most ``max_side``,
    saying so in ``notes``: what bounds a native-resolution model's memory."""
    w, h = image.size
    size = limited_size(w, h, max_side)
    if size == (w, h):
        return image
    notes.append(f"downscaled from {w}x{h} to {size[0]}x{size[1]} (longest side limited to {max_side} px to bound memory)")
    return image.resize(size, Image.LANCZOS, reducing_gap=3.0)


DOWNSCALE_HINT = "a max_side of None (never downscale) reads it at full size"
"""The library's way out for a photo too thin once downscaled; `score` says it as --max-side 0."""


def as_model_reads(img: Image.Image, model: ImageLimits, notes: list[str], path: str | None = None) -> Image.Image:
    """``img`` as ``model`` reads it: a native-resolution model's longest side bounded by its
    ``max_side`` (noted). ImageLoadError when a side is under ``min_size``, after downscaling too
    (a long thin photo can end too thin). What scoring and explaining both run the model on."""
    size = img.size
    if model.native_resolution:
        img = limit_side(img, model.max_side, notes)
    least = max(1, model.min_size)  # an image without pixels is never scored (a min_size of 0 scored one black)
    if min(img.size) < least:
        shown = f"{size[0]}x{size[1]}" + (f" (downscaled to {img.size[0]}x{img.size[1]})" if img.size != size else "")
        fix = f"; the downscaling to a longest side of {model.max_side} px made it so: {DOWNSCALE_HINT}" \
            if img.size != size else ""
        raise ImageLoadError(path or "<input>",
                             f"image is {shown}, smaller than the minimum side of {least} px{fix}")
    return img


def in_memory_checked(model: ImageLimits, item: Any) -> Any:
    """An in-memory input converted and checked now (a bad array is the caller's bug, raised);
    files pass through (their problems become rows)."""
    if isinstance(item, (str, os.PathLike)):
        return item  # files are reported per row, never raised
    if isinstance(item, Image.Image):
        _check_pixels(*item.size, model.max_pixels)
        if item.mode in ("I", "F") or item.mode.startswith("I;16"):
            pil_to_rgb(item, [])  # pixel values held to the array rules now: a bad one raises, as an array's does
        return item  # converted later, with its notes (alpha, mode)
    if isinstance(item, np.ndarray):
        return _array_image(item, model.max_pixels)  # likewise
    return to_pil(item, model.max_pixels, model.min_size)[0]


def load_image_safely(item: Any, model: ImageLimits) -> tuple[Image.Image | None, str | None, list[str], str | None]:
    """(image, path, notes, error) — never raises for a bad file."""
    path = str(item) if isinstance(item, (str, os.PathLike)) else None
    try:
        img, path2, notes = to_pil(item, max_pixels=model.max_pixels, min_size=model.min_size)
        return as_model_reads(img, model, notes, path), path2 or path, notes, None
    except ImageLoadError as exc:
        return None, path, [], exc.reason
    except (ValueError, TypeError) as exc:
        return None, path, [], str(exc)
    except MemoryError:  # decoded, but converting or resizing it needed more than the machine had
        return None, path, [], f"not enough memory to read this image: {MEMORY_HINT}"
    except Exception as exc:  # one unreadable input is an error row, never the end of a batch
        return None, path, [], f"cannot read image ({type(exc).__name__}: {exc})"


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis in float32 (as ``torch.softmax`` of float32 logits)."""
    x = np.asarray(logits, dtype=np.float32)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def predictions_from_outputs(
    scale: "MOSScale",
    categories: Sequence[str],
    score: np.ndarray | None,
    probabilities: np.ndarray | None,
    paths: Sequence[str | None],
    notes: Sequence[list[str]],
) -> list[Prediction]:
    """One :class:`Prediction` per input from a batch's normalised ``score`` (B,) and category
    ``probabilities`` (B, C) (either may be None): the one place both runtimes make results."""
    scores = scale.denormalize(score) if score is not None else None
    preds = []
    for i, path in enumerate(paths):
        p = Prediction(path=path, score=float(scores[i]) if scores is not None else None, notes=list(notes[i]))
        if probabilities is not None and categories and not np.isfinite(probabilities[i]).all():
            # argmax of NaNs is the first category: a broken head would look like a labeller
            p.error = "the model gave no category (NaN): its weights are broken (a training that diverged?)"
        elif probabilities is not None and categories:
            j = int(probabilities[i].argmax())
            p.category = categories[j]
            p.category_confidence = float(probabilities[i, j])
            p.probabilities = {c: float(v) for c, v in zip(categories, probabilities[i])}
        preds.append(p)
    return preds


def clip_to_scale(pred: Prediction, scale: "MOSScale") -> Prediction:
    """``pred`` with its score clipped to the rating scale's ends, the raw value in its notes
    (see :meth:`contentiqa.models.base.IQAModel.clip_to_scale`). A copy: the raw prediction
    stays what ``predict`` gave, for the metrics computed from it."""
    if pred.score is None:
        return pred
    if math.isnan(pred.score):  # broken weights (a diverged training): no score, not a clipped one
        return replace(pred, score=None, notes=list(pred.notes),
                       error="the model gave no score (NaN): its weights are broken (a training that diverged?)")
    lo, hi = sorted((scale.low, scale.high))
    clipped = clip_score(pred.score, lo, hi)
    if clipped == pred.score:
        return pred
    return replace(pred, score=clipped,
                   notes=[*pred.notes, f"score clipped to the scale's range [{lo:g}, {hi:g}] (raw {pred.score:.2f})"])
