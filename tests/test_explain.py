"""Grad-CAM, attention rollout, their fusion, and ``contentiqa explain``."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from contentiqa.cli.main import main
from contentiqa.explain import attention_rollout, combine_levels, compute_gradcam, explain, received_attention
from tiny_models import cached_loader, one_torch_thread, tiny_checkpoint, tiny_model  # noqa: F401


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=3)


@pytest.fixture
def photo(tmp_path) -> Path:
    arr = np.random.default_rng(1).integers(0, 256, size=(80, 96, 3), dtype=np.uint8)
    p = tmp_path / "photo.png"
    Image.fromarray(arr).save(p)
    return p


def _check_map(m, size_wh):
    assert m is not None and m.dtype == np.float32
    assert m.shape == (size_wh[1], size_wh[0])
    assert m.min() >= 0.0 and m.max() <= 1.0


def test_maps_have_image_size_and_unit_range(model, photo):
    exp = explain(model, photo)
    assert exp.size == (96, 80) and not exp.downscaled
    for m in (exp.quality_cam, exp.category_cam, exp.attention, exp.fused, exp.fused_category):
        _check_map(m, exp.size)
    assert exp.score == pytest.approx(model.predict(str(photo)).score, abs=1e-4)
    assert exp.category == model.predict(str(photo)).category
    ov = exp.overlay("fused")
    assert ov.size == exp.size and ov.mode == "RGB"


def test_gradcam_depends_on_target(model, photo):
    exp = explain(model, photo)
    assert not np.allclose(exp.quality_cam, exp.category_cam)
    x = model.preprocess(Image.open(photo).convert("RGB"))[None]
    raw = [compute_gradcam(model, x, targets=("category",), category_index=k, relu=False).cams["category"] for k in (0, 1)]
    assert not np.allclose(raw[0], raw[1])


def test_gradcam_matches_full_autograd(model, photo):
    """The memory-saving forward (graph only after the first feature map, every level
    detached) gives per-level Grad-CAM of each level's direct path into the score, combined
    on the finest grid with each level's total kept."""
    x = model.preprocess(Image.open(photo).convert("RGB"))[None]
    g = compute_gradcam(model, x, targets=("quality",), relu=False)
    with torch.no_grad():
        maps = model.features(x)
    leaves = [m.detach().requires_grad_(True) for m in maps]
    with torch.enable_grad():
        out = model.head_outputs(model.encode(leaves), torch.cat([m.mean(dim=(2, 3)) for m in leaves], dim=1))
        grads = torch.autograd.grad(out["score"][0], leaves)
    refs = [(gr[0].mean(dim=(1, 2))[:, None, None] * a[0]).sum(0).detach() for gr, a in zip(grads, leaves)]
    assert len(g.level_cams["quality"]) == len(model.levels) >= 2
    for got, ref in zip(g.level_cams["quality"], refs):
        np.testing.assert_allclose(got, ref.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(g.cams["quality"], combine_levels(refs).numpy(), rtol=1e-4, atol=1e-6)
    assert g.cams["quality"].shape == tuple(maps[0].shape[-2:])  # the finest (shallowest) grid
    assert sum(g.level_shares["quality"]) == pytest.approx(1.0)
    assert sum(s > 0.01 for s in g.level_shares["quality"]) >= 2  # more than the deepest level speaks
    assert torch.is_grad_enabled()  # grad mode restored


def test_combine_levels_keeps_each_levels_total():
    fine = torch.rand(8, 12)
    coarse = torch.rand(2, 3)
    both = combine_levels([fine, coarse])
    assert both.shape == (8, 12)
    assert float(both.sum()) == pytest.approx(float(fine.sum() + coarse.sum()), rel=1e-5)
    np.testing.assert_allclose(combine_levels([fine]).numpy(), fine.numpy())


def test_explain_leaves_model_as_it_was(model, photo):
    model.train()
    explain(model, photo)
    assert model.training
    assert all(not m.keep_attention and m.last_attention is None for m in model.attention_layers())
    model.eval()


def test_gradcam_modules_are_the_feature_levels(model):
    assert model.gradcam_modules() == [model.stages[i] for i in model.levels]


def test_attention_rollout_by_hand():
    n = 4
    uniform = torch.full((1, 2, n, n), 1.0 / n)
    r = attention_rollout([uniform, uniform])
    assert torch.allclose(r.sum(-1), torch.ones(1, n))
    assert torch.allclose(received_attention(r), torch.full((1, n), 1.0 / n))
    # every token attends only to token 2 -> token 2 receives the most
    focus = torch.zeros(1, 1, n, n)
    focus[..., 2] = 1.0
    got = received_attention(attention_rollout([focus]))[0]
    assert int(got.argmax()) == 2
    # axial variant's (B, D, heads, N, N) is averaged over channels too
    axial = torch.full((1, 3, 2, n, n), 1.0 / n)
    assert attention_rollout([axial]).shape == (1, n, n)


def test_downscaled_explanation_reports_it(model, photo):
    exp = explain(model, photo, max_pixels=2000)
    assert exp.downscaled and exp.explained_size[0] * exp.explained_size[1] <= 2000
    _check_map(exp.fused, exp.size)  # maps still at full size
    assert any("downscaled" in n or "copy" in n for n in exp.notes)
    assert exp.score == pytest.approx(model.predict(str(photo)).score, abs=1e-4)  # full-res score


def test_the_maps_of_a_very_large_photo_are_bounded_and_keep_its_aspect(model, photo, monkeypatch):
    """Every map was kept at the photo's own size (five float maps of a 96 MP photo: 2 GB, about four
    times what scoring it takes), though every figure draws them at most 2048 px."""
    import contentiqa.explain.explanation as explanation

    monkeypatch.setattr(explanation, "MAP_MAX_PIXELS", 96 * 80 // 4)
    exp = explain(model, photo)
    h, w = exp.fused.shape
    assert (w, h) == (48, 40) and exp.quality_cam.shape == (40, 48)
    assert any("maps are 48x40, the image's aspect" in n for n in exp.notes)
    assert exp.overlay("fused").size == exp.size  # drawn on the image at its size all the same
    # explained on a copy as well: the notes agree on the maps' size
    copy = explain(model, photo, max_pixels=96 * 80 // 3)
    assert any(n.endswith("maps are upsampled back to 48x40") for n in copy.notes), copy.notes
    assert not any("full size" in n for n in copy.notes)


def test_a_photo_over_max_side_is_explained_and_scored_as_score_reads_it(model, photo):
    """explain ignored max_side: the maps and the score came from a larger input than scoring's
    (a 3000x2000 photo: iqa-cr's map a content-blind strip, its score 11.5 against score's 13.3)."""
    assert model.native_resolution
    was = model.max_side
    model.max_side = 64  # the 96x80 photo is over it, as a 3000 px photo is over 2048
    try:
        exp = explain(model, photo)
        assert exp.score == pytest.approx(model.predict(str(photo)).score, abs=1e-4)
        assert any("downscaled" in n for n in exp.notes) and exp.explained_size == (64, 53)
        _check_map(exp.fused, exp.size)  # drawn on the photo as given
        assert exp.size == (96, 80)
        small = explain(model, photo, max_pixels=1000)  # further down for the backward pass: still score's score
        assert small.score == pytest.approx(exp.score, abs=1e-4) and small.explained_size[0] < 64
    finally:
        model.max_side = was


def test_empty_and_coarse_maps_are_said_so(model, photo, monkeypatch):
    """A map that is zero everywhere (seen on the default model), or only a few cells across (a small
    photo), was drawn with no word."""
    import contentiqa.explain.explanation as explanation

    real = explanation.compute_gradcam

    def zero_quality(*a, **k):
        g = real(*a, **k)
        g.cams["quality"] = np.zeros_like(g.cams["quality"])
        return g

    first = explain(model, photo).notes
    assert not any("map is empty" in n for n in first)
    assert any("only 5x6 cells" in n for n in first)  # a 96x80 photo: a coarse map, and said so
    monkeypatch.setattr(explanation, "compute_gradcam", zero_quality)
    notes = explain(model, photo).notes
    assert any("the quality map is empty" in n for n in notes) and not any("category map is empty" in n for n in notes)


def test_variants_axial_and_pooled(photo):
    axial = tiny_model(channel_attention="axial", axial_dim=4)
    exp = explain(axial, photo)
    _check_map(exp.attention, exp.size)
    pooled = tiny_model("mtl-pooled")
    exp = explain(pooled, photo)
    assert exp.attention is None
    np.testing.assert_array_equal(exp.fused, exp.quality_cam)


def test_explain_cli_writes_png(tmp_path, photo, monkeypatch, capsys):
    import contentiqa.models.registry as registry

    monkeypatch.setattr(registry, "load_checkpoint", cached_loader(registry.load_checkpoint))
    ckpt = tiny_checkpoint()
    out = tmp_path / "heat.png"
    assert main(["explain", str(photo), "--model", ckpt, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "score" in printed
    assert "quality evidence by CNN level (shallow to deep):" in printed
    im = Image.open(out)
    assert im.format == "PNG" and im.size[0] > im.size[1]  # panels side by side
    assert main(["explain", str(photo), "--model", ckpt, "--out", str(tmp_path / "q.png"), "--target", "quality"]) == 0
    assert Image.open(tmp_path / "q.png").size[0] < im.size[0]  # two panels instead of three
    monkeypatch.chdir(tmp_path)
    assert main(["explain", str(photo), "--model", ckpt, "--max-pixels", "0.002"]) == 0
    printed = capsys.readouterr().out
    assert "photo_explain.png" in printed and "copy" in printed  # default name; downscale said
    assert (tmp_path / "photo_explain.png").is_file()
    bad = tmp_path / "bad.jpg"
    bad.write_text("nope")
    assert main(["explain", str(bad), "--model", ckpt]) == 1
    assert main(["explain", "--model", ckpt]) == 2
    assert main(["explain", str(photo), "--model", ckpt, "--out", str(tmp_path / "x.jpg")]) == 2


def test_a_photo_too_large_to_explain_fails_alone_and_the_others_are_explained(tmp_path, photo, monkeypatch, capsys):
    """PyTorch running out of memory in Grad-CAM on one photo was a traceback, and no figure of
    the photos after it was written."""
    import contentiqa.explain as explain_mod
    import contentiqa.models.registry as registry

    monkeypatch.setattr(registry, "load_checkpoint", cached_loader(registry.load_checkpoint))
    real = explain_mod.explain

    def short_of_memory(model, image, **kw):
        if Path(image).name == "huge.png":
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: "
                               "you tried to allocate 403440000 bytes")
        return real(model, image, **kw)

    monkeypatch.setattr(explain_mod, "explain", short_of_memory)
    huge = tmp_path / "huge.png"
    huge.write_bytes(photo.read_bytes())
    rc = main(["explain", str(huge), str(photo), "--model", tiny_checkpoint(), "--out-dir", str(tmp_path / "o")])
    out, err = capsys.readouterr()
    assert rc == 1 and "Traceback" not in err
    assert "huge.png: not enough memory to explain it at this size: lower --max-pixels (now 4 MP)" in err
    assert (tmp_path / "o" / "photo_explain.png").is_file() and not (tmp_path / "o" / "huge_explain.png").exists()


@pytest.mark.parametrize("size", [(48, 1200), (1200, 48)])
def test_a_strip_of_a_photo_gets_a_figure_of_a_usual_size(model, tmp_path, size):
    strip = Image.fromarray(np.random.default_rng(2).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))
    strip.save(tmp_path / "strip.png")
    out = explain(model, tmp_path / "strip.png").save_figure(tmp_path / "fig.png")
    assert max(Image.open(out).size) <= 1300  # it was 100 in per panel for a tall strip


def test_a_portrait_figure_is_wide_enough_for_its_title_and_says_what_the_colours_and_an_empty_map_mean(
        model, tmp_path, monkeypatch):
    """A 1:2 portrait made a 4 in figure: the title with the score ran off both edges. Nothing
    said what red means, and an empty map was drawn flat without a word."""
    from matplotlib.figure import Figure

    Image.fromarray(np.random.default_rng(3).integers(0, 256, size=(400, 200, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    exp = explain(model, tmp_path / "p.png", targets=("quality",))
    exp = replace(exp, quality_cam=np.zeros_like(exp.quality_cam), fused=np.zeros_like(exp.quality_cam))
    texts: list[str] = []
    real = Figure.savefig

    def keep_texts(fig, *a, **k):
        texts.extend(t.get_text() for t in fig.findobj(match=lambda o: hasattr(o, "get_text")) if t.get_text())
        return real(fig, *a, **k)

    monkeypatch.setattr(Figure, "savefig", keep_texts)
    out = exp.save_figure(tmp_path / "fig.png", target="quality")
    assert Image.open(out).size[0] >= 700
    assert any("red: the regions that raised the score most" in t for t in texts)
    assert any("(empty: nothing raised it)" in t.replace("\n", " ") for t in texts), texts


def test_explain_cli_never_writes_over_an_input_and_checks_outputs_first(tmp_path, photo, monkeypatch, capsys):
    import contentiqa.models.registry as registry

    monkeypatch.setattr(registry, "load_checkpoint", cached_loader(registry.load_checkpoint))
    ckpt = tiny_checkpoint()
    before = photo.read_bytes()
    assert main(["explain", str(photo), "--model", ckpt, "--out", str(photo)]) == 2
    assert "is one of the images" in capsys.readouterr().err and photo.read_bytes() == before
    (tmp_path / "adir.png").mkdir()
    assert main(["explain", str(photo), "--model", ckpt, "--out", str(tmp_path / "adir.png")]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["explain", str(photo), "--model", ckpt, "--out-dir", str(photo)]) == 2
    assert "is a file" in capsys.readouterr().err
    # --category with only the quality map drawn was ignored without a word
    assert main(["explain", str(photo), "--model", ckpt, "--target", "quality", "--category", "animal",
                 "--out", str(tmp_path / "q.png")]) == 2
    assert "--target quality draws none" in capsys.readouterr().err
    # a default name taken by a folder, or by another input: that image fails, the rest are written
    named = tmp_path / "photo_explain.png"
    named.write_bytes(before)
    other = tmp_path / "other.png"
    other.write_bytes(before)
    (tmp_path / "out" / "other_explain.png").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert main(["explain", str(named), str(photo), str(other), "--model", ckpt]) == 1
    err = capsys.readouterr().err
    assert "would replace the input" in err and named.read_bytes() == before
    assert (tmp_path / "photo_explain_explain.png").is_file()
    assert main(["explain", str(other), str(named), "--model", ckpt, "--out-dir", "out"]) == 1
    assert "cannot write" in capsys.readouterr().err and (tmp_path / "out" / "photo_explain_explain.png").is_file()
    # no --out-dir: the current folder is checked before the work too (every image failed after it)
    monkeypatch.chdir("/proc")
    assert main(["explain", str(photo), "--model", ckpt]) == 2
    assert "cannot write in the current folder /proc" in capsys.readouterr().err


def test_sigterm_while_explaining_leaves_no_temporary(tmp_path, photo, monkeypatch, capsys):
    """A SIGTERM during a figure's write killed explain outright, its .tmp left beside the figure."""
    import os
    import signal

    import contentiqa.models.registry as registry
    from contentiqa.explain.explanation import Explanation

    monkeypatch.setattr(registry, "load_checkpoint", cached_loader(registry.load_checkpoint))
    real = Explanation.save_figure

    def save_then_terminated(self, path, *a, **k):
        from contentiqa.utils.io import atomic_write

        def write(tmp):  # the figure's temporary exists when the signal comes
            Path(tmp).write_bytes(b"partial")
            os.kill(os.getpid(), signal.SIGTERM)

        atomic_write(path, write)
        return real(self, path, *a, **k)

    def unhandled(signum, frame):
        raise RuntimeError("SIGTERM reached the caller: explain did not handle it")

    monkeypatch.setattr(Explanation, "save_figure", save_then_terminated)
    before = signal.signal(signal.SIGTERM, unhandled)
    try:
        assert main(["explain", str(photo), "--model", tiny_checkpoint(), "--out-dir", str(tmp_path / "o")]) == 143
    finally:
        signal.signal(signal.SIGTERM, before)
    assert list((tmp_path / "o").iterdir()) == []


def test_explain_cli_reports_the_score_commands_score(tmp_path, photo, monkeypatch, capsys):
    """`contentiqa explain` prints (and titles its figure with) the score and category that
    `contentiqa score` gives the image with the same flags: same runtime and precision, named
    (issue 22: explain ran PyTorch fp32 while score ran an int8 graph)."""
    import json

    from contentiqa.models.registry import save_checkpoint

    ckpt = str(save_checkpoint(tiny_model(seed=5), tmp_path / "tiny5.pt"))  # scores inside the scale, not clipped
    for flags, label in (([], "ONNX Runtime fp32"), (["--precision", "bf16"], "PyTorch bf16")):
        out = tmp_path / "scores.json"
        assert main(["score", str(photo), "--model", ckpt, "-o", str(out), "-q", "--force", *flags]) == 0
        row = json.loads(out.read_text())[0]
        capsys.readouterr()
        assert main(["explain", str(photo), "--model", ckpt, "--out", str(tmp_path / "e.png"), *flags]) == 0
        title = capsys.readouterr().out.splitlines()[0]
        assert 0 < row["score"] < 100 and f"score {row['score']:.2f} on" in title and label in title, (title, row)
        assert f"category: {row['category']} (" in title


def test_explanation_takes_the_score_of_another_runtime(model, photo):
    from contentiqa.models.base import Prediction

    exp = explain(model, photo)
    assert exp.scored_by == "PyTorch fp32" and "PyTorch fp32" in exp.title()
    other = exp.scored(Prediction(path=None, score=12.5, category=model.categories[-1], category_confidence=0.5),
                       "ONNX Runtime int8")
    assert (other.score, other.category, other.category_confidence) == (12.5, model.categories[-1], 0.5)
    assert "score 12.50" in other.title() and "ONNX Runtime int8" in other.title()
    assert other.quality_cam is exp.quality_cam  # the heatmaps stay PyTorch's



def test_explain_prints_names_with_their_control_characters_escaped(tmp_path, photo, monkeypatch, capsys):
    import contentiqa.models.registry as registry

    monkeypatch.setattr(registry, "load_checkpoint", cached_loader(registry.load_checkpoint))
    odd = tmp_path / "e\x1b[31mred.png"
    odd.write_bytes(photo.read_bytes())
    monkeypatch.chdir(tmp_path)
    assert main(["explain", str(odd), "--model", tiny_checkpoint()]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "e\\x1b[31mred_explain.png" in out


def test_explaining_works_under_no_grad_and_inference_mode_and_keeps_each_modules_mode(model, photo):
    """Inference code wraps calls in torch.no_grad / inference_mode: explain raised deep in
    autograd; and a user's dropout switched off mid-training was switched back on."""
    want = explain(model, photo).fused
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            assert np.allclose(explain(model, photo).fused, want, atol=1e-6), mode.__name__
    model.train()
    off = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    for m in off:
        m.eval()
    try:
        explain(model, photo, targets="quality")  # one target given as a word
        assert off and all(not m.training for m in off) and model.training
    finally:
        model.eval()


def test_a_content_only_model_is_scored_and_its_report_has_heatmaps(tmp_path, photo, capsys):
    """Its rows have a category and no score: score counted them failed (exit 1), the report
    listed them as failed, and --explain drew no heatmap."""
    from contentiqa.models import create_model
    from contentiqa.models.registry import save_checkpoint

    torch.manual_seed(0)
    ckpt = save_checkpoint(create_model("iqa-cr-c", pretrained=False, backbone_pretrained=False, dim=16, heads=2,
                                        mlp_dim=32, grid=(2, 2), depth=1), tmp_path / "c.pt")
    out = tmp_path / "r.html"
    assert main(["score", str(photo), "--model", str(ckpt), "-o", str(out), "--explain", "--runtime", "torch"]) == 0
    said = capsys.readouterr()
    assert "1 of 1 input(s) scored" in said.out + said.err
    text = out.read_text()
    assert text.count('class="heatmap"') == 1 and "Failed inputs" not in text
    assert main(["explain", str(photo), "--model", str(ckpt), "--target", "quality", "--out-dir", str(tmp_path)]) == 2
    assert "predicts no quality score" in capsys.readouterr().err
    # refused once the model loaded: the --out-dir it had made (two levels) is not left behind empty
    kept = tmp_path / "kept"
    kept.mkdir()
    assert main(["explain", str(photo), "--model", str(ckpt), "--target", "quality",
                 "--out-dir", str(kept / "new" / "deeper")]) == 2
    assert "predicts no quality score" in capsys.readouterr().err
    assert kept.is_dir() and not (kept / "new").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_gpu_that_is_not_here_is_refused_before_any_output_folder_is_made(tmp_path, photo, capsys):
    for argv in (["explain", str(photo), "--out-dir", str(tmp_path / "maps")],
                 ["score", str(photo), "--output", str(tmp_path / "rows" / "s.csv")]):
        assert main([*argv, "--model", tiny_checkpoint(), "--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
    assert sorted(tmp_path.iterdir()) == [photo]


def test_a_category_name_with_dollar_signs_is_drawn_as_written_not_as_maths(photo, tmp_path):
    """Matplotlib read '$...$' in a title as maths: '$5-$10' was drawn as '5 - 10', and an
    unknown TeX command failed the figure with a parser error blamed on the photo."""
    from matplotlib.figure import Figure

    drawn: list[str] = []
    real = Figure.suptitle

    def suptitle(self, t, **kw):
        drawn.append(t)
        return real(self, t, **kw)

    m = tiny_model(seed=3, categories=["$\\nosuchcmd$ deals", "$\\alsonot$ 5-$10"])
    exp = explain(m, photo, targets=("quality", "category"), category="$\\nosuchcmd$ deals")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Figure, "suptitle", suptitle)
        out = exp.save_figure(tmp_path / "fig.png")
    assert Image.open(out).format == "PNG" and "category: $\\" in drawn[0]  # as written


def test_the_library_refuses_a_figure_name_of_another_format_and_a_meaningless_pixel_limit(model, photo, tmp_path):
    """save_figure('x.jpg') wrote PNG bytes under a .jpg name; max_pixels=-5 was 'math domain
    error' and 0 explained a 32x32 copy."""
    exp = explain(model, photo)
    with pytest.raises(ValueError, match=r"x\.jpg: a figure is written as PNG"):
        exp.save_figure(tmp_path / "x.jpg")
    assert not (tmp_path / "x.jpg").exists()
    assert Image.open(exp.save_figure(tmp_path / "x.PNG")).format == "PNG"
    for bad in (-5, 0):
        with pytest.raises(ValueError, match="max_pixels must be None"):
            explain(model, photo, max_pixels=bad)
