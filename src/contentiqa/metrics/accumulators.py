"""Metric accumulators (``update`` per batch, ``compute`` once, ``reset``), reduced across processes.

The functional metrics (:mod:`.functional`) need every prediction at once. Under
DistributedDataParallel each process scores only its share of a validation set, so the
predictions must be gathered first: torchmetrics' :class:`~torchmetrics.Metric` does that
bookkeeping (list states concatenated with ``torch.distributed`` all_gather when a process group
is initialised, uneven shares padded), which is why it is used here rather than hand-written.

- :func:`iqa_accumulators`: PLCC, SROCC, KROCC and RMSE as a torchmetrics collection, for
  streaming evaluation (no logistic fit; equal to the functional metrics within ~1e-6, as
  torchmetrics ranks in float32: reported results use :class:`RowPredictions` + the functions).
- :class:`RowPredictions`: gathers per-row predictions with their row index, so the functional
  metrics (and everything computed from a table: per-dataset correlations, accuracy over
  labelled rows) run on the whole set, in table order, on every process.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from torchmetrics import MeanSquaredError, Metric, MetricCollection
from torchmetrics.regression import KendallRankCorrCoef, PearsonCorrCoef, SpearmanCorrCoef
from torchmetrics.utilities import dim_zero_cat


def iqa_accumulators(sync_on_compute: bool = True) -> MetricCollection:
    """``{"plcc", "srocc", "krocc", "rmse"}`` accumulators in float64 (``update(pred, target)``).
    ``sync_on_compute=False`` keeps each process's own result (e.g. rank 0 evaluating alone)."""
    kw = dict(sync_on_compute=sync_on_compute)
    with warnings.catch_warnings():  # rank correlations keep every item: that is what they need
        warnings.filterwarnings("ignore", message=".*will save all targets and predictions in the buffer")
        col = MetricCollection({
            "plcc": PearsonCorrCoef(**kw),
            "srocc": SpearmanCorrCoef(**kw),
            "krocc": KendallRankCorrCoef(variant="b", **kw),
            "rmse": MeanSquaredError(squared=False, **kw),
        }, compute_groups=False)
    return col.set_dtype(torch.float64)


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
