"""A content head fitted apart from quality training, on the backbone levels' global means.

Why apart: in joint training the content loss sees only the photos people labelled (a few
hundred of clive-dev's) while the quality losses see every photo of every set, so the pooled
tokens a full IQA-CR names content from are shaped by quality. The frozen ImageNet levels the
bottleneck reads already name scenes better (benchmarks/results/content_head.md). A
multinomial logistic regression on them is convex: L-BFGS finds it in seconds on a CPU, and the
two settings that matter (L2 strength, how much of the target goes to a photo's other labels)
are chosen on validation photos only. The quality path is copied as it
is (:meth:`contentiqa.models.iqa_cr.IQACR.with_level_content`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import ImageOps

from ..data.imageio import load_image
from ..models.iqa_cr import IQACR, global_means

L2_GRID = (1e-3, 3e-3, 1e-2, 3e-2)
MIX_GRID = (0.0, 0.2)


@dataclass(frozen=True)
class ContentFit:
    """A fitted head (``weight`` (N, F), ``bias`` (N,)) on raw level means, the settings the
    validation photos chose and what they scored there."""

    weight: np.ndarray
    bias: np.ndarray
    l2: float
    mix: float
    val_top1: float | None = None
    val_any: float | None = None


def soft_targets(main: Sequence[str], every: Sequence[set[str]], categories: Sequence[str], mix: float) -> np.ndarray:
    """(n, N) targets: ``1 - mix`` on the main label, ``mix`` shared by every label people gave
    (the main one included). ``mix`` > 0 trades top-1 for "one of its labels"."""
    index = {c: i for i, c in enumerate(categories)}
    out = np.zeros((len(main), len(categories)))
    for r, (m, labels) in enumerate(zip(main, every)):
        if m not in index:
            raise ValueError(f"label {m!r} is not one of the model's categories {list(categories)}")
        out[r, index[m]] += 1.0 - mix
        labels = [c for c in (labels or {m}) if c in index]
        for c in labels:
            out[r, index[c]] += mix / len(labels)
    return out


def fit_logistic(x: np.ndarray, targets: np.ndarray, l2: float, max_iter: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression on features standardised by their training mean and
    spread (so one ``l2`` suits levels of any scale), folded back: logits = ``x @ W.T + b`` on
    the raw features."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xt = torch.tensor((x - mu) / sd, dtype=torch.float64)
    tt = torch.tensor(targets, dtype=torch.float64)
    w = torch.zeros(x.shape[1], targets.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(targets.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = -(tt * torch.log_softmax(xt @ w + b, dim=1)).sum(1).mean() + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w_raw = (w.detach().numpy() / sd[:, None]).T
    b_raw = b.detach().numpy() - (mu / sd) @ w.detach().numpy()
    return w_raw, b_raw


def accuracy(logits: np.ndarray, main: Sequence[str], every: Sequence[set[str]],
             categories: Sequence[str]) -> tuple[float, float]:
    """(top-1 against the main label, the prediction is one of the photo's labels)."""
    said = [categories[i] for i in np.asarray(logits).argmax(1)]
    top1 = float(np.mean([s == m for s, m in zip(said, main)]))
    anyl = float(np.mean([s in (e or {m}) for s, m, e in zip(said, main, every)]))
    return top1, anyl


def fit_content_head(x_train: np.ndarray, main_train: Sequence[str], every_train: Sequence[set[str]],
                     categories: Sequence[str], val: tuple[np.ndarray, Sequence[str], Sequence[set[str]]] | None = None,
                     l2s: Iterable[float] = L2_GRID, mixes: Iterable[float] = MIX_GRID) -> ContentFit:
    """Fit on the training photos; with ``val`` (features, main labels, label sets of held-out
    photos), choose ``l2`` and ``mix`` by the mean of top-1 and any-label accuracy there (ties:
    the first in the grids). Without ``val`` the grids must hold one value each."""
    l2s, mixes = list(l2s), list(mixes)
    if val is None and (len(l2s) != 1 or len(mixes) != 1):
        raise ValueError("without validation photos give one l2 and one mix")
    best: ContentFit | None = None
    for l2 in l2s:
        for mix in mixes:
            w, b = fit_logistic(x_train, soft_targets(main_train, every_train, categories, mix), l2)
            if val is None:
                return ContentFit(w, b, l2, mix)
            top1, anyl = accuracy(val[0] @ w.T + b, val[1], val[2], categories)
            if best is None or (top1 + anyl) > (best.val_top1 + best.val_any) + 1e-12:  # type: ignore[operator]
                best = ContentFit(w, b, l2, mix, top1, anyl)
    assert best is not None
    return best


@torch.no_grad()
def level_means(model: IQACR, paths: Sequence[str], hflip: bool = False,
                progress: Callable[[Iterable], Iterable] | None = None) -> np.ndarray:
    """(n, sum C) global means of ``model``'s levels for each photo, read as the model reads a
    photo (its own preprocessing, native resolution); ``hflip`` mirrors the photo first."""
    model = model.eval()
    rows = []
    for path in (progress(paths) if progress else paths):
        image = load_image(path).image
        if hflip:
            image = ImageOps.mirror(image)
        maps = model.features(model.preprocess(image).unsqueeze(0))
        rows.append(global_means(maps)[0].double().numpy())
    return np.stack(rows)
