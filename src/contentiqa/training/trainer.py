"""The training loop: early stopping on validation SROCC, a checkpoint every epoch, exact resume.

Output folder layout::

    out_dir/last.pt        trainer state (model, optimizer, scheduler, epoch, history), every epoch
    out_dir/best.pt        model checkpoint (contentiqa format) of the best validation epoch
    out_dir/metrics.jsonl  one line per epoch: losses, validation metrics, learning rate, time
    out_dir/config.json    model + training configuration

A validation epoch whose predictions are all equal (a collapsed model: correlations are
undefined) does not stop training: it records ``val_plcc``/``val_srocc``/``val_krocc`` as NaN
(RMSE kept) and ``val_collapsed = 1``, and ranks below every real score for early stopping and
``best.pt`` (:func:`monitor_improved`).

``resume=True`` continues from ``last.pt``: data order, crops and dropout are drawn from
``(seed, epoch)``, so the resumed run reproduces the uninterrupted one. Temporaries that a
process killed mid-save left beside these files are removed when ``fit`` starts.

An epoch whose training loss (or the weights it leaves) is NaN or infinite raises
:class:`TrainingDiverged` before anything of it is saved: the files above stay the last good
epoch's.

Multi-process (``torchrun``; see :mod:`contentiqa.training.distributed`): when a process group of
N > 1 processes is initialised, the trainer wraps the model and the loss in
DistributedDataParallel (so DDP sees the forward that makes the loss, cached or not, and
averages the gradients of the loss's own parameters too). Each rank trains on every N-th batch
of the common epoch batch list (:class:`~contentiqa.training.data.DistributedShapeGroupedBatchSampler`;
``batch_size`` is per rank); logged losses are summed over ranks. Validation runs on every
rank, each predicting every N-th validation row; the predictions are gathered on all ranks
(:class:`~contentiqa.metrics.accumulators.RowPredictions`, torch.distributed all_gather) and rank
0's metrics are broadcast, so every rank makes the same early-stopping decision.
Rank 0 alone writes checkpoints, logs and ``config.json``; the others wait at a barrier at the
end of every epoch. Frozen-stage encodings are computed by rank 0 first (into ``cache_dir``)
and read by the others. A model with trainable parameters that get no gradient needs
``extra: {ddp_find_unused_parameters: true}`` (none of the registered models has any).
"""
from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Collection, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader

from ..data.categories import IQA_CR_CATEGORIES, normalize_category
from ..data.imageio import ImageLoadError
from ..data.table import MOSScale, photo_ids
from ..models.base import IQAModel
from ..models.registry import save_checkpoint
from ..utils.devices import resolve_device
from ..utils.io import atomic_torch_save, atomic_write_text, exclusive_lock, file_sha256, remove_stale_temporaries
from . import distributed as dist_utils
from .config import RUNTIME_SETTINGS, SEED_LIMIT, TrainConfig
from .data import CachedFeatures, DistributedShapeGroupedBatchSampler, ShapeGroupedBatchSampler, TrainImages
from .evaluate import COUNTS, category_indices, metrics_from_predictions
from .damage import GROUP_SIZE, DamageSet, source_rows
from .losses import MultiTaskLoss, anchor_loss, ordered_fidelity_loss


FINISH_SETTINGS = ("calibrate", "calibrate_on", "interpolate", "interpolate_no_worse")
"""What is done with the chosen epoch after the epochs (:meth:`Trainer.finish`): nothing an
epoch learns depends on it, so a run whose calibration was refused can be finished without it."""

WITHOUT_THE_MIX = "resume without the mix (interpolate: null)"
"""What a run whose ``init_from`` file was replaced can do besides putting it back, when the
stages it cached are that file's as before (else the resume says to start afresh)."""

RESUME_MAY_CHANGE = ("epochs", "patience", *FINISH_SETTINGS, *RUNTIME_SETTINGS)
"""Training options a resumed run may take anew: how long it goes on, what is done with its
chosen epoch, and where it runs. Any other change (seed, learning rate, crop, losses, cached
stages) would make the rest of the run another recipe's, with the record claiming it for all of
it: refused."""

OWN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "config.json", "tested.pt", "recipe.json")
"""The files of a run's output folder written atomically by the trainer (``tested.pt``: by the
experiment runner and ``contentiqa train`` after it); a process killed while writing one
leaves its temporary behind, which the next :meth:`Trainer.fit` on the folder removes."""

EARLIER_RESULTS = ("best.pt", "tested.pt", "test_metrics.json", "run.json", "metrics.jsonl")
"""What a finished run leaves in its folder besides its state (``test_metrics.json``, ``run.json``:
written by ``contentiqa train``): a fresh start there removes them, so that no file in the folder
describes another run's model."""

FINISHED_RESULTS = ("tested.pt", "test_metrics.json", "run.json")
"""What a finished run's end wrote (the model it tested, its figures): removed when the run is
given more epochs, as they would then describe a model best.pt no longer holds."""


LOWER_BETTER = ("rmse",)
"""Validation metrics where less is better: the monitor ranks epochs by their negative."""
MIN_VAL_PER_SET = 3
"""Photos (rated differently) a training set needs in the validation part to count in its mean."""


class ResumeMismatch(ValueError):
    """``last.pt`` was trained with other settings than the run asked to continue it."""


RUN_LOCK = ".train.lock"
"""The lock file :meth:`Trainer.fit` holds in the output folder (one training per folder)."""


class TrainingDiverged(RuntimeError):
    """An epoch's training loss (or the weights it left) is NaN or infinite: every later epoch
    would be too, so training stops. ``epoch`` is the diverged one (counting from 1); the
    checkpoints on disk are still the last good epoch's."""

    def __init__(self, message: str, epoch: int):
        super().__init__(message)
        self.epoch = epoch


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _collate(batch):
    xs, ts, cs = zip(*batch)
    if isinstance(xs[0], dict):
        x = {k: torch.stack([d[k] for d in xs]) for k in xs[0]}
    else:
        x = torch.stack(xs)
    return x, torch.stack(ts), torch.stack(cs)


def _to(x, device):
    return {k: v.to(device) for k, v in x.items()} if isinstance(x, dict) else x.to(device)


def architecture(cfg: dict) -> dict:
    """What of a model config fixes the network, as JSON gives it back (tuples are lists): the
    scale, calibration and frozen stages are training's to set, and the files weights started
    from (``*_checkpoint``) where they were read, not the architecture's (the same file at
    another path, a moved project, is the same model; frozen weights are compared themselves)."""
    return json.loads(json.dumps({k: v for k, v in cfg.items()
                                  if k not in ("scale", "calibration", "frozen_stages") and not k.endswith("_checkpoint")}))


def check_settings(cfg: TrainConfig, model: str, predicts_score: bool, has_val: bool,
                   val_sets: Collection[str] | None, predicts_category: bool = False,
                   train_sets: Collection[str] | None = None) -> torch.device:
    """The device to train on, or the ValueError of a setting this model and these parts cannot
    train with, from what is known before any photo is read: the Trainer's first checks, and
    what `contentiqa experiment` checks of every row before the first trains (a row failing at
    its turn came after hours of the rows before it). ``val_sets``/``train_sets``: the datasets
    of a validation/training part of several (None: one dataset); ``predicts_category``: the
    model has a content head."""
    device = resolve_device(cfg.device)  # an unknown or absent device
    metric = None if cfg.monitor is None else cfg.monitor.rsplit("/", 1)[-1]
    of_categories = metric in ("accuracy", "acceptable")
    if (of_categories and not predicts_category) or (metric is not None and not of_categories and not predicts_score):
        # found at the end of the first epoch, before its last.pt: the epoch lost
        raise ValueError(f"monitor {cfg.monitor!r}: {model} gives no {'category' if of_categories else 'score'} "
                         "to measure it on")
    if cfg.dataset_ratio:  # found after every photo was encoded
        if train_sets is None:
            raise ValueError("dataset_ratio draws from several training sets: this run has one")
        if set(cfg.dataset_ratio) - set(train_sets):
            raise ValueError(f"dataset_ratio names {sorted(set(cfg.dataset_ratio) - set(train_sets))}: the training "
                             f"sets are {sorted(train_sets)}")
    terms = [cfg.score_weight if predicts_score else 0, cfg.category_weight if predicts_category else 0,
             cfg.rank_weight, cfg.damage_weight, cfg.anchor_weight]
    if not any(terms):  # every step's loss 0: weight decay alone, and a "best epoch" all the same
        raise ValueError("every loss term of this model is weighted 0 (score_weight, category_weight, rank_weight, "
                         "damage_weight, anchor_weight): nothing would train")
    if cfg.cache_runtime == "onnx" and cfg.cache_stages and device.type != "cpu":
        # its encoder runs ONNX Runtime on the CPU beside the model: on an accelerator it would
        # compare and feed tensors of two devices; PyTorch encodes there at least as fast
        raise ValueError(f"cache_runtime 'onnx' encodes on the CPU: train on {device} with cache_runtime 'torch'")
    if cfg.monitor is not None and not has_val:
        raise ValueError(f"monitor {cfg.monitor!r} needs a validation part: there is none")
    if cfg.monitor is not None and "/" in cfg.monitor:
        name = cfg.monitor.split("/", 1)[0]
        if val_sets is None or name not in val_sets:
            raise ValueError(f"monitor {cfg.monitor!r}: {name!r} is not a set of the validation part")
    if (cfg.calibrate or cfg.interpolate) and not has_val:
        name = "calibrate" if cfg.calibrate else "interpolate"
        raise ValueError(f"{name} fits on the validation part, and there is none: use a split with one, "
                         f"or turn {name} off")
    scored = [name for name in ("rank_weight", "damage_weight", "anchor_weight") if getattr(cfg, name)]
    if scored and not predicts_score:  # each ranks scores: a content-only model has none
        raise ValueError(f"{model} predicts no score: {', '.join(scored)} rank(s) scores; set "
                         f"{' and '.join(scored)} to 0")
    return device


def monitor_improved(score: float, best: float) -> bool:
    """Whether a validation ``score`` beats ``best``; NaN (a collapsed epoch) ranks below every
    number, so a later real score replaces it and it never replaces one."""
    if math.isnan(score):
        return False
    return math.isnan(best) or score > best


class _TrainStep(nn.Module):
    """Model + loss as one module whose forward returns the loss: what DistributedDataParallel
    wraps, so it sees the forward that produces the loss (``forward_cached`` for cached inputs)
    and synchronises the loss's learned weights (uncertainty weighting) too."""

    def __init__(self, model: IQAModel, loss_fn: nn.Module, start_stage: int, cfg: TrainConfig):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.start_stage = start_stage
        self.cfg = cfg

    def forward(self, x, t, c, extra: dict[str, dict[str, torch.Tensor]] | None = None):
        out = self.model.forward_cached(x, self.start_stage) if isinstance(x, dict) else self.model(x)
        loss, parts = self.loss_fn(out, t, c)
        if extra:
            cfg = self.cfg
            if "groups" in extra:
                s = self.model.forward_cached(extra["groups"], self.start_stage)["score"].float()
                term = ordered_fidelity_loss(s.view(-1, GROUP_SIZE), cfg.rank_sigma)
                loss = loss + cfg.damage_weight * term
                parts["damage"] = float(term.detach())
            if "anchors" in extra:
                a = self.model.forward_cached(extra["anchors"], self.start_stage)["score"].float()
                term = anchor_loss(a, out["score"].float(), cfg.rank_sigma)
                loss = loss + cfg.anchor_weight * term
                parts["anchor"] = float(term.detach())
        return loss, parts


class Trainer:
    """Train ``model`` on ``train_table`` (validating on ``val_table`` if given)."""

    without_the_mix: str = WITHOUT_THE_MIX
    """What a refusal over a replaced ``init_from`` offers besides putting the file back, where
    the cached stages allow going on: a caller whose resume cannot drop the mix (an experiment's
    row holds it) sets its own words."""

    def __init__(
        self,
        model: IQAModel,
        train_table: pd.DataFrame,
        val_table: pd.DataFrame | None,
        scale: MOSScale | Mapping[str, MOSScale],
        cfg: TrainConfig,
        out_dir: str | Path,
        progress: bool = True,
        cache_dir: str | Path | None = None,
        log=print,
        recipe: Mapping[str, Any] | None = None,
        test_table: pd.DataFrame | None = None,
    ):
        """``recipe``: where ``cfg`` came from (the model's registered recipe and the overrides
        applied to it), written into ``config.json`` and every checkpoint's extra. ``test_table``:
        the photos the run will be tested on, never trained here: a resumed run refuses a test
        part holding photos it trained or validated on."""
        if not model.trainable:
            raise ValueError(f"{model.model_name} is made from trained models and is not trained itself: "
                             "train its members, then combine them (contentiqa.models.ensemble.build_ensemble)")
        self.model = model
        self.cfg = cfg
        self.recipe = dict(recipe) if recipe is not None else None
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.progress = progress
        self.log = log
        self.cache_dir = cache_dir
        self.train_table = train_table.reset_index(drop=True)
        self.test_ids = set() if test_table is None else set(photo_ids(test_table))
        self.val_table = val_table.reset_index(drop=True) if val_table is not None and len(val_table) else None
        # Several datasets (tables with a 'dataset' column, ``scale`` a mapping dataset -> scale):
        # each row's MOS is normalised by its own dataset's scale, batches are drawn within one
        # dataset, and validation averages the per-dataset correlations. The model's outputs
        # are on the first dataset's scale.
        self.scales: dict[str, MOSScale] | None = None
        if isinstance(scale, Mapping):
            self.scales = dict(scale)
            if not self.scales:
                raise ValueError("no dataset scales given")
            for name, t in (("training", self.train_table), ("validation", self.val_table)):
                if t is not None and ("dataset" not in t or not set(t["dataset"]) <= set(self.scales)):
                    raise ValueError(f"{name} table needs a 'dataset' column naming one of {sorted(self.scales)}")
            scale = next(iter(self.scales.values()))
        self.scale = scale
        # The model learns this dataset's scale: predictions map back to its MOS units.
        model.set_scale(scale)
        self.device = check_settings(
            cfg, model.model_name, model.predicts_score, self.val_table is not None,
            None if self.scales is None or self.val_table is None else set(self.val_table["dataset"]),
            model.has_content_head, None if self.scales is None else list(self.scales))
        if cfg.calibrate:
            from .calibration import MIN_PAIRS

            n = len(self._calibration_rows())
            if n < MIN_PAIRS:
                raise ValueError(f"calibrate fits on the validation photos of the "
                                 f"{'training sets' if cfg.calibrate_on == 'each' else 'first training set'}, which have "
                                 f"{n} (at least {MIN_PAIRS} needed): use a larger validation part, or turn calibrate off")
        self.init_sha256: str | None = None
        """The SHA-256 of the ``init_from`` file the run started from: the end's weight mix must
        read that file, not one written over it since."""
        if cfg.init_from:
            self._start_from(cfg.init_from)
        self.distributed = dist_utils.is_distributed()
        self.rank, self.world_size = dist_utils.rank(), dist_utils.world_size()
        if self.rank != 0:  # rank 0 speaks for the run
            self.log = lambda *a, **k: None
            self.progress = False
        model.to(self.device)
        self.has_score = model.predicts_score
        # The score term is the config's choice; "model" (recipes of models that define their
        # own loss, e.g. IE-IQA) is the model's IQAModel.loss.
        self.loss_fn = MultiTaskLoss(cfg.score_loss, cfg.smooth_l1_beta, cfg.focal_gamma, cfg.loss_weighting, cfg.category_weight,
                                     rank_weight=cfg.rank_weight, rank_sigma=cfg.rank_sigma,
                                     model_loss=model.loss, score_weight=cfg.score_weight).to(self.device)
        self._check_labels()
        for name, t in (("training", self.train_table), ("validation", self.val_table)):
            if t is not None:
                try:
                    self._targets(t)  # every MOS a number: before a pass over the photos, not after an epoch
                except ValueError as exc:
                    raise ValueError(f"{name} table: {exc}") from None
        if cfg.damage_weight or cfg.anchor_weight:
            source_rows(self.train_table, cfg)  # before the training photos are encoded (a full pass), not after
        self.val_sets = self._check_validation()
        self.val_rows = self._val_share()
        """The validation rows this process predicts while training (all of them in one process)."""
        self.start_stage = 0
        self.encoded_with: str | None = None  # the frozen weights the cache was encoded with
        self._build_data()
        # what trains, also the stages a loaded checkpoint keeps frozen beyond cache_stages
        self.log(f"training {self._trained(cfg.epochs)}")
        self.optimizer = self._build_optimizer()
        self.epoch_starts = self._epoch_starts()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_lambdas(self.epoch_starts))
        self.train_step: nn.Module = _TrainStep(model, self.loss_fn, self.start_stage, cfg)
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.train_step = DistributedDataParallel(
                self.train_step, device_ids=[self.device.index if self.device.index is not None else torch.cuda.current_device()]
                if self.device.type == "cuda" else None,
                find_unused_parameters=bool(cfg.extra.get("ddp_find_unused_parameters", False)))
        self.ema: AveragedModel | None = None
        if cfg.ema_decay is not None:
            # Parameters only: validation swaps the averaged parameters into the model itself
            # (_averaged_weights), so it runs with the model's own, current buffers.
            self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=False)
        self.epoch = 0
        self.saved_epoch = 0
        """The epoch ``last.pt`` holds (what a stop now would resume after)."""
        self.best: dict[str, Any] | None = None
        self.bad_epochs = 0
        self.history: list[dict[str, Any]] = []
        self.epoch_lr = 0.0  # the last epoch's mean learning rate (its log line's)
        self.resumed_after = 0
        """Epochs the run held when this process resumed it (:meth:`fit`)."""

    # -- setup ---------------------------------------------------------------------------------
    def _start_from(self, path: str) -> None:
        """Load the weights of ``path`` (same model and architecture; scale and calibration
        aside) into the model before anything is frozen or cached."""
        from ..models.registry import load_checkpoint

        try:
            src = load_checkpoint(path)
        except FileNotFoundError as exc:  # (a resumed run too: its end may mix these weights in)
            raise FileNotFoundError(f"init_from {path}: {exc}") from None
        if src.model_name != self.model.model_name or \
                architecture(src.cfg.to_dict()) != architecture(self.model.cfg.to_dict()):
            raise ValueError(f"init_from {path}: a {src.model_name} of another architecture than the {self.model.model_name} "
                             "being trained")
        self.model.load_state_dict(src.state_dict())
        self.init_sha256 = file_sha256(path)
        self.log(f"weights from {path}")

    def _check_validation(self) -> list[str]:
        """Before any work: a validation part whose correlations are undefined (one photo, or
        all rated alike) failed only after the first epoch, with a traceback. With several
        sets, those too small to tell epochs apart are left out of the mean, and said so;
        returns the sets whose validation counts."""
        table = self.val_table
        if table is None:
            return []
        if self.scales is None or "dataset" not in table:
            if self.has_score and (len(table) < 2 or table["mos"].nunique() < 2):
                held = f"{len(table)} photo(s)" + (f", all rated {table['mos'].iloc[0]:g}" if len(table) > 1 else "")
                raise ValueError(f"the validation part has {held}: its correlations need at least 2 photos rated "
                                 "differently; use a larger validation part")
            return []
        kept, left = [], []
        for name in self.scales:
            mos = table.loc[table["dataset"] == name, "mos"]
            (kept if len(mos) >= MIN_VAL_PER_SET and (mos.nunique() > 1 or not self.has_score) else left).append(name)
        if not kept:
            raise ValueError(f"no training set has {MIN_VAL_PER_SET} validation photos rated differently "
                             f"({', '.join(left)}): use larger validation parts")
        if self.cfg.monitor is not None and self.cfg.monitor.split("/", 1)[0] in left:
            raise ValueError(f"monitor {self.cfg.monitor!r}: that set has fewer than {MIN_VAL_PER_SET} validation photos "
                             "rated differently")
        present = set(table["dataset"].astype(str))
        few = [name for name in left if name in present]
        if few:
            self.log(f"note: validation metrics leave out {', '.join(few)}: fewer than {MIN_VAL_PER_SET} validation "
                     "photos rated differently (still used where the recipe fits on them, e.g. calibrate)")
        return kept

    @property
    def monitored(self) -> str | None:
        """The validation metric that chooses best.pt and stops early (a key of
        :meth:`validate`'s metrics), or None: the lowest training loss, with no validation part."""
        if self.val_table is None:
            return None
        if self.cfg.monitor is not None:
            return self.cfg.monitor
        return "srocc" if self.has_score else "accuracy"

    def _check_labels(self) -> None:
        """A content head learns from the ``category`` column: a name that is no category at all
        (a typo, another vocabulary) is refused, not trained as an unlabelled photo without a word;
        a known category this head lacks (``vehicle`` for a nine-category head) is said."""
        cats = self.model.categories
        if not cats:
            return
        known = {normalize_category(c) for c in (*cats, *IQA_CR_CATEGORIES)}
        for part, table in (("training", self.train_table), ("validation", self.val_table)):
            if table is None or "category" not in table:
                continue
            given = table["category"].dropna().astype(str)
            given = given[[normalize_category(g) is not None for g in given]]  # "" / "NA": no label
            unknown = sorted({g for g in given if normalize_category(g) not in known})
            if unknown:
                raise ValueError(f"the {part} data's 'category' column has {len(unknown)} name(s) that are no category: "
                                 f"{unknown[:8]}; model '{self.model.model_name}' has {list(cats)}. Correct them, or "
                                 "empty those cells for photos without a label")
            lacking = given[category_indices(given, cats) < 0]
            if len(lacking):
                self.log(f"note: {len(lacking)} {part} photo(s) are labelled {sorted(set(lacking))}, which the content "
                         "head has no category for: no content target for them")
        if "category" not in self.train_table or category_indices(self.train_table["category"], cats).max() < 0:
            raise ValueError(
                f"model '{self.model.model_name}' has a content head but the training data has no "
                f"'category' column with any of {list(cats)}. Label it first: "
                "`contentiqa label-content DATA.csv --out LABELED.csv`"
            )
        val = self.val_table
        if self.monitored == "accuracy" and val is not None and \
                ("category" not in val or not (category_indices(val["category"], cats) >= 0).any()):
            # every epoch's accuracy would be NaN, never better than the first: best.pt the first epoch
            raise ValueError(f"model '{self.model.model_name}' predicts no score, so its best epoch is chosen by the "
                             f"validation part's accuracy, and none of its {len(val)} photos is labelled with one of "
                             f"{list(cats)}: label them (`contentiqa label-content`), or give no validation part")

    def _targets(self, table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        mos = pd.to_numeric(table["mos"], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(mos))
        if len(bad):  # a NaN target read as a diverged loss (advice: lower the learning rate), an epoch in
            raise ValueError(f"{len(bad)} row(s) have no finite MOS, e.g. {[str(table['image'].iloc[i]) for i in bad[:3]]}")
        if self.scales is not None:
            t = np.empty(len(table))
            for name, sc in self.scales.items():
                rows = (table["dataset"] == name).to_numpy()
                t[rows] = sc.normalize(mos[rows])
        else:
            t = self.scale.normalize(mos)
        c = category_indices(table["category"], self.model.categories) if "category" in table and self.model.categories else np.full(len(table), -1)
        return t, c

    def _build_data(self) -> None:
        cfg, model = self.cfg, self.model
        t_tr, c_tr = self._targets(self.train_table)
        self.damage: DamageSet | None = None
        if (cfg.damage_weight or cfg.anchor_weight) and not cfg.cache_stages:
            raise ValueError("damage_weight / anchor_weight train on cached encodings: set cache_stages")
        if cfg.cache_stages:
            self._setup_cache(t_tr, c_tr)
        else:
            transform = model.train_transform if not model.native_resolution else None
            self.train_ds = TrainImages(self.train_table["image"], t_tr, c_tr, model.preprocess, cfg.crop, cfg.hflip,
                                        seed=cfg.seed, train=True, transform=transform,
                                        max_side=model.max_side if model.native_resolution else None)
            self.val_feats = None
        shapes = self.train_ds.shapes()
        groups, draws = None, None
        if self.scales is not None:  # batches within one dataset (ranking pairs, batch statistics)
            shapes = [(d, *sh) for d, sh in zip(self.train_table["dataset"], shapes)]
            groups = list(self.train_table["dataset"])
            draws = self._draws(groups)
        elif cfg.dataset_ratio is not None:
            raise ValueError("dataset_ratio needs several training sets")
        if self.distributed:
            self.sampler = DistributedShapeGroupedBatchSampler(shapes, cfg.batch_size, self.world_size, self.rank,
                                                               shuffle=True, seed=cfg.seed, groups=groups, draws=draws)
        else:
            self.sampler = ShapeGroupedBatchSampler(shapes, cfg.batch_size, shuffle=True, seed=cfg.seed,
                                                    groups=groups, draws=draws)
        # Workers start anew at each epoch's iter() and copy the dataset with that epoch's
        # augmentation seed (persistent ones keep the first epoch's crops and flips for good).
        # The loader's own generator keeps its seed draw off the global RNG: the dropout stream
        # is the same with or without workers, as a resume that changes num_workers needs.
        self.train_loader = DataLoader(self.train_ds, batch_sampler=self.sampler, collate_fn=_collate,
                                       num_workers=cfg.num_workers, generator=torch.Generator().manual_seed(cfg.seed))

    def _draws(self, groups: list[str]) -> dict[str, int] | None:
        """Photos per epoch of each training set under ``dataset_ratio`` (the first set whole)."""
        ratio = self.cfg.dataset_ratio
        if ratio is None:
            return None
        assert self.scales is not None
        names = list(self.scales)
        unknown = sorted(set(ratio) - set(names))
        if unknown or not all(float(v) > 0 for v in ratio.values()):
            raise ValueError(f"dataset_ratio must give positive draws for training sets among {names}, got {ratio}")
        n_first = groups.count(names[0])
        r_first = float(ratio.get(names[0], 1.0))
        return {n: max(1, round(n_first * float(ratio.get(n, 1.0)) / r_first)) for n in names if n in set(groups)}

    def _setup_cache(self, t_tr, c_tr) -> None:
        from .cache import cached_encodings, frozen_fingerprint

        cfg, model = self.cfg, self.model
        if not model.supports_stage_cache:
            raise ValueError(f"cache_stages needs a model with staged, cacheable inputs; {model.model_name} has none")
        k = cfg.cache_stages
        limit = model.feature_end
        if k > limit:
            raise ValueError(f"cache_stages={k} exceeds the model's {limit} backbone stages")
        # k == limit freezes every stage the model uses: the cache then holds the pooled
        # features themselves and only the head trains (the image as scored: a frozen network's
        # pooled features of a mirror add little). Levels computed inside the frozen stages are
        # cached as the pooled features the head reads of them.
        pooled = k == limit
        if pooled and cfg.hflip:  # said, not only recorded as hflip: true
            self.log(f"note: cache_stages={k} caches every stage the model uses: the head trains on each photo as "
                     "scored, not its mirror (hflip applies to the anchors and damage groups only)")
        frozen_pooled = k - 1 > min(model.levels) and not pooled
        if frozen_pooled and model.native_resolution and cfg.crop is not None:
            raise ValueError(f"cache_stages={k} caches levels below stage {k - 1} as pooled features of the whole "
                             "photo, which a crop of the cached map cannot follow: set crop: null")
        if not model.backbone_bn_frozen:
            raise ValueError("cache_stages requires bn_eval=True (frozen BatchNorm statistics)")
        model.freeze_stages(k)
        # With a cache folder, rank 0 computes and stores the encodings, the other ranks read them.
        with dist_utils.main_first() if self.cache_dir is not None else contextlib.nullcontext():
            enc = cached_encodings(model, list(self.train_table["image"]), k, train=not pooled, cache_dir=self.cache_dir,
                                   progress=self.progress, runtime=cfg.cache_runtime)
        cells = None
        if model.native_resolution and cfg.crop is not None and "x" in enc[0]:
            # Stride of the cached map, to express the pixel crop in feature cells.
            from ..data.imageio import header_size
            from ..models.scoring import limited_size

            # the photo as it was cached: bounded by max_side (a large first photo's own height
            # made every crop a fraction of the size asked for)
            w0, h0 = limited_size(*header_size(self.train_table["image"].iloc[0]), model.max_side)
            stride = h0 / enc[0]["x"].shape[-2]
            cells = max(1, int(round(cfg.crop / stride)))
        self.train_ds = CachedFeatures(enc, t_tr, c_tr, cells, seed=cfg.seed, train=True, hflip=cfg.hflip)
        self.start_stage = k
        self.encoded_with = frozen_fingerprint(model, k)
        if cfg.damage_weight or cfg.anchor_weight:
            with dist_utils.main_first() if self.cache_dir is not None else contextlib.nullcontext():
                self.damage = DamageSet(model, self.train_table, cfg, k, lambda paths, specs: cached_encodings(
                    model, paths, k, train=True, cache_dir=self.cache_dir, progress=self.progress,
                    runtime=cfg.cache_runtime, damage=specs))
        self.val_feats = None
        if self.val_table is not None:  # each rank encodes the validation rows it validates
            images = list(self.val_table["image"])
            self.val_feats = cached_encodings(model, [images[i] for i in self.val_rows], k, train=False,
                                              cache_dir=self.cache_dir, progress=self.progress, runtime=cfg.cache_runtime)

    def _param_groups(self) -> list[dict]:
        groups_of_model = self.model.parameter_groups()
        backbone = [p for p in groups_of_model.get("backbone", []) if p.requires_grad]
        head = [p for p in groups_of_model.get("head", []) if p.requires_grad]
        head += [p for p in self.loss_fn.parameters()]
        groups = [{"params": head, "lr": self.cfg.lr, "name": "head"}]
        if backbone:
            groups.append({"params": backbone, "lr": self.cfg.lr * self.cfg.backbone_lr_scale, "name": "backbone"})
        return groups

    def _build_optimizer(self) -> torch.optim.Optimizer:
        groups = self._param_groups()
        if self.cfg.optimizer == "adamw":
            return torch.optim.AdamW(groups, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        if self.cfg.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=self.cfg.lr, momentum=self.cfg.momentum, weight_decay=self.cfg.weight_decay)
        raise ValueError(f"optimizer must be adamw or sgd, not {self.cfg.optimizer!r}")

    def _epoch_starts(self) -> list[int]:
        """The step each epoch starts at, and the run's last (``epochs + 1`` numbers). Epochs can
        differ in batches (``dataset_ratio`` draws each set's share anew and batches group by
        shape): counted as epoch 0's, the schedule reached 0 before the end (or never) and a
        resumed run took another path than the run left alone."""
        counts = []
        for epoch in range(self.cfg.epochs):  # each epoch's batches are fixed by (seed, epoch)
            self.sampler.set_epoch(epoch)
            counts.append(len(self.sampler))
        self.sampler.set_epoch(0)
        return [0, *itertools.accumulate(counts)]

    def _lr_lambdas(self, epoch_starts: list[int]):
        cfg = self.cfg
        total = max(1, epoch_starts[-1])
        first = max(1, epoch_starts[1] - epoch_starts[0]) if len(epoch_starts) > 1 else 1

        def make(start_epoch: int):
            start = epoch_starts[min(start_epoch, len(epoch_starts) - 1)]
            warm = max(1, int(cfg.warmup_epochs * first))

            def f(step: int) -> float:
                if step < start:
                    return 0.0
                s = step - start
                if s < warm:
                    return (s + 1) / warm
                if cfg.scheduler == "none":
                    return 1.0
                span = max(1, total - start - warm)
                return 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warm) / span)))

            return f

        # The backbone group waits for the head-only phase (IE-IQA: FC layers first, then the
        # distortion backbone with warm-up).
        return [make(0 if g.get("name") == "head" else cfg.head_only_epochs) for g in self.optimizer.param_groups]

    # -- loop ----------------------------------------------------------------------------------
    def _forward(self, x) -> dict[str, torch.Tensor]:
        if isinstance(x, dict):
            return self.model.forward_cached(x, self.start_stage)
        return self.model(x)

    def _val_share(self) -> np.ndarray:
        """Every ``world_size``-th validation row from this rank's index: the ranks' shares are
        disjoint and cover the table."""
        n = len(self.val_table) if self.val_table is not None else 0
        return np.arange(self.rank, n, self.world_size)

    @torch.inference_mode()
    def predict_val(self, shared: bool = False) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Normalised score predictions (and category indices) on the validation table, in its
        row order. ``shared`` (every process must call it then): each process predicts its
        share (:attr:`val_rows`) and the shares are gathered on every process
        (:class:`~contentiqa.metrics.accumulators.RowPredictions`)."""
        if not shared and self.distributed and self.start_stage and len(self.val_feats or ()) != len(self.val_table):
            with self._judging(self.model):  # this process encoded only its share of the part
                return self._predict_rows(np.arange(len(self.val_table)))
        rows = self.val_rows if shared else np.arange(len(self.val_table))
        s, c = self._predict_rows(rows)
        if not (shared and self.distributed):
            return s, c
        from ..metrics.accumulators import RowPredictions

        acc = RowPredictions().to(self.device)
        acc.update(rows, s, c)
        g = acc.compute()
        if len(g["index"]) != len(self.val_table):
            raise RuntimeError(f"gathered {len(g['index'])} validation predictions for {len(self.val_table)} rows")
        return (g["score"] if self.has_score else None), (g["category"] if self.model.categories else None)

    def _predict_rows(self, rows: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        from ..inference.torch_runtime import TorchScorer

        self.model.eval()
        if self.start_stage:
            if self.val_feats is None or len(self.val_feats) != len(rows):
                raise RuntimeError("the cached validation encodings do not match the rows to predict")
            # Batches of equal shapes (a photo's first view: the image as scored): one view at a
            # time costs several times more per photo on a CPU.
            n = len(self.val_feats)
            s_all, c_all = np.zeros(n), np.zeros(n, dtype=np.int64)
            by_shape: dict[tuple, list[int]] = {}
            for i, enc in enumerate(self.val_feats):
                by_shape.setdefault(tuple((k, tuple(v.shape[1:])) for k, v in sorted(enc.items())), []).append(i)
            for idx in by_shape.values():
                for start in range(0, len(idx), self.cfg.batch_size):
                    chunk = idx[start:start + self.cfg.batch_size]
                    x = {k: torch.stack([self.val_feats[i][k][0] for i in chunk]).float().to(self.device)
                         for k in self.val_feats[chunk[0]]}
                    out = self._forward(x)
                    if "score" in out:
                        s_all[chunk] = out["score"].float().cpu().numpy()
                    if "logits" in out:
                        c_all[chunk] = out["logits"].argmax(-1).cpu().numpy()
            s = s_all if self.has_score else None
            c = c_all if self.model.categories else None
        else:
            images = list(self.val_table["image"])
            preds = TorchScorer(self.model, precision="fp32").run([images[i] for i in rows], batch_size=self.cfg.batch_size,
                                                                  workers=0)
            bad = [p for p in preds if p.error]
            if bad:  # as a training photo's: the command names the file and what to do
                raise ImageLoadError(bad[0].path, bad[0].error)
            s = self.model.scale.normalize([p.score for p in preds]) if self.has_score else None
            c = category_indices([p.category for p in preds], self.model.categories) if self.model.categories else None
        return s, c

    def validate(self, shared: bool = False) -> dict[str, float]:
        """Validation metrics (see :meth:`predict_val` for ``shared``)."""
        s, c = self.predict_val(shared)
        table = self.val_table
        if self.scales is None or "dataset" not in table:
            return metrics_from_predictions(s, table, self.scale, c, self.model.categories, undefined="nan")
        # Several datasets: metrics within each (correlations across rating scales mean
        # nothing), then their mean; the per-dataset values are kept as '<name>/<metric>'.
        per: dict[str, dict[str, float]] = {}
        for name in self.val_sets:
            rows = (table["dataset"] == name).to_numpy()
            per[name] = metrics_from_predictions(s[rows] if s is not None else None, table[rows], self.scales[name],
                                                 c[rows] if c is not None else None, self.model.categories,
                                                 undefined="nan")
        out: dict[str, float] = {}
        for k in sorted({k for m in per.values() for k in m}):
            vals = [m[k] for m in per.values() if k in m]
            out[k] = float(np.sum(vals)) if k in (*COUNTS, "collapsed") else float(np.mean(vals))
        for name, m in per.items():
            # every metric per set (a monitor may name any: SET/rmse, SET/krocc)
            out.update({f"{name}/{k}": v for k, v in m.items() if k not in (*COUNTS, "collapsed")})
        return out

    def evaluate_table(self, table: pd.DataFrame, model: IQAModel | None = None,
                       scale: MOSScale | None = None) -> dict[str, float]:
        """Metrics of ``model`` (default: the trained one) on another table (e.g. the test
        part), through the same cached frozen stages when training used them: whole images,
        one view, so the result equals scoring the image files. ``scale``: the table's MOS
        scale (RMSE in its units); by default the training set's, or, training on several, each
        row's set's by its ``dataset`` column (the sets the table has; metrics as validation's)."""
        from .cache import cached_encodings

        if scale is None and self.scales is not None:
            if "dataset" not in table:
                raise ValueError("this trainer trains on several datasets, each on its own MOS scale: give the "
                                 "table's scale, or a 'dataset' column naming each row's set")
            unknown = sorted(set(table["dataset"].astype(str)) - set(self.scales))
            if unknown:
                raise ValueError(f"the table's dataset(s) {unknown} are not this trainer's ({list(self.scales)})")
        elif "dataset" in table:  # one scale for every row: no per-set metrics
            table = table.drop(columns=["dataset"])
        saved = (self.model, self.val_table, self.val_feats, self.val_sets, self.scale)
        try:
            if model is not None:
                self.model = model.to(self.device)
            if scale is not None:
                self.scale = scale
            elif self.scales is not None:
                present = set(table["dataset"].astype(str))
                self.val_sets = [name for name in self.scales if name in present]
            self.val_table = table.reset_index(drop=True)
            self.val_feats = (cached_encodings(self.model, list(table["image"]), self.start_stage, train=False,
                                               cache_dir=self.cache_dir, progress=self.progress,
                                               runtime=self.cfg.cache_runtime)
                              if self.start_stage else None)
            return self.validate()
        finally:
            self.model, self.val_table, self.val_feats, self.val_sets, self.scale = saved

    def _monitor(self, metrics: dict[str, float]) -> float:
        """The epoch's rank by :attr:`monitored`: higher is better (an RMSE is negated)."""
        name = self.monitored
        if name not in metrics:
            if self.cfg.monitor is None:
                return float("nan")
            raise ValueError(f"monitor {self.cfg.monitor!r} is not a validation metric of this run; "
                             f"these are: {sorted(metrics)}")
        return -metrics[name] if name.rsplit("/", 1)[-1] in LOWER_BETTER else metrics[name]

    def train_epoch(self, epoch: int) -> dict[str, float]:
        from tqdm.auto import tqdm

        self.train_step.train()  # calls the model's own train() (frozen stages, BatchNorm in eval)
        # dropout stream, reproducible on resume (and different on each rank)
        # (within torch's 64 bits for any seed the config takes; the same as ever for small ones)
        torch.manual_seed((self.cfg.seed * 100003 + epoch + 1000003 * self.rank) % SEED_LIMIT)
        self.sampler.set_epoch(epoch)
        self.train_ds.set_epoch(epoch)
        totals: dict[str, float] = {"loss": 0.0}
        n = 0
        lr_sum, steps = 0.0, 0
        bar = tqdm(self.train_loader, desc=f"epoch {epoch + 1}/{self.cfg.epochs}", unit="batch", disable=not self.progress, leave=False)
        for step, (x, t, c) in enumerate(bar):
            x, t, c = _to(x, self.device), t.to(self.device), c.to(self.device)
            extra = None
            if self.damage is not None and self.damage.active:
                extra = {k: _to(v, self.device) for k, v in self.damage.sample(epoch, step, self.rank).items()}
            loss, parts = self.train_step(x, t, c, extra)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            lr_sum += self.optimizer.param_groups[0]["lr"]  # the rate this step trains with
            steps += 1
            self.optimizer.step()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            b = len(t)  # (len(x) of cached inputs would count dict keys)
            totals["loss"] += float(loss.detach()) * b
            for k, v in parts.items():
                totals[f"loss_{k}"] = totals.get(f"loss_{k}", 0.0) + v * b
            n += b
            bar.set_postfix(loss=f"{totals['loss'] / n:.4f}")
        if self.distributed:
            # Epoch losses over all ranks, and the DWA statistics too (same weights everywhere).
            keys = ("loss", "loss_score", "loss_category", "loss_rank", "loss_damage", "loss_anchor")
            red = dist_utils.all_reduce_sum([n] + [totals.get(k, 0.0) for k in keys] + [float(k in totals) for k in keys]
                                            + list(self.loss_fn._running))
            n = int(red[0])
            totals = {k: red[1 + i] for i, k in enumerate(keys) if red[1 + len(keys) + i] > 0}
            self.loss_fn._running = [red[-3], red[-2], int(red[-1])]
        self.loss_fn.end_epoch()
        # the epoch's mean learning rate (the head's): the rate after its last step, which the
        # log showed, is the next epoch's, 0 at the end of the schedule
        self.epoch_lr = lr_sum / max(steps, 1)
        return {k: v / max(n, 1) for k, v in totals.items()}

    def state(self) -> dict[str, Any]:
        return {
            "model_state": self.model.state_dict(),
            "model_name": self.model.model_name,
            "model_config": self.model.cfg.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "loss_state": {"state": self.loss_fn.state_dict(), "epoch_losses": self.loss_fn.epoch_losses},
            "epoch": self.epoch,
            "best": self.best,
            "ema_state": self.ema.state_dict() if self.ema is not None else None,
            "bad_epochs": self.bad_epochs,
            "history": self.history,
            "train_config": self.cfg.to_dict(),
            "parts": self._parts(),
            "sets": self._sets(),
            "init_from_sha256": self.init_sha256,
        }

    def _sets(self) -> list[list[Any]] | None:
        """The training sets in their order with their MOS scales (None: one set). The first
        names the scale the model scores on, the set ``calibrate_on: first`` fits on and the one
        ``dataset_ratio`` draws whole: a resumed run must list them as the run did."""
        if self.scales is None:
            return None
        return [[name, s.low, s.high, s.higher_is_better] for name, s in self.scales.items()]

    def _parts(self) -> dict[str, list[str]]:
        """Which photos train and validate (dataset-relative keys: a data folder moved keeps
        them), for a resumed run to check it is given no others."""
        return {name: [] if t is None else sorted(photo_ids(t))
                for name, t in (("train", self.train_table), ("val", self.val_table))}

    def _check_same_parts(self, path: Path, saved: Mapping[str, Any]) -> None:
        """ResumeMismatch when this run's training or validation part holds photos the run did
        not start with: resumed on another split (file, column, protocol or data), it would go on
        training on photos it is then tested on; so would a test part holding photos it trained or
        validated on. Fewer photos are fine (a damaged one's row removed, as the error for it
        advises)."""
        for name, now in self._parts().items():
            new = sorted(set(now) - set(saved.get(name) or ()))
            if new:
                raise ResumeMismatch(f"{path} was trained on other photos: {len(new)} of this run's {name} part were "
                                     f"not in it (e.g. {new[:3]}): another split, split file, split column or data. "
                                     "Resume with the run's own split, or start afresh")
        seen = sorted(self.test_ids & (set(saved.get("train") or ()) | set(saved.get("val") or ())))
        if seen:
            raise ResumeMismatch(f"{path} was trained or validated on {len(seen)} photo(s) of this run's test part "
                                 f"(e.g. {seen[:3]}): their figures would not be held out. Resume with the run's own "
                                 "split, or start afresh")

    def load_state(self, path: Path) -> None:
        """Continue from a ``last.pt``, read as data (a file whose pickle would run code is
        refused unexecuted); a damaged or foreign file raises ValueError naming it."""
        from ..utils.checkpoint_io import CheckpointReadError, load_torch_file

        st = load_torch_file(path, "trainer state")
        if not isinstance(st, dict) or not {"model_state", "optimizer", "scheduler", "epoch"} <= set(st):
            raise CheckpointReadError(f"{path} is not a contentiqa trainer state (last.pt)")
        if st.get("model_name") != self.model.model_name:
            raise ValueError(f"{path} is a {st.get('model_name')} run, not {self.model.model_name}")
        trained, now = architecture(st.get("model_config") or {}), architecture(self.model.cfg.to_dict())
        if "model_config" in st and trained != now:  # same shapes would go on as another model; other shapes were torch's traceback
            changed = [f"{k} {trained.get(k)!r} (now {now.get(k)!r})" for k in sorted(set(trained) | set(now))
                       if trained.get(k) != now.get(k)]
            raise ResumeMismatch(f"{path} was trained with model setting(s) {'; '.join(changed)}: resume with the "
                                 "model it trained, or start afresh")
        self._check_same_recipe(path, st.get("train_config") or {})
        if isinstance(st.get("parts"), Mapping):  # (a last.pt of older code did not say)
            self._check_same_parts(path, st["parts"])
        if "sets" in st and st["sets"] != self._sets():
            def said(sets: list | None) -> str:
                return ", ".join(f"{n} ({lo:g}-{hi:g})" for n, lo, hi, _ in sets) if sets else "one dataset"

            raise ResumeMismatch(f"{path} was trained on {said(st['sets'])}, in that order; this run gives "
                                 f"{said(self._sets())}: the first set names the scale it scores on (and what "
                                 "calibrate_on/dataset_ratio read). Give the datasets as the run did")
        was = (st.get("model_config") or {}).get("scale")
        if was is not None and MOSScale(**was) != self.scale:  # its epochs learned targets of that scale
            raise ResumeMismatch(f"{path} was trained on MOS scale {was['low']:g}-{was['high']:g}; this run's data are "
                                 f"on {self.scale.low:g}-{self.scale.high:g} (a CSV's range is guessed from its values "
                                 "unless its first line declares it: # mos_range: LO HI). Give the run's scale, or "
                                 "start afresh")
        self.model.load_state_dict(st["model_state"])
        if self.start_stage:
            from .cache import frozen_fingerprint

            if frozen_fingerprint(self.model, self.start_stage) != self.encoded_with:
                # the cache was encoded with the weights this run was given now (init_from, a
                # *_checkpoint) before last.pt put back the frozen stages it trained with
                raise ResumeMismatch(
                    f"{path} holds frozen stages other than the ones this run's cache was encoded with: the weights "
                    "it starts from (init_from, or a *_checkpoint model argument) were replaced since the run began. "
                    "Put them back, or start afresh")
        started = st.get("init_from_sha256")
        # (without a mix the end needs nothing more of that file: last.pt holds every weight, and
        # cached frozen stages were held to theirs just above)
        if self.cfg.interpolate and started is not None and self.init_sha256 is not None and started != self.init_sha256:
            raise ResumeMismatch(f"init_from {self.cfg.init_from} is not the file this run started from (sha256 "
                                 f"{started[:12]} then, {self.init_sha256[:12]} now): its end mixes in those weights. "
                                 f"Put that file back, or {self.without_the_mix}")
        self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        self.loss_fn.load_state_dict(st["loss_state"]["state"])
        self.loss_fn.epoch_losses = st["loss_state"]["epoch_losses"]
        self.epoch = self.saved_epoch = st["epoch"]
        self._rebase_schedule()
        self.best = st["best"]
        if self.best is not None:  # ranked as this code ranks (an RMSE negated), whatever code saved it
            seen = {k[4:]: v for k, v in self.best.items() if k.startswith("val_")}
            if self.monitored in seen:
                self.best["monitor"] = self._monitor(seen)
        if self.ema is not None:
            if st.get("ema_state") is None:
                raise ResumeMismatch(f"{path} was trained without ema_decay: resume it without, or start afresh")
            self.ema.load_state_dict(st["ema_state"])
        self.bad_epochs = st["bad_epochs"]
        self.history = st["history"]

    def _rebase_schedule(self) -> None:
        """The learning-rate schedule at the start of epoch ``self.epoch`` in this run's steps. A
        saved schedule counts the steps of the processes that saved it, and another number of
        processes takes another number per epoch (``batch_size`` is per process): counted on, the
        run from one process on two annealed to 0 halfway and trained on at lr 0."""
        done = self.epoch_starts[min(self.epoch, len(self.epoch_starts) - 1)]
        self.scheduler.last_epoch = done
        for group, base, f in zip(self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas):
            group["lr"] = base * f(done)
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def _check_same_recipe(self, path: Path, saved: dict[str, Any]) -> None:
        """ResumeMismatch unless this run's settings are those ``last.pt`` was trained with, but for
        :data:`RESUME_MAY_CHANGE` (checked before anything is loaded)."""
        now = self.cfg.to_dict()
        changed = sorted(k for k in saved.keys() & now.keys() if k not in RESUME_MAY_CHANGE and saved[k] != now[k])
        if changed:
            said = ", ".join(f"{k} {saved[k]!r} (now {now[k]!r})" for k in changed)
            raise ResumeMismatch(f"{path} was trained with {said}; only {', '.join(RESUME_MAY_CHANGE)} may change "
                                 "when a run continues")

    def _remove(self, names: Sequence[str], why: str) -> None:
        """Remove those of the output folder's files ``names`` that exist, saying ``why``."""
        for name in names:
            if (self.out / name).is_file():
                (self.out / name).unlink()
                self.log(f"removed {self.out / name}: {why}")

    def _write_logs(self) -> None:
        atomic_write_text(self.out / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in self.history))

    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train until ``epochs`` or early stopping; returns the best epoch's record. Rank 0 holds
        the output folder's lock meanwhile: a second process training into the same folder
        raises :class:`contentiqa.utils.io.Busy` before it reads or writes anything there."""
        if self.rank != 0:
            return self._fit(resume)
        with exclusive_lock(self.out / RUN_LOCK, f"another process is training in {self.out}"):
            return self._fit(resume)

    def _fit(self, resume: bool) -> dict[str, Any]:
        cfg = self.cfg
        last = self.out / "last.pt"
        if resume and last.is_file():
            self.load_state(last)
            if cfg.epochs < self.epoch:  # nothing to train, and config.json would claim the shorter run
                raise ResumeMismatch(f"{last} has trained {self.epoch} epochs already: epochs {cfg.epochs} is fewer "
                                     f"(give at least {self.epoch})")
            self.resumed_after = self.epoch
            self.log(f"resumed from {last} after epoch {self.epoch}")
        elif resume:
            self.log(f"note: --resume: no {last} yet, starting fresh")  # a mistyped --out: said under --quiet too
        main = self.rank == 0  # rank 0 writes; the others wait at the barrier ending each epoch
        if main:
            # A run killed mid-save left a temporary (a checkpoint's: as large as one) that no
            # later save replaces. Rank 0 is the folder's only writer and has not started.
            for name in OWN_FILES:
                remove_stale_temporaries(self.out / name)
            self._settle_best()
            if not self.epoch:  # a fresh start (nothing resumed): an earlier run's results are not this one's
                self._remove(EARLIER_RESULTS, "it was an earlier run's")
            atomic_write_text(self.out / "config.json", json.dumps(
                {"model": self.model.model_name, "model_config": self.model.cfg.to_dict(), "train_config": cfg.to_dict(),
                 **({"recipe": self.recipe} if self.recipe is not None else {})}, indent=1))
            if self.history:  # last.pt is written first: a run killed between the two lacks its last line
                self._write_logs()
        # stopped early: finished unless this run's patience (a larger one, or none) lets it go on
        finished = (self.best is not None and self.history and self.history[-1].get("stopped")
                    and bool(cfg.patience) and self.bad_epochs >= cfg.patience)
        if main and self.epoch and self.epoch < cfg.epochs and not finished:
            # A finished run given more epochs: its tested model and figures are about to be another's.
            self._remove(FINISHED_RESULTS, "the run goes on, so it is tested again at the end")
        while self.epoch < cfg.epochs and not finished:
            t0 = time.time()
            record: dict[str, Any] = {"epoch": self.epoch + 1, **self.train_epoch(self.epoch)}
            # Before validation and any save: last.pt and best.pt keep the last good epoch.
            self._check_diverged(record)
            record["lr"] = self.epoch_lr
            with self._averaged_weights():  # what is validated is what best.pt keeps
                improved = self._judge_epoch(record, t0)
            self.epoch += 1
            stop = cfg.patience and self.bad_epochs >= cfg.patience
            record["stopped"] = bool(stop)
            self.history.append(record)
            if main:
                atomic_torch_save(self.state(), last)
                self.saved_epoch = self.epoch
                if improved:  # after last.pt, whose state names it best: a stop between is settled on resume
                    os.replace(self._next_best(record["epoch"]), self.out / "best.pt")
                self._write_logs()
            dist_utils.barrier()
            shown = ("loss", "val_srocc", "val_plcc", "val_acc") + ((f"val_{cfg.monitor}",) if cfg.monitor else ())
            msg = " ".join(f"{k}={v:.4f}" for k, v in record.items() if isinstance(v, float) and k.startswith(shown))
            self.log(f"epoch {record['epoch']}: {msg} ({record['time_s']}s){' *' if improved else ''}")
            if stop:
                self.log(f"early stop: no better validation score for {cfg.patience} epochs")
                break
        return self.best or {}

    def _check_diverged(self, record: dict[str, Any]) -> None:
        """Raise :class:`TrainingDiverged` when the epoch in ``record`` ended with a non-finite
        loss or non-finite weights (the epoch's last step can break the weights after its loss
        was computed). Every rank decides alike: the loss is summed over ranks and the weights
        are the same on all of them."""
        loss = float(record["loss"])
        params = [torch.isfinite(p).all() for p in self.model.parameters()]
        weights_ok = bool(torch.stack(params).all()) if params else True  # one device sync
        if math.isfinite(loss) and weights_ok:
            return
        epoch = int(record["epoch"])
        what = f"loss {loss}" if not math.isfinite(loss) else f"loss {loss:.4f} but non-finite weights"
        if self.epoch:
            # A resumed run takes its learning rate from last.pt (the optimizer's state), not
            # from the config: a lower one needs a fresh start.
            advice = (f"the checkpoints are kept as they were after epoch {self.epoch} ({self.out / 'last.pt'}, best.pt); "
                      "to train with a lower learning rate, delete last.pt or choose a new output folder")
        else:
            advice = "no checkpoint was saved; train again with a lower learning rate"
        raise TrainingDiverged(f"training loss diverged at epoch {epoch} ({what}, learning rate lr={self.cfg.lr:g}): "
                               f"{advice}", epoch)

    @contextlib.contextmanager
    def _averaged_weights(self) -> Iterator[None]:
        """The moving average's parameters in the model for the block (with ``ema_decay``), the
        trained ones back after it: training goes on from its own weights."""
        if self.ema is None:
            yield
            return
        params = dict(self.model.named_parameters())
        trained = {k: p.detach().clone() for k, p in params.items()}
        self._take_averaged_weights()
        try:
            yield
        finally:
            with torch.no_grad():
                for k, p in params.items():
                    p.copy_(trained[k])

    def _take_averaged_weights(self) -> None:
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for k, p in self.ema.module.named_parameters():
                params[k].copy_(p)

    def last_model(self) -> IQAModel:
        """The last epoch's model as it was validated (and as best.pt would keep it): with
        ``ema_decay`` the moving average, put in the model for good (training is over)."""
        if self.ema is not None:
            self._take_averaged_weights()
        return self.model

    def _judge_epoch(self, record: dict[str, Any], t0: float) -> bool:
        """Validate the epoch into ``record`` and keep it as best.pt when it beats the best so
        far; returns whether it did."""
        cfg, main = self.cfg, self.rank == 0
        if self.val_table is not None:
            val = self.validate(shared=True)  # every rank predicts its share; all get the metrics
            # rank 0's metrics everywhere: the same early-stopping decision, bit for bit
            record.update({f"val_{k}": v for k, v in dist_utils.broadcast_object(val).items()})
            score = self._monitor({k[4:]: v for k, v in record.items() if k.startswith("val_")})
        else:
            score = -record["loss"]
        record["time_s"] = round(time.time() - t0, 2)
        improved = self.best is None or monitor_improved(score, self.best["monitor"])
        if improved:
            self.best = {"epoch": self.epoch + 1, "monitor": score, **record}
            self.bad_epochs = 0
            if main:
                extra = {"train_config": cfg.to_dict(), "val": record}
                if self.recipe is not None:
                    extra["recipe"] = self.recipe
                # staged: best.pt takes it once last.pt holds this epoch, so a stop between the two
                # saves never leaves best.pt an epoch that last.pt and the logs do not have
                save_checkpoint(self.model, self._next_best(self.epoch + 1), extra=extra)
        else:
            self.bad_epochs += 1
        return improved

    def _next_best(self, epoch: int) -> Path:
        """Where epoch ``epoch``'s best.pt waits until last.pt holds that epoch."""
        return self.out / f".best.pt.epoch{epoch}"

    def _settle_best(self) -> None:
        """A stop between the end-of-epoch saves: the staged best.pt of the epoch last.pt names as
        best takes its place (the epoch is done); any other staged one is dropped (its epoch is
        trained again)."""
        for staged in self.out.glob(".*best.pt.epoch*"):  # (and a temporary of one, a stop mid-write)
            if self.best is not None and staged.name == self._next_best(int(self.best["epoch"])).name:
                os.replace(staged, self.out / "best.pt")
            else:
                staged.unlink(missing_ok=True)

    @torch.inference_mode()
    def interpolate(self, model: IQAModel) -> tuple[float, dict[str, float]]:
        """Weight-space ensembling of ``model`` with its ``init_from`` weights (see
        :attr:`TrainConfig.interpolate`): ``model`` gets the mix that validates best; returns its
        ``a`` and validation metrics."""
        from ..models.registry import load_checkpoint

        alphas = sorted({float(a) for a in self.cfg.interpolate or ()})
        if not self.cfg.init_from or not alphas or not all(0.0 <= a <= 1.0 for a in alphas):
            raise ValueError("interpolate needs init_from and mixing weights in [0, 1]")
        if self.val_table is None:
            raise ValueError("interpolate chooses on the validation part: there is none")
        try:
            now = file_sha256(self.cfg.init_from)
        except OSError as exc:
            raise ValueError(f"interpolate mixes in the weights of init_from {self.cfg.init_from}, which cannot be read "
                             f"now ({exc.strerror or exc}): put the file the run started from back (a resumed run "
                             "loads it too)") from None
        if self.init_sha256 is not None and now != self.init_sha256:
            other_way = self.without_the_mix
            if self.start_stage:  # a resume holds the cached stages to the file's: say where it would end
                from .cache import frozen_fingerprint

                if frozen_fingerprint(load_checkpoint(self.cfg.init_from), self.start_stage) != self.encoded_with:
                    other_way = "start afresh (its frozen stages differ from the ones this run's cache holds)"
            raise ValueError(f"init_from {self.cfg.init_from} was replaced since the run started from it (sha256 "
                             f"{self.init_sha256[:12]} then, {now[:12]} now): the mix would take other weights. Put "
                             f"that file back, or {other_way}")
        start = load_checkpoint(self.cfg.init_from).state_dict()
        trained = {k: v.clone() for k, v in model.state_dict().items()}
        if self.cfg.interpolate_no_worse and 0.0 not in alphas:
            alphas.insert(0, 0.0)  # the floor every other mix is held to

        def mix(a: float) -> None:
            # lerp: exact where both are the same (the frozen, cached stages), which (1 - a) * w + a * w
            # is not for most a: the test photos were encoded again under the changed weights' key
            model.load_state_dict({k: torch.lerp(start[k].to(v), v, a) if v.is_floating_point() else v
                                   for k, v in trained.items()})

        best: tuple[float, float, dict[str, float]] | None = None
        floor: dict[str, float] = {}
        with self._judging(model):
            for a in alphas:
                mix(a)
                metrics = self.validate()
                score = self._monitor(metrics)
                per_set = {k: v for k, v in metrics.items() if k.endswith("/srocc")} or {"srocc": score}
                if a == 0.0:
                    floor = per_set
                allowed = not self.cfg.interpolate_no_worse or a == 0.0 or all(
                    per_set.get(k, float("nan")) >= v for k, v in floor.items())
                self.log(f"interpolated {a:g}: " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if "srocc" in k)
                         + ("" if allowed else " (below the starting weights on a set)"))
                if allowed and (best is None or monitor_improved(score, best[1])):
                    best = (a, score, metrics)
        assert best is not None
        mix(best[0])
        return best[0], best[2]

    @contextlib.contextmanager
    def _judging(self, model: IQAModel):
        """``model`` in the trainer's place, with the whole validation part encoded (a process of
        several holds only its share), for choices made after training."""
        saved = self.model, self.val_feats
        try:
            self.model = model.to(self.device)
            if self.start_stage and len(self.val_feats or ()) != len(self.val_table):
                from .cache import cached_encodings

                self.val_feats = cached_encodings(model, list(self.val_table["image"]), self.start_stage, train=False,
                                                  cache_dir=self.cache_dir, progress=False, runtime=self.cfg.cache_runtime)
            yield
        finally:
            self.model, self.val_feats = saved

    @torch.inference_mode()
    def calibrate(self, model: IQAModel) -> list[float]:
        """Fit ``model``'s output calibration on the validation rows of the first training set
        (the scale the model's scores are on) and store it in the model; returns it."""
        from .calibration import fit_calibration

        if self.val_table is None:
            raise ValueError("calibration needs a validation part")
        rows = self._calibration_rows()
        model.set_calibration(None)
        with self._judging(model):
            s, _ = self._predict_rows(np.arange(len(self.val_table)))
        t, _ = self._targets(self.val_table)
        weight = None
        if self.cfg.calibrate_on == "each" and self.scales is not None:
            # every set counts as much as any other, however many validation photos it has
            sets = self.val_table["dataset"].to_numpy()[rows]
            counts = {name: int((sets == name).sum()) for name in set(sets)}
            weight = np.array([1.0 / counts[name] for name in sets])
        params = fit_calibration(s[rows], t[rows], weight)
        model.set_calibration(params)
        return params

    def _calibration_rows(self) -> np.ndarray:
        """Rows of the validation table that calibration fits on: the first training set's (the
        scale the model's scores are on), or every set's (``calibrate_on: each``)."""
        if self.scales is None or self.cfg.calibrate_on == "each":
            return np.arange(len(self.val_table))
        return np.flatnonzero((self.val_table["dataset"] == next(iter(self.scales))).to_numpy())

    def finish(self, model: IQAModel) -> dict[str, Any]:
        """What the config asks of the chosen model after the epochs, applied to ``model``: the
        weight mix (``interpolate``), then the output calibration (``calibrate``). One place, so
        an experiment, a shipped tag and ``contentiqa train`` end a recipe the same way. Returns
        what was done: ``interpolated`` (the mix) and ``val_interpolated``, ``calibration``."""
        done: dict[str, Any] = {}
        if self.cfg.interpolate:
            done["interpolated"], done["val_interpolated"] = self.interpolate(model)
        if self.cfg.calibrate:
            done["calibration"] = self.calibrate(model)
        return done

    def earlier_seconds(self) -> float:
        """Wall-clock seconds of the epochs trained before this process resumed the run (0 for a
        run trained in one go): what a run's total training time must add to its own."""
        return sum(float(h.get("time_s", 0.0)) for h in self.history[:self.resumed_after])

    def training_record(self) -> dict[str, Any]:
        """Where and how the run trained, for its results files: minutes per epoch, which stages
        trained above the cached ones, the device, and the processes (the batch size is each one's)."""
        return {"minutes_per_epoch": self.epoch_minutes(), "trained": self._trained(len(self.history)),
                "device": str(self.device), "processes": self.world_size}

    def _trained(self, epochs: int) -> str:
        """:meth:`IQAModel.trained_stages` over ``epochs`` epochs: a learning rate of 0 (``lr``, a
        ``backbone_lr_scale`` of 0, the head-only epochs) leaves stages that could train as they were."""
        trained = self.model.trained_stages(self.start_stage)
        if self.cfg.lr == 0:
            return f"nothing (learning rate 0: lr=0; otherwise {trained})"
        # (a model without a backbone group, one of one's own, trains all of it at the head's rate)
        if trained.startswith("head only") or not any(g["name"] == "backbone" for g in self._param_groups()):
            return trained
        if self.cfg.backbone_lr_scale == 0:  # a linear probe: only the head's group moves
            return f"head only (the backbone's learning rate 0: backbone_lr_scale=0; otherwise {trained})"
        head_only = self.cfg.head_only_epochs
        if not head_only:
            return trained
        if epochs <= head_only:
            return (f"head only (the backbone's learning rate 0 in all {epochs} epoch(s): head_only_epochs={head_only}; "
                    f"otherwise {trained})")
        return f"{trained}; the head alone in the first {head_only} epoch(s)"

    def epoch_minutes(self) -> float | None:
        """Mean wall-clock minutes of the epochs trained (validation included)."""
        times = [float(h["time_s"]) for h in self.history if "time_s" in h]
        return round(sum(times) / len(times) / 60, 4) if times else None

    def load_best(self) -> IQAModel:
        """The model with the best epoch's weights (re-read from best.pt)."""
        from ..models.registry import load_checkpoint

        return load_checkpoint(self.out / "best.pt", self.device)
