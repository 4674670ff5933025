"""The dataset-loader registry: names and MOS scales, without torch or pandas.

``loaders.py`` registers each released layout here; listing them (``contentiqa models``) or
asking a dataset's scale imports neither torch nor pandas (seconds of start-up)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from .table import MOSScale

if TYPE_CHECKING:
    import pandas as pd

LoaderFn = Callable[..., "pd.DataFrame"]
_LOADERS: dict[str, tuple[LoaderFn, MOSScale]] = {}


def register_dataset(name: str, scale: MOSScale) -> Callable[[LoaderFn], LoaderFn]:
    """Register a table loader ``fn(root, **kw) -> DataFrame`` under ``name``."""

    def deco(fn: LoaderFn) -> LoaderFn:
        _LOADERS[name] = (fn, scale)
        return fn

    return deco


def loaders() -> dict[str, tuple[LoaderFn, MOSScale]]:
    """Every registered loader and its scale, with loaders.py's entries in it."""
    from . import loaders as _builtin  # noqa: F401  (registers the released layouts)

    return _LOADERS


def list_datasets() -> list[str]:
    return sorted(loaders())


def dataset_scale(name: str) -> MOSScale:
    if name not in loaders():
        raise ValueError(f"unknown dataset '{name}'; known: {', '.join(list_datasets())}")
    return _LOADERS[name][1]
