"""IQA metrics: PLCC (optionally after a 4-parameter logistic fit), SROCC, KROCC, RMSE, accuracy,
as functions (:mod:`.functional`) and as accumulators reduced across processes (:mod:`.accumulators`)."""
from ..utils.lazy import lazy_exports
from .functional import (
    MetricInputError,
    accuracy,
    logistic_mapping,
    format_mean_std,
    iqa_metrics,
    krocc,
    logistic_4,
    mean_std,
    plcc,
    rmse,
    srocc,
)

__all__ = [
    "MetricInputError",
    "accuracy",
    "logistic_mapping",
    "format_mean_std",
    "iqa_metrics",
    "krocc",
    "logistic_4",
    "mean_std",
    "plcc",
    "rmse",
    "srocc",
]


__getattr__, __dir__ = lazy_exports(__name__, {"RowPredictions": "accumulators", "iqa_accumulators": "accumulators"},
                                   globals())  # torchmetrics: loaded on first use
