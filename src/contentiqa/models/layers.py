"""Small building blocks shared by the models."""
from __future__ import annotations

import functools

import torch
from torch import nn


def adaptive_avg_pool2d_matmul(x: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """Exactly ``F.adaptive_avg_pool2d(x, out_hw)``, written as two matrix products.

    Bin ``i`` of ``n`` over a length ``L`` covers ``[floor(i L / n), ceil((i + 1) L / n))``,
    as in PyTorch. Built from ``arange`` on the input's shape, it traces to ONNX with
    dynamic height and width (the native-resolution path), which the built-in op does not.
    """
    h, w = x.shape[-2], x.shape[-1]
    ph = _pool_matrix(h, out_hw[0], x)
    pw = _pool_matrix(w, out_hw[1], x)
    return torch.matmul(torch.matmul(ph, x), pw.transpose(0, 1))


def _pool_matrix(length, bins: int, like: torch.Tensor) -> torch.Tensor:
    length_t = torch.as_tensor(length, device=like.device)
    i = torch.arange(bins, device=like.device)
    start = torch.div(i * length_t, bins, rounding_mode="floor")
    end = torch.div((i + 1) * length_t + bins - 1, bins, rounding_mode="floor")
    pos = torch.arange(length, device=like.device) if isinstance(length, int) else torch.arange(length_t, device=like.device)
    mask = (pos[None, :] >= start[:, None]) & (pos[None, :] < end[:, None])
    m = mask.to(like.dtype)
    return m / m.sum(dim=1, keepdim=True)


def resize_like_pillow(x: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """``x`` (..., H, W) of 0-255 pixel values resized to ``out_hw`` as Pillow's
    ``Image.resize(..., BILINEAR)`` resizes an 8-bit image: a triangle filter whose support widens
    with the reduction (antialiased when shrinking), weights in Pillow's fixed point, each of
    the two passes rounded to whole values, the passes in Pillow's order (height first when it
    shrinks more than twice as much as the width, as Pillow >= 11 does). Built from the input's
    shape (row gathers and small matrix products; the pass order a TorchScript ``if``, an ONNX
    ``If``), it exports with dynamic height and width, where ``F.interpolate(antialias=True)`` does
    not, and costs a few taps per pixel.

    Why Pillow's resize: fixed-size models were trained on images Pillow resized, and a model
    that feeds one from a larger input (:mod:`contentiqa.models.ensemble`) must show it the same
    pixels: a fixed-size model's score can move by a point or two when every pixel moves by one
    8-bit step."""
    ih, wh = _pillow_taps(x.shape[-2], out_hw[0], x)
    iw, ww = _pillow_taps(x.shape[-1], out_hw[1], x)
    return _pillow_passes()(x, ih, wh, iw, ww, int(out_hw[0]), int(out_hw[1]))


def _resample_rows(t: torch.Tensor, index: torch.Tensor, weight: torch.Tensor, size: int) -> torch.Tensor:
    """One Pillow pass along the rows (axis -2), rounded to whole values. Whole rows are gathered:
    a gather along the last axis, element by element, is ~20x slower in ONNX Runtime."""
    g = t.index_select(-2, index.reshape(-1))
    g = g.reshape(list(g.shape[:-2]) + [size, -1, g.shape[-1]])
    return torch.clamp(torch.floor(torch.matmul(weight[:, None, :], g).squeeze(-2) + 0.5), 0.0, 255.0)


def _resample_columns(t: torch.Tensor, index: torch.Tensor, weight: torch.Tensor, size: int) -> torch.Tensor:
    """One Pillow pass along the columns (axis -1), as rows of the transpose."""
    return _resample_rows(t.transpose(-1, -2), index, weight, size).transpose(-1, -2)


def _two_passes(x: torch.Tensor, ih: torch.Tensor, wh: torch.Tensor, iw: torch.Tensor, ww: torch.Tensor,
                oh: int, ow: int) -> torch.Tensor:
    h = x.shape[-2]
    w = x.shape[-1]
    if (h - oh) > 0 and (h - oh) > 2 * (w - ow):
        return _resample_columns(_resample_rows(x, ih, wh, oh), iw, ww, ow)
    return _resample_rows(_resample_columns(x, iw, ww, ow), ih, wh, oh)


@functools.lru_cache(maxsize=1)
def _pillow_passes():
    """The two passes, scripted on first use (a traced ``if`` would freeze one order into a graph).
    TorchScript is what the TorchScript-based ONNX exporter (``dynamo=False``, inference/onnx.py)
    turns into an ``If``; its deprecation warning says nothing a user can act on."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.script(_two_passes)


_PILLOW_PRECISION = float(1 << 22)
"""Pillow's 8-bit resampling holds its weights as integers of 22 fractional bits."""


def _pillow_taps(length, size: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(index, weight)``, each (size, taps): the input samples each of ``size`` outputs reads
    and their weights, as Pillow's bilinear ``precompute_coeffs`` makes them (in float64, as it
    does; the weights then rounded to its fixed point)."""
    # Pillow's positions need float64 to land on the same taps and weights. The ONNX exporter
    # computes a 0-dim tensor with a number, or with another 0-dim tensor, in float32: so every
    # scalar here is a one-element float64 vector.
    def f64(v: float) -> torch.Tensor:
        return torch.full((1,), v, dtype=torch.float64, device=like.device)

    n = torch.as_tensor(length, device=like.device).reshape(1).to(torch.float64)
    scale = n / f64(size)
    support = torch.maximum(scale, f64(1.0))  # the filter widens when reducing, never narrows
    half = f64(0.5)
    centre = (torch.arange(size, device=like.device).to(torch.float64) + half) * scale
    first = torch.maximum(torch.floor(centre - support + half), f64(0.0))
    end = torch.minimum(torch.floor(centre + support + half), n)
    taps = torch.arange((torch.ceil(support) * f64(2.0) + f64(1.0)).to(torch.int64)[0],
                        device=like.device).to(torch.float64)
    j = first[:, None] + taps[None, :]
    wt = torch.maximum(f64(1.0) - torch.abs(j + half - centre[:, None]) / support, f64(0.0)) * (j < end[:, None])
    wt = wt / wt.sum(dim=1, keepdim=True)
    precision = f64(_PILLOW_PRECISION)
    wt = torch.floor(wt * precision + half) / precision
    index = torch.minimum(j, n - f64(1.0)).to(torch.int64)
    return index, wt.to(like.dtype)


class Mlp(nn.Module):
    """Transformer feed-forward block: Linear -> GELU -> Dropout -> Linear -> Dropout."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0, out_dim: int | None = None):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim or dim), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention over the second-to-last axis (Eq. 2-4 of IQA-CR) that can
    also return its attention weights (for attention maps)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = nn.Dropout(dropout)
        self.proj_drop = nn.Dropout(dropout)
        self.last_attention: torch.Tensor | None = None
        self.keep_attention = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *lead, n, d = x.shape
        qkv = self.qkv(x).reshape(*lead, n, 3, self.heads, self.head_dim)
        q, k, v = qkv.unbind(dim=-3)  # each (..., n, heads, head_dim)
        q, k, v = (t.transpose(-3, -2) for t in (q, k, v))  # (..., heads, n, head_dim)
        attn = (q @ k.transpose(-2, -1)) * self.head_dim ** -0.5
        attn = attn.softmax(dim=-1)
        if self.keep_attention:
            self.last_attention = attn.detach()
        out = self.attn_drop(attn) @ v
        out = out.transpose(-3, -2).reshape(*lead, n, d)
        return self.proj_drop(self.proj(out))


class FocalLoss(nn.Module):
    """Softmax focal loss (Lin et al. 2017): ``-(1 - p_t)^gamma log p_t``, mean over items
    whose label is not ``ignore_index``. ``gamma=0`` is cross-entropy."""

    def __init__(self, gamma: float = 2.0, ignore_index: int = -1, weight: torch.Tensor | None = None):
        super().__init__()
        self.gamma = gamma
        self.ignore_index = ignore_index
        self.register_buffer("weight", weight if weight is not None else None, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = target != self.ignore_index
        if not bool(valid.any()):
            return logits.sum() * 0.0
        logits, target = logits[valid], target[valid]
        logp = logits.log_softmax(dim=-1).gather(1, target[:, None]).squeeze(1)
        pt = logp.exp()
        # clamped: for gamma < 1 the power's gradient at 0 (a sure prediction) is infinite, and
        # inf x log(1) gave NaN weights
        loss = -((1.0 - pt).clamp_min(1e-12) ** self.gamma) * logp
        if self.weight is not None:
            loss = loss * self.weight[target]
        return loss.mean()
