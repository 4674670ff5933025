"""Registered model entry points (what ``contentiqa.list_models()`` lists).

The model modules (and torch) are imported when a builder runs, not here: registering is
what ``contentiqa models`` needs, and it must not pay for torch."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from .recipes import (IE_IQA_DEFAULTS, IE_IQA_DISTORTION_DEFAULTS, IE_IQA_DISTORTION_RECIPE, IE_IQA_RECIPE,
                      IQA_CR_CLIVE_RECIPE, IQA_CR_DEFAULTS, IQA_CR_FULL_DEFAULTS, IQA_CR_RECIPE)
from .registry import register_model

if TYPE_CHECKING:
    from .ensemble import Ensemble
    from .ie_iqa import IEIQA
    from .iqa_cr import IQACR


def _iqa_cr(_variant: str, _name: str, **kwargs) -> IQACR:
    from .iqa_cr import IQACR, IQACRConfig

    # Positional names must not collide with config keys: a checkpoint's config holds 'variant'
    # (its own); another one asked for would silently build this entry's architecture instead.
    given = kwargs.pop("variant", None)
    if given not in (None, _variant):
        from .iqa_cr import VARIANT_MODELS

        raise ValueError(f"{_name} is IQA-CR's {_variant!r} variant, not {given!r}: "
                         + (f"create_model({VARIANT_MODELS[given]!r})" if given in VARIANT_MODELS
                            else f"the variants are {', '.join(VARIANT_MODELS)}"))
    model = IQACR(IQACRConfig(variant=_variant, **kwargs))
    model.model_name = _name
    return model


# Tags: `clive-biq2021-v3` = `clive-biq2021-v2` with its content named by a linear head on the
# backbone levels' global means instead of its tokens (benchmarks/content_head.py: the score is v2's,
# the head fitted on v2's clive-dev training photos, admitted by benchmarks/ship_gate.py against v2's
# recipe); `clive-biq2021-v2` = ie-iqa v3's recipe on IQA-CR's frozen, grid-pooled features (a head
# trained with bad-frame anchors, then trained on with clive-dev drawn 1:3 with BIQ2021 and the
# synthetic-damage ranking, mixed back with the first at the share both validation parts chose,
# output calibrated on clive-dev's validation part; configs/multi_finetune.yaml, admitted by
# benchmarks/ship_gate.py against `clive-biq2021`'s recipe); `clive-biq2021` = the head trained on
# both sets at once without anchors, damage or calibration (configs/multi_clive_biq2021.yaml);
# `clive` = fine-tuned on clive-dev alone, ImageNet pseudo-labels as content. Default tag first.
@register_model("iqa-cr", weights={"clive-biq2021-v3": "iqa-cr_clive-biq2021-v3.pt",
                                   "clive-biq2021-v2": "iqa-cr_clive-biq2021-v2.pt",
                                   "clive-biq2021": "iqa-cr_clive-biq2021.pt", "clive": "iqa-cr_clive.pt"},
                defaults=IQA_CR_FULL_DEFAULTS, recipe=IQA_CR_RECIPE)
def iqa_cr(**kwargs) -> IQACR:
    """IQA-CR: multitask quality + content Transformer with sequential spatial-channel attention."""
    return _iqa_cr("full", "iqa-cr", **kwargs)


@register_model("iqa-cr-q", weights={"clive": "iqa-cr-q_clive.pt"}, defaults=IQA_CR_DEFAULTS, recipe=IQA_CR_CLIVE_RECIPE)
def iqa_cr_q(**kwargs) -> IQACR:
    """IQA-CR-Q: the quality branch of IQA-CR alone (spatial then channel attention)."""
    return _iqa_cr("q", "iqa-cr-q", **kwargs)


@register_model("iqa-cr-c", recipe=IQA_CR_CLIVE_RECIPE)
def iqa_cr_c(**kwargs) -> IQACR:
    """IQA-CR-C: the content branch of IQA-CR alone (spatial attention)."""
    return _iqa_cr("c", "iqa-cr-c", **kwargs)


@register_model("mtl-transformer", recipe=IQA_CR_CLIVE_RECIPE)
def mtl_transformer(**kwargs) -> IQACR:
    """Single-task baseline made multitask: same backbone, plain Transformer, 1 + N head."""
    return _iqa_cr("mtl-transformer", "mtl-transformer", **kwargs)


@register_model("mtl-pooled", recipe=IQA_CR_CLIVE_RECIPE)
def mtl_pooled(**kwargs) -> IQACR:
    """Single-task baseline made multitask: pooled backbone features, 1 + N linear head."""
    return _iqa_cr("mtl-pooled", "mtl-pooled", **kwargs)


# -- IE-IQA (Song et al. 2021) -----------------------------------------------------------------
def _ie_iqa(name: str, **kwargs) -> IEIQA:
    from .ie_iqa import build_ie_iqa

    # Defaults that depend on other arguments (recipes.IE_IQA_DEFAULTS): training resizes ~8 %
    # larger and crops (416 -> 384); BatchNorm statistics stay fixed for a distortion backbone
    # that starts from trained weights, and are learnt from scratch (fixed initial statistics
    # make a random backbone collapse to a constant).
    if "input_size" in kwargs and "train_resize" not in kwargs:
        kwargs["train_resize"] = int(kwargs["input_size"]) + int(kwargs["input_size"]) // 12
    if "bn_eval" not in kwargs:
        kwargs["bn_eval"] = bool(kwargs.get("distortion_pretrained", True) or kwargs.get("distortion_checkpoint"))
    model = build_ie_iqa(**kwargs)
    model.model_name = name
    return model


# Tags: `clive-biq2021-v3` = `clive-biq2021-v2`'s head trained on with clive-dev drawn 1:3 with
# BIQ2021, then mixed back with it at the share both validation parts chose (never below v2 on
# either; configs/multi_finetune.yaml's last row, admitted by benchmarks/ship_gate.py against v2);
# `clive-biq2021-v2` = heads trained on clive-dev + BIQ2021 train at once (frozen Lite0
# backbones, per-dataset normalisation + within-dataset ranking loss, bad-frame anchors, the epoch
# chosen on BIQ2021's validation part, output calibrated on clive-dev's; configs/multi_finetune.yaml,
# admitted by benchmarks/ship_gate.py); `clive-biq2021` = the same without anchors and calibration,
# stopped on BIQ2021's validation part (configs/multi_clive_biq2021.yaml); `clive` = fine-tuned on
# clive-dev alone; `clive-biq2021-v4` = blocks 5-6, the conv head and the regressor fine-tuned on
# clive-dev alone with the damage ranking and bad-frame anchors (configs/clive_finetune.yaml), then that
# network frozen and its head trained on with clive-dev drawn 1:3 with BIQ2021 (configs/multi_finetune.yaml):
# the third member of `ie-iqa-distortion+iqa-cr+ie-iqa`, not ie-iqa's default (no gate judged it alone).
# The default tag comes first (weights/defaults.json, written by ship.py, decides).
# An untrained `ie-iqa` is the shipped architecture (no selection, 384 px: recipes.IE_IQA_DEFAULTS);
# the paper's is `create_model("ie-iqa", pretrained=False, **recipes.IE_IQA_PAPER_ARGS)`.
@register_model("ie-iqa", weights={"clive-biq2021-v3": "ie-iqa_clive-biq2021-v3.pt",
                                   "clive-biq2021-v4": "ie-iqa_clive-biq2021-v4.pt",
                                   "clive-biq2021-v2": "ie-iqa_clive-biq2021-v2.pt",
                                   "clive-biq2021": "ie-iqa_clive-biq2021.pt", "clive": "ie-iqa_clive.pt"},
                defaults=IE_IQA_DEFAULTS, recipe=IE_IQA_RECIPE)
def ie_iqa(**kwargs) -> IEIQA:
    """IE-IQA: distortion CNN fused with the features of a frozen intelligibility network (all of them in
    the shipped weights; the paper's top-k % selection is selection='auto')."""
    return _ie_iqa("ie-iqa", **kwargs)


# Tags: `clive-biq2021` = ie-iqa v3's recipe on the distortion network alone (configs/multi_finetune.yaml),
# the first member of the ensemble `ie-iqa-distortion+iqa-cr.clive-biq2021`; `clive-biq2021-v2` = the same
# at 512 px with the bad-frame anchors at 0.3, the first member of `ie-iqa-distortion+iqa-cr.clive-biq2021-v2`;
# `clive-biq2021-v3` = the 512-px network's blocks 5-6 and conv head fine-tuned on clive-dev alone with the
# damage ranking and bad-frame anchors (configs/clive_finetune.yaml), then frozen and its head trained on
# with clive-dev drawn 1:3 with BIQ2021, damage ranking 0.3 (configs/multi_finetune.yaml): the third member
# of `ie-iqa-distortion+iqa-cr+ie-iqa-distortion`, not this model's default (no gate judged it alone).
@register_model("ie-iqa-distortion", weights={"clive-biq2021": "ie-iqa-distortion_clive-biq2021.pt",
                                              "clive-biq2021-v2": "ie-iqa-distortion_clive-biq2021-v2.pt",
                                              "clive-biq2021-v3": "ie-iqa-distortion_clive-biq2021-v3.pt"},
                defaults=IE_IQA_DISTORTION_DEFAULTS, recipe=IE_IQA_DISTORTION_RECIPE)
def ie_iqa_distortion(**kwargs) -> IEIQA:
    """IE-IQA ablation "only distortion": the distortion CNN and regressor, no intelligibility."""
    task = kwargs.pop("intelligibility_task", None)
    if task not in (None, "", "none", "None"):
        raise ValueError(f"ie-iqa-distortion has no intelligibility branch (got intelligibility_task={task!r})")
    return _ie_iqa("ie-iqa-distortion", intelligibility_task=None, **kwargs)


# -- ensembles of trained models (models/ensemble.py) ---------------------------------------------
ENSEMBLE_MEMBERS: dict[str, tuple[str, ...]] = {"ie-iqa-distortion+iqa-cr": ("ie-iqa-distortion", "iqa-cr"),
                                                "ie-iqa-distortion+iqa-cr+ie-iqa": ("ie-iqa-distortion", "iqa-cr", "ie-iqa"),
                                                "ie-iqa-distortion+iqa-cr+ie-iqa-distortion":
                                                    ("ie-iqa-distortion", "iqa-cr", "ie-iqa-distortion")}
"""A named ensemble's members, in order: its architecture (``ensemble`` takes any)."""
_AT_512 = {"ie-iqa-distortion": {"input_size": 512}}
ENSEMBLE_DEFAULTS: dict[str, dict] = {
    "ie-iqa-distortion+iqa-cr": {"input_size": 512, "member_args": _AT_512, "member_weights": (2.0, 1.0)},
    "ie-iqa-distortion+iqa-cr+ie-iqa": {"input_size": 512, "member_args": _AT_512, "member_weights": (2.0, 1.0, 1.0)},
    "ie-iqa-distortion+iqa-cr+ie-iqa-distortion": {"input_size": 512, "member_args": _AT_512,
                                                   "member_weights": (2.0, 1.0, 2.0)},
}
"""What ``create_model(NAME, pretrained=False)`` builds of a named ensemble: its default tag's
architecture (one 512-px input, the distortion networks at 512 px, the members' weights), as an
entry's ``defaults`` are for a single model. Kept here, not as the entry's defaults: those would
also be given to a stored ensemble's rebuild, whose members say it all."""


def _ensemble(name: str, members: list[dict] | None = None, member_args: dict[str, dict] | None = None,
              member_weights: Sequence[float] | None = None, **kwargs) -> Ensemble:
    from .ensemble import Ensemble, EnsembleConfig, check_members, member_entry
    from .registry import create_model

    default_members = ENSEMBLE_MEMBERS.get(name, ())
    if members is None:  # untrained: the default tag's architecture, each member as its own entry builds it
        defaults = ENSEMBLE_DEFAULTS.get(name, {})
        unknown = set(member_args or {}) - set(default_members)
        if unknown:
            raise ValueError(f"{name}: member_args for {sorted(unknown)}, but its members are {list(default_members)}")
        # each member's given arguments over its defaults (one member's must not drop another's)
        args = {m: {**defaults.get("member_args", {}).get(m, {}), **(member_args or {}).get(m, {})}
                for m in default_members}
        weights = member_weights if member_weights is not None else defaults.get("member_weights",
                                                                                  [1.0] * len(default_members))
        if len(weights) != len(default_members):
            raise ValueError(f"{name}: {len(weights)} member_weights for its {len(default_members)} members")
        kwargs.setdefault("input_size", defaults.get("input_size"))
        members = [member_entry(create_model(m, pretrained=False, **args.get(m, {})), w)
                   for m, w in zip(default_members, weights)]
    elif member_args or member_weights:
        raise ValueError(f"{name}: member_args and member_weights only shape untrained members, not stored ones")
    else:
        check_members(name, [m.get("model") for m in members])
    model = Ensemble(EnsembleConfig(members=members, **kwargs))
    model.model_name = name
    return model


# Tags: `clive-biq2021` = `ie-iqa-distortion.clive-biq2021` and `iqa-cr.clive-biq2021-v2` as they ship,
# equal weights, harmonic mean (benchmarks/ensemble.py builds it from them); `clive-biq2021-v2` =
# `ie-iqa-distortion.clive-biq2021-v2` and `iqa-cr.clive-biq2021-v2` on one 512-px input (one shared
# backbone pass), weighted 2:1; `clive-biq2021-v3` = the same with `iqa-cr.clive-biq2021-v3` (the same
# scores, content from IQA-CR's levels head).
@register_model("ie-iqa-distortion+iqa-cr", weights={"clive-biq2021": "ie-iqa-distortion+iqa-cr_clive-biq2021.pt",
                                                     "clive-biq2021-v2": "ie-iqa-distortion+iqa-cr_clive-biq2021-v2.pt",
                                                     "clive-biq2021-v3": "ie-iqa-distortion+iqa-cr_clive-biq2021-v3.pt"},
                trainable=False)
def ie_iqa_distortion_iqa_cr(**kwargs) -> Ensemble:
    """IE-IQA's distortion network and IQA-CR together: the harmonic mean of their scores, IQA-CR's content.

    The default tag (``clive-biq2021-v3``) and ``clive-biq2021-v2`` give both one 512-px input (one
    backbone pass); ``clive-biq2021`` reads the photo at 384 px for the distortion network and at
    native resolution for IQA-CR. Both members are calibrated onto CLIVE's scale before they are
    combined."""
    return _ensemble("ie-iqa-distortion+iqa-cr", **kwargs)


# Tags: `clive-biq2021` = `ie-iqa-distortion+iqa-cr.clive-biq2021-v3`'s two members with
# `ie-iqa.clive-biq2021-v4` (IE-IQA fine-tuned on clive-dev alone, its network then frozen and its head
# trained on both sets) as a third, weighted 2:1:1 (chosen on validation parts; benchmarks/ship_gate.py
# passed it against the pair on the test parts).
@register_model("ie-iqa-distortion+iqa-cr+ie-iqa",
                weights={"clive-biq2021": "ie-iqa-distortion+iqa-cr+ie-iqa_clive-biq2021.pt"}, trainable=False)
def ie_iqa_distortion_iqa_cr_ie_iqa(**kwargs) -> Ensemble:
    """``ie-iqa-distortion+iqa-cr`` and a CLIVE-tuned IE-IQA together: the harmonic mean of their scores, IQA-CR's content.

    The two members of ``ie-iqa-distortion+iqa-cr`` read one 512-px input (one shared backbone
    pass); the third, whose deep stages were fine-tuned on clive-dev, gets it resized to its own
    384 px. Every member is calibrated onto CLIVE's scale before they are combined."""
    return _ensemble("ie-iqa-distortion+iqa-cr+ie-iqa", **kwargs)


# Tags: `clive-biq2021` = `ie-iqa-distortion+iqa-cr.clive-biq2021-v3`'s two members with
# `ie-iqa-distortion.clive-biq2021-v3` (the first member's 512-px network fine-tuned on clive-dev alone,
# then frozen and its head trained on both sets) as a third, weighted 2:1:2 (chosen on validation parts;
# benchmarks/ship_gate.py passed it against `ie-iqa-distortion+iqa-cr+ie-iqa.clive-biq2021` on the test parts).
@register_model("ie-iqa-distortion+iqa-cr+ie-iqa-distortion",
                weights={"clive-biq2021": "ie-iqa-distortion+iqa-cr+ie-iqa-distortion_clive-biq2021.pt"}, trainable=False)
def ie_iqa_distortion_iqa_cr_ie_iqa_distortion(**kwargs) -> Ensemble:
    """``ie-iqa-distortion+iqa-cr`` and a CLIVE-tuned copy of its distortion network: the harmonic
    mean of their scores, IQA-CR's content.

    All three read one 512-px input. The third member's stem and blocks 0-4 are the first's, so they
    run once for all; only its fine-tuned blocks 5-6 and conv head run on their own. Every member is
    calibrated onto CLIVE's scale before they are combined."""
    return _ensemble("ie-iqa-distortion+iqa-cr+ie-iqa-distortion", **kwargs)


@register_model("ensemble", trainable=False)
def ensemble(**kwargs) -> Ensemble:
    """Any trained models together (build_ensemble): the combined calibrated scores."""
    if kwargs.get("members") is None:
        raise ValueError("an 'ensemble' is made from trained models: contentiqa.models.ensemble.build_ensemble(models)")
    return _ensemble("ensemble", **kwargs)
