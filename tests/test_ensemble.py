"""Ensembles of trained models (contentiqa.models.ensemble): the score they combine, the pixels a
fixed-size member sees, checkpoints, ONNX, and what they refuse."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from contentiqa.models import EnsembleConfig, build_ensemble, create_model, load_checkpoint
from contentiqa.models.layers import resize_like_pillow
from contentiqa.models.registry import model_recipe, save_checkpoint

TINY_CR = dict(pretrained=False, backbone_pretrained=False, dim=16, heads=2, mlp_dim=32, grid=(2, 2), depth=1)
TINY_IE = dict(pretrained=False, distortion_pretrained=False, hidden=(8, 4), input_size=64, train_resize=72)


def tiny_members(seed: int = 0):
    torch.manual_seed(seed)
    return create_model("ie-iqa-distortion", **TINY_IE).eval(), create_model("iqa-cr", **TINY_CR).eval()


def photo(h: int, w: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


# -- Pillow's resize, traceable --------------------------------------------------------------------
@pytest.mark.parametrize("hw,out", [((50, 50), (38, 38)), ((120, 90), (38, 38)), ((90, 120), (38, 38)),
                                    ((30, 20), (38, 38)), ((37, 53), (16, 16)), ((64, 64), (64, 64)),
                                    ((90, 70), (64, 64)), ((100, 64), (64, 64))])
def test_resize_is_pillows_bilinear(hw, out):
    img = photo(*hw)
    ref = np.asarray(img.resize((out[1], out[0]), Image.BILINEAR)).astype(np.float64)
    x = torch.from_numpy(np.asarray(img).astype(np.float64)).permute(2, 0, 1)[None]
    ours = resize_like_pillow(x, out)[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(ours, ref)  # in float64, Pillow's 8-bit result exactly (both pass orders)
    f32 = resize_like_pillow(x.float(), out)[0].permute(1, 2, 0).numpy()
    assert np.abs(f32 - ref).max() <= 1.0 and (f32 != ref).mean() < 0.01  # float32 sums: a rare tie


def test_a_fixed_size_member_sees_what_it_would_see_alone():
    ie, cr = tiny_members()
    ens = build_ensemble([ie, cr])
    img = photo(90, 70)
    alone = ie.preprocess(img)[None]
    inside = ens.member_inputs(ens.preprocess(img)[None])
    assert inside[0].shape == alone.shape and inside[1].shape == (1, 3, 90, 70)
    # float32 in the graph: a rare pixel one 8-bit step off Pillow's (1 / 255 / std)
    diff = (inside[0] - alone).abs()
    assert float(diff.max()) <= 1 / 255 / min(ens.std) + 1e-5 and float((diff > 1e-4).float().mean()) < 0.01


# -- the score -------------------------------------------------------------------------------------
def test_score_is_the_weighted_harmonic_mean_and_content_comes_from_the_member_with_it():
    ie, cr = tiny_members()
    ens = build_ensemble([ie, cr], weights=[1.0, 3.0])
    x = ens.preprocess(photo(80, 96))[None]
    with torch.no_grad():
        out = ens(x)
        a = ie(ens.member_inputs(x)[0])["score"]
        b = cr(x)
    expected = 1.0 / (0.25 / a.clamp(min=1e-6) + 0.75 / b["score"].clamp(min=1e-6))
    torch.testing.assert_close(out["score"], expected)
    torch.testing.assert_close(out["logits"], b["logits"])
    assert ens.categories == cr.categories and ens.native_resolution and ens.output_names == ("score", "logits")
    mean = build_ensemble([ie, cr], weights=[1.0, 3.0], combine="mean")
    with torch.no_grad():
        torch.testing.assert_close(mean(x)["score"], 0.25 * a + 0.75 * b["score"])


def test_a_member_that_finds_a_photo_worthless_keeps_it_near_the_bottom():
    ens = build_ensemble(list(tiny_members()))
    low, high = torch.tensor([0.005]), torch.tensor([0.6])
    assert float(ens.combine([low, high])) < 0.01 < float(ens.cfg.combine == "harmonic")
    assert float(ens.combine([high, high])) == pytest.approx(0.6)


def test_checkpoint_round_trip_and_onnx(tmp_path):
    ens = build_ensemble(list(tiny_members()), name="ie-iqa-distortion+iqa-cr")
    path = save_checkpoint(ens, tmp_path / "ens.pt")
    back = load_checkpoint(path)
    assert back.model_name == "ie-iqa-distortion+iqa-cr" and [m.model_name for m in back.members] == \
        ["ie-iqa-distortion", "iqa-cr"]
    x = back.preprocess(photo(72, 88))[None]
    with torch.no_grad():
        torch.testing.assert_close(back(x)["score"], ens(x)["score"])
    from contentiqa.inference.onnx import export_onnx
    import contentiqa

    onnx = export_onnx(back, tmp_path / "ens.onnx")  # checks ONNX Runtime against PyTorch at two sizes itself
    pred = contentiqa.load_scorer(onnx).predict(photo(72, 88))
    assert pred.error is None and pred.category in back.categories
    # a saved extra named like the file's own facts never stands in for them
    other = save_checkpoint(ens, tmp_path / "other.pt", extra={"path": "elsewhere.pt", "file_sha256": "0" * 64})
    info = load_checkpoint(other).checkpoint_info
    assert info["path"] == str(other) and info["file_sha256"] != "0" * 64


def test_a_member_recalibrated_after_the_ensemble_was_built_is_saved_and_fingerprinted_as_it_scores(tmp_path):
    """The ensemble kept its members' configs as they were when it was built: a member recalibrated
    since scored with the new calibration in PyTorch, but the saved ensemble (and the ONNX cache's
    key of the ensemble in memory) kept the old one: ~27 points apart, without a word."""
    from contentiqa.inference.onnx import model_fingerprint

    ie, cr = tiny_members()
    for m in (ie, cr):
        m.set_calibration([0.01, 0.95, 0.17, 0.05])
    ens = build_ensemble([ie, cr], name="ie-iqa-distortion+iqa-cr")
    x = ens.preprocess(photo(72, 88))[None]
    before = model_fingerprint(ens)
    ens.members[0].set_calibration([0.0, 0.5, 0.17, 0.05])
    assert model_fingerprint(ens) != before
    back = load_checkpoint(save_checkpoint(ens, tmp_path / "ens.pt"))
    assert back.members[0].cfg.calibration == [0.0, 0.5, 0.17, 0.05]
    with torch.no_grad():
        torch.testing.assert_close(back(x)["score"], ens(x)["score"])


def test_an_iqa_cr_variant_is_named_and_rebuilt_as_itself(tmp_path):
    """create_model('iqa-cr', variant='q') built the full model without a word, and a variant built from
    the IQACR class was saved as 'iqa-cr', rebuilt as the full model and refused."""
    from contentiqa.models import IQACR, IQACRConfig

    with pytest.raises(ValueError, match=r"iqa-cr is IQA-CR's 'full' variant, not 'q': create_model\('iqa-cr-q'\)"):
        create_model("iqa-cr", variant="q", **TINY_CR)
    assert create_model("iqa-cr-q", variant="q", **TINY_CR).model_name == "iqa-cr-q"  # its own: fine
    cfg = {k: v for k, v in TINY_CR.items() if k != "pretrained"}
    pooled = IQACR(IQACRConfig(variant="mtl-pooled", **cfg)).eval()
    back = load_checkpoint(save_checkpoint(pooled, tmp_path / "p.pt"))
    assert back.model_name == "mtl-pooled" and back.cfg.variant == "mtl-pooled"


def test_an_uncalibrated_member_of_a_harmonic_mean_is_said():
    """A raw score at or below 0 is floored and pulls every photo's harmonic mean to ~0, silently."""
    ie, cr = tiny_members()
    ie.set_calibration([0.01, 0.95, 0.17, 0.05])
    with pytest.warns(UserWarning, match=r"\['iqa-cr'\] have no output calibration"):
        build_ensemble([ie, cr])


# -- what it refuses --------------------------------------------------------------------------------
def test_members_that_do_not_fit_together_are_refused():
    ie, cr = tiny_members()
    with pytest.raises(ValueError, match="at least two"):
        build_ensemble([ie])
    with pytest.raises(ValueError, match="unknown combine"):
        build_ensemble([ie, cr], combine="max")
    with pytest.raises(ValueError, match="content head"):
        build_ensemble([cr, create_model("iqa-cr", **TINY_CR)])
    other = create_model("iqa-cr-q", **TINY_CR)
    other.set_scale(type(other.scale)(1.0, 5.0))
    with pytest.raises(ValueError, match="one rating scale"):
        build_ensemble([ie, other])
    with pytest.raises(ValueError, match="weight"):
        EnsembleConfig(members=[{"model": "a", "config": {}, "weight": 0}, {"model": "b", "config": {}, "weight": 1}])
    # an infinite weight, or weights whose sum overflows, made every score NaN with no error
    for weights in ([float("inf"), 1.0], [float("nan"), 1.0], [1e308, 1e308]):
        with pytest.raises(ValueError, match="weight"):
            build_ensemble([ie, cr], weights=weights)
    with pytest.raises(ValueError, match="not a registered ensemble"):
        build_ensemble([ie, cr], name="iqa-cr")
    with pytest.raises(ValueError, match="members are"):  # a named ensemble's members are its architecture
        build_ensemble([cr.__class__(cr.cfg), ie], name="ie-iqa-distortion+iqa-cr")


def test_an_ensemble_is_not_trained(tmp_path):
    import pandas as pd

    from contentiqa.data.table import MOSScale
    from contentiqa.training.config import TrainConfig
    from contentiqa.training.trainer import Trainer

    ens = build_ensemble(list(tiny_members()))
    table = pd.DataFrame({"image": ["a.png"], "mos": [50.0]})
    with pytest.raises(ValueError, match="not trained itself"):
        Trainer(ens, table, None, MOSScale(0, 100), TrainConfig(), tmp_path)
    with pytest.raises(ValueError, match="not trained itself"):
        model_recipe("ie-iqa-distortion+iqa-cr")


def test_untrained_named_ensemble_has_its_entrys_members():
    ens = create_model("ie-iqa-distortion+iqa-cr", pretrained=False, member_args={
        "ie-iqa-distortion": {k: v for k, v in TINY_IE.items() if k != "pretrained"},
        "iqa-cr": {k: v for k, v in TINY_CR.items() if k != "pretrained"}})
    assert [m.model_name for m in ens.members] == ["ie-iqa-distortion", "iqa-cr"]
    # one member's arguments keep the other's defaults (the distortion network at the ensemble's 512 px)
    one = create_model("ie-iqa-distortion+iqa-cr", pretrained=False, member_args={
        "iqa-cr": {k: v for k, v in TINY_CR.items() if k != "pretrained"}})
    assert one.members[0].cfg.input_size == 512
    with pytest.raises(ValueError, match="member_args for"):
        create_model("ie-iqa-distortion+iqa-cr", pretrained=False, member_args={"ie-iqa": {}})
    with pytest.raises(ValueError, match="made from trained models"):
        create_model("ensemble", pretrained=False)


@pytest.mark.parametrize("name", ["ie-iqa-distortion+iqa-cr", "ie-iqa-distortion+iqa-cr+ie-iqa",
                                  "ie-iqa-distortion+iqa-cr+ie-iqa-distortion"])
def test_an_untrained_named_ensemble_is_its_default_tags_architecture(name):
    """pretrained=False built native resolution, equal weights and the distortion network at 384 px:
    another network than the name's default weights (one 512-px input, 2:1...)."""
    shipped, untrained = create_model(name, pretrained=True), create_model(name, pretrained=False)
    assert untrained.cfg.input_size == shipped.cfg.input_size
    for a, b in zip(shipped.cfg.members, untrained.cfg.members):
        assert (b["model"], b["weight"]) == (a["model"], a["weight"])
        # what training sets is not architecture: the calibration, and IQA-CR's label set and frozen stages
        trained = {"calibration", "categories", "num_categories", "frozen_stages"}
        assert {k: v for k, v in b["config"].items() if k not in trained} == \
            {k: v for k, v in a["config"].items() if k not in trained}


def test_resize_exported_to_onnx_is_pillows_at_every_size(tmp_path):
    """Traced at one size, the graph must resize every other size as Pillow does: a position or a
    pass order frozen at the example's size, or computed in float32, shifts pixels by a step or two."""
    import warnings

    import onnxruntime as ort

    class Resize(torch.nn.Module):
        def forward(self, x):
            return resize_like_pillow(x, (24, 24))

    path = tmp_path / "resize.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Resize(), (torch.rand(1, 3, 31, 31) * 255,), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for hw in [(31, 31), (32, 32), (40, 30), (30, 40), (70, 33), (100, 75), (20, 18), (24, 24)]:
        img = photo(*hw, seed=hw[0])
        ref = np.asarray(img.resize((24, 24), Image.BILINEAR)).astype(np.float32)
        x = np.asarray(img).astype(np.float32).transpose(2, 0, 1)[None].copy()
        out = session.run(None, {"x": x})[0][0].transpose(1, 2, 0)
        # float32 sums: a value that Pillow rounds from exactly x.5 may land a step off (more often on
        # tiny images, whose weights are short binary fractions); a wrong position or order: many, up to 2
        assert np.abs(out - ref).max() <= 1.0 and (out != ref).mean() < 0.03, hw


# -- one input size for all members -------------------------------------------------------------------
def _optimized_convs(path, tmp_path) -> int:
    """Conv nodes of ``path`` after ONNX Runtime's basic graph optimisations (which merge identical
    computations on identical inputs)."""
    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(tmp_path / f"opt_{path.stem}.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sum(n.op_type == "Conv" for n in onnx.load(opts.optimized_model_filepath).graph.node)


def test_one_input_size_feeds_every_member_and_shares_their_backbone_pass(tmp_path):
    from contentiqa.inference.onnx import export_onnx

    ie, cr = tiny_members()
    cr.backbone.load_state_dict(ie.distortion.state_dict())  # the same frozen backbone weights, as shipped
    ens = build_ensemble([ie, cr], input_size=64)
    assert not ens.native_resolution and ens.fixed_input_size == (64, 64) and ens.cfg.to_dict()["input_size"] == 64
    img = photo(90, 70)
    x = ens.preprocess(img)[None]
    torch.testing.assert_close(x, ie.preprocess(img)[None])  # the fixed-size models' resize
    assert all(t is x for t in ens.member_inputs(x))
    with torch.no_grad():
        expected = 1.0 / (0.5 / ie(x)["score"].clamp(min=1e-6) + 0.5 / cr(x)["score"].clamp(min=1e-6))
        torch.testing.assert_close(ens(x)["score"], expected)
    back = load_checkpoint(save_checkpoint(ens, tmp_path / "ens.pt"))
    assert back.fixed_input_size == (64, 64)

    shared = export_onnx(back, tmp_path / "shared.onnx")
    alone = export_onnx(ie, tmp_path / "alone.onnx")
    other = build_ensemble(list(tiny_members(seed=1)), input_size=64)  # backbones with different weights
    apart = export_onnx(other, tmp_path / "apart.onnx")
    one = _optimized_convs(alone, tmp_path)
    assert _optimized_convs(shared, tmp_path) < 1.5 * one < _optimized_convs(apart, tmp_path)


def test_input_size_is_checked():
    for bad in (8, 64.5, "large", True):
        with pytest.raises(ValueError, match="input_size"):
            build_ensemble(list(tiny_members()), input_size=bad)


# -- members' shared stages ------------------------------------------------------------------------
def _calls(modules) -> list[int]:
    counts = [0] * len(modules)
    for i, m in enumerate(modules):
        m.register_forward_hook(lambda *_, i=i: counts.__setitem__(i, counts[i] + 1))
    return counts


def test_members_with_the_same_first_stages_run_them_once():
    """Members reading one input through the same backbone weights share those stages: run once,
    the same score as each member run alone; what is the same is read from the weights, again
    after they change."""
    ie, cr = tiny_members()
    cr.backbone.load_state_dict(ie.distortion.state_dict())  # the same frozen backbone weights, as shipped
    ens = build_ensemble([ie, cr], input_size=64)
    assert ens.shared_stages() == {0: ie.feature_end, 1: cr.feature_end}
    assert max(ie.feature_end, cr.feature_end) == len(ie.stages)
    x = ens.preprocess(photo(90, 70))[None]
    ie_calls, cr_calls = _calls(ie.stages), _calls(cr.stages)
    with torch.no_grad():
        expected = ens.combine([ie(x)["score"], cr(x)["score"]])
        ie_calls[:], cr_calls[:] = [0] * len(ie_calls), [0] * len(cr_calls)
        torch.testing.assert_close(ens(x)["score"], expected)
    assert ie_calls == [1] * len(ie.stages) and cr_calls == [0] * len(cr.stages)

    with torch.no_grad():
        for p in cr.stages[3].parameters():  # the members now differ from stage 3 on
            p.add_(0.05)
        expected = ens.combine([ie(x)["score"], cr(x)["score"]])
        torch.testing.assert_close(ens(x)["score"], expected)
    assert ens.shared_stages() == {0: 3, 1: 3}

    apart = build_ensemble(list(tiny_members(seed=1)), input_size=64)  # different weights from stage 0
    assert apart.shared_stages() == {}
    native = build_ensemble([ie, cr])  # the fixed-size member reads a resized input: nothing shared
    assert native.shared_stages() == {}


def test_a_member_that_shares_fewer_stages_takes_those_and_runs_its_own():
    """A member whose deep stages differ (fine-tuned) takes the shared shallow stages and runs
    its own deep ones; the members that are the same throughout still share the whole pass."""
    ie, cr = tiny_members()
    cr.backbone.load_state_dict(ie.distortion.state_dict())
    tuned = copy.deepcopy(ie)
    with torch.no_grad():
        for p in tuned.stages[2].parameters():
            p.add_(0.05)
    ens = build_ensemble([ie, cr, tuned], input_size=64)
    assert ens.shared_stages() == {0: ie.feature_end, 1: cr.feature_end, 2: 2}
    x = ens.preprocess(photo(90, 70))[None]
    calls = [_calls(m.stages) for m in (ie, cr, tuned)]
    with torch.no_grad():
        expected = ens.combine([m(x)["score"] for m in (ie, cr, tuned)])
        for c in calls:
            c[:] = [0] * len(c)
        torch.testing.assert_close(ens(x)["score"], expected)
    n = len(ie.stages)
    assert calls[0] == [1] * n and calls[1] == [0] * n and calls[2] == [0, 0] + [1] * (n - 2)


def test_a_shared_stage_is_explained_once():
    """Grad-CAM hooks the stages that run: a shared stage is listed once, and its gradient carries
    both members' parts, so the heatmap is the one their separate stages give."""
    from contentiqa.explain.gradcam import compute_gradcam

    ie, cr = tiny_members()
    cr.backbone.load_state_dict(ie.distortion.state_dict())
    ens = build_ensemble([ie, cr], input_size=64)
    mods = ens.gradcam_modules()
    assert len({id(m) for m in mods}) == len(mods) < len(ie.gradcam_modules()) + len(cr.gradcam_modules())
    assert not any(m is s for m in mods for s in cr.stages)
    x = ens.preprocess(photo(90, 70))[None]
    shared = compute_gradcam(ens, x, targets=("quality",))
    ens.shared_stages = lambda: {}  # each member through its own stages, as before sharing
    apart = compute_gradcam(ens, x, targets=("quality",))
    assert len(apart.level_cams["quality"]) > len(shared.level_cams["quality"])
    assert shared.cams["quality"].max() > 0
    np.testing.assert_allclose(shared.cams["quality"], apart.cams["quality"], rtol=1e-4, atol=1e-6)
