"""IE-IQA (Song, Li, Zhu & Qian 2021, "Intelligibility Enriched Generalizable No-Reference
Image Quality Assessment"): a bilateral network fusing frozen, selected intelligibility
features with trainable distortion features (Eq. 2)::

    f   = F(I)              frozen intelligibility backbone (a semantic task's network),
                            always in eval mode, run under no_grad; N_d features
    f'  <- f                per-image feature selection (§3.3, models/selection.py): the top
                            k% by contribution (Algorithm 1) or sensitivity (Eq. 5-7),
                            kept in index order; or all ('none'); or zero-filled ('sparse')
    g   = G(I)              trainable distortion backbone (EfficientNet-Lite0, ImageNet
                            initialised, or from scratch), global average pooled
    q   = R(f' <-> g)       regressor R: three FC layers (hidden 512 -> 128 -> 1, ReLU and
                            dropout); f' joins at the input of FC1, FC2 or FC3
                            (``fusion_layer``) by concatenation, or by addition /
                            multiplication after a learned linear projection of f' to the
                            width at that point (``fusion``)

``score`` is the normalised quality on [0, 1] of the training MOS range; the loss is MSE.

Preprocessing (§4.2): test images are resized to 224 x 224 and scored in one pass;
training images are resized to 244 x 244, randomly cropped to 224 and randomly flipped
(:meth:`IEIQA.train_transform`). Both branches take that one tensor, normalised for the
distortion backbone; the model converts it to the intelligibility network's own
normalisation (e.g. ImageNet mean/std for the torchvision task networks) internally.

Training recipe (§4.2): SGD, lr 0.03, the FC layers first (:meth:`IEIQA.head_parameters`),
then the distortion backbone as well (:meth:`IEIQA.distortion_parameters`) with warm-up. The
intelligibility branch is frozen and deterministic for a given input, so a trainer may cache
:meth:`IEIQA.intelligibility_features` and pass them as ``forward(x, cached_intelligibility=...)``.

Differences from the paper: both backbones are EfficientNet-Lite0 (offline ImageNet weights)
instead of EfficientNet-B0; the detection and segmentation feature reductions are this
package's choice (see :mod:`contentiqa.models.intelligibility`); the paper does not give the
regressor's widths, dropout or its preferred fusion ("these strategies achieve similar
results"), so the defaults here (512/128, 0.1, concatenation at FC1) are ours; g is by default
the pooled maps of the distortion backbone's last four stages, not the last one alone
(``distortion_levels``; the paper's: :data:`~contentiqa.models.recipes.IE_IQA_PAPER_ARGS`).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..backbones import create_backbone
from ..backbones.stages import (backbone_stages, frozen_levels, levels_from_outputs, resolve_levels, run_stages,
                                run_stages_levels, set_bn_eval)
from ..data.table import MOSScale
from ..utils.fields import check_booleans, check_numbers
from .base import CachePart, IQAModel, check_calibration, pil_to_tensor, resized_input
from .intelligibility import DEFAULT_STRATEGY, PAPER_RATIOS, TASKS, IntelligibilityBranch, build_intelligibility
from .selection import Selection, num_selected, select_features

SELECTIONS = ("auto", "contribution", "sensitivity", "none")
FUSIONS = ("concat", "add", "multiply")


def resize_crop_flip(
    image: Image.Image,
    size: int,
    resize: int,
    train: bool,
    mean: Sequence[float],
    std: Sequence[float],
    flip: bool = True,
) -> torch.Tensor:
    """Test: resize to ``size`` x ``size``. Train: resize to ``resize`` x ``resize``, random
    ``size`` crop, random horizontal flip unless ``flip`` is False (torch's RNG, so
    ``torch.manual_seed`` repeats it; drawn either way, so the crops do not depend on it)."""
    if not train:
        return resized_input(image, size, mean, std)
    img = image.resize((resize, resize), Image.BILINEAR)
    top = int(torch.randint(0, resize - size + 1, (1,)))
    left = int(torch.randint(0, resize - size + 1, (1,)))
    img = img.crop((left, top, left + size, top + size))
    if float(torch.rand(())) < 0.5 and flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return pil_to_tensor(img, mean, std)


@dataclass
class IEIQAConfig:
    """Hyper-parameters of IE-IQA. Defaults: the paper's recognition-task model with
    EfficientNet-Lite0 for both branches."""

    distortion_backbone: str = "efficientnet_lite0"
    distortion_pretrained: bool = True
    """ImageNet initialisation of the distortion backbone; False = from scratch (Tables 4-5)."""
    distortion_checkpoint: str | None = None
    distortion_levels: tuple[int, ...] | None = (-4, -3, -2, -1)
    """Stages of the distortion backbone whose globally pooled maps form g (negative = from the
    last). None = the last feature map only, as in the paper. Several depths carry the
    low-level distortion evidence (blur, noise) that the last, semantic map discards: on CLIVE
    with frozen Lite0 features + ridge, SROCC 0.745 (last map) vs 0.799 (last four stages)."""
    intelligibility_task: str | None = "recognition"
    """One of recognition, scene, detection, segmentation, unrecognizability; None = the
    "only distortion" baseline."""
    intelligibility_backbone: str | None = None
    """The task's network (None = the task's default, see build_intelligibility)."""
    intelligibility_pretrained: bool = True
    """False builds a random-initialised intelligibility network (tests of the plumbing)."""
    intelligibility_checkpoint: str | None = None
    """Weights file of the task network (Places365 ResNet-18, COCO Faster R-CNN, DeepLabV3,
    the unrecognizability predictor); recognition needs none."""
    intelligibility_download: bool = False
    """Let torchvision / Places365 download the task weights when no checkpoint is given."""
    intelligibility_input_size: int | None = None
    """Resize the intelligibility branch's input to this square size (None = as given)."""
    intelligibility_options: dict = field(default_factory=dict)
    """Task specifics, e.g. detection ``{"proposals": 100, "top_k": 10}``."""
    selection: str = "auto"
    """contribution | sensitivity | none | auto (the task's strategy, as in the paper)."""
    ratio: float | None = None
    """Percentage of features kept (paper: 1, 5, 20, 50); None = the paper's final ratio for
    the task (recognition 5, scene 5, detection 20, segmentation 50, unrecognizability 50)."""
    sparse: bool = False
    """Zero the unselected features instead of dropping them (dimension stays N_d)."""
    fusion: str = "concat"
    fusion_layer: int = 1
    hidden: tuple[int, int] = (512, 128)
    dropout: float = 0.1
    bn_eval: bool = False
    """Keep the distortion backbone's BatchNorm statistics fixed while training."""
    input_size: int = 224
    train_resize: int = 244
    scale: dict = field(default_factory=lambda: {"low": 0.0, "high": 100.0, "higher_is_better": True})
    calibration: list[float] | None = None
    """A monotone map of the normalised score fitted on validation data after training
    (:func:`contentiqa.training.calibration.fit_calibration`); None = the raw regression."""

    def __post_init__(self):
        check_booleans(self, "model argument")  # backbone_pretrained: "false" loaded ImageNet weights
        check_numbers(self, "model argument")  # heads: 2.0 was a TypeError mid-training, after the caching pass
        self.calibration = check_calibration(self.calibration)
        if self.intelligibility_task in ("", "none", "None"):
            self.intelligibility_task = None
        if self.intelligibility_task is not None and self.intelligibility_task not in TASKS:
            raise ValueError(f"intelligibility_task must be one of {TASKS} or None, not {self.intelligibility_task!r}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, not {self.selection!r}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, not {self.fusion!r}")
        if self.fusion_layer not in (1, 2, 3):
            raise ValueError(f"fusion_layer must be 1, 2 or 3, not {self.fusion_layer!r}")
        self.hidden = tuple(int(h) for h in self.hidden)  # type: ignore[assignment]
        if self.distortion_levels is not None:
            self.distortion_levels = tuple(int(i) for i in self.distortion_levels)
        if len(self.hidden) != 2:
            raise ValueError("hidden must give the widths of FC1 and FC2 (the regressor has three FC layers)")
        if self.ratio is not None and not 0 < float(self.ratio) <= 100:
            raise ValueError(f"ratio is a percentage in (0, 100], got {self.ratio}")
        if self.train_resize < self.input_size:
            raise ValueError("train_resize must be at least input_size")
        self.intelligibility_options = dict(self.intelligibility_options or {})
        for name in ("distortion_checkpoint", "intelligibility_checkpoint"):
            if getattr(self, name) is not None:
                setattr(self, name, str(getattr(self, name)))  # JSON-able config

    @property
    def strategy(self) -> str:
        """The selection strategy in effect ('none' without an intelligibility branch)."""
        if self.intelligibility_task is None:
            return "none"
        return DEFAULT_STRATEGY[self.intelligibility_task] if self.selection == "auto" else self.selection

    @property
    def selection_ratio(self) -> float:
        if self.ratio is not None:
            return float(self.ratio)
        return PAPER_RATIOS.get(self.intelligibility_task or "", 100.0)

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.distortion_levels is not None:
            d["distortion_levels"] = list(self.distortion_levels)
        d["hidden"] = list(self.hidden)
        return d


class IEIQA(IQAModel):
    """The IE-IQA bilateral network. Input: (B, 3, 224, 224) normalised for the distortion
    backbone (see :meth:`preprocess`)."""

    model_name = "ie-iqa"

    def __init__(self, cfg: IEIQAConfig | None = None, intelligibility: IntelligibilityBranch | None = None):
        cfg = cfg or IEIQAConfig()
        super().__init__(MOSScale(**cfg.scale))
        self.cfg = cfg
        # G: the distortion backbone (trainable), pooled.
        self.distortion = create_backbone(
            cfg.distortion_backbone,
            pretrained=cfg.distortion_pretrained and cfg.distortion_checkpoint is None,
            checkpoint_path=cfg.distortion_checkpoint,
        )
        self.distortion.reset_classifier(0)
        self.distortion_tap = nn.Identity()  # its output is the last feature map (Grad-CAM)
        # The distortion backbone as stages, so its frozen early part can be cached (training).
        self.stages = backbone_stages(self.distortion)
        bcfg = self.distortion.contentiqa_cfg
        self.mean, self.std = tuple(bcfg.mean), tuple(bcfg.std)
        n_stages = len(self.stages)
        wanted = cfg.distortion_levels if cfg.distortion_levels is not None else (-1,)
        self.levels = resolve_levels(wanted, n_stages, "distortion_levels")
        self.feature_end = self.levels[-1] + 1
        with torch.no_grad():
            was = self.distortion.training
            self.distortion.eval()
            g_dim = int(self.distortion_features(torch.zeros(1, 3, 64, 64)).shape[1])
            self.distortion.train(was)

        # F: the frozen intelligibility branch.
        self.intelligibility: IntelligibilityBranch | None = None
        f_dim = 0
        if cfg.intelligibility_task is not None:
            self.intelligibility = intelligibility if intelligibility is not None else build_intelligibility(
                cfg.intelligibility_task,
                pretrained=cfg.intelligibility_pretrained,
                checkpoint=cfg.intelligibility_checkpoint,
                backbone=cfg.intelligibility_backbone,
                download=cfg.intelligibility_download,
                **cfg.intelligibility_options,
            )
            self.intelligibility.freeze()
            if cfg.intelligibility_task == "unrecognizability" and cfg.intelligibility_checkpoint is not None:
                # the predictor's file decides its network: said in the config, a saved model is
                # rebuilt without that file
                net = self.intelligibility.net
                cfg.intelligibility_backbone = net.backbone_name
                cfg.intelligibility_options = {**cfg.intelligibility_options, "hidden": list(net.hidden)}
            if cfg.strategy == "contribution" and self.intelligibility.linear_head() is None:
                raise ValueError(
                    f"task '{cfg.intelligibility_task}' has no single linear head: use selection='sensitivity' "
                    "(or 'auto' / 'none')"
                )
            n_d = self.intelligibility.feature_dim
            f_dim = n_d if (cfg.sparse or cfg.strategy == "none") else num_selected(n_d, cfg.selection_ratio)
            # x_intel = x * a + b maps the distortion normalisation onto the branch's own.
            d_mean, d_std = torch.tensor(self.mean), torch.tensor(self.std)
            i_mean, i_std = torch.tensor(self.intelligibility.mean), torch.tensor(self.intelligibility.std)
            self.register_buffer("_intel_a", (d_std / i_std).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("_intel_b", ((d_mean - i_mean) / i_std).view(1, 3, 1, 1), persistent=False)
        self.distortion_dim = g_dim
        self.intelligibility_dim = f_dim

        # R: three FC layers, f' fused at the input of FC<fusion_layer>.
        h1, h2 = cfg.hidden
        widths = [g_dim, h1, h2]
        outs = [h1, h2, 1]
        fuse_at = cfg.fusion_layer if f_dim else 0
        ins = [w + (f_dim if (cfg.fusion == "concat" and i + 1 == fuse_at) else 0) for i, w in enumerate(widths)]
        self.fc = nn.ModuleList(nn.Linear(i, o) for i, o in zip(ins, outs))
        self.drop = nn.Dropout(cfg.dropout)
        self.project: nn.Linear | None = None
        if fuse_at and cfg.fusion in ("add", "multiply"):
            self.project = nn.Linear(f_dim, widths[fuse_at - 1])
            if cfg.fusion == "multiply":
                nn.init.ones_(self.project.bias)  # the gate starts around 1
        self._fuse_at = fuse_at

    # -- parameter groups (two-phase recipe) ---------------------------------------------------
    def head_parameters(self) -> list[nn.Parameter]:
        """The regressor and the fusion projection (trained first)."""
        params = list(self.fc.parameters())
        if self.project is not None:
            params += list(self.project.parameters())
        return params

    def distortion_parameters(self) -> list[nn.Parameter]:
        """The distortion backbone (trained in the second phase, with warm-up). All of them,
        whatever their current ``requires_grad`` (a trainer may have frozen them for phase 1).
        The intelligibility branch is never among the trainable parameters: even with its
        ``requires_grad`` switched back on it runs under ``no_grad`` and gets no gradient."""
        return list(self.distortion.parameters())

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The regressor (trained first) and the distortion backbone (then, with warm-up)."""
        return {"head": [p for p in self.head_parameters() if p.requires_grad],
                "backbone": [p for p in self.distortion_parameters() if p.requires_grad]}

    def backbone_module(self) -> nn.Module:
        return self.distortion

    @property
    def backbone_from_seed(self) -> bool:
        return not self.cfg.distortion_pretrained and not self.cfg.distortion_checkpoint

    @property
    def backbone_bn_frozen(self) -> bool:
        return self.cfg.bn_eval

    def train(self, mode: bool = True):
        super().train(mode)
        if self.intelligibility is not None:
            self.intelligibility.eval()  # frozen: BatchNorm statistics and dropout stay fixed
        if mode and self.cfg.bn_eval:
            set_bn_eval(self.distortion)
        return self

    # -- IQAModel contract ---------------------------------------------------------------------
    supports_stage_cache = True

    @property
    def native_resolution(self) -> bool:
        return False

    @property
    def fixed_input_size(self) -> tuple[int, int]:
        return (int(self.cfg.input_size), int(self.cfg.input_size))

    def onnx_unsupported_reason(self) -> str | None:
        """The detection branch and autograd-based sensitivity selection have no ONNX form."""
        branch = self.intelligibility
        if branch is None:
            return None
        task = branch.task
        if task == "detection":
            return ("IE-IQA with the detection intelligibility branch cannot be exported: its Faster R-CNN "
                    "reduction (RPN proposals, RoIAlign and a per-image top-k loop in Python) does not trace to a "
                    "graph with a dynamic batch. Score it with the PyTorch runtime.")
        if self.cfg.strategy == "sensitivity":
            from .selection import _head_layers

            if _head_layers(branch.head) is None:
                return (f"IE-IQA with sensitivity-based selection ('{task}' branch) cannot be exported: the "
                        "ranking is |d head(f) / d f|, computed with torch.autograd, which has no ONNX form "
                        "(aten::*_backward ops), and this head is not a Linear/ReLU chain whose gradient "
                        "contentiqa writes out in closed form. Score it with the PyTorch runtime, or use "
                        "selection='contribution' where the task has a linear head.")
        return None

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """Test-time input (§4.2): resized to ``input_size`` square (the paper's 224 px; the
        shipped weights' 384), one pass."""
        return resize_crop_flip(image, self.cfg.input_size, self.cfg.input_size, False, self.mean, self.std)

    def train_transform(self, image: Image.Image, flip: bool = True) -> torch.Tensor:
        """Training augmentation (§4.2): resize to ``train_resize`` square, random
        ``input_size`` crop, random flip unless ``flip`` is False (the paper's 244 / 224 px)."""
        return resize_crop_flip(image, self.cfg.input_size, self.cfg.train_resize, True, self.mean, self.std, flip)

    # -- cached training (contentiqa.training.cache) --------------------------------------------
    def cache_parts(self, start_stage: int) -> list[CachePart]:
        """Two parts, each cached under its own key: the frozen distortion stages (shared with
        ``ie-iqa-distortion``, which has the same ones) and the raw intelligibility features.

        Distortion part: stage ``start_stage - 1``'s map (``x``) and the global means of the
        levels computed before it (``gf``, when some are); with the whole used distortion
        backbone frozen (``start_stage >= feature_end``) the pooled features g themselves (``g``).
        Intelligibility part: f, before selection (``f``; selection is cheap, so one cache
        serves every ratio)."""
        c = self.cfg
        pooled = start_stage >= self.feature_end
        frozen, _ = frozen_levels(self.levels, start_stage)
        # (the weights' files are not in them: the folders are keyed by the weights themselves)
        dist_key = (f"{c.distortion_backbone}|{c.input_size}|"
                    + (f"pooled levels {self.levels}" if pooled else f"stages 0-{start_stage - 1}, frozen levels {frozen}"))
        dist_mods = tuple(self.stages[:self.feature_end] if pooled else self.stages[:start_stage])
        parts = [CachePart("distortion", dist_key, dist_mods, lambda v: self._encode_distortion(v, start_stage))]
        if self.intelligibility is not None:
            intel_key = (f"{c.intelligibility_task}|{c.intelligibility_backbone}|"
                         f"{c.intelligibility_input_size}|{c.input_size}|{self.mean}|{self.std}")
            if c.intelligibility_options:  # e.g. detection's proposals / top_k change the features
                intel_key += "|" + json.dumps(c.intelligibility_options, sort_keys=True)
            parts.append(CachePart("intelligibility", intel_key, (self.intelligibility,),
                                   lambda v: {"f": self.raw_intelligibility_features(v)}))
        return parts

    def _encode_distortion(self, views: torch.Tensor, start_stage: int) -> dict[str, torch.Tensor]:
        if start_stage >= self.feature_end:
            return {"g": self.distortion_features(views)}
        frozen, _ = frozen_levels(self.levels, start_stage)
        if not frozen:
            return {"x": run_stages(self.stages, views, 0, start_stage) if start_stage else views}
        maps = run_stages_levels(self.stages, views, frozen + [start_stage - 1])
        return {"x": maps[-1], "gf": torch.cat([m.mean(dim=(2, 3)) for m in maps[:-1]], dim=1)}

    def frozen_modules(self, start_stage: int) -> list[nn.Module]:
        """The frozen distortion stages and the intelligibility branch (its features are cached)."""
        return super().frozen_modules(start_stage) + ([self.intelligibility] if self.intelligibility is not None else [])

    def forward_cached(self, inputs: dict[str, torch.Tensor], start_stage: int) -> dict[str, torch.Tensor]:
        f_sel = self.select_from_raw(inputs["f"].float()).features if "f" in inputs else None
        if start_stage >= self.feature_end:
            return {"score": self.regress(inputs["g"], f_sel)}
        g = self.distortion_features(inputs["x"], start_stage, frozen_pooled=inputs.get("gf"))
        return {"score": self.regress(g, f_sel.to(g.dtype) if f_sel is not None else None)}

    def gradcam_modules(self) -> list[nn.Module]:
        """The distortion backbone's pooled levels, shallow to deep (the deepest through its
        tap). The intelligibility branch is frozen and enters the score as a selected global
        feature vector computed without gradients, so it has no map here."""
        return [self.stages[i] for i in self.levels[:-1]] + [self.distortion_tap]

    # -- the two branches --------------------------------------------------------------------
    def distortion_features(self, x: torch.Tensor, start_stage: int = 0,
                            frozen_pooled: torch.Tensor | None = None) -> torch.Tensor:
        """g: the pooled distortion features (B, N_g). ``start_stage`` > 0: ``x`` is the cached
        output of the first ``start_stage`` (frozen) stages of the distortion backbone, and
        ``frozen_pooled`` the cached global means of the levels computed inside them."""
        frozen, live = frozen_levels(self.levels, start_stage)
        if frozen and frozen_pooled is None:
            raise ValueError(f"levels {frozen} lie inside the {start_stage} cached stages: pass their pooled "
                             "features (frozen_pooled, the cache's 'gf')")
        maps = run_stages_levels(self.stages, x, live, start_stage)
        return self._pool_levels(maps, frozen_pooled.to(x.dtype) if frozen else None)

    def _pool_levels(self, maps: list[torch.Tensor], frozen_pooled: torch.Tensor | None = None) -> torch.Tensor:
        maps = maps[:-1] + [self.distortion_tap(maps[-1])]  # the deepest map: Grad-CAM's target
        pooled = [m.mean(dim=(2, 3)) for m in maps]
        return torch.cat(([frozen_pooled] if frozen_pooled is not None else []) + pooled, dim=1)

    def intelligibility_input(self, x: torch.Tensor) -> torch.Tensor:
        """The model input converted to the intelligibility network's normalisation (and size)."""
        xi = x * self._intel_a.to(x.dtype) + self._intel_b.to(x.dtype)
        size = self.cfg.intelligibility_input_size
        if size is not None and tuple(xi.shape[-2:]) != (size, size):
            xi = F.interpolate(xi, size=(size, size), mode="bilinear", align_corners=False)
        return xi

    def intelligibility_selection(self, x: torch.Tensor) -> Selection:
        """Selection of the intelligibility features of ``x``, with the ranking scores and the
        top-1 class used (for analysis)."""
        if self.intelligibility is None:
            raise RuntimeError("this IE-IQA model has no intelligibility branch (distortion-only baseline)")
        with torch.no_grad():
            f = self.intelligibility.extract(self.intelligibility_input(x))
        return self.select_from_raw(f)

    def raw_intelligibility_features(self, x: torch.Tensor) -> torch.Tensor:
        """f: the frozen branch's full feature vector (B, N_d), before selection. Selection is a
        cheap function of f (see :meth:`select_from_raw`), so caching f serves every ratio."""
        if self.intelligibility is None:
            raise RuntimeError("this IE-IQA model has no intelligibility branch (distortion-only baseline)")
        with torch.no_grad():
            return self.intelligibility.extract(self.intelligibility_input(x))

    def select_from_raw(self, f: torch.Tensor) -> Selection:
        """Apply this model's selection strategy and ratio to raw features ``f`` (B, N_d)."""
        branch = self.intelligibility
        assert branch is not None
        lin = branch.linear_head()
        return select_features(
            f,
            self.cfg.strategy,
            self.cfg.selection_ratio,
            self.cfg.sparse,
            weight=lin.weight if lin is not None else None,
            bias=lin.bias if lin is not None else None,
            head=branch.head,
            exclude=branch.exclude_classes,
        )

    def intelligibility_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(f', indices)``: the selected intelligibility features (B, N_s) (or (B, N_d) when
        sparse / unselected) and the selected indices (B, N_s), ascending per image. The
        branch is frozen, so these can be cached per input and passed to :meth:`forward`."""
        sel = self.intelligibility_selection(x)
        return sel.features.detach(), sel.indices

    def regress(self, g: torch.Tensor, f_sel: torch.Tensor | None) -> torch.Tensor:
        """R(f' <-> g): the three FC layers with the fusion; returns (B,)."""
        h = g
        for i, fc in enumerate(self.fc, start=1):
            if i == self._fuse_at:
                assert f_sel is not None
                if self.cfg.fusion == "concat":
                    h = torch.cat([h, f_sel], dim=1)
                elif self.cfg.fusion == "add":
                    h = h + self.project(f_sel)
                else:
                    h = h * self.project(f_sel)
            h = fc(h)
            if i < len(self.fc):
                h = self.drop(F.relu(h))
        return self.calibrate(h[:, 0])

    def forward(
        self,
        x: torch.Tensor,
        cached_intelligibility: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
        start_stage: int = 0,
    ) -> dict[str, torch.Tensor]:
        return self._score(x, self.distortion_features(x, start_stage), cached_intelligibility)

    def _score(self, x: torch.Tensor, g: torch.Tensor,
               cached_intelligibility: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The regressor on the distortion features ``g`` and the intelligibility branch's on
        ``x`` (or ``cached_intelligibility``)."""
        f_sel = None
        if self.intelligibility is not None:
            if cached_intelligibility is None:
                f_sel, _ = self.intelligibility_features(x)
            else:
                f_sel = cached_intelligibility[0] if isinstance(cached_intelligibility, (tuple, list)) else cached_intelligibility
                if f_sel.shape != (x.shape[0], self.intelligibility_dim):
                    raise ValueError(
                        f"cached intelligibility features have shape {tuple(f_sel.shape)}, "
                        f"expected {(x.shape[0], self.intelligibility_dim)}"
                    )
            f_sel = f_sel.to(device=g.device, dtype=g.dtype)
        return {"score": self.regress(g, f_sel)}

    shares_stages = True

    def forward_from_stages(self, x: torch.Tensor, outputs: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The distortion network's stages from ``outputs``; the intelligibility branch on ``x``."""
        return self._score(x, self._pool_levels(levels_from_outputs(self.stages, self.levels, list(outputs))))

    def loss(self, outputs: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """MSE between the predicted and the normalised MOS (§3.2)."""
        return super().loss(outputs, target)


def build_ie_iqa(**kwargs) -> IEIQA:
    """``IEIQA(IEIQAConfig(**kwargs))`` (``intelligibility_module=`` injects a built branch)."""
    branch = kwargs.pop("intelligibility_module", None)
    return IEIQA(IEIQAConfig(**kwargs), intelligibility=branch)
