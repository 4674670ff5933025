"""IQA-CR's content named from the levels' global means (content_from="levels") and the fit of
that head (contentiqa.training.content_head)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from contentiqa.models import load_checkpoint
from contentiqa.models.iqa_cr import IQACRConfig
from contentiqa.models.registry import save_checkpoint
from contentiqa.training.content_head import accuracy, fit_content_head, fit_logistic, level_means, soft_targets
from tiny_models import tiny_model

CATS = ("a", "b", "c")


def _blobs(n: int, seed: int, scales=(1.0, 1000.0, 0.001, 5.0)) -> tuple[np.ndarray, np.ndarray]:
    """Three classes apart along features of very different scales (as Lite0's levels are); the
    same class centres for every ``seed`` (the draws)."""
    centres = np.random.default_rng(99).normal(0, 3, (3, len(scales)))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    return (centres[y] + rng.normal(0, 1, (n, len(scales)))) * np.array(scales), y


def test_soft_targets_put_the_mix_on_every_label():
    t = soft_targets(["a", "b"], [{"a", "c"}, set()], CATS, mix=0.2)
    np.testing.assert_allclose(t, [[0.9, 0, 0.1], [0, 1.0, 0]])
    np.testing.assert_allclose(soft_targets(["c"], [{"a", "c"}], CATS, 0.0), [[0, 0, 1]])
    with pytest.raises(ValueError, match="'z'"):
        soft_targets(["z"], [set()], CATS, 0.0)


def test_logistic_fit_works_on_raw_features_of_any_scale():
    x, y = _blobs(300, 0)
    xt, yt = _blobs(200, 1)
    w, b = fit_logistic(x, np.eye(3)[y], l2=1e-3)
    assert w.shape == (3, 4) and b.shape == (3,)
    assert ((xt @ w.T + b).argmax(1) == yt).mean() > 0.9
    # the standardisation is folded into the raw weights: scaling a feature scales its weight back
    w2, b2 = fit_logistic(x * np.array([10.0, 1, 1, 1]), np.eye(3)[y], l2=1e-3)
    np.testing.assert_allclose(w2[:, 0] * 10, w[:, 0], rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(b2, b, rtol=1e-4, atol=1e-6)


def test_the_settings_are_chosen_on_validation_photos():
    x, y = _blobs(200, 2)
    xv, yv = _blobs(100, 3)
    main, sets = [CATS[i] for i in y], [{CATS[i]} for i in y]
    val = (xv, [CATS[i] for i in yv], [{CATS[i]} for i in yv])
    fit = fit_content_head(x, main, sets, CATS, val=val, l2s=(1e-3, 10.0), mixes=(0.0,))
    assert (fit.val_top1, fit.val_any) == accuracy(xv @ fit.weight.T + fit.bias, val[1], val[2], CATS)
    assert fit.l2 == 1e-3  # so strong an L2 flattens the logits: it validates worse
    with pytest.raises(ValueError, match="without validation"):
        fit_content_head(x, main, sets, CATS, l2s=(1e-3, 1e-2))
    assert fit_content_head(x, main, sets, CATS, l2s=(1e-2,), mixes=(0.0,)).val_top1 is None


def test_accuracy_counts_any_of_the_labels():
    logits = np.array([[3.0, 0, 0], [0, 0, 3.0]])
    assert accuracy(logits, ["a", "b"], [{"a"}, {"b", "c"}], CATS) == (0.5, 1.0)


def _level_model():
    model = tiny_model("iqa-cr", categories=list(CATS), content_from="tokens")
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(len(CATS), sum(model.level_channels), generator=g)
    return model, model.with_level_content(weight, torch.randn(len(CATS), generator=g))


def test_level_content_keeps_the_score_and_reads_the_levels(tmp_path):
    model, new = _level_model()
    assert new.cfg.content_from == "levels" and model.cfg.content_from == "tokens"
    x = torch.randn(2, 3, 72, 88)
    with torch.no_grad():
        a, b = model(x), new(x)
        means = torch.cat([m.mean(dim=(2, 3)) for m in new.features(x)], dim=1)
        torch.testing.assert_close(b["score"], a["score"], rtol=0, atol=1e-6)
        torch.testing.assert_close(b["logits"], new.content_head(means))
        assert not torch.allclose(b["logits"], a["logits"])
    again = load_checkpoint(save_checkpoint(new, tmp_path / "levels.pt"))  # the config travels with the weights
    assert again.cfg.content_from == "levels"
    with torch.no_grad():
        torch.testing.assert_close(again(x)["logits"], b["logits"])
    with pytest.raises(ValueError, match="tokens"):
        new.with_level_content(torch.zeros(3, 1), torch.zeros(3))


def test_level_content_from_the_cache_equals_the_photo():
    _, new = _level_model()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        direct = new(x)
        pooled = new._encode_frozen(x, new.feature_end)  # the whole used backbone frozen: pooled levels
        k = new.levels[1] + 1  # the first two levels inside the cached stages
        partial = new._encode_frozen(x, k)
        for out in (new.forward_cached(pooled, new.feature_end), new.forward_cached(partial, k)):
            torch.testing.assert_close(out["logits"], direct["logits"], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(out["score"], direct["score"], rtol=1e-5, atol=1e-5)


def test_level_means_read_the_photo_as_the_model_does(examples_dir):
    from PIL import Image, ImageOps

    model, _ = _level_model()
    path = str(sorted(p for p in examples_dir.iterdir() if p.suffix.lower() in (".jpg", ".png", ".bmp"))[0])
    got = level_means(model, [path, path], hflip=True)
    image = ImageOps.mirror(Image.open(path).convert("RGB"))
    with torch.no_grad():
        maps = model.features(model.preprocess(image).unsqueeze(0))
    np.testing.assert_allclose(got[1], torch.cat([m.mean(dim=(2, 3)) for m in maps], 1)[0].numpy(), rtol=1e-5, atol=1e-6)


def test_level_content_is_for_the_full_model_only():
    with pytest.raises(ValueError, match="full variant"):
        IQACRConfig(variant="q", content_from="levels")
    with pytest.raises(ValueError, match="content_from"):
        IQACRConfig(content_from="pixels")


def test_level_content_exports_to_onnx(tmp_path):
    pytest.importorskip("onnxruntime")
    from contentiqa.inference.onnx import export_onnx
    from contentiqa.inference.onnx_runtime import make_session

    _, new = _level_model()
    path = export_onnx(new, tmp_path / "levels.onnx")
    x = torch.randn(2, 3, 80, 64)
    session = make_session(path, threads=1)
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(names, {"image": x.numpy()})))
    with torch.no_grad():
        ref = new(x)
    np.testing.assert_allclose(got["logits"], ref["logits"].numpy(), atol=1e-3, rtol=0)
    np.testing.assert_allclose(got["score"], ref["score"].numpy(), atol=1e-3, rtol=0)
