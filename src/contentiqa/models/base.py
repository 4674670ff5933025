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
from typing import Any, Callable, Iterable, Sequence

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


DEFAULT_MAX_SIDE = 2048
"""Native-resolution models see images whose longest side is at most this many pixels; larger
ones are downscaled first (with a note in the row). Their memory grows with the pixels
(about 250 bytes per pixel for IQA-CR on a CPU: 6 GB for a 24 MP photo), so this bounds a
run's peak at about 2 GB whatever the photos (benchmarks/results/memory.md). None: never."""

FLOAT_TOLERANCE = 1e-3
"""Float pixels may step this far outside [0, 1] (resampling overshoot); they are clipped."""


def _check_pixels(width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise ValueError(
            f"image is {width}x{height} = {width * height / 1e6:.4g} MP, over the limit of {max_pixels / 1e6:.4g} MP "
            "(set model.max_pixels to allow it)"
        )


def array_to_uint8(a: np.ndarray) -> np.ndarray:
    """Pixel values of any numeric dtype -> uint8, by rules that never guess a range:

    - uint8: as is; bool: refused (a mask, not a photo).
    - floating point: must lie in [0, 1] (NaN / inf refused); scaled by 255.
    - uint16: the 16-bit range 0-65535 (what 16-bit PNG / TIFF hold; same as reading the file).
    - other integers (int8/16/32/64, uint32/64, e.g. a list of Python ints): must lie in 0-255,
      taken as 8-bit values; anything outside is refused (its range is unknown).
    """
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        raise ValueError("boolean input is a mask, not an image: pass uint8 (0-255) or float (0-1) pixels")
    if np.issubdtype(a.dtype, np.floating):
        if a.size and not np.isfinite(a).all():
            raise ValueError("input has NaN or infinite values: pixels must be finite")
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if lo < -FLOAT_TOLERANCE or hi > 1.0 + FLOAT_TOLERANCE:
            raise ValueError(
                f"float input has values in [{lo:.4g}, {hi:.4g}]: float pixels must be in [0, 1] "
                "(divide 0-255 data by 255, or pass it as uint8)"
            )
        return (np.clip(a, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if a.dtype == np.uint16:
        return np.round(a.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    if np.issubdtype(a.dtype, np.integer):
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        if lo < 0 or hi > 255:
            raise ValueError(
                f"{a.dtype} input has values in [{lo}, {hi}]: integer pixels other than uint8/uint16 must be "
                "0-255 (pass uint16 for 16-bit data, or scale it)"
            )
        return a.astype(np.uint8)
    raise TypeError(f"cannot score pixels of dtype {a.dtype}")


def to_pil(item: Any, max_pixels: int | None = DEFAULT_MAX_PIXELS, min_size: int = 32) -> tuple[Image.Image, str | None, list[str]]:
    """Accept a path, PIL image, HxWx3 / HxWx4 / HxW array or 3xHxW / 1xHxW tensor.

    Pixel values follow :func:`array_to_uint8` (uint8 0-255, float 0-1, uint16 0-65535, other
    integers 0-255; NaN, inf, bool and out-of-range values are errors). ``max_pixels`` applies
    to every kind of input, not only files."""
    if isinstance(item, (str, os.PathLike)):
        loaded = load_image(item, max_pixels=max_pixels, min_size=min_size)
        return loaded.image, str(item), loaded.notes
    if isinstance(item, Image.Image):
        notes: list[str] = []
        from ..data.imageio import _to_rgb

        _check_pixels(*item.size, max_pixels)
        img = _to_rgb(item, notes)
        return img, None, notes
    if isinstance(item, torch.Tensor):
        t = item.detach()
        if t.ndim != 3 or t.shape[0] not in (1, 3):
            raise ValueError(f"tensor input must be 3xHxW (or 1xHxW), got shape {tuple(t.shape)}")
        _check_pixels(int(t.shape[2]), int(t.shape[1]), max_pixels)
        if t.dtype == torch.bfloat16:
            t = t.float()
        a = t.cpu().permute(1, 2, 0).numpy()
        a = np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a
        return Image.fromarray(np.ascontiguousarray(array_to_uint8(a)), "RGB"), None, []
    if isinstance(item, np.ndarray):
        a = item
        if a.ndim == 2:
            a = np.stack([a] * 3, axis=-1)
        if a.ndim != 3 or a.shape[2] not in (3, 4):
            raise ValueError(f"array input must be HxWx3 (or HxW / HxWx4), got shape {a.shape}")
        _check_pixels(a.shape[1], a.shape[0], max_pixels)
        return Image.fromarray(np.ascontiguousarray(array_to_uint8(a[..., :3])), "RGB"), None, []
    raise TypeError(f"cannot score an input of type {type(item).__name__}")


class IQAModel(nn.Module):
    """Base class and the contract between a model and generic code.

    Training, evaluation, the frozen-stage cache, explanations, inference and the CLI use a
    model only through what this class declares (never ``hasattr`` probes of a subclass's
    internals), so a new model is a subclass that fills in the hooks below:

    - outputs: ``forward(x)`` -> ``{"score": (B,), "logits": (B, N)}``, keys as
      :attr:`output_names` says (:attr:`predicts_score`, :attr:`has_content_head`);
    - ``cfg``: its config (a dataclass with ``to_dict()`` and a ``scale`` dict), saved in
      checkpoints; :meth:`set_scale` keeps both in step;
    - :meth:`preprocess` (and :meth:`train_transform` for fixed-size models);
    - :meth:`loss`: the model's own loss on normalised scores;
    - :meth:`parameter_groups`: ``head`` / ``backbone`` parameters (the trainer gives the
      backbone ``backbone_lr_scale`` and the head-only warm-up);
    - staged backbone (frozen-stage cache): :attr:`stages`, :attr:`levels`,
      :attr:`feature_end`, :meth:`freeze_stages`, :meth:`frozen_modules`, :meth:`cache_tag`,
      :meth:`cache_views`, :meth:`cache_encode`, :meth:`forward_cached`
      (:attr:`supports_stage_cache` says whether they are filled in);
    - explanations: :meth:`gradcam_modules`, :meth:`attention_layers`, :attr:`token_grid`;
    - export: :attr:`fixed_input_size`, :meth:`onnx_unsupported_reason`.
    """

    model_name: str = "iqa"
    higher_is_better: bool = True
    cfg: Any
    """The model's config: a dataclass with ``to_dict()`` (JSON-able) and ``scale``."""
    mean: Sequence[float]
    std: Sequence[float]
    """The input normalisation ``preprocess`` applies (exported with the model)."""
    checkpoint_info: dict | None = None
    """Set by ``load_checkpoint``: the file and its extras (None for a model built in memory)."""
    channels_last_input: bool = True
    """The CPU engine feeds channels-last batches (faster for CNN backbones)."""
    stages: Sequence[nn.Module] = ()
    """The backbone as an ordered list of stages (empty: no staged backbone)."""
    levels: Sequence[int] = ()
    """Indices of the stages whose outputs the model uses, ascending."""
    feature_end: int = 0
    """Stages the model runs (``levels[-1] + 1``); caching all of them caches pooled features."""
    supports_stage_cache: bool = False
    """True when the cache hooks below are implemented (training with ``cache_stages``)."""
    train_transform: Callable[[Image.Image], torch.Tensor] | None = None
    """Fixed-size models: the training augmentation (PIL image -> tensor); None = the trainer's
    crop / flip of :meth:`preprocess`'s output."""

    def __init__(self, scale: MOSScale | None = None, categories: Sequence[str] = ()):
        super().__init__()
        self.scale = scale or MOSScale(0.0, 100.0)
        self.categories = list(categories)
        self.min_size = 32
        self.max_pixels: int | None = DEFAULT_MAX_PIXELS
        self.max_side: int | None = DEFAULT_MAX_SIDE  # native-resolution models only (memory bound)
        self.weights_tag: str | None = None
        """The pretrained weights' tag (``create_model("name.tag", pretrained=True)``), else None."""

    # -- outputs ---------------------------------------------------------------------------
    @property
    def has_content_head(self) -> bool:
        return bool(self.categories)

    @property
    def predicts_score(self) -> bool:
        """Whether ``forward`` returns ``score`` (a content-only model does not)."""
        return True

    @property
    def output_names(self) -> tuple[str, ...]:
        """The keys of ``forward``'s dict, in order."""
        return ("score",) * self.predicts_score + ("logits",) * self.has_content_head

    def set_scale(self, scale: MOSScale) -> None:
        """Make ``scale`` the MOS scale the normalised score maps to (and the config's, so
        checkpoints carry it)."""
        self.scale = scale
        if getattr(self, "cfg", None) is not None:
            self.cfg.scale = scale.to_dict()

    def loss(self, outputs: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """The model's own score loss: MSE between predicted and normalised MOS. The trainer
        uses it as the score term when the training config's ``score_loss`` is ``"model"`` (the
        recipe of a model that defines its loss, e.g. IE-IQA); content and ranking terms are
        added around it."""
        score = outputs["score"]
        return torch.nn.functional.mse_loss(score, target.to(score.dtype))

    # -- inputs ----------------------------------------------------------------------------
    def preprocess(self, image: Image.Image) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def native_resolution(self) -> bool:
        """True if images are fed at their own size (batching must group equal sizes)."""
        return True

    @property
    def fixed_input_size(self) -> tuple[int, int] | None:
        """(H, W) of a fixed-size model's input; None at native resolution."""
        if self.native_resolution:
            return None
        raise NotImplementedError(f"{type(self).__name__} is not native-resolution but gives no fixed_input_size")

    # -- training --------------------------------------------------------------------------
    def backbone_module(self) -> nn.Module | None:
        """The trainable CNN whose stages are :attr:`stages` (None: none)."""
        return None

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``{"head": [...], "backbone": [...]}``: every trainable parameter once. The trainer
        scales the backbone's learning rate (``backbone_lr_scale``) and holds it back for
        ``head_only_epochs``; the head gets the base rate."""
        bb = self.backbone_module()
        bb_ids = {id(p) for p in bb.parameters()} if bb is not None else set()
        trainable = [p for p in self.parameters() if p.requires_grad]
        return {"head": [p for p in trainable if id(p) not in bb_ids],
                "backbone": [p for p in trainable if id(p) in bb_ids]}

    @property
    def backbone_from_seed(self) -> bool:
        """True when the backbone starts from a random initialisation (neither pretrained nor
        read from a file): its frozen stages then differ from seed to seed."""
        return False

    @property
    def backbone_bn_frozen(self) -> bool:
        """Whether the backbone's BatchNorm keeps its running statistics in training (needed
        for cached stages to equal the live ones)."""
        return False

    def freeze_stages(self, k: int) -> None:
        """Stop gradients to the first ``k`` backbone stages (and keep them frozen on train())."""
        from ..backbones.stages import freeze_stages

        bb = self.backbone_module()
        if bb is None:
            raise ValueError(f"{self.model_name} has no staged backbone to freeze")
        freeze_stages(bb, k)

    def frozen_modules(self, start_stage: int) -> list[nn.Module]:
        """The modules whose weights determine cached encodings at ``start_stage`` (their
        fingerprint keys the cache)."""
        return list(self.stages[:start_stage])

    def _no_cache(self) -> NotImplementedError:
        return NotImplementedError(f"{self.model_name} has no frozen-stage cache hooks")

    def cache_tag(self) -> str:
        """What, besides the frozen weights, makes cached encodings differ (backbone, sizes)."""
        raise self._no_cache()

    def cache_views(self, image: Image.Image, train: bool) -> list[torch.Tensor]:
        """The views of ``image`` whose encodings are cached (training: augmented ones)."""
        raise self._no_cache()

    def cache_encode(self, views: torch.Tensor, start_stage: int) -> dict[str, torch.Tensor]:
        """The frozen part's output for a batch of views (leading axis = view)."""
        raise self._no_cache()

    def forward_cached(self, inputs: dict[str, torch.Tensor], start_stage: int) -> dict[str, torch.Tensor]:
        """``forward`` from :meth:`cache_encode`'s output."""
        raise self._no_cache()

    # -- explanations ----------------------------------------------------------------------
    def gradcam_modules(self) -> list[nn.Module]:
        """Every module whose output is a CNN feature map (B x C x h x w) the outputs depend
        on, shallow to deep: Grad-CAM weighs each, so a heatmap reflects every level the score
        uses, not only the deepest."""
        raise NotImplementedError(
            f"{type(self).__name__} does not say where its CNN feature maps are: it needs a "
            "gradcam_modules() method returning the modules whose outputs are those maps"
        )

    def attention_layers(self) -> list[nn.Module]:
        """Spatial self-attention modules (``keep_attention`` / ``last_attention``), if any."""
        return []

    @property
    def token_grid(self) -> tuple[int, int] | None:
        """(rows, cols) the attention tokens lie on; None: none or square."""
        return None

    # -- export ----------------------------------------------------------------------------
    def onnx_unsupported_reason(self) -> str | None:
        """Why this model cannot be exported to ONNX, or None if it can."""
        return None

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
        An in-memory input the model would score wrongly (NaN / inf, bool, floats outside
        [0, 1], integers outside their range: see :func:`array_to_uint8`; over ``max_pixels``)
        raises ValueError before anything is scored, as does ``batch_size < 1``.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
        single = not isinstance(inputs, (list, tuple)) or (isinstance(inputs, torch.Tensor) and inputs.ndim == 3)
        if isinstance(inputs, torch.Tensor) and inputs.ndim == 4:
            items: list = list(inputs)
            single = False
        else:
            items = [inputs] if single else list(inputs)
        from ..inference.engine import predict_items

        # In-memory inputs are converted (and checked) now: a bad array is the caller's bug, not
        # a file to report; PIL images hold 1 byte per value, a quarter of a float tensor.
        items = [_in_memory_checked(self, it) for it in items]
        results = predict_items(self, items, batch_size=int(batch_size), progress=progress)
        return results[0] if single else results


def limit_side(image: Image.Image, max_side: int | None, notes: list[str]) -> Image.Image:
    """``image`` downscaled (aspect kept, Lanczos) so its longest side is at most ``max_side``,
    saying so in ``notes``: what bounds a native-resolution model's memory."""
    w, h = image.size
    if max_side is None or max(w, h) <= max_side:
        return image
    f = max_side / max(w, h)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    notes.append(f"downscaled from {w}x{h} to {size[0]}x{size[1]} (longest side limited to {max_side} px to bound memory)")
    return image.resize(size, Image.LANCZOS, reducing_gap=3.0)


def _in_memory_checked(model: "IQAModel", item: Any) -> Any:
    if isinstance(item, (str, os.PathLike)):
        return item  # files are reported per row, never raised
    if isinstance(item, Image.Image):
        _check_pixels(*item.size, model.max_pixels)
        return item  # converted later, with its notes (alpha, mode)
    return to_pil(item, model.max_pixels, model.min_size)[0]


def load_image_safely(item: Any, model: IQAModel) -> tuple[Image.Image | None, str | None, list[str], str | None]:
    """(image, path, notes, error) — never raises for a bad file."""
    path = str(item) if isinstance(item, (str, os.PathLike)) else None
    try:
        img, path2, notes = to_pil(item, max_pixels=model.max_pixels, min_size=model.min_size)
        if min(img.size) < model.min_size:
            raise ImageLoadError(path or "<input>", f"image is {img.size[0]}x{img.size[1]}, smaller than the minimum side of {model.min_size} px")
        if model.native_resolution:
            img = limit_side(img, model.max_side, notes)
        return img, path2 or path, notes, None
    except ImageLoadError as exc:
        return None, path, [], exc.reason
    except (ValueError, TypeError) as exc:
        return None, path, [], str(exc)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def iter_inputs(paths: Iterable[str | Path]) -> list[str]:
    return [str(p) for p in paths]
