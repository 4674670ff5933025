"""CPU fine-tuning: per-part caches, frozen levels cached pooled, balanced draws across datasets,
synthetic damage and anchors, calibrated output."""
from __future__ import annotations

import json
import os
import struct
import time
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import write_image
from contentiqa.data.degrade import BAD_FRAMES, DEGRADATIONS, LEVELS, apply_spec, bad_frame, degrade
from contentiqa.data.table import MOSScale
from contentiqa.models import create_model, load_checkpoint
from contentiqa.models.registry import save_checkpoint
from contentiqa.training.cache import cached_encodings
from contentiqa.training.calibration import fit_calibration, logistic
from contentiqa.training.config import TrainConfig
from contentiqa.training.data import ShapeGroupedBatchSampler
from contentiqa.training.losses import anchor_loss, ordered_fidelity_loss
from contentiqa.training.trainer import Trainer

IE_TINY = dict(pretrained=False, distortion_pretrained=False, intelligibility_pretrained=False, input_size=64,
               train_resize=72, bn_eval=True, hidden=(16, 8))


def _photo(seed: int = 0, size: int = 96) -> Image.Image:
    """A photo-like image: smooth gradients plus texture, so every degradation has something to damage."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([120 + 80 * np.sin(6 * x + c) * np.cos(4 * y) for c in range(3)], -1)
    arr = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


@pytest.fixture
def two_sets(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(20):
        ds = "A" if i < 10 else "B"
        p = write_image(tmp_path / "img" / f"{ds}{i}.png", 64, 64, seed=i)
        rows.append({"image": str(p), "mos": float(rng.uniform(0, 100) if ds == "A" else rng.uniform(1, 5)),
                     "dataset": ds})
    return pd.DataFrame(rows)


# -- synthetic damage --------------------------------------------------------------------------
def _sharpness(img: Image.Image) -> float:
    a = np.asarray(img.convert("L"), dtype=np.float64)
    return float(np.abs(np.diff(a, axis=0)).mean() + np.abs(np.diff(a, axis=1)).mean())


def test_each_degradation_gets_worse_with_its_level():
    img = _photo()
    ref = np.asarray(img, dtype=np.float64)
    for kind in DEGRADATIONS:
        outs = [degrade(img, kind, lv, seed=3) for lv in (0, *LEVELS)]
        assert all(o.size == img.size and o.mode == "RGB" for o in outs)
        assert np.array_equal(np.asarray(outs[0]), np.asarray(img))  # level 0: the photo itself
        if kind == "blur":
            values = [-_sharpness(o) for o in outs]
        elif kind == "underexposure":
            values = [-np.asarray(o, dtype=np.float64).mean() for o in outs]
        elif kind == "overexposure":
            values = [np.asarray(o, dtype=np.float64).mean() for o in outs]
        else:  # noise, jpeg: further from the photo at every level
            values = [np.abs(np.asarray(o, dtype=np.float64) - ref).mean() for o in outs]
        assert all(b > a for a, b in zip(values, values[1:])), (kind, values)
    assert np.array_equal(np.asarray(degrade(img, "noise", 2, seed=5)), np.asarray(degrade(img, "noise", 2, seed=5)))
    with pytest.raises(ValueError, match="unknown degradation"):
        degrade(img, "smear", 1)
    with pytest.raises(ValueError, match="level"):
        degrade(img, "blur", 5)


def test_a_16_bit_photo_is_degraded_on_its_range_not_clipped_to_white():
    """convert("RGB") clipped 16-bit values to 255: the 'degraded' copy was a white frame."""
    from contentiqa.data.degrade import bad_frame

    ramp = Image.fromarray(np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16))
    for out in (degrade(ramp, "blur", 1), degrade(ramp, "noise", 0), bad_frame(ramp, "pixelated 8x")):
        assert out.mode == "RGB" and 100 < np.asarray(out, dtype=np.float64).mean() < 155


def test_bad_frames_are_what_they_say():
    img = _photo(size=80)
    assert set(np.unique(np.asarray(bad_frame(img, "black")))) == {0}
    assert set(np.unique(np.asarray(bad_frame(img, "white")))) == {255}
    assert set(np.unique(np.asarray(bad_frame(img, "gray")))) == {128}
    assert _sharpness(bad_frame(img, "blur r16")) < 0.2 * _sharpness(img)
    pix = np.asarray(bad_frame(img, "pixelated 8x"))
    assert np.array_equal(pix[:8, :8], np.broadcast_to(pix[0, 0], (8, 8, 3)))  # 8x8 blocks
    assert all(bad_frame(img, k).size == img.size for k in BAD_FRAMES)
    assert np.array_equal(np.asarray(apply_spec(img, "bad:white")), np.asarray(bad_frame(img, "white")))
    assert np.array_equal(np.asarray(apply_spec(img, "degrade:blur:2")), np.asarray(degrade(img, "blur", 2)))
    with pytest.raises(ValueError, match="damage spec"):
        apply_spec(img, "blur:2")


# -- losses --------------------------------------------------------------------------------------
def test_ordered_fidelity_loss_rewards_the_right_order():
    right = torch.tensor([[0.9, 0.7, 0.5, 0.3, 0.1]])
    assert ordered_fidelity_loss(right).item() < 0.01
    assert ordered_fidelity_loss(right.flip(-1)).item() > 0.9
    s = torch.tensor([[0.5, 0.5, 0.5]], requires_grad=True)
    ordered_fidelity_loss(s).backward()
    assert s.grad[0, 0] < 0 < s.grad[0, 2]  # the best pushed up, the worst down


def test_anchor_loss_pushes_bad_frames_below_photos_and_to_the_bottom():
    photos = torch.tensor([0.4, 0.6, 0.8])
    assert anchor_loss(torch.tensor([0.0]), photos).item() < 0.01
    a = torch.tensor([0.7], requires_grad=True)
    loss = anchor_loss(a, photos)
    loss.backward()
    assert loss.item() > 0.3 and a.grad.item() > 0


# -- calibration ----------------------------------------------------------------------------------
def test_calibration_recovers_a_logistic_and_stays_in_bounds():
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.2, 1.2, 400)
    y = logistic(x, 0.01, 0.97, 0.5, 0.15) + rng.normal(0, 0.01, x.shape)
    a, b, c, d = fit_calibration(x, y)
    assert a == pytest.approx(0.01, abs=0.02) and a + b == pytest.approx(0.98, abs=0.03)
    assert c == pytest.approx(0.5, abs=0.03) and d == pytest.approx(0.15, abs=0.03)
    grid = logistic(np.linspace(-10, 10, 101), a, b, c, d)
    assert np.all(np.diff(grid) >= 0) and grid.min() >= 0 and grid.max() <= 1
    with pytest.raises(ValueError, match="at least 8"):
        fit_calibration([0.1, 0.2], [0.1, 0.2])


def test_calibration_refuses_outputs_it_cannot_map_instead_of_squeezing_them():
    """Constant outputs were 'calibrated' into a step at them and stored without a word."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, 50)
    y = np.clip(0.2 + 0.6 * x + rng.normal(0, 0.05, 50), 0, 1)
    with pytest.raises(ValueError, match="outputs are constant on the 50 calibration photos"):
        fit_calibration(np.full(50, 0.5), y)
    with pytest.raises(ValueError, match="10 outputs, 9 MOS"):
        fit_calibration(np.linspace(0, 1, 10), np.linspace(0, 1, 9))


def test_calibration_weights_decide_whose_photos_the_curve_follows():
    """Two sets whose raters map the same outputs differently: the fit follows the set that
    weighs more, and equal total weights meet between them (``calibrate_on: each``)."""
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.uniform(0, 1, 300), rng.uniform(0, 1, 30)])
    y = np.concatenate([logistic(x[:300], 0.0, 0.95, 0.4, 0.1), logistic(x[300:], 0.0, 0.95, 0.6, 0.1)])
    c_plain = fit_calibration(x, y)[2]
    c_few = fit_calibration(x, y, np.r_[np.zeros(300), np.ones(30)])[2]
    c_each = fit_calibration(x, y, np.r_[np.full(300, 1 / 300), np.full(30, 1 / 30)])[2]
    assert c_plain == pytest.approx(0.4, abs=0.03) and c_few == pytest.approx(0.6, abs=0.01)
    assert c_plain + 0.05 < c_each < c_few - 0.05
    for bad in (np.ones(3), np.r_[-np.ones(300), np.ones(30)], np.zeros(330)):
        with pytest.raises(ValueError, match="weights"):
            fit_calibration(x, y, bad)


def test_calibration_travels_with_the_weights_and_keeps_the_order(tmp_path):
    torch.manual_seed(0)
    model = create_model("ie-iqa", **IE_TINY).eval()
    x = torch.randn(6, 3, 64, 64)
    with torch.no_grad():
        raw = model(x)["score"]
        model.set_calibration([0.0, 1.0, float(raw.mean()), 0.05])
        cal = model(x)["score"]
        assert torch.equal(raw.argsort(), cal.argsort()) and float(cal.min()) >= 0 and float(cal.max()) <= 1
        assert not torch.allclose(raw, cal)
        back = load_checkpoint(save_checkpoint(model, tmp_path / "m.pt")).eval()
        assert back.cfg.calibration == model.cfg.calibration
        assert torch.allclose(back(x)["score"], cal, atol=1e-6)
    with pytest.raises(ValueError, match="increasing"):
        model.set_calibration([0.0, -1.0, 0.5, 0.1])


BAD_CALIBRATIONS = [[0.0, -0.9, 0.5, 0.2], [0.0, 0.9, 0.5, -0.2], [0.1, 0.9, 0.5], [float("nan"), 0.9, 0.5, 0.2],
                    [0.0, float("inf"), 0.5, 0.2], [0.0, 0.9, 0.5, float("inf")], [0.2, 0.9, 0.5, 0.2],
                    [-0.1, 0.9, 0.5, 0.2], ["a", 0.9, 0.5, 0.2]]


@pytest.mark.parametrize("bad", BAD_CALIBRATIONS, ids=str)
def test_a_calibration_that_reverses_or_leaves_the_scale_is_refused_wherever_it_comes_from(bad, tmp_path):
    """Set, given as a model argument, or read from a checkpoint's config: a decreasing map would
    reverse every ranking without a word, NaN / inf give no scores, a short list a traceback."""
    model = create_model("ie-iqa", **IE_TINY)
    with pytest.raises(ValueError, match="calibration must be"):
        model.set_calibration(bad)
    with pytest.raises(ValueError, match="calibration must be"):
        create_model("ie-iqa", **IE_TINY, calibration=bad)
    path = save_checkpoint(model, tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    payload["config"]["calibration"] = bad
    torch.save(payload, path)
    with pytest.raises(ValueError, match=r"m\.pt: .*calibration must be"):
        load_checkpoint(path)


# -- balanced draws -------------------------------------------------------------------------------
def test_balanced_draws_cover_the_large_set_before_repeating():
    groups = ["A"] * 5 + ["B"] * 23
    s = ShapeGroupedBatchSampler([(g,) for g in groups], 4, seed=1, groups=groups, draws={"A": 5, "B": 5})
    seen_b = []
    for epoch in range(4):
        s.set_epoch(epoch)
        items = [i for b in s for i in b]
        assert sorted(i for i in items if i < 5) == list(range(5))  # the small set whole, every epoch
        b_items = [i for i in items if i >= 5]
        assert len(b_items) == 5
        seen_b += b_items
        assert all(len({groups[i] for i in b}) == 1 for b in s)  # batches never mix sets
    assert len(set(seen_b)) == 20  # 4 epochs x 5 draws: 20 different photos of B, no repeat
    s.set_epoch(2)
    again = [i for b in s for i in b]
    s.set_epoch(2)
    assert [i for b in s for i in b] == again  # reproducible (resume)


def test_a_set_drawn_more_often_than_it_has_photos_gets_new_crops_for_each_repeat(tmp_path):
    """dataset_ratio above a set's size drew its photos several times an epoch, each repeat the same
    crop and flip as the first (a loss weight, not the augmentations asked for)."""
    import pickle

    from contentiqa.training.data import Draw, TrainImages, item_rng

    groups = ["A"] * 6 + ["B"] * 2
    s = ShapeGroupedBatchSampler([(1,)] * 8, 4, seed=3, groups=groups, draws={"B": 8})
    drawn = [i for b in s for i in b]
    b_draws = [i for i in drawn if groups[i] == "B"]
    assert len(b_draws) == 8 and sorted(d.repeat for d in b_draws if d == 6) == [0, 1, 2, 3]
    paths = [str(write_image(tmp_path / f"{i}.png", 40, 48, seed=i)) for i in range(8)]
    ds = TrainImages(paths, [0.5] * 8, [0] * 8, preprocess=lambda im: torch.from_numpy(np.array(im)).permute(2, 0, 1).float(), crop=24, hflip=True, seed=3)
    views = [ds[d][0] for d in b_draws if d == 6]
    assert len({v.numpy().tobytes() for v in views}) == len(views)  # four different crops or flips
    # a first draw keeps the stream it always had (runs resumed across this change see the same crops)
    assert item_rng(3, 0, Draw(6, 0)).integers(1 << 30) == np.random.default_rng([3, 0, 6]).integers(1 << 30)
    assert pickle.loads(pickle.dumps(Draw(6, 2))).repeat == 2  # to DataLoader workers as itself


# -- the cache ------------------------------------------------------------------------------------
def test_ie_iqa_and_its_distortion_ablation_share_the_distortion_cache(two_sets, tmp_path):
    torch.manual_seed(0)
    full = create_model("ie-iqa", **IE_TINY)
    dist = create_model("ie-iqa-distortion", **{k: v for k, v in IE_TINY.items() if k != "intelligibility_pretrained"})
    dist.load_state_dict({k: v for k, v in full.state_dict().items() if k.startswith(("distortion", "stages"))}, strict=False)
    paths = list(two_sets["image"][:2])
    cached_encodings(full, paths, 3, True, tmp_path / "c", progress=False)
    folders = {p.name.split("_")[0]: p for p in (tmp_path / "c").iterdir()}
    assert set(folders) == {"distortion", "intelligibility"}
    before = {f.name: f.stat().st_mtime_ns for f in folders["distortion"].iterdir()}
    enc = cached_encodings(dist, paths, 3, True, tmp_path / "c", progress=False)
    assert {p.name for p in (tmp_path / "c").iterdir()} == {f.name for f in folders.values()}  # no new folder
    assert {f.name: f.stat().st_mtime_ns for f in folders["distortion"].iterdir()} == before  # nothing recomputed
    assert set(enc[0]) == {"x"} and enc[0]["x"].shape[0] == 2  # the image and its mirror
    damaged = cached_encodings(dist, paths[:1], 3, False, tmp_path / "c", progress=False, damage=["bad:black"])
    assert not torch.equal(damaged[0]["x"], enc[0]["x"][:1])  # keyed by the damage too


def test_each_cache_folder_says_what_it_holds_and_when_it_was_last_used(two_sets, tmp_path):
    """What `contentiqa cache` lists and least-recently-used eviction goes by: reading a cached
    encoding marks its folder used, though a read alone would leave its time as it was."""
    from contentiqa.utils.disk_cache import scan

    model = create_model("ie-iqa-distortion", **{k: v for k, v in IE_TINY.items() if k != "intelligibility_pretrained"})
    paths = list(two_sets["image"][:2])
    cached_encodings(model, paths, 3, True, tmp_path / "c", progress=False)
    (folder,) = (tmp_path / "c").iterdir()
    about = json.loads((folder / "about.json").read_text())
    assert about["part"] == "distortion" and about["dtype"] == "float16" and about["views"] == model.cache_view_names()
    os.utime(folder, (1_000_000_000, 1_000_000_000))
    cached_encodings(model, paths, 3, False, tmp_path / "c", progress=False)  # all read from the cache
    (e,) = scan(tmp_path / "c")
    assert e.last_used > time.time() - 60 and e.known and e.files == 3


def test_processes_sharing_a_cache_folder_take_each_others_entries(two_sets, tmp_path, monkeypatch):
    """Seeds trained side by side build one cache together: an entry another process wrote
    after this one listed its work is read, not encoded again, and equals what it would encode."""
    import contentiqa.training.cache as cache_mod

    torch.manual_seed(0)
    model = create_model("ie-iqa-distortion", **{k: v for k, v in IE_TINY.items() if k != "intelligibility_pretrained"})
    paths = list(two_sets["image"][:4])
    reference = cached_encodings(model, paths, 3, True, tmp_path / "ref", progress=False)
    other = tmp_path / "ref"
    shared = tmp_path / "shared"
    loads = []
    real_load = cache_mod.load_image

    def load_and_let_the_other_process_write(path):
        loads.append(path)
        if len(loads) == 1:  # meanwhile the process beside this one finished every other image
            for folder in other.iterdir():
                dest = shared / folder.name
                dest.mkdir(parents=True, exist_ok=True)
                for f in folder.iterdir():
                    if f.name != cache_mod._entry_name(cache_mod._file_key(path, "")):
                        dest.joinpath(f.name).write_bytes(f.read_bytes())
        return real_load(path)

    monkeypatch.setattr(cache_mod, "load_image", load_and_let_the_other_process_write)
    (shared).mkdir()
    enc = cached_encodings(model, paths, 3, True, shared, progress=False)
    assert len(loads) == 1  # one image encoded here, three read from the other process's files
    for a, b in zip(enc, reference):
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize("name", ["ie-iqa-distortion", "iqa-cr"])
def test_levels_inside_the_cached_stages_are_cached_pooled(name, two_sets, tmp_path):
    """Caching past the first feature level (the levels before it stored as the pooled features
    the head reads) gives the same scores as the model run end to end."""
    torch.manual_seed(0)
    if name == "iqa-cr":
        model = create_model(name, pretrained=False, backbone_pretrained=False, dim=16, heads=2, mlp_dim=32, grid=(2, 2),
                             depth=1, categories=["a", "b"])
    else:
        model = create_model(name, **{k: v for k, v in IE_TINY.items() if k != "intelligibility_pretrained"})
    first = min(model.levels)
    k = first + 3  # levels first, first + 1 lie inside the cache
    assert k < model.feature_end
    table = two_sets[two_sets["dataset"] == "A"].iloc[:6].assign(category="a").drop(columns="dataset")
    tr = Trainer(model, table, None, MOSScale(0, 100), TrainConfig(epochs=1, batch_size=2, crop=None, cache_stages=k, lr=1e-3),
                 tmp_path / "run", progress=False, cache_dir=tmp_path / "c", log=lambda *a: None)
    tr.fit()
    enc = tr.train_ds.encodings[0]
    assert ("gf" if name != "iqa-cr" else "gridf") in enc
    model.eval()
    cached = tr.evaluate_table(table)
    direct = {}
    from contentiqa.metrics import plcc

    preds = [p.score for p in model.predict(list(table["image"]))]
    direct["plcc"] = plcc(preds, table["mos"])
    assert cached["plcc"] == pytest.approx(direct["plcc"], abs=2e-3)
    assert "backbone stages" in model.trained_stages(k) and f"0-{k - 1} frozen" in model.trained_stages(k)


def _tiny_iqa_cr(**kw):
    torch.manual_seed(0)
    return create_model("iqa-cr", pretrained=False, backbone_pretrained=False, dim=16, heads=2, mlp_dim=32,
                        grid=(2, 2), depth=1, categories=["a", "b"], **kw)


def test_training_items_change_each_epoch_alike_with_and_without_workers(two_sets, tmp_path):
    """Workers copy the dataset when an epoch's iteration starts: they follow its augmentation
    seed (persistent workers kept the first epoch's crops for good), and starting them draws
    nothing from the global RNG the dropout stream is seeded on."""
    table = two_sets[two_sets["dataset"] == "A"].iloc[:4].assign(category="a").drop(columns="dataset")
    epochs = {}
    for workers in (0, 1):
        tr = Trainer(_tiny_iqa_cr(), table, None, MOSScale(0, 100),
                     TrainConfig(epochs=2, batch_size=2, crop=48, num_workers=workers), tmp_path / f"run{workers}",
                     progress=False, log=lambda *a: None)
        seen = []
        for epoch in (0, 1):
            tr.sampler.set_epoch(epoch)
            tr.train_ds.set_epoch(epoch)
            seen.append(torch.cat([x for x, _, _ in tr.train_loader]))
        epochs[workers] = seen
    for workers, (first, second) in epochs.items():
        assert not torch.equal(first, second), f"{workers} worker(s): the same crops in both epochs"
    assert all(torch.equal(a, b) for a, b in zip(epochs[0], epochs[1]))


def test_a_loader_leaves_the_global_rng_alone(two_sets, tmp_path):
    table = two_sets[two_sets["dataset"] == "A"].iloc[:4].assign(category="a").drop(columns="dataset")
    tr = Trainer(_tiny_iqa_cr(), table, None, MOSScale(0, 100), TrainConfig(epochs=1, batch_size=2, crop=48),
                 tmp_path / "run", progress=False, log=lambda *a: None)
    torch.manual_seed(7)
    want = torch.rand(3)
    torch.manual_seed(7)
    iter(tr.train_loader)
    assert torch.equal(torch.rand(3), want)


def test_cached_views_follow_hflip():
    """Cached encodings hold the photo and its mirror: without flips, training reads the photo."""
    from contentiqa.training.data import CachedFeatures

    enc = [{"x": torch.stack([torch.zeros(2, 3, 3), torch.ones(2, 3, 3)])} for _ in range(8)]
    for hflip, views in ((True, {0.0, 1.0}), (False, {0.0})):
        ds = CachedFeatures(enc, np.zeros(8), np.zeros(8), None, train=True, hflip=hflip)
        drawn = set()
        for epoch in range(3):
            ds.set_epoch(epoch)
            drawn |= {float(ds[i][0]["x"].mean()) for i in range(len(ds))}
        assert drawn == views


def test_trained_stages_name_the_stages_frozen_without_a_cache():
    model = _tiny_iqa_cr(frozen_stages=4)
    end = model.feature_end
    assert model.trained_stages(0).startswith(f"backbone stages 4-{end - 1} of ")
    assert "stages 0-3 frozen, not cached" in model.trained_stages(0)
    model.freeze_stages(2)
    said = model.trained_stages(2)
    assert said.startswith("backbone stages 4-") and "stages 0-1 frozen and cached; stages 2-3 frozen, not cached" in said
    assert _tiny_iqa_cr().trained_stages(0) == "everything (nothing cached)"


def test_a_trainer_on_two_sets_evaluates_a_table_on_each_rows_own_scale(two_sets, tmp_path):
    """evaluate_table measured a second set's 1-5 MOS against predictions on the first set's 0-100
    scale (an RMSE ~12 times too large), and failed on a table without every validation set."""
    from contentiqa.training.evaluate import evaluate_model

    torch.manual_seed(0)
    model = create_model("ie-iqa", **IE_TINY)
    cfg = TrainConfig(epochs=1, batch_size=3, crop=None, cache_stages=3, calibrate=False)
    train, val = two_sets.iloc[[0, 1, 2, 3, 10, 11, 12, 13]], two_sets.iloc[[4, 5, 6, 7, 14, 15, 16, 17]]
    tr = Trainer(model, train, val, {"A": MOSScale(0, 100), "B": MOSScale(1, 5)}, cfg, tmp_path / "run", progress=False,
                 cache_dir=tmp_path / "c", log=lambda *a: None)
    b = two_sets.iloc[[8, 9, 18, 19]]
    b = b[b["dataset"] == "B"]
    direct, _ = evaluate_model(model, b.drop(columns=["dataset"]), MOSScale(1, 5), workers=0)
    by_column = tr.evaluate_table(b)
    assert by_column["rmse"] == pytest.approx(direct["rmse"], rel=1e-4) and by_column["B/rmse"] == by_column["rmse"]
    assert "A/rmse" not in by_column
    assert tr.evaluate_table(b.drop(columns=["dataset"]), scale=MOSScale(1, 5))["rmse"] == pytest.approx(direct["rmse"],
                                                                                                        rel=1e-4)
    with pytest.raises(ValueError, match="several datasets, each on its own MOS scale"):
        tr.evaluate_table(b.drop(columns=["dataset"]))
    assert tr.val_sets == ["A", "B"] and tr.scale == MOSScale(0, 100)  # the trainer as it was


def test_a_run_on_two_sets_resumes_only_with_them_in_its_order(two_sets, tmp_path):
    """Resumed with the sets listed the other way round, the run went on scoring on the other
    set's scale (and calibrating on it) from its second session, without a word."""
    from contentiqa.training.trainer import ResumeMismatch

    train, val = two_sets.iloc[[0, 1, 2, 3, 10, 11, 12, 13]], two_sets.iloc[[4, 5, 6, 7, 14, 15, 16, 17]]
    cfg = TrainConfig(epochs=1, batch_size=4, crop=None, cache_stages=3, calibrate=False)

    def trainer(scales, epochs=1):
        torch.manual_seed(0)
        return Trainer(create_model("ie-iqa", **IE_TINY), train, val, scales, TrainConfig(**{**cfg.to_dict(), "epochs": epochs}),
                       tmp_path / "run", progress=False, cache_dir=tmp_path / "c", log=lambda *a: None)

    trainer({"A": MOSScale(0, 100), "B": MOSScale(1, 5)}).fit()
    with pytest.raises(ResumeMismatch, match=r"trained on A \(0-100\), B \(1-5\), in that order; this run gives B \(1-5\)"):
        trainer({"B": MOSScale(1, 5), "A": MOSScale(0, 100)}, epochs=2).fit(resume=True)
    with pytest.raises(ResumeMismatch, match=r"this run gives A \(0-100\), B \(0-10\)"):
        trainer({"A": MOSScale(0, 100), "B": MOSScale(0, 10)}, epochs=2).fit(resume=True)
    assert trainer({"A": MOSScale(0, 100), "B": MOSScale(1, 5)}, epochs=2).fit(resume=True)["epoch"] == 2


def test_training_on_two_sets_with_damage_and_anchors(two_sets, tmp_path):
    torch.manual_seed(0)
    model = create_model("ie-iqa", **IE_TINY)
    cfg = TrainConfig(epochs=2, batch_size=3, crop=None, cache_stages=3, lr=1e-3, score_loss="model", rank_weight=1.0,
                      dataset_ratio={"A": 1, "B": 1}, damage_weight=1.0, damage_photos=3, damage_groups=1,
                      anchor_weight=1.0, anchor_photos=4, anchors_per_batch=2, damage_source="B", calibrate=True)
    train, val = two_sets.iloc[[0, 1, 2, 3, 4, 10, 11, 12, 13, 14, 15]], two_sets.iloc[[5, 6, 7, 8, 9, 16, 17]]
    val = pd.concat([val] * 2, ignore_index=True)  # calibration needs 8 photos of the first set
    tr = Trainer(model, train, val, {"A": MOSScale(0, 100), "B": MOSScale(1, 5)}, cfg, tmp_path / "run", progress=False,
                 cache_dir=tmp_path / "c", log=lambda *a: None)
    assert len(tr.damage.groups) == 3 and len(tr.damage.anchors) == 4
    assert all(p in set(two_sets[two_sets["dataset"] == "B"]["image"]) for p in tr.damage.picked)
    tr.fit()
    rec = tr.history[-1]
    assert {"loss_damage", "loss_anchor", "loss_rank"} <= set(rec) and np.isfinite(rec["loss"])
    assert tr.epoch_minutes() is not None
    a_rows = (tr.train_table["dataset"] == "A").sum()
    tr.sampler.set_epoch(0)
    drawn = [tr.train_table["dataset"].iloc[i] for b in tr.sampler for i in b]
    assert drawn.count("A") == a_rows and drawn.count("B") == a_rows  # balanced: as many B as A
    params = tr.calibrate(model)
    assert model.cfg.calibration == params and params[1] > 0 and params[3] > 0
    assert len(tr._calibration_rows()) == (tr.val_table["dataset"] == "A").sum()  # the first set's photos
    tr.cfg.calibrate_on = "each"  # both sets' photos, each set weighing the same: another curve
    assert len(tr._calibration_rows()) == len(tr.val_table)
    assert tr.calibrate(model) != params
    with pytest.raises(ValueError, match="calibrate_on"):
        Trainer(create_model("ie-iqa", **IE_TINY), train, val, {"A": MOSScale(0, 100), "B": MOSScale(1, 5)},
                TrainConfig(**{**cfg.to_dict(), "calibrate_on": "both"}), tmp_path / "run2", progress=False,
                cache_dir=tmp_path / "c", log=lambda *a: None)


def test_damage_steps_stack_encodings_of_one_shape_only():
    """A native-resolution model caches stage maps as large as each photo: a step's graded groups
    and anchors must come from photos of one size (BIQ2021 holds a few smaller ones among its 512-px
    photos), and where every photo has one size the draw is the one it always was."""
    from contentiqa.training.damage import GROUP_SIZE, DamageSet, _draw_one_shape

    table = pd.DataFrame({"image": [f"p{i}.png" for i in range(8)], "mos": np.arange(8.0)})
    small = {"p1.png", "p4.png", "p6.png"}

    def encode(paths, specs):
        return [{"x": torch.zeros(2, 3, *((2, 2) if p in small else (4, 4)))} for p in paths]

    cfg = TrainConfig(damage_weight=1.0, damage_photos=8, damage_groups=3, anchor_weight=1.0, anchor_photos=8,
                      anchors_per_batch=3)
    damage = DamageSet(None, table, cfg, 3, encode)
    sizes = set()
    for step in range(100):
        out = damage.sample(0, step)
        assert out["groups"]["x"].shape[0] == 3 * GROUP_SIZE and out["anchors"]["x"].shape[0] == 3
        sizes |= {out["groups"]["x"].shape[-1], out["anchors"]["x"].shape[-1]}
    assert sizes == {2, 4}  # both sizes serve
    same = [(("x", (3, 4, 4)),)] * 8
    assert _draw_one_shape(np.random.default_rng(5), same, 3) == list(np.random.default_rng(5).choice(8, 3, replace=False))
    assert _draw_one_shape(np.random.default_rng(5), same, 0) == []


def test_damage_photos_and_kinds_stay_when_a_row_is_removed_or_the_folder_moves():
    """The photos, degradation types and bad-frame kinds followed each photo's place in the sorted
    list: removing one row (as a damaged photo's error advises, before a resume) changed most of
    them, and a training set's folder moved changed them where several sets train together. Each
    type and kind is still taught, in turn, from a few photos."""
    from contentiqa.training.damage import DamageSet

    def table(root_b):
        rows = [("A", f"/data/a/p{i:03d}.png", f"p{i:03d}.png") for i in range(60)]
        rows += [("B", f"{root_b}/q{i:03d}.png", f"q{i:03d}.png") for i in range(60)]
        return pd.DataFrame({"dataset": [r[0] for r in rows], "image": [r[1] for r in rows],
                             "key": [r[2] for r in rows], "mos": np.arange(len(rows), dtype=float)})

    def drawn(t):
        seen = []

        def encode(paths, specs):
            seen.extend((p.rsplit("/", 1)[-1], s) for p, s in zip(paths, specs))
            return [{"x": torch.zeros(1, 3, 2, 2)} for _ in paths]

        cfg = TrainConfig(damage_weight=1.0, damage_photos=20, anchor_weight=1.0, anchor_photos=20)
        DamageSet(None, t, cfg, 3, encode)
        return seen

    from collections import Counter

    from contentiqa.data.degrade import BAD_FRAMES, DEGRADATIONS

    before = drawn(table("/data/b"))
    types = Counter(s.split(":")[1] for _, s in before if s.startswith("degrade:") and s.endswith(":1"))
    assert set(types) == set(DEGRADATIONS) and max(types.values()) - min(types.values()) <= 1  # in turn
    assert {s[4:] for _, s in before if s.startswith("bad:")} == set(BAD_FRAMES)
    assert drawn(table("/elsewhere/b")) == before
    unpicked = next(k for k in table("/data/b")["key"] if k not in {p for p, _ in before})
    assert drawn(table("/data/b").pipe(lambda t: t[t["key"] != unpicked])) == before
    gone = before[0][0]  # a picked photo's row removed: the other photos stay picked
    after = drawn(table("/data/b").pipe(lambda t: t[t["key"] != gone]))
    assert {p for p, _ in before} - {gone} < {p for p, _ in after}


def test_damage_and_anchors_draw_mirrored_views_only_where_training_flips():
    """hflip=False was obeyed for the photos and not for the graded groups and anchors: about half of
    those were still mirrored."""
    from contentiqa.training.damage import DamageSet

    table = pd.DataFrame({"image": [f"p{i}.png" for i in range(6)], "mos": np.arange(6.0)})

    def encode(paths, specs):  # view 0: the photo (zeros), view 1: its mirror (ones)
        return [{"x": torch.stack([torch.zeros(3, 2, 2), torch.ones(3, 2, 2)])} for _ in paths]

    seen = {}
    for hflip in (False, True):
        cfg = TrainConfig(hflip=hflip, damage_weight=1.0, damage_photos=6, damage_groups=2, anchor_weight=1.0,
                          anchor_photos=6, anchors_per_batch=2)
        damage = DamageSet(None, table, cfg, 3, encode)
        seen[hflip] = {float(out[k]["x"].mean()) for step in range(30) for out in [damage.sample(0, step)]
                       for k in ("groups", "anchors")}
    assert seen[False] == {0.0} and 1.0 in seen[True]


def test_more_anchor_photos_than_the_training_set_has_use_every_photo(two_sets, tmp_path):
    """A recipe's counts (the default IE-IQA's 270 anchor photos) on a small set: each photo once."""
    table = two_sets[two_sets["dataset"] == "A"].drop(columns="dataset")
    cfg = TrainConfig(epochs=1, batch_size=3, crop=None, cache_stages=3, score_loss="model", anchor_weight=0.1,
                      anchor_photos=270, damage_weight=0.5, damage_photos=50)
    tr = Trainer(create_model("ie-iqa", **IE_TINY), table.iloc[:7], table.iloc[7:], MOSScale(0, 100), cfg, tmp_path / "run",
                 progress=False, cache_dir=tmp_path / "c", log=lambda *a: None)
    assert sorted(tr.damage.picked) == sorted(table["image"].iloc[:7]) and len(tr.damage.anchors) == 7
    assert len(tr.damage.groups) == 7
    tr.fit()
    assert np.isfinite(tr.history[-1]["loss_anchor"])


def test_damage_without_a_cache_or_with_an_unknown_source_is_refused(two_sets, tmp_path):
    model = create_model("ie-iqa", **IE_TINY)
    scales = {"A": MOSScale(0, 100), "B": MOSScale(1, 5)}
    with pytest.raises(ValueError, match="cache_stages"):
        Trainer(model, two_sets, None, scales, TrainConfig(damage_weight=1.0, damage_photos=2, crop=None),
                tmp_path / "r1", progress=False, log=lambda *a: None)
    with pytest.raises(ValueError, match="damage_source 'C' is not one of the training sets: A, B"):
        Trainer(model, two_sets, None, scales, TrainConfig(damage_weight=1.0, damage_photos=2, crop=None, cache_stages=3,
                                                           damage_source="C"),
                tmp_path / "r2", progress=False, cache_dir=tmp_path / "c", log=lambda *a: None)
    assert not (tmp_path / "c").exists()  # said before the training photos were encoded, not after
    with pytest.raises(ValueError, match="dataset_ratio"):
        Trainer(model, two_sets, None, scales, TrainConfig(dataset_ratio={"A": 1, "C": 2}, crop=None, cache_stages=3),
                tmp_path / "r3", progress=False, cache_dir=tmp_path / "c", log=lambda *a: None)


@pytest.mark.parametrize("settings,said", [
    (dict(damage_weight=0.3), "damage_weight 0.3 needs damage_photos"),  # trained without the term, silently
    (dict(anchor_weight=0.1), "anchor_weight 0.1 needs anchor_photos"),
    (dict(damage_weight=-1.0, damage_photos=3), "0 or more"),  # reversed the ranking
    (dict(damage_weight=0.3, damage_photos=3, damage_groups=0), "damage_groups must be at least 1"),  # IndexError
    (dict(anchor_weight=0.3, anchor_photos=3, anchors_per_batch=0), "anchors_per_batch must be at least 1"),
])
def test_a_damage_or_anchor_term_that_cannot_work_is_refused(settings, said):
    with pytest.raises(ValueError, match=said):
        TrainConfig(**settings)


def test_a_resume_whose_starting_weights_were_replaced_is_refused_not_trained_on_their_encodings(two_sets, tmp_path):
    """The cache was encoded from the replaced init_from file before last.pt put back the frozen
    stages the run trained with: every later epoch trained on another network's features."""
    from contentiqa.training.trainer import ResumeMismatch

    table = two_sets[two_sets["dataset"] == "A"].drop(columns="dataset")
    init = tmp_path / "start.pt"

    def run(epochs: int, resume: bool) -> Trainer:
        cfg = TrainConfig(epochs=epochs, batch_size=3, crop=None, cache_stages=3, calibrate=False, init_from=str(init))
        return Trainer(create_model("ie-iqa-distortion", **{k: v for k, v in IE_TINY.items()
                                                            if k != "intelligibility_pretrained"}),
                       table.iloc[:6], table.iloc[6:], MOSScale(0, 100), cfg, tmp_path / "run", progress=False,
                       cache_dir=tmp_path / "c", log=lambda *a: None)

    torch.manual_seed(0)
    save_checkpoint(_dist_model(), init)
    run(1, False).fit()
    same = run(2, True)
    same.fit(resume=True)
    assert same.epoch == 2  # the same start: goes on
    torch.manual_seed(1)  # the upstream row retrained in place
    other = create_model("ie-iqa-distortion", **{k: v for k, v in IE_TINY.items() if k != "intelligibility_pretrained"})
    save_checkpoint(other, init)
    with pytest.raises(ResumeMismatch, match="frozen stages other than the ones this run's cache was encoded with"):
        run(3, True).fit(resume=True)


def test_a_mix_keeps_the_frozen_stages_the_cache_was_encoded_with(two_sets, tmp_path):
    """(1 - a) * w + a * w is not w in float32 for most a: the frozen stages changed in the last
    bits, and the test photos were encoded again under the new weights' key."""
    from contentiqa.training.cache import frozen_fingerprint

    torch.manual_seed(0)
    table = two_sets[two_sets["dataset"] == "A"].drop(columns="dataset")
    init = save_checkpoint(create_model("ie-iqa-distortion", **IE_TINY), tmp_path / "start.pt")
    cfg = TrainConfig(epochs=1, batch_size=3, crop=None, cache_stages=3, lr=0.05, init_from=str(init),
                      interpolate=[0.3, 0.7, 0.9], interpolate_no_worse=False)
    model = create_model("ie-iqa-distortion", **IE_TINY)
    tr = Trainer(model, table.iloc[:6], table.iloc[6:], MOSScale(0, 100), cfg, tmp_path / "run", progress=False,
                 cache_dir=tmp_path / "c", log=lambda *a: None)
    tr.fit()
    alpha, _ = tr.interpolate(model)
    assert alpha in (0.3, 0.7, 0.9) and frozen_fingerprint(model, tr.start_stage) == tr.encoded_with


@pytest.mark.parametrize("cached", [3, 0])
def test_the_mix_reads_the_file_the_run_started_from_or_says_why_not(two_sets, tmp_path, cached):
    """interpolate read init_from again at the end: a file written over since (its stage run again)
    was mixed in without a word, and a removed one was a traceback after the training."""
    from dataclasses import replace

    from contentiqa.training.trainer import ResumeMismatch

    torch.manual_seed(0)
    table = two_sets[two_sets["dataset"] == "A"].drop(columns="dataset")
    init = save_checkpoint(create_model("ie-iqa-distortion", **IE_TINY), tmp_path / "start.pt")
    cfg = TrainConfig(epochs=1, batch_size=3, crop=None, cache_stages=cached, lr=0.05, init_from=str(init),
                      interpolate=[0.5])
    # a cache holds the frozen stages of the file it started from: another file's (here) cannot go on
    other_way = "start afresh" if cached else r"resume without the mix \(interpolate: null\)"

    def trainer():
        return Trainer(create_model("ie-iqa-distortion", **IE_TINY), table.iloc[:6], table.iloc[6:], MOSScale(0, 100),
                       cfg, tmp_path / "run", progress=False, cache_dir=tmp_path / "c", log=lambda *a: None)

    tr = trainer()
    tr.fit()
    if cached:  # the first stage trained again with the same frozen stages (its head only): no need to start afresh
        from contentiqa.models import load_checkpoint

        head_again = load_checkpoint(init)
        with torch.no_grad():
            head_again.fc[0].weight.add_(0.1)
        save_checkpoint(head_again, tmp_path / "head_again.pt")
        original = init.read_bytes()
        init.write_bytes((tmp_path / "head_again.pt").read_bytes())
        with pytest.raises(ValueError, match=r"was replaced since.*resume without the mix \(interpolate: null\)"):
            tr.interpolate(tr.model)
        with pytest.raises(ResumeMismatch, match=r"is not the file this run started from.*resume without the mix"):
            trainer().fit(resume=True)
        init.write_bytes(original)
    torch.manual_seed(1)
    save_checkpoint(create_model("ie-iqa-distortion", **IE_TINY), init)  # the first stage trained again
    with pytest.raises(ValueError, match=f"start.pt was replaced since the run started from it.*{other_way}"):
        tr.interpolate(tr.model)
    with pytest.raises(ResumeMismatch, match="is not the file this run started from" if not cached else
                       "holds frozen stages other than the ones this run's cache was encoded with.*start afresh"):
        trainer().fit(resume=True)
    if not cached:  # as advised: without the mix, the run needs nothing of that file
        cfg = replace(cfg, interpolate=None)
        trainer().fit(resume=True)
        cfg = replace(cfg, interpolate=[0.5])
    init.unlink()
    with pytest.raises(ValueError, match="cannot be read now.*put the file the run started from back"):
        tr.interpolate(tr.model)
    with pytest.raises(FileNotFoundError, match="^init_from .*start.pt"):
        trainer()


def test_interpolation_keeps_the_mix_that_validates_best(two_sets, tmp_path):
    torch.manual_seed(0)
    table = two_sets[two_sets["dataset"] == "A"].drop(columns="dataset")
    start = create_model("ie-iqa", **IE_TINY)
    init = save_checkpoint(start, tmp_path / "start.pt")
    cfg = TrainConfig(epochs=1, batch_size=3, crop=None, cache_stages=3, lr=0.05, score_loss="model",
                      init_from=str(init), interpolate=[0.0, 0.5, 1.0])
    model = create_model("ie-iqa", **IE_TINY)
    tr = Trainer(model, table.iloc[:6], table.iloc[6:], MOSScale(0, 100), cfg, tmp_path / "run", progress=False,
                 cache_dir=tmp_path / "c", log=lambda *a: None)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), start.state_dict().values()))
    tr.fit()
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    seen = {}
    for a in (0.0, 0.5, 1.0):
        probe = create_model("ie-iqa", **IE_TINY)
        probe.load_state_dict({k: (1 - a) * start.state_dict()[k] + a * v if v.is_floating_point() else v
                               for k, v in trained.items()})
        seen[a] = tr.evaluate_table(table.iloc[6:], probe)["srocc"]
    alpha, metrics = tr.interpolate(model)
    assert seen[alpha] == pytest.approx(max(seen.values())) and metrics["srocc"] == pytest.approx(seen[alpha])
    w = next(k for k, v in trained.items() if v.is_floating_point() and not torch.equal(v, start.state_dict()[k]))
    assert torch.allclose(model.state_dict()[w], (1 - alpha) * start.state_dict()[w] + alpha * trained[w])
    with pytest.raises(ValueError, match="init_from"):
        Trainer(create_model("ie-iqa", **IE_TINY), table, None, MOSScale(0, 100),
                TrainConfig(crop=None, cache_stages=3, interpolate=[0.5]), tmp_path / "r2", progress=False,
                log=lambda *a: None)


@pytest.mark.parametrize("no_worse, expected", [(False, 0.5), (True, 0.25)])
def test_interpolation_no_worse_never_trades_one_set_for_another(two_sets, tmp_path, no_worse, expected):
    start = create_model("ie-iqa", **IE_TINY)
    init = save_checkpoint(start, tmp_path / "start.pt")
    scales = {"A": MOSScale(0, 100), "B": MOSScale(1, 5)}
    cfg = TrainConfig(crop=None, init_from=str(init), interpolate=[0.25, 0.5, 1.0], interpolate_no_worse=no_worse)
    model = create_model("ie-iqa", **IE_TINY)
    val = two_sets.groupby("dataset").tail(4)
    tr = Trainer(model, two_sets.drop(val.index), val, scales, cfg, tmp_path / "run", progress=False,
                 log=lambda *a: None)
    # validation per mix, in the order the mixes are judged (0 first when it is the floor)
    script = {0.0: (0.50, 0.90), 0.25: (0.60, 0.90), 0.5: (0.80, 0.85), 1.0: (0.90, 0.70)}
    order = iter(([0.0] if no_worse else []) + [0.25, 0.5, 1.0])

    def validate(shared=False):
        a, b = script[next(order)]
        return {"srocc": (a + b) / 2, "A/srocc": a, "B/srocc": b}

    tr.validate = validate
    alpha, metrics = tr.interpolate(model)
    # best mean: 0.5 (B drops below the starting weights'); no worse on either set: 0.25
    assert alpha == expected and metrics["A/srocc"] == script[expected][0]


@pytest.mark.parametrize("monitor, best_epoch", [(None, 1), ("B/srocc", 3), ("A/srocc", 1)])
def test_monitor_names_the_validation_metric_that_picks_the_epoch(two_sets, tmp_path, monitor, best_epoch):
    scales = {"A": MOSScale(0, 100), "B": MOSScale(1, 5)}
    val = two_sets.groupby("dataset").tail(4)
    cfg = TrainConfig(epochs=3, batch_size=4, crop=None, patience=0, monitor=monitor)
    tr = Trainer(create_model("ie-iqa", **IE_TINY), two_sets.drop(val.index), val, scales, cfg, tmp_path / "run",
                 progress=False, log=lambda *a: None)
    # a small, noisy set A that peaks early, and a set B that keeps improving
    script = iter([(0.90, 0.60), (0.50, 0.70), (0.55, 0.80)])

    def validate(shared=False):
        a, b = next(script)
        return {"srocc": (a + b) / 2, "A/srocc": a, "B/srocc": b}

    tr.validate = validate
    assert tr.fit()["epoch"] == best_epoch
    assert load_checkpoint(tmp_path / "run" / "best.pt") is not None


def test_monitor_must_name_a_validation_metric(two_sets, tmp_path):
    scales = {"A": MOSScale(0, 100), "B": MOSScale(1, 5)}
    val = two_sets.groupby("dataset").tail(4)
    model = create_model("ie-iqa", **IE_TINY)
    with pytest.raises(ValueError, match="'C' is not a set"):
        Trainer(model, two_sets.drop(val.index), val, scales, TrainConfig(crop=None, monitor="C/srocc"),
                tmp_path / "r1", progress=False, log=lambda *a: None)
    with pytest.raises(ValueError, match="needs a validation part"):
        Trainer(model, two_sets, None, scales, TrainConfig(crop=None, monitor="B/srocc"), tmp_path / "r2",
                progress=False, log=lambda *a: None)
    with pytest.raises(ValueError, match="'B/kendall' is no validation metric"):  # before any work
        Trainer(model, two_sets.drop(val.index), val, scales, TrainConfig(epochs=1, batch_size=4, crop=None,
                monitor="B/kendall"), tmp_path / "r3", progress=False, log=lambda *a: None)
    # a metric this model cannot give: refused before any work (it was after the first epoch, the epoch lost)
    with pytest.raises(ValueError, match="'B/accuracy': ie-iqa gives no category to measure it on"):
        Trainer(model, two_sets.drop(val.index), val, scales, TrainConfig(epochs=1, batch_size=4, crop=None,
                monitor="B/accuracy"), tmp_path / "r4", progress=False, log=lambda *a: None)


# -- a cache never serves what is not the photo's encoding ----------------------------------------
def _dist_model():
    torch.manual_seed(0)
    return create_model("ie-iqa-distortion", **{k: v for k, v in IE_TINY.items() if k != "intelligibility_pretrained"})


def _entry_files(folder):
    return sorted(p for p in folder.rglob("*.pt"))


@pytest.mark.parametrize("damage", ["rotted bytes", "not finite", "encrypted bit", "compression method"])
def test_a_damaged_cache_entry_is_computed_again(two_sets, tmp_path, damage):
    import struct
    import zipfile

    model, paths = _dist_model(), list(two_sets["image"][:1])
    fresh = cached_encodings(model, paths, 3, True, None, progress=False)[0]["x"]
    cached_encodings(model, paths, 3, True, tmp_path / "c", progress=False)
    (entry,) = _entry_files(tmp_path / "c")
    if damage == "rotted bytes":  # inside the tensor's data, the zip's structure intact: only its CRC knows
        raw = bytearray(entry.read_bytes())
        info = next(i for i in zipfile.ZipFile(entry).infolist() if "/data/" in i.filename)
        name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
        start = info.header_offset + 30 + name_len + extra_len
        for j in range(start, start + info.file_size, 7):
            raw[j] ^= 0x55
        entry.write_bytes(bytes(raw))
    elif damage != "not finite":  # the zip's directory, which no CRC covers: zipfile raises other errors
        raw = bytearray(entry.read_bytes())
        central = raw.rindex(b"PK\x01\x02")  # the last entry's record in the central directory
        if damage == "encrypted bit":
            raw[central + 8] |= 0x01  # RuntimeError: password required
        else:
            raw[central + 10] = 0x63  # NotImplementedError: that compression method
        entry.write_bytes(bytes(raw))
    else:
        torch.save({"x": torch.full_like(fresh, float("nan"))}, entry)
    again = cached_encodings(model, paths, 3, True, tmp_path / "c", progress=False)[0]["x"]
    assert torch.equal(again, fresh)


def test_a_photo_rewritten_under_its_old_date_is_encoded_again(two_sets, tmp_path):
    model, path = _dist_model(), two_sets["image"][0]
    first = cached_encodings(model, [path], 3, True, tmp_path / "c", progress=False)[0]["x"]
    st = os.stat(path)
    Image.fromarray(255 - np.asarray(Image.open(path))).save(path)  # same size: the same PNG layout
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # as touch -r / cp -p / rsync -a leave it
    assert os.stat(path).st_size == st.st_size
    second = cached_encodings(model, [path], 3, True, tmp_path / "c", progress=False)[0]["x"]
    assert not torch.equal(first, second)


def test_damaged_encodings_are_made_again_when_the_degradation_code_changes(two_sets, tmp_path, monkeypatch):
    """A damaged entry was keyed by its photo and spec alone: a retuned (or fixed) degradation was
    served as the old one from a shared cache, training on the old damage without a word."""
    import contentiqa.data.degrade as degrade

    model, paths = _dist_model(), list(two_sets["image"][:1])
    first = cached_encodings(model, paths, 3, True, tmp_path / "c", progress=False, damage=["degrade:blur:2"])[0]["x"]
    real = degrade.DEGRADATIONS["blur"]
    monkeypatch.setitem(degrade.DEGRADATIONS, "blur", lambda img, level, seed: real(img, 4, seed))  # the code changed
    monkeypatch.setattr(degrade, "code_fingerprint", lambda: "a later release")
    again = cached_encodings(model, paths, 3, True, tmp_path / "c", progress=False, damage=["degrade:blur:2"])[0]["x"]
    fresh = cached_encodings(model, paths, 3, True, None, progress=False, damage=["degrade:blur:2"])[0]["x"]
    assert torch.equal(again, fresh) and not torch.equal(again, first)


def test_a_cache_folder_evicted_while_a_run_fills_it_is_made_again(two_sets, tmp_path, monkeypatch):
    """`contentiqa cache --max-size` removed the folder a training was writing: the next entry's write
    failed and the run stopped with "cannot write the cache ...: No such file or directory"."""
    import shutil

    import contentiqa.utils.io as uio

    model, paths = _dist_model(), list(two_sets["image"][:2])
    real = uio.atomic_torch_save
    evicted = []

    def evict_then_save(obj, path, *a, **k):
        if len(evicted) < 2:  # the prune: during the first write (it fails), before the second
            evicted.append(path.parent)
            shutil.rmtree(path.parent)
            if len(evicted) == 1:
                raise FileNotFoundError(2, "No such file or directory")
        return real(obj, path, *a, **k)

    monkeypatch.setattr(uio, "atomic_torch_save", evict_then_save)
    got = cached_encodings(model, paths, 3, True, tmp_path / "c", progress=False)
    assert evicted and (evicted[0] / "about.json").is_file() and len(_entry_files(tmp_path / "c")) == 2
    monkeypatch.setattr(uio, "atomic_torch_save", real)
    again = cached_encodings(model, paths, 3, True, tmp_path / "c", progress=False)
    assert all(torch.equal(a["x"], b["x"]) for a, b in zip(got, again))


def test_a_killed_writers_old_temporaries_are_removed_and_live_ones_kept(two_sets, tmp_path):
    model, paths = _dist_model(), list(two_sets["image"][:1])
    cached_encodings(model, paths, 3, True, tmp_path / "c", progress=False)
    (folder,) = [p for p in (tmp_path / "c").iterdir() if p.is_dir()]
    old, live = folder / ".abc.pt.k1l2m3n4.tmp", folder / ".abd.pt.k1l2m3n5.tmp"
    old.write_bytes(b"x")
    live.write_bytes(b"x")
    two_days = time.time() - 2 * 24 * 3600
    os.utime(old, (two_days, two_days))
    cached_encodings(model, paths, 3, True, tmp_path / "c", progress=False)
    assert not old.exists() and live.exists()


def test_a_cache_that_cannot_be_written_is_one_line(two_sets, tmp_path, monkeypatch, capsys):
    import errno

    import contentiqa.utils.io as uio
    from contentiqa.cli.main import main

    table = two_sets[two_sets["dataset"] == "A"][["image", "mos"]]
    table.to_csv(tmp_path / "d.csv", index=False)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(uio, "atomic_torch_save", full)  # what the cache saves an entry with
    args = ["train", "--model", "ie-iqa-distortion", "--recipe", "none", "--data", str(tmp_path / "d.csv"),
            "--out", str(tmp_path / "run"), "--protocol", "ie-iqa", "--cache-stages", "3", "--epochs", "1",
            "--batch-size", "4", "--quiet"] + [x for k, v in IE_TINY.items() if k not in ("pretrained", "intelligibility_pretrained")
                                              for x in ("--set", f"model.{k}={json.dumps(v)}")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "cannot write the cache" in err and "No space left on device" in err and "Traceback" not in err


def test_weights_named_two_ways_share_one_cache_folder_and_other_weights_do_not(tmp_path, monkeypatch):
    """The checkpoint's path was in the key: the same file given relative and absolute (or moved)
    encoded every photo again in a second folder. stage_features returned another network's
    features under the same tag."""
    from contentiqa.training.cache import part_folder, stage_features

    from contentiqa.backbones import create_backbone

    torch.manual_seed(0)
    torch.save(create_backbone("efficientnet_lite0", pretrained=False).state_dict(), tmp_path / "w.pt")
    monkeypatch.chdir(tmp_path)
    folders = set()
    for name in ("w.pt", str(tmp_path / "w.pt")):
        model = create_model("ie-iqa-distortion", **IE_TINY, distortion_checkpoint=name)
        folders |= {part_folder(model, p, torch.float16, tmp_path / "c") for p in model.cache_parts(3)}
    assert len(folders) == 1
    photo = str(write_image(tmp_path / "p.png", 64, 64, seed=0))
    got = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        stages = create_model("ie-iqa-distortion", **IE_TINY).stages
        got.append(stage_features(stages, [photo], 3, (0.5,) * 3, (0.5,) * 3, cache_dir=tmp_path / "sf", progress=False))
        assert torch.equal(got[-1][0], stage_features(stages, [photo], 3, (0.5,) * 3, (0.5,) * 3, progress=False)[0])
    assert not torch.equal(got[0][0], got[1][0])


def test_stage_features_compute_again_over_a_damaged_cache_file(tmp_path):
    """A byte flipped inside the stored tensors came back as features (torch.load checks no
    CRC); a truncated file was a bare 'OSError: Invalid argument'."""
    from contentiqa.training.cache import stage_features

    torch.manual_seed(0)
    stages = create_model("ie-iqa-distortion", **IE_TINY).stages
    photo = str(write_image(tmp_path / "p.png", 64, 64, seed=0))
    args = (stages, [photo], 3, (0.5,) * 3, (0.5,) * 3)
    fresh = stage_features(*args, progress=False)[0]
    assert torch.equal(stage_features(*args, cache_dir=tmp_path / "sf", progress=False)[0], fresh)
    (stored,) = (tmp_path / "sf").glob("features_*.pt")
    blob = bytearray(stored.read_bytes())
    with zipfile.ZipFile(stored) as z:
        offset = z.getinfo(next(n for n in z.namelist() if n.endswith("data/0"))).header_offset
    name_len, extra_len = struct.unpack("<HH", blob[offset + 26: offset + 30])  # the local header's
    at = offset + 30 + name_len + extra_len + 8  # inside the tensor's bytes
    blob[at] ^= 0x40
    for damaged in (bytes(blob), bytes(blob[: len(blob) // 2])):
        stored.write_bytes(damaged)
        assert torch.equal(stage_features(*args, cache_dir=tmp_path / "sf", progress=False)[0], fresh)
        assert stored.read_bytes() != damaged  # and written again


def test_detection_options_key_the_intelligibility_cache():
    keys = set()
    for options in ({"top_k": 10, "proposals": 100}, {"top_k": 1, "proposals": 2}):
        model = create_model("ie-iqa", **IE_TINY, intelligibility_task="detection", selection="none",
                             intelligibility_options=options)
        keys.add(next(p.key for p in model.cache_parts(3) if p.name == "intelligibility"))
    assert len(keys) == 2


def test_a_head_trained_on_pooled_features_says_its_photos_are_not_mirrored(two_sets, tmp_path):
    """Caching every stage, the head trains on the photo as scored alone, while the run said only
    hflip: true (its docs: 'the photo as scored and its mirror')."""
    model = create_model("ie-iqa", **IE_TINY)
    table = two_sets[two_sets["dataset"] == "A"].drop(columns="dataset")
    said: list[str] = []
    for k, mirrored in ((model.feature_end, False), (3, True)):
        said.clear()
        tr = Trainer(create_model("ie-iqa", **IE_TINY), table.iloc[:6], None, MOSScale(0, 100),
                     TrainConfig(epochs=1, batch_size=3, crop=None, cache_stages=k, calibrate=False), tmp_path / f"r{k}",
                     progress=False, cache_dir=tmp_path / "c", log=said.append)
        views = {v.shape[0] for e in tr.train_ds.encodings for v in e.values()}
        assert (2 in views) is mirrored, views
        assert any("not its mirror" in s for s in said) is not mirrored
