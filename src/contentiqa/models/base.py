"""What every contentiqa model is: an ``nn.Module`` that scores images and knows its scale.

A model's ``forward(x)`` returns ``{"score": (B,) normalised score, "logits": (B, N)}`` (logits
only for models with a content head). The normalised score lives on [0, 1] of the training
data's MOS range; :meth:`IQAModel.predict` maps it back to that MOS scale and handles
everything between a file and a tensor.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..data.categories import IQA_CR_CATEGORIES  # noqa: F401  (re-exported: models name it here too)
from ..data.imageio import DEFAULT_MAX_PIXELS
from ..data.table import MOSScale
from ..utils.spreadsheet import looks_like_formula
from .scoring import DEFAULT_MAX_SIDE, OnScale, Prediction, clip_to_scale, limit_side, predictions_from_outputs



def check_calibration(params: Sequence[float] | None) -> list[float] | None:
    """``params`` as the calibration :meth:`IQAModel.calibrate` applies, or a ValueError: four
    finite numbers ``[a, b, c, d]`` with b, d > 0 (increasing: a decreasing map would reverse
    every ranking without a word) and 0 <= a < a + b <= 1 (inside the normalised scale). Checked
    where a calibration is set and where a config is built, so a checkpoint's is checked at load."""
    if params is None:
        return None
    try:
        values = [float(v) for v in params]
    except (TypeError, ValueError):
        raise ValueError(f"calibration must be four numbers [a, b, c, d], got {params!r}") from None
    tol = 1e-6
    if len(values) != 4 or not np.isfinite(values).all() or not (values[1] > 0 and values[3] > 0) \
            or not (-tol <= values[0] and values[0] + values[1] <= 1 + tol):
        raise ValueError("calibration must be four finite numbers [a, b, c, d] with b, d > 0 (increasing) and "
                         f"0 <= a < a + b <= 1 (inside the normalised scale), got {params!r}")
    return values


@dataclass(frozen=True)
class CachePart:
    """One component of a model's frozen part, cached on its own (see
    :func:`contentiqa.training.cache.cached_encodings`).

    ``key`` names what computes it besides the frozen weights (backbone, input size, pooling);
    ``modules`` are the frozen modules whose weights it depends on (their fingerprint keys the
    cache); ``encode(views)`` returns its tensors, with a leading view axis. Two models whose
    parts have the same name, key and weights share those encodings."""

    name: str
    key: str
    modules: tuple[nn.Module, ...]
    encode: Callable[[torch.Tensor], dict[str, torch.Tensor]]


def tensor_versions(tensors: Iterable[torch.Tensor]) -> tuple:
    """Each tensor's identity, storage and in-place version counter: equal while none was
    replaced (``p.data = ...`` too) or changed in place (an optimizer step, ``load_state_dict``),
    so what was computed from them can be kept. An inference tensor (made under
    ``torch.inference_mode``) has no counter, and counts as unchanged; so does a change made in
    place through ``p.data`` (``p.data.mul_(2)``), which bypasses the counter: change weights in
    place under ``torch.no_grad()`` instead (``p.mul_(2)``), as optimizers do."""
    return tuple((id(t), t.data_ptr(), -1 if t.is_inference() else t._version) for t in tensors)


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


def resized_input(image: Image.Image, size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """A fixed-size model's test-time input: the photo resized to ``size`` x ``size`` with
    Pillow's bilinear filter (what the torch-free ONNX path does too), then normalised."""
    return pil_to_tensor(image.resize((size, size), Image.BILINEAR), mean, std)


class IQAModel(OnScale, nn.Module):
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
      :attr:`feature_end`, :meth:`freeze_stages`, :meth:`frozen_modules`, :meth:`cache_parts`,
      :meth:`cache_views`, :meth:`cache_encode`, :meth:`forward_cached`, :meth:`trained_stages`
      (:attr:`supports_stage_cache` says whether they are filled in);
    - shared stages: :meth:`forward_from_stages` (:attr:`shares_stages`), which lets an ensemble
      run its members' identical first stages once;
    - explanations: :meth:`gradcam_modules`, :meth:`attention_layers`, :attr:`token_grid`;
    - export: :attr:`fixed_input_size`, :meth:`onnx_unsupported_reason`.
    """

    model_name: str = "iqa"
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
    trainable: bool = True
    """False for a model made from trained models (:class:`~contentiqa.models.ensemble.Ensemble`):
    the trainer refuses it, and train its parts instead."""
    train_transform: Callable[[Image.Image], torch.Tensor] | None = None
    """Fixed-size models: the training augmentation (PIL image -> tensor); None = the trainer's
    crop / flip of :meth:`preprocess`'s output."""

    def __init__(self, scale: MOSScale | None = None, categories: Sequence[str] = ()):
        super().__init__()
        self.scale = scale or MOSScale(0.0, 100.0)
        self.categories = list(categories)
        formulas = [c for c in self.categories if looks_like_formula(str(c))]
        if formulas:  # a model file's own names land in every table written of its predictions
            raise ValueError(f"category name(s) {formulas[:3]} start as a spreadsheet formula does: a table of the "
                             "model's predictions opened in one would run them; name them otherwise")
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

    def calibrate(self, score: torch.Tensor) -> torch.Tensor:
        """The normalised score through the model's calibration, when it has one: a logistic
        ``a + b / (1 + exp(-(s - c) / d))`` (``cfg.calibration = [a, b, c, d]``, b, d > 0), fitted on
        validation data after training so that the output lands on the rating scale as people
        use it. Monotone, so rankings (SROCC) are unchanged; bounded by a and a + b, so a photo
        never leaves the scale. Part of ``forward``: every runtime, ONNX included, applies it."""
        cal = self.cfg.calibration
        if not cal:
            return score
        a, b, c, d = (float(v) for v in cal)
        return a + b * torch.sigmoid((score - c) / d)

    def set_calibration(self, params: Sequence[float] | None) -> None:
        """Store a calibration (see :meth:`calibrate`) in the model's config: it travels with the
        weights in every checkpoint."""
        self.cfg.calibration = check_calibration(params)

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

    def cache_parts(self, start_stage: int) -> list[CachePart]:
        """The independently cached components of the frozen part at ``start_stage``."""
        raise self._no_cache()

    def cache_view_names(self) -> str:
        """What :meth:`cache_views` returns, in words (part of the cache key)."""
        return f"image (longest side at most {self.max_side}), mirror" if self.native_resolution else "image, mirror"

    def cache_views(self, image: Image.Image) -> list[torch.Tensor]:
        """The views of ``image`` whose encodings are cached: the image as :meth:`preprocess`
        gives it as scoring reads it (a native-resolution model's longest side bounded by
        ``max_side``) and its mirror (a flip for training)."""
        if self.native_resolution:
            image = limit_side(image, self.max_side, [])
        x = self.preprocess(image)
        return [x, x.flip(-1)]

    def cache_encode(self, views: torch.Tensor, start_stage: int) -> dict[str, torch.Tensor]:
        """The frozen part's output for a batch of views (leading axis = view): every cache
        part's tensors together, as :meth:`forward_cached` takes them."""
        out: dict[str, torch.Tensor] = {}
        for part in self.cache_parts(start_stage):
            out.update(part.encode(views))
        return out

    def loaded_sha256(self, path: Any) -> str | None:
        """SHA-256 of the bytes these weights were read from when they came from the file ``path``
        (``load_checkpoint`` hashes what it loads: the file may have been replaced since), else None."""
        from pathlib import Path

        info = self.checkpoint_info or {}
        same = path is not None and info.get("path") and Path(info["path"]) == Path(path)
        return info.get("file_sha256") if same else None

    def trained_stages(self, start_stage: int) -> str:
        """Which stages train on top of ``start_stage`` cached ones, in words (results files):
        stages frozen without a cache (a model argument such as IQA-CR's ``frozen_stages``) are
        read from the parameters themselves, and so are parts frozen beside the stages (IE-IQA's
        intelligibility network)."""
        beside = self._frozen_beside_stages()
        n = len(self.stages)
        if not n:  # no staged backbone (a model of one's own): nothing is cached, all of it trains
            return "everything (nothing cached)" if not beside else f"everything but {beside} (frozen; nothing cached)"
        if start_stage >= self.feature_end:
            return "head only (backbone frozen; pooled features cached)"
        used = self.stages[start_stage:self.feature_end]
        first = start_stage + next((i for i, s in enumerate(used) if any(p.requires_grad for p in s.parameters())),
                                   len(used))
        frozen = [f"stages 0-{start_stage - 1} frozen and cached"] if start_stage else []
        if first > start_stage:
            frozen.append(f"stages {start_stage}-{first - 1} frozen, not cached")
        if first >= self.feature_end:
            return f"head only (backbone frozen; {'; '.join(frozen)})"
        if beside:
            frozen.append(f"{beside} frozen")
        if not frozen:
            return "everything (nothing cached)"
        if first == 0 and not start_stage:
            return f"everything but {beside} (frozen; nothing cached)"
        return f"backbone stages {first}-{self.feature_end - 1} of 0-{n - 1} and the head ({'; '.join(frozen)})"

    def _frozen_beside_stages(self) -> str:
        """The model's parts outside its stages whose parameters are all frozen, by name ('' if none)."""
        in_stages = {id(p) for s in self.stages for p in s.parameters()}
        names = []
        for name, child in self.named_children():
            params = list(child.parameters())
            if params and not any(p.requires_grad for p in params) and not any(id(p) in in_stages for p in params):
                names.append(name)
        return ", ".join(names)

    def forward_cached(self, inputs: dict[str, torch.Tensor], start_stage: int) -> dict[str, torch.Tensor]:
        """``forward`` from :meth:`cache_encode`'s output."""
        raise self._no_cache()

    # -- shared stages (ensembles) -----------------------------------------------------------
    shares_stages: bool = False
    """True when :meth:`forward_from_stages` is implemented."""

    def forward_from_stages(self, x: torch.Tensor, outputs: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """``forward(x)``, given ``outputs[i]``, the output of stage ``i`` (:attr:`stages`) on ``x``
        for every ``i < len(outputs)``, computed elsewhere: an ensemble whose members have the
        same first stages (same weights, same input) runs them once for all of them."""
        raise NotImplementedError(f"{self.model_name} cannot run from stage outputs computed elsewhere")

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
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def to_mos(self, normalized: torch.Tensor | np.ndarray) -> np.ndarray:
        if isinstance(normalized, torch.Tensor):
            normalized = normalized.detach().float().cpu().numpy()
        return self.scale.denormalize(normalized)

    def results_from_outputs(self, out: dict[str, torch.Tensor], paths: Sequence[str | None], notes: Sequence[list[str]]) -> list[Prediction]:
        score = out["score"].detach().float().cpu().numpy() if "score" in out else None
        probs = out["logits"].float().softmax(-1).cpu().numpy() if "logits" in out and self.categories else None
        return predictions_from_outputs(self.scale, self.categories, score, probs, paths, notes)

    def clip_to_scale(self, pred: Prediction) -> Prediction:
        """``pred`` with its score clipped to the rating scale's ends, the raw value in its notes.

        A regression head can step past the ends of the scale on extreme photos; a MOS cannot.
        What people read (``contentiqa score`` tables, files, reports) is clipped; ``predict`` and
        the metrics keep the raw output, as IQA papers evaluate it."""
        return clip_to_scale(pred, self.scale)

    def predict(self, inputs: Any, batch_size: int = 8, progress: bool = False) -> list[Prediction] | Prediction:
        """Score one input or many (paths, PIL images, arrays, tensors) with this model as it is
        (its weights, device, full precision): the PyTorch scorer of the scoring layer
        (:class:`contentiqa.inference.torch_runtime.TorchScorer`), through the engine that
        ``contentiqa score`` runs. That scorer runs a copy made for scoring, kept beside the model
        while its weights are unchanged (:func:`contentiqa.inference.torch_runtime.scoring_copy`):
        change weights as optimizers do (in place under ``torch.no_grad()``, ``load_state_dict``,
        or replacing ``p.data``); a change in place through ``p.data`` (``p.data.mul_(2)``) is not
        seen, and the copy would score the old weights (see :func:`tensor_versions`).

        Returns a :class:`Prediction` per input, in order (a single one for a single input; a
        (N, C, H, W) tensor is N inputs). A file that cannot be read yields a Prediction with
        ``error`` set; the rest are scored. An in-memory input the model would score wrongly
        (NaN / inf, bool, floats outside [0, 1], integers outside their range: see
        :func:`~contentiqa.data.imageio.pixels_to_uint8`; over ``max_pixels``) raises ValueError
        before anything is scored, as does ``batch_size < 1``.
        """
        from ..inference.torch_runtime import TorchScorer  # the scoring layer sits above the models

        return TorchScorer(self, precision="fp32").predict(inputs, batch_size=batch_size, progress=progress)
