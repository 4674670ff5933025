"""Models: IQA-CR (and variants), IE-IQA; registry and checkpoints.

A new model subclasses :class:`~contentiqa.models.base.IQAModel` (base.py: the contract every
other part of contentiqa relies on) and is registered in zoo.py."""
from . import zoo as _zoo  # noqa: F401  (registers the models)
from .base import IQA_CR_CATEGORIES, IQAModel, Prediction
from .ie_iqa import IEIQA, IEIQAConfig, build_ie_iqa
from .intelligibility import (
    IntelligibilityBranch,
    IntelligibilityWeightsUnavailable,
    build_intelligibility,
    train_unrecognizability,
)
from .iqa_cr import IQACR, IQACRConfig
from .registry import create_model, list_models, list_pretrained, load_checkpoint, register_model, save_checkpoint
from .selection import Selection, select_features

__all__ = [
    "IEIQA",
    "IEIQAConfig",
    "IQACR",
    "IQACRConfig",
    "IQAModel",
    "IQA_CR_CATEGORIES",
    "IntelligibilityBranch",
    "IntelligibilityWeightsUnavailable",
    "Prediction",
    "Selection",
    "build_ie_iqa",
    "build_intelligibility",
    "create_model",
    "list_models",
    "list_pretrained",
    "load_checkpoint",
    "register_model",
    "save_checkpoint",
    "select_features",
    "train_unrecognizability",
]
