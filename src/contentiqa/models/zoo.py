"""Registered model entry points (what ``contentiqa.list_models()`` lists).

The model modules (and torch) are imported when a builder runs, not here: registering is
what ``contentiqa models`` needs, and it must not pay for torch."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .registry import register_model

if TYPE_CHECKING:
    from .ie_iqa import IEIQA
    from .iqa_cr import IQACR


def _iqa_cr(_variant: str, _name: str, **kwargs) -> IQACR:
    from .iqa_cr import IQACR, IQACRConfig

    # Positional names must not collide with config keys: a checkpoint's config holds 'variant'.
    kwargs.pop("variant", None)
    model = IQACR(IQACRConfig(variant=_variant, **kwargs))
    model.model_name = _name
    return model


@register_model("iqa-cr", weights={"clive-biq2021": "iqa-cr_clive-biq2021.pt", "clive": "iqa-cr_clive.pt"})
def iqa_cr(**kwargs) -> IQACR:
    """IQA-CR: multitask quality + content Transformer with sequential spatial-channel attention."""
    return _iqa_cr("full", "iqa-cr", **kwargs)


@register_model("iqa-cr-q", weights={"clive": "iqa-cr-q_clive.pt"})
def iqa_cr_q(**kwargs) -> IQACR:
    """IQA-CR-Q: the quality branch of IQA-CR alone (spatial then channel attention)."""
    return _iqa_cr("q", "iqa-cr-q", **kwargs)


@register_model("iqa-cr-c")
def iqa_cr_c(**kwargs) -> IQACR:
    """IQA-CR-C: the content branch of IQA-CR alone (spatial attention)."""
    return _iqa_cr("c", "iqa-cr-c", **kwargs)


@register_model("mtl-transformer")
def mtl_transformer(**kwargs) -> IQACR:
    """Single-task baseline made multitask: same backbone, plain Transformer, 1 + N head."""
    return _iqa_cr("mtl-transformer", "mtl-transformer", **kwargs)


@register_model("mtl-pooled")
def mtl_pooled(**kwargs) -> IQACR:
    """Single-task baseline made multitask: pooled backbone features, 1 + N linear head."""
    return _iqa_cr("mtl-pooled", "mtl-pooled", **kwargs)


# -- IE-IQA (Song et al. 2021) -----------------------------------------------------------------
def _ie_iqa(name: str, **kwargs) -> IEIQA:
    from .ie_iqa import build_ie_iqa

    model = build_ie_iqa(**kwargs)
    model.model_name = name
    return model


# Tags: `clive-biq2021` = heads trained on clive-dev + BIQ2021 train at once (frozen Lite0
# backbones, per-dataset normalisation + within-dataset ranking loss; benchmarks/results/
# generalization.md); `clive` = fine-tuned on clive-dev alone. The default tag comes first.
@register_model("ie-iqa", weights={"clive-biq2021": "ie-iqa_clive-biq2021.pt", "clive": "ie-iqa_clive.pt"})
def ie_iqa(**kwargs) -> IEIQA:
    """IE-IQA: distortion CNN fused with selected features of a frozen intelligibility network."""
    return _ie_iqa("ie-iqa", **kwargs)


@register_model("ie-iqa-distortion")
def ie_iqa_distortion(**kwargs) -> IEIQA:
    """IE-IQA ablation "only distortion": the distortion CNN and regressor, no intelligibility."""
    task = kwargs.pop("intelligibility_task", None)
    if task not in (None, "", "none", "None"):
        raise ValueError(f"ie-iqa-distortion has no intelligibility branch (got intelligibility_task={task!r})")
    return _ie_iqa("ie-iqa-distortion", intelligibility_task=None, **kwargs)
