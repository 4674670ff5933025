"""IQA metrics: PLCC (optionally after a 4-parameter logistic fit), SROCC, KROCC, RMSE, accuracy."""
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
