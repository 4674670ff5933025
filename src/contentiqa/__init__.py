"""contentiqa: no-reference image quality assessment that understands what the image shows.

    >>> import contentiqa
    >>> contentiqa.list_models()
    >>> model = contentiqa.create_model(contentiqa.DEFAULT_MODEL)   # shipped weights, offline
    >>> model.predict("photo.jpg").score
    >>> contentiqa.create_scorer().predict("photo.jpg").score   # the same in ONNX Runtime: faster on a CPU

The model API is imported on first use (module ``__getattr__``), so ``import contentiqa``
and the CLI's ``--help`` / usage errors do not pay for importing torch (seconds).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# The model `contentiqa score` uses by default: the better one by benchmarks/results.
DEFAULT_MODEL = "ie-iqa"

_LAZY = ("IQAModel", "Prediction", "create_model", "list_models", "load_checkpoint")
_LAZY_INFERENCE = {"create_scorer": "scorer"}  # torch-free: ONNX Runtime, numpy, Pillow

if TYPE_CHECKING:  # pragma: no cover
    from .inference.scorer import create_scorer  # noqa: F401
    from .models import IQAModel, Prediction, create_model, list_models, load_checkpoint  # noqa: F401


def __getattr__(name: str) -> Any:
    """Import the model API (and torch) only when one of its names is asked for."""
    if name in _LAZY:
        from . import models

        value = getattr(models, name)
        globals()[name] = value
        return value
    if name in _LAZY_INFERENCE:
        import importlib

        value = getattr(importlib.import_module(f".inference.{_LAZY_INFERENCE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'contentiqa' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_LAZY_INFERENCE))


__all__ = ["DEFAULT_MODEL", "IQAModel", "Prediction", "__version__", "create_model", "create_scorer", "list_models",
           "load_checkpoint"]
