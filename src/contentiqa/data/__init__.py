"""Datasets (loaders of the released layouts), robust image reading and split protocols."""
from . import loaders as _loaders  # noqa: F401  (registers the dataset loaders)
from .datasets import IQADataset, dataset_scale, list_datasets, load_dataset, register_dataset
from .imageio import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIZE, ImageLoadError, LoadedImage, is_image_file, load_image
from .labels import HUMAN_LABEL_CATEGORIES, LIQE_TO_IQA_CR, LabelsError, dataset_keys, join_labels, read_labels
from .splits import PROTOCOLS, Split, compute_si, image_keys, image_keys_for, load_splits, make_split_set, make_splits, save_splits, spatial_information
from .table import MissingFilesError, MOSScale, check_files, standardize_table

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MIN_SIZE",
    "HUMAN_LABEL_CATEGORIES",
    "LIQE_TO_IQA_CR",
    "LabelsError",
    "dataset_keys",
    "join_labels",
    "read_labels",
    "IQADataset",
    "ImageLoadError",
    "LoadedImage",
    "MOSScale",
    "MissingFilesError",
    "PROTOCOLS",
    "Split",
    "check_files",
    "compute_si",
    "dataset_scale",
    "image_keys",
    "image_keys_for",
    "is_image_file",
    "list_datasets",
    "load_dataset",
    "load_image",
    "load_splits",
    "make_split_set",
    "make_splits",
    "register_dataset",
    "save_splits",
    "spatial_information",
    "standardize_table",
]
