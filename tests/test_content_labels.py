"""Content pseudo-labels: the ImageNet -> IQA-CR mapping table, the classifier-based labeller
with its night cue, table filling with overwrite semantics, and the ``label-content`` CLI."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from contentiqa.cli.main import main as cli_main
from contentiqa.data.content_labels import (
    CLASS_BALANCE_PSEUDOCOUNT,
    DEFAULT_NIGHT_CUE,
    OBJECT_CATEGORIES,
    SPAQ_TO_IQA_CR,
    NightCue,
    category_probabilities,
    imagenet_to_category_table,
    label_images,
    label_table,
    normalize_category,
)
from contentiqa.models.base import IQA_CR_CATEGORIES

from conftest import REPO_ROOT, write_image

torch.set_num_threads(min(2, torch.get_num_threads()))

TOOL = REPO_ROOT / "tools" / "make_imagenet_categories.py"


# ---------------------------------------------------------------------------------- mapping


def test_mapping_table_covers_every_class_with_a_valid_category():
    t = imagenet_to_category_table()
    assert list(t.columns) == ["index", "synset", "name", "category", "rule"]
    assert list(t["index"]) == list(range(1000))
    assert t["synset"].str.fullmatch(r"n\d{8}").all()
    assert set(t["category"]) <= set(IQA_CR_CATEGORIES) - {"night scene"}
    assert set(t["category"]) == set(OBJECT_CATEGORIES)  # every object category is reachable
    assert (t.loc[:397, "category"] == "animal").all()
    assert t["rule"].str.len().gt(0).all()


@pytest.mark.parametrize(
    "index, name, category",
    [
        (0, "tench", "animal"),
        (281, "tabby", "animal"),
        (393, "anemone fish", "animal"),
        (397, "puffer", "animal"),
        (817, "sports car", "vehicle"),
        (404, "airliner", "vehicle"),
        (779, "school bus", "vehicle"),
        (475, "car mirror", "vehicle"),  # override: part of a car
        (985, "daisy", "plant"),
        (949, "strawberry", "plant"),
        (992, "agaric", "plant"),
        (980, "volcano", "landscape"),
        (978, "seashore", "landscape"),
        (983, "scuba diver", "human"),
        (834, "suit", "human"),
        (837, "sunglasses", "human"),
        (532, "dining table", "indoor scene"),
        (453, "bookcase", "indoor scene"),
        (624, "library", "indoor scene"),
        (497, "church", "cityscape"),
        (919, "street sign", "cityscape"),
        (920, "traffic light", "cityscape"),
        (704, "parking meter", "cityscape"),
        (402, "acoustic guitar", "artifact"),
        (963, "pizza", "artifact"),
        (916, "web site", "others"),
    ],
)
def test_mapping_spot_checks(index, name, category):
    row = imagenet_to_category_table().iloc[index]
    assert row["name"] == name
    assert row["category"] == category, row["rule"]


def test_mapping_table_is_what_the_generator_produces():
    """The committed CSV must match tools/make_imagenet_categories.py (needs WordNet 3.0 data)."""
    spec = importlib.util.spec_from_file_location("make_imagenet_categories", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    try:
        folder = tool.find_wordnet(None)
    except SystemExit as exc:
        pytest.skip(str(exc))
    rows = tool.build_rows(tool.WordNetNouns(folder))
    committed = (REPO_ROOT / "src" / "contentiqa" / "resources" / "imagenet_categories.csv").read_text(encoding="utf-8")
    assert tool.render(rows) == committed


def test_normalize_category_spaq_and_iqa_cr_spellings():
    assert normalize_category("Still-life") == "artifact"
    assert normalize_category("Indoor scene") == "indoor scene"
    assert normalize_category("night_scene") == "night scene"
    assert normalize_category(" vehicle ") == "vehicle"
    assert normalize_category("") is None and normalize_category(None) is None and normalize_category(np.nan) is None
    assert normalize_category("spaceship") == "spaceship"  # unknown labels are kept, not guessed
    assert set(SPAQ_TO_IQA_CR.values()) <= set(IQA_CR_CATEGORIES)


def test_night_cue_rules_and_confidence():
    cue = NightCue()
    assert cue.fires(mean_y=20, highlight_fraction=1e-3, top_y=10)
    assert not cue.fires(mean_y=20, highlight_fraction=0.0, top_y=10)  # no light source: dim room
    assert not cue.fires(mean_y=40, highlight_fraction=1e-2, top_y=120)  # bright sky: underexposed day
    assert not cue.fires(mean_y=100, highlight_fraction=1e-2, top_y=10)
    assert cue.confidence(cue.max_mean_luminance) == pytest.approx(0.5)
    assert cue.confidence(cue.full_confidence_luminance) == pytest.approx(1.0)
    assert cue.confidence(0.0) == 1.0
    assert cue.confidence(20) > cue.confidence(40)


# ---------------------------------------------------------------------------------- labeller


def _night_image(path: Path) -> Path:
    """A black scene with a few small lights: what a photo of a street at night looks like."""
    a = np.full((240, 320, 3), 8, np.uint8)
    for x, y in [(40, 150), (120, 160), (200, 140), (280, 170)]:
        a[y:y + 4, x:x + 4] = 255
    Image.fromarray(a).save(path)
    return path


def _underexposed_day(path: Path) -> Path:
    """Dark ground under a bright sky: dark on average, but not night."""
    a = np.full((240, 320, 3), 10, np.uint8)
    a[:80] = 240
    Image.fromarray(a).save(path)
    return path


def test_night_cue_on_generated_images(tmp_path):
    night = _night_image(tmp_path / "night.png")
    dim = tmp_path / "dim.png"
    Image.fromarray(np.full((200, 200, 3), 30, np.uint8)).save(dim)  # dark, no light source
    day = _underexposed_day(tmp_path / "day.png")
    df = label_images([night, dim, day], progress=False)
    assert list(df["image"]) == [str(night), str(dim), str(day)]
    r = df.iloc[0]
    assert r["category"] == "night scene" and r["category_source"] == "night-cue"
    assert r["mean_luminance"] < DEFAULT_NIGHT_CUE.max_mean_luminance
    assert r["category_confidence"] == pytest.approx(DEFAULT_NIGHT_CUE.confidence(r["mean_luminance"]))
    assert r["object_category"] in OBJECT_CATEGORIES  # the classifier's answer is still there
    assert df.iloc[1]["category"] != "night scene" and df.iloc[2]["category"] != "night scene"
    off = label_images([night], progress=False, night_cue=None)
    assert off.iloc[0]["category"] != "night scene"


def test_category_probabilities_form_a_distribution(tmp_path):
    paths = [write_image(tmp_path / f"r{i}.png", 64, 80, seed=i) for i in range(3)]
    for balance in (None, CLASS_BALANCE_PSEUDOCOUNT):
        df = label_images(paths, progress=False, probabilities=True, night_cue=None, class_balance=balance)
        p = df[[f"p_{c}" for c in OBJECT_CATEGORIES]].to_numpy()
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
        assert (p >= 0).all()
        best = np.array(OBJECT_CATEGORIES)[p.argmax(axis=1)]
        assert list(df["category"]) == list(best)
        np.testing.assert_allclose(df["category_confidence"], p.max(axis=1), atol=1e-6)
        if balance is None:  # a plain sum holds at least its top class's probability
            assert (df["imagenet_top1_prob"] <= df["category_confidence"] + 1e-6).all()


def test_category_probabilities_sum_and_balance():
    table = imagenet_to_category_table()
    probs = torch.zeros(2, 1000)
    probs[0, 281] = 0.6  # tabby: animal
    probs[0, 985] = 0.4  # daisy: plant
    probs[1] = 1.0 / 1000  # no idea: every class alike
    plain = category_probabilities(probs, None)
    i = {c: k for k, c in enumerate(OBJECT_CATEGORIES)}
    assert plain[0, i["animal"]] == pytest.approx(0.6, abs=1e-5) and plain[0, i["plant"]] == pytest.approx(0.4, abs=1e-5)
    assert plain[1, i["animal"]] == pytest.approx(0.4, abs=1e-5)  # 400 classes: sums favour many-class categories
    balanced = category_probabilities(probs)
    np.testing.assert_allclose(balanced.sum(dim=1).numpy(), 1.0, atol=1e-6)
    counts = table["category"].value_counts()
    assert balanced[0, i["plant"]] > balanced[0, i["animal"]]  # 0.4 over 38 classes beats 0.6 over 400
    assert counts["plant"] < counts["animal"]
    flat = balanced[1].numpy()
    assert flat.max() < 0.15  # an uninformative prediction no longer goes to animal (0.4 plain)
    assert flat[i["others"]] < 0.05  # the pseudo-count keeps two-class "others" from noise wins
    with pytest.raises(ValueError):
        category_probabilities(probs, -1.0)


@pytest.mark.parametrize("name, top1", [("833.JPG", "anemone fish"), ("707.JPG", None)])
def test_real_photos_are_animals(examples_dir, name, top1):
    df = label_images([examples_dir / name], progress=False)
    r = df.iloc[0]
    assert pd.isna(r["error"])
    assert r["category"] == "animal", (r["imagenet_top1"], r["category_confidence"])
    assert r["category_confidence"] > 0.6
    assert r["category_source"] == "imagenet:efficientnet_lite0"
    if top1:
        assert r["imagenet_top1"] == top1


def test_broken_files_give_error_rows_not_a_crash(tmp_path):
    good = write_image(tmp_path / "good.png", 64, 64)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 definitely not a JPEG")
    df = label_images([broken, good, tmp_path / "missing.png"], progress=False, batch_size=2)
    assert len(df) == 3
    assert pd.isna(df.loc[0, "category"]) and "broken.jpg" in df.loc[0, "error"]
    assert pd.notna(df.loc[1, "category"]) and pd.isna(df.loc[1, "error"])
    assert pd.isna(df.loc[2, "category"]) and "does not exist" in df.loc[2, "error"]


# ---------------------------------------------------------------------------------- tables


def test_label_table_keeps_given_labels_unless_overwrite(tmp_path, examples_dir):
    fish = str(examples_dir / "833.JPG")
    rnd = str(write_image(tmp_path / "r.png", 64, 64))
    table = pd.DataFrame({
        "image": [fish, rnd, fish],
        "mos": [50.0, 40.0, 50.0],
        "category": ["Still-life", None, ""],  # a SPAQ label, and two to fill
    })
    out = label_table(table, progress=False)
    assert list(out["category"][:1]) == ["artifact"] and out.loc[0, "category_source"] == "given"
    assert pd.isna(out.loc[0, "category_confidence"])  # a given label has no model confidence
    assert out.loc[2, "category"] == "animal" and out.loc[2, "category_source"].startswith("imagenet:")
    assert pd.notna(out.loc[1, "category"])
    assert list(out["mos"]) == [50.0, 40.0, 50.0]
    assert table.loc[0, "category"] == "Still-life"  # input untouched

    again = label_table(out, progress=False)  # a labelled table is stable
    pd.testing.assert_frame_equal(again, out)

    over = label_table(table, overwrite=True, progress=False)
    assert over.loc[0, "category"] == "animal" and over.loc[0, "category_source"].startswith("imagenet:")


def test_label_table_error_rows(tmp_path):
    table = pd.DataFrame({"image": [str(tmp_path / "nope.png")], "mos": [1.0]})
    out = label_table(table, progress=False)
    assert pd.isna(out.loc[0, "category"])
    assert out.loc[0, "category_source"].startswith("error:") and "does not exist" in out.loc[0, "category_source"]


def test_a_category_typed_over_an_error_row_is_a_given_label(tmp_path, examples_dir):
    table = pd.DataFrame({"image": [str(examples_dir / "833.JPG")], "mos": [1.0], "category": ["plant"],
                          "category_source": ["error: 833.JPG: not an image"]})  # fixed by hand, as invited
    assert label_table(table, progress=False).loc[0, "category_source"] == "given"


def test_labelling_with_a_model_reads_given_categories_as_training_does(tmp_path, recwarn):
    from contentiqa.cli.label_content import label_with_model
    from tiny_models import tiny_model

    images = [str(write_image(tmp_path / f"{i}.png", 64, 64, seed=i)) for i in range(4)]
    table = pd.DataFrame({"image": images, "mos": [1.0] * 4, "category": ["Still-Life", "NA", "spaceship", "plant"],
                          "category_source": [None, None, None, "error: x.png: not an image"]})
    out = label_with_model(table, tiny_model(), overwrite=False, batch_size=2, progress=False)
    assert out["category"].tolist()[::2] == ["artifact", "spaceship"] and out.loc[3, "category"] == "plant"
    assert out.loc[1, "category_source"].startswith("model:")  # a placeholder is no label: labelled now
    assert out["category_source"].tolist()[::2] == ["given", "given"] and out.loc[3, "category_source"] == "given"
    assert any("spaceship" in str(w.message) for w in recwarn)


# ---------------------------------------------------------------------------------- CLI


def test_cli_end_to_end(tmp_path, examples_dir, capsys):
    data = tmp_path / "data"
    (data / "imgs").mkdir(parents=True)
    _night_image(data / "imgs" / "night.png")
    write_image(data / "imgs" / "a.png", 64, 64, seed=1)
    write_image(data / "imgs" / "b.png", 64, 64, seed=2)
    shutil.copy(examples_dir / "833.JPG", data / "imgs" / "fish.JPG")
    cat = str((examples_dir / "707.JPG").resolve())  # an absolute path
    csv = data / "scores.csv"
    csv.write_text(
        "# mos_range: 0 100\n"
        "image,mos,source_name,category\n"
        "imgs/night.png,10.5,n.bmp,\n"
        "imgs/a.png,20.25,a.bmp,\n"
        "imgs/b.png,30,b.bmp,Landscape\n"
        "imgs/fish.JPG,70,fish.bmp,\n"
        f"{cat},80,cat.bmp,\n",
        encoding="utf-8",
    )
    out = tmp_path / "results" / "labeled.csv"
    rc = cli_main(["label-content", str(csv), "--out", str(out), "--quiet"])
    printed = capsys.readouterr().out
    assert rc == 0
    assert "night scene" in printed and "mean conf" in printed and "wrote" in printed

    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "# mos_range: 0 100"
    res = pd.read_csv(out, skiprows=1, dtype=str, keep_default_na=False)
    assert list(res.columns) == ["image", "mos", "source_name", "category", "category_confidence", "category_source"]
    assert list(res["mos"]) == ["10.5", "20.25", "30", "70", "80"]  # other columns round-trip as text
    assert list(res["source_name"]) == ["n.bmp", "a.bmp", "b.bmp", "fish.bmp", "cat.bmp"]
    # paths are relative to the output's folder and point at the same files
    assert all(not Path(p).is_absolute() for p in res["image"])
    assert res.loc[0, "image"] == "../data/imgs/night.png"
    for p, original in zip(res["image"], [data / "imgs" / "night.png", data / "imgs" / "a.png",
                                         data / "imgs" / "b.png", data / "imgs" / "fish.JPG", Path(cat)]):
        assert (out.parent / p).resolve() == original.resolve()
    assert list(res["category"][[0, 2, 3, 4]]) == ["night scene", "landscape", "animal", "animal"]
    assert res.loc[2, "category_source"] == "given" and res.loc[2, "category_confidence"] == ""
    assert res.loc[0, "category_source"] == "night-cue"
    assert float(res.loc[3, "category_confidence"]) > 0.8

    # the output is a dataset CSV the loaders accept, and labelling it again changes nothing
    from contentiqa.data import load_dataset

    ds = load_dataset("csv", out)
    assert len(ds) == 5 and "night scene" in ds.categories
    out2 = tmp_path / "results" / "again.csv"
    assert cli_main(["label-content", str(out), "--out", str(out2), "--quiet"]) == 0
    assert out2.read_text(encoding="utf-8") == out.read_text(encoding="utf-8")

    # --overwrite relabels the given one
    out3 = tmp_path / "results" / "over.csv"
    assert cli_main(["label-content", str(csv), "--out", str(out3), "--quiet", "--overwrite"]) == 0
    res3 = pd.read_csv(out3, skiprows=1, dtype=str, keep_default_na=False)
    assert res3.loc[2, "category_source"].startswith("imagenet:")


def test_cli_failures(tmp_path, capsys):
    write_image(tmp_path / "ok.png", 64, 64)
    csv = tmp_path / "d.csv"
    csv.write_text("image,mos\nok.png,1\ngone.png,2\n", encoding="utf-8")
    out = tmp_path / "o.csv"
    assert cli_main(["label-content", str(csv), "--out", str(out), "--quiet"]) == 1  # some inputs failed
    res = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert res.loc[1, "category"] == "" and res.loc[1, "category_source"].startswith("error:")
    assert "gone.png" in capsys.readouterr().err

    # a photo over the pixel limit: advice this command can follow (it has no max_pixels to raise)
    from conftest import png_header_only

    (tmp_path / "huge.png").write_bytes(png_header_only(20000, 20000))
    csv.write_text("image,mos\nok.png,1\nhuge.png,2\n", encoding="utf-8")
    assert cli_main(["label-content", str(csv), "--out", str(out), "--quiet"]) == 1
    said = pd.read_csv(out, dtype=str, keep_default_na=False).loc[1, "category_source"]
    assert said.endswith("(decompression-bomb guard; label a smaller copy of it)") and "max_pixels" not in said, said
    assert "label a smaller copy of it" in capsys.readouterr().err
    # one downscaled thinner than a content head reads: not `contentiqa score`'s option either
    from tiny_models import tiny_checkpoint

    Image.new("RGB", (4000, 40), "gray").save(tmp_path / "pano.png")
    csv.write_text("image,mos\nok.png,1\npano.png,2\n", encoding="utf-8")
    assert cli_main(["label-content", str(csv), "--model", tiny_checkpoint(), "--out", str(out), "--quiet"]) == 1
    said = pd.read_csv(out, dtype=str, keep_default_na=False).loc[1, "category_source"]
    assert said.endswith("label a copy cropped to a less elongated shape") and "contentiqa score" not in said, said
    capsys.readouterr()
    # --out that is no CSV (a slip of the tab key: one of the photos) is refused, the file left alone
    before = (tmp_path / "ok.png").read_bytes()
    assert cli_main(["label-content", str(csv), "--out", str(tmp_path / "ok.png"), "--quiet"]) == 2
    assert "name a .csv file" in capsys.readouterr().err and (tmp_path / "ok.png").read_bytes() == before
    # columns of one's own come back under the names the file gave them (twice, padded)
    own = tmp_path / "own.csv"
    own.write_text("Image, note ,x,x\nok.png,a,b,c\n", encoding="utf-8")
    assert cli_main(["label-content", str(own), "--out", str(out), "--quiet"]) == 0
    assert out.read_text().splitlines()[0] == "image, note ,x,x,category,category_confidence,category_source"
    # a '#' line after a blank one (only the first line is a comment): said as such, not a decimal comma
    own.write_text("\n# mos_range: 0 100\nimage,mos\nok.png,70\n", encoding="utf-8")
    assert cli_main(["label-content", str(own), "--out", str(out), "--quiet"]) == 2
    assert "a '#' line where the header should be" in capsys.readouterr().err

    bad = tmp_path / "bad.csv"
    bad.write_text("path,mos\nok.png,1\n", encoding="utf-8")
    assert cli_main(["label-content", str(bad), "--out", str(out), "--quiet"]) == 2
    assert "no 'image' column" in capsys.readouterr().err
    assert cli_main(["label-content", str(tmp_path / "none.csv"), "--out", str(out)]) == 2


def _fake_labeller(monkeypatch, seen: list | None = None, forbid: bool = False):
    """Replace the ImageNet labeller (the CLI looks it up when it runs): ``forbid`` fails the
    test if anything is labelled; otherwise every row becomes 'animal' and the paths go to ``seen``."""
    import contentiqa.data.content_labels as lib

    def fake(table, **kwargs):
        if forbid:
            raise AssertionError("labelled before the error")
        if seen is not None:
            seen.extend(table["image"])
        return table.assign(category="animal", category_confidence=0.9, category_source="fake")

    monkeypatch.setattr(lib, "label_table", fake)
    monkeypatch.setattr(lib, "default_classifier", lambda: None)  # the fake needs no network


@pytest.mark.parametrize("where", ["below a file", "/proc"])
def test_cli_unwritable_out_fails_before_labelling(tmp_path, capsys, monkeypatch, where):
    write_image(tmp_path / "ok.png", 64, 64)
    csv = tmp_path / "d.csv"
    csv.write_text("image,mos\nok.png,1\n", encoding="utf-8")
    out = tmp_path / "ok.png" / "x.csv" if where == "below a file" else Path("/proc/contentiqa-test.csv")
    _fake_labeller(monkeypatch, forbid=True)
    assert cli_main(["label-content", str(csv), "--out", str(out), "--quiet"]) == 2
    assert f"--out {out}" in capsys.readouterr().err


def test_options_that_do_nothing_in_a_combination_are_refused_not_ignored(tmp_path, capsys):
    write_image(tmp_path / "ok.png", 64, 64)
    csv = tmp_path / "d.csv"
    csv.write_text("image,mos\nok.png,1\n", encoding="utf-8")
    assert cli_main(["label-content", str(csv), "--out", str(tmp_path / "o.csv"), "--model", "iqa-cr",
                     "--no-class-balance", "--quiet"]) == 2
    assert "--no-class-balance is for the ImageNet classifier" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()
    # and the mirror case: a device for the classifier, which runs on the CPU
    assert cli_main(["label-content", str(csv), "--out", str(tmp_path / "o.csv"), "--device", "cuda", "--quiet"]) == 2
    assert "--device is for --model" in capsys.readouterr().err and not (tmp_path / "o.csv").exists()


def test_cli_write_failure_is_a_usage_error(tmp_path, capsys, monkeypatch):
    import errno

    import contentiqa.utils.io as io_mod

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    write_image(tmp_path / "ok.png", 64, 64)
    csv = tmp_path / "d.csv"
    csv.write_text("image,mos\nok.png,1\n", encoding="utf-8")
    _fake_labeller(monkeypatch)
    monkeypatch.setattr(io_mod, "atomic_write_text", full)
    assert cli_main(["label-content", str(csv), "--out", str(tmp_path / "o.csv"), "--quiet"]) == 2
    assert "cannot write --out" in capsys.readouterr().err and not (tmp_path / "o.csv").exists()


def test_cli_empty_image_cell_stays_empty_with_an_error(tmp_path, capsys, monkeypatch):
    write_image(tmp_path / "ok.png", 64, 64)
    csv = tmp_path / "d.csv"
    csv.write_text("image,mos\nok.png,1\n,2\n", encoding="utf-8")
    out = tmp_path / "sub" / "o.csv"  # in a subfolder, '' once came out as '..'
    seen: list = []
    _fake_labeller(monkeypatch, seen)
    assert cli_main(["label-content", str(csv), "--out", str(out), "--quiet"]) == 1  # a row failed
    assert seen == [str((tmp_path / "ok.png").resolve())]  # the CSV's folder is not labelled
    res = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(res["image"]) == ["../ok.png", ""]
    assert list(res["category"]) == ["animal", ""]
    assert res.loc[1, "category_source"].startswith("error:") and "empty image path" in res.loc[1, "category_source"]
    err = capsys.readouterr().err
    assert "empty image path" in err and str(csv) in err


def test_cli_keeps_the_datasets_keys_when_its_images_are_links(tmp_path, monkeypatch):
    """Paths are joined as the loaders join them: resolving a linked folder wrote its target,
    keys the dataset's label files no longer join on; a link named as --out is read from its
    own folder, so paths are relative to that one."""
    store = tmp_path / "store"
    write_image(store / "a.png", 64, 64)
    write_image(store / "b.png", 64, 64, seed=1)
    data = tmp_path / "ds"
    data.mkdir()
    (data / "images").symlink_to(store)
    (data / "data.csv").write_text("image,mos\nimages/a.png,1\nimages/b.png,2\n", encoding="utf-8")
    _fake_labeller(monkeypatch)
    assert cli_main(["label-content", str(data / "data.csv"), "--out", str(data / "labeled.csv"), "--quiet"]) == 0
    assert list(pd.read_csv(data / "labeled.csv", dtype=str)["image"]) == ["images/a.png", "images/b.png"]
    far = tmp_path / "elsewhere" / "deep"
    far.mkdir(parents=True)
    (data / "link.csv").symlink_to(far / "real.csv")
    assert cli_main(["label-content", str(data / "data.csv"), "--out", str(data / "link.csv"), "--quiet"]) == 0
    assert list(pd.read_csv(data / "link.csv", dtype=str)["image"]) == ["images/a.png", "images/b.png"]
    assert (data / "link.csv").is_symlink()


def test_label_content_reads_the_columns_in_any_case_as_training_does(tmp_path, monkeypatch):
    """A 'Category' column was not read: given labels relabelled, and a second 'category' written
    beside it, which training then refused."""
    for i in range(3):
        write_image(tmp_path / f"{i}.png", 64, 64, seed=i)
    csv = tmp_path / "d.csv"
    csv.write_text("Image,MOS,Category\n0.png,1,plant\n1.png,2,Night Scene\n2.png,3,\n", encoding="utf-8")
    out = tmp_path / "o.csv"
    import contentiqa.data.content_labels as lib

    given = []

    def keeps_given(table, **kwargs):  # labels only the rows without a category, as the real one
        given.extend(table["category"])
        return table.assign(category=[c or "animal" for c in table["category"]], category_confidence=0.9,
                            category_source="fake")

    monkeypatch.setattr(lib, "default_classifier", lambda: None)
    monkeypatch.setattr(lib, "label_table", keeps_given)
    assert cli_main(["label-content", str(csv), "--out", str(out), "--quiet"]) == 0
    assert given == ["plant", "Night Scene", ""]  # the labeller was handed the given labels to keep
    res = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(res.columns[:3]) == ["image", "mos", "category"] and list(res.columns).count("category") == 1
    from contentiqa.data import load_dataset

    assert list(load_dataset("csv", out).table["category"]) == ["plant", "night scene", "animal"]


def test_label_content_keeps_peoples_scene_labels(tmp_path, monkeypatch):
    """A table in the scene-label layout (clive-dev's scene_labels.csv) had its people's scenes
    replaced by ImageNet's guesses, which train then read; as a label file it said the scenes."""
    from contentiqa.data import read_labels

    for i in range(3):
        write_image(tmp_path / f"{i}.png", 64, 64, seed=i)
    csv = tmp_path / "s.csv"
    csv.write_text("image,mos,Scene1,scene2,scene3,distortion\n0.png,10,night,others,,blur\n"
                   "1.png,20,,,,\n2.png,30,still_life,animal,,noise\n")
    import contentiqa.data.content_labels as lib

    def keeps_given(table, overwrite=False, **kwargs):  # labels only the rows without a category, as the real one
        given = [""] * len(table) if overwrite or "category" not in table else list(table["category"])
        sources = table["category_source"] if "category_source" in table else [""] * len(table)
        return table.assign(category=[c or "animal" for c in given], category_confidence=0.9,
                            category_source=[s if c else "fake" for c, s in zip(given, sources)])

    monkeypatch.setattr(lib, "default_classifier", lambda: None)
    monkeypatch.setattr(lib, "label_table", keeps_given)
    out = tmp_path / "o.csv"
    assert cli_main(["label-content", str(csv), "--out", str(out), "--quiet"]) == 0
    res = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert res["category"].tolist()[::2] == ["night scene", "artifact"] and res["category_source"][0] == "human"
    assert res["categories"].tolist()[::2] == ["night scene|others", "artifact|animal"]
    assert res["category_source"][1] != "human"  # no scene: labelled
    from contentiqa.data import load_dataset

    assert load_dataset("csv", out).table["category"].tolist()[::2] == ["night scene", "artifact"]
    assert read_labels(out)["category"].tolist()[::2] == ["night scene", "artifact"]  # the same either way
    # the row people left without a scene: its label as labelled, not lost nor called people's
    assert (read_labels(out)["category"][1], read_labels(out)["category_source"][1]) == ("animal", "fake")
    # a placeholder category is none of the row's own; --overwrite labels every row anew, scenes too
    csv.write_text("image,mos,scene1,scene2,category\n0.png,10,animal,human,n/a\n")
    assert cli_main(["label-content", str(csv), "--out", str(out), "--quiet"]) == 0
    res = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert (res["category"][0], res["categories"][0]) == ("animal", "animal|human")
    csv.write_text("image,mos,scene1,scene2\n0.png,10,animal,human\n")
    assert cli_main(["label-content", str(csv), "--out", str(out), "--quiet", "--overwrite"]) == 0
    res = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert res["category_source"][0] == "fake" and "categories" not in res  # no human set beside a guess
    assert read_labels(out)[["category", "category_source"]].values.tolist() == [["animal", "fake"]]  # as train reads it
    filled = tmp_path / "filled.csv"  # a table labelled before, with people's set: not kept beside a guess either
    assert cli_main(["label-content", str(csv), "--out", str(filled), "--quiet"]) == 0
    assert cli_main(["label-content", str(filled), "--out", str(out), "--quiet", "--overwrite"]) == 0
    assert "categories" not in pd.read_csv(out, dtype=str, keep_default_na=False)


def test_a_scene_file_with_some_categories_reads_scenes_where_a_row_has_none(tmp_path):
    """With the category column partly filled, an empty cell read as NaN (pandas' string column),
    not None, and the rows people gave a scene lost it."""
    from contentiqa.data import read_labels

    (tmp_path / "p.csv").write_text("image,scene1,scene2,category\na.png,animal,human,\nb.png,night,,n/a\n"
                                    "c.png,,,plant\n")
    got = read_labels(tmp_path / "p.csv")
    assert got["category"].tolist() == ["animal", "night scene", "plant"]
    assert got["categories"].tolist()[:2] == ["animal|human", "night scene"]
    assert got["category_source"].tolist()[:2] == ["human", "human"] and pd.isna(got["category_source"].tolist()[2])


def test_joined_labels_replace_every_label_column_of_the_table(tmp_path):
    """A label file with only ``category`` left the table's older ``categories`` (and source) beside
    the new main label: another label's acceptable set, and a photo the file does not label still
    counted through its old set."""
    from contentiqa.data import join_labels, load_dataset

    for i in range(2):
        write_image(tmp_path / f"a{i}.png", 32, 32, seed=i)
    (tmp_path / "d.csv").write_text("image,mos,category,categories,category_source\n"
                                    "a0.png,10,night scene,night scene|human,human\na1.png,20,plant,plant|landscape,human\n")
    (tmp_path / "new.csv").write_text("image,category\na0.png,animal\n")
    joined = join_labels(load_dataset("csv", tmp_path / "d.csv").table, tmp_path / "new.csv", tmp_path)
    assert joined["category"].tolist()[0] == "animal" and pd.isna(joined["category"].tolist()[1])
    assert "categories" not in joined and "category_source" not in joined


def test_a_table_without_rows_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "h.csv").write_text("image,mos\n")
    assert cli_main(["label-content", str(tmp_path / "h.csv"), "--out", str(tmp_path / "o.csv"), "--quiet"]) == 2
    assert "lists no images" in capsys.readouterr().err and not (tmp_path / "o.csv").exists()


def test_a_second_labeller_of_one_out_gets_a_clear_error(tmp_path, monkeypatch, capsys):
    """Two runs with one --out both said 'wrote', the last one's table replacing the other's."""
    from filelock import FileLock

    write_image(tmp_path / "0.png", 64, 64, seed=0)
    (tmp_path / "d.csv").write_text("image,mos\n0.png,1\n")
    _fake_labeller(monkeypatch)
    out = tmp_path / "o.csv"
    with FileLock(str(tmp_path / ".o.csv.lock")):  # what a running `label-content --out o.csv` holds
        assert cli_main(["label-content", str(tmp_path / "d.csv"), "--out", str(out), "-q"]) == 2
    assert "another process is writing" in capsys.readouterr().err and not out.exists()
    assert cli_main(["label-content", str(tmp_path / "d.csv"), "--out", str(out), "-q"]) == 0


def test_a_decimal_comma_is_refused_by_label_content_and_label_files(tmp_path, capsys):
    """`a.png,3,5` took the image column for an index (label-content wrote every path away; a label
    file read image '0', category '9')."""
    from contentiqa.data import LabelsError, read_labels

    (tmp_path / "d.csv").write_text("image,mos\na.png,3,5\nb.png,2,5\n")
    assert cli_main(["label-content", str(tmp_path / "d.csv"), "--out", str(tmp_path / "o.csv"), "-q"]) == 2
    assert "a row has more cells than the header names" in capsys.readouterr().err
    (tmp_path / "l.csv").write_text("image,category\na.png,animal,0,9\n")
    with pytest.raises(LabelsError, match="a row has more cells than the header names"):
        read_labels(tmp_path / "l.csv")
    # label-content writes a DATA file's comment line back: its output reads as a label file
    (tmp_path / "l.csv").write_text("# mos_range: 1 5\nimage,mos,category\na.png,3,animal\n")
    assert read_labels(tmp_path / "l.csv")["category"].tolist() == ["animal"]


def test_a_label_files_rows_without_an_image_label_nothing(tmp_path):
    """label-content keeps a row whose image cell is empty (with its error); read back as a label
    file, each was the image 'nan', and two of them one image listed twice."""
    from contentiqa.data import join_labels, read_labels

    labels = tmp_path / "l.csv"
    labels.write_text("image,mos,category,category_source\na.png,1,plant,given\n,2,,error: empty image path\n"
                      "b.png,3,animal,given\n,4,,error: empty image path\n")
    assert read_labels(labels)["image"].tolist() == ["a.png", "b.png"]
    table = pd.DataFrame({"image": [str(tmp_path / "a.png"), str(tmp_path / "b.png")], "mos": [1.0, 3.0]})
    assert join_labels(table, labels, tmp_path)["category"].tolist() == ["plant", "animal"]


def _stopped_on_the_second_part(monkeypatch, seen: list | None = None):
    """The fake labeller, interrupted (Ctrl-C) while labelling its second part of 4 rows; returns
    the fake itself, to label the rest with."""
    import contentiqa.cli.label_content as cmd
    import contentiqa.data.content_labels as lib

    _fake_labeller(monkeypatch, seen)
    fake, calls = lib.label_table, []

    def stopped(table, **kwargs):
        calls.append(len(table))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return fake(table, **kwargs)

    monkeypatch.setattr(lib, "label_table", stopped)
    monkeypatch.setattr(cmd, "SAVE_EVERY", 4)
    return fake


def test_an_interrupted_run_keeps_what_it_labelled_and_the_file_fed_back_labels_the_rest(tmp_path, monkeypatch, capsys):
    import contentiqa.data.content_labels as lib

    for i in range(6):
        write_image(tmp_path / f"{i}.png", 64, 64, seed=i)
    csv = tmp_path / "d.csv"
    csv.write_text("image,mos,category\n" + "".join(f"{i}.png,{i},{'plant' if i == 5 else ''}\n" for i in range(6)),
                   encoding="utf-8")
    out = tmp_path / "o.csv"
    seen: list = []
    fake = _stopped_on_the_second_part(monkeypatch, seen)
    assert cli_main(["label-content", str(csv), "--out", str(out), "--quiet", "--batch-size", "1",
                     "--no-class-balance"]) == 130
    err = capsys.readouterr().err
    # the advice labels the rest as this run would have (it dropped the options: another labeller)
    assert "4 of 6 row(s) done" in err and \
        f"`contentiqa label-content {out} --out {out} --no-class-balance --batch-size 1` labels the rest" in err
    res = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(res["category"]) == ["animal"] * 4 + ["", "plant"]  # the given one kept, the other left for later
    assert list(res["category_source"]) == ["fake"] * 4 + ["", "given"]
    seen.clear()
    monkeypatch.setattr(lib, "label_table", fake)
    assert cli_main(["label-content", str(out), "--out", str(out), "--quiet"]) == 0
    res = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(res["category"][:5]) == ["animal"] * 5 and list(res["image"]) == [f"{i}.png" for i in range(6)]


def test_an_interrupted_overwrite_leaves_the_rest_unlabelled_for_the_resume_command(tmp_path, monkeypatch, capsys):
    """With --overwrite the rows not reached were written with their old categories, which the
    printed resume command (without --overwrite) then kept: "labels the rest" labelled nothing."""
    import contentiqa.data.content_labels as lib

    for i in range(6):
        write_image(tmp_path / f"{i}.png", 64, 64, seed=i)
    csv = tmp_path / "d.csv"
    csv.write_text("image,mos,category\n" + "".join(f"{i}.png,{i},others\n" for i in range(6)), encoding="utf-8")
    out = tmp_path / "o.csv"
    fake = _stopped_on_the_second_part(monkeypatch)
    assert cli_main(["label-content", str(csv), "--out", str(out), "--quiet", "--overwrite", "--batch-size", "1"]) == 130
    assert "4 of 6 row(s) done" in capsys.readouterr().err
    assert list(pd.read_csv(out, dtype=str, keep_default_na=False)["category"]) == ["animal"] * 4 + ["", ""]
    monkeypatch.setattr(lib, "label_table", fake)
    assert cli_main(["label-content", str(out), "--out", str(out), "--quiet", "--batch-size", "1"]) == 0
    assert list(pd.read_csv(out, dtype=str, keep_default_na=False)["category"]) == ["animal"] * 6


def test_label_content_reads_image_cells_and_a_comment_as_the_loader_does(tmp_path, monkeypatch):
    """' images/a.png' after a comma and space, and an indented '# mos_range' line: training reads
    both; label-content failed every row, and refused the file for want of an 'image' column."""
    write_image(tmp_path / "images" / "a.png", 64, 64, seed=1)
    csv = tmp_path / "d.csv"
    csv.write_text("  # mos_range: 0 100\nmos, image\n53.5, images/a.png\n", encoding="utf-8")
    out = tmp_path / "o.csv"
    _fake_labeller(monkeypatch)
    assert cli_main(["label-content", str(csv), "--out", str(out), "--quiet"]) == 0
    text = out.read_text()
    assert text.startswith("  # mos_range: 0 100\n")
    res = pd.read_csv(out, comment=None, skiprows=1, dtype=str, keep_default_na=False, skipinitialspace=True)
    assert list(res["image"]) == ["images/a.png"] and list(res["category"]) == ["animal"]
