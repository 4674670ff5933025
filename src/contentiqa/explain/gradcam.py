"""Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", ICCV 2017) on a model's base-CNN feature map.

For a scalar target ``y`` (the quality output ``out["score"]`` or a category logit) and the
feature map ``A`` (C x h x w) of the module a model names with ``gradcam_module()``::

    alpha_k = mean over (i, j) of dy / dA_k[i, j]          # channel importance
    cam     = ReLU( sum_k alpha_k A_k )                    # h x w

``out["score"]`` is the normalised score, which is "higher = better" whatever the dataset's
MOS direction, so the quality map shows evidence *for higher quality*.

Memory: only the part of the network *after* the hooked module needs a graph. The forward
pass runs under ``torch.no_grad()``; the hook detaches the feature map, marks it as requiring
grad and switches grad mode back on for the rest of that forward pass. Backbone activations
are therefore never stored, and explaining a photo costs about what scoring it costs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..models.base import IQAModel
from .attention import keep_attention, spatial_attention_grid

TARGETS = ("quality", "category")


def gradcam_module(model: IQAModel) -> nn.Module:
    """The module the model names (IQAModel.gradcam_module), checked to be one."""
    module = model.gradcam_module()
    if not isinstance(module, nn.Module):
        raise TypeError(f"{type(model).__name__}.gradcam_module() returned {type(module).__name__}, not an nn.Module")
    return module


@dataclass
class GradCAMOutput:
    """What one explained forward pass produced (first image of the batch)."""

    outputs: dict[str, torch.Tensor]
    """The model's outputs, detached."""
    cams: dict[str, np.ndarray]
    """target name -> Grad-CAM on the feature-map grid (h x w), float32, not normalised."""
    category_index: int | None = None
    """The category whose logit the 'category' map explains."""
    attention_grid: np.ndarray | None = None
    """Rolled-out spatial attention on the model's token grid (see :mod:`.attention`)."""
    feature_shape: tuple[int, ...] = ()
    notes: list[str] = field(default_factory=list)


def compute_gradcam(
    model: nn.Module,
    x: torch.Tensor,
    targets: Sequence[str] = TARGETS,
    category_index: int | None = None,
    relu: bool = True,
    record_attention: bool = True,
) -> GradCAMOutput:
    """One forward pass of ``x`` (1 x 3 x H x W, already preprocessed) and one backward
    per target. ``targets``: 'quality' (``out["score"]``) and/or 'category' (the logit of
    ``category_index``, default the predicted category); a target the model has no output
    for is skipped with a note. ``relu=False`` returns the signed weighted sum."""
    unknown = set(targets) - set(TARGETS)
    if unknown:
        raise ValueError(f"unknown Grad-CAM target(s) {sorted(unknown)}; choose from {TARGETS}")
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"explain one image at a time: expected 1 x 3 x H x W, got {tuple(x.shape)}")
    module = gradcam_module(model)
    captured: dict[str, torch.Tensor] = {}

    def hook(_module, _inputs, output):
        if not isinstance(output, torch.Tensor) or output.ndim != 4:
            raise TypeError(f"gradcam_module() output must be a B x C x h x w tensor, got {type(output).__name__}")
        feat = output.detach().requires_grad_(True)
        captured["features"] = feat
        torch.set_grad_enabled(True)  # build a graph from here on only (restored after forward)
        return feat

    was_training = model.training
    model.eval()
    handle = module.register_forward_hook(hook)
    grad_mode = torch.is_grad_enabled()
    try:
        with keep_attention(model) if record_attention else _null() as mods:
            with torch.no_grad():
                out = model(x)
            attn_grid = spatial_attention_grid(model, [m.last_attention for m in mods]) if record_attention else None
    finally:
        torch.set_grad_enabled(grad_mode)
        handle.remove()
        model.train(was_training)
    if "features" not in captured:
        raise RuntimeError("the gradcam_module() of this model was not called in its forward pass")
    feat = captured["features"]
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
    names = list(scalars)
    for k, name in enumerate(names):
        y = scalars[name]
        if not y.requires_grad:
            raise RuntimeError(f"the {name} output does not depend on the gradcam_module() feature map")
        (grad,) = torch.autograd.grad(y, feat, retain_graph=k < len(names) - 1)
        weights = grad[0].mean(dim=(1, 2))  # (C,)
        cam = torch.einsum("c,chw->hw", weights, feat[0].detach())
        if relu:
            cam = cam.clamp_min(0)
        cams[name] = cam.float().cpu().numpy()
    outputs = {k: v.detach() for k, v in out.items()}
    return GradCAMOutput(outputs, cams, cat_idx, attn_grid, tuple(feat.shape), notes)


class _null:
    def __enter__(self):
        return []

    def __exit__(self, *exc):
        return False
