"""Human-rated IQA datasets as torch Datasets backed by a pandas table.

``load_dataset(name, root)`` reads the layout each dataset's authors distribute (see each
loader's docstring) and returns an :class:`IQADataset`. Its ``.table`` has the columns of
:mod:`contentiqa.data.table`; its ``.scale`` is the native MOS range.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from .imageio import DEFAULT_MAX_PIXELS, load_image
from .labels import dataset_keys
from .registry import LoaderFn, dataset_scale, list_datasets, loaders, register_dataset
from .table import MOSScale, check_files, standardize_table

# The registry lives in registry.py (no torch, no pandas); its names are re-exported here.
__all__ = ["IQADataset", "LoaderFn", "dataset_scale", "list_datasets", "load_dataset", "register_dataset"]


class IQADataset(Dataset):
    """Images with MOS (and optionally category) from a table.

    ``transform(pil_image) -> tensor`` is applied to each image; without one the item holds the
    PIL image itself (native resolution, RGB). ``categories`` fixes the category -> index map
    so that train and test sets agree.
    """

    def __init__(
        self,
        table: pd.DataFrame,
        scale: MOSScale,
        name: str = "custom",
        transform: Callable | None = None,
        categories: list[str] | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ):
        self.table = table.reset_index(drop=True)
        self.scale = scale
        self.name = name
        self.transform = transform
        self.max_pixels = max_pixels
        if categories is None and "category" in self.table:
            categories = sorted(c for c in self.table["category"].dropna().unique())
        self.categories = list(categories) if categories else []
        self._cat_index = {c: i for i, c in enumerate(self.categories)}

    def __len__(self) -> int:
        return len(self.table)

    def category_index(self, value) -> int:
        if value is None or (isinstance(value, float) and np.isnan(value)) or pd.isna(value):
            return -1
        return self._cat_index.get(str(value), -1)

    def __getitem__(self, idx: int) -> dict:
        row = self.table.iloc[idx]
        image = load_image(row["image"], max_pixels=self.max_pixels).image
        if self.transform is not None:
            image = self.transform(image)
        cat = self.category_index(row["category"]) if "category" in row else -1
        return {
            "image": image,
            "mos": torch.tensor(float(row["mos"]), dtype=torch.float32),
            "target": torch.tensor(float(self.scale.normalize(row["mos"])), dtype=torch.float32),
            "category": torch.tensor(cat, dtype=torch.long),
            "index": idx,
        }

    def subset(self, rows) -> "IQADataset":
        """A dataset over some rows (indices or boolean mask), keeping the category map."""
        table = self.table.loc[rows] if not isinstance(rows, (list, np.ndarray)) else self.table.iloc[rows]
        return IQADataset(table, self.scale, self.name, self.transform, self.categories, self.max_pixels)


def _check_on_scale(table: pd.DataFrame, scale: MOSScale) -> None:
    """MOS outside the dataset's own scale: a rescaled or foreign sheet under a release's name,
    whose targets would be wrong by a factor with nothing to say so."""
    lo, hi = sorted((scale.low, scale.high))
    slack = 1e-6 * (hi - lo)
    bad = (table["mos"] < lo - slack) | (table["mos"] > hi + slack)
    if bad.any():
        shown = ", ".join(f"{Path(str(i)).name} ({v:g})" for i, v in zip(table["image"][bad][:5], table["mos"][bad][:5]))
        raise ValueError(f"{int(bad.sum())} MOS value(s) outside the dataset's scale [{lo:g}, {hi:g}]: {shown}")


def load_dataset(
    name: str,
    root: str | os.PathLike,
    on_missing: str = "error",
    transform: Callable | None = None,
    **kwargs,
) -> IQADataset:
    """Load a dataset by name from its distributed layout under ``root``.

    Names: ``livec``, ``koniq10k``, ``spaq``, ``cid2013``, ``bid``, ``biq2021``, ``csv`` (``root`` is then
    the CSV file). ``on_missing`` is 'error' (default: list missing files), 'skip' or 'keep'.
    Loader-specific keyword arguments are documented on each loader.
    """
    registered = loaders()
    if name not in registered:
        raise ValueError(f"unknown dataset '{name}'; known: {', '.join(list_datasets())}")
    fn, scale = registered[name]
    root = Path(root).absolute()  # the table's image paths are absolute, whatever the loader joins them to
    if not root.exists():
        raise FileNotFoundError(f"{name}: dataset root {root} does not exist")
    try:
        table = fn(root, **kwargs)
        if "__scale__" in table.attrs:
            scale = table.attrs["__scale__"]
        table = standardize_table(table)
        _check_on_scale(table, scale)
    except (ValueError, KeyError, OSError) as exc:
        # A release's own files (annotation sheets, .mat files) missing or unreadable, a cell
        # that is no number: the message names the dataset's folder when the loader's did not.
        message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        # prefixed unless it starts with its own file or dataset: a message naming an image
        # (a duplicate row) holds the root's path without saying which dataset it is about
        if not (message.startswith(str(root)) or message.startswith(name)):
            message = f"{name} ({root}): {message}"
        raise (FileNotFoundError if isinstance(exc, FileNotFoundError) else ValueError)(message) from None
    # The dataset-relative key: what splits and label files join on (stable when data moves).
    table["key"] = dataset_keys(table["image"], root if root.is_dir() else root.parent)
    table = check_files(table, name, on_missing)
    return IQADataset(table, scale, name=name, transform=transform)
