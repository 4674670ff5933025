"""Spatial attention maps from a model's self-attention layers (attention rollout).

IQA-CR's encoder attends among the CH x CW grid positions of the pooled feature map (its
"spatial tokens"). Attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in
Transformers", 2020) turns the per-layer weights into one token-to-token map:

    A_l   = mean over heads of layer l's attention          (N x N, rows sum to 1)
    A_l'  = (A_l + I) / row sums                            (the residual connection)
    R     = A_L' @ ... @ A_2' @ A_1'

and the map shown is, for every token j, the mean over query tokens i of ``R[i, j]`` - how
much attention token j receives overall - reshaped to the model's grid. The encoder's output
is the *mean* over tokens (no class token), so averaging over all query rows is the analogue of
reading the class token's row.

Layers: ``model.attention_layers()`` (IQA-CR's spatial attention modules only; the channel
attention of the quality branch attends among channels, not positions, and is not part of the
rollout). For ``channel_attention="axial"`` the spatial module attends along the positions
separately for every channel, and stores weights of shape (B, D, heads, N, N); those are
averaged over the channels as well as the heads.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.base import IQAModel


def attention_modules(model: IQAModel) -> list[nn.Module]:
    """The model's spatial self-attention modules (empty if it has none)."""
    return list(model.attention_layers())


@contextmanager
def keep_attention(model: IQAModel) -> Iterator[list[nn.Module]]:
    """Make every spatial attention module store ``last_attention`` during the block."""
    mods = attention_modules(model)
    previous = [bool(m.keep_attention) for m in mods]
    for m in mods:
        m.keep_attention = True
        m.last_attention = None
    try:
        yield mods
    finally:
        for m, prev in zip(mods, previous):
            m.keep_attention = prev
            if not prev:
                m.last_attention = None


def _head_mean(attn: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, N) -> (B, N, N); the axial variant's (B, D, heads, N, N) is also
    averaged over its channel axis. Anything else is refused clearly."""
    if attn.ndim == 4:
        return attn.float().mean(dim=1)
    if attn.ndim == 5:
        return attn.float().mean(dim=(1, 2))
    raise ValueError(f"unsupported attention shape {tuple(attn.shape)} (expected (B, heads, N, N) or (B, D, heads, N, N))")


def attention_rollout(attentions: Sequence[torch.Tensor], add_identity: bool = True) -> torch.Tensor:
    """Roll out a list of per-layer attention tensors (first layer first) into (B, N, N)."""
    if not attentions:
        raise ValueError("no attention weights to roll out")
    result: torch.Tensor | None = None
    for attn in attentions:
        a = _head_mean(attn)
        if add_identity:
            a = a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = a / a.sum(dim=-1, keepdim=True)
        result = a if result is None else a @ result
    return result  # type: ignore[return-value]


def received_attention(rollout: torch.Tensor) -> torch.Tensor:
    """(B, N, N) rollout -> (B, N): mean attention each token receives from all tokens."""
    return rollout.mean(dim=1)


def normalize_map(m: np.ndarray | torch.Tensor) -> np.ndarray:
    """Min-max normalise to [0, 1] (a constant map becomes all zeros), float32."""
    if isinstance(m, torch.Tensor):
        m = m.detach().float().cpu().numpy()
    m = np.asarray(m, dtype=np.float32)
    lo, hi = float(np.min(m)), float(np.max(m))
    if not np.isfinite(lo) or not np.isfinite(hi) or hi - lo <= 1e-12:
        return np.zeros_like(m, dtype=np.float32)
    return ((m - lo) / (hi - lo)).astype(np.float32)


def upsample(grid_map: torch.Tensor | np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Bilinearly resize a 2-D map to ``size_hw`` = (H, W); returns float32 numpy."""
    t = torch.as_tensor(np.asarray(grid_map) if not isinstance(grid_map, torch.Tensor) else grid_map)
    t = t.detach().float().reshape(1, 1, *t.shape[-2:])
    out = F.interpolate(t, size=tuple(int(s) for s in size_hw), mode="bilinear", align_corners=False)
    return out[0, 0].cpu().numpy()


def spatial_attention_grid(model: IQAModel, attentions: Sequence[torch.Tensor] | None = None) -> np.ndarray | None:
    """The rolled-out received attention on the model's ``token_grid`` (CH, CW) for
    the first image of the last forward pass, or None if the model has no spatial attention
    (or none was recorded: call inside :func:`keep_attention`)."""
    if attentions is None:
        attentions = [m.last_attention for m in attention_modules(model)]
    attentions = [a for a in attentions if a is not None]
    if not attentions:
        return None
    grid = tuple(model.token_grid or ())
    received = received_attention(attention_rollout(attentions))[0]  # (N,)
    n = received.shape[0]
    if len(grid) != 2 or grid[0] * grid[1] != n:
        side = int(round(n ** 0.5))
        if side * side != n:
            raise ValueError(f"cannot lay {n} attention tokens out on a grid (model.token_grid = {grid})")
        grid = (side, side)
    return received.reshape(grid).cpu().numpy()
