"""Models: IQA-CR (and variants), IE-IQA; registry and checkpoints.

Where things go (a new model touches the first three files and nothing outside this package):

- ``base.py``: :class:`~contentiqa.models.base.IQAModel`, the contract every other part of
  contentiqa relies on; a new model subclasses it and fills in the hooks its docstring lists;
- ``<your_model>.py``: the architecture and its config dataclass (as ``iqa_cr.py``, ``ie_iqa.py``);
- ``zoo.py``: ``@register_model(name, weights={tag: file}, defaults=..., recipe=...)`` — the
  architecture an untrained ``name`` gets and how it is trained (``recipes.py``), weights by tag;
- ``registry.py``: ``create_model`` / ``list_models`` / checkpoints (self-describing files);
- ``layers.py``, ``selection.py``, ``intelligibility.py``: building blocks the models share;
- ``scoring.py``: the torch-free half of scoring (inputs -> images, outputs -> result rows).

Names are imported on first use (module ``__getattr__``): the registry (names, tags, shipped
weights) and the torch-free scoring helpers load without torch, so ``contentiqa models`` and
the cached ONNX scoring path start in a fraction of a second; the model classes import torch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..utils.lazy import lazy_exports

# public name -> the submodule that defines it
_LAZY = {
    "IEIQA": "ie_iqa",
    "IEIQAConfig": "ie_iqa",
    "build_ie_iqa": "ie_iqa",
    "IQACR": "iqa_cr",
    "IQACRConfig": "iqa_cr",
    "IQAModel": "base",
    "IQA_CR_CATEGORIES": "base",
    "Prediction": "scoring",
    "IntelligibilityBranch": "intelligibility",
    "IntelligibilityWeightsUnavailable": "intelligibility",
    "build_intelligibility": "intelligibility",
    "train_unrecognizability": "intelligibility",
    "create_model": "registry",
    "list_models": "registry",
    "list_pretrained": "registry",
    "load_checkpoint": "registry",
    "register_model": "registry",
    "save_checkpoint": "registry",
    "Selection": "selection",
    "Ensemble": "ensemble",
    "EnsembleConfig": "ensemble",
    "build_ensemble": "ensemble",
    "select_features": "selection",
}

if TYPE_CHECKING:  # pragma: no cover
    from .base import IQA_CR_CATEGORIES, IQAModel  # noqa: F401
    from .ensemble import Ensemble, EnsembleConfig, build_ensemble  # noqa: F401
    from .ie_iqa import IEIQA, IEIQAConfig, build_ie_iqa  # noqa: F401
    from .intelligibility import (  # noqa: F401
        IntelligibilityBranch,
        IntelligibilityWeightsUnavailable,
        build_intelligibility,
        train_unrecognizability,
    )
    from .iqa_cr import IQACR, IQACRConfig  # noqa: F401
    from .registry import create_model, list_models, list_pretrained, load_checkpoint, register_model, save_checkpoint  # noqa: F401
    from .scoring import Prediction  # noqa: F401
    from .selection import Selection, select_features  # noqa: F401


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())

__all__ = sorted(_LAZY)
