"""Content labels joined to a dataset by a dataset-relative key.

A dataset table's ``key`` column is each image's path relative to the dataset's root, with
'/' separators (``images/239.png`` for clive-dev): it stays the same when the data moves to
another folder or machine, where absolute paths do not. Label files are joined on it.

Two label formats are read:

- **content labels** (``image, category[, category_confidence, category_source]``): one
  category per image, e.g. the pseudo-labels of ``contentiqa label-content``;
- **scene labels** in LIQE's format (``image, scene1[, scene2, scene3][, distortion]``): human
  labels, several scenes per photo (``scene1`` the main one). ``category`` becomes the main
  scene and ``categories`` every scene that applies (``|``-separated), mapped onto IQA-CR's
  names (:data:`LIQE_TO_IQA_CR`).

``image`` in a label file may be the dataset key itself, or a path (absolute, or relative to
the label file) under the dataset root, which is turned into the key.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

import pandas as pd

from .categories import LIQE_TO_IQA_CR, normalize_category
from .table import LABEL_COLUMNS, canonical_columns, cell_path, read_csv_table

LIQE_SCENES = tuple(LIQE_TO_IQA_CR)
HUMAN_LABEL_CATEGORIES: tuple[str, ...] = tuple(sorted(set(LIQE_TO_IQA_CR.values())))
"""The categories people's (LIQE's) scene labels can name: a head trained on them has nine,
IQA-CR's ``vehicle`` having no LIQE counterpart."""
SCENE_COLUMNS = ("scene1", "scene2", "scene3")
CATEGORY_SEPARATOR = "|"


class LabelsError(ValueError):
    """A label file that cannot be read or joined (the message names the file)."""


def dataset_keys(images: Iterable[str], root: str | os.PathLike) -> list[str]:
    """Paths relative to the dataset ``root`` (a folder), '/'-separated."""
    base = os.path.abspath(str(root))
    return [Path(os.path.relpath(os.path.abspath(str(p)), base)).as_posix() for p in images]


def scene_categories(raw: pd.DataFrame, path: str | os.PathLike,
                     what: str = "label file") -> tuple[list[str | None], list[str | None]]:
    """People's scene columns (``scene1..3``, LIQE's names) in IQA-CR's: each row's main category
    and its '|'-joined set (None where a row has none); LabelsError naming ``what`` ``path`` for a
    scene no category maps."""
    scenes = [[normalize_category(row.get(c)) for c in SCENE_COLUMNS if c in raw] for _, row in raw.iterrows()]
    unknown = sorted({s for row in scenes for s in row if s is not None and s not in HUMAN_LABEL_CATEGORIES})
    if unknown:
        raise LabelsError(f"{what} {path}: unknown scene(s) {unknown}; known: {list(LIQE_SCENES)}")
    return [row[0] for row in scenes], [CATEGORY_SEPARATOR.join(dict.fromkeys(s for s in row if s)) or None
                                        for row in scenes]


def read_labels(path: str | os.PathLike) -> pd.DataFrame:
    """A label file as ``image, category[, categories][, distortion][, category_confidence,
    category_source]`` (scene labels mapped, see the module docstring)."""
    path = Path(path)
    try:
        # all text: an 'Image' column of '001' stays '001' whatever its header's case
        raw = read_csv_table(path, skip_comment=True, dtype=str, keep_default_na=False,
                             na_values=[""])  # (label-content writes a DATA file's comment line back)
    except FileNotFoundError:
        raise LabelsError(f"label file {path} does not exist") from None
    except ValueError as exc:  # (it names the file)
        raise LabelsError(f"label file {exc}") from None
    try:  # 'Image', 'Scene1', 'Category' as written by hand or a spreadsheet: the same columns
        raw.columns = canonical_columns(raw, path, also=(*SCENE_COLUMNS, "distortion"))
    except ValueError as exc:
        raise LabelsError(f"label file {exc}") from None
    if "image" not in raw:
        raise LabelsError(f"label file {path} needs an 'image' column; it has {list(raw.columns)}")
    # a row naming no image labels nothing (label-content keeps such rows, with their error);
    # read as the text 'nan', two of them were one image listed twice
    raw = raw[raw["image"].notna() & (raw["image"].str.strip() != "")].reset_index(drop=True)
    # "animal, a.png": the image after a comma and space, as a dataset CSV's is read
    out = pd.DataFrame({"image": [cell_path(path.parent, str(v)) for v in raw["image"]]})
    if "scene1" not in raw and "category" not in raw:
        raise LabelsError(f"label file {path} needs a 'category' or 'scene1' column; it has {list(raw.columns)}")
    if "category" in raw:
        out["category"] = [normalize_category(v) for v in raw["category"]]
        if "categories" in raw:  # each name in the spelling the model's categories have, as `category`'s
            out["categories"] = [CATEGORY_SEPARATOR.join(sorted(c)) or None for c in acceptable_sets(raw["categories"])]
        if "category_confidence" in raw:
            try:
                out["category_confidence"] = pd.to_numeric(raw["category_confidence"]).values
            except ValueError as exc:
                raise LabelsError(f"label file {path}: category_confidence is not a number ({exc})") from None
        if "category_source" in raw:
            out["category_source"] = raw["category_source"].values
    if "scene1" in raw:
        # people's scenes label the rows without a category of their own (label-content's output of
        # this layout keeps both: its guesses for the rows people left without a scene), as
        # label-content and a training table read such a row
        main, every = scene_categories(raw, path)
        for column in ("category", "categories", "category_source"):
            if column not in out:
                out[column] = None
        out = out.astype({c: object for c in ("category", "categories", "category_source")})
        for i, (category, categories) in enumerate(zip(main, every)):
            # (an empty cell is None or NaN, as the column's type has it)
            if category is not None and normalize_category(out["category"].iat[i]) is None:
                out.iloc[i, out.columns.get_loc("category")] = category
                out.iloc[i, out.columns.get_loc("category_source")] = "human"
                if normalize_category(out["categories"].iat[i]) is None:
                    out.iloc[i, out.columns.get_loc("categories")] = categories
                if "category_confidence" in out:
                    out.iloc[i, out.columns.get_loc("category_confidence")] = float("nan")
    if "distortion" in raw:
        out["distortion"] = raw["distortion"].values
    return out


def join_labels(table: pd.DataFrame, labels_path: str | os.PathLike, root: str | os.PathLike) -> pd.DataFrame:
    """``table`` (with a ``key`` column, or images under ``root``) with the labels of
    ``labels_path`` joined on the dataset-relative key. Images without a label get none.
    Existing label columns of ``table`` are replaced."""
    labels_path = Path(labels_path)
    labels = read_labels(labels_path)
    keys = table["key"].tolist() if "key" in table else dataset_keys(table["image"], root)
    known = set(keys)
    as_key = labels["image"].map(lambda s: s.replace("\\", "/"))
    # Each row a key, or else a path (absolute, or from the label file's folder) made one: a file
    # joining two exports holds both, and a row of one spelling must not hide those of the other.
    paths = ~as_key.isin(known)
    if paths.any():
        resolved = [p if os.path.isabs(p) else str(labels_path.parent / p) for p in labels["image"][paths]]
        as_key = as_key.copy()
        as_key[paths] = dataset_keys(resolved, root)
    labels = labels.assign(key=as_key.values).drop(columns=["image"]).drop_duplicates()
    twice = labels["key"][labels["key"].duplicated()].unique().tolist()
    if twice:  # which row is right is the file's to say, not the order of its rows
        raise LabelsError(f"label file {labels_path}: {len(twice)} image(s) listed twice with different labels, "
                          f"e.g. {twice[:3]}")
    matched = int(labels["key"].isin(known).sum())
    if matched == 0:
        raise LabelsError(f"label file {labels_path}: none of its {len(labels)} images is in the dataset "
                          f"(dataset keys look like {keys[:1]}, the file's like {labels['key'].tolist()[:1]})")
    # every label column of the table goes, not only those the file has: a main label from the file
    # beside the table's older set of acceptable ones (or its source) would be another photo's labels
    cols = {c for c in labels.columns if c != "key"} | {"category", *LABEL_COLUMNS}
    out = table.drop(columns=[c for c in table.columns if c in cols]).assign(_key=keys)
    return out.merge(labels.rename(columns={"key": "_key"}), on="_key", how="left").drop(columns=["_key"])


def acceptable_sets(values: Iterable, main: Iterable | None = None) -> list[set[str]]:
    """``categories`` cells -> sets of acceptable categories (empty when unlabelled), each with
    its row's ``main`` category (the photo's main label is one of its labels, whether or not the
    cell repeats it). Names are split on '|' (also ',' and ';', as a spreadsheet writes lists)."""
    mains = list(main) if main is not None else None
    out = []
    for i, v in enumerate(values):
        names = set() if v is None or (not isinstance(v, str) and pd.isna(v)) else \
            {c for c in map(normalize_category, re.split(r"[|,;]", str(v))) if c}
        first = normalize_category(mains[i]) if mains is not None else None
        out.append(names | {first} if first else names)
    return out
