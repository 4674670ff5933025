"""Synthetic damage as training signal, through the frozen-stage cache.

People rate a blurred, noisy or blown-out copy of a photo below the photo, and a black frame
below anything. Human-rated sets hold few such photos, so a model fitted to them alone can
score a black frame like an average photo. Two extra terms teach it (weights in
:class:`~contentiqa.training.config.TrainConfig`):

- graded groups: a training photo and four copies with one degradation type at levels 1-4
  (:mod:`contentiqa.data.degrade`), ranked in that order (:func:`ordered_fidelity_loss`);
- anchors: bad frames made from training photos, ranked below the batch's photos and pulled
  to the bottom of the scale (:func:`anchor_loss`).

Their encodings go through the same cache as the photos' (keyed by the damage too), so each
is computed once. Which photos: the first by a hash of each photo's identity
(:func:`~contentiqa.data.table.photo_ids`), so the cache serves every seed, and a resume after
a data folder moved, or a row not among them was removed, keeps them; their types and kinds:
in turn along that order, so each is taught even from a few photos. What a step draws: from
``(seed, epoch, step)``, so a resumed run repeats the uninterrupted one.
"""
from __future__ import annotations

import hashlib
from typing import Callable

import numpy as np
import pandas as pd
import torch

from ..data.degrade import BAD_FRAMES, DEGRADATIONS, LEVELS
from ..data.table import photo_ids
from ..models.base import IQAModel
from .config import TrainConfig

GROUP_SIZE = 1 + len(LEVELS)
"""Items of a graded group: the photo, then its copies at levels 1-4, best first."""


def source_rows(table: pd.DataFrame, cfg: TrainConfig) -> pd.DataFrame:
    """The training rows damage and anchors draw their photos from: ``damage_source``'s set, or
    every row; a ValueError naming the sets when it is none of them."""
    if cfg.damage_source is None:
        return table
    sets = sorted(set(table["dataset"])) if "dataset" in table else []
    if cfg.damage_source not in sets:
        raise ValueError(f"damage_source {cfg.damage_source!r} is not one of the training sets"
                         + (f": {', '.join(sets)}" if sets else " (there is one, unnamed: leave it out)"))
    return table[table["dataset"] == cfg.damage_source]


class DamageSet:
    """Cached encodings of the graded groups and the anchors of one training table."""

    def __init__(self, model: IQAModel, table: pd.DataFrame, cfg: TrainConfig, start_stage: int,
                 encode: Callable[[list[str], list[str]], list[dict[str, torch.Tensor]]]):
        """``encode(paths, damage_specs)``: the trainer's cached encodings (all views)."""
        self.cfg = cfg
        rows = source_rows(table, cfg)
        # Photos ranked by their own identity, not their place in the table: removing a row (as a
        # damaged photo's error advises) or moving a folder leaves the others' ranks as they were.
        ids = dict(zip(rows["image"].astype(str), photo_ids(rows)))
        candidates = sorted((_rank(pid), path) for path, pid in ids.items())
        # At most the photos there are: a recipe's counts (the default IE-IQA's 270 anchors) also
        # train on a smaller set, every photo then serving.
        need = min(len(candidates), max(cfg.damage_photos if cfg.damage_weight else 0,
                                        cfg.anchor_photos if cfg.anchor_weight else 0))
        picked = [path for _, path in candidates[:need]]
        self.picked = picked
        kinds = sorted(DEGRADATIONS)
        self.groups: list[list[dict[str, torch.Tensor]]] = []
        if cfg.damage_weight and cfg.damage_photos:
            paths, specs = [], []
            for i, p in enumerate(picked[:cfg.damage_photos]):
                kind = kinds[i % len(kinds)]
                paths += [p] * GROUP_SIZE
                specs += [""] + [f"degrade:{kind}:{lv}" for lv in LEVELS]
            enc = encode(paths, specs)
            self.groups = [enc[i:i + GROUP_SIZE] for i in range(0, len(enc), GROUP_SIZE)]
        self.anchors: list[dict[str, torch.Tensor]] = []
        if cfg.anchor_weight and cfg.anchor_photos:
            bad = sorted(BAD_FRAMES)
            photos = picked[:cfg.anchor_photos]
            self.anchors = encode(photos, [f"bad:{bad[i % len(bad)]}" for i in range(len(photos))])
        # Encodings of photos of different sizes (a native-resolution model's stage maps) cannot
        # share a step's stack, so each step draws items of one shape, as the photos' batches are.
        self._group_shapes = [_shape(g[0]) for g in self.groups]
        self._anchor_shapes = [_shape(a) for a in self.anchors]

    @property
    def active(self) -> bool:
        return bool(self.groups or self.anchors)

    def _view(self, n_views: int, rng: np.random.Generator) -> int:
        """A random view (the photo or its mirror) where training flips, else the photo itself."""
        return int(rng.integers(0, n_views)) if self.cfg.hflip else 0

    def _stack(self, items: list[dict[str, torch.Tensor]], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        views = [self._view(next(iter(e.values())).shape[0], rng) for e in items]
        return {k: torch.stack([e[k][v].float() for e, v in zip(items, views)]) for k in items[0]}

    def sample(self, epoch: int, step: int, rank: int = 0) -> dict[str, dict[str, torch.Tensor]]:
        """One step's extra inputs: ``groups`` (G x 5 items, each group best first, one random
        view per group) and ``anchors`` (A items)."""
        rng = np.random.default_rng([self.cfg.seed, epoch, step, rank, 13])
        out: dict[str, dict[str, torch.Tensor]] = {}
        if self.groups:
            chosen = _draw_one_shape(rng, self._group_shapes, self.cfg.damage_groups)
            items = []
            for g in chosen:
                v = self._view(next(iter(self.groups[g][0].values())).shape[0], rng)
                items += [{k: t[v:v + 1] for k, t in e.items()} for e in self.groups[g]]  # one view for the group
            out["groups"] = self._stack(items, rng)
        if self.anchors:
            chosen = _draw_one_shape(rng, self._anchor_shapes, self.cfg.anchors_per_batch)
            out["anchors"] = self._stack([self.anchors[a] for a in chosen], rng)
        return out


def _shape(encoding: dict[str, torch.Tensor]) -> tuple:
    """What must match for two encodings to stack: each tensor's shape but its views."""
    return tuple((k, tuple(t.shape[1:])) for k, t in sorted(encoding.items()))


def _rank(photo_id: str) -> int:
    """A photo's place among the candidates, from its identity alone."""
    return int.from_bytes(hashlib.sha256(photo_id.encode()).digest()[:8], "big")


def _draw_one_shape(rng: np.random.Generator, shapes: list[tuple], k: int) -> list[int]:
    """``k`` distinct indices (fewer when fewer share the shape) whose ``shapes`` match the first
    one drawn. Where every shape is the same this is one ``rng.choice``, the draw of a set of
    same-size photos before shapes were heeded, so those runs repeat exactly."""
    chosen = [int(i) for i in rng.choice(len(shapes), size=min(k, len(shapes)), replace=False)]
    if not chosen:
        return []
    same = [i for i in chosen if shapes[i] == shapes[chosen[0]]]
    if len(same) < len(chosen):
        rest = [i for i, sh in enumerate(shapes) if sh == shapes[chosen[0]] and i not in same]
        if rest:
            same += [int(i) for i in rng.choice(rest, size=min(len(chosen) - len(same), len(rest)), replace=False)]
    return same
