"""`contentiqa analyze-intelligibility` and its library (IE-IQA §3.1): equal-interval bins,
per-bin means, Spearman, and the files written."""
from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from contentiqa.analysis.intelligibility import analyze_intelligibility, bin_summary, equal_bins
from contentiqa.cli.main import main


# 12 images. MOS over [10, 70] -> 6 intervals of width 10: [10,20) [20,30) ... [60,70].
MOS = [10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 70]
MOS_BIN = [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]  # by hand: an edge value goes to the upper bin, the max to the last
# Confidences, binned over [0, 1] ('unit'): edges 0, 1/6, 2/6, 3/6, 4/6, 5/6, 1.
CONF = [0.05, 0.10, 0.20, 0.30, 0.40, 0.45, 0.55, 0.60, 0.70, 0.80, 0.90, 0.95]
CONF_BIN = [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]


def test_equal_bins_by_hand():
    idx, edges = equal_bins(MOS, 6)
    np.testing.assert_allclose(edges, [10, 20, 30, 40, 50, 60, 70])
    assert (idx + 1).tolist() == MOS_BIN
    idx, edges = equal_bins([0.0, 0.49, 0.5, 1.5, 2.99, 3.0], 6)  # edges 0, .5, 1, ..., 3
    assert idx.tolist() == [0, 0, 1, 3, 5, 5]
    idx, _ = equal_bins([0.5, -0.1, np.nan, 1.0], 2, value_range=(0.0, 1.0))
    assert idx.tolist() == [1, -1, -1, 1]
    idx, edges = equal_bins([3.0, 3.0], 6)  # a constant: everything in the first bin
    assert idx.tolist() == [0, 0]


def test_bin_summary_means_and_empty_bins():
    idx, edges = equal_bins([0.0, 0.1, 2.9, 3.0], 3)  # edges 0, 1, 2, 3; the middle bin is empty
    s = bin_summary(idx, edges, [1.0, 3.0, 10.0, 20.0], "mos")
    assert s["count"].tolist() == [2, 0, 2]
    assert s["mean_mos"].tolist()[0] == 2.0 and np.isnan(s["mean_mos"][1]) and s["mean_mos"][2] == 15.0


def test_analysis_with_given_confidences_hand_computed():
    table = pd.DataFrame({"image": [f"{i}.png" for i in range(12)], "mos": MOS})
    res = analyze_intelligibility(table, confidences=CONF, confidence_range="unit")
    assert res.per_image["mos_bin"].tolist() == MOS_BIN
    assert res.per_image["confidence_bin"].tolist() == CONF_BIN
    # Mean confidence per MOS bin: pairs (0.05, 0.10), (0.20, 0.30), ...
    np.testing.assert_allclose(res.by_mos_bin["mean_confidence"], [0.075, 0.25, 0.425, 0.575, 0.75, 0.925])
    np.testing.assert_allclose(res.by_mos_bin["mean_mos"], [12.5, 22.5, 32.5, 42.5, 52.5, 65.0])
    # Mean MOS per confidence bin: pairs (10, 15), (20, 25), ...
    np.testing.assert_allclose(res.by_confidence_bin["mean_mos"], [12.5, 22.5, 32.5, 42.5, 52.5, 65.0])
    np.testing.assert_allclose(res.by_confidence_bin["low"], np.arange(6) / 6)
    assert res.by_confidence_bin["count"].tolist() == [2] * 6
    assert res.summary["spearman"] == pytest.approx(1.0)
    # Reversing the confidences reverses the relation.
    res = analyze_intelligibility(table, confidences=CONF[::-1], confidence_range="unit")
    assert res.summary["spearman"] == pytest.approx(-1.0)
    np.testing.assert_allclose(res.by_confidence_bin["mean_mos"], [65.0, 52.5, 42.5, 32.5, 22.5, 12.5])


def _write_dataset(tmp, n=12, broken=False):
    rows = ["image,mos"]
    rng = np.random.default_rng(0)
    for i in range(n):
        # Varied content: a smooth gradient (stripes of varying frequency) plus noise.
        yy, xx = np.mgrid[0:64, 0:80]
        base = 127 + 100 * np.sin(xx / (2 + i) + yy / (3 + i))[..., None] * np.array([1.0, 0.6, 0.3])
        img = np.clip(base + rng.normal(0, 10 * (i % 4), base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(tmp / f"im{i}.png")
        rows.append(f"im{i}.png,{MOS[i]}")
    if broken:
        (tmp / "broken.png").write_bytes(b"not an image at all")
        rows.append("broken.png,33")
    (tmp / "scores.csv").write_text("\n".join(rows) + "\n")
    return tmp / "scores.csv"


def test_cli_writes_all_files_and_bins_are_right(tmp_path, capsys):
    csv = _write_dataset(tmp_path)
    out = tmp_path / "out"
    rc = main(["analyze-intelligibility", str(csv), "--out", str(out), "--quiet"])
    assert rc == 0
    for name in ("intelligibility.csv", "by_mos_bin.csv", "by_confidence_bin.csv", "summary.json", "intelligibility.png"):
        assert (out / name).is_file(), name
    assert not list(out.glob(".*tmp"))  # atomic writes leave no temporaries
    per = pd.read_csv(out / "intelligibility.csv")
    assert len(per) == 12 and per["top1_confidence"].between(0, 1).all()
    assert per["mos_bin"].tolist() == MOS_BIN  # hand computation above
    # Confidence bins against the formula: 6 equal intervals of [min c, max c].
    c = per["top1_confidence"].to_numpy()
    lo, hi = c.min(), c.max()
    expected = np.minimum((np.floor((c - lo) / (hi - lo) * 6)).astype(int), 5) + 1
    assert per["confidence_bin"].tolist() == expected.tolist()
    by_mos = pd.read_csv(out / "by_mos_bin.csv")
    np.testing.assert_allclose(by_mos["mean_confidence"], per.groupby("mos_bin")["top1_confidence"].mean().to_numpy())
    by_conf = pd.read_csv(out / "by_confidence_bin.csv")
    assert by_conf["count"].sum() == 12 and len(by_conf) == 6
    for _, r in by_conf.iterrows():
        sel = per[per["confidence_bin"] == r["bin"]]["mos"]
        if len(sel):
            assert r["mean_mos"] == pytest.approx(sel.mean())
        else:
            assert np.isnan(r["mean_mos"])
    summary = json.loads((out / "summary.json").read_text())
    from scipy.stats import spearmanr

    assert summary["n_scored"] == 12 and summary["n_failed"] == 0
    assert summary["spearman"] == pytest.approx(spearmanr(per["top1_confidence"], per["mos"])[0])
    assert summary["mos_range"] == [10.0, 70.0]
    with Image.open(out / "intelligibility.png") as im:
        assert im.format == "PNG" and im.size[0] > im.size[1]
    assert "Spearman" in capsys.readouterr().out


def test_cli_reports_unreadable_images_and_usage_errors(tmp_path, capsys):
    csv = _write_dataset(tmp_path, n=4, broken=True)
    out = tmp_path / "out"
    rc = main(["analyze-intelligibility", str(csv), "--out", str(out), "--quiet", "--no-plot"])
    assert rc == 1
    err = capsys.readouterr().err
    assert re.search(r"broken\.png: .*not an image", err)  # named, not only counted
    assert err.count("broken.png") == 1  # once: it was "PATH: PATH: not an image"
    per = pd.read_csv(out / "intelligibility.csv")
    bad = per[per["image"].str.endswith("broken.png")].iloc[0]
    assert np.isnan(bad["top1_confidence"]) and bad["mos_bin"] == 0 and "broken.png" not in bad["error"]
    assert json.loads((out / "summary.json").read_text())["n_failed"] == 1
    assert not (out / "intelligibility.png").exists()
    assert main(["analyze-intelligibility", str(tmp_path / "nope.csv"), "--out", str(out)]) == 2
    assert main(["analyze-intelligibility", str(tmp_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"error: {tmp_path} is a folder" in err and "--data /" not in err  # DATA is no --data option here


def test_analysis_reads_a_dataset_as_its_table():
    """An IQADataset is analysed as its own table, under its own name."""
    from contentiqa.data import IQADataset, MOSScale

    table = pd.DataFrame({"image": [f"{i}.png" for i in range(12)], "mos": MOS})
    ds = IQADataset(table.iloc[::-1], MOSScale(0.0, 100.0), name="mine")
    res = analyze_intelligibility(ds, confidences=CONF[::-1], confidence_range="unit")
    assert res.summary["source"] == "mine"
    assert res.per_image["mos"].tolist() == MOS[::-1]
    assert res.summary["spearman"] == pytest.approx(1.0)


# ------------------------------------------------------------ CLI: bad input is a usage error

def _tiny_csv(tmp, mos=(10, 40, 70), missing=(), junk=()):
    """A CSV of 32 x 32 images, the smallest that load_image takes (``missing``: listed, never
    written; ``junk``: not images)."""
    rows = ["image,mos"]
    for i, m in enumerate(mos):
        name = f"t{i}.png"
        if i in junk:
            (tmp / name).write_bytes(b"not an image")
        elif i not in missing:
            Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(tmp / name)
        rows.append(f"{name},{m}")
    (tmp / "t.csv").write_text("\n".join(rows) + "\n")
    return tmp / "t.csv"


# The smallest run the command allows: 32 x 32 inputs, no plot.
CHEAP = ["--quiet", "--no-plot", "--image-size", "32"]


def _no_scoring(monkeypatch):
    """Fail the test if any image is scored (an error must come before the work)."""
    import contentiqa.analysis.intelligibility as lib

    def scored(*a, **k):
        raise AssertionError("images were scored before the error")

    monkeypatch.setattr(lib, "top1_confidence", scored)


def test_cli_skip_missing_is_a_flag(tmp_path, capsys):
    csv = _tiny_csv(tmp_path, missing=(1,))
    out = tmp_path / "out"
    assert main(["analyze-intelligibility", str(csv), "--out", str(out), *CHEAP]) == 2
    err = capsys.readouterr().err
    assert "--skip-missing" in err and "on_missing" not in err and "t1.png" in err
    with pytest.warns(UserWarning, match="t1.png"):
        assert main(["analyze-intelligibility", str(csv), "--out", str(out), *CHEAP, "--skip-missing"]) == 0
    assert json.loads((out / "summary.json").read_text())["n_images"] == 2


@pytest.mark.parametrize("case", ["one row", "header only", "every image bad"])
def test_cli_too_few_images_is_a_usage_error_naming_the_file(tmp_path, capsys, case):
    if case == "one row":
        csv = _tiny_csv(tmp_path, mos=(10,))
    elif case == "header only":
        csv = _tiny_csv(tmp_path, mos=())
    else:
        csv = _tiny_csv(tmp_path, mos=(10, 40), junk=(0, 1))
    assert main(["analyze-intelligibility", str(csv), "--out", str(tmp_path / "out"), *CHEAP]) == 2
    err = capsys.readouterr().err
    assert str(csv) in err and ("two images" in err) and len(err.strip().splitlines()) == 1
    if case == "every image bad":
        assert "t0.png" in err  # the first reason is shown


@pytest.mark.parametrize("where", ["an existing file", "below a file"])
def test_cli_unwritable_out_fails_before_scoring(tmp_path, capsys, monkeypatch, where):
    csv = _tiny_csv(tmp_path)
    out = tmp_path / "t0.png" if where == "an existing file" else tmp_path / "t0.png" / "out"
    _no_scoring(monkeypatch)
    assert main(["analyze-intelligibility", str(csv), "--out", str(out), *CHEAP]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "t0.png" in err


def test_cli_write_failure_is_a_usage_error(tmp_path, capsys, monkeypatch):
    import errno

    import contentiqa.analysis.intelligibility as lib

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(lib, "write_intelligibility_analysis", full)
    csv = _tiny_csv(tmp_path)
    assert main(["analyze-intelligibility", str(csv), "--out", str(tmp_path / "out"), *CHEAP]) == 2
    assert "cannot write --out" in capsys.readouterr().err


@pytest.mark.parametrize("option, value", [("--batch-size", "0"), ("--image-size", "0"), ("--workers", "-1"),
                                           ("--backbone", "bogus")])
def test_cli_bad_options_are_usage_errors(tmp_path, capsys, monkeypatch, option, value):
    csv = _tiny_csv(tmp_path)
    _no_scoring(monkeypatch)
    args = ["analyze-intelligibility", str(csv), "--out", str(tmp_path / "out"), *CHEAP, option, value]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert option in err
    if option == "--backbone":
        assert "efficientnet_lite0" in err  # the choices are listed


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe"])
def test_cli_unreadable_csv_is_named(tmp_path, capsys, content):
    csv = tmp_path / "scores.csv"
    csv.write_bytes(content)
    assert main(["analyze-intelligibility", str(csv), "--out", str(tmp_path / "out"), *CHEAP]) == 2
    assert str(csv) in capsys.readouterr().err


def test_summary_json_writes_nan_as_null(tmp_path):
    """Two images: Spearman's p-value is NaN, which json.dumps would write as bare NaN."""
    from contentiqa.analysis.intelligibility import write_intelligibility_analysis

    table = pd.DataFrame({"image": ["a.png", "b.png"], "mos": [10.0, 70.0]})
    res = analyze_intelligibility(table, confidences=[0.2, 0.6])
    res.summary["extra"] = [float("inf"), {"x": float("-inf")}]
    write_intelligibility_analysis(res, tmp_path, plot=False)

    def reject(constant):
        raise ValueError(f"not JSON: {constant}")

    summary = json.loads((tmp_path / "summary.json").read_text(), parse_constant=reject)
    assert summary["spearman_p"] is None and summary["extra"] == [None, {"x": None}]
    assert summary["spearman"] == pytest.approx(1.0)


def test_a_run_without_plot_removes_an_earlier_plot_and_labels_tell_narrow_bins_apart(tmp_path):
    """--no-plot left the earlier run's plot beside the new numbers; on a 0-1 MOS scale the MOS
    interval labels read '[0.5, 0.5)' twice (one decimal, whatever the bins' width)."""
    from contentiqa.analysis.intelligibility import _interval_labels, write_intelligibility_analysis

    table = pd.DataFrame({"image": list("abcdef"), "mos": [0.41, 0.44, 0.47, 0.5, 0.53, 0.58]})
    res = analyze_intelligibility(table, confidences=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    labels = _interval_labels(res.by_mos_bin, 1)
    assert len(set(labels)) == len(labels) and labels[0] == "[0.410, 0.438)"
    assert _interval_labels(pd.DataFrame({"low": [0.0, 50.0], "high": [50.0, 100.0]}), 1) == ["[0.0, 50.0)", "[50.0, 100.0]"]
    write_intelligibility_analysis(res, tmp_path, plot=True)
    assert (tmp_path / "intelligibility.png").is_file()
    write_intelligibility_analysis(res, tmp_path, plot=False)
    assert not (tmp_path / "intelligibility.png").exists()


def test_cli_refuses_an_out_folder_whose_results_would_replace_the_data(tmp_path, capsys, monkeypatch):
    csv = _tiny_csv(tmp_path)
    data = tmp_path / "intelligibility.csv"
    csv.rename(data)
    kept = data.read_text()
    _no_scoring(monkeypatch)
    assert main(["analyze-intelligibility", str(data), "--out", str(tmp_path), *CHEAP]) == 2
    assert "would write its intelligibility.csv over DATA" in capsys.readouterr().err and data.read_text() == kept
