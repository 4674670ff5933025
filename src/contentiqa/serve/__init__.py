"""``contentiqa serve``: quality scores over HTTP from one loaded model (FastAPI on uvicorn).

    >>> from contentiqa import load_scorer
    >>> from contentiqa.serve import LoadedModel, ServeConfig, create_app
    >>> app = create_app(ServeConfig(max_batch=8), model=LoadedModel(load_scorer("ie-iqa")))

The web framework is imported only when this package's app is used (``import
contentiqa.serve`` itself stays light, so ``contentiqa --help`` never pays for it).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..utils.lazy import lazy_exports

_LAZY = {"LoadedModel": "app", "ServeConfig": "app", "create_app": "app"}

if TYPE_CHECKING:  # pragma: no cover
    from .app import LoadedModel, ServeConfig, create_app  # noqa: F401

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())

__all__ = sorted(_LAZY)
