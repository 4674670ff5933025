"""Training inputs at native resolution.

Images are never rescaled for IQA-CR: a training sample is a random ``crop`` x ``crop`` window
of the photo at its own scale (or the whole photo if it is smaller), optionally mirrored.
Batches are formed from samples of the same shape, so nothing is padded or resized.
Randomness is drawn from ``(seed, epoch, index)`` so a resumed run sees exactly the batches
the interrupted one would have.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..data.imageio import header_size, load_image
from ..models.scoring import limit_side, limited_size


def effective_shape(h: int, w: int, crop: int | None) -> tuple[int, int]:
    if crop is None:
        return h, w
    return min(h, crop), min(w, crop)


class Draw(int):
    """An item's index, drawn for the ``repeat``-th time in one epoch (a set drawn more often than
    it has photos, ``dataset_ratio``): each repeat gets crops and flips of its own, not copies of
    the first draw's. Compares and indexes as the index."""

    repeat: int

    def __new__(cls, index: int, repeat: int = 0) -> "Draw":
        obj = super().__new__(cls, index)
        obj.repeat = int(repeat)
        return obj

    def __reduce__(self):  # to DataLoader workers and back as itself
        return (Draw, (int(self), self.repeat))


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The item's random stream this epoch; a repeated draw (:class:`Draw`) a stream of its own
    (a first draw's is what it always was)."""
    repeat = index.repeat if isinstance(index, Draw) else 0
    return np.random.default_rng([seed, epoch, int(index)] + ([repeat] if repeat else []))


class ShapeGroupedBatchSampler(Sampler[list[int]]):
    """Batches of indices whose samples share a shape; order shuffled per (seed, epoch).

    ``draws`` (with ``groups``, one group name per index, e.g. its dataset) sets how many
    items of each group an epoch takes instead of all of them: balanced batches when one
    training set is much larger than another. Each group's items are drawn from a stream of
    its shuffled indices that runs on across epochs, so every item is seen before any repeats.
    """

    def __init__(self, shapes: Sequence[tuple], batch_size: int, shuffle: bool = True, seed: int = 0, drop_last: bool = False,
                 groups: Sequence[str] | None = None, draws: dict[str, int] | None = None):
        self.shapes = list(shapes)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.drop_last = drop_last
        if draws is not None:
            if groups is None or len(groups) != len(self.shapes):
                raise ValueError("draws need one group name per item")
            unknown = sorted(set(draws) - set(groups))
            if unknown:
                raise ValueError(f"draws name groups with no items: {unknown}")
        self.groups = list(groups) if groups is not None else None
        self.draws = dict(draws) if draws is not None else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _drawn(self) -> list[int]:
        """This epoch's items: all of them, or each group's share of its endless stream (an
        item drawn again within the epoch as a :class:`Draw` of its repeat)."""
        if self.draws is None:
            return list(range(len(self.shapes)))
        out: list[int] = []
        members: dict[str, list[int]] = defaultdict(list)
        for i, g in enumerate(self.groups or ()):
            members[g].append(i)
        for gi, g in enumerate(sorted(members)):
            idx = np.array(members[g])
            n = self.draws.get(g, len(idx))
            start = self.epoch * n
            taken: list[int] = []
            cycle = start // len(idx)
            pos = start % len(idx)
            while len(taken) < n:
                order = np.random.default_rng([self.seed, gi, cycle, 5]).permutation(idx) if self.shuffle else idx
                take = order[pos:pos + n - len(taken)].tolist()
                taken += take
                cycle, pos = cycle + 1, 0
            seen: dict[int, int] = defaultdict(int)
            for i in taken:
                out.append(Draw(i, seen[i]))
                seen[i] += 1
        return out

    def _batches(self) -> list[list[int]]:
        drawn = self._drawn()
        groups: dict[tuple, list[int]] = defaultdict(list)  # positions in ``drawn``, by shape
        for pos, i in enumerate(drawn):
            groups[tuple(self.shapes[i])].append(pos)
        rng = np.random.default_rng([self.seed, self.epoch, 7])
        batches = []
        for key in sorted(groups):
            idx = np.array(groups[key])
            if self.shuffle:
                idx = rng.permutation(idx)
            for start in range(0, len(idx), self.batch_size):
                b = [drawn[p] for p in idx[start:start + self.batch_size].tolist()]
                if self.drop_last and len(b) < self.batch_size and len(idx) >= self.batch_size:
                    continue
                batches.append(b)
        if self.shuffle:
            order = rng.permutation(len(batches))
            batches = [batches[i] for i in order]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())


class DistributedShapeGroupedBatchSampler(ShapeGroupedBatchSampler):
    """One rank's share of :class:`ShapeGroupedBatchSampler`'s batches (DistributedDataParallel).

    Every rank computes the same epoch batch list from ``(seed, epoch)`` and takes every
    ``num_replicas``-th batch starting at ``rank``, so at step ``k`` the ranks hold batches
    ``k * num_replicas ... k * num_replicas + num_replicas - 1`` of that list: disjoint, and
    together the batches one process would see. All ranks must take the same number of steps
    (DDP synchronises every step), so the list is padded by repeating its first batches up to a
    multiple of ``num_replicas`` (or, with ``drop_last``, truncated to one, keeping at least one
    round). ``batch_size`` is per rank: the global batch is ``num_replicas * batch_size``.
    """

    def __init__(self, shapes: Sequence[tuple], batch_size: int, num_replicas: int, rank: int, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False, groups: Sequence[str] | None = None,
                 draws: dict[str, int] | None = None):
        super().__init__(shapes, batch_size, shuffle=shuffle, seed=seed, drop_last=False, groups=groups, draws=draws)
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} out of range for {num_replicas} replicas")
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last_round = drop_last

    def _rank_batches(self) -> list[list[int]]:
        batches = self._batches()
        n, r = len(batches), self.num_replicas
        if n == 0:
            return []
        if self.drop_last_round and n >= r:
            batches = batches[: n - n % r]
        else:
            total = -(-n // r) * r
            batches = batches + [batches[i % n] for i in range(total - n)]
        return batches[self.rank::r]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._rank_batches())

    def __len__(self) -> int:
        return len(self._rank_batches())


class TrainImages(Dataset):
    """Samples for training: (tensor, normalised target, category index).

    ``transform`` overrides the native-scale crop/flip (models with a fixed input size, like
    IE-IQA, pass their own ``train_transform``).
    """

    def __init__(self, paths: Sequence[str], targets: Sequence[float], categories: Sequence[int], preprocess,
                 crop: int | None, hflip: bool, seed: int = 0, train: bool = True, transform=None,
                 max_side: int | None = None):
        self.paths = list(paths)
        self.max_side = max_side  # a native-resolution model's: photos as scoring reads them
        self.targets = np.asarray(targets, dtype=np.float32)
        self.categories = np.asarray(categories, dtype=np.int64)
        self.preprocess = preprocess
        self.crop = crop if train else None
        self.hflip = hflip and train
        self.seed = seed
        self.epoch = 0
        self.train = train
        self.transform = transform if train else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shapes(self) -> list[tuple[int, int]]:
        if self.transform is not None:
            return [(0, 0)] * len(self.paths)  # fixed-size transform: one group
        out = []
        for p in self.paths:
            w, h = limited_size(*header_size(p), self.max_side)
            out.append(effective_shape(h, w, self.crop))
        return out

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        rng = item_rng(self.seed, self.epoch, i)
        img = limit_side(load_image(self.paths[i]).image, self.max_side, [])
        if self.transform is not None:
            torch_seed = int(rng.integers(0, 2**31 - 1))
            state = torch.random.get_rng_state()
            torch.manual_seed(torch_seed)
            try:
                x = self.transform(img, flip=self.hflip)
            finally:
                torch.random.set_rng_state(state)
        else:
            x = self.preprocess(img)
            if self.crop is not None:
                h, w = x.shape[-2:]
                ch, cw = min(h, self.crop), min(w, self.crop)
                top = int(rng.integers(0, h - ch + 1))
                left = int(rng.integers(0, w - cw + 1))
                x = x[:, top:top + ch, left:left + cw]
            if self.hflip and rng.random() < 0.5:
                x = x.flip(-1)
        return x, torch.tensor(self.targets[i]), torch.tensor(self.categories[i])


class CachedFeatures(Dataset):
    """Samples from cached frozen-part encodings (see :func:`contentiqa.training.cache.cached_encodings`).

    Each item holds a dict of tensors with a leading view axis: the photo and its mirror (see
    :meth:`~contentiqa.models.base.IQAModel.cache_views`). Training draws one view at random
    per epoch (the mirror stands for a flip; ``hflip=False``: always the photo) and, when ``crop_cells`` is set, a random window of that many cells of
    the ``"x"`` feature map, which stands for a native-scale crop (cells are ``stride`` pixels
    wide, so the crop keeps the scale, up to receptive-field border effects of the frozen stages).
    """

    def __init__(self, encodings: Sequence[dict[str, torch.Tensor]], targets, categories, crop_cells: int | None,
                 seed: int = 0, train: bool = True, hflip: bool = True):
        self.encodings = list(encodings)
        self.hflip = hflip
        self.targets = np.asarray(targets, dtype=np.float32)
        self.categories = np.asarray(categories, dtype=np.int64)
        self.crop_cells = crop_cells if train else None
        self.train = train
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shapes(self) -> list[tuple[int, int]]:
        if self.encodings and "x" not in self.encodings[0]:
            return [(0, 0)] * len(self.encodings)  # pooled features: one shape
        return [effective_shape(e["x"].shape[-2], e["x"].shape[-1], self.crop_cells) for e in self.encodings]

    def __len__(self) -> int:
        return len(self.encodings)

    def __getitem__(self, i: int):
        rng = item_rng(self.seed, self.epoch, i)
        enc = self.encodings[i]
        n_views = next(iter(enc.values())).shape[0]
        v = int(rng.integers(0, n_views)) if self.train and self.hflip else 0
        item = {k: t[v].float() for k, t in enc.items()}
        if self.crop_cells is not None and "x" in item:
            x = item["x"]
            h, w = x.shape[-2:]
            ch, cw = min(h, self.crop_cells), min(w, self.crop_cells)
            top = int(rng.integers(0, h - ch + 1))
            left = int(rng.integers(0, w - cw + 1))
            item["x"] = x[:, top:top + ch, left:left + cw]
        return item, torch.tensor(self.targets[i]), torch.tensor(self.categories[i])
