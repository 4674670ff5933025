"""Metric accumulators (``update`` per batch, ``compute`` once, ``reset``), reduced across processes.

The functional metrics (:mod:`.functional`) need every prediction at once. Under
DistributedDataParallel each process scores only its share of a validation set, so the
predictions must be gathered first: torchmetrics' :class:`~torchmetrics.Metric` does that
bookkeeping (list states concatenated with ``torch.distributed`` all_gather when a process group
is initialised, uneven shares padded), which is why it is used here rather than hand-written.

- :func:`iqa_accumulators`: PLCC, SROCC, KROCC and RMSE as a torchmetrics collection, for
  streaming evaluation (no logistic fit; reported results use :class:`RowPredictions` + the
  functions).
  Inputs that the functional metrics refuse (NaN, constant vectors, too few items) raise the same
  :class:`~.functional.MetricInputError` here, where torchmetrics alone would return a number.
- :class:`RowPredictions`: gathers per-row predictions with their row index, so the functional
  metrics (and everything computed from a table: per-dataset correlations, accuracy over
  labelled rows) run on the whole set, in table order, on every process.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from torchmetrics import MeanSquaredError, Metric, MetricCollection
from torchmetrics.regression import KendallRankCorrCoef, SpearmanCorrCoef
from torchmetrics.utilities import dim_zero_cat

from .functional import MetricInputError


def _tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    try:
        return torch.as_tensor(np.asarray(x, dtype=np.float64))
    except (TypeError, ValueError) as exc:
        raise MetricInputError(f"{name} is not numbers ({exc})") from None


def iqa_accumulators(sync_on_compute: bool = True) -> MetricCollection:
    """``{"plcc", "srocc", "krocc", "rmse"}`` accumulators in float64 (``update(pred, target)``).
    ``sync_on_compute=False`` keeps each process's own result (e.g. rank 0 evaluating alone)."""
    kw = dict(sync_on_compute=sync_on_compute)
    with warnings.catch_warnings():  # rank correlations keep every item: that is what they need
        warnings.filterwarnings("ignore", message=".*will save all targets and predictions in the buffer")
        col = MetricCollection({
            "plcc": _CheckedPearson(**kw),
            "srocc": _CheckedSpearman(**kw),
            "krocc": _CheckedKendall(variant="b", **kw),
            "rmse": _CheckedMSE(squared=False, **kw),
        }, compute_groups=False)
    return col.set_dtype(torch.float64)


class _CheckedInputs(Metric):
    """Mixin putting the functional metrics' input checks in front of a torchmetrics metric.

    torchmetrics turns NaN or constant inputs into a number (or an IndexError for ``(N, 1)``),
    so without this the streamed metric could differ from :mod:`.functional` on exactly the
    inputs where a broken evaluation must not pass for a score. Count, minimum and maximum are
    extra states reduced across processes (sum / min / max), so the checks in :meth:`compute`
    see the whole set, and exactly: constant means ``min == max``, as ``np.ptp == 0`` there."""

    _metric: str = ""
    _min_len: int = 2
    _needs_spread: bool = True  # correlations are undefined for a constant vector

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("n_items", default=torch.tensor(0.0), dist_reduce_fx="sum")
        for which in ("pred", "target"):
            self.add_state(f"{which}_min", default=torch.tensor(float("inf")), dist_reduce_fx="min")
            self.add_state(f"{which}_max", default=torch.tensor(float("-inf")), dist_reduce_fx="max")

    _in_forward = False

    @staticmethod
    def _checked(preds, target) -> tuple[torch.Tensor, torch.Tensor]:
        # One score per item, as the functional metrics ravel; torchmetrics reads (N, 1) as N outputs.
        # float64 whatever came in: torchmetrics computes in the inputs' dtype, and float16 (what
        # autocast gives) overflows its sums of squares; integers it refuses. Arrays and lists
        # too, as the functional metrics take them.
        preds, target = (_tensor(x, which).reshape(-1).to(torch.float64) for x, which in ((preds, "pred"), (target, "target")))
        if preds.shape != target.shape:
            raise MetricInputError(f"pred has {preds.numel()} values, target has {target.numel()}: they must match")
        for t, which in ((preds, "pred"), (target, "target")):
            if not bool(torch.isfinite(t).all()):
                raise MetricInputError(f"{which} contains NaN or infinite values")
        return preds, target

    def forward(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """torchmetrics' ``metric(preds, target)``: accumulate, and return this batch's own value.

        A batch that has no value alone (one item, a constant target: an ordinary last batch)
        gives NaN, and bad inputs raise before anything changes: torchmetrics sets the
        accumulated state aside while it computes the batch, so an error there would lose it."""
        self._checked(preds, target)
        self._in_forward = True
        try:
            return super().forward(preds, target)
        finally:
            self._in_forward = False

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:  # type: ignore[override]
        preds, target = self._checked(preds, target)
        if preds.numel() == 0:
            return  # nothing to add (the counts and extremes above would stay as they are)
        self.n_items += preds.numel()
        self.pred_min = torch.minimum(self.pred_min, preds.min().to(self.pred_min.dtype))
        self.pred_max = torch.maximum(self.pred_max, preds.max().to(self.pred_max.dtype))
        self.target_min = torch.minimum(self.target_min, target.min().to(self.target_min.dtype))
        self.target_max = torch.maximum(self.target_max, target.max().to(self.target_max.dtype))
        super().update(preds, target)

    def compute(self) -> torch.Tensor:  # type: ignore[override]
        problem = self._undefined()
        if problem is None:
            return super().compute()
        if self._in_forward:  # one batch's value (see forward); the whole set's still raises
            return torch.tensor(float("nan"), dtype=torch.float64, device=self.n_items.device)
        # compute runs inside torchmetrics' sync context, which does not restore this process's
        # own states when compute raises: the gathered ones would stay, and the next update fail
        if self._is_synced:
            self.unsync()
        raise MetricInputError(problem)

    def _undefined(self) -> str | None:
        """Why the metric has no value on what was accumulated, or None."""
        n = int(self.n_items)
        if n < self._min_len:
            return f"need at least {self._min_len} values, got {n}"
        if self._needs_spread:
            for which in ("pred", "target"):
                lo, hi = float(getattr(self, f"{which}_min")), float(getattr(self, f"{which}_max"))
                if lo == hi:
                    return f"{self._metric} is undefined: {which} is constant ({lo:g})"
        return None


class _CheckedSpearman(_CheckedInputs, SpearmanCorrCoef):
    """SROCC from the gathered values by the functional metric: torchmetrics' ranks sum each
    tied group's ranks in int32, which wraps past 2**31 (a large set of discrete ratings: 50,000
    ties of one value) and returns the correlation with its sign flipped."""

    _metric = "SROCC"

    def compute(self) -> torch.Tensor:  # type: ignore[override]
        if self._undefined() is not None:
            return super().compute()  # NaN or the error, as every checked metric
        from .functional import srocc

        x, y = dim_zero_cat(self.preds).reshape(-1), dim_zero_cat(self.target).reshape(-1)
        return torch.tensor(srocc(x.double().cpu().numpy(), y.double().cpu().numpy()), dtype=torch.float64)


class _CheckedPearson(_CheckedSpearman):
    """PLCC from the gathered values (the states SROCC keeps). torchmetrics' Pearson merges
    per-process moments scaled by each share's spread, and returns NaN when every share is
    constant (one item per process) though the whole set is not."""

    _metric = "PLCC"

    def compute(self) -> torch.Tensor:  # type: ignore[override]
        problem = self._undefined()
        if problem is not None:
            return super().compute()  # NaN or the error, as every checked metric
        x, y = dim_zero_cat(self.preds).to(torch.float64), dim_zero_cat(self.target).to(torch.float64)
        x, y = x - x.mean(), y - y.mean()
        # scaled first (the correlation is scale-free): squares of values past ~1e154 overflow to
        # inf, and the ratio came out 0.0
        x, y = x / x.abs().max(), y / y.abs().max()
        # rounding can put an exactly linear relation a hair above 1
        return ((x * y).sum() / torch.sqrt((x * x).sum() * (y * y).sum())).clamp(-1.0, 1.0)


class _CheckedKendall(_CheckedInputs, KendallRankCorrCoef):
    """KROCC (tau-b) from the gathered values by scipy's O(n log n) count: torchmetrics' own
    counts pairs in a Python loop (quadratic) and squares them in int64, which overflows past
    ~78,000 items (NaN, or a tau near 2)."""

    _metric = "KROCC"

    def compute(self) -> torch.Tensor:  # type: ignore[override]
        if self._undefined() is not None:
            return super().compute()  # NaN or the error, as every checked metric
        from .functional import krocc

        x, y = dim_zero_cat(self.preds).reshape(-1), dim_zero_cat(self.target).reshape(-1)
        return torch.tensor(krocc(x.double().cpu().numpy(), y.double().cpu().numpy()), dtype=torch.float64)

    def _sync_dist(self, *args, **kwargs) -> None:
        # A process that saw no items holds empty lists, which torchmetrics gathers as shape (0,)
        # against the others' (N, 1): gloo aborts the job. Give it an empty (0, 1) instead.
        for attr in ("preds", "target"):
            if isinstance(getattr(self, attr), list) and not getattr(self, attr):
                setattr(self, attr, [torch.empty((0, 1), dtype=self.dtype, device=self.device)])
        super()._sync_dist(*args, **kwargs)


class _CheckedMSE(_CheckedInputs, MeanSquaredError):
    _metric = "RMSE"
    _min_len = 1
    _needs_spread = False


class RowPredictions(Metric):
    """Per-row predictions of one process (row index, normalised score, category index);
    :meth:`compute` returns those of every process, sorted by row index.

    Rows without a score or a category hold NaN / -1. A process with no rows still takes part
    in the gather (torchmetrics sends an empty state)."""

    full_state_update = False
    higher_is_better = None
    is_differentiable = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("index", default=[], dist_reduce_fx="cat")
        self.add_state("score", default=[], dist_reduce_fx="cat")
        self.add_state("category", default=[], dist_reduce_fx="cat")
        self.set_dtype(torch.float64)  # row indices and scores exact; one dtype for the gather

    def update(self, index, score=None, category=None) -> None:  # type: ignore[override]
        idx = torch.as_tensor(np.asarray(index), dtype=torch.float64, device=self.device).reshape(-1)
        n = idx.numel()

        def column(values, fill: float) -> torch.Tensor:
            if values is None:
                return torch.full((n,), fill, dtype=torch.float64, device=self.device)
            t = torch.as_tensor(np.asarray(values, dtype=np.float64), device=self.device).reshape(-1)
            if t.numel() != n:
                raise ValueError(f"{t.numel()} values for {n} rows")
            return t

        self.index.append(idx)
        self.score.append(column(score, float("nan")))
        self.category.append(column(category, -1.0))

    def compute(self) -> dict[str, np.ndarray]:  # type: ignore[override]
        def cat(state) -> np.ndarray:
            if isinstance(state, list) and not state:
                return np.zeros(0)
            return dim_zero_cat(state).detach().cpu().numpy()

        idx = cat(self.index)
        order = np.argsort(idx, kind="stable")
        if np.unique(idx).size != idx.size:
            raise ValueError("a row was predicted more than once across processes")
        return {
            "index": idx[order].astype(np.int64),
            "score": cat(self.score)[order],
            "category": cat(self.category)[order].astype(np.int64),
        }
