"""Intelligibility backbones for IE-IQA (§3.2-3.3, §4.2): frozen networks of semantic tasks,
each reduced to one feature vector ``f`` (N_d values) per image plus the head that the
feature selection of :mod:`contentiqa.models.selection` ranks the features with.

=================  ===========================  =====  ===================================  ============
task               network                      N_d    f                                    selection
=================  ===========================  =====  ===================================  ============
recognition        ImageNet EfficientNet-Lite0  1280   global-average-pooled last features  contribution
                   (offline, pip package)                (the classifier's input)            (classifier)
scene              Places365 ResNet-18          512    pooled layer4 (the ``fc`` input)     contribution
                                                                                             (``fc``)
detection          COCO Faster R-CNN            1024   box-head representation, averaged    contribution
                   ResNet50-FPN                        over the most confident regions      (``cls_score``)
segmentation       COCO/VOC DeepLabV3           2048   pooled backbone ``out`` map          sensitivity
                   ResNet50 (or 101)                                                        (DeepLab head)
unrecognizability  EfficientNet-Lite0 + 3 FC    1280   pooled backbone features             sensitivity
                   regressor (VizWiz style)                                                 (the 3 FC)
=================  ===========================  =====  ===================================  ============

The reductions, where the task is not a plain "backbone + one FC layer" classifier:

- **detection**: the image is run through the detector's backbone and RPN at the size it is
  given (no internal resize to 800 px; set ``input_size`` to upscale), the top ``proposals``
  RPN boxes plus the whole-image box go through the RoI box head (``TwoMLPHead``, 1024-d) and
  the class predictor; the ``top_k`` regions with the highest foreground probability are
  averaged, weighted by that probability. ``f`` is that weighted mean box representation. As
  the class predictor ``cls_score`` is linear, ``W f + b`` is the same weighted mean of those
  regions' class logits, so Algorithm 1 applies as in a classifier: ``i_max`` is the
  top-scoring object class (the background class 0 is excluded) and contributions are
  ``|W[i_max, j] f_j|``. Class-count histograms of final detections were considered and left
  out: they are not differentiable/linear in ``f`` and so cannot be ranked by either strategy.
- **segmentation**: ``f`` is the global average of the backbone's ``out`` map (2048-d, output
  stride 8). The DeepLab head (ASPP + 3x3 conv + 1x1 classifier) applied to ``f`` as a 1x1 map
  is a small non-linear MLP (every dilated 3x3 convolution sees only its centre tap, the image
  pooling branch is the identity, BatchNorm and dropout are in eval mode), so the
  sensitivity strategy ranks features by ``|d z_{i_max} / d f_j|``, ``i_max`` = top-1
  foreground class of that head (background 0 excluded). Per-class mean probabilities of the
  full segmentation map were left out for the same reason as the detection histogram (no
  head to rank them by); ``SegmentationBranch.class_probabilities`` computes them for analysis.
- **unrecognizability**: ``s = F(f)``, ``F`` = the 3-layer ReLU regressor trained by
  :func:`train_unrecognizability` (Eq. 5-6).

Weights: ``recognition`` works offline (pip weight package). ``scene``, ``detection``,
``segmentation`` and ``unrecognizability`` take a checkpoint path; ``download=True`` lets
torchvision / the Places365 site supply them when online. Without either a clear
:class:`IntelligibilityWeightsUnavailable` says what to pass, except with ``pretrained=False``,
which builds random-initialised networks (to test the plumbing; such features are noise).

Inputs: every branch expects images normalised with its own ``mean`` / ``std``
(torchvision models: ImageNet statistics; EfficientNet-Lite: ``(x - 127) / 128``). IE-IQA
converts its single input tensor to each branch's normalisation internally.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import WeightsUnavailableError, create_backbone
from ..backbones.factory import checkpoint_files_skipped
from ..backbones.config import IMAGENET_MEAN, IMAGENET_STD

TASKS = ("recognition", "scene", "detection", "segmentation", "unrecognizability")

# The paper's final selection ratios (§4.2) and the strategy each task's head calls for.
PAPER_RATIOS: dict[str, float] = {
    "recognition": 5.0, "scene": 5.0, "detection": 20.0, "segmentation": 50.0, "unrecognizability": 50.0,
}
DEFAULT_STRATEGY: dict[str, str] = {
    "recognition": "contribution", "scene": "contribution", "detection": "contribution",
    "segmentation": "sensitivity", "unrecognizability": "sensitivity",
}

PLACES365_URLS = {
    "resnet18": "http://places2.csail.mit.edu/models_places365/resnet18_places365.pth.tar",
    "resnet50": "http://places2.csail.mit.edu/models_places365/resnet50_places365.pth.tar",
}
UNRECOGNIZABILITY_FORMAT = "contentiqa-unrecognizability/1"


class IntelligibilityWeightsUnavailable(WeightsUnavailableError):
    """An intelligibility task was asked for with pretrained weights that are not available."""


# -- weight files ---------------------------------------------------------------------------
def _torch_load(path: Path) -> Any:
    """Plain data only (the CSAIL Places365 ``.pth.tar`` files are): a file never runs code."""
    from ..utils.checkpoint_io import load_torch_file

    return load_torch_file(path, "intelligibility checkpoint")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a checkpoint file: unwraps ``state_dict`` / ``model`` /
    ``model_state_dict`` and strips DataParallel's ``module.`` prefixes (the official
    Places365 ``resnet18_places365.pth.tar`` has both)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"intelligibility checkpoint {path} does not exist (scene: the CSAIL Places365 "
                                "release's resnet18_places365.pth.tar; detection and segmentation: torchvision's COCO "
                                "weights; configs/README.md lists the files)")
    state = _torch_load(path)
    if isinstance(state, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds no state dict")
    return {str(k).removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], what: str, ignore: Sequence[str] = ()) -> None:
    """Load ``state`` into ``model``; keys starting with a prefix in ``ignore`` are dropped.
    Fails loudly when the file does not fit the architecture."""
    state = {k: v for k, v in state.items() if not any(k.startswith(p) for p in ignore)}
    target = model.state_dict()
    bad = [k for k, v in state.items() if k in target and target[k].shape != v.shape]
    if bad:
        raise ValueError(f"{what}: checkpoint tensors have the wrong shape for this network, e.g. {bad[:3]}")
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not any(k.startswith(p) for p in ignore)]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{what}: checkpoint does not fit this network ({len(missing)} missing, "
            f"{len(result.unexpected_keys)} unexpected keys, e.g. {(missing + list(result.unexpected_keys))[:3]})"
        )


def _torchvision_state(weights: Any, download: bool, what: str, hint: str) -> dict[str, torch.Tensor]:
    """torchvision's weights for ``weights`` (a Weights enum member): from the torch hub cache
    when already there, downloaded only when ``download``; else a clear error."""
    from urllib.parse import urlparse

    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)
    if not (cached.is_file() or download):
        raise IntelligibilityWeightsUnavailable(
            f"{what} has no weights on this machine. Pass intelligibility_checkpoint=<{hint}> "
            f"(e.g. the torchvision file {os.path.basename(cached)} from {weights.url}), or "
            "intelligibility_download=True with internet access; intelligibility_pretrained=False "
            "builds an untrained branch (for tests of the plumbing only)."
        )
    if not cached.is_file():
        try:  # into the hub cache, its hash checked against the one in torchvision's file name
            torch.hub.load_state_dict_from_url(weights.url, progress=True, check_hash=True, weights_only=True)
        except Exception as exc:  # network errors come in many types
            raise IntelligibilityWeightsUnavailable(
                f"{what}: could not fetch {weights.url} ({type(exc).__name__}: {str(exc)[:200]}). "
                f"Pass intelligibility_checkpoint=<{hint}> instead."
            ) from exc
    # Read as every checkpoint is, tensors only: torchvision's own reader unpickles whatever a
    # shared hub cache (a lab's common TORCH_HOME) holds under that predictable name.
    return read_state_dict(cached)


def _branch_state(checkpoint: str | None, pretrained: bool, weights: Callable[[], Any], download: bool,
                  what: str, hint: str) -> dict[str, torch.Tensor] | None:
    """A torchvision branch's weights, resolved before the network is built so that a missing
    file fails fast: the user's ``checkpoint``, else torchvision's (``weights()``, its Weights
    enum member) when ``pretrained``, else None (an untrained branch). None too while a saved
    model that holds the branch's tensors is rebuilt: its file may be gone (another machine)."""
    if checkpoint_files_skipped():
        return None
    if checkpoint is not None:
        return read_state_dict(checkpoint)
    return _torchvision_state(weights(), download, what, hint) if pretrained else None


# -- branches -------------------------------------------------------------------------------
class IntelligibilityBranch(nn.Module):
    """A frozen semantic network seen as ``extract(x) -> f (B, N_d)`` plus a head on ``f``.

    ``linear_head()`` is the task's final linear layer over ``f`` (for contribution-based
    selection; None if the head is not one linear layer); ``head(f)`` the task output as a
    differentiable function of ``f`` (for sensitivity-based selection). ``exclude_classes``
    are never taken as the top-1 class (background).
    """

    task = ""
    strategy = "contribution"
    exclude_classes: tuple[int, ...] = ()

    def __init__(self, mean: Sequence[float], std: Sequence[float], feature_dim: int):
        super().__init__()
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.feature_dim = int(feature_dim)

    def extract(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def linear_head(self) -> nn.Linear | None:
        return None

    def head(self, f: torch.Tensor) -> torch.Tensor:
        lin = self.linear_head()
        if lin is None:  # pragma: no cover - subclasses without a linear head override this
            raise NotImplementedError
        return lin(f)

    def head_layers(self) -> list[nn.Module] | None:
        """``head`` as a chain of Linear / ReLU (/ Dropout, Identity) modules when it is one,
        else None. Such a head's gradient has a closed form (:func:`selection.mlp_input_gradient`),
        which is what lets sensitivity-based selection be exported to ONNX."""
        lin = self.linear_head()
        return [lin] if lin is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.extract(x)

    def freeze(self) -> "IntelligibilityBranch":
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()


class RecognitionBranch(IntelligibilityBranch):
    """ImageNet classifier (default ``efficientnet_lite0``, offline): ``f`` = the pooled
    features the classifier sees (1280-d), head = the classifier."""

    task = "recognition"
    strategy = "contribution"

    def __init__(self, backbone: str = "efficientnet_lite0", pretrained: bool = True, checkpoint: str | None = None):
        # its classifier ranks the features (contribution selection): a file without it is refused
        net = create_backbone(backbone, pretrained=pretrained and checkpoint is None, checkpoint_path=checkpoint,
                              require_classifier=True)
        cfg = net.contentiqa_cfg
        super().__init__(cfg.mean, cfg.std, net.num_features)
        self.net = net
        if not isinstance(net.get_classifier(), nn.Linear):
            raise ValueError(f"recognition backbone '{backbone}' does not end in one linear classifier")

    def extract(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)

    def linear_head(self) -> nn.Linear:
        return self.net.get_classifier()


class SceneBranch(IntelligibilityBranch):
    """Places365 scene classifier: torchvision ResNet-18 with 365 classes. ``f`` = pooled
    layer4 features (512-d), head = ``fc``. Weights: the CSAIL release
    ``resnet18_places365.pth.tar`` (a ``state_dict`` with ``module.`` prefixes)."""

    task = "scene"
    strategy = "contribution"

    def __init__(self, arch: str = "resnet18", pretrained: bool = True, checkpoint: str | None = None, download: bool = False):
        import torchvision

        if not arch.startswith("resnet"):
            raise ValueError(f"scene task: arch must be a torchvision ResNet (resnet18, resnet50), not {arch!r}")
        what = f"intelligibility task 'scene' (Places365 {arch})"
        state = None
        if checkpoint_files_skipped():
            pass  # a saved model's own tensors replace the file's (see _branch_state)
        elif checkpoint is not None:
            state = read_state_dict(checkpoint)
        elif pretrained:
            url = PLACES365_URLS.get(arch)
            hint = f"{arch}_places365.pth.tar"
            target = Path(torch.hub.get_dir()) / "checkpoints" / hint  # used when already there
            if not target.is_file():
                if not download or url is None:
                    raise IntelligibilityWeightsUnavailable(
                        f"{what} needs Places365 weights: pass intelligibility_checkpoint=<{hint}> "
                        f"(the CSAIL release{', ' + url if url else ''}), or intelligibility_download=True "
                        "with internet access; intelligibility_pretrained=False builds an untrained branch "
                        "(for tests of the plumbing only)."
                    )
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    torch.hub.download_url_to_file(url, str(target))
                except Exception as exc:
                    raise IntelligibilityWeightsUnavailable(
                        f"{what}: could not download {url} ({type(exc).__name__}: {str(exc)[:200]}); "
                        f"pass intelligibility_checkpoint=<{hint}>"
                    ) from exc
            state = read_state_dict(target)
        net = getattr(torchvision.models, arch)(weights=None, num_classes=365)
        if state is not None:
            load_weights(net, state, what)
        super().__init__(IMAGENET_MEAN, IMAGENET_STD, net.fc.in_features)
        self.net = net

    def extract(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        x = n.layer4(n.layer3(n.layer2(n.layer1(x))))
        return torch.flatten(n.avgpool(x), 1)

    def linear_head(self) -> nn.Linear:
        return self.net.fc


class DetectionBranch(IntelligibilityBranch):
    """COCO Faster R-CNN (ResNet50-FPN): ``f`` = the box-head representation (1024-d) averaged
    over the ``top_k`` most confident of the top ``proposals`` RPN regions (plus the
    whole-image box), weighted by foreground probability; head = the box predictor's
    ``cls_score`` (linear, 91 COCO classes, background 0 excluded from ``i_max``)."""

    task = "detection"
    strategy = "contribution"
    exclude_classes = (0,)

    def __init__(
        self,
        arch: str = "fasterrcnn_resnet50_fpn",
        pretrained: bool = True,
        checkpoint: str | None = None,
        download: bool = False,
        proposals: int = 100,
        top_k: int = 10,
    ):
        from torchvision.models import detection

        if arch not in ("fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2"):
            raise ValueError(f"detection task: arch must be fasterrcnn_resnet50_fpn[_v2], not {arch!r}")
        what = f"intelligibility task 'detection' ({arch})"
        state = _branch_state(checkpoint, pretrained, lambda: {
            "fasterrcnn_resnet50_fpn": detection.FasterRCNN_ResNet50_FPN_Weights.COCO_V1,
            "fasterrcnn_resnet50_fpn_v2": detection.FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1,
        }[arch], download, what, f"{arch} COCO .pth")
        net = getattr(detection, arch)(weights=None, weights_backbone=None, num_classes=91)
        if state is not None:
            load_weights(net, state, what)
        super().__init__(IMAGENET_MEAN, IMAGENET_STD, net.roi_heads.box_predictor.cls_score.in_features)
        self.net = net
        self.proposals = int(proposals)
        self.top_k = int(top_k)

    def extract(self, x: torch.Tensor) -> torch.Tensor:
        return self.regions(x)["features"]

    def regions(self, x: torch.Tensor) -> dict[str, Any]:
        """The per-image reduction, with its intermediate results (boxes, weights) for analysis."""
        from torchvision.models.detection.image_list import ImageList

        n = self.net
        b, _, h, w = x.shape
        sizes = [(int(h), int(w))] * b
        feats = n.backbone(x)
        proposals, _ = n.rpn(ImageList(x, sizes), feats)
        whole = x.new_tensor([[0.0, 0.0, float(w), float(h)]])
        boxes = [torch.cat([whole, p[: self.proposals]]) for p in proposals]
        rep = n.roi_heads.box_head(n.roi_heads.box_roi_pool(feats, boxes, sizes))
        logits = n.roi_heads.box_predictor.cls_score(rep)
        fg = logits.softmax(dim=1)[:, 1:].max(dim=1).values
        out, kept, weights = [], [], []
        for r, p, bx in zip(rep.split([len(bb) for bb in boxes]), fg.split([len(bb) for bb in boxes]), boxes):
            k = min(self.top_k, len(p))
            top = p.topk(k).indices
            wgt = p[top] / p[top].sum().clamp_min(1e-12)
            out.append((wgt[:, None] * r[top]).sum(0))
            kept.append(bx[top])
            weights.append(wgt)
        return {"features": torch.stack(out), "boxes": kept, "weights": weights}

    def linear_head(self) -> nn.Linear:
        return self.net.roi_heads.box_predictor.cls_score


class SegmentationBranch(IntelligibilityBranch):
    """COCO (VOC classes) DeepLabV3 ResNet50/101: ``f`` = pooled backbone ``out`` (2048-d);
    head = the DeepLab head applied to ``f`` as a 1x1 map (21 logits, background 0 excluded
    from ``i_max``); sensitivity-based selection."""

    task = "segmentation"
    strategy = "sensitivity"
    exclude_classes = (0,)

    def __init__(self, arch: str = "deeplabv3_resnet50", pretrained: bool = True, checkpoint: str | None = None, download: bool = False):
        from torchvision.models import segmentation

        if arch not in ("deeplabv3_resnet50", "deeplabv3_resnet101"):
            raise ValueError(f"segmentation task: arch must be deeplabv3_resnet50 or deeplabv3_resnet101, not {arch!r}")
        what = f"intelligibility task 'segmentation' ({arch})"
        state = _branch_state(checkpoint, pretrained, lambda: {
            "deeplabv3_resnet50": segmentation.DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1,
            "deeplabv3_resnet101": segmentation.DeepLabV3_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1,
        }[arch], download, what, f"{arch} .pth")
        net = getattr(segmentation, arch)(weights=None, weights_backbone=None, num_classes=21, aux_loss=False)
        if state is not None:
            load_weights(net, state, what, ignore=("aux_classifier.",))
        net.aux_classifier = None
        super().__init__(IMAGENET_MEAN, IMAGENET_STD, 2048)
        self.net = net

    def extract(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.backbone(x)["out"].mean(dim=(2, 3))

    def head(self, f: torch.Tensor) -> torch.Tensor:
        return self.net.classifier(f[:, :, None, None]).flatten(1)

    @torch.no_grad()
    def class_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Mean per-class probability of the full segmentation map (B, 21), for analysis."""
        logits = self.net.classifier(self.net.backbone(x)["out"])
        return logits.softmax(dim=1).mean(dim=(2, 3))


class UnrecognizabilityRegressor(nn.Module):
    """Backbone + three FC layers with ReLU regressing an unrecognizability score (§3.3.2)."""

    def __init__(self, backbone: str = "efficientnet_lite0", hidden: Sequence[int] = (512, 128), pretrained: bool = True):
        super().__init__()
        self.backbone_name = backbone
        self.hidden = tuple(int(h) for h in hidden)
        self.backbone = create_backbone(backbone, pretrained=pretrained, num_classes=0)
        dims = [self.backbone.num_features, *self.hidden]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(dims[-1], 1))
        self.regressor = nn.Sequential(*layers)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.regressor(self.features(x))[:, 0]


class UnrecognizabilityBranch(IntelligibilityBranch):
    """Unrecognizability predictor (trained with :func:`train_unrecognizability`): ``f`` =
    pooled backbone features, head = the 3-FC ReLU regressor; sensitivity-based selection."""

    task = "unrecognizability"
    strategy = "sensitivity"

    def __init__(self, backbone: str = "efficientnet_lite0", pretrained: bool = True, checkpoint: str | None = None, hidden: Sequence[int] = (512, 128)):
        if checkpoint is not None and not (checkpoint_files_skipped() and not Path(checkpoint).is_file()):
            model = load_unrecognizability(checkpoint)  # its own backbone and hidden sizes
        elif checkpoint is not None:  # a saved model rebuilt without the file: its tensors come next
            model = UnrecognizabilityRegressor(backbone, hidden, pretrained=False)
        elif pretrained and not checkpoint_files_skipped():
            raise IntelligibilityWeightsUnavailable(
                "intelligibility task 'unrecognizability' needs a trained unrecognizability predictor: pass "
                "intelligibility_checkpoint=<file written by contentiqa.models.intelligibility.train_unrecognizability "
                "(a CSV of image,unrecognizability, e.g. converted from VizWiz-QualityIssues)>; "
                "intelligibility_pretrained=False builds an untrained branch (for tests of the plumbing only)."
            )
        else:
            model = UnrecognizabilityRegressor(backbone, hidden, pretrained=False)
        cfg = model.backbone.contentiqa_cfg
        super().__init__(cfg.mean, cfg.std, model.backbone.num_features)
        self.net = model

    def extract(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x)

    def head(self, f: torch.Tensor) -> torch.Tensor:
        return self.net.regressor(f)

    def head_layers(self) -> list[nn.Module] | None:
        return list(self.net.regressor)


def build_intelligibility(
    task: str,
    pretrained: bool = True,
    checkpoint: str | os.PathLike | None = None,
    backbone: str | None = None,
    download: bool = False,
    **options: Any,
) -> IntelligibilityBranch:
    """Build the (frozen, eval-mode) branch of ``task``.

    ``backbone``: the network name within the task (recognition / unrecognizability: a
    :func:`create_backbone` name; scene: ``resnet18``; detection:
    ``fasterrcnn_resnet50_fpn[_v2]``; segmentation: ``deeplabv3_resnet50`` / ``_resnet101``).
    ``options``: task specifics (detection: ``proposals``, ``top_k``; unrecognizability:
    ``hidden``).
    """
    ckpt = str(checkpoint) if checkpoint is not None else None
    if task == "recognition":
        branch: IntelligibilityBranch = RecognitionBranch(backbone or "efficientnet_lite0", pretrained, ckpt, **options)
    elif task == "scene":
        branch = SceneBranch(backbone or "resnet18", pretrained, ckpt, download, **options)
    elif task == "detection":
        branch = DetectionBranch(backbone or "fasterrcnn_resnet50_fpn", pretrained, ckpt, download, **options)
    elif task == "segmentation":
        branch = SegmentationBranch(backbone or "deeplabv3_resnet50", pretrained, ckpt, download, **options)
    elif task == "unrecognizability":
        branch = UnrecognizabilityBranch(backbone or "efficientnet_lite0", pretrained, ckpt, **options)
    else:
        raise ValueError(f"unknown intelligibility task {task!r}; choose one of {TASKS}")
    return branch.freeze()


# -- the unrecognizability predictor: training and files ------------------------------------
def save_unrecognizability(model: UnrecognizabilityRegressor, path: str | os.PathLike, extra: dict | None = None) -> Path:
    from ..utils.io import atomic_torch_save

    payload = {
        "format": UNRECOGNIZABILITY_FORMAT,
        "backbone": model.backbone_name,
        "hidden": list(model.hidden),
        "state_dict": model.state_dict(),
        "extra": extra or {},
    }
    return atomic_torch_save(payload, path)


def load_unrecognizability(path: str | os.PathLike) -> UnrecognizabilityRegressor:
    """Read a predictor written by :func:`save_unrecognizability` / :func:`train_unrecognizability`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"unrecognizability checkpoint {path} does not exist (write one with "
                                "contentiqa.models.intelligibility.train_unrecognizability)")
    payload = _torch_load(path)
    if not isinstance(payload, dict) or payload.get("format") != UNRECOGNIZABILITY_FORMAT:
        raise ValueError(f"{path} is not an unrecognizability predictor written by train_unrecognizability")
    model = UnrecognizabilityRegressor(payload["backbone"], payload["hidden"], pretrained=False)
    load_weights(model, payload["state_dict"], f"unrecognizability predictor {path}")
    return model.eval()


class _UnrecognizabilityData(torch.utils.data.Dataset):
    def __init__(self, paths: list[str], targets: list[float], mean, std, size: int, resize: int, train: bool):
        self.paths, self.targets = paths, targets
        self.mean, self.std, self.size, self.resize, self.train = mean, std, size, resize, train

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from ..data.imageio import load_image
        from .ie_iqa import resize_crop_flip

        img = load_image(self.paths[i]).image
        x = resize_crop_flip(img, self.size, self.resize if self.train else self.size, self.train, self.mean, self.std)
        return x, torch.tensor(float(self.targets[i]))


def train_unrecognizability(
    csv: str | os.PathLike,
    epochs: int = 5,
    batch_size: int = 16,
    lr: float = 1e-3,
    backbone_lr: float = 1e-4,
    out: str | os.PathLike | None = None,
    backbone: str = "efficientnet_lite0",
    pretrained: bool = True,
    hidden: Sequence[int] = (512, 128),
    freeze_backbone: bool = False,
    column: str = "unrecognizability",
    image_size: int = 224,
    resize: int = 244,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> UnrecognizabilityRegressor:
    """Train the unrecognizability predictor on a CSV ``image,<column>`` (image paths relative
    to the CSV; targets e.g. the fraction of VizWiz-QualityIssues annotators who marked the
    image unrecognizable). MSE loss, Adam (``lr`` for the FC layers, ``backbone_lr`` for the
    backbone unless ``freeze_backbone``), the IE-IQA augmentation (resize ``resize`` -> random
    ``image_size`` crop -> flip). Writes the predictor to ``out`` when given (use it as
    ``intelligibility_checkpoint``) and returns it in eval mode."""
    import pandas as pd
    from tqdm.auto import tqdm

    csv = Path(csv)
    df = pd.read_csv(csv)
    if "image" not in df.columns or column not in df.columns:
        raise ValueError(f"{csv}: needs columns 'image' and '{column}'; it has {list(df.columns)}")
    df = df.dropna(subset=[column])
    paths = [str(p) if Path(str(p)).is_absolute() else str((csv.parent / str(p)).resolve()) for p in df["image"]]
    torch.manual_seed(seed)
    model = UnrecognizabilityRegressor(backbone, hidden, pretrained=pretrained).to(device)
    cfg = model.backbone.contentiqa_cfg
    data = _UnrecognizabilityData(paths, df[column].astype(float).tolist(), cfg.mean, cfg.std, image_size, resize, True)
    gen = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True, generator=gen)
    groups = [{"params": model.regressor.parameters(), "lr": lr}]
    if freeze_backbone:
        for p in model.backbone.parameters():
            p.requires_grad_(False)
    else:
        groups.append({"params": model.backbone.parameters(), "lr": backbone_lr})
    opt = torch.optim.Adam(groups)
    history = []
    for epoch in range(epochs):
        model.train()
        if freeze_backbone:
            model.backbone.eval()
        total, count = 0.0, 0
        for x, y in tqdm(loader, desc=f"unrecognizability epoch {epoch + 1}/{epochs}", disable=not progress, leave=False):
            x, y = x.to(device), y.to(device)
            loss = F.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(y)
            count += len(y)
        history.append(total / max(count, 1))
    model.eval()
    if out is not None:
        save_unrecognizability(model, out, extra={"csv": str(csv), "epochs": epochs, "train_mse": history})
    model.train_history = history
    return model
