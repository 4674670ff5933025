"""Evaluating a model on a dataset table: predictions and PLCC/SROCC/KROCC/RMSE/accuracy."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ..data.categories import normalize_category
from ..data.table import MOSScale
from ..metrics import MetricInputError, accuracy, iqa_metrics, rmse
from ..models.base import IQAModel


class NotMeasurable(MetricInputError):
    """No metric on what could be scored (too few images, a constant MOS); ``rows`` holds every
    image's prediction or error, so the caller can still say which failed and keep the rows."""

    def __init__(self, message: str, rows: pd.DataFrame):
        super().__init__(message)
        self.rows = rows


COUNTS = ("n", "n_labelled", "n_acceptable")
"""Keys of a metrics dict that count photos (summed over sets, never printed as metrics)."""


def category_indices(values: Sequence, categories: Sequence[str]) -> np.ndarray:
    """Category names -> indices into ``categories`` (-1 for missing/unknown), both read in one
    spelling (:func:`~contentiqa.data.categories.normalize_category`): a table's ``Human`` is a
    model's ``human``, and a model of its own vocabulary (``Human``) still finds its rows."""
    pos = {normalize_category(c): i for i, c in enumerate(categories)}
    keys = (normalize_category(v) for v in values)
    return np.asarray([-1 if k is None else pos.get(k, -1) for k in keys], dtype=np.int64)


def metrics_from_predictions(
    pred_norm: np.ndarray | None,
    table: pd.DataFrame,
    scale: MOSScale,
    pred_categories: np.ndarray | None = None,
    categories: Sequence[str] = (),
    fit_logistic: bool = False,
    undefined: str = "raise",
) -> dict[str, float]:
    """Metrics of normalised predictions against ``table`` (whose MOS is on ``scale``).

    RMSE is on the test data's MOS scale: predictions in [0, 1] are mapped onto it, so a model
    trained on another dataset is compared in the units of this one.

    ``undefined``: what a correlation that is undefined for these predictions (a collapsed,
    constant-prediction model) becomes: ``"raise"`` (MetricInputError: a final evaluation
    must not pass a broken model off as a number) or ``"nan"`` (PLCC/SROCC/KROCC NaN, RMSE
    kept, ``collapsed`` = 1: what training's per-epoch validation records and carries on from).
    """
    if undefined not in ("raise", "nan"):
        raise ValueError(f"undefined must be 'raise' or 'nan', not {undefined!r}")
    out: dict[str, float] = {"n": float(len(table))}
    if pred_norm is not None:
        pred_mos = scale.denormalize(pred_norm)
        target = table["mos"].to_numpy(dtype=np.float64)
        try:
            out.update(iqa_metrics(pred_mos, target, fit_logistic=fit_logistic))
        except MetricInputError:
            if undefined == "raise" or np.ptp(target) == 0 or not np.isfinite(pred_mos).all():
                raise  # only constant predictions are a model's state; bad targets are bad data
            out.update({"plcc": float("nan"), "srocc": float("nan"), "krocc": float("nan"),
                        "rmse": rmse(pred_mos, target), "collapsed": 1.0})
    if pred_categories is not None and categories and "category" in table:
        target = category_indices(table["category"], categories)
        known = target >= 0
        if known.any():
            out["accuracy"] = accuracy(pred_categories[known], target[known])
            out["n_labelled"] = float(known.sum())
        if "categories" in table:
            # Multi-label data: a prediction is acceptable when it is any of the photo's labels.
            from ..data.categories import normalize_category
            from ..data.labels import acceptable_sets

            # in the normalised spelling, so the model's names; the main label is one of them
            sets = acceptable_sets(table["categories"], table["category"])
            own = {normalize_category(c) for c in categories}
            # as top-1 counts only photos labelled with one of the model's categories: a photo
            # whose labels the head has none of could never be hit
            labelled = np.array([bool(x & own) for x in sets])
            if labelled.any():
                names = [normalize_category(categories[i]) if i >= 0 else None for i in pred_categories]
                hits = [names[i] in sets[i] for i in np.flatnonzero(labelled)]
                out["acceptable"] = float(np.mean(hits))
                out["n_acceptable"] = float(len(hits))  # the photos it was counted on
    return out


def evaluate_model(
    model: IQAModel,
    table: pd.DataFrame,
    scale: MOSScale | None = None,
    batch_size: int = 8,
    progress: bool = False,
    fit_logistic: bool = False,
    workers: int = 2,
) -> tuple[dict[str, float], pd.DataFrame]:
    """Score every image of ``table`` and compare with its MOS (and category, if any).

    Returns (metrics, predictions table with ``image, mos, pred, [pred_model_scale,] [category,
    pred_category, pred_confidence], error``). ``pred`` is on ``scale``, the MOS's, as RMSE
    reads it; ``pred_model_scale`` the model's own score, when its scale is another. Images that
    fail to load are reported, not scored.
    """
    from ..inference.torch_runtime import TorchScorer

    scale = scale or model.scale
    preds = TorchScorer(model, precision="fp32").run(list(table["image"]), batch_size=batch_size, progress=progress,
                                                     workers=workers)
    scores = np.array([np.nan if p.score is None else p.score for p in preds], dtype=np.float64)
    rows = pd.DataFrame({
        "image": table["image"].values,
        "mos": table["mos"].values,
        "pred": scale.denormalize(model.scale.normalize(scores)),
        **({"pred_model_scale": scores} if scale != model.scale else {}),
        "error": [p.error for p in preds],
    })
    if model.categories:
        rows["pred_category"] = [p.category for p in preds]
        rows["pred_confidence"] = [p.category_confidence for p in preds]
        if "category" in table:  # in the model's spelling where it is one of its categories, as pred_category
            idx = category_indices(table["category"], model.categories)
            rows["category"] = [model.categories[i] if i >= 0 else v for i, v in zip(idx, table["category"].values)]
    ok = rows["error"].isna().to_numpy()
    if not ok.any():
        raise NotMeasurable(f"no image could be scored; the first, {rows['image'].iloc[0]}: {rows['error'].iloc[0]}", rows)
    good = table[ok].reset_index(drop=True)
    pred_norm = None
    if model.predicts_score:
        pred_norm = model.scale.normalize(scores[ok])
    pred_cat = None
    if model.categories:
        pred_cat = category_indices(rows.loc[ok, "pred_category"], model.categories)
    try:
        metrics = metrics_from_predictions(pred_norm, good, scale, pred_cat, model.categories, fit_logistic)
    except MetricInputError as exc:
        failed = int((~ok).sum())
        said = f" ({failed} of {len(rows)} image(s) could not be scored)" if failed else ""
        raise NotMeasurable(f"{exc}{said}", rows) from None
    if not {k for k in metrics if k not in COUNTS}:  # a content-only model without labels to meet
        why = ("the data have no 'category' column" if "category" not in table else
               "none of the data's categories is one of the model's: " + ", ".join(model.categories))
        raise NotMeasurable(f"{model.model_name} predicts categories only, and {why}", rows)
    metrics["n_failed"] = float((~ok).sum())
    return metrics, rows
