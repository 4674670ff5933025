"""IQA evaluation metrics as plain functions (the torchmetrics way), checked against scipy.

All take array-likes (numpy, lists, torch tensors) of predictions and targets and return a
Python float. Inputs that make a metric undefined (different lengths, NaN, fewer than two
items, a constant vector for a correlation) raise :class:`MetricInputError` instead of
returning NaN, so a broken evaluation cannot pass for a bad score.
"""
from __future__ import annotations

import numbers
import warnings
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy import optimize, stats


class MetricInputError(ValueError):
    """The inputs make the metric undefined."""


def _to_numpy(x):
    """A torch tensor (any device, with grad or not) as numpy; anything else unchanged.

    numpy has no bfloat16 (``.numpy()`` raises "unsupported ScalarType"), so 16-bit floats are
    widened to float32 first, which is exact; other dtypes keep their precision (and labels
    stay integers for :func:`accuracy`)."""
    if not hasattr(x, "detach"):
        return x
    x = x.detach()
    if x.is_floating_point() and x.element_size() < 4:
        x = x.float()
    return x.cpu().numpy()


def _as_array(x, name: str) -> np.ndarray:
    x = _to_numpy(x)
    arr = np.asarray(x, dtype=np.float64).ravel()
    if np.isnan(arr).any() or np.isinf(arr).any():
        raise MetricInputError(f"{name} contains NaN or infinite values")
    return arr


def _pair(pred, target, min_len: int = 2, what: str = "") -> tuple[np.ndarray, np.ndarray]:
    p, t = _as_array(pred, "pred"), _as_array(target, "target")
    if p.shape != t.shape:
        raise MetricInputError(f"pred has {p.size} values, target has {t.size}: they must match")
    if p.size < min_len:
        raise MetricInputError(f"{what + ' ' if what else ''}need{'s' if what else ''} at least {min_len} values, "
                               f"got {p.size}")
    return p, t


def _check_not_constant(p: np.ndarray, t: np.ndarray, metric: str) -> None:
    for arr, name in ((p, "pred"), (t, "target")):
        if np.ptp(arr) == 0:
            raise MetricInputError(f"{metric} is undefined: {name} is constant ({arr[0]:g})")


def logistic_4(x, b1, b2, b3, b4):
    """VQEG's monotonic 4-parameter logistic used to map objective to subjective scores."""
    return (b1 - b2) / (1.0 + np.exp(-(x - b3) / (np.abs(b4) + 1e-12))) + b2


def logistic_mapping(pred, target) -> np.ndarray:
    """Fit :func:`logistic_4` from ``pred`` to ``target``; return the mapped predictions.

    Falls back to the identity (with a warning) if the least-squares fit converges from no
    start, so PLCC stays defined. The curve is monotone, increasing or decreasing, whichever fits best:
    a decreasing one reverses the ranks, which :func:`plcc` reports with a minus sign.
    """
    p, t = _pair(pred, target, min_len=4, what="the 4-parameter logistic fit")
    spread = float(np.std(p)) or 1.0
    # The usual start first; where it stalls (a flat curve, or one fitting worse than a straight
    # line, which a wide logistic can follow) others: weak or clustered predictions stall it
    # though a monotone fit exists, and "PLCC undefined" would then be no fact about them.
    line_sse = float(np.sum((np.polyval(np.polyfit(p, t, 1), p) - t) ** 2))
    # (a tolerance of the targets' spread: on exactly linear data neither fit reaches 0, and
    # every start ran its full budget)
    enough = line_sse + 1e-9 * float(np.sum((t - t.mean()) ** 2))
    starts = [[t.max(), t.min(), float(np.mean(p)), spread]] + [
        [hi, lo, float(mid), scale * spread] for hi, lo in ((t.max(), t.min()), (t.min(), t.max()))
        for mid in np.quantile(p, (0.25, 0.5, 0.75)) for scale in (0.1, 0.3, 1.0, 3.0)]
    best: tuple[float, np.ndarray] | None = None
    for p0 in starts:
        mapped = _logistic_fit(p, t, p0)
        if mapped is None:
            continue
        sse = float(np.sum((mapped - t) ** 2))
        if best is None or sse < best[0]:
            best = (sse, mapped)
        if np.ptp(mapped) > 1e-9 * np.ptp(t) and sse <= enough:
            break  # a curve at least as good as the line: no stall
    if best is None:
        warnings.warn("4-parameter logistic fit did not converge; PLCC computed without it", stacklevel=2)
        return p
    return best[1]


def _logistic_fit(p: np.ndarray, t: np.ndarray, p0: list[float]) -> np.ndarray | None:
    """:func:`logistic_4` fitted from ``p0``, applied to ``p``; None when the fit fails."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optimize.OptimizeWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            params, _ = optimize.curve_fit(logistic_4, p, t, p0=p0, maxfev=20000)
            mapped = logistic_4(p, *params)
    except (RuntimeError, ValueError):
        return None
    return mapped if np.all(np.isfinite(mapped)) else None


def plcc(pred, target, fit_logistic: bool = False) -> float:
    """Pearson linear correlation; with ``fit_logistic`` after the VQEG 4-parameter mapping."""
    p, t = _pair(pred, target)
    _check_not_constant(p, t, "PLCC")
    if fit_logistic:
        mapped = logistic_mapping(p, t)
        # A fit that collapsed onto the targets' mean leaves only rounding noise in ``mapped``:
        # its correlation (sign included) would be the noise's, a number that means nothing.
        if np.ptp(mapped) <= 1e-9 * np.ptp(t):
            raise MetricInputError("PLCC is undefined: the logistic fit mapped pred to a constant")
        # A decreasing fit makes a predictor that ranks the wrong way correlate positively: keep
        # the sign its ranks have (and SROCC shows), the magnitude is the fit's.
        sign = 1.0 if stats.pearsonr(p, mapped)[0] >= 0 else -1.0
        return sign * float(stats.pearsonr(mapped, t)[0])
    return float(stats.pearsonr(p, t)[0])


def srocc(pred, target) -> float:
    """Spearman rank-order correlation."""
    p, t = _pair(pred, target)
    _check_not_constant(p, t, "SROCC")
    return float(stats.spearmanr(p, t)[0])


def krocc(pred, target) -> float:
    """Kendall rank-order correlation (tau-b, ties accounted for)."""
    p, t = _pair(pred, target)
    _check_not_constant(p, t, "KROCC")
    return float(stats.kendalltau(p, t)[0])


def rmse(pred, target) -> float:
    """Root-mean-square error, on whatever scale the inputs are on."""
    p, t = _pair(pred, target, min_len=1)
    err = p - t
    scale = float(np.max(np.abs(err)))
    if scale == 0.0:
        return 0.0
    return scale * float(np.sqrt(np.mean((err / scale) ** 2)))  # scaled: squares past ~1e154 overflow


def accuracy(pred, target) -> float:
    """Top-1 accuracy. ``pred`` is either class indices (1-D, or N x 1) or scores/logits (N x C)."""
    pred = np.asarray(_to_numpy(pred))
    t = np.asarray(_to_numpy(target)).ravel()
    for arr, name in ((pred, "pred"), (t, "target")):
        # NaN compares unequal to every label: it would count as a wrong answer, not an error.
        if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
            raise MetricInputError(f"{name} contains NaN or infinite values")
    if pred.ndim == 2 and pred.shape[1] > 1:  # scores per class; one column is indices (argmax keepdim)
        pred = pred.argmax(axis=1)
    pred = pred.ravel()
    if pred.shape != t.shape:
        raise MetricInputError(f"pred has {pred.size} labels, target has {t.size}: they must match")
    if pred.size == 0:
        raise MetricInputError("accuracy of zero items is undefined")
    return float(np.mean(pred == t))


def iqa_metrics(pred, target, fit_logistic: bool = False) -> dict[str, float]:
    """PLCC, SROCC, KROCC and RMSE in one dict (RMSE on the inputs' own scale)."""
    return {
        "plcc": plcc(pred, target, fit_logistic=fit_logistic),
        "srocc": srocc(pred, target),
        "krocc": krocc(pred, target),
        "rmse": rmse(pred, target),
    }


def _is_number(v) -> bool:
    """A real scalar (Python, numpy such as ``np.float32``, or a 0-d tensor), not a bool."""
    if getattr(v, "ndim", 1) == 0 and hasattr(v, "item"):  # a 0-d tensor, or the 0-d array its .numpy() gives
        v = v.item()
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def mean_std(runs: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Aggregate per-split metric dicts into ``{metric: {"mean", "std", "n"}}`` (sample std)."""
    if not runs:
        raise MetricInputError("no runs to aggregate")
    keys: list[str] = []
    for r in runs:
        keys += [k for k in r if k not in keys and _is_number(r[k])]
    out = {}
    for k in keys:
        vals = np.array([float(r[k]) for r in runs if k in r and _is_number(r[k])], dtype=np.float64)
        out[k] = {
            "mean": float(vals.mean()),
            "std": float(vals.std(ddof=1)) if vals.size > 1 else 0.0,
            "n": int(vals.size),
        }
    return out


def format_mean_std(summary: Mapping[str, Mapping[str, float]], keys: Iterable[str] | None = None, digits: int = 3) -> dict[str, str]:
    """``{"srocc": "0.812 ± 0.021", ...}`` for tables; the mean alone for one run, whose std of
    0 would claim a spread that was never measured."""
    keys = list(keys) if keys is not None else list(summary)
    return {k: f"{summary[k]['mean']:.{digits}f}" + (f" ± {summary[k]['std']:.{digits}f}" if summary[k].get("n", 2) > 1 else "")
            for k in keys if k in summary}
