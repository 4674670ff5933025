"""Dataset loaders on tiny fixtures in each release's exact layout, plus the real LIVE
Challenge annotation files when ../shared is present."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from contentiqa.data import (
    IQADataset,
    MissingFilesError,
    MOSScale,
    dataset_scale,
    list_datasets,
    load_dataset,
)

from conftest import write_image


@pytest.fixture
def xlsx():
    """The SPAQ / CID2013 / BID annotations are Excel files: writing them needs openpyxl."""
    pytest.importorskip("openpyxl")


def _check_item(ds: IQADataset, i: int, mos: float):
    item = ds[i]
    assert item["image"].mode == "RGB"
    assert item["mos"].dtype == torch.float32
    assert item["mos"].item() == pytest.approx(mos, abs=1e-4)
    want = (mos - ds.scale.low) / (ds.scale.high - ds.scale.low)
    assert item["target"].item() == pytest.approx(want, abs=1e-6)
    assert 0.0 <= item["target"].item() <= 1.0
    assert item["index"] == i
    return item


def _same_paths(got, want):
    assert [os.path.realpath(p) for p in got] == [os.path.realpath(str(p)) for p in want]


# ---------------------------------------------------------------------------- KonIQ-10k


@pytest.fixture
def koniq_root(tmp_path):
    root = tmp_path / "koniq10k"
    names = ["826373.jpg", "997832.jpg", "1001.jpg"]
    mos = [3.92, 1.5, 4.71]
    sd = [0.5, 0.7, 0.4]
    rows = []
    for i, (n, m, s) in enumerate(zip(names, mos, sd)):
        write_image(root / "1024x768" / n, seed=i)
        c = [1, 2, 30, 50, 17]
        rows.append({"image_name": n, "c1": c[0], "c2": c[1], "c3": c[2], "c4": c[3], "c5": c[4],
                     "c_total": sum(c), "MOS": m, "SD": s, "MOS_zscore": 50 + 10 * i})
    pd.DataFrame(rows).to_csv(root / "koniq10k_scores_and_distributions.csv", index=False)
    return root, names, mos, sd


def test_koniq10k(koniq_root):
    root, names, mos, sd = koniq_root
    ds = load_dataset("koniq10k", root)
    assert len(ds) == 3
    assert ds.scale == MOSScale(1.0, 5.0)
    t = ds.table
    assert list(t.columns[:3]) == ["image", "mos", "mos_std"]
    _same_paths(t["image"], [root / "1024x768" / n for n in names])
    assert all(os.path.isabs(p) for p in t["image"])
    np.testing.assert_allclose(t["mos"], mos)  # MOS, not MOS_zscore
    np.testing.assert_allclose(t["mos_std"], sd)
    item = _check_item(ds, 2, 4.71)
    assert item["category"].item() == -1
    assert item["target"].item() == pytest.approx((4.71 - 1) / 4)


def test_a_release_sheets_cell_that_is_no_number_is_named_with_its_file_column_and_row(koniq_root):
    """A non-numeric SD said "could not convert string to float: 'abc'", naming no file or column."""
    root, *_ = koniq_root
    sheet = root / "koniq10k_scores_and_distributions.csv"
    table = pd.read_csv(sheet)
    table["SD"] = table["SD"].astype(object)
    table.loc[1, "SD"] = "abc"
    table.loc[2, "SD"] = None  # an empty cell is no value, not an error
    table.to_csv(sheet, index=False)
    lines = sheet.read_text().splitlines(keepends=True)
    sheet.write_text("".join([lines[0], "\n", *lines[1:]]))  # a blank line, which the reader skips
    with pytest.raises(ValueError, match=r"koniq10k_scores_and_distributions\.csv: column 'SD' holds 1 cell\(s\) "
                                         r"that are no number \(data row 2: 'abc'\)"):
        load_dataset("koniq10k", root)
    table.loc[1, "SD"] = 0.25
    table.to_csv(sheet, index=False)
    assert load_dataset("koniq10k", root).table["mos_std"].tolist()[:2] == [0.5, 0.25]


def test_koniq10k_missing_and_skip(koniq_root):
    root, names, *_ = koniq_root
    (root / "1024x768" / names[1]).unlink()
    with pytest.raises(MissingFilesError) as info:
        load_dataset("koniq10k", root)
    assert len(info.value.paths) == 1 and info.value.paths[0].endswith(names[1])
    assert names[1] in str(info.value)
    with pytest.warns(UserWarning, match="skipping 1"):
        ds = load_dataset("koniq10k", root, on_missing="skip")
    assert len(ds) == 2
    assert not any(p.endswith(names[1]) for p in ds.table["image"])
    assert len(load_dataset("koniq10k", root, on_missing="keep")) == 3
    with pytest.raises(ValueError):
        load_dataset("koniq10k", root, on_missing="ignore")


def test_koniq10k_half_resolution_folder(koniq_root):
    root, names, *_ = koniq_root
    (root / "1024x768").rename(root / "512x384")
    with pytest.warns(UserWarning, match="reading the 512x384 images instead"):
        ds = load_dataset("koniq10k", root)  # asked for 1024x768, only 512x384 present
    _same_paths(ds.table["image"], [root / "512x384" / n for n in names])
    assert len(load_dataset("koniq10k", root, resolution="512x384")) == 3


def test_koniq10k_asked_resolution_is_checked_and_another_one_said(koniq_root):
    """Any value was accepted, and the other folder read without a word (four times the pixels)."""
    root, names, *_ = koniq_root
    with pytest.warns(UserWarning, match="reading the 1024x768 images instead"):
        load_dataset("koniq10k", root, resolution="512x384")
    with pytest.raises(ValueError, match="resolution '512X384' is not one of the release's folders"):
        load_dataset("koniq10k", root, resolution="512X384")


def test_koniq10k_official_sets_give_the_split_column(koniq_root):
    """The authors' training/validation/test sets (koniq10k_distributions_sets.csv) could not be
    loaded: `protocol: official` failed for want of a split column."""
    from contentiqa.data import make_splits

    root, names, mos, _ = koniq_root
    pd.DataFrame({"image_name": names, "MOS": [77.4, 20.0, 90.1], "SD": [10.0, 12.0, 9.0],
                  "set": ["training", "validation", "test"]}).to_csv(root / "koniq10k_distributions_sets.csv", index=False)
    sets = root / "koniq10k_distributions_sets.csv"
    sets.write_text(sets.read_text() + ",,,\n")  # a spreadsheet's trailing empty row, as the scores file may have
    t = load_dataset("koniq10k", root).table
    assert list(t["split"]) == ["train", "val", "test"]
    np.testing.assert_allclose(t["mos"], mos)  # the scores file's 1-5 MOS, not the sets file's 0-100
    more = pd.concat([t] * 4, ignore_index=True).assign(image=[f"/d/{i}.jpg" for i in range(12)])
    split = make_splits(more, "official", 0)
    assert len(split.parts["test"]) == 4 and len(split.parts["val"]) == 4
    (root / "koniq10k_distributions_sets.csv").write_text("image_name,set\n826373.jpg,train\n")
    with pytest.raises(ValueError, match=r"unknown set value\(s\) \['train'\]"):
        load_dataset("koniq10k", root)


# ---------------------------------------------------------------------------- SPAQ

SCENES = ["Animal", "Cityscape", "Human", "Indoor scene", "Landscape", "Night scene", "Plant", "Still-life", "Others"]


@pytest.fixture
def spaq_root(tmp_path, xlsx):
    root = tmp_path / "SPAQ"
    ann = root / "Annotations"
    ann.mkdir(parents=True)
    names = ["00001.jpg", "00002.jpg", "00003.jpg", "00004.jpg"]
    mos = [42.0, 77.5, 13.25, 60.0]
    for i, n in enumerate(names):
        write_image(root / "TestImage" / n, seed=i)
    pd.DataFrame({
        "Image name": names, "MOS": mos,
        "Brightness": [40.0, 50, 60, 70], "Colorfulness": [1.0, 2, 3, 4], "Contrast": [5.0, 6, 7, 8],
        "Noisiness": [9.0, 10, 11, 12], "Sharpness": [13.0, 14, 15, 16],
    }).to_excel(ann / "MOS and Image attribute scores.xlsx", index=False)
    labels = np.zeros((4, len(SCENES)), int)
    labels[0, SCENES.index("Night scene")] = 1
    labels[1, SCENES.index("Animal")] = 1
    labels[2, SCENES.index("Indoor scene")] = 1
    labels[2, SCENES.index("Human")] = 1  # two scenes marked
    labels[3, SCENES.index("Still-life")] = 1
    scene_df = pd.DataFrame(labels, columns=SCENES)
    scene_df.insert(0, "Image name", names)
    scene_df.to_excel(ann / "Scene category labels.xlsx", index=False)
    return root, names, mos


def test_spaq(spaq_root):
    root, names, mos = spaq_root
    ds = load_dataset("spaq", root)
    assert len(ds) == 4
    assert ds.scale == MOSScale(0.0, 100.0)
    t = ds.table
    _same_paths(t["image"], [root / "TestImage" / n for n in names])
    np.testing.assert_allclose(t["mos"], mos)
    np.testing.assert_allclose(t["brightness"], [40, 50, 60, 70])
    np.testing.assert_allclose(t["sharpness"], [13, 14, 15, 16])
    cats = [str(c).lower() for c in t["category"]]
    assert cats[0] == "night scene"
    assert cats[1] == "animal"
    assert cats[2] in ("human", "indoor scene")  # two scenes marked: one of them
    assert cats[3] == "artifact"  # SPAQ's still-life, in IQA-CR's name as every table's categories
    # and every scene marked, so that a prediction naming the other is not counted wrong
    assert list(t["categories"]) == ["night scene", "animal", "human|indoor scene", "artifact"]
    assert len(ds.categories) == 4
    item = _check_item(ds, 1, 77.5)
    assert ds.categories[item["category"].item()].lower() == "animal"
    assert item["target"].item() == pytest.approx(0.775)


def test_spaq_sheets_with_empty_rows_read_as_without_them(spaq_root):
    """An empty row in either sheet (a spreadsheet's, or its csv export's trailing ',,,'):
    the scene sheet's failed with "cannot convert float NaN to integer", the MOS sheet's
    became an image named 'nan' refused for its empty MOS."""
    root, names, mos = spaq_root
    ann = root / "Annotations"
    for sheet in ("MOS and Image attribute scores.xlsx", "Scene category labels.xlsx"):
        df = pd.read_excel(ann / sheet)
        pd.concat([df.iloc[:2], pd.DataFrame([[np.nan] * df.shape[1]], columns=df.columns), df.iloc[2:]],
                  ignore_index=True).to_excel(ann / sheet, index=False)
    t = load_dataset("spaq", root).table
    _same_paths(t["image"], [root / "TestImage" / n for n in names])
    np.testing.assert_allclose(t["mos"], mos)
    assert [str(c).lower() for c in t["category"]][3] == "artifact"


def test_koniq10k_sd_stays_with_its_image_after_an_empty_row(koniq_root):
    """The SD column was aligned by the filtered frame's index: after an empty row, each image
    got the SD of the row before it."""
    root, names, mos, sd = koniq_root
    csv = root / "koniq10k_scores_and_distributions.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join([lines[0], ",,,,,,,,,", *lines[1:]]) + "\n")
    t = load_dataset("koniq10k", root).table
    np.testing.assert_allclose(t["mos"], mos)
    np.testing.assert_allclose(t["mos_std"], sd)


def test_spaq_without_scene_sheet(spaq_root):
    root, names, mos = spaq_root
    (root / "Annotations" / "Scene category labels.xlsx").unlink()
    ds = load_dataset("spaq", root)
    assert "category" not in ds.table
    assert ds[0]["category"].item() == -1


# ---------------------------------------------------------------------------- CID2013


@pytest.mark.parametrize("spelling", [lambda n: n.upper(), lambda n: n[:-4], lambda n: int(n[:-4])])
def test_spaq_scene_sheet_may_spell_names_otherwise(spaq_root, spelling):
    root, names, _ = spaq_root
    sheet = root / "Annotations" / "Scene category labels.xlsx"
    scenes = pd.read_excel(sheet)
    scenes["Image name"] = [spelling(n) for n in names]
    scenes.to_excel(sheet, index=False)
    assert load_dataset("spaq", root).table["category"].notna().all()


def test_cid2013(tmp_path, xlsx):
    root = tmp_path / "CID2013"
    ids = ["IS1_C01_D01", "IS1_C02_D01", "IS1_C03_D02"]
    mos = [55.5, 12.0, 88.25]
    for i, s in enumerate(ids):
        write_image(root / "IS1" / "co1" / f"{s}.jpg", seed=i)
    pd.DataFrame({"Source ID": ids, "Image set": ["IS1"] * 3, "Realignment MOS": mos}).to_excel(
        root / "CID2013 data - checkpoint.xlsx", index=False)
    ds = load_dataset("cid2013", root)
    assert len(ds) == 3
    assert ds.scale == MOSScale(0.0, 100.0)
    _same_paths(ds.table["image"], [root / "IS1" / "co1" / f"{s}.jpg" for s in ids])
    np.testing.assert_allclose(ds.table["mos"], mos)
    _check_item(ds, 2, 88.25)
    write_image(root / "IS2" / "co8" / f"{ids[0]}.jpg", seed=9)  # the same name in another folder
    with pytest.raises(ValueError, match=f"two images are named {ids[0]}"):
        load_dataset("cid2013", root)
    (root / "IS2" / "co8" / f"{ids[0]}.jpg").unlink()
    (root / "IS1" / "co1" / f"{ids[0]}.jpg").unlink()
    with pytest.raises(MissingFilesError, match=ids[0]):
        load_dataset("cid2013", root)


# ---------------------------------------------------------------------------- BID


def test_bid(tmp_path, xlsx):
    root = tmp_path / "BID"
    nums = [1, 2, 10]
    grades = [3.2, 0.8, 4.9]
    for n in nums:
        write_image(root / "ImageDatabase" / f"DatabaseImage{n:04d}.JPG", seed=n, fmt="JPEG")
    pd.DataFrame({"Image Number": nums, "Average Subjective Grade": grades}).to_excel(
        root / "DatabaseGrades.xlsx", index=False)
    ds = load_dataset("bid", root)
    assert len(ds) == 3
    assert ds.scale == MOSScale(0.0, 5.0)
    _same_paths(ds.table["image"], [root / "ImageDatabase" / f"DatabaseImage{n:04d}.JPG" for n in nums])
    np.testing.assert_allclose(ds.table["mos"], grades)
    _check_item(ds, 1, 0.8)
    (root / "ImageDatabase" / "DatabaseImage0010.JPG").unlink()
    with pytest.raises(MissingFilesError, match="DatabaseImage0010"):
        load_dataset("bid", root)


# ---------------------------------------------------------------------------- LIVE Challenge


def _write_livec_mats(data_dir: Path, names, mos, std):
    from scipy.io import savemat

    data_dir.mkdir(parents=True, exist_ok=True)
    cells = np.empty((len(names), 1), dtype=object)
    for i, n in enumerate(names):
        cells[i, 0] = np.array([n])
    savemat(data_dir / "AllImages_release.mat", {"AllImages_release": cells})
    savemat(data_dir / "AllMOS_release.mat", {"AllMOS_release": np.asarray(mos, float).reshape(1, -1)})
    savemat(data_dir / "AllStdDev_release.mat", {"AllStdDev_release": np.asarray(std, float).reshape(1, -1)})


@pytest.fixture
def livec_root(tmp_path):
    root = tmp_path / "ChallengeDB_release"
    names = ["t1.bmp", "t2.bmp", "3.bmp", "10.JPG", "1000.JPG"]
    mos = [63.96, 25.3, 48.0, 71.5, 5.25]
    std = [18.4, 13.7, 20.1, 15.0, 9.9]
    _write_livec_mats(root / "Data", names, mos, std)
    write_image(root / "Images" / "trainingImages" / "t1.bmp", seed=1)
    write_image(root / "Images" / "trainingImages" / "t2.png", seed=2)  # a BMP converted to PNG
    write_image(root / "Images" / "3.bmp", seed=3)
    write_image(root / "Images" / "10.JPG", seed=10, fmt="JPEG")
    write_image(root / "Images" / "1000.JPG", seed=11, fmt="JPEG")
    return root, names, mos, std


def test_livec(livec_root):
    root, names, mos, std = livec_root
    ds = load_dataset("livec", root)
    assert len(ds) == 5
    assert ds.scale == MOSScale(0.0, 100.0)
    t = ds.table
    _same_paths(t["image"], [
        root / "Images" / "trainingImages" / "t1.bmp",
        root / "Images" / "trainingImages" / "t2.png",
        root / "Images" / "3.bmp",
        root / "Images" / "10.JPG",
        root / "Images" / "1000.JPG",
    ])
    np.testing.assert_allclose(t["mos"], mos)
    np.testing.assert_allclose(t["mos_std"], std)
    _check_item(ds, 0, 63.96)
    item = _check_item(ds, 3, 71.5)
    assert item["image"].size == (48, 40)


def test_livec_missing(livec_root):
    root, *_ = livec_root
    (root / "Images" / "3.bmp").unlink()
    with pytest.raises(MissingFilesError) as info:
        load_dataset("livec", root)
    assert [Path(p).name for p in info.value.paths] == ["3.bmp"]
    with pytest.warns(UserWarning):
        ds = load_dataset("livec", root, on_missing="skip")
    assert len(ds) == 4
    assert 48.0 not in ds.table["mos"].tolist()


def test_livec_inconsistent_mats(tmp_path):
    root = tmp_path / "livec"
    _write_livec_mats(root / "Data", ["a.bmp", "b.bmp"], [1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="2 names, 3 MOS"):
        load_dataset("livec", root, on_missing="keep")


# ---------------------------------------------------------------------------- generic CSV


def test_csv_relative_paths_and_optional_columns(tmp_path):
    root = tmp_path / "mydata"
    write_image(root / "imgs" / "a.png", seed=1)
    write_image(root / "imgs" / "b.png", seed=2)
    write_image(root / "c.jpg", seed=3, fmt="JPEG")
    csv = root / "labels.csv"
    csv.write_text(
        "image,mos,mos_std,category\n"
        "imgs/a.png,2.5,0.3,portrait\n"
        "imgs/b.png,4.0,,landscape\n"
        "c.jpg,1.0,0.1, portrait \n"
    )
    ds = load_dataset("csv", csv)
    assert len(ds) == 3
    assert ds.scale == MOSScale(1.0, 5.0)  # guessed from values within 1..5
    t = ds.table
    _same_paths(t["image"], [root / "imgs" / "a.png", root / "imgs" / "b.png", root / "c.jpg"])
    assert t["mos_std"].isna().tolist() == [False, True, False]
    assert list(t["category"]) == ["portrait", "landscape", "portrait"]
    assert ds.categories == ["landscape", "portrait"]
    item = _check_item(ds, 0, 2.5)
    assert item["category"].item() == 1
    assert item["target"].item() == pytest.approx(0.375)
    # A folder with exactly one CSV works as root too.
    assert len(load_dataset("csv", root)) == 3


def test_csv_categories_are_read_in_one_spelling(tmp_path):
    """SPAQ's and any case's spellings become IQA-CR's, placeholders no label, as label files and
    label-content read them: training used to drop "Animal" rows from the content loss unsaid."""
    root = tmp_path / "d"
    for i in range(5):
        write_image(root / f"{i}.png", seed=i)
    (root / "d.csv").write_text("image,mos,category\n0.png,1,Animal\n1.png,2,Still-Life\n2.png,3,indoor_scene\n"
                                "3.png,4,NA\n4.png,5,portrait\n")
    t = load_dataset("csv", root / "d.csv").table
    assert t["category"].tolist()[:3] == ["animal", "artifact", "indoor scene"]
    assert pd.isna(t["category"][3]) and t["category"][4] == "portrait"  # a vocabulary of one's own is kept


def test_csv_declared_range(tmp_path):
    write_image(tmp_path / "a.png")
    write_image(tmp_path / "b.png", seed=1)
    csv = tmp_path / "scores.csv"
    csv.write_text("# mos_range: 1 5\nimage,mos\na.png,2\nb.png,3\n")
    ds = load_dataset("csv", csv)
    assert ds.scale == MOSScale(1.0, 5.0)
    assert ds.table["mos"].tolist() == [2.0, 3.0]
    csv.write_text("# mos_range: 0 10\nimage,mos\na.png,2\nb.png,3\n")
    assert load_dataset("csv", csv).scale == MOSScale(0.0, 10.0)
    # Keyword argument wins over the comment.
    assert load_dataset("csv", csv, mos_range=(0, 100)).scale == MOSScale(0.0, 100.0)


@pytest.mark.parametrize("values,scale", [
    ([1.2, 4.8], (1.0, 5.0)),
    ([0.0, 4.5], (0.0, 5.0)),
    ([0.05, 0.93], (0.0, 1.0)),
    ([3.5, 92.0], (0.0, 100.0)),
])
def test_csv_guessed_scales(tmp_path, values, scale):
    write_image(tmp_path / "a.png")
    write_image(tmp_path / "b.png", seed=1)
    csv = tmp_path / "s.csv"
    csv.write_text(f"image,mos\na.png,{values[0]}\nb.png,{values[1]}\n")
    assert load_dataset("csv", csv).scale == MOSScale(*scale)


def test_csv_errors(tmp_path):
    csv = tmp_path / "bad.csv"
    csv.write_text("path,score\na.png,3\n")
    with pytest.raises(ValueError, match="image"):
        load_dataset("csv", csv, on_missing="keep")
    csv.write_text("image,mos\na.png,3\na.png,4\n")
    with pytest.raises(ValueError, match="twice"):
        load_dataset("csv", csv, on_missing="keep")
    csv.write_text(f"image,mos\na.png,3\n{tmp_path}//./a.png,4\n")  # one photo spelt two ways: a split could part them
    with pytest.raises(ValueError, match="twice"):
        load_dataset("csv", csv, on_missing="keep")
    csv.write_text("image,mos\na.png,3\nb.png,\n")
    with pytest.raises(ValueError, match="empty MOS"):
        load_dataset("csv", csv, on_missing="keep")
    csv.write_text("image,mos\na.png,3\nb.png,4\n")
    with pytest.raises(MissingFilesError) as info:
        load_dataset("csv", csv)
    assert sorted(Path(p).name for p in info.value.paths) == ["a.png", "b.png"]


@pytest.mark.parametrize("first,scale", [
    ("# mos_range: 0-10", (0.0, 10.0)), ("# mos_range: 0 1e2", (0.0, 100.0)), ("# mos_range=1,5", (1.0, 5.0)),
    ("\ufeff# mos_range: 0 10", (0.0, 10.0)),  # a spreadsheet's byte-order mark before the comment
    ("# mos_range: 0 9,", (0.0, 9.0)), ("# mos_range: 1, 5;;", (1.0, 5.0)),  # and the empty cells it saves after it
    ("# mos_range: 3 3", "is empty"), ("# mos_range: 0 .. 10", "cannot read the rating scale"),
    # other spellings of the name were passed over without a word, the scale then guessed (1-5)
    ("# MOS_RANGE: 0 10", (0.0, 10.0)), ("# mos range: 0 10", (0.0, 10.0)), ("# Mos-Range: 0 10", (0.0, 10.0)),
    ("# MOS range 0 .. 10", "cannot read the rating scale"),
])
def test_csv_declared_range_forms_and_errors(tmp_path, first, scale):
    write_image(tmp_path / "a.png")
    write_image(tmp_path / "b.png", seed=1)
    csv = tmp_path / "r.csv"
    csv.write_text(f"{first}\nimage,mos\na.png,3\nb.png,3.5\n", encoding="utf-8")
    if isinstance(scale, str):
        with pytest.raises(ValueError, match=scale):
            load_dataset("csv", csv)
    else:
        assert load_dataset("csv", csv).scale == MOSScale(*scale)


def test_csv_columns_are_read_in_any_case(tmp_path):
    """A 'Split' column was kept as an extra one: its official test rows went to training."""
    for i in range(3):
        write_image(tmp_path / f"{i}.png", seed=i)
    csv = tmp_path / "s.csv"
    csv.write_text("Image, MOS ,Split,Category,Notes\n0.png,3,train,Animal,a\n1.png,4,test,plant,b\n2.png,2,train,,c\n")
    t = load_dataset("csv", csv).table
    assert t["split"].tolist() == ["train", "test", "train"] and t["category"].tolist()[:2] == ["animal", "plant"]
    assert t["Notes"].tolist() == ["a", "b", "c"]  # a column of one's own keeps its name
    # spelt the same twice too: pandas reads the second as 'split.1', and the first alone was used
    for header, twice in (("image,mos,split,Split", "split"), ("image,mos,split,split", "split"),
                          ("image,mos,mos,split", "mos"), ("\nimage,mos,mos,split", "mos")):  # (after a blank line)
        csv.write_text(f"{header}\n0.png,3,train,test\n1.png,4,test,test\n")
        with pytest.raises(ValueError, match=rf"s\.csv: column\(s\) \['{twice}'\] given twice"):
            load_dataset("csv", csv)
    csv.write_text("image,mos,Notes,Notes\n0.png,3,a,b\n")  # a column of one's own, twice: left as pandas reads it
    assert load_dataset("csv", csv).table[["Notes", "Notes.1"]].values.tolist() == [["a", "b"]]


def test_csv_image_names_are_read_as_written(tmp_path):
    """Files named '0001' or 'NA' were read as the path '1' and as an empty cell; rows ending in a
    comma had every cell shifted one column left (the MOS taken for the file name)."""
    for name in ("0001", "NA", "null"):
        write_image(tmp_path / name, fmt="PNG")
    for rows in ("0001,35\nNA,60\nnull,50\n", "0001,35,\nNA,60,\nnull,50,\n"):
        (tmp_path / "n.csv").write_text("image,mos\n" + rows)
        t = load_dataset("csv", tmp_path / "n.csv").table
        _same_paths(t["image"], [tmp_path / "0001", tmp_path / "NA", tmp_path / "null"])
        assert t["mos"].tolist() == [35, 60, 50]
    # a cell beyond the header's (a decimal comma) is refused, not dropped: 3,5 was read as 3
    (tmp_path / "n.csv").write_text("image,mos\n0001,3,5\nNA,4,2\nnull,2,75\n")
    with pytest.raises(ValueError, match=r"n\.csv: a row has more cells than the header names"):
        load_dataset("csv", tmp_path / "n.csv")


def test_csv_that_is_not_utf8_or_empty_names_the_file(tmp_path):
    csv = tmp_path / "l.csv"
    csv.write_bytes("image,mos\n\u00e9.png,3\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"l\.csv: cannot read as a UTF-8 CSV"):
        load_dataset("csv", csv)
    csv.write_text("")
    with pytest.raises(ValueError, match=r"l\.csv: cannot read as a UTF-8 CSV"):
        load_dataset("csv", csv)


def test_a_release_with_bad_cells_or_missing_sheets_is_named(koniq_root, tmp_path):
    koniq_root = koniq_root[0]
    sheet = koniq_root / "koniq10k_scores_and_distributions.csv"
    table = pd.read_csv(sheet)
    table.to_csv(sheet, index=False)
    with open(sheet, "a") as f:
        f.write(",,\n")  # a trailing empty row, as spreadsheets leave
    assert len(load_dataset("koniq10k", koniq_root, on_missing="keep")) == len(table)
    table["MOS"] = table["MOS"].astype(object)
    table.loc[0, "MOS"] = "3,1"  # a decimal comma
    table.to_csv(sheet, index=False)
    with pytest.raises(ValueError, match=r"non-numeric MOS.*'3,1'"):
        load_dataset("koniq10k", koniq_root, on_missing="keep")
    (tmp_path / "lv" / "Images").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="AllImages_release.mat"):
        load_dataset("livec", tmp_path / "lv")


def test_a_released_layout_under_a_relative_root_gives_absolute_paths(koniq_root, monkeypatch):
    koniq_root = koniq_root[0]
    monkeypatch.chdir(koniq_root.parent)
    table = load_dataset("koniq10k", koniq_root.name, on_missing="keep").table
    assert all(os.path.isabs(p) for p in table["image"])


# ---------------------------------------------------------------------------- general


def test_registry_and_errors(tmp_path):
    assert {"livec", "koniq10k", "spaq", "cid2013", "bid", "csv"} <= set(list_datasets())
    assert dataset_scale("koniq10k") == MOSScale(1.0, 5.0)
    with pytest.raises(ValueError, match="livec"):
        load_dataset("no_such_dataset", tmp_path)
    with pytest.raises(FileNotFoundError):
        load_dataset("livec", tmp_path / "absent")


def test_transform_and_subset(koniq_root):
    root, names, mos, _ = koniq_root
    ds = load_dataset("koniq10k", root, transform=lambda im: torch.zeros(3, im.size[1], im.size[0]))
    assert ds[0]["image"].shape == (3, 40, 48)
    sub = ds.subset([2, 0])
    assert len(sub) == 2
    assert sub[0]["mos"].item() == pytest.approx(mos[2])
    assert sub.scale == ds.scale


def test_mos_scale_round_trip():
    s = MOSScale(1.0, 5.0)
    np.testing.assert_allclose(s.normalize([1, 3, 5]), [0, 0.5, 1])
    np.testing.assert_allclose(s.denormalize(s.normalize([1.7, 4.2])), [1.7, 4.2])
    inv = MOSScale(0.0, 10.0, higher_is_better=False)
    np.testing.assert_allclose(inv.normalize([0, 10]), [1, 0])
    np.testing.assert_allclose(inv.denormalize(inv.normalize([2.5])), [2.5])


# ---------------------------------------------------------------------------- real data


@pytest.mark.shared
def test_real_livec_release_annotations(shared_dir):
    root = shared_dir / "clive-format"
    if not (root / "Data" / "AllImages_release.mat").is_file():
        pytest.skip(f"LIVE Challenge .mat files not found at {root / 'Data'}")
    ds = load_dataset("livec", root, on_missing="keep")
    assert len(ds) == 1169
    first = ds.table.iloc[0]
    assert Path(first["image"]).stem == "t1"
    assert "trainingImages" in first["image"]
    assert first["mos"] == pytest.approx(63.963406, abs=1e-5)
    assert 0 <= ds.table["mos"].min() and ds.table["mos"].max() <= 100
    assert ds.table["mos_std"].notna().all()
    with pytest.raises(MissingFilesError) as info:
        load_dataset("livec", root)
    assert len(info.value.paths) == 1169


@pytest.mark.shared
def test_real_clive_dev_csv(shared_dir):
    csv = shared_dir / "clive-dev" / "scores.csv"
    if not csv.is_file():
        pytest.skip(f"clive-dev scores not found at {csv}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every listed image exists
        ds = load_dataset("csv", csv)
    assert len(ds) == 878
    assert ds.scale == MOSScale(0.0, 100.0)
    assert 0 <= ds.table["mos"].min() < ds.table["mos"].max() <= 100
    assert ds.table["mos"].max() > 5  # really the 0-100 scale
    assert all(Path(p).is_file() for p in ds.table["image"][:20])
    t1 = ds.table[ds.table["image"].str.endswith("t1.png")]
    assert len(t1) == 1 and t1["mos"].iloc[0] == pytest.approx(63.963406, abs=1e-5)
    item = ds[0]
    assert item["image"].mode == "RGB"
    assert 0.0 <= item["target"].item() <= 1.0


def test_csv_values_that_use_a_tenth_of_the_guessed_scale_are_warned_about(tmp_path):
    write_image(tmp_path / "a.png")
    write_image(tmp_path / "b.png", seed=1)
    csv = tmp_path / "s.csv"
    csv.write_text("image,mos\na.png,2.5\nb.png,8.9\n")
    with pytest.warns(UserWarning, match="read on a 0-100 scale"):
        assert load_dataset("csv", csv).scale == MOSScale(0.0, 100.0)


def test_keys_stay_inside_a_dataset_reached_through_symbolic_links(tmp_path):
    """Keys are paths relative to the dataset's folder, links left as they are: a folder linked
    elsewhere (or its images/ linked) gave '../../real/images/0.png' keys, and label files and
    split files stopped joining."""
    real = tmp_path / "store" / "clive"
    for i in range(3):
        write_image(real / "images" / f"{i}.png", 36, 36, seed=i)
    (real / "scores.csv").write_text("image,mos\n" + "".join(f"images/{i}.png,{10 * i + 5}\n" for i in range(3)))
    linked = tmp_path / "work" / "clive"
    linked.parent.mkdir()
    linked.symlink_to(real, target_is_directory=True)
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "images").symlink_to(real / "images", target_is_directory=True)
    (inner / "scores.csv").write_text((real / "scores.csv").read_text())
    for root in (linked, inner):
        t = load_dataset("csv", root / "scores.csv").table
        assert list(t["key"]) == ["images/0.png", "images/1.png", "images/2.png"], root
        assert all(str(p).startswith(str(root)) for p in t["image"])


def test_a_release_with_mos_outside_its_scale_is_refused(koniq_root):
    """A rescaled or foreign sheet under a release's name: targets off by a factor, silently."""
    root = koniq_root[0]
    sheet = root / "koniq10k_scores_and_distributions.csv"
    table = pd.read_csv(sheet)
    table.loc[1, "MOS"] = 85.0
    table.to_csv(sheet, index=False)
    with pytest.raises(ValueError, match=r"1 MOS value\(s\) outside the dataset's scale \[1, 5\]: 997832\.jpg \(85\)"):
        load_dataset("koniq10k", root)


def test_damaged_release_files_are_named_with_their_problem(livec_root, tmp_path, xlsx):
    """A truncated download, a CSV saved as .xlsx, a .mat of another variable: scipy's and pandas'
    own exceptions escaped as tracebacks, or came without the file's name."""
    from scipy.io import savemat

    root, *_ = livec_root
    (root / "Data" / "AllImages_release.mat").write_bytes(b"")
    with pytest.raises(ValueError, match=r"AllImages_release\.mat: cannot be read as a \.mat file"):
        load_dataset("livec", root)
    savemat(root / "Data" / "AllImages_release.mat", {"names": np.zeros(3)})
    with pytest.raises(ValueError, match=r"AllImages_release\.mat: no variable 'AllImages_release' \(it has \['names'\]\)"):
        load_dataset("livec", root)
    bid = tmp_path / "BID"
    write_image(bid / "ImageDatabase" / "DatabaseImage0001.JPG", seed=1, fmt="JPEG")
    (bid / "DatabaseGrades.xlsx").write_bytes(b"PK\x03\x04garbage")  # a truncated download
    with pytest.raises(ValueError, match=r"DatabaseGrades\.xlsx: cannot be read as a spreadsheet"):
        load_dataset("bid", bid)
    (bid / "DatabaseGrades.xlsx").write_text("Image Number,Average Subjective Grade\n1,3.2\n")  # a CSV renamed
    with pytest.raises(ValueError, match=r"DatabaseGrades\.xlsx: cannot be read as a spreadsheet"):
        load_dataset("bid", bid)
    (bid / "DatabaseGrades.xlsx").unlink()
    (bid / "DatabaseGrades.csv").write_text("Image Number,Average Subjective Grade\n1,3.2\ntwo,2.0\n")
    with pytest.raises(ValueError, match=r"DatabaseGrades\.csv: column 'Image Number' holds 1 cell\(s\) that are no "
                                         r"image number, e.g. \['two'\]"):
        load_dataset("bid", bid)


def test_koniq_sets_file_listing_an_image_in_two_sets_is_refused(koniq_root):
    """The last row won without a word: the order of the rows decided whether a photo trained or tested."""
    root, names, *_ = koniq_root
    rows = "".join(f"{n},{s}\n" for n, s in zip(names, ["training", "validation", "test"]))
    (root / "koniq10k_distributions_sets.csv").write_text(f"image_name,set\n{rows}{names[0]},test\n{names[1]},validation\n")
    with pytest.raises(ValueError, match=r"1 image\(s\) listed in two sets, e.g. 826373\.jpg \(\['test', 'training'\]\)"):
        load_dataset("koniq10k", root)


def test_csv_image_cells_written_after_a_comma_and_space_are_found(tmp_path):
    for i in range(3):
        write_image(tmp_path / "images" / f"{i}.png", seed=i)
    write_image(tmp_path / "images" / " spaced.png", seed=9)  # a file named with the space keeps it
    (tmp_path / "s.csv").write_text("mos, image, split\n10, images/0.png, train\n20, images/1.png , test\n"
                                    "30,images/ spaced.png,train\n")
    t = load_dataset("csv", tmp_path / "s.csv").table
    _same_paths(t["image"], [tmp_path / "images" / n for n in ("0.png", "1.png", " spaced.png")])
    assert [s.strip() for s in t["split"]] == ["train", "test", "train"]


def test_a_duplicate_image_message_names_the_dataset(koniq_root):
    root, *_ = koniq_root
    sheet = root / "koniq10k_scores_and_distributions.csv"
    table = pd.read_csv(sheet)
    pd.concat([table, table.iloc[:1]]).to_csv(sheet, index=False)
    with pytest.raises(ValueError, match=rf"^koniq10k \({root}\): dataset table lists the same image twice"):
        load_dataset("koniq10k", root)
