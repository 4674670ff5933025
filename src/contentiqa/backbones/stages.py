"""A backbone seen as an ordered list of stages, so it can be frozen up to a point, run from
a cached intermediate feature map, or cut for Grad-CAM.

Supported: timm's ``EfficientNet`` class (EfficientNet, EfficientNet-Lite, MobileNetV2, MnasNet:
stem, each of ``blocks``, then ``conv_head`` + ``bn2``) and timm's ``ResNet`` (stem, ``layer1..4``),
recognised by class: the stages are every block, finer than timm's ``feature_info`` reduction
points, because frozen-stage caching and the models' feature levels index blocks.
"""
from __future__ import annotations

import torch
from torch import nn


class Stem(nn.Module):
    def __init__(self, *mods: nn.Module):
        super().__init__()
        self.mods = nn.ModuleList(mods)

    def forward(self, x):
        for m in self.mods:
            x = m(x)
        return x


def backbone_stages(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's feature extractor as a list of modules applied in order; their
    composition equals ``backbone.forward_features``."""
    from timm.models.efficientnet import EfficientNet
    from timm.models.resnet import ResNet

    if isinstance(backbone, EfficientNet):
        stages: list[nn.Module] = [Stem(backbone.conv_stem, backbone.bn1)]
        stages += list(backbone.blocks)
        if not isinstance(backbone.conv_head, nn.Identity):
            stages.append(Stem(backbone.conv_head, backbone.bn2))
        return stages
    if isinstance(backbone, ResNet):
        stem = Stem(backbone.conv1, backbone.bn1, backbone.act1, backbone.maxpool)
        return [stem, backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4]
    raise TypeError(
        f"{type(backbone).__name__}: contentiqa knows how to stage timm's EfficientNet (and MobileNetV2) and ResNet "
        "backbones; for others use forward_features only (no partial freezing or feature caching)"
    )


def run_stages(stages: list[nn.Module], x: torch.Tensor, start: int = 0, end: int | None = None) -> torch.Tensor:
    for stage in stages[start:end]:
        x = stage(x)
    return x


def resolve_levels(wanted: tuple[int, ...] | list[int], n_stages: int, what: str = "stage(s)") -> list[int]:
    """Stage indices (negative = from the last) -> sorted, unique, non-negative indices."""
    levels = sorted({i + n_stages if i < 0 else i for i in wanted})
    if not levels or not all(0 <= i < n_stages for i in levels):
        raise ValueError(f"{what} {tuple(wanted)} out of range for {n_stages} stages")
    return levels


def run_stages_levels(stages: list[nn.Module], x: torch.Tensor, levels: list[int], start: int = 0) -> list[torch.Tensor]:
    """The outputs of the stages in ``levels`` (sorted), running ``stages[start:]`` up to the
    deepest one. ``start`` > 0: ``x`` is already the output of stage ``start - 1`` (cached),
    which is then kept when it is a level; an earlier level cannot be recovered."""
    if levels[0] < start - 1:
        raise ValueError(f"level {levels[0]} lies inside the {start} cached stages; cache at most "
                         f"{levels[0] + 1} stages for these levels")
    maps = [x] if start - 1 in levels else []
    for i in range(start, levels[-1] + 1):
        x = stages[i](x)
        if i in levels:
            maps.append(x)
    return maps


def levels_from_outputs(stages: list[nn.Module], levels: list[int], outputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """The outputs of the stages in ``levels`` (sorted), given ``outputs[i]``, the output of
    stage ``i`` for every ``i < len(outputs)`` (computed elsewhere): those are taken as they are,
    deeper ones computed from the last of them."""
    k = len(outputs)
    if not k:
        raise ValueError("no stage outputs given")
    maps = [outputs[i] for i in levels if i < k]
    deeper = [i for i in levels if i >= k]
    return maps + (run_stages_levels(stages, outputs[-1], deeper, k) if deeper else [])


def frozen_levels(levels: list[int], start: int) -> tuple[list[int], list[int]]:
    """``levels`` split at a cache boundary: those computed inside the ``start`` cached stages
    (before the cached map, stage ``start - 1``; a cache must hold them already pooled) and
    those computed from the cached map on."""
    return [i for i in levels if i < start - 1], [i for i in levels if i >= start - 1]


def freeze_stages(backbone: nn.Module, n: int) -> None:
    """Stop gradients into the first ``n`` stages. (Keeping their BatchNorm in eval mode is
    the owning model's job, in its ``train()``: see :func:`set_bn_eval`.)"""
    for stage in backbone_stages(backbone)[:n]:
        for p in stage.parameters():
            p.requires_grad_(False)


def set_bn_eval(module: nn.Module) -> None:
    """Put every BatchNorm under ``module`` in eval mode (use running statistics). Small
    batches of a few native-resolution photos give noisy batch statistics, so fine-tuning
    keeps the ImageNet ones."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
