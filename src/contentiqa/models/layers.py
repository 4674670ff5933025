"""Small building blocks shared by the models."""
from __future__ import annotations

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
        loss = -((1.0 - pt) ** self.gamma) * logp
        if self.weight is not None:
            loss = loss * self.weight[target]
        return loss.mean()
