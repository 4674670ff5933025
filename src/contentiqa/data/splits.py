"""Train/val/test split protocols of the two papers, deterministic per seed, saved to files.

- ``iqa-cr`` (You, IQA-CR §IV.A): images are put in 2 complexity levels by spatial
  information (ITU-T P.910 SI, split at the median), each level into 5 MOS levels (quintiles
  within the level); 80 % / 10 % / 10 % of every one of the 10 cells go to train / val / test,
  at random. Stratifying this way keeps both rare hard content and rare extreme MOS in every part.
- ``ie-iqa`` (Song et al., IE-IQA §4): 80 % train / 20 % test, at random (no val part).

A split refers to images by their path relative to the common folder of the table's images,
so a split file written on one machine applies to the same dataset anywhere. A seed draws by
row position: the same table in another row order draws other parts, so the file, not the
seed, is what fixes a split.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from .imageio import load_image

PROTOCOLS = ("iqa-cr", "ie-iqa", "official")
OFFICIAL_VAL_FRACTION = 0.1
PARTS = ("train", "val", "test")


def spatial_information(image) -> float:
    """ITU-T P.910 spatial information of one image: std of the Sobel gradient magnitude of
    its luminance (BT.601 Y on 0-255), over the image with a 1-pixel border excluded."""
    from scipy import ndimage

    arr = np.asarray(image.convert("RGB"), dtype=np.float64)
    y = 0.299 * arr[..., 0] + 0.587 * arr[..., 1] + 0.114 * arr[..., 2]
    gx = ndimage.sobel(y, axis=1, mode="nearest")
    gy = ndimage.sobel(y, axis=0, mode="nearest")
    mag = np.hypot(gx, gy)[1:-1, 1:-1]
    return float(mag.std())


def compute_si(paths: Sequence[str], progress: bool = True) -> np.ndarray:
    """SI of every image (reads each once)."""
    from tqdm.auto import tqdm

    it = tqdm(paths, desc="spatial information", unit="img", disable=not progress, leave=False)
    return np.array([spatial_information(load_image(p).image) for p in it])


def image_keys(images: Iterable[str]) -> list[str]:
    """Paths relative to their common folder, with '/' separators: stable across machines."""
    images = [os.path.abspath(str(p)) for p in images]
    if not images:
        return []
    common = os.path.commonpath(images) if len(images) > 1 else os.path.dirname(images[0])
    if common in images:  # a single file
        common = os.path.dirname(common)
    return [Path(os.path.relpath(p, common)).as_posix() for p in images]


def image_keys_for(table: pd.DataFrame) -> list[str]:
    """:func:`image_keys` of a dataset table's ``image`` column."""
    return image_keys(table["image"])


@dataclass
class Split:
    """One partition of a dataset: image keys per part, plus how it was made."""

    protocol: str
    seed: int
    parts: dict[str, list[str]] = field(default_factory=dict)

    def indices(self, table: pd.DataFrame, part: str) -> np.ndarray:
        """Row indices of ``table`` in ``part``; every key must be found in the table."""
        keys = image_keys(table["image"])
        pos = {k: i for i, k in enumerate(keys)}
        wanted = self.parts.get(part, [])
        missing = [k for k in wanted if k not in pos]
        if missing:
            raise KeyError(f"split ({self.protocol}, seed {self.seed}) names {len(missing)} image(s) not in the table, e.g. {missing[:3]}")
        return np.array([pos[k] for k in wanted], dtype=np.int64)

    def check_disjoint(self) -> None:
        seen: dict[str, str] = {}
        for part, keys in self.parts.items():
            for k in keys:
                if k in seen:
                    raise ValueError(f"image {k} is in both '{seen[k]}' and '{part}'")
                seen[k] = part

    def to_dict(self) -> dict:
        return {"protocol": self.protocol, "seed": self.seed, **{p: list(v) for p, v in self.parts.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "Split":
        # a part under another name ("validation", "Test") would leave the run without a word
        unknown = sorted(str(k) for k in d if k not in ("protocol", "seed", *PARTS))
        if unknown:
            raise ValueError(f"split {d.get('protocol')!r} seed {d.get('seed')!r} has entries {unknown}: its parts "
                             f"are named {', '.join(PARTS)}")
        parts = {p: list(d[p]) for p in PARTS if p in d}
        s = cls(protocol=d["protocol"], seed=int(d["seed"]), parts=parts)
        s.check_disjoint()
        return s


MIN_IMAGES = 10
"""The smallest table any protocol splits."""


def check_held_out_across_sets(parts: dict[str, dict[str, pd.DataFrame]]) -> None:
    """ValueError when a photo one dataset's training part holds is in another's validation or
    test part too (the same file, by its real path). Each set is split on its own, so a photo
    two sets share (a relabelled or combined release) could train in one and be measured in the
    other: figures on photos the model trained on, without a word."""
    trained: dict[str, str] = {}
    for label, p in parts.items():
        if "train" in p:
            for image in p["train"]["image"]:
                trained.setdefault(os.path.realpath(str(image)), label)
    shared = []
    for label, p in parts.items():
        for part in ("val", "test"):
            for image in (p[part]["image"] if part in p else ()):
                where = trained.get(os.path.realpath(str(image)))
                if where is not None and where != label:
                    shared.append((str(image), where, f"{label}'s {part} part"))
    if shared:
        image, train, held = shared[0]
        raise ValueError(f"{len(shared)} photo(s) train in one dataset and are held out in another, e.g. {image} "
                         f"(training part of {train}, {held}): those figures would be measured on photos the model "
                         "trained on; give the sets one split (the same 'split' column), or drop the shared photos "
                         "from one of them")


def _split_cell(idx: np.ndarray, fractions: Sequence[float], rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle ``idx`` and cut it by ``fractions`` (rounded so every part of a large-enough
    cell gets its share; the remainder goes to the first part)."""
    idx = rng.permutation(idx)
    n = len(idx)
    counts = [int(round(n * f)) for f in fractions[1:]]
    first = n - sum(counts)
    bounds = np.cumsum([first] + counts)
    return np.split(idx, bounds[:-1])


def make_splits(
    table: pd.DataFrame,
    protocol: str = "iqa-cr",
    seed: int = 0,
    si: Sequence[float] | None = None,
    progress: bool = False,
) -> Split:
    """Split ``table`` by ``protocol`` ('iqa-cr', 'ie-iqa' or 'official') with ``seed``.

    For 'iqa-cr' the SI of each image is taken from ``si``, else from a ``si`` column of the
    table, else computed from the images (see :func:`compute_si`; pass it in when making
    several seeds to read the images once).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown split protocol {protocol!r}; use one of {PROTOCOLS}")
    n = len(table)
    if n < MIN_IMAGES:
        raise ValueError(f"cannot split {n} images: need at least {MIN_IMAGES}")
    rng = np.random.default_rng(seed)
    keys = image_keys(table["image"])
    if protocol == "ie-iqa":
        train, test = _split_cell(np.arange(n), (0.8, 0.2), rng)
        parts = {"train": train, "test": test}
    elif protocol == "official":
        # The release's own split (a 'split' column): its test part as is; the seed draws the
        # validation part (for early stopping) from the training part, unless the release has one.
        if "split" not in table:
            raise ValueError("protocol 'official' needs a 'split' column (train/test) in the dataset table")
        which = table["split"].astype(str).str.strip().str.lower().to_numpy()
        bad = sorted(set(which) - set(PARTS))
        if bad:
            raise ValueError(f"protocol 'official': unknown split value(s) {bad}; expected {PARTS}")
        train, test, val = (np.flatnonzero(which == p) for p in ("train", "test", "val"))
        if len(val) == 0:
            train, val = _split_cell(train, (1 - OFFICIAL_VAL_FRACTION, OFFICIAL_VAL_FRACTION), rng)
        parts = {"train": train, "val": val, "test": test}
    else:
        if si is None:
            si = table["si"].to_numpy() if "si" in table else compute_si(list(table["image"]), progress)
        si = np.asarray(si, dtype=np.float64)
        if len(si) != n:
            raise ValueError(f"si has {len(si)} values for {n} images")
        if not np.isfinite(si).all():  # one NaN makes the median NaN: every image one complexity level
            bad = [str(table["image"].iloc[i]) for i in np.flatnonzero(~np.isfinite(si))[:3]]
            raise ValueError(f"si has {int((~np.isfinite(si)).sum())} non-finite value(s), e.g. for {bad}")
        mos = table["mos"].to_numpy(dtype=np.float64)
        complexity = (si > np.median(si)).astype(int)
        parts = {p: [] for p in PARTS}
        for level in (0, 1):
            in_level = np.flatnonzero(complexity == level)
            if len(in_level) == 0:
                continue
            # MOS quintiles within the level; rank-based so ties do not empty a bin.
            ranks = pd.Series(mos[in_level]).rank(method="first").to_numpy()
            mos_bin = np.minimum((ranks - 1) * 5 // len(in_level), 4).astype(int)
            for b in range(5):
                cell = in_level[mos_bin == b]
                for part, chunk in zip(PARTS, _split_cell(cell, (0.8, 0.1, 0.1), rng)):
                    parts[part].append(chunk)
        parts = {p: np.concatenate(v) if v else np.array([], dtype=int) for p, v in parts.items()}
    split = Split(protocol, int(seed), {p: [keys[i] for i in sorted(idx.tolist())] for p, idx in parts.items()})  # numpy seeds too
    split.check_disjoint()
    return split


def make_split_set(table: pd.DataFrame, protocol: str = "iqa-cr", seeds: Iterable[int] = range(10), progress: bool = True) -> list[Split]:
    """Several seeded splits, reading the images for SI only once."""
    si = None
    if protocol == "iqa-cr" and len(table) >= MIN_IMAGES:  # fewer: make_splits refuses before any image is read
        si = table["si"].to_numpy() if "si" in table else compute_si(list(table["image"]), progress)
    return [make_splits(table, protocol, s, si=si) for s in seeds]


def save_splits(splits: Split | Sequence[Split], path: str | os.PathLike) -> Path:
    """Write one or several splits to a JSON file (atomically)."""
    from ..utils.io import atomic_write_text

    splits = [splits] if isinstance(splits, Split) else list(splits)
    payload = {"format": "contentiqa-splits/1", "splits": [s.to_dict() for s in splits]}
    return atomic_write_text(path, json.dumps(payload, indent=1))


def load_splits(path: str | os.PathLike) -> list[Split]:
    """Read splits written by :func:`save_splits`."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"split file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"split file {path} is not valid JSON: {exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"split file {path} is not a JSON text file (not UTF-8)") from None
    except OSError as exc:  # a folder, no read permission
        raise ValueError(f"cannot read split file {path}: {exc.strerror or exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != "contentiqa-splits/1":
        fmt = payload.get("format") if isinstance(payload, dict) else None
        raise ValueError(f"{path} is not a contentiqa split file (format {fmt!r})")
    try:
        splits = payload["splits"]
        if not isinstance(splits, list):
            raise TypeError("'splits' is not a list")
        return [Split.from_dict(d) for d in splits]
    except (KeyError, TypeError, AttributeError, ValueError) as exc:  # a hand-edited or foreign file
        detail = f"no {exc.args[0]!r} entry" if isinstance(exc, KeyError) else str(exc)
        raise ValueError(f"split file {path} is damaged: {detail}") from None
