"""Base CNNs with offline pretrained weights (see :func:`create_backbone`)."""
from .config import LITE_MEAN, LITE_STD, PretrainedCfg
from .efficientnet_lite import WeightsUnavailableError
from .factory import DEFAULT_BACKBONE, backbone_cfg, create_backbone, list_backbones
from .imagenet import imagenet_class_names

__all__ = [
    "DEFAULT_BACKBONE",
    "LITE_MEAN",
    "LITE_STD",
    "PretrainedCfg",
    "WeightsUnavailableError",
    "backbone_cfg",
    "create_backbone",
    "imagenet_class_names",
    "list_backbones",
]
