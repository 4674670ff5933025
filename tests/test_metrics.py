"""Metrics against scipy / numpy, and their refusal of inputs that make them undefined."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy import optimize, stats

from contentiqa.metrics import (
    MetricInputError,
    accuracy,
    iqa_metrics,
    krocc,
    mean_std,
    plcc,
    rmse,
    srocc,
)


def _data(seed: int, n: int = 60, ties: bool = False):
    rng = np.random.default_rng(seed)
    t = rng.normal(50, 15, n)
    p = 0.6 * t + rng.normal(0, 10, n)
    if ties:
        t = np.round(t / 10) * 10
        p = np.round(p / 5) * 5
    return p, t


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", [False, True])
def test_correlations_match_scipy(seed, ties):
    p, t = _data(seed, ties=ties)
    if ties:
        assert len(np.unique(t)) < len(t) and len(np.unique(p)) < len(p)
    assert plcc(p, t) == pytest.approx(stats.pearsonr(p, t)[0], abs=1e-12)
    assert srocc(p, t) == pytest.approx(stats.spearmanr(p, t)[0], abs=1e-12)
    assert krocc(p, t) == pytest.approx(stats.kendalltau(p, t)[0], abs=1e-12)
    assert rmse(p, t) == pytest.approx(np.sqrt(np.mean((p - t) ** 2)), rel=1e-12)


def test_srocc_krocc_independent_formulas():
    """Without ties: Spearman = 1 - 6 sum d^2 / (n (n^2-1)); Kendall = (C - D) / (n(n-1)/2)."""
    rng = np.random.default_rng(7)
    n = 25
    p, t = rng.permutation(n).astype(float), rng.permutation(n).astype(float)
    d = p - t  # already ranks
    assert srocc(p, t) == pytest.approx(1 - 6 * np.sum(d ** 2) / (n * (n ** 2 - 1)), abs=1e-12)
    s = sum(np.sign(p[i] - p[j]) * np.sign(t[i] - t[j]) for i in range(n) for j in range(i + 1, n))
    assert krocc(p, t) == pytest.approx(s / (n * (n - 1) / 2), abs=1e-12)


def test_perfect_and_inverse():
    x = np.arange(10.0)
    assert plcc(x, 2 * x + 1) == pytest.approx(1.0)
    assert srocc(x, x ** 3) == pytest.approx(1.0)
    assert krocc(x, -x) == pytest.approx(-1.0)
    assert rmse(x, x) == 0.0


def _logistic(x, b1, b2, b3, b4):
    return (b1 - b2) / (1 + np.exp(-(x - b3) / np.abs(b4))) + b2


def test_plcc_with_logistic_fit_matches_hand_fit():
    rng = np.random.default_rng(3)
    pred = np.sort(rng.uniform(-4, 4, 80))
    target = 80 / (1 + np.exp(-1.7 * pred)) + 10 + rng.normal(0, 2.0, pred.size)  # monotone, non-linear
    p0 = [target.max(), target.min(), pred.mean(), pred.std()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        params, _ = optimize.curve_fit(_logistic, pred, target, p0=p0, maxfev=20000)
    expected = stats.pearsonr(_logistic(pred, *params), target)[0]
    fitted = plcc(pred, target, fit_logistic=True)
    plain = plcc(pred, target)
    assert fitted == pytest.approx(expected, abs=1e-6)
    assert fitted >= plain
    assert fitted - plain > 0.01  # the non-linearity is strong enough to matter
    # The fit changes values, not ranks.
    assert srocc(pred, target) == pytest.approx(stats.spearmanr(pred, target)[0])


def test_logistic_plcc_keeps_the_sign_of_a_predictor_that_ranks_the_wrong_way():
    """The fitted curve may decrease; PLCC used to come out positive (+0.88) for a predictor whose
    SROCC was -0.86."""
    rng = np.random.default_rng(5)
    mos = rng.uniform(0, 100, 50)
    pred = -mos + rng.normal(0, 15, 50)
    got = iqa_metrics(pred, mos, fit_logistic=True)
    assert got["srocc"] < -0.8 and got["plcc"] < -0.8
    assert got["plcc"] == pytest.approx(-plcc(-pred, mos, fit_logistic=True), abs=1e-4)  # the same fit, mirrored


@pytest.mark.parametrize("pred, mos", [
    ([1, 2, 0, 0, 1, 2], [1.3, 2.7, 2.6, 1.8, 4.8, 1.4]),
    ([0, 2, 0, 1, 0, 2], [2.6, 1.4, 2.8, 4.9, 3.4, 4.8]),
])
def test_a_logistic_fit_that_stalls_from_the_usual_start_is_fitted_from_others(pred, mos):
    """Weak, clustered predictions: the usual start ended on a flat curve (worse than a straight
    line), and PLCC was called undefined though a monotone fit exists."""
    from contentiqa.metrics.functional import logistic_mapping

    p, t = np.asarray(pred, float), np.asarray(mos)
    mapped = logistic_mapping(p, t)
    line = np.polyval(np.polyfit(p, t, 1), p)
    assert np.ptp(mapped) > 0.1 and np.sum((mapped - t) ** 2) <= np.sum((line - t) ** 2) + 1e-9
    assert np.isfinite(plcc(p, t, fit_logistic=True))


def test_exactly_linear_predictions_are_fitted_from_the_usual_start_alone(monkeypatch):
    """Neither fit reaches an SSE of 0 there: every other start ran too (20 s at 12,000 photos)."""
    import contentiqa.metrics.functional as functional

    fits = []
    real = functional._logistic_fit
    monkeypatch.setattr(functional, "_logistic_fit", lambda *a: fits.append(1) or real(*a))
    mos = np.random.default_rng(0).uniform(1, 5, 200)
    for pred in (mos, 20 * mos):
        fits.clear()
        assert plcc(pred, mos, fit_logistic=True) == pytest.approx(1.0, abs=1e-9) and len(fits) == 1


def test_accuracy_labels_and_logits():
    target = np.array([0, 1, 2, 2, 1])
    labels = np.array([0, 1, 1, 2, 0])
    assert accuracy(labels, target) == pytest.approx(3 / 5)
    logits = np.full((5, 3), -1.0)
    logits[np.arange(5), labels] = 2.0
    assert accuracy(logits, target) == pytest.approx(3 / 5)
    assert accuracy(torch.from_numpy(logits), torch.from_numpy(target)) == pytest.approx(3 / 5)
    with pytest.raises(MetricInputError):
        accuracy(labels[:4], target)
    with pytest.raises(MetricInputError):
        accuracy([], [])
    # a column of indices (argmax(dim=1, keepdim=True)) is labels, not one score per class
    assert accuracy(torch.from_numpy(labels)[:, None], torch.from_numpy(target)) == pytest.approx(3 / 5)


def test_torch_inputs():
    p, t = _data(5)
    pt = torch.tensor(p, dtype=torch.float64, requires_grad=True)
    tt = torch.tensor(t, dtype=torch.float32).view(-1, 1)
    assert plcc(pt, tt) == pytest.approx(stats.pearsonr(p, t.astype(np.float32))[0], abs=1e-6)
    assert srocc(pt, tt) == pytest.approx(stats.spearmanr(p, t)[0], abs=1e-9)
    assert krocc(pt, tt) == pytest.approx(stats.kendalltau(p, t)[0], abs=1e-9)
    assert isinstance(plcc(pt, tt), float)
    out = iqa_metrics(pt, tt)
    assert set(out) == {"plcc", "srocc", "krocc", "rmse"}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_tensors(dtype):
    """Mixed-precision models output bfloat16, which numpy cannot hold ("unsupported ScalarType")."""
    p = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0], dtype=dtype, requires_grad=True)
    t = [1.0, 3.0, 2.0, 5.0, 4.0]
    ref = iqa_metrics(p.detach().double().numpy(), t)
    assert iqa_metrics(p, t) == pytest.approx(ref, abs=1e-12)
    logits = torch.tensor([[2.0, -1.0], [0.5, 1.5], [3.0, 0.0]], dtype=dtype)
    assert accuracy(logits, torch.tensor([0, 1, 1])) == pytest.approx(2 / 3)


def test_accuracy_non_finite_is_an_error():
    """A NaN label never equals a prediction: it would count as wrong (0.5 here), not raise."""
    with pytest.raises(MetricInputError, match="target contains NaN"):
        accuracy([0, 1], [np.nan, 1])
    with pytest.raises(MetricInputError, match="pred contains NaN"):
        accuracy(torch.tensor([[np.nan, 1.0], [0.0, 1.0]]), torch.tensor([0, 1]))
    with pytest.raises(MetricInputError, match="pred contains NaN or infinite"):
        accuracy([0.0, np.inf], [0, 1])
    assert accuracy(np.array(["a", "b"]), np.array(["a", "c"])) == 0.5  # non-numeric labels still work


@pytest.mark.parametrize("fn", [plcc, srocc, krocc])
def test_constant_input_is_an_error(fn):
    with pytest.raises(MetricInputError, match="constant"):
        fn([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0])
    with pytest.raises(MetricInputError, match="constant"):
        fn([1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0])


@pytest.mark.parametrize("fn", [plcc, srocc, krocc, rmse])
def test_bad_inputs_are_errors(fn):
    with pytest.raises(MetricInputError):
        fn([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(MetricInputError, match="NaN"):
        fn([1.0, np.nan, 3.0], [1.0, 2.0, 3.0])
    with pytest.raises(MetricInputError):
        fn([1.0, 2.0, 3.0], [1.0, np.inf, 3.0])
    with pytest.raises(MetricInputError):
        fn([], [])


@pytest.mark.parametrize("fn", [plcc, srocc, krocc])
def test_too_few_items(fn):
    with pytest.raises(MetricInputError):
        fn([1.0], [2.0])


def test_logistic_fit_needs_four_items():
    with pytest.raises(MetricInputError, match="the 4-parameter logistic fit needs at least 4 values, got 3"):
        plcc([1.0, 2.0, 3.0], [1.0, 3.0, 2.0], fit_logistic=True)


def test_a_logistic_fit_collapsed_onto_the_mean_is_undefined_not_a_correlation_of_noise(monkeypatch):
    """The fit may land on a flat curve whose values differ only by rounding (spread ~1e-12):
    PLCC of that noise came out as 0.63 for unrelated data whose plain PLCC is -0.10. (These data
    stalled the usual start; the other starts now fit them: every start is made to collapse.)"""
    import contentiqa.metrics.functional as functional

    rng = np.random.default_rng(2205)
    p, t = rng.normal(size=5), rng.uniform(0, 100, 5)
    assert np.isfinite(plcc(p, t, fit_logistic=True))
    flat = np.full(5, t.mean()) + np.array([0, 1e-12, 0, -1e-12, 0])
    monkeypatch.setattr(functional, "_logistic_fit", lambda p, t, p0: flat)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert 0 < np.ptp(functional.logistic_mapping(p, t)) < 1e-9
        with pytest.raises(MetricInputError, match="mapped pred to a constant"):
            plcc(p, t, fit_logistic=True)


def test_one_run_shows_its_value_without_a_spread():
    from contentiqa.metrics import format_mean_std

    assert format_mean_std(mean_std([{"srocc": 0.8}])) == {"srocc": "0.800"}
    assert format_mean_std(mean_std([{"srocc": 0.8}, {"srocc": 0.9}])) == {"srocc": "0.850 ± 0.071"}
    assert format_mean_std({"srocc": {"mean": 0.8, "std": 0.05}}) == {"srocc": "0.800 ± 0.050"}  # no "n": as before


def test_mean_std_matches_numpy():
    rng = np.random.default_rng(11)
    runs = [{"srocc": float(a), "plcc": float(b), "epochs": 3, "ok": True} for a, b in rng.uniform(0.5, 0.9, (7, 2))]
    out = mean_std(runs)
    s = np.array([r["srocc"] for r in runs])
    assert out["srocc"]["mean"] == pytest.approx(s.mean())
    assert out["srocc"]["std"] == pytest.approx(s.std(ddof=1))
    assert out["srocc"]["n"] == 7
    assert out["plcc"]["std"] == pytest.approx(np.std([r["plcc"] for r in runs], ddof=1))
    assert "ok" not in out  # booleans are not metrics
    assert mean_std([{"srocc": 0.8}])["srocc"]["std"] == 0.0
    with pytest.raises(MetricInputError):
        mean_std([])


def test_mean_std_accepts_numpy_and_torch_scalars():
    """Metrics computed with numpy / torch come back as np.float32 or 0-d tensors: not dropped."""
    runs = [
        {"srocc": np.float32(0.5), "plcc": torch.tensor(0.6), "n_epochs": np.int64(3), "note": "x"},
        {"srocc": np.float32(0.7), "plcc": torch.tensor(0.8), "n_epochs": np.int64(5), "note": "y"},
    ]
    out = mean_std(runs)
    assert out["srocc"]["mean"] == pytest.approx(0.6, abs=1e-6)
    assert out["srocc"]["std"] == pytest.approx(np.std([0.5, 0.7], ddof=1), abs=1e-6)
    assert out["plcc"]["mean"] == pytest.approx(0.7, abs=1e-6)
    assert out["n_epochs"]["mean"] == 4.0
    assert "note" not in out
    # a 0-d tensor's .numpy() is a 0-d array: it was dropped, leaving one run's value as the mean, n=1
    out = mean_std([{"srocc": torch.tensor(0.8).numpy()}, {"srocc": np.array(0.82)}])
    assert out["srocc"]["n"] == 2 and out["srocc"]["mean"] == pytest.approx(0.81)


# -- accumulators (torchmetrics) -----------------------------------------------------------------
def test_accumulators_equal_the_functional_metrics_and_scipy():
    import torch
    from scipy import stats

    from contentiqa.metrics import iqa_accumulators, iqa_metrics

    rng = np.random.default_rng(3)
    pred = rng.normal(size=40)
    target = 0.5 * pred + rng.normal(size=40)
    pred[5] = pred[6]  # a tie: SROCC/KROCC must handle it as scipy does (average ranks, tau-b)
    acc = iqa_accumulators()
    for chunk in np.array_split(np.arange(40), 6):
        acc.update(torch.from_numpy(pred[chunk]), torch.from_numpy(target[chunk]))
    got = {k: float(v) for k, v in acc.compute().items()}
    ref = iqa_metrics(pred, target)
    assert got["srocc"] == pytest.approx(stats.spearmanr(pred, target)[0], abs=1e-6)
    for k in ("plcc", "srocc", "krocc", "rmse"):
        assert got[k] == pytest.approx(ref[k], abs=1e-6), k
    acc.reset()
    acc.update(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 2.0, 1.0]))
    assert float(acc.compute()["srocc"]) == pytest.approx(-1.0, abs=1e-12)


def test_streamed_plcc_of_an_exactly_linear_relation_is_never_above_one():
    """Rounding put it a hair above 1 (1.0000000000000002) for about a quarter of such sets."""
    import torch

    from contentiqa.metrics import iqa_accumulators

    rng = np.random.default_rng(0)
    values = []
    for n in rng.integers(2, 200, size=100):
        t = rng.normal(size=n)
        m = iqa_accumulators(sync_on_compute=False)["plcc"]
        m.update(torch.from_numpy(rng.normal() * t + rng.normal()), torch.from_numpy(t))
        values.append(abs(float(m.compute())))
    assert max(values) <= 1.0 and min(values) > 1 - 1e-12


def test_streamed_srocc_keeps_its_sign_on_a_large_set_of_tied_ratings():
    """torchmetrics summed each tied group's ranks in int32: two groups of 50,000 equal ratings
    wrapped past 2**31 and the streamed SROCC came back with its sign flipped."""
    from contentiqa.metrics import iqa_accumulators, srocc

    rng = np.random.default_rng(0)
    target = np.repeat([0.0, 1.0], 50_000)
    pred = target + rng.normal(size=target.size)
    acc = iqa_accumulators(sync_on_compute=False)
    acc.update(torch.from_numpy(pred), torch.from_numpy(target))
    want = srocc(pred, target)
    assert want > 0.4 and float(acc.compute()["srocc"]) == pytest.approx(want, abs=1e-12)


def test_streamed_krocc_is_right_on_a_large_set():
    """torchmetrics' KROCC squared its pair counts in int64: NaN or a tau near 2 past ~78,000
    items, after a quadratic loop of minutes."""
    from contentiqa.metrics import iqa_accumulators

    rng = np.random.default_rng(0)
    pred = rng.normal(size=100_000)
    target = pred + rng.normal(size=100_000)
    acc = iqa_accumulators()
    for chunk in np.array_split(np.arange(pred.size), 10):
        acc.update(torch.from_numpy(pred[chunk]), torch.from_numpy(target[chunk]))
    assert float(acc.compute()["krocc"]) == pytest.approx(stats.kendalltau(pred, target)[0], abs=1e-9)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "int64"])
def test_accumulators_compute_in_float64_whatever_the_inputs_dtype(dtype):
    """float16 (autocast's output) gave PLCC NaN and RMSE inf; integers raised torch's own error."""
    import torch

    from contentiqa.metrics import iqa_accumulators, iqa_metrics

    p = torch.linspace(0, 1, 200) * (100 if dtype == "int64" else 1)
    t = torch.linspace(0, 100, 200) ** 1.1 / 1.6
    p, t = p.to(getattr(torch, dtype)), t.to(getattr(torch, dtype))
    acc = iqa_accumulators(sync_on_compute=False)
    acc.update(p, t)
    got = {k: float(v) for k, v in acc.compute().items()}
    for k, v in iqa_metrics(p.double().numpy(), t.double().numpy()).items():
        assert got[k] == pytest.approx(v, abs=1e-6), k


def test_row_predictions_return_rows_in_table_order():
    from contentiqa.metrics import RowPredictions

    rows = RowPredictions()
    rows.update([4, 0, 2], [0.4, 0.0, 0.2], [1, 0, 2])
    rows.update([3, 1], [0.3, 0.1])  # no categories: -1
    out = rows.compute()
    assert out["index"].tolist() == [0, 1, 2, 3, 4]
    assert np.allclose(out["score"], [0.0, 0.1, 0.2, 0.3, 0.4])
    assert out["category"].tolist() == [0, -1, 2, -1, 1]
    dup = RowPredictions()
    dup.update([0, 1], [0.1, 0.2])
    dup.update([1], [0.3])
    with pytest.raises(ValueError, match="more than once"):
        dup.compute()
    with pytest.raises(ValueError, match="3 values for 2 rows"):
        RowPredictions().update([0, 1], [0.1, 0.2, 0.3])


def _accumulated(pred, target, chunks: int = 3) -> dict[str, float]:
    """Feed ``iqa_accumulators`` in several updates, as an evaluation loop would."""
    from contentiqa.metrics import iqa_accumulators

    acc = iqa_accumulators(sync_on_compute=False)
    for idx in np.array_split(np.arange(len(pred)), chunks):
        acc.update(torch.as_tensor(pred)[idx], torch.as_tensor(target)[idx])
    return {k: float(v) for k, v in acc.compute().items()}


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["pred", "target"])
def test_accumulators_reject_non_finite_inputs(bad, where):
    """torchmetrics alone returned a score (SROCC 0.4 for a NaN target): refused as the functions do."""
    from contentiqa.metrics import iqa_accumulators

    p, t = np.arange(1.0, 5.0), np.array([1.0, 3.0, 2.0, 4.0])
    (p if where == "pred" else t)[1] = bad
    acc = iqa_accumulators(sync_on_compute=False)
    with pytest.raises(MetricInputError, match=f"{where} contains NaN or infinite values"):
        acc.update(torch.from_numpy(p), torch.from_numpy(t))


@pytest.mark.parametrize("which", ["pred", "target"])
def test_accumulators_reject_constant_inputs(which):
    """A constant vector (over all updates, not one batch) makes the correlations undefined."""
    from contentiqa.metrics import iqa_accumulators

    const, ramp = np.full(8, 0.5), np.arange(8.0)
    p, t = (const, ramp) if which == "pred" else (ramp, const)
    acc = iqa_accumulators(sync_on_compute=False)
    for idx in np.array_split(np.arange(8), 3):
        acc.update(torch.from_numpy(p[idx]), torch.from_numpy(t[idx]))
    for name in ("plcc", "srocc", "krocc"):
        with pytest.raises(MetricInputError, match=f"{name.upper()} is undefined: {which} is constant"):
            acc[name].compute()
    assert float(acc["rmse"].compute()) == pytest.approx(rmse(p, t))  # defined for constant inputs
    # Constant within each batch but not over the whole set: defined, and equal to the functions.
    p = np.repeat([1.0, 2.0, 3.0], 3)
    t = np.arange(9.0)
    got = _accumulated(p, t)
    for k, v in iqa_metrics(p, t).items():
        assert got[k] == pytest.approx(v, abs=1e-6), k


def test_accumulators_accept_column_vectors():
    """(N, 1) scores, as a regression head outputs them, are N items (KROCC raised IndexError)."""
    rng = np.random.default_rng(4)
    p = rng.normal(size=(300, 1))
    t = 0.3 * p + rng.normal(size=(300, 1))
    got = _accumulated(p, t.ravel())
    for k, v in iqa_metrics(p, t).items():
        assert got[k] == pytest.approx(v, abs=1e-6), k
    with pytest.raises(MetricInputError, match="must match"):
        _accumulated(np.zeros((6, 2)), np.arange(6.0), chunks=1)


def test_accumulators_take_arrays_and_lists_as_the_functional_metrics_do():
    """update(numpy array) was AttributeError 'no attribute to', update(list) 'no attribute reshape'."""
    from contentiqa.metrics import iqa_accumulators

    rng = np.random.default_rng(5)
    p, t = rng.normal(size=40), rng.normal(size=40)
    acc = iqa_accumulators()
    acc.update(p[:20], list(t[:20]))
    acc.update(list(p[20:]), t[20:])
    for k, v in iqa_metrics(p, t).items():
        assert float(acc.compute()[k]) == pytest.approx(v, abs=1e-9), k
    with pytest.raises(MetricInputError, match="pred is not numbers"):
        iqa_accumulators().update(["x"] * 3, [1.0, 2.0, 3.0])


def test_accumulators_need_enough_items():
    from contentiqa.metrics import iqa_accumulators

    acc = iqa_accumulators(sync_on_compute=False)
    acc.update(torch.tensor([1.0], dtype=torch.float64), torch.tensor([2.0], dtype=torch.float64))
    acc.update(torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64))  # an empty batch adds nothing
    with pytest.raises(MetricInputError, match="at least 2 values, got 1"):
        acc["srocc"].compute()
    assert float(acc["rmse"].compute()) == pytest.approx(1.0)
    with warnings.catch_warnings(), pytest.raises(MetricInputError, match="at least 1 values, got 0"):
        warnings.simplefilter("ignore")  # torchmetrics warns of compute() before update(): that is the point
        iqa_accumulators(sync_on_compute=False)["rmse"].compute()


def test_accumulators_called_per_batch_keep_their_state_through_a_batch_without_a_value():
    """``metric(preds, target)`` (torchmetrics' forward) on a last batch of one photo raised, and
    the photos accumulated before were lost: compute() then saw that one photo alone."""
    from contentiqa.metrics import iqa_accumulators

    d = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    acc = iqa_accumulators(sync_on_compute=False)
    first = acc(d([0.1, 0.4, 0.3, 0.8]), d([10.0, 35.0, 30.0, 80.0]))
    assert float(first["srocc"]) == pytest.approx(1.0)
    last = acc(d([0.6]), d([50.0]))  # one photo: no correlation of its own
    assert np.isnan(float(last["plcc"])) and float(last["rmse"]) == pytest.approx(49.4)
    with pytest.raises(MetricInputError, match="NaN"):
        acc(d([float("nan")]), d([1.0]))  # refused before anything changed
    p, t = [0.1, 0.4, 0.3, 0.8, 0.6], [10.0, 35.0, 30.0, 80.0, 50.0]
    got = {k: float(v) for k, v in acc.compute().items()}
    for k, v in iqa_metrics(p, t).items():
        assert got[k] == pytest.approx(v, abs=1e-6), k


def test_huge_values_give_the_correlation_and_error_scipy_and_numpy_give():
    """Past ~1e154 the squares overflowed: the streamed PLCC came out 0.0 (scipy: 0.98) and RMSE inf."""
    from contentiqa.metrics import iqa_accumulators
    from contentiqa.metrics.functional import rmse

    p, t = np.array([1e160, 2e160, 3e160]), np.array([1.0, 2.0, 4.0])
    acc = iqa_accumulators()
    acc.update(torch.tensor(p), torch.tensor(t))
    streamed = acc.compute()
    assert float(streamed["plcc"]) == pytest.approx(stats.pearsonr(p, t)[0], rel=1e-9)
    assert rmse(p, t) == pytest.approx(np.sqrt(np.mean(((p - t) / 1e160) ** 2)) * 1e160, rel=1e-12)
    assert rmse(t, t) == 0.0
