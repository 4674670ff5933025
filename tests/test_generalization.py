"""Beyond one dataset: the BIQ2021 layout, human scene labels joined by dataset key, the
official split, training on pooled frozen features, several datasets at once, the ranking loss."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from scipy.stats import norm

from conftest import write_image
from contentiqa.data import HUMAN_LABEL_CATEGORIES, join_labels, load_dataset, make_splits, read_labels
from contentiqa.data.table import MOSScale
from contentiqa.models import create_model
from contentiqa.training.config import TrainConfig
from contentiqa.training.evaluate import metrics_from_predictions
from contentiqa.training.losses import fidelity_loss
from contentiqa.training.trainer import Trainer

TINY = dict(backbone_pretrained=False, dim=16, heads=2, mlp_dim=32, grid=(2, 2), depth=1)


# -- BIQ2021, in the repository's exact layout --------------------------------------------------
def make_biq2021(root, n_train=8, n_test=4):
    """Names with spaces and parentheses, the train CSV's two trailing empty columns, and one
    file stored as .JPG while the CSV says .jpg — as in the release."""
    rng = np.random.default_rng(0)
    train, test = [], []
    for i in range(n_train + n_test):
        name = f"ss0{1 + i % 3} ({100 + i}).jpg"
        stored = name.replace(".jpg", ".JPG") if i == 1 else name
        write_image(root / "Images" / stored, 32, 32, seed=i, fmt="JPEG")
        (train if i < n_train else test).append((name, round(float(rng.uniform(0, 1)), 4)))
    (root / "Train (Images and MOS).csv").write_text("Image Name,MOS,,\n" + "".join(f"{n},{m},,\n" for n, m in train))
    (root / "Test (Images and MOS).csv").write_text("Image Name,MOS\n" + "".join(f"{n},{m}\n" for n, m in test))
    return train, test


def test_biq2021_layout(tmp_path):
    train, test = make_biq2021(tmp_path / "BIQ2021")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_dataset("biq2021", tmp_path / "BIQ2021")
    said = [str(w.message) for w in caught]
    assert any("'ss02 (101).jpg' is listed but the file is 'ss02 (101).JPG'" in m for m in said)
    t = ds.table
    assert len(t) == 12 and ds.scale == MOSScale(0.0, 1.0)
    assert list(t["split"]) == ["train"] * 8 + ["test"] * 4
    assert list(t["mos"]) == [m for _, m in train + test]  # kept on the 0-1 scale
    assert t["key"].iloc[0] == "Images/ss01 (100).jpg" and t["key"].iloc[1] == "Images/ss02 (101).JPG"
    assert set(t["subset"]) == {"ss01", "ss02", "ss03"}
    # the official split: its test part as is, a seeded val part carved from train
    s0, s1 = make_splits(t, "official", 0), make_splits(t, "official", 1)
    test_keys = set(s0.parts["test"])
    assert len(test_keys) == 4 and set(s1.parts["test"]) == test_keys
    assert len(s0.parts["val"]) == 1 and len(s0.parts["train"]) == 7
    assert not (set(s0.parts["val"]) | set(s0.parts["train"])) & test_keys
    # a file missing from the folder is reported by name
    (tmp_path / "BIQ2021" / "Images" / "ss01 (103).jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"ss01 \(103\)\.jpg"):
        load_dataset("biq2021", tmp_path / "BIQ2021")


def test_biq2021_csv_problems_name_the_csv(tmp_path):
    make_biq2021(tmp_path / "BIQ2021")
    test_csv = tmp_path / "BIQ2021" / "Test (Images and MOS).csv"
    test_csv.write_text("")
    with pytest.raises(ValueError, match=r"Test \(Images and MOS\)\.csv: cannot read as a UTF-8 CSV"):
        load_dataset("biq2021", tmp_path / "BIQ2021")
    test_csv.write_text("Image Name,MOS\nss01 (108).jpg,85\n")  # a 0-100 sheet on BIQ2021's 0-1 scale
    with pytest.raises(ValueError, match=r"outside the dataset's scale \[0, 1\]: ss01 \(108\)\.jpg \(85\)"):
        load_dataset("biq2021", tmp_path / "BIQ2021", on_missing="keep")


def test_official_protocol_needs_a_split_column():
    with pytest.raises(ValueError, match="'split' column"):
        make_splits(pd.DataFrame({"image": [f"/d/{i}.png" for i in range(20)], "mos": range(20)}), "official", 0)


# -- human scene labels -------------------------------------------------------------------------
def write_scene_labels(path, rows):
    path.write_text("image,source_name,scene1,scene2,scene3,distortion\n"
                    + "".join(f"{i},{i.split('/')[-1]},{a},{b},{c},{d}\n" for i, a, b, c, d in rows))


def test_scene_labels_map_and_join_by_dataset_key(tmp_path):
    data = tmp_path / "clive"
    rows = []
    for i in range(4):
        write_image(data / "images" / f"{i}.png", 32, 32, seed=i)
        rows.append({"image": f"images/{i}.png", "mos": 10.0 * i})
    (data / "scores.csv").write_text(pd.DataFrame(rows).to_csv(index=False))
    write_scene_labels(data / "scene_labels.csv", [
        ("images/0.png", "night", "others", "", "realistic blur"),
        ("images/1.png", "still_life", "", "", "overexposure"),
        ("images/2.png", "indoor", "human", "plant", "realistic noise"),
    ])
    table = load_dataset("csv", data / "scores.csv").table
    joined = join_labels(table, data / "scene_labels.csv", data)
    assert list(joined["category"].iloc[:3]) == ["night scene", "artifact", "indoor scene"]
    assert joined["categories"].iloc[2] == "indoor scene|human|plant"
    assert joined["distortion"].iloc[1] == "overexposure"
    assert pd.isna(joined["category"].iloc[3])  # unlabelled: no content label, kept
    # the data moves: the join still holds (keys are dataset-relative, not absolute paths)
    moved = tmp_path / "elsewhere" / "clive"
    moved.parent.mkdir()
    data.rename(moved)
    again = join_labels(load_dataset("csv", moved / "scores.csv").table, moved / "scene_labels.csv", moved)
    assert list(again["category"].iloc[:3]) == list(joined["category"].iloc[:3])
    assert "vehicle" not in HUMAN_LABEL_CATEGORIES and len(HUMAN_LABEL_CATEGORIES) == 9
    bad = tmp_path / "bad.csv"
    write_scene_labels(bad, [("images/0.png", "spaceship", "", "", "")])
    with pytest.raises(ValueError, match="unknown scene"):
        read_labels(bad)


def test_label_names_are_read_in_every_spelling_and_a_conflict_is_refused(tmp_path):
    """A ``categories`` cell was compared as typed ("Vehicle|Others" never met "vehicle"), LIQE's names
    were unknown in a ``category`` column, and an image listed twice kept whichever came first."""
    data = tmp_path / "d"
    for i in range(3):
        write_image(data / "images" / f"{i}.png", 32, 32, seed=i)
    table = pd.DataFrame({"image": [str(data / "images" / f"{i}.png") for i in range(3)], "mos": [1.0, 2.0, 3.0]})
    labels = data / "labels.csv"
    labels.write_text("image,category,categories\nimages/0.png,Vehicle,Vehicle|Others\n"
                      "images/1.png,night,indoor | Night_Scene\nimages/2.png,still_life,\n")
    joined = join_labels(table, labels, data)
    assert joined["category"].tolist() == ["vehicle", "night scene", "artifact"]
    assert joined["categories"].tolist()[:2] == ["others|vehicle", "indoor scene|night scene"]
    cats = ["vehicle", "others", "night scene", "artifact"]
    m = metrics_from_predictions(None, joined, MOSScale(0, 5), np.array([0, 2, 3]), cats)
    assert m["accuracy"] == 1.0 and m["acceptable"] == 1.0
    labels.write_text("image,category\nimages/0.png,animal\nimages/1.png,human\nimages/0.png,animal\n")
    assert join_labels(table, labels, data)["category"].tolist()[:2] == ["animal", "human"]  # the same twice: fine
    labels.write_text("image,category\nimages/0.png,animal\nimages/1.png,human\nimages/0.png,human\n")
    with pytest.raises(ValueError, match=r"labels\.csv: 1 image\(s\) listed twice with different labels.*0\.png"):
        join_labels(table, labels, data)
    # keys and paths in one file (two exports joined): each row read as it is written
    labels.write_text(f"image,category\nimages/0.png,animal\n{data / 'images' / '1.png'},human\n./images/2.png,plant\n")
    assert join_labels(table, labels, data)["category"].tolist() == ["animal", "human", "plant"]
    labels.write_text("image,category\nimages/0.png,animal\n./images/0.png,human\n")  # one image, two spellings
    with pytest.raises(ValueError, match="listed twice with different labels"):
        join_labels(table, labels, data)


def test_label_files_columns_are_read_in_any_case(tmp_path):
    """'Image'/'Scene1'/'Category' (a spreadsheet's header) was refused as having no 'image' column, and
    an image name of '001' read as the number 1."""
    path = tmp_path / "labels.csv"
    path.write_text("Image,Scene1,Scene2,Distortion\n001,night,,blur\n")
    assert read_labels(path).to_dict("records") == [
        {"image": "001", "category": "night scene", "categories": "night scene", "category_source": "human",
         "distortion": "blur"}]
    path.write_text("IMAGE,Category,Category_Confidence\n002,animal,0.5\n")
    got = read_labels(path)
    assert got["image"].tolist() == ["002"] and got["category_confidence"].tolist() == [0.5]
    path.write_text("category, image\nanimal, a.png\n")  # written by hand after a comma and space
    assert read_labels(path)["image"].tolist() == ["a.png"]
    path.write_text("image,category,category_confidence\n002,animal,high\n")
    with pytest.raises(ValueError, match=r"labels\.csv: category_confidence is not a number"):
        read_labels(path)
    for header in ("image,Image,category", "image,image,category"):
        path.write_text(f"{header}\n1,2,animal\n")
        with pytest.raises(ValueError, match=r"labels\.csv: column\(s\) \['image'\] given twice"):
            read_labels(path)


def test_acceptable_accuracy_of_a_head_with_its_own_spelling_of_the_categories():
    """The labels were normalised (LIQE's night -> night scene) and the head's own names were not:
    a head named with LIQE's words never met any label."""
    table = pd.DataFrame({"mos": [1.0, 2.0, 3.0], "category": ["night", "indoor", "night"],
                          "categories": ["night", "indoor|night", "night"]})
    for cats in (("day", "night", "indoor"), ("Day", "Night", "Indoor")):
        m = metrics_from_predictions(None, table, MOSScale(0, 10), np.array([1, 2, 1]), cats)
        assert m["accuracy"] == 1.0 and m["acceptable"] == 1.0, cats


def test_acceptable_accuracy_counts_any_label():
    cats = ["animal", "human", "plant"]
    table = pd.DataFrame({"mos": [1.0, 2.0, 3.0, 4.0], "category": ["animal", "human", "plant", None],
                          "categories": ["animal|human", "human", "plant|animal", None]})
    pred = np.array([1, 1, 1, 0])  # human, human, human, animal
    m = metrics_from_predictions(None, table, MOSScale(0, 5), pred, cats)
    assert m["accuracy"] == pytest.approx(1 / 3)  # only the second is the main label
    assert m["acceptable"] == pytest.approx(2 / 3)  # first and second are among the labels


def test_acceptable_accuracy_is_never_below_top1_and_a_vocabulary_of_ones_own_meets_itself():
    """A cell listed with commas, a cell without the main label, or labels the head has none of
    counted as misses (any-label accuracy 0 where top-1 was 1); 'Cat' in a model never met 'cat'."""
    from contentiqa.training.evaluate import category_indices

    cats = ["Human", "Animal", "Plant"]
    table = pd.DataFrame({"mos": [1.0, 2.0, 3.0, 4.0], "category": ["human", "animal", "plant", "vehicle"],
                          "categories": ["human, plant", "landscape; plant", "", "vehicle"]})
    m = metrics_from_predictions(None, table, MOSScale(0, 5), np.array([2, 1, 2, 0]), cats)
    assert m["accuracy"] == 2 / 3 and m["n_labelled"] == 3  # the vehicle photo: no label of this head
    assert m["acceptable"] == 1.0  # plant is one of the first's labels; the main label is always one
    assert category_indices(["cat", "Cat", " CAT ", "DOG", None], ["Cat", "Dog"]).tolist() == [0, 0, 0, 1, -1]


def test_a_vocabulary_of_ones_own_reads_back_in_the_heads_spelling(tmp_path, capsys):
    """Labels are compared in one spelling: the predictions file then had 'cat' beside 'Cat' (never
    equal as strings), and label-content's summary counted every photo under names the head lacks."""
    from contentiqa.cli.label_content import _print_summary
    from contentiqa.training.evaluate import evaluate_model

    torch.manual_seed(0)
    model = create_model("iqa-cr-c", pretrained=False, categories=["Cat", "Dog"], **TINY).eval()
    for i in range(4):
        write_image(tmp_path / f"{i}.png", 48, 48, seed=i)
    table = pd.DataFrame({"image": [str(tmp_path / f"{i}.png") for i in range(4)], "mos": [1.0, 2.0, 3.0, 4.0],
                          "category": ["cat", "DOG", "bird", None]})
    _, preds = evaluate_model(model, table, MOSScale(0, 5), workers=0)
    assert preds["category"].tolist()[:3] == ["Cat", "Dog", "bird"] and set(preds["pred_category"]) <= {"Cat", "Dog"}
    labeled = pd.DataFrame({"category": ["cat", "cat", "dog"], "category_confidence": [0.5, 0.7, 0.9],
                            "category_source": ["model:x"] * 3})
    _print_summary(labeled, tmp_path / "l.csv", ["Cat", "Dog"], review=0.0)
    rows = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines()[2:4]}
    assert rows == {"cat": "2", "dog": "1"}


# -- the ranking (fidelity) loss -----------------------------------------------------------------
def test_fidelity_loss_matches_the_formula():
    pred = torch.tensor([0.3, 0.5, 0.1])
    target = torch.tensor([0.2, 0.9, 0.2])
    sigma = 0.1
    expected = []
    for i in range(3):
        for j in range(i + 1, 3):
            p = norm.cdf((pred[i] - pred[j]).item() / (np.sqrt(2) * sigma))
            t = 1.0 if target[i] > target[j] else 0.0 if target[i] < target[j] else 0.5
            expected.append(1 - np.sqrt(p * t) - np.sqrt((1 - p) * (1 - t)))
    assert float(fidelity_loss(pred, target, sigma)) == pytest.approx(np.mean(expected), abs=1e-4)
    # the order is what counts: a correctly ordered, well separated batch costs ~0
    assert float(fidelity_loss(torch.tensor([0.0, 1.0]), torch.tensor([0.3, 0.4]), 0.05)) < 1e-3


# -- pooled frozen features ---------------------------------------------------------------------
@pytest.fixture
def two_tables(tmp_path):
    rng = np.random.default_rng(0)
    out = {}
    for name, (lo, hi) in (("A", (0, 100)), ("B", (0, 1))):
        rows = []
        for i in range(10):
            p = write_image(tmp_path / name / f"{i}.png", 64, 64 if i % 2 else 80, seed=i + (50 if name == "B" else 0))
            rows.append({"image": str(p), "mos": float(rng.uniform(lo, hi)), "category": HUMAN_LABEL_CATEGORIES[i % 3]})
        out[name] = pd.DataFrame(rows)
    return out


@pytest.mark.parametrize("name", ["iqa-cr", "iqa-cr-q", "mtl-pooled"])
def test_pooled_cache_equals_the_full_forward(name, two_tables, tmp_path):
    """With every used stage frozen, the cached pooled grids reproduce the model's output."""
    from contentiqa.training.cache import cached_encodings

    torch.manual_seed(0)
    model = create_model(name, pretrained=False, **TINY).eval()
    paths = list(two_tables["A"]["image"][:3])
    enc = cached_encodings(model, paths, model.feature_end, train=False, cache_dir=tmp_path / "c", dtype=torch.float32,
                           progress=False)
    from contentiqa.data import load_image

    for p, e in zip(paths, enc):
        x = model.preprocess(load_image(p).image)[None]
        with torch.no_grad():
            full = model(x)
            cached = model.forward_cached({k: v[:1] for k, v in e.items()}, model.feature_end)
        for k in full:
            assert torch.allclose(full[k], cached[k], atol=1e-5), k


def test_onnx_encoder_matches_torch(two_tables):
    pytest.importorskip("onnxruntime")
    from contentiqa.training.cache import cached_encodings

    torch.manual_seed(0)
    model = create_model("iqa-cr", pretrained=False, **TINY).eval()
    paths = list(two_tables["A"]["image"][:3])  # two shapes: one graph each
    a = cached_encodings(model, paths, model.feature_end, False, None, dtype=torch.float32, progress=False)
    b = cached_encodings(model, paths, model.feature_end, False, None, dtype=torch.float32, progress=False, runtime="onnx")
    for x, y in zip(a, b):
        assert set(x) == set(y) == {"grid", "gap"}
        for k in x:
            assert torch.allclose(x[k], y[k], atol=1e-4)


def test_trainer_on_pooled_features_and_several_datasets(two_tables, tmp_path):
    """One model on two datasets with different MOS scales: targets normalised per dataset,
    batches within one dataset, validation per dataset and averaged."""
    torch.manual_seed(0)
    model = create_model("iqa-cr", pretrained=False, categories=HUMAN_LABEL_CATEGORIES, **TINY)
    a, b = two_tables["A"].assign(dataset="A"), two_tables["B"].assign(dataset="B")
    train = pd.concat([a.iloc[:7], b.iloc[:7]], ignore_index=True)
    val = pd.concat([a.iloc[7:], b.iloc[7:]], ignore_index=True)
    cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-3, patience=0, warmup_epochs=0.5, crop=None,
                      cache_stages=model.feature_end, rank_weight=1.0, cache_runtime="onnx")
    tr = Trainer(model, train, val, {"A": MOSScale(0, 100), "B": MOSScale(0, 1)}, cfg, tmp_path / "run",
                 progress=False, cache_dir=tmp_path / "cache", log=lambda *a: None)
    assert set(tr.train_ds.encodings[0]) == {"grid", "gap"} and tr.train_ds.encodings[0]["grid"].shape[0] == 1
    # on an accelerator its CPU encoder would mix two devices' tensors: said before any work
    import contentiqa.training.trainer as trainer_module

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer_module, "resolve_device", lambda device: torch.device("cuda", 0))
        with pytest.raises(ValueError, match="cache_runtime 'onnx' encodes on the CPU"):
            Trainer(create_model("iqa-cr", pretrained=False, categories=HUMAN_LABEL_CATEGORIES, **TINY), train, val,
                    {"A": MOSScale(0, 100), "B": MOSScale(0, 1)}, cfg, tmp_path / "run2", progress=False,
                    log=lambda *a: None)
    t, _ = tr._targets(train)
    assert np.allclose(t, np.r_[a["mos"].iloc[:7] / 100, b["mos"].iloc[:7]])
    for batch in tr.sampler:
        assert len(set(train["dataset"].iloc[batch])) == 1
    best = tr.fit()
    assert {"val_A/srocc", "val_B/srocc", "val_srocc"} <= set(best)
    assert best["val_srocc"] == pytest.approx((best["val_A/srocc"] + best["val_B/srocc"]) / 2)
    assert "loss_rank" in best and model.scale == MOSScale(0, 100)
    with pytest.raises(ValueError, match="'dataset' column"):
        Trainer(model, train.drop(columns=["dataset"]), None, {"A": MOSScale(0, 100)}, cfg, tmp_path / "r2",
                progress=False, log=lambda *a: None)


def test_the_schedule_counts_each_epochs_own_batches(two_tables, tmp_path):
    """With dataset_ratio and photos of two shapes an epoch's batches vary: counted as epoch 0's, the
    cosine reached 0 before the last steps (or never), and a resume took another path."""
    from itertools import accumulate

    a, b = two_tables["A"].assign(dataset="A"), two_tables["B"].assign(dataset="B")
    train = pd.concat([a.iloc[:4], b], ignore_index=True)  # A: 4 photos; B: 10 of two shapes
    cfg = TrainConfig(epochs=6, batch_size=2, crop=None, warmup_epochs=0, dataset_ratio={"A": 1, "B": 1})
    tr = Trainer(create_model("iqa-cr-q", pretrained=False, **{**TINY, "grid": [2, 2]}), train, None,
                 {"A": MOSScale(0, 100), "B": MOSScale(0, 1)}, cfg, tmp_path / "run", progress=False, log=lambda *a: None)
    counts = []
    for epoch in range(cfg.epochs):
        tr.sampler.set_epoch(epoch)
        counts.append(len(list(tr.sampler)))
    assert len(set(counts)) > 1  # the case at hand: epochs of different lengths
    assert tr.epoch_starts == [0, *accumulate(counts)]
    head = tr.scheduler.lr_lambdas[0]
    last = tr.epoch_starts[-1] - 1
    assert head(last) > 0 and head(tr.epoch_starts[-1]) == pytest.approx(0.0)  # anneals over every step, to the end


def test_ie_iqa_pooled_cache(two_tables, tmp_path):
    torch.manual_seed(0)
    model = create_model("ie-iqa-distortion", pretrained=False, distortion_pretrained=False, input_size=64,
                         train_resize=72, bn_eval=True, hidden=(32, 16))
    cfg = TrainConfig(epochs=1, batch_size=4, lr=1e-2, optimizer="sgd", patience=0, crop=None, cache_stages=model.feature_end)
    table = two_tables["A"]
    tr = Trainer(model, table.iloc[:8], table.iloc[8:], MOSScale(0, 100), cfg, tmp_path / "run", progress=False,
                 cache_dir=tmp_path / "cache", log=lambda *a: None)
    assert set(tr.train_ds.encodings[0]) == {"g"}
    tr.fit()
    from contentiqa.training.evaluate import evaluate_model

    direct, _ = evaluate_model(model, table, workers=0)
    assert tr.evaluate_table(table)["srocc"] == pytest.approx(direct["srocc"], abs=1e-6)


def test_experiment_on_two_datasets(two_tables, tmp_path):
    """``data`` as a list: one model, both datasets' test parts reported."""
    from contentiqa.experiments import run_experiment

    for name, t in two_tables.items():
        t.assign(image=[p.split("/")[-1] for p in t["image"]]).to_csv(tmp_path / name / "scores.csv", index=False)
    (tmp_path / "A" / "scores.csv").write_text("# mos_range: 0 100\n" + (tmp_path / "A" / "scores.csv").read_text())
    (tmp_path / "B" / "scores.csv").write_text("# mos_range: 0 1\n" + (tmp_path / "B" / "scores.csv").read_text())
    cfg = {
        "name": "two", "protocol": "ie-iqa", "seeds": 1,
        "data": [{"root": "A/scores.csv", "label": "A"}, {"root": "B/scores.csv", "label": "B"}],
        "test": ["split"],
        "model_args": {**TINY, "grid": [2, 2]},
        "train": {"epochs": 1, "batch_size": 4, "crop": None, "cache_stages": 9, "lr": 1e-3, "rank_weight": 0.5},
        "runs": [{"name": "Q", "model": "iqa-cr-q"}, {"name": "later", "model": "iqa-cr-q"}],
    }
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(cfg))
    from contentiqa.experiments import ConfigError

    with pytest.raises(ConfigError, match="no row named"):
        run_experiment(tmp_path / "two.yaml", tmp_path / "out", progress=False, log=None, only=["nope"])
    res = run_experiment(tmp_path / "two.yaml", tmp_path / "out", progress=False, log=None, only=["Q"])
    assert res.results["later"]["splits"] == []  # --only: the other row waits
    split = res.results["Q"]["splits"][0]
    assert set(split["test"]) == {"A", "B"} and split["n_train"] == 16
    assert (tmp_path / "out" / "splits.json").is_file() and (tmp_path / "out" / "splits_B.json").is_file()
    assert "A SROCC" in res.markdown and "B SROCC" in res.markdown
    # the same photos rated again as a second set: split on its own, they would train in one and test in the other
    (tmp_path / "C").mkdir()
    a, b = (pd.read_csv(tmp_path / s / "scores.csv", comment="#") for s in "AB")  # a combined release of both
    both = pd.concat([a.assign(image="../A/" + a["image"]), b.assign(image="../B/" + b["image"], mos=b["mos"] * 100)])
    (tmp_path / "C" / "scores.csv").write_text("# mos_range: 0 100\n" + both.to_csv(index=False))
    shared = {**cfg, "data": [{"root": "A/scores.csv", "label": "A"}, {"root": "C/scores.csv", "label": "C"}]}
    with pytest.raises(ConfigError, match="photo.s. train in one dataset and are held out in another"):
        run_experiment(shared, tmp_path / "out_shared", progress=False, log=None, base_dir=tmp_path, only=["Q"])


def test_a_set_without_a_validation_part_beside_one_with_is_said_as_it_is(two_tables, tmp_path, capsys):
    """The notes said best.pt would be the lowest training loss and calibration could not run (the
    other set's validation part chose it and calibrated), and that the set's 0 validation photos
    were "still used" for calibration."""
    from contentiqa.cli.main import main

    a = two_tables["A"].assign(image=[p.split("/")[-1] for p in two_tables["A"]["image"]])
    (tmp_path / "A" / "a.csv").write_text("# mos_range: 0 100\n" + a.drop(columns=["category"]).to_csv(index=False))
    b = two_tables["B"].assign(image=[p.split("/")[-1] for p in two_tables["B"]["image"]],
                               split=["train"] * 4 + ["val"] * 4 + ["test"] * 2)
    (tmp_path / "B" / "b.csv").write_text("# mos_range: 0 1\n" + b.drop(columns=["category"]).to_csv(index=False))
    args = ["train", "--model", "iqa-cr-q", "--data", str(tmp_path / "A" / "a.csv"), "--data", str(tmp_path / "B" / "b.csv"),
            "--protocol", "ie-iqa", "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "4",
            "--set", "crop=null", "--set", "cache_stages=9", "--set", "calibrate=false"]
    for k, v in {"backbone_pretrained": False, "dim": 16, "heads": 2, "mlp_dim": 32, "depth": 1}.items():
        args += ["--set", f"model.{k}={v}"]
    assert main(args + ["--set", "model.grid=[2, 2]", "--quiet"]) == 0
    said = capsys.readouterr()
    text = said.out + said.err
    assert "note: a has no validation part: b chooses the best epoch" in said.err  # --quiet too, as every such note
    assert "lowest training loss" not in text and "still used" not in text


def test_a_photo_two_datasets_share_never_trains_in_one_and_is_measured_in_the_other(two_tables, tmp_path, capsys):
    """Each set is split on its own: a relabelled release of the same photos had them in one set's
    training part and the other's test part, and its test figures were measured on trained photos."""
    from contentiqa.cli.main import main

    a = two_tables["A"].assign(image=[p.split("/")[-1] for p in two_tables["A"]["image"]])
    (tmp_path / "A" / "a.csv").write_text("# mos_range: 0 100\n" + a.drop(columns=["category"]).to_csv(index=False))
    relabel = tmp_path / "C" / "c.csv"  # the same photos, rated again on 1-5, with a split of its own
    relabel.parent.mkdir()
    c = a.assign(image=[f"../A/{p}" for p in a["image"]], mos=np.linspace(1, 5, len(a)), split=["train"] * 5 + ["test"] * 5)
    relabel.write_text("# mos_range: 1 5\n" + c.drop(columns=["category"]).to_csv(index=False))
    args = ["train", "--model", "iqa-cr-q", "--data", str(tmp_path / "A" / "a.csv"), "--data", str(relabel),
            "--protocol", "ie-iqa", "--out", str(tmp_path / "run"), "--epochs", "1", "--quiet",
            "--set", "cache_stages=9", "--set", "model.backbone_pretrained=false"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "photo(s) train in one dataset and are held out in another" in err and "measured on photos the model" in err
    assert not (tmp_path / "run" / "best.pt").exists()


def test_label_content_with_a_trained_content_head(tmp_path, capsys):
    """Unlabelled data gets pseudo-labels from a trained content head (here a tiny one with the
    nine human-label categories), not from ImageNet alone; given labels are kept."""
    from contentiqa.cli.main import main
    from contentiqa.models.registry import save_checkpoint

    torch.manual_seed(0)
    model = create_model("iqa-cr", pretrained=False, categories=HUMAN_LABEL_CATEGORIES, **TINY)
    ckpt = save_checkpoint(model.eval(), tmp_path / "content.pt")
    for i in range(3):
        write_image(tmp_path / "d" / f"{i}.png", 40, 48, seed=i)
    (tmp_path / "d" / "scores.csv").write_text("image,mos,category\n0.png,1,\n1.png,2,human\n2.png,3,\n")
    assert main(["label-content", str(tmp_path / "d" / "scores.csv"), "--out", str(tmp_path / "l.csv"),
                 "--model", str(ckpt), "--quiet"]) == 0
    out = pd.read_csv(tmp_path / "l.csv")
    # the checkpoint by its path: model:iqa-cr would say the shipped head labelled them
    assert out["category_source"].tolist() == [f"model:{ckpt}", "given", f"model:{ckpt}"]
    assert out["category"][1] == "human" and set(out["category"]) <= set(HUMAN_LABEL_CATEGORIES)
    direct = model.predict(str(tmp_path / "d" / "0.png"))
    assert out["category"][0] == direct.category
    assert "vehicle" not in capsys.readouterr().out  # the summary lists the model's own categories


def test_weights_are_tags_of_a_registered_name():
    """timm-style ``name.tag``: the tag picks the weights, never the architecture; a bare name
    loads the default tag."""
    from contentiqa.models import list_pretrained
    from contentiqa.models.registry import model_entry, resolve_tag, split_name

    assert split_name("iqa-cr.clive") == ("iqa-cr", "clive") and split_name("iqa-cr") == ("iqa-cr", None)
    tagged = list_pretrained()
    assert {"ie-iqa.clive", "iqa-cr.clive", "iqa-cr-q.clive"} <= set(tagged)
    for spec in tagged:
        name, tag = split_name(spec)
        assert tag in model_entry(name).tags
    entry, tag = resolve_tag("iqa-cr")
    assert tag == entry.default_tag and entry.weights == entry.tags[tag]
    a = create_model("iqa-cr-q.clive", pretrained=True)
    b = create_model("iqa-cr-q", pretrained=True) if model_entry("iqa-cr-q").default_tag == "clive" else a
    assert a.weights_tag == "clive"
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(ValueError, match="no weights tagged 'nope'"):
        create_model("iqa-cr.nope")
    with pytest.raises(ValueError, match="bare name"):
        create_model("iqa-cr.clive", pretrained=False)


def test_train_cli_on_two_datasets(two_tables, tmp_path, capsys):
    """``contentiqa train --data A --data B``: one model, each dataset split on its own (B by its
    'split' column), per-dataset test metrics."""
    import json

    from contentiqa.cli.main import main

    a = two_tables["A"].assign(image=[p.split("/")[-1] for p in two_tables["A"]["image"]])
    (tmp_path / "A" / "a.csv").write_text("# mos_range: 0 100\n" + a.drop(columns=["category"]).to_csv(index=False))
    b = two_tables["B"].assign(image=[p.split("/")[-1] for p in two_tables["B"]["image"]],
                               split=["train"] * 7 + ["test"] * 3)
    (tmp_path / "B" / "b.csv").write_text("# mos_range: 0 1\n" + b.drop(columns=["category"]).to_csv(index=False))
    out = tmp_path / "run"
    args = ["train", "--model", "iqa-cr-q", "--data", str(tmp_path / "A" / "a.csv"), "--data", str(tmp_path / "B" / "b.csv"),
            "--protocol", "ie-iqa", "--out", str(out), "--epochs", "2", "--batch-size", "4", "--quiet",
            "--set", "crop=null", "--set", "cache_stages=9", "--set", "rank_weight=0.5", "--set", "ema_decay=0.9"]
    for k, v in {"backbone_pretrained": False, "dim": 16, "heads": 2, "mlp_dim": 32, "depth": 1}.items():
        args += ["--set", f"model.{k}={v}"]
    args += ["--set", "model.grid=[2, 2]"]
    assert main(args) == 0
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert set(metrics) == {"a", "b"} and metrics["b"]["n"] == 3 and metrics["a"]["n"] == 2
    # a's split is made (and kept for --resume); b's is its own 'split' column
    assert (out / "splits" / "a" / "split.json").is_file() and not (out / "splits" / "b" / "split.json").exists()
    said = capsys.readouterr().out
    assert "test a:" in said and "test b:" in said and "lowest training loss" in said and str(out / "best.pt") in said
    # What was tested is what best.pt keeps (the moving average's weights), as `evaluate` finds it;
    # with no validation part it used to be the last epoch's raw weights, saved nowhere.
    again = tmp_path / "b_test.json"
    assert main(["evaluate", "--model", str(out / "best.pt"), "--data", str(tmp_path / "B" / "b.csv"), "--quiet",
                 "--json", str(again)]) == 0
    assert json.loads(again.read_text())["srocc"] == pytest.approx(metrics["b"]["srocc"], abs=1e-6)
    assert json.loads(again.read_text())["rmse"] == pytest.approx(metrics["b"]["rmse"], rel=1e-5)
    capsys.readouterr()
    assert main(args[:1] + ["--data", "x.csv", "--data", "y.csv", "--dataset", "csv", "--dataset", "csv",
                            "--dataset", "csv", "--model", "iqa-cr-q"]) == 2
