"""The training loss: a score term + focal loss on categories (+ an optional ranking term),
summed as IQA-CR does (§III), or weighted by the two alternatives the paper tried: dynamic
weight average (Liu et al. 2019) and homoscedastic uncertainty weighting (Kendall et al. 2018).

The score term is IQA-CR's smooth-L1, plain MSE, or ``"model"``: the model's own loss
(:meth:`~contentiqa.models.base.IQAModel.loss`, e.g. IE-IQA's MSE), which is what a recipe names
when the model defines its loss, so generic code never asks which model it trains."""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..models.layers import FocalLoss
from .config import CHOICES


def fidelity_loss(pred: torch.Tensor, target: torch.Tensor, sigma: float = 0.05) -> torch.Tensor:
    """Fidelity loss over every pair of a batch (Tsai et al. 2007; UNIQUE, Zhang et al. 2021):
    the predicted probability that one image is better than the other, Phi of the score
    difference, against the ground truth from the targets (1, 0, or 0.5 for ties). Only the
    order within the batch matters, not the targets' scale."""
    n = pred.shape[0]
    if n < 2:
        return pred.sum() * 0.0
    i, j = torch.triu_indices(n, n, offset=1, device=pred.device)
    p = 0.5 * (1 + torch.erf((pred[i] - pred[j]) / (2 * sigma)))  # Phi(d / (sqrt(2) sigma))
    t = (target[i] > target[j]).to(pred.dtype) + 0.5 * (target[i] == target[j]).to(pred.dtype)
    eps = 1e-8
    return (1 - torch.sqrt(p * t + eps) - torch.sqrt((1 - p) * (1 - t) + eps)).mean()


def ordered_fidelity_loss(scores: torch.Tensor, sigma: float = 0.05) -> torch.Tensor:
    """Fidelity loss for groups whose order is known: ``scores`` (G, L), each row ordered
    best first (a photo, then ever stronger degradations of it). Every pair (i < j) of a row
    should have ``scores[i] > scores[j]``; the loss is 0 when each such pair is sure."""
    _, n = scores.shape
    if n < 2:
        return scores.sum() * 0.0
    i, j = torch.triu_indices(n, n, offset=1, device=scores.device)
    p = 0.5 * (1 + torch.erf((scores[:, i] - scores[:, j]) / (2 * sigma)))
    return (1 - torch.sqrt(p + 1e-8)).mean()


def anchor_loss(anchors: torch.Tensor, photos: torch.Tensor, sigma: float = 0.05) -> torch.Tensor:
    """Bad frames below every photo: a fidelity term on every (photo, anchor) pair, plus the
    squared distance of the anchors above the bottom of the normalised scale (0)."""
    if anchors.numel() == 0:
        return anchors.sum() * 0.0
    d = photos[:, None] - anchors[None, :]
    p = 0.5 * (1 + torch.erf(d / (2 * sigma)))
    rank = (1 - torch.sqrt(p + 1e-8)).mean() if photos.numel() else anchors.sum() * 0.0
    return rank + (anchors.clamp(min=0.0) ** 2).mean()


SCORE_LOSSES = CHOICES["score_loss"]


class MultiTaskLoss(nn.Module):
    def __init__(
        self,
        score_loss: str = "smooth_l1",
        beta: float = 0.1,
        focal_gamma: float = 2.0,
        weighting: str = "sum",
        category_weight: float = 1.0,
        dwa_temperature: float = 2.0,
        rank_weight: float = 0.0,
        rank_sigma: float = 0.05,
        model_loss: Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor] | None = None,
        score_weight: float = 1.0,
    ):
        """``model_loss``: the model's ``loss(outputs, target)``, used when ``score_loss`` is
        ``"model"``."""
        super().__init__()
        if weighting not in ("sum", "dwa", "uncertainty"):
            raise ValueError(f"loss weighting must be sum, dwa or uncertainty, not {weighting!r}")
        if score_loss not in SCORE_LOSSES:
            raise ValueError(f"score loss must be one of {SCORE_LOSSES}, not {score_loss!r}")
        if score_loss == "model" and model_loss is None:
            raise ValueError("score_loss 'model' needs the model's loss function")
        self.score_loss = score_loss
        self.model_loss = model_loss
        self.beta = beta
        self.focal = FocalLoss(gamma=focal_gamma, ignore_index=-1)
        self.weighting = weighting
        self.category_weight = category_weight
        self.dwa_temperature = dwa_temperature
        self.rank_weight = rank_weight
        self.rank_sigma = rank_sigma
        self.score_weight = score_weight
        # uncertainty weighting: log variances, learned with the model
        self.log_vars = nn.Parameter(torch.zeros(2)) if weighting == "uncertainty" else None
        self.epoch_losses: list[list[float]] = []  # per-epoch mean task losses (for DWA)
        self._running = [0.0, 0.0, 0]

    def _score(self, out: dict[str, torch.Tensor], pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.score_loss == "model":
            return self.model_loss({**out, "score": pred}, target)  # type: ignore[misc]
        if self.score_loss == "mse":
            return F.mse_loss(pred, target)
        return F.smooth_l1_loss(pred, target, beta=self.beta)

    def dwa_weights(self) -> tuple[float, float]:
        if len(self.epoch_losses) < 2:
            return 1.0, 1.0
        (a1, b1), (a0, b0) = self.epoch_losses[-1], self.epoch_losses[-2]
        if not (a0 and b0):  # one task alone (a model without content head or score): no balance to strike
            return 1.0, 1.0
        r = [a1 / max(a0, 1e-12), b1 / max(b0, 1e-12)]
        e = [math.exp(x / self.dwa_temperature) for x in r]
        return 2 * e[0] / sum(e), 2 * e[1] / sum(e)

    def end_epoch(self) -> None:
        s, c, n = self._running
        if n:
            self.epoch_losses.append([s / n, c / n])
        self._running = [0.0, 0.0, 0]

    def forward(self, out: dict[str, torch.Tensor], target: torch.Tensor, category: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        terms: dict[str, torch.Tensor] = {}
        if "score" in out:
            terms["score"] = self._score(out, out["score"].float(), target.float())
            if self.rank_weight:
                terms["rank"] = fidelity_loss(out["score"].float(), target.float(), self.rank_sigma)
        if "logits" in out and bool((category >= 0).any()):
            terms["category"] = self.focal(out["logits"].float(), category)
        if not terms:
            if "logits" in out:  # a content-only model's batch without labels: nothing to learn from it
                return out["logits"].sum() * 0.0, {}
            raise ValueError("batch gives no loss: the model predicts neither a score nor categories")
        ls = self.score_weight * terms.get("score", torch.zeros((), device=target.device))
        if "rank" in terms:
            ls = ls + self.rank_weight * terms["rank"]
        lc = terms.get("category", torch.zeros((), device=target.device))
        if self.weighting == "sum":
            total = ls + self.category_weight * lc
        elif self.weighting == "dwa":
            ws, wc = self.dwa_weights()
            total = ws * ls + wc * self.category_weight * lc
        else:
            # each task's log variance only where the task is on: one weighted 0 would still add
            # its s, which falls without bound (and its exp(-s) overflows in the end)
            lv = self.log_vars
            total = 0.0 * (ls + lc)  # on the terms' graph even when no task is on (backward needs one)
            if "score" in terms and (self.score_weight or "rank" in terms):
                total = total + torch.exp(-lv[0]) * ls + lv[0]
            if "category" in terms and self.category_weight:
                total = total + torch.exp(-lv[1]) * self.category_weight * lc + lv[1]
        self._running[0] += float(ls.detach())
        self._running[1] += float(lc.detach())
        self._running[2] += 1
        return total, {k: float(v.detach()) for k, v in terms.items()}
