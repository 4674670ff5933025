"""Datasets (loaders of the released layouts), robust image reading and split protocols.

Names are imported on first use (module ``__getattr__``), so reading images
(:mod:`contentiqa.data.imageio`) or listing the loaders (:mod:`contentiqa.data.registry`)
does not import torch or pandas (seconds of start-up for ``contentiqa score`` / ``models``)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..utils.lazy import lazy_exports

# public name -> the submodule that defines it
_LAZY = {
    "IQADataset": "datasets",
    "load_dataset": "datasets",
    "dataset_scale": "registry",
    "list_datasets": "registry",
    "register_dataset": "registry",
    "DEFAULT_MAX_PIXELS": "imageio",
    "DEFAULT_MIN_SIZE": "imageio",
    "ImageLoadError": "imageio",
    "LoadedImage": "imageio",
    "is_image_file": "imageio",
    "load_image": "imageio",
    "IQA_CR_CATEGORIES": "categories",
    "HUMAN_LABEL_CATEGORIES": "labels",
    "LIQE_TO_IQA_CR": "labels",
    "LabelsError": "labels",
    "dataset_keys": "labels",
    "join_labels": "labels",
    "read_labels": "labels",
    "PROTOCOLS": "splits",
    "Split": "splits",
    "compute_si": "splits",
    "image_keys": "splits",
    "image_keys_for": "splits",
    "load_splits": "splits",
    "make_split_set": "splits",
    "make_splits": "splits",
    "save_splits": "splits",
    "spatial_information": "splits",
    "MissingFilesError": "table",
    "MOSScale": "table",
    "check_files": "table",
    "standardize_table": "table",
}

if TYPE_CHECKING:  # pragma: no cover
    from .categories import IQA_CR_CATEGORIES  # noqa: F401
    from .datasets import IQADataset, load_dataset  # noqa: F401
    from .imageio import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIZE, ImageLoadError, LoadedImage, is_image_file, load_image  # noqa: F401
    from .labels import HUMAN_LABEL_CATEGORIES, LIQE_TO_IQA_CR, LabelsError, dataset_keys, join_labels, read_labels  # noqa: F401
    from .registry import dataset_scale, list_datasets, register_dataset  # noqa: F401
    from .splits import (  # noqa: F401
        PROTOCOLS,
        Split,
        compute_si,
        image_keys,
        image_keys_for,
        load_splits,
        make_split_set,
        make_splits,
        save_splits,
        spatial_information,
    )
    from .table import MissingFilesError, MOSScale, check_files, standardize_table  # noqa: F401


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())

__all__ = sorted(_LAZY)
