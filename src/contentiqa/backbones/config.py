"""Pretrained configurations of backbones, as dataclasses (the timm way).

A config says everything a caller needs to feed the network correctly: the input
normalisation it was trained with, the size it was trained at (a hint only: contentiqa
feeds native resolution), and where its weights come from.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# EfficientNet-Lite weights were trained in TensorFlow on inputs scaled (x - 127) / 128
# with x in [0, 255]; expressed on [0, 1] tensors that is mean 127/255, std 128/255.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PretrainedCfg:
    """What a backbone expects and where its pretrained weights live."""

    name: str
    architecture: str
    """The timm architecture the weights are mapped onto."""
    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    num_classes: int = 1000
    num_features: int = 1280
    weight_source: str = "hub"
    """'package:<module>' (a pip package ships the file, works offline), 'hub' (timm's
    Hugging Face / URL download, needs internet or a warm cache) or 'checkpoint'."""
    weight_package: str | None = None
    weight_file_attr: str | None = None
    min_input_size: int = 32
    license: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
