"""IQA metrics: PLCC (optionally after a 4-parameter logistic fit), SROCC, KROCC, RMSE, accuracy,
as functions (:mod:`.functional`) and as accumulators reduced across processes (:mod:`.accumulators`)."""
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


def __getattr__(name: str):
    """``RowPredictions`` / ``iqa_accumulators`` (torchmetrics) load on first use."""
    if name in ("RowPredictions", "iqa_accumulators"):
        from . import accumulators

        return getattr(accumulators, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
