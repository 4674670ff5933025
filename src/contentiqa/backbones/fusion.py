"""BatchNorm folded into the convolution before it, for a copy of a network that only scores.

Why: in eval mode a BatchNorm is a fixed per-channel affine map, so the convolution before it
can absorb it (``torch.nn.utils.fusion.fuse_conv_bn_eval`` does the arithmetic). In eager
PyTorch on a CPU the separate BatchNorm passes over every feature map cost about a third of a
Lite0 pass; ONNX Runtime folds them itself when it loads a graph, which is much of why the
PyTorch path was the slower one.

Which pairs are folded is declared per timm block class (a convolution and the norm applied
directly to its output), not guessed from the order modules were registered in: a wrong pair
would give wrong scores silently. Blocks of other classes are left as they are (still correct,
only not faster). A module referenced from several places (a model's ``stages`` list holds the
backbone's own stem convolution, for instance) is replaced everywhere it appears.
"""
from __future__ import annotations

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def _pairs() -> dict[type, tuple[tuple[str, str], ...]]:
    from timm.models._efficientnet_blocks import ConvBnAct, DepthwiseSeparableConv, EdgeResidual, InvertedResidual
    from timm.models.efficientnet import EfficientNet
    from timm.models.resnet import BasicBlock, Bottleneck

    s2d = (("conv_s2d", "bn_s2d"),)
    return {
        EfficientNet: (("conv_stem", "bn1"), ("conv_head", "bn2")),
        ConvBnAct: (("conv", "bn1"),),
        DepthwiseSeparableConv: s2d + (("conv_dw", "bn1"), ("conv_pw", "bn2")),
        InvertedResidual: s2d + (("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")),
        EdgeResidual: (("conv_exp", "bn1"), ("conv_pwl", "bn2")),
        BasicBlock: (("conv1", "bn1"), ("conv2", "bn2")),
        Bottleneck: (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
    }


def _after_norm(bn: nn.BatchNorm2d) -> nn.Module:
    """What a norm layer does after normalising: timm's BatchNormAct2d applies its dropout and
    activation; a plain BatchNorm2d nothing."""
    rest = [m for name in ("drop", "act") if isinstance(m := bn._modules.get(name), nn.Module)
            and not isinstance(m, nn.Identity)]
    return nn.Sequential(*rest) if rest else nn.Identity()


def fold_batchnorm(module: nn.Module, *also: nn.Module) -> int:
    """Fold, in place, every declared (convolution, BatchNorm) pair of ``module`` and return how
    many were folded. ``also``: modules outside ``module``'s tree that hold the same layers (a
    model's ``stages`` list is not registered in it) and must use the folded ones too. Only for a
    network in eval mode that will not be trained again (its BatchNorm running statistics are
    gone afterwards): call it on a copy."""
    roots = (module, *also)
    table = _pairs()
    swap: dict[int, nn.Module] = {}
    parents = {id(m): m for r in roots for m in r.modules()}
    for block in parents.values():
        for conv_name, bn_name in table.get(type(block), ()):
            conv, bn = block._modules.get(conv_name), block._modules.get(bn_name)
            if id(bn) in swap or not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
                                      and bn.track_running_stats):
                continue
            if conv.training or bn.training:
                raise ValueError("fold_batchnorm needs the network in eval mode "
                                 "(BatchNorm then uses its running statistics)")
            swap[id(conv)] = fuse_conv_bn_eval(conv, bn)
            swap[id(bn)] = _after_norm(bn)
    for parent in parents.values():
        for name, child in parent._modules.items():
            if child is not None and id(child) in swap:
                parent._modules[name] = swap[id(child)]
    return len(swap) // 2
