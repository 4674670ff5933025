"""The scoring engine: batched = one at a time, bounded look-ahead and batches, sharding."""
from __future__ import annotations

import csv
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import contentiqa.inference.engine as engine
from contentiqa.cli.main import main
from contentiqa.inference.torch_runtime import TorchScorer, collate, scoring_copy
from contentiqa.inference.shard import parse_shard, resolved_key, select_shard, shard_of
from tiny_models import cached_loader, one_torch_thread, tiny_checkpoint, tiny_model  # noqa: F401


def rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def mixed_folder(root: Path) -> list[str]:
    """Eleven small images of four sizes, interleaved (JPEG and PNG)."""
    root.mkdir(parents=True, exist_ok=True)
    sizes = [(64, 80), (72, 96), (96, 64), (64, 80), (50, 50), (72, 96), (64, 80), (96, 64), (64, 80), (50, 50), (64, 80)]
    paths = []
    for k, (h, w) in enumerate(sizes):
        p = root / f"im{k:02d}.{'jpg' if k % 2 else 'png'}"
        Image.fromarray(rgb(h, w, k)).save(p, **({"quality": 90} if k % 2 else {}))
        paths.append(str(p))
    return paths


def predict(model, items, *, forward=None, channels_last=None, precision="fp32", on_result=None, return_results=True,
            **engine_kw):
    """The engine on a torch model's scorer (``forward`` in place of its own)."""
    scorer = TorchScorer(model, precision=precision, channels_last=channels_last)
    with scorer._running():
        return engine.Engine(scorer, forward or scorer.forward, **engine_kw).run(items, on_result=on_result,
                                                                                 return_results=return_results)


@pytest.fixture
def ckpt(monkeypatch) -> str:
    import contentiqa.models.registry as registry

    monkeypatch.setattr(registry, "load_checkpoint", cached_loader(registry.load_checkpoint))
    return tiny_checkpoint()


# -- batched = one at a time ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["iqa-cr", "ie-iqa-distortion"])
def test_batched_equals_one_at_a_time_mixed_sizes(tmp_path, name):
    if name == "iqa-cr":
        model = tiny_model()
    else:
        torch.manual_seed(0)
        import contentiqa

        model = contentiqa.create_model(name, pretrained=False, distortion_pretrained=False, hidden=(8, 4), input_size=64).eval()
    paths = mixed_folder(tmp_path / "imgs")
    single = predict(model, paths, batch_size=1, workers=0, channels_last=False)
    batched = predict(model, paths, batch_size=4, workers=2, channels_last=True)
    capped = predict(model, paths, batch_size=8, workers=1, max_batch_pixels=3 * 64 * 80)
    for a, b, c in zip(single, batched, capped):
        assert a.path == b.path == c.path and a.error is None
        lo, hi = model.score_range
        # 1e-5 on the normalised [0, 1] scale
        assert abs(a.score - b.score) / (hi - lo) < 1e-5
        assert abs(a.score - c.score) / (hi - lo) < 1e-5
        assert a.category == b.category


def test_autocast_runs_in_reduced_precision_and_returns_float32(tmp_path):
    """The GPU path's autocast (bfloat16 here, on the CPU): scores close to float32 but not
    bit-identical (so reduced precision really ran), outputs float32, bad dtypes refused."""
    model = tiny_model()
    paths = mixed_folder(tmp_path / "imgs")[:4]
    full = predict(model, paths, batch_size=2, workers=0)
    seen = []
    h = scoring_copy(model, channels_last=True).head.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    try:
        half = predict(model, paths, batch_size=2, workers=0, precision="bf16")
    finally:
        h.remove()
    assert torch.bfloat16 in seen
    lo, hi = model.score_range
    diffs = [abs(a.score - b.score) / (hi - lo) for a, b in zip(full, half)]
    assert max(diffs) < 0.05 and max(diffs) > 0
    assert all(isinstance(b.score, float) for b in half)
    with pytest.raises(ValueError, match="PyTorch runs in"):
        TorchScorer(model, precision="int8")


def test_results_in_order_errors_kept_and_return_results_off(tmp_path):
    model = tiny_model()
    paths = mixed_folder(tmp_path / "imgs")
    items = paths[:3] + [str(tmp_path / "missing.jpg")] + paths[3:]
    seen: dict[int, object] = {}
    out = predict(model, items, batch_size=3, on_result=lambda i, p: seen.__setitem__(i, p), return_results=False)
    assert out is None
    assert sorted(seen) == list(range(len(items)))
    assert seen[3].error and "does not exist" in seen[3].error
    full = predict(model, items, batch_size=3)
    assert [p.path for p in full] == items
    assert [p.score for p in full] == [seen[i].score for i in range(len(items))]


def test_concurrent_runs_overlap_and_give_the_same_results(tmp_path):
    """concurrency=2: two batches in the model at once (each from its own thread), the same
    results as one at a time, results handed out in the calling thread, a failing batch costs
    only its own rows."""
    model = tiny_model()
    paths = mixed_folder(tmp_path / "imgs")
    active, peak, lock = [0], [0], threading.Lock()

    def slow_forward(x):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            threading.Event().wait(0.05)
            if x.shape[-2:] == (50, 50):
                raise RuntimeError("boom")
            with torch.inference_mode():
                return model(x)
        finally:
            with lock:
                active[0] -= 1

    callers = set()
    one = predict(model, paths, batch_size=1, forward=slow_forward)
    two = predict(model, paths, batch_size=1, forward=slow_forward, concurrency=2,
                  on_result=lambda i, p: callers.add(threading.current_thread().name))
    assert peak[0] == 2 and callers == {threading.current_thread().name}
    assert [p.path for p in two] == paths
    assert [p.score for p in two] == [p.score for p in one]
    failed = [p for p in two if p.error]
    assert len(failed) == 2 and all("model failed: boom" in p.error for p in failed)
    with pytest.raises(ValueError, match="concurrency"):
        predict(model, paths, concurrency=0)


# -- bounds: look-ahead window, batch size and pixels --------------------------------------------
def test_lookahead_window_is_bounded(tmp_path, monkeypatch):
    model = tiny_model()
    paths = mixed_folder(tmp_path / "imgs") * 4  # 44 inputs
    lock = threading.Lock()
    state = {"started": 0, "consumed": 0, "worst": 0}
    real = engine._prepare

    def spy(model, item, index=0, on_image=None):
        with lock:
            state["started"] += 1
            state["worst"] = max(state["worst"], state["started"] - state["consumed"])
        return real(model, item, index, on_image)

    monkeypatch.setattr(engine, "_prepare", spy)
    scorer = TorchScorer(model)
    for i, *_ in engine.iter_prepared(scorer, paths, workers=2, window=5):
        with lock:
            state["consumed"] = i + 1
    assert state["started"] == len(paths)
    assert 1 <= state["worst"] <= 5 + 1  # the one being yielded + at most `window` ahead

    # a byte budget smaller than one image: at most one prepared tensor waits at a time
    state.update(started=0, consumed=0, worst=0)
    for i, *_ in engine.iter_prepared(scorer, paths, workers=2, window=16, max_prefetch_bytes=1):
        with lock:
            state["consumed"] = i + 1
    assert state["worst"] <= 3  # one done and waiting, plus those already in the workers


def test_batches_bounded_by_count_and_pixels(tmp_path):
    model = tiny_model()
    paths = mixed_folder(tmp_path / "imgs") * 3
    shapes: list[tuple] = []

    def forward(x):
        shapes.append(tuple(x.shape))
        with torch.inference_mode():
            return model(x)

    cap = 2 * 64 * 80
    preds = predict(model, paths, batch_size=4, forward=forward, max_batch_pixels=cap)
    assert all(p.ok for p in preds)
    assert sum(s[0] for s in shapes) == len(paths)
    for b, _, h, w in shapes:
        assert b <= 4
        assert b == 1 or b * h * w <= cap + h * w  # a batch is run as soon as it reaches the cap
    shapes.clear()
    predict(model, paths, batch_size=4, forward=forward, max_batch_pixels=None)
    assert max(s[0] for s in shapes) == 4


def test_a_gpu_scorer_batches_what_its_batch_size_asks(monkeypatch):
    """The CPU's 2 MP cap ran every batch of the 512-px default at 8 images on a GPU too, whatever
    its default of 32 or --batch-size asked."""
    import contentiqa.inference.scorer as sc
    from contentiqa.inference.engine import DEFAULT_MAX_BATCH_PIXELS
    from contentiqa.inference.torch_runtime import TorchScorer

    from contentiqa.models import create_model

    fixed = create_model("ie-iqa-distortion", pretrained=False, distortion_pretrained=False, hidden=(8, 4), input_size=64)
    scorer = TorchScorer(fixed.eval())  # a fixed input size, as the default's
    assert not scorer.native_resolution and scorer.max_batch_pixels() == DEFAULT_MAX_BATCH_PIXELS
    seen = {}
    real = sc.Engine

    def spy(*a, **kw):
        seen.update(kw)
        return real(*a, **kw)

    monkeypatch.setattr(sc, "Engine", spy)
    scorer.device = torch.device("cuda")  # what it reads (no GPU here: nothing is run on it)
    assert scorer.max_batch_pixels() is None and scorer.default_batch_size() == 32  # the batch size bounds it
    native = TorchScorer(tiny_model("iqa-cr"))
    native.device = torch.device("cuda")
    assert native.native_resolution and native.max_batch_pixels() == DEFAULT_MAX_BATCH_PIXELS  # large photos
    scorer.device = torch.device("cpu")
    scorer.run([np.zeros((40, 40, 3), np.uint8)], workers=0)
    assert seen["max_batch_pixels"] == DEFAULT_MAX_BATCH_PIXELS


def test_channels_last_batch_is_a_view_without_copies():
    from contentiqa.models.base import pil_to_tensor

    ts = [pil_to_tensor(Image.fromarray(rgb(20, 30, k)), (0.5,) * 3, (0.25,) * 3) for k in range(3)]
    x = collate(ts, channels_last=True)
    assert x.shape == (3, 3, 20, 30) and x.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(x, collate(ts, channels_last=False), rtol=0, atol=0)


def test_pil_to_tensor_matches_the_formula():
    from contentiqa.models.base import pil_to_tensor

    arr = rgb(17, 23, 5)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    got = pil_to_tensor(Image.fromarray(arr), mean, std)
    ref = (torch.from_numpy(arr).permute(2, 0, 1).double() / 255 - torch.tensor(mean, dtype=torch.float64).view(3, 1, 1)) \
        / torch.tensor(std, dtype=torch.float64).view(3, 1, 1)
    assert got.dtype == torch.float32 and got.shape == (3, 17, 23)
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=1e-6)


# -- sharding ----------------------------------------------------------------------------------------
def test_parse_shard():
    assert parse_shard("0/1") == (0, 1)
    assert parse_shard(" 2 / 5 ") == (2, 5)
    for bad in ("3/3", "4/3", "1/0", "-1/3", "a/b", "1", "1/2/3", "", "1.0/2"):
        with pytest.raises(ValueError):
            parse_shard(bad)


def test_shards_cover_every_input_once_and_are_stable(tmp_path, monkeypatch):
    names = [f"/data/photos/img_{k:04d}.jpg" for k in range(300)]  # absolute: the same hashes on every run
    for n in (1, 2, 3, 7):
        parts = [select_shard(names, i, n) for i in range(n)]
        flat = [p for part in parts for p in part]
        assert sorted(flat) == sorted(names) and len(flat) == len(set(flat))
        if n > 1:
            assert all(len(part) > 300 / n * 0.6 for part in parts)  # balanced in expectation
    # independent of the list's order and of other entries; same for relative and absolute spellings
    shuffled = list(reversed(names))[::2]
    assert {p: shard_of(p, 3) for p in shuffled} == {p: shard_of(p, 3) for p in names if p in set(shuffled)}
    monkeypatch.chdir(tmp_path)
    rel = "photos/img_0005.jpg"
    assert shard_of(str(tmp_path / rel), 3) == shard_of(rel, 3) == shard_of("./" + rel, 3) == shard_of("photos/../" + rel, 3)
    assert resolved_key(rel) == resolved_key(str(tmp_path / rel))


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_score_shards_concatenate_to_the_unsharded_run(tmp_path, ckpt):
    folder = tmp_path / "imgs"
    mixed_folder(folder)
    (tmp_path / "gone.jpg").unlink(missing_ok=True)
    args = [str(folder), str(tmp_path / "gone.jpg"), "--model", ckpt, "-q"]
    assert main(["score", *args, "-o", str(tmp_path / "all.csv")]) == 1  # one input is missing
    whole = {r["path"]: r for r in read_csv(tmp_path / "all.csv")}
    parts: list[dict] = []
    for i in range(3):
        out = tmp_path / f"part{i}.csv"
        main(["score", *args, "--shard", f"{i}/3", "-o", str(out)])
        parts += read_csv(out)
    assert len(parts) == len(whole) == 12
    assert {r["path"] for r in parts} == set(whole)
    for r in parts:
        w = whole[r["path"]]
        assert (r["score"] == "") == (w["score"] == "")
        if r["score"]:
            assert float(r["score"]) == pytest.approx(float(w["score"]), abs=1e-5 * 100)


@pytest.mark.parametrize("spec", ["3/3", "5/3", "1/0", "x/3", "1", "-1/2", "1/2/3"])
def test_score_shard_usage_errors(tmp_path, ckpt, spec, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(rgb(40, 40)).save(folder / "a.png")
    assert main(["score", str(folder), "--model", ckpt, "-q", f"--shard={spec}"]) == 2
    assert "--shard" in capsys.readouterr().err


def test_displayed_scores_are_clipped_to_the_scale_raw_ones_kept():
    model = tiny_model("iqa-cr")
    out = {"score": torch.tensor([-0.05, 0.5, 1.2]), "logits": torch.zeros(3, len(model.categories))}
    lo, hi = sorted((model.scale.low, model.scale.high))
    raw = model.results_from_outputs(out, ["a", "b", "c"], [[], [], []])
    assert [p.score for p in raw] == pytest.approx([lo - 0.05 * (hi - lo), lo + 0.5 * (hi - lo), lo + 1.2 * (hi - lo)])
    shown = [model.clip_to_scale(p) for p in raw]
    assert [p.score for p in shown] == pytest.approx([lo, lo + 0.5 * (hi - lo), hi])
    assert "clipped" in shown[0].notes[-1] and "clipped" in shown[2].notes[-1]
    assert not shown[1].notes
    # the raw predictions are kept as predict gave them: metrics computed from them after showing
    # the clipped ones must not see clipped, tied values
    assert [p.score for p in raw] == pytest.approx([lo - 0.05 * (hi - lo), lo + 0.5 * (hi - lo), lo + 1.2 * (hi - lo)])
    assert not raw[0].notes and not raw[2].notes


def test_the_engine_scores_a_copy_and_leaves_the_model_as_it_was(tmp_path, monkeypatch):
    """The PyTorch scorer runs a scoring copy (eval mode, BatchNorm folded): the caller's model is
    not changed (a model in training mode stays so, its state dict keeps its keys),
    the scores are the model's own in eval mode, and the copy is made once while the model is
    unchanged (a predict() loop or a server pays for it once) and again when its weights or its
    calibration change (scoring after each epoch scores that epoch's weights)."""
    import contentiqa.inference.torch_runtime as tr

    model = tiny_model()  # a Lite0 backbone: BatchNorms to fold
    paths = mixed_folder(tmp_path / "imgs")[:3]
    keys = list(model.state_dict())
    made = []
    real_fold = tr.fold_batchnorm
    monkeypatch.setattr(tr, "fold_batchnorm", lambda *mods: made.append(1) or real_fold(*mods))

    def own_scores():
        with torch.no_grad():
            was = model.training
            out = [float(model.eval()(model.preprocess(Image.open(p).convert("RGB"))[None])["score"]) for p in paths]
            model.train(was)
        lo, hi = model.score_range
        return [lo + v * (hi - lo) for v in out]

    model.train()
    first = [p.score for p in TorchScorer(model).run(paths, batch_size=2, workers=0)]
    assert model.training and list(model.state_dict()) == keys and len(made) == 1
    assert first == pytest.approx(own_scores(), abs=1e-3)
    run = scoring_copy(model, channels_last=True)
    assert not run.training and not any(isinstance(m, torch.nn.BatchNorm2d) for m in run.modules())
    for p in paths[:2]:
        model.predict(p)
    assert len(made) == 1 and scoring_copy(model, channels_last=True) is run
    with torch.no_grad():  # an optimizer step, in place
        for prm in model.parameters():
            prm.mul_(1.1)
    stepped = [p.score for p in TorchScorer(model).run(paths, batch_size=2, workers=0)]
    assert len(made) == 2 and stepped != pytest.approx(first, abs=0.1) and stepped == pytest.approx(own_scores(), abs=1e-3)
    model.set_calibration([0.0, 1.0, 0.5, 0.1])
    scorer = TorchScorer(model)
    calibrated = [p.score for p in scorer.run(paths, batch_size=2, workers=0)]
    assert len(made) == 3 and calibrated == pytest.approx(own_scores(), abs=1e-3)
    with torch.no_grad():  # changed after the run: the scorer's own forward sees it too
        for prm in model.parameters():
            prm.mul_(0.9)
        x = model.preprocess(Image.open(paths[0]).convert("RGB"))[None]
        torch.testing.assert_close(scorer.forward(x)["score"], model.eval()(x)["score"], rtol=1e-4, atol=1e-5)
    assert len(made) == 4
    for prm in model.parameters():  # weights replaced through .data (surgery, pruning): the old copy scored them
        prm.data = prm.data * 1.2
    assert [p.score for p in TorchScorer(model).run(paths, batch_size=2, workers=0)] == pytest.approx(own_scores(), abs=1e-3)
    assert len(made) == 5


def test_prepared_inputs_are_run_as_they_are(tmp_path):
    """An input preprocessed elsewhere (engine.Prepared) is batched and run without being read
    or preprocessed again: the same scores as from the file, its path and notes kept."""
    from contentiqa.data.imageio import load_image

    model = tiny_model().eval()
    paths = mixed_folder(tmp_path / "imgs")[:3]
    direct = predict(model, paths, batch_size=2, workers=0)
    prepared = [engine.Prepared(model.preprocess(load_image(p).image), path=str(p), notes=("from elsewhere",))
                for p in paths]
    again = predict(model, prepared, batch_size=2, workers=0)
    assert [p.score for p in again] == pytest.approx([p.score for p in direct], abs=1e-6)
    assert [p.path for p in again] == [str(p) for p in paths] and all("from elsewhere" in p.notes for p in again)
