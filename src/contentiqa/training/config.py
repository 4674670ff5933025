"""Training configuration: one dataclass, loadable from YAML, stored in every checkpoint."""
from __future__ import annotations

import math
import numbers
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..utils.fields import check_booleans, check_numbers


AT_LEAST_ONE = ("epochs", "batch_size")

RUNTIME_SETTINGS = ("device", "num_workers", "cache_runtime")
"""Training settings that say where a run happens, not what it learns (a run may finish on
another machine): outside an experiment's recipe fingerprint, and free to change on resume."""

CHOICES = {
    "optimizer": ("adamw", "sgd"),
    "scheduler": ("cosine", "none"),
    "score_loss": ("smooth_l1", "mse", "model"),
    "loss_weighting": ("sum", "dwa", "uncertainty"),
    "calibrate_on": ("first", "each"),
    "cache_runtime": ("torch", "onnx"),
}
"""The values each word-valued option takes: anything else is refused when the config is read,
not taken as the default branch (``scheduler: constant`` ran cosine) or met hours later."""

POSITIVE = ("rank_sigma",)
"""Options above 0: a zero spread divides by zero, a negative one ranks backwards."""
NOT_NEGATIVE = ("seed", "lr", "backbone_lr_scale", "weight_decay", "momentum", "warmup_epochs", "patience", "score_weight",
                "smooth_l1_beta", "focal_gamma", "category_weight", "rank_weight", "damage_weight", "damage_photos",
                "anchor_weight", "anchor_photos", "cache_stages", "num_workers", "head_only_epochs")
"""Options of 0 or more: a negative loss weight reverses its objective, a negative patience
stopped after one epoch, a negative beta is a traceback mid-epoch."""

VALIDATION_METRICS = ("srocc", "plcc", "krocc", "rmse", "accuracy", "acceptable")
"""What a validation can measure (a model without a content head, or a part without labels,
has fewer: the trainer says so then); ``monitor`` names one, or ``SET/metric``."""

SEED_LIMIT = 2**63
"""Seeds stay below it: torch's generators take 64-bit signed seeds."""


@dataclass
class TrainConfig:
    """How to train. The defaults are generic (IQA-CR-style fine-tuning); a registered model's
    own recipe (:class:`~contentiqa.models.recipes.TrainRecipe`, what ``contentiqa train
    --model NAME`` starts from) sets the fields it names."""

    epochs: int = 30
    batch_size: int = 16
    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 3e-4
    backbone_lr_scale: float = 0.3
    """Learning rate of pretrained backbone parameters relative to ``lr``."""
    weight_decay: float = 0.05
    momentum: float = 0.9
    scheduler: str = "cosine"  # cosine | none
    warmup_epochs: float = 1.0
    patience: int = 8
    """Early stopping: epochs without a better validation SROCC before stopping (0 = never)."""
    monitor: str | None = None
    """The validation metric that picks the best epoch, stops early and chooses the
    ``interpolate`` mix: a key of the validation metrics, e.g. ``BIQ2021/srocc`` for one
    training set's SROCC. None: SROCC (the mean over the sets' SROCC with several sets), or
    accuracy for a model without a score. One set's alone matters when another's validation
    part is too small to tell epochs apart but is still needed (``calibrate`` fits on it)."""
    # loss
    score_loss: str = "smooth_l1"
    """smooth_l1 | mse | model (the model's own :meth:`IQAModel.loss`, e.g. IE-IQA's MSE)."""
    score_weight: float = 1.0
    """Weight of the score term. 0 with ``rank_weight`` > 0 trains on the order within each
    dataset alone (UNIQUE): several datasets' rating scales then never meet in one loss, and
    ``calibrate`` puts the output on the first set's scale afterwards."""
    smooth_l1_beta: float = 0.1
    focal_gamma: float = 2.0
    loss_weighting: str = "sum"  # sum | dwa | uncertainty
    category_weight: float = 0.2
    """Weight of the focal (content) loss relative to the score loss (``sum`` weighting)."""
    rank_weight: float = 0.0
    """Weight of a fidelity (ranking) loss on every pair of a batch (UNIQUE, LIQE). Batches are
    drawn within one dataset, so pairs never compare MOS across rating scales: the lever for
    training on several datasets at once. 0 = off."""
    rank_sigma: float = 0.05
    """Spread of the Thurstone model of the ranking loss, on the normalised [0, 1] scale:
    P(a better than b) = Phi((s_a - s_b) / (sqrt(2) * rank_sigma))."""
    dataset_ratio: dict[str, float] | None = None
    """Several training sets: draws per epoch of each set relative to the first, which an epoch
    takes whole (``{CLIVE: 1, BIQ2021: 1}``: as many BIQ2021 photos as CLIVE has, a new share
    of BIQ2021 every epoch). None: every photo of every set once per epoch."""
    # synthetic damage (contentiqa.training.damage)
    damage_weight: float = 0.0
    """Weight of a ranking loss on graded damage: a photo above its degraded copies, a milder
    degradation above a stronger one (:mod:`contentiqa.data.degrade`). 0 = off."""
    damage_photos: int = 0
    """Training photos that get degraded copies (one degradation type each, levels 1-4); at most
    the training set's."""
    damage_groups: int = 2
    """Groups (a photo and its four degraded copies) added to every batch."""
    anchor_weight: float = 0.0
    """Weight of the bad-frame anchors: black, white, gray, noise, blur, pixelated and
    destroyed-JPEG frames, ranked below every photo of the batch and pulled to the bottom of
    the scale. 0 = off."""
    anchor_photos: int = 0
    """Training photos that bad frames are made from (one kind each, cycling over the kinds); at
    most the training set's."""
    anchors_per_batch: int = 2
    damage_source: str | None = None
    """Several training sets: the set whose photos the damage is made from (None: any)."""
    init_from: str | None = None
    """A checkpoint of the same architecture whose weights the model starts from (linear
    probing then fine-tuning: a head first fitted on frozen features, then the deep stages
    fine-tuned under it, keeps what the probe learnt). In an experiment config, ``{seed}`` is
    the split's seed and a relative path starts at the results folder, e.g.
    ``runs/<row>/seed{seed}/best.pt``: a row trained earlier on the same split."""
    interpolate: list[float] | None = None
    """With ``init_from``: after training, the weights become ``(1 - a) * init + a * trained`` for
    the ``a`` among these with the best validation score (weight-space ensembling, WiSE-FT,
    Wortsman et al. 2022): what fine-tuning gained on one dataset, kept where it cost another
    that the starting weights ranked well. 1.0 in the list keeps the trained weights possible."""
    interpolate_no_worse: bool = False
    """With ``interpolate`` on several validation sets: only mixes that score no lower than the
    starting weights (``a = 0``) on every set's validation SROCC compete, so a gain on one
    dataset is never bought with a loss on another (what a ship gate asks of a new default)."""
    ema_decay: float | None = None
    """Validate, keep and ship an exponential moving average of the trained weights (per
    optimiser step, e.g. 0.998: a horizon of about 500 steps) instead of the last step's: a
    small validation part then judges a smoothed trajectory, not one noisy step of it, so the
    chosen epoch depends less on that part's sampling. None = the weights as trained."""
    calibrate: bool = False
    """After training, fit the output calibration (:mod:`contentiqa.training.calibration`) on
    the validation part (``calibrate_on`` says whose) and store it in the model."""
    calibrate_on: str = "first"
    """Which validation photos ``calibrate`` fits on. ``first``: the first training set's, so
    the output reads on its raters' scale. ``each``: every training set's, each against its own
    MOS range mapped onto [0, 1] and weighted equally, so the one mapping a model trained on
    several sets applies to all of them is not shaped by one set's rating habits alone."""
    # data
    crop: int | None = 448
    """Random crop side in pixels at native scale (None: whole image). Images smaller than the
    crop are used whole. Evaluation always sees the whole image."""
    hflip: bool = True
    cache_stages: int = 0
    """Run the first N backbone stages once and cache their outputs (requires those stages
    frozen and BatchNorm statistics fixed): same gradients, a fraction of the CPU time. The cache
    holds the photo as scored and its mirror (``hflip``), except when it caches every stage the
    model uses: the head then trains on the photo as scored alone (the anchors and damage groups
    keep both); a resize-then-crop augmentation (IE-IQA's ``train_resize``) does not apply to a
    cached run."""
    cache_runtime: str = "torch"
    """What computes the cached frozen encodings: ``torch``, or ``onnx`` (ONNX Runtime on the CPU,
    about twice as fast for a first pass over a large dataset; one graph per input shape, so
    best for datasets of one or a few image sizes)."""
    num_workers: int = 0
    seed: int = 0
    device: str = "cpu"
    # two-phase schedule (IE-IQA §4.2): train the head alone first, then everything
    head_only_epochs: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # YAML reads 1e-4 (no dot) as a string: a number field takes such a string as the
        # number it spells, and anything else is refused here, not as a TypeError mid-training.
        for f in fields(self):
            kind = f.type.replace(" | None", "") if isinstance(f.type, str) else None
            value = getattr(self, f.name)
            if value is None and isinstance(f.type, str) and f.type.endswith("| None"):
                continue
            if kind == "str" and isinstance(value, os.PathLike):  # init_from=Path(...): kept as text (config.json)
                setattr(self, f.name, value := os.fspath(value))
            if kind == "str" and not isinstance(value, str):  # monitor: 5 failed deep in the trainer
                raise ValueError(f"training option {f.name} must be text, not {value!r}")
        check_numbers(self, "training option", at_least_one=AT_LEAST_ONE)
        check_booleans(self, "training option")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"training option {name} is one of {', '.join(allowed)}, not {getattr(self, name)!r}")
        for name in POSITIVE:
            if getattr(self, name) <= 0:
                raise ValueError(f"training option {name} must be above 0, not {getattr(self, name)!r}")
        for name in NOT_NEGATIVE:
            if getattr(self, name) < 0:
                raise ValueError(f"training option {name} must be 0 or more, not {getattr(self, name)!r}")
        if self.seed >= SEED_LIMIT:  # torch's seeds are 64-bit: a larger one is a traceback at the first draw
            raise ValueError(f"training option seed must be below 2**63, not {self.seed!r}")
        if self.crop is not None and self.crop < 1:
            raise ValueError(f"training option crop is a side in pixels (at least 1) or null for the whole image, "
                             f"not {self.crop!r}")
        if self.monitor is not None and self.monitor.rsplit("/", 1)[-1] not in VALIDATION_METRICS:
            raise ValueError(f"monitor {self.monitor!r} is no validation metric: one of {', '.join(VALIDATION_METRICS)}, "
                             "or SET/metric for one training set's")
        if self.dataset_ratio is not None and not (
                isinstance(self.dataset_ratio, dict) and self.dataset_ratio
                and all(finite_above_zero(v) for v in self.dataset_ratio.values())):
            raise ValueError("training option dataset_ratio maps training sets to draws above 0 (e.g. {CLIVE: 1, "
                             f"BIQ2021: 3}}), not {self.dataset_ratio!r}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay is the weight of the average at each step, in (0, 1): got {self.ema_decay}")
        if self.interpolate is not None:
            mixes = self.interpolate if isinstance(self.interpolate, (list, tuple)) else None
            try:
                values = [float(a) for a in mixes] if mixes else None
            except (TypeError, ValueError):
                values = None
            if not values or not all(0.0 <= a <= 1.0 for a in values):  # NaN fails too
                raise ValueError("training option interpolate is a list of mixes in [0, 1] (e.g. [0.25, 0.5, 1.0]), "
                                 f"not {self.interpolate!r}")
            self.interpolate = values
            if not self.init_from:
                raise ValueError("interpolate mixes the trained weights with those of init_from: set init_from")
        # Checked here, not where they are used: zero epochs would end in a missing best.pt,
        # a zero batch in an error from deep inside the data loader.
        for name in AT_LEAST_ONE:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"training option {name} must be a whole number of at least 1, not {value!r}")
        # A damage or anchor term is on with its weight and its photos: a weight alone trained
        # without the term, and said nothing (a negative one is refused above: it would reverse the ranking).
        for weight, photos, per_step in (("damage_weight", "damage_photos", "damage_groups"),
                                         ("anchor_weight", "anchor_photos", "anchors_per_batch")):
            w, n, k = getattr(self, weight), getattr(self, photos), getattr(self, per_step)
            if w > 0 and n < 1:
                raise ValueError(f"training option {weight} {w:g} needs {photos} (how many training photos it uses): "
                                 f"set {photos} to 1 or more, or {weight} to 0")
            if w > 0 and k < 1:
                raise ValueError(f"training option {per_step} must be at least 1 while {weight} is on, not {k!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(map(str, set(d) - known))  # YAML reads on/off/yes/no keys as booleans
        if unknown:
            hint = " (YAML reads on, off, yes and no as true/false: quote such a key)" \
                if any(isinstance(k, bool) for k in d) else ""
            raise ValueError(f"unknown training option(s) {unknown}{hint}; known: {sorted(known)}")
        return cls(**d)


def finite_above_zero(value: Any) -> bool:
    """A real number above 0 and finite (an integer of 400 digits is no float: not finite)."""
    try:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    except OverflowError:
        return False


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    from ..utils.yamlfile import parse_yaml, read_config_text

    data = parse_yaml(read_config_text(path), path) or {}  # a key given twice: an error
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return data
