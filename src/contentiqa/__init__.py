"""contentiqa: no-reference image quality assessment that understands what the image shows.

    >>> import contentiqa
    >>> contentiqa.list_models()
    >>> model = contentiqa.create_model(contentiqa.DEFAULT_MODEL)   # shipped weights, offline
    >>> model.predict("photo.jpg").score
    >>> contentiqa.load_scorer().predict("photo.jpg").score   # ONNX Runtime on a CPU: faster, no torch

The API is imported on first use (module ``__getattr__``), so ``import contentiqa`` and the
CLI's ``--help`` / usage errors do not pay for importing torch (seconds). Scoring needs no torch
at all (:mod:`contentiqa.inference.scorer`); the model API does (``pip install 'contentiqa[torch]'``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .utils.extras import have
from .utils.lazy import lazy_exports

__version__ = "0.1.0"

# The model `contentiqa score` uses by default: the better one by benchmarks/results.
DEFAULT_MODEL = "ie-iqa-distortion+iqa-cr+ie-iqa-distortion"

_LAZY = {  # name -> submodule; the model API imports torch, create_scorer does not
    "IQAModel": "models",
    "Prediction": "models",
    "create_model": "models",
    "list_models": "models",
    "load_checkpoint": "models",
    "create_scorer": "inference.scorer",  # ONNX Runtime, numpy, Pillow (PyTorch where asked)
    "load_scorer": "inference.scorer",
}

if TYPE_CHECKING:  # pragma: no cover
    from .inference.scorer import create_scorer, load_scorer  # noqa: F401
    from .models import IQAModel, Prediction, create_model, list_models, load_checkpoint  # noqa: F401

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())

# IQAModel is the torch model class itself: `from contentiqa import *` on an install without
# [torch] leaves it out rather than fail (the functions say what they need when called).
__all__ = ["DEFAULT_MODEL", "Prediction", "__version__", "create_model", "create_scorer", "list_models",
           "load_checkpoint", "load_scorer"] + (["IQAModel"] if have("torch") else [])
