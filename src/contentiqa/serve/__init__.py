"""``contentiqa serve``: quality scores over HTTP from one loaded model (FastAPI on uvicorn).

    >>> from contentiqa.serve import LoadedModel, ServeConfig, create_app
    >>> app = create_app(ServeConfig(max_batch=8), model=LoadedModel(model, spec="ie-iqa"))

The web framework is imported only when this package's app is used (``import
contentiqa.serve`` itself stays light, so ``contentiqa --help`` never pays for it).
"""
from __future__ import annotations

from typing import Any

__all__ = ["LoadedModel", "ServeConfig", "create_app"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module 'contentiqa.serve' has no attribute {name!r}")
