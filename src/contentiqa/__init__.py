"""contentiqa: no-reference image quality assessment that understands what the image shows.

    >>> import contentiqa
    >>> contentiqa.list_models()
    >>> model = contentiqa.create_model(contentiqa.DEFAULT_MODEL)   # shipped weights, offline
    >>> model.predict("photo.jpg").score
"""
from __future__ import annotations

__version__ = "0.1.0"

from .models import IQAModel, Prediction, create_model, list_models, load_checkpoint  # noqa: E402

# The model `contentiqa score` uses by default: the better one by benchmarks/results.
DEFAULT_MODEL = "ie-iqa"

__all__ = ["DEFAULT_MODEL", "IQAModel", "Prediction", "__version__", "create_model", "list_models", "load_checkpoint"]
