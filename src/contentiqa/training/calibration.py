"""Calibrating a trained model's output onto the rating scale, on validation data.

A regression trained on several datasets at once (each MOS range mapped onto [0, 1]) or with
a ranking loss gives scores whose order is right but whose spread is not people's: some
photos land past the scale's ends and get clipped, others crowd the middle. A four-parameter
logistic (the usual monotone mapping of IQA evaluations, e.g. VQEG's) fitted on validation
photos maps the raw output onto the MOS that raters of the reference dataset gave; the model
stores it (:meth:`~contentiqa.models.base.IQAModel.set_calibration`) and applies it in
``forward``. Its bounds keep every photo inside the scale.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

LOW_BOUNDS = (0.0, 0.02)
"""Where the lower asymptote may sit on the normalised scale: at or just above its bottom, so
that frames worse than any rated photo still score near 0."""
HIGH_BOUNDS = (0.9, 1.0)
"""Where the upper asymptote (a + b) may sit: at or just below the top of the scale."""
MIN_PAIRS = 8
"""Fewest validation photos a fit takes: four parameters need several times as many points."""


def logistic(x: np.ndarray, a: float, b: float, c: float, d: float) -> np.ndarray:
    return a + b / (1.0 + np.exp(-(np.asarray(x, dtype=np.float64) - c) / d))


def fit_calibration(raw: Sequence[float], target: Sequence[float],
                    weight: Sequence[float] | None = None) -> list[float]:
    """``[a, b, c, d]`` of the logistic that maps ``raw`` (normalised model outputs on validation
    photos) closest to ``target`` (their normalised MOS) in least squares, each photo's squared
    error weighted by ``weight`` (default equal), with the lower asymptote in
    :data:`LOW_BOUNDS`, the upper one in :data:`HIGH_BOUNDS` and d > 0."""
    from scipy.optimize import least_squares

    x = np.asarray(raw, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"calibration needs one MOS per output: {x.size} outputs, {y.size} MOS")
    if len(x) < MIN_PAIRS:
        raise ValueError(f"calibration needs at least {MIN_PAIRS} (output, MOS) pairs, got {len(x)}")
    if not np.isfinite(x).all() or not np.isfinite(y).all():
        raise ValueError("calibration data hold NaN or infinite values")
    # constant outputs have nothing to map: the fit would only place a step at them
    if float(np.ptp(x)) <= 1e-9 * max(1.0, float(np.abs(x).max())):
        raise ValueError(f"the model's outputs are constant on the {len(x)} calibration photos ({x[0]:.4g}): "
                         "nothing to calibrate; check the training, or turn calibrate off")
    w = np.ones_like(x) if weight is None else np.asarray(weight, dtype=np.float64)
    if w.shape != x.shape or not np.isfinite(w).all() or (w < 0).any() or not w.any():
        raise ValueError("calibration weights must be one finite, non-negative value per pair, not all zero")
    root_w = np.sqrt(w / w.mean())
    spread = float(np.std(x)) or 1.0

    def residual(p):
        a, top, c, d = p
        return (logistic(x, a, top - a, c, d) - y) * root_w

    lo = [LOW_BOUNDS[0], HIGH_BOUNDS[0], float(x.min()) - 3 * spread, spread * 0.05]
    hi = [LOW_BOUNDS[1], HIGH_BOUNDS[1], float(x.max()) + 3 * spread, spread * 20]
    start = [sum(LOW_BOUNDS) / 2, sum(HIGH_BOUNDS) / 2, float(np.median(x)), spread]
    fit = least_squares(residual, start, bounds=(lo, hi))
    a, top, c, d = (float(v) for v in fit.x)
    return [a, top - a, c, d]
