"""Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", ICCV 2017) over every CNN feature map a model's score uses.

For a scalar target ``y`` (the quality output ``out["score"]`` or a category logit) and each
feature map ``A_l`` (C_l x h_l x w_l) of the modules a model names with ``gradcam_modules()``::

    alpha_lk = mean over (i, j) of dy / dA_lk[i, j]        # channel importance at level l
    cam_l    = sum_k alpha_lk A_lk                         # h_l x w_l
    cam      = ReLU( sum_l up(cam_l) * (h_l w_l) / (h w) ) # on the finest level's h x w grid

Why several levels: IQA-CR and IE-IQA pool four backbone depths into the score, and the
shallow ones carry most of the blur/noise evidence; a map of the deepest level alone would
show only what the semantic stage contributes. Each level's gradient is its *direct* path
into the score (every hooked map is detached, so a shallow level's effect through deeper
stages is not counted twice: it already shows at those levels). ``sum_ij cam_l`` is a
first-order estimate of level l's contribution to ``y``; bilinear upsampling keeps a map's
mean, so the factor ``h_l w_l / (h w)`` keeps its total, and the levels add up in the same
units. ``level_cams`` keeps the per-level maps.

``out["score"]`` is the normalised score, which is "higher = better" whatever the dataset's
MOS direction, so the quality map shows evidence *for higher quality*.

Memory: only the part of the network *after* the first hooked module needs a graph. The
forward pass runs under ``torch.no_grad()``; each hook detaches its feature map, marks it as
requiring grad and switches grad mode on for the rest of that forward pass. Activations
before the first level are never stored, and explaining a photo costs about what scoring it costs.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.base import IQAModel
from .attention import keep_attention, spatial_attention_grid

TARGETS = ("quality", "category")


def gradcam_modules(model: IQAModel) -> list[nn.Module]:
    """The modules the model names (IQAModel.gradcam_modules), checked to be modules."""
    modules = list(model.gradcam_modules())
    if not modules:
        raise TypeError(f"{type(model).__name__}.gradcam_modules() returned no module")
    for m in modules:
        if not isinstance(m, nn.Module):
            raise TypeError(f"{type(model).__name__}.gradcam_modules() returned {type(m).__name__}, not an nn.Module")
    return modules


@dataclass
class GradCAMOutput:
    """What one explained forward pass produced (first image of the batch)."""

    outputs: dict[str, torch.Tensor]
    """The model's outputs, detached."""
    cams: dict[str, np.ndarray]
    """target name -> Grad-CAM of all levels combined, on the finest level's grid (h x w),
    float32, not normalised."""
    category_index: int | None = None
    """The category whose logit the 'category' map explains."""
    attention_grid: np.ndarray | None = None
    """Rolled-out spatial attention on the model's token grid (see :mod:`.attention`)."""
    feature_shape: tuple[int, ...] = ()
    """Shape (1, C, h, w) of the finest feature map, whose grid ``cams`` are on."""
    notes: list[str] = field(default_factory=list)
    level_cams: dict[str, list[np.ndarray]] = field(default_factory=dict)
    """target name -> each level's own map (h_l x w_l, shallow to deep, ReLU as ``cams``)."""
    level_shares: dict[str, list[float]] = field(default_factory=dict)
    """target name -> each level's share of the summed absolute contribution (sums to 1)."""


def combine_levels(cams: Sequence[torch.Tensor]) -> torch.Tensor:
    """Signed per-level maps -> one map on the finest grid, each level's total preserved."""
    h, w = max((tuple(c.shape) for c in cams), key=lambda s: s[0] * s[1])
    total = torch.zeros(h, w, dtype=cams[0].dtype)
    for c in cams:
        up = c if tuple(c.shape) == (h, w) else F.interpolate(c[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        total = total + up * (c.shape[0] * c.shape[1]) / (h * w)
    return total


def compute_gradcam(
    model: nn.Module,
    x: torch.Tensor,
    targets: Sequence[str] | str = TARGETS,
    category_index: int | None = None,
    relu: bool = True,
    record_attention: bool = True,
) -> GradCAMOutput:
    """One forward pass of ``x`` (1 x 3 x H x W, already preprocessed) and one backward
    per target. ``targets``: 'quality' (``out["score"]``) and/or 'category' (the logit of
    ``category_index``, default the predicted category); a target the model has no output
    for is skipped with a note. ``relu=False`` returns the signed weighted sums.

    Gradients are taken whatever the caller's grad mode (inference code often runs under
    ``torch.no_grad`` or ``torch.inference_mode``), and every module's train/eval mode is as it
    was after (a user's dropout switched off mid-training stays off)."""
    if isinstance(targets, str):
        targets = (targets,)
    with modes_kept(model), torch.inference_mode(False), torch.enable_grad():
        return _compute_gradcam(model, x.clone(), targets, category_index, relu, record_attention)


@contextlib.contextmanager
def modes_kept(model: nn.Module) -> Iterator[None]:
    """Every module's train/eval mode afterwards as it was before (``model.train(was)`` would
    set them all alike: a user's dropout switched off mid-training would be back on)."""
    modes = {m: m.training for m in model.modules()}
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training


def _compute_gradcam(model: nn.Module, x: torch.Tensor, targets: Sequence[str], category_index: int | None,
                     relu: bool, record_attention: bool) -> GradCAMOutput:
    unknown = set(targets) - set(TARGETS)
    if unknown:
        raise ValueError(f"unknown Grad-CAM target(s) {sorted(unknown)}; choose from {TARGETS}")
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"explain one image at a time: expected 1 x 3 x H x W, got {tuple(x.shape)}")
    modules = gradcam_modules(model)
    captured: dict[int, torch.Tensor] = {}

    def make_hook(level: int):
        def hook(_module, _inputs, output):
            if not isinstance(output, torch.Tensor) or output.ndim != 4:
                raise TypeError(f"gradcam_modules() outputs must be B x C x h x w tensors, got {type(output).__name__}")
            feat = output.detach().requires_grad_(True)
            captured[level] = feat
            torch.set_grad_enabled(True)  # build a graph from here on only (restored after forward)
            return feat

        return hook

    model.eval()  # the caller (compute_gradcam) puts every module's mode back
    handles = [m.register_forward_hook(make_hook(i)) for i, m in enumerate(modules)]
    grad_mode = torch.is_grad_enabled()
    try:
        with keep_attention(model) if record_attention else _null() as mods:
            with torch.no_grad():
                out = model(x)
            attn_grid = spatial_attention_grid(model, [m.last_attention for m in mods]) if record_attention else None
    finally:
        torch.set_grad_enabled(grad_mode)
        for h in handles:
            h.remove()
    missing = [i for i in range(len(modules)) if i not in captured]
    if missing:
        raise RuntimeError(f"gradcam_modules() {missing} of this model were not called in its forward pass")
    feats = [captured[i] for i in range(len(modules))]
    notes: list[str] = []
    scalars: dict[str, torch.Tensor] = {}
    cat_idx = None
    for t in targets:
        if t == "quality":
            if "score" not in out:
                notes.append("this model predicts no quality score: no quality map")
                continue
            scalars[t] = out["score"].reshape(-1)[0]
        else:
            if "logits" not in out:
                notes.append("this model has no content head: no category map")
                continue
            logits = out["logits"][0]
            cat_idx = int(logits.detach().argmax()) if category_index is None else int(category_index)
            if not 0 <= cat_idx < logits.shape[0]:
                raise ValueError(f"category index {cat_idx} out of range for {logits.shape[0]} categories")
            scalars[t] = logits[cat_idx]
    cams: dict[str, np.ndarray] = {}
    level_cams: dict[str, list[np.ndarray]] = {}
    shares: dict[str, list[float]] = {}
    names = list(scalars)
    for k, name in enumerate(names):
        y = scalars[name]
        if not y.requires_grad:
            raise RuntimeError(f"the {name} output does not depend on the gradcam_modules() feature maps")
        grads = torch.autograd.grad(y, feats, retain_graph=k < len(names) - 1, allow_unused=True)
        per_level = []
        for g, a in zip(grads, feats):
            if g is None:  # a level this output does not use (e.g. a deeper level only)
                g = torch.zeros_like(a)
            weights = g[0].mean(dim=(1, 2))  # (C,)
            per_level.append(torch.einsum("c,chw->hw", weights, a[0].detach()).float().cpu())
        cam = combine_levels(per_level)
        mass = [float(c.sum().abs()) for c in per_level]
        shares[name] = [m / sum(mass) if sum(mass) > 0 else 0.0 for m in mass]
        if relu:
            cam = cam.clamp_min(0)
            per_level = [c.clamp_min(0) for c in per_level]
        cams[name] = cam.numpy()
        level_cams[name] = [c.numpy() for c in per_level]
    finest = max(feats, key=lambda f: f.shape[-2] * f.shape[-1])
    outputs = {k: v.detach() for k, v in out.items()}
    return GradCAMOutput(outputs, cams, cat_idx, attn_grid, tuple(finest.shape), notes, level_cams, shares)


class _null:
    def __enter__(self):
        return []

    def __exit__(self, *exc):
        return False
