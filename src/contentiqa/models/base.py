"""What every contentiqa model is: an ``nn.Module`` that scores images and knows its scale.

A model's ``forward(x)`` returns ``{"score": (B,) normalised score, "logits": (B, N)}`` (logits
only for models with a content head). The normalised score lives on [0, 1] of the training
data's MOS range; :meth:`IQAModel.predict` maps it back to that MOS scale and handles
everything between a file and a tensor.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..data.imageio import DEFAULT_MAX_PIXELS, ImageLoadError, load_image
from ..data.table import MOSScale

# The ten content categories of IQA-CR's KonIQ-10k labelling (§IV.A).
IQA_CR_CATEGORIES = (
    "animal", "artifact", "cityscape", "human", "indoor scene",
    "landscape", "night scene", "plant", "vehicle", "others",
)


@dataclass
class Prediction:
    """The result for one input. ``score`` is on the model's MOS scale (``score_range``)."""

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


def pil_to_tensor(image: Image.Image, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """8-bit RGB PIL image -> normalised float tensor (3, H, W), no resizing.

    ``(pixel / 255 - mean) / std``, computed as one multiply-add per value on the image's own
    HWC layout (about twice as fast as a strided CHW conversion on large photos); the result
    is a (3, H, W) view of HWC memory, i.e. channels-last, as ``torch.stack`` and the scoring
    engine expect."""
    arr = np.array(image, dtype=np.uint8, copy=True)  # writable HWC copy (1 byte per value)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB image, got an array of shape {arr.shape}")
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], dtype=torch.float32)
    shift = torch.tensor([-m / s for m, s in zip(mean, std)], dtype=torch.float32)
    t = torch.from_numpy(arr).to(torch.float32).mul_(scale).add_(shift)
    return t.permute(2, 0, 1)


def to_pil(item: Any, max_pixels: int | None = DEFAULT_MAX_PIXELS, min_size: int = 32) -> tuple[Image.Image, str | None, list[str]]:
    """Accept a path, PIL image, HxWx3 / HxW uint8 or float array, or 3xHxW tensor in [0, 1]."""
    if isinstance(item, (str, os.PathLike)):
        loaded = load_image(item, max_pixels=max_pixels, min_size=min_size)
        return loaded.image, str(item), loaded.notes
    if isinstance(item, Image.Image):
        notes: list[str] = []
        from ..data.imageio import _to_rgb

        img = _to_rgb(item, notes)
        return img, None, notes
    if isinstance(item, torch.Tensor):
        t = item.detach().cpu()
        if t.ndim == 3 and t.shape[0] in (1, 3):
            t = t.expand(3, -1, -1) if t.shape[0] == 1 else t
            if t.is_floating_point():
                arr = (t.clamp(0, 1) * 255.0).round().byte().permute(1, 2, 0).numpy()
            else:
                arr = t.byte().permute(1, 2, 0).numpy()
            return Image.fromarray(arr, "RGB"), None, []
        raise ValueError(f"tensor input must be 3xHxW (or 1xHxW), got shape {tuple(t.shape)}")
    if isinstance(item, np.ndarray):
        a = item
        if a.ndim == 2:
            a = np.stack([a] * 3, axis=-1)
        if a.ndim != 3 or a.shape[2] not in (3, 4):
            raise ValueError(f"array input must be HxWx3 (or HxW / HxWx4), got shape {a.shape}")
        a = a[..., :3]
        if a.dtype != np.uint8:
            if np.issubdtype(a.dtype, np.floating) and a.max() <= 1.0:
                a = (np.clip(a, 0, 1) * 255.0).round()
            a = np.clip(a, 0, 255).astype(np.uint8)
        return Image.fromarray(np.ascontiguousarray(a), "RGB"), None, []
    raise TypeError(f"cannot score an input of type {type(item).__name__}")


class IQAModel(nn.Module):
    """Base class: scale bookkeeping, preprocessing contract and ``predict``."""

    model_name: str = "iqa"
    higher_is_better: bool = True

    def __init__(self, scale: MOSScale | None = None, categories: Sequence[str] = ()):
        super().__init__()
        self.scale = scale or MOSScale(0.0, 100.0)
        self.categories = list(categories)
        self.min_size = 32
        self.max_pixels: int | None = DEFAULT_MAX_PIXELS
        self.weights_tag: str | None = None
        """The pretrained weights' tag (``create_model("name.tag", pretrained=True)``), else None."""

    # -- what subclasses provide -------------------------------------------------------
    @property
    def has_content_head(self) -> bool:
        return bool(self.categories)

    def preprocess(self, image: Image.Image) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def native_resolution(self) -> bool:
        """True if images are fed at their own size (batching must group equal sizes)."""
        return True

    # -- conveniences --------------------------------------------------------------------
    @property
    def score_range(self) -> tuple[float, float]:
        return (self.scale.low, self.scale.high)

    @property
    def lower_better(self) -> bool:  # pyiqa's name
        return not self.higher_is_better

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def to_mos(self, normalized: torch.Tensor | np.ndarray) -> np.ndarray:
        if isinstance(normalized, torch.Tensor):
            normalized = normalized.detach().float().cpu().numpy()
        return self.scale.denormalize(normalized)

    def results_from_outputs(self, out: dict[str, torch.Tensor], paths: Sequence[str | None], notes: Sequence[list[str]]) -> list[Prediction]:
        scores = self.to_mos(out["score"]) if "score" in out else None
        probs = out["logits"].float().softmax(-1).cpu().numpy() if "logits" in out and self.categories else None
        preds = []
        for i, path in enumerate(paths):
            p = Prediction(path=path, score=float(scores[i]) if scores is not None else None, notes=list(notes[i]))
            if probs is not None:
                j = int(probs[i].argmax())
                p.category = self.categories[j]
                p.category_confidence = float(probs[i, j])
                p.probabilities = {c: float(v) for c, v in zip(self.categories, probs[i])}
            preds.append(p)
        return preds

    def clip_to_scale(self, pred: Prediction) -> Prediction:
        """``pred`` with its score clipped to the rating scale's ends, the raw value in its notes.

        A regression head can step past the ends of the scale on extreme photos; a MOS cannot.
        What people read (``contentiqa score`` tables, files, reports) is clipped; ``predict`` and
        the metrics keep the raw output, as IQA papers evaluate it."""
        if pred.score is None:
            return pred
        lo, hi = sorted((self.scale.low, self.scale.high))
        clipped = clip_score(pred.score, lo, hi)
        if clipped != pred.score:
            pred.notes.append(f"score clipped to the scale's range [{lo:g}, {hi:g}] (raw {pred.score:.2f})")
            pred.score = clipped
        return pred

    @torch.inference_mode()
    def predict(self, inputs: Any, batch_size: int = 8, progress: bool = False) -> list[Prediction] | Prediction:
        """Score one input or many (paths, PIL images, arrays, tensors).

        Returns a :class:`Prediction` per input, in order (a single one for a single input).
        A file that cannot be read yields a Prediction with ``error`` set; the rest are scored.
        """
        single = not isinstance(inputs, (list, tuple)) or (isinstance(inputs, torch.Tensor) and inputs.ndim == 3)
        if isinstance(inputs, torch.Tensor) and inputs.ndim == 4:
            items: list = list(inputs)
            single = False
        else:
            items = [inputs] if single else list(inputs)
        from ..inference.engine import predict_items

        results = predict_items(self, items, batch_size=batch_size, progress=progress)
        return results[0] if single else results


def load_image_safely(item: Any, model: IQAModel) -> tuple[Image.Image | None, str | None, list[str], str | None]:
    """(image, path, notes, error) — never raises for a bad file."""
    path = str(item) if isinstance(item, (str, os.PathLike)) else None
    try:
        img, path2, notes = to_pil(item, max_pixels=model.max_pixels, min_size=model.min_size)
        if min(img.size) < model.min_size:
            raise ImageLoadError(path or "<input>", f"image is {img.size[0]}x{img.size[1]}, smaller than the minimum side of {model.min_size} px")
        return img, path2 or path, notes, None
    except ImageLoadError as exc:
        return None, path, [], exc.reason
    except (ValueError, TypeError) as exc:
        return None, path, [], str(exc)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def iter_inputs(paths: Iterable[str | Path]) -> list[str]:
    return [str(p) for p in paths]
