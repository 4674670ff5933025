"""Training recipes and architecture defaults of the registered models (torch-free).

As in timm, a registered name fixes two things next to each other (``models/zoo.py``):

- its **architecture defaults**: what ``create_model(NAME, pretrained=False)`` builds, chosen to
  be the architecture of NAME's default weights tag, so that training NAME and loading NAME
  give the same network. The papers' configurations stay reachable by explicit arguments
  (e.g. ``create_model("ie-iqa", pretrained=False, **IE_IQA_PAPER_ARGS)``);
- its **training recipe** (:class:`TrainRecipe`): how that default tag was actually trained.
  ``contentiqa train --model NAME`` starts from it; every field can be overridden.

Weights are tags (``ie-iqa.clive``, ``iqa-cr.clive-biq2021``). A checkpoint stores its own full
config and training config, so a tag trained with another recipe or a wider head (e.g.
``iqa-cr.clive``: D = 128) still loads as it was trained; the entry's defaults only decide what
an *untrained* NAME is.

This module imports nothing heavy: ``contentiqa models`` and ``train --help`` read it without torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping


@dataclass(frozen=True)
class TrainRecipe:
    """How a registered model is trained: a partial
    :class:`~contentiqa.training.config.TrainConfig`, the fields a recipe sets (same names and
    meanings) and nothing else, so every other field keeps TrainConfig's one default instead of
    a second copy here; plus ``source``, saying where the values come from.

    ``score_loss="model"`` means the model's own loss (:meth:`IQAModel.loss`, e.g. IE-IQA's MSE);
    ``smooth_l1`` / ``mse`` are the multitask loss's fixed choices. The category (focal) and
    ranking terms are added with ``category_weight`` / ``rank_weight`` in either case.
    The input size is an architecture default, not a recipe field: checkpoints must carry it.
    """

    source: str
    """Where these values come from (a shipped checkpoint's ``extra.train_config``, a config)."""
    values: Mapping[str, Any]
    """TrainConfig keyword arguments (tests check each against TrainConfig's fields)."""

    @classmethod
    def of(cls, source: str, **values: Any) -> TrainRecipe:
        return cls(source, MappingProxyType(dict(values)))

    def train_args(self) -> dict[str, Any]:
        """The recipe as TrainConfig keyword arguments."""
        return dict(self.values)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, **self.values}


# -- architecture defaults ------------------------------------------------------------------------
IE_IQA_DEFAULTS: dict[str, Any] = {
    "selection": "none",
    "input_size": 384,
    "intelligibility_input_size": 224,
}
"""The shipped ``ie-iqa`` (both tags): all 1280 recognition features (no selection), the
distortion branch at 384 px (trained on 384-px crops of 416-px resizes: the builder derives
``train_resize = input_size + input_size // 12`` when it is not given) (the paper's 224 px loses CLIVE's distortions:
benchmarks/results/feature_levels.md), the intelligibility branch at 224 px, BatchNorm
statistics fixed (needed to cache frozen stages; the builder derives ``bn_eval`` from whether the
distortion backbone starts from trained weights, when it is not given)."""

IE_IQA_DISTORTION_DEFAULTS: dict[str, Any] = {k: v for k, v in IE_IQA_DEFAULTS.items()
                                              if k == "input_size"}
"""``ie-iqa-distortion``: the shipped ``ie-iqa`` without its intelligibility branch (the
ablation configs/biq2021_cross.yaml and clive_cross.yaml train)."""

IE_IQA_PAPER_ARGS: dict[str, Any] = {
    "selection": "auto",
    "input_size": 224,
    "train_resize": 244,
    "intelligibility_input_size": None,
    "bn_eval": False,
    "distortion_levels": None,
}
"""Song et al. 2021's configuration: the task's selection strategy and ratio (contribution, 5 %
for recognition), 224-px input, BatchNorm trained, the distortion feature g the pooled last map
alone (the IEIQAConfig default reads the last four stages' maps)."""

IQA_CR_DEFAULTS: dict[str, Any] = {}
"""``iqa-cr`` / ``iqa-cr-q``: the default tags have the paper's head (L = 2, D = 64, H = 8,
d_f = 128), which are the IQACRConfig defaults already. Two things are deliberately *not*
defaults: ``categories`` (the content head's label set is the training data's: the shipped
``iqa-cr.clive-biq2021*`` tags learnt clive-dev's nine human scene labels, an untrained ``iqa-cr``
has the paper's ten KonIQ-10k categories) and ``frozen_stages`` (the trainer sets it from
``cache_stages``). ``iqa-cr.clive`` is a wider tag (D = 128, MLP 256): its checkpoint says so."""

IQA_CR_FULL_DEFAULTS: dict[str, Any] = {**IQA_CR_DEFAULTS, "content_from": "levels"}
"""``iqa-cr``: the default tag (``clive-biq2021-v3``) names content from the backbone levels' global
means, not from the pooled tokens (``IQACRConfig.content_from``); an untrained ``iqa-cr`` has that
head too, and ``contentiqa train`` teaches it with the category loss alongside the score. The
quality-only ``iqa-cr-q`` has no content head to move."""


# -- recipes --------------------------------------------------------------------------------------
FROZEN_BACKBONE_MULTI = dict(
    epochs=15, batch_size=32, optimizer="adamw", lr=1e-3, backbone_lr_scale=0.3, weight_decay=0.05,
    warmup_epochs=1.0, patience=6, rank_weight=1.0, rank_sigma=0.05, crop=None, cache_stages=9,
)
"""The shared part of configs/multi_clive_biq2021.yaml's ``train`` section (frozen Lite0 backbone,
heads trained on cached pooled features, within-dataset fidelity ranking loss)."""

ANCHORED_SECOND_STAGE = dict(
    anchor_weight=0.1, anchor_photos=270, anchors_per_batch=2, calibrate=True,
    **{**FROZEN_BACKBONE_MULTI, "epochs": 30, "patience": 10, "warmup_epochs": 0.5},
)
"""What the default tags of ``ie-iqa`` (v3) and ``iqa-cr`` (v2) share: the second stage of
configs/multi_finetune.yaml's two-stage rows (bad-frame anchors, output calibrated, 30 short
epochs from the first stage's weights)."""

IQA_CR_RECIPE = TrainRecipe.of(
    source="iqa-cr.clive-biq2021-v3 (iqa-cr.clive-biq2021-v2 with its content head fitted on the backbone "
           "levels by benchmarks/content_head.py --ship, which keeps v2's train_config): extra.train_config of "
           "src/contentiqa/weights/iqa-cr_clive-biq2021-v3.pt, "
           "row 'IQA-CR, probe + anchors 0.1, then 1:3 from it with damage 0.3, mixed on both sets, calibrated' of "
           "configs/multi_finetune.yaml (shipped by benchmarks/ship.py once benchmarks/ship_gate.py passed it), less "
           "the fields that name its training sets or a file (dataset_ratio: CLIVE 1 to BIQ2021 3, damage_source: "
           "BIQ2021, init_from: the first stage's weights, with interpolate: [0.25, 0.5, 0.75, 1.0] and "
           "interpolate_no_worse, which need it). Its first stage is row 'IQA-CR, probe on BIQ2021 val + anchors "
           "0.1, calibrated' (15 epochs, patience 6, monitor BIQ2021/srocc, no damage term)",
    score_loss="model", category_weight=0.2, damage_weight=0.3, damage_photos=1000, damage_groups=1,
    **ANCHORED_SECOND_STAGE,
)
"""The model's own score loss (MSE on the normalised MOS) + 0.2 x focal content + the ranking
term, AdamW, frozen backbone; bad frames as anchors at the bottom of the scale, and a ranking of
each photo above its own synthetically damaged copies (blur, JPEG, noise, under- and
overexposure), so that the score falls as damage grows; output calibrated on the validation part.
The default tag trained this way in a second stage, from a first head trained on the same photos,
and was mixed back with it: ``contentiqa train --set init_from=FIRST.pt --set interpolate=[...]``."""

IE_IQA_RECIPE = TrainRecipe.of(
    source="ie-iqa.clive-biq2021-v3: extra.train_config of src/contentiqa/weights/ie-iqa_clive-biq2021-v3.pt, "
           "row 'IE-IQA, probe + anchors 0.1, then 1:3 from it, mixed on both sets, calibrated' of "
           "configs/multi_finetune.yaml (shipped by benchmarks/ship.py once benchmarks/ship_gate.py passed it), less "
           "the fields that name its training sets or a file (dataset_ratio: CLIVE 1 to BIQ2021 3, damage_source: "
           "BIQ2021, init_from: the first stage's weights, with interpolate: [0.25, 0.5, 0.75, 1.0] and "
           "interpolate_no_worse, which need it). Its first stage is row 'IE-IQA, probe on BIQ2021 val + anchors "
           "0.1, calibrated' (ie-iqa.clive-biq2021-v2's recipe: 15 epochs, patience 6, monitor BIQ2021/srocc)",
    score_loss="model", **ANCHORED_SECOND_STAGE,
)
"""IE-IQA's own MSE (IEIQA.loss, §3.2) plus the ranking term, AdamW, frozen backbones; bad frames
(black, white, gray, noise, blurred, pixelated, destroyed JPEG) as anchors at the bottom of the
scale, and the output calibrated on the validation part (a monotone logistic stored in the weights).
The default tag trained this way in a second stage, from a first head trained on the same photos,
and was mixed back with it: ``contentiqa train --set init_from=FIRST.pt --set interpolate=[...]``."""

IQA_CR_CLIVE_RECIPE = TrainRecipe.of(
    source="iqa-cr-q.clive: extra.train_config of src/contentiqa/weights/iqa-cr-q_clive.pt (benchmarks/"
           "iqa_cr_sweep.sh); the same values are configs/clive_iqa_cr.yaml's train section, which trained "
           "the unshipped IQA-CR-C and MTL baselines of benchmarks/results/iqa_cr.md",
    epochs=15, batch_size=16, optimizer="adamw", lr=3e-4, backbone_lr_scale=0.3, weight_decay=0.05,
    warmup_epochs=1.0, patience=5, score_loss="smooth_l1", category_weight=0.2, crop=448, cache_stages=6,
)
"""IQA-CR's paper-style fine-tuning on CLIVE: native-resolution 448-px crops, first 6 backbone
stages frozen and cached, the rest fine-tuned at 0.3 x lr."""

IE_IQA_PAPER_RECIPE = TrainRecipe.of(
    source="Song et al. 2021 §4.2 as configs/clive_ie_iqa.yaml and the ie_iqa_koniq_*.yaml configs write it "
           "(SGD lr 0.03, FC layers alone for 2 epochs, MSE); ie-iqa.clive was trained with it "
           "(its extra.train_config)",
    epochs=10, batch_size=16, optimizer="sgd", lr=0.03, backbone_lr_scale=0.1, weight_decay=1e-4,
    warmup_epochs=1, head_only_epochs=2, patience=0, score_loss="model", crop=None, cache_stages=6,
)
"""Not an entry's default: the recipe of the ``ie-iqa.clive`` tag and of the paper configs."""

IE_IQA_DISTORTION_RECIPE = TrainRecipe.of(
    source="ie-iqa-distortion.clive-biq2021: extra.train_config of src/contentiqa/weights/"
           "ie-iqa-distortion_clive-biq2021.pt, row 'IE-IQA distortion only, probe + anchors 0.1, then 1:3 from it, "
           "mixed on both sets, calibrated' of configs/multi_finetune.yaml (benchmarks/ship.py), less the fields "
           "that name its training sets or a file: ie-iqa's recipe (IE_IQA_RECIPE) without the intelligibility "
           "branch. Its first stage is row 'IE-IQA distortion only, probe on BIQ2021 val + anchors 0.1, calibrated'",
    score_loss="model", **ANCHORED_SECOND_STAGE,
)
"""``ie-iqa``'s recipe for its distortion network alone: the member of the default ensemble
``ie-iqa-distortion+iqa-cr`` (the cross-dataset configs' rows train it without ranking)."""
