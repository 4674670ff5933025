"""IE-IQA: feature selection (§3.3), the frozen bilateral network (Eq. 2), fusion strategies,
intelligibility-task plumbing, preprocessing and checkpoints. Small inputs throughout."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from contentiqa.backbones.config import IMAGENET_MEAN, IMAGENET_STD, LITE_MEAN, LITE_STD
from contentiqa.models import IEIQA, IEIQAConfig, build_ie_iqa, create_model, list_models
from contentiqa.models.intelligibility import (
    IntelligibilityWeightsUnavailable,
    build_intelligibility,
    train_unrecognizability,
)
from contentiqa.models.registry import load_checkpoint, save_checkpoint
from contentiqa.models.selection import (
    contribution_scores,
    num_selected,
    select_features,
    select_top,
    sensitivity_scores,
)


# -- Algorithm 1, worked by hand -------------------------------------------------------------
# W (3 classes x 5 features), b, and two images f1, f2:
#   z1 = W f1 + b = [2, 0.8 - 3 - 2 + 0.3 + 1 + 6, 3] = [2, 3.1, 3]        -> i_max = 1
#   contrib1 = |W[1] * f1| = [0.8, 3.0, 2.0, 0.3, 1.0]; top 3 -> {1, 2, 4}
#   z2 = W f2 + b = [1, 0.4 + 0.3 + 0.8 + 0.05 - 3 + 6, 0.5] = [1, 4.55, 0.5] -> i_max = 1
#   contrib2 = |W[1] * f2| = [0.4, 0.3, 0.8, 0.05, 3.0]; top 3 by rank: 4, 2, 0 -> sorted {0, 2, 4}
# N_d = 5, k = 60 % -> N_s = int(5 * 0.6) = 3.
W = torch.tensor([
    [1.0, 0.0, 0.0, 0.0, 0.0],
    [0.4, 3.0, -4.0, 0.1, 10.0],
    [0.0, 0.0, 0.0, 1.0, 0.0],
])
B = torch.tensor([0.0, 6.0, 0.0])
F_HAND = torch.tensor([
    [2.0, -1.0, 0.5, 3.0, 0.1],
    [1.0, 0.1, -0.2, 0.5, -0.3],
])


def test_algorithm1_hand_worked_example():
    contrib, i_max = contribution_scores(F_HAND, W, B)
    assert i_max.tolist() == [1, 1]
    torch.testing.assert_close(contrib, torch.tensor([[0.8, 3.0, 2.0, 0.3, 1.0], [0.4, 0.3, 0.8, 0.05, 3.0]]))
    assert num_selected(5, 60) == 3
    sel = select_features(F_HAND, "contribution", ratio=60, weight=W, bias=B)
    assert sel.indices.tolist() == [[1, 2, 4], [0, 2, 4]]  # index order, not rank order
    torch.testing.assert_close(sel.features, torch.tensor([[-1.0, 0.5, 0.1], [1.0, -0.2, -0.3]]))
    assert sel.top_class.tolist() == [1, 1]


def test_algorithm1_top_class_follows_the_bias_and_exclusion():
    # With no bias, image 1's logits are [2, -2.9, 3]: i_max = 2, so only feature 3 contributes.
    contrib, i_max = contribution_scores(F_HAND[:1], W)
    assert i_max.tolist() == [2]
    torch.testing.assert_close(contrib, torch.tensor([[0.0, 0.0, 0.0, 3.0, 0.0]]))
    # Excluding class 2 (as a detector's background) falls back to the next best, class 0.
    _, i_max = contribution_scores(F_HAND[:1], W, exclude=(2,))
    assert i_max.tolist() == [0]


def test_sparse_variant_zeros_the_unselected_entries():
    sel = select_features(F_HAND, "contribution", ratio=60, sparse=True, weight=W, bias=B)
    assert sel.features.shape == (2, 5)
    torch.testing.assert_close(sel.features, torch.tensor([[0.0, -1.0, 0.5, 0.0, 0.1], [1.0, 0.0, -0.2, 0.0, -0.3]]))
    assert sel.indices.tolist() == [[1, 2, 4], [0, 2, 4]]


def test_selection_returns_indices_in_index_order():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(4, 50, generator=g)
    scores = torch.rand(4, 50, generator=g)
    selected, idx = select_top(f, scores, 10)
    assert torch.all(idx[:, 1:] > idx[:, :-1])
    for b in range(4):
        assert set(idx[b].tolist()) == set(scores[b].topk(10).indices.tolist())
        torch.testing.assert_close(selected[b], f[b, idx[b]])
    none = select_features(f, "none")
    assert none.indices.tolist() == [list(range(50))] * 4 and none.features is f


def test_tied_scores_keep_the_lowest_indices_in_pytorch_and_in_onnx(tmp_path):
    """Features a ReLU zeroed all score 0: PyTorch's topk and ONNX's TopK broke those ties their
    own ways, so an exported model kept other features than PyTorch on a flat frame."""
    import warnings

    import onnxruntime as ort

    scores = torch.zeros(3, 50)
    scores[0, [7, 20, 33]] = torch.tensor([1.0, 2.0, 3.0])  # three above the cut, two of the 47 zeros
    scores[1] = torch.rand(50, generator=torch.Generator().manual_seed(1))  # no ties
    scores[2, [1, 9]] = 2.0
    scores[2, [4, 5, 6, 40]] = 1.0  # four tie at the cut for three places

    class Select(nn.Module):
        def forward(self, s):
            return select_top(s, s, 5)[1]

    want = [[0, 1, 7, 20, 33], sorted(scores[1].topk(5).indices.tolist()), [1, 4, 5, 6, 9]]
    assert Select()(scores).tolist() == want
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Select(), (scores,), tmp_path / "s.onnx", dynamo=False, opset_version=17,
                          input_names=["s"], output_names=["i"], dynamic_axes={"s": {0: "b"}})
    got = ort.InferenceSession(str(tmp_path / "s.onnx")).run(None, {"s": scores.numpy()})[0]
    assert got.tolist() == want


def test_num_selected_matches_the_papers_ratios():
    assert [num_selected(1280, k) for k in (1, 5, 20, 50)] == [12, 64, 256, 640]
    assert num_selected(5, 1) == 1  # never empty
    with pytest.raises(ValueError):
        num_selected(10, 0)


def _tiny_head(out: int = 1) -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, out)).double()


def test_sensitivity_equals_independent_jacobian_and_finite_differences():
    head = _tiny_head(1)
    f = torch.randn(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    scores, i_max = sensitivity_scores(f, head)
    assert i_max is None
    for b in range(3):
        jac = torch.func.jacrev(lambda v: head(v[None])[0, 0])(f[b])
        torch.testing.assert_close(scores[b], jac.abs())
        eps = 1e-6
        fd = torch.stack([
            (head((f[b] + eps * e)[None])[0, 0] - head((f[b] - eps * e)[None])[0, 0]) / (2 * eps)
            for e in torch.eye(6, dtype=torch.float64)
        ])
        torch.testing.assert_close(scores[b], fd.abs(), atol=1e-6, rtol=1e-5)
    # Top N_s in index order.
    sel = select_features(f, "sensitivity", ratio=50, head=head)
    for b in range(3):
        assert sel.indices[b].tolist() == sorted(scores[b].topk(3).indices.tolist())


def test_sensitivity_of_a_multi_output_head_uses_the_top1_output_even_in_inference_mode():
    head = _tiny_head(4)
    f = torch.randn(2, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        scores, i_max = sensitivity_scores(f, head)
    for b in range(2):
        k = int(head(f[b:b + 1]).argmax())
        assert int(i_max[b]) == k
        jac = torch.func.jacrev(lambda v: head(v[None])[0, k])(f[b])
        torch.testing.assert_close(scores[b], jac.abs())


# -- the bilateral network -------------------------------------------------------------------
@pytest.fixture(scope="module")
def recognition_branch():
    """The real offline ImageNet EfficientNet-Lite0, shared by the models below."""
    return build_intelligibility("recognition")


def _model(branch, **kw) -> IEIQA:
    kw.setdefault("distortion_pretrained", False)
    kw.setdefault("hidden", (32, 16))
    kw.setdefault("dropout", 0.0)
    return build_ie_iqa(intelligibility_module=branch, **kw)


def _batch(n: int = 4, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.rand(n, generator=g)


def test_intelligibility_branch_is_frozen_and_stays_in_eval_mode(recognition_branch):
    torch.manual_seed(0)
    model = _model(recognition_branch)
    model.train()
    assert model.training and model.distortion.training
    assert not any(m.training for m in model.intelligibility.modules())
    assert not any(p.requires_grad for p in model.intelligibility.parameters())
    before_intel = copy.deepcopy(model.intelligibility.state_dict())
    before_dist = {k: v.clone() for k, v in model.distortion.state_dict().items()}
    before_fc = {k: v.clone() for k, v in model.fc.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x, y = _batch()
    loss = model.loss(model(x), y)
    loss.backward()
    assert all(p.grad is None for p in model.intelligibility.parameters())
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and bool(p.grad.abs().sum() > 0), f"{name} got no gradient"
    opt.step()
    after = model.intelligibility.state_dict()
    assert all(torch.equal(before_intel[k], after[k]) for k in before_intel)  # weights and BN statistics
    assert any(not torch.equal(before_dist[k], v) for k, v in model.distortion.state_dict().items())
    assert all(not torch.equal(before_fc[k], v) for k, v in model.fc.state_dict().items())


def test_parameter_groups_split_head_and_distortion(recognition_branch):
    model = _model(recognition_branch, fusion="add", fusion_layer=2)
    head = {id(p) for p in model.head_parameters()}
    dist = {id(p) for p in model.distortion_parameters()}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert head | dist == trainable and not head & dist
    assert {id(p) for p in model.project.parameters()} <= head


@pytest.mark.parametrize("fusion", ["concat", "add", "multiply"])
@pytest.mark.parametrize("layer", [1, 2, 3])
def test_each_fusion_strategy_and_layer_trains(recognition_branch, fusion, layer):
    torch.manual_seed(0)
    model = _model(recognition_branch, fusion=fusion, fusion_layer=layer)
    x, y = _batch(4, 64, seed=1)
    model.eval()
    cached, idx = model.intelligibility_features(x)
    assert cached.shape == (4, 64) and idx.shape == (4, 64)  # recognition: 5 % of 1280
    with torch.no_grad():
        torch.testing.assert_close(model(x)["score"], model(x, cached_intelligibility=(cached, idx))["score"])
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for step in range(20):
        loss = model.loss(model(x, cached_intelligibility=cached), y)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            for name, p in model.named_parameters():
                if p.requires_grad:
                    assert p.grad is not None and bool(p.grad.abs().sum() > 0), f"{name} got no gradient"
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses


G = 112 + 192 + 320 + 1280  # pooled lite0 stages -4..-1 (the default distortion_levels)


def test_distortion_levels_widths():
    m = create_model("ie-iqa-distortion", pretrained=False, distortion_pretrained=False, hidden=(8, 4))
    assert m.distortion_dim == G
    m = create_model("ie-iqa-distortion", pretrained=False, distortion_pretrained=False, hidden=(8, 4), distortion_levels=None)
    assert m.distortion_dim == 1280  # the paper's last map only
    x = torch.randn(2, 3, 64, 64)
    g = m.distortion_features(x)
    assert torch.allclose(g, m.distortion.forward_head(m.distortion.forward_features(x), pre_logits=True), atol=1e-6)


def test_fusion_widths(recognition_branch):
    m = _model(recognition_branch, fusion="concat", fusion_layer=2)
    assert [fc.in_features for fc in m.fc] == [G, 32 + 64, 16]
    m = _model(recognition_branch, fusion="multiply", fusion_layer=3)
    assert [fc.in_features for fc in m.fc] == [G, 32, 16]
    assert (m.project.in_features, m.project.out_features) == (64, 16)
    m = _model(recognition_branch, sparse=True, ratio=20)
    assert m.intelligibility_dim == 1280 and m.fc[0].in_features == G + 1280
    m = _model(recognition_branch, selection="none")
    assert m.intelligibility_dim == 1280


def test_sparse_model_features_match_selection(recognition_branch):
    model = _model(recognition_branch, sparse=True, ratio=1).eval()
    x, _ = _batch(2, 64)
    f_sparse, idx = model.intelligibility_features(x)
    with torch.no_grad():
        f = recognition_branch.extract(model.intelligibility_input(x))
    assert idx.shape == (2, 12)
    mask = torch.zeros_like(f, dtype=torch.bool).scatter_(1, idx, True)
    torch.testing.assert_close(f_sparse[mask], f[mask])
    assert bool((f_sparse[~mask] == 0).all())


def test_input_is_converted_to_the_branch_normalisation():
    branch = build_intelligibility("scene", pretrained=False)
    model = build_ie_iqa(intelligibility_module=branch, intelligibility_task="scene", distortion_pretrained=False, hidden=(8, 4))
    x01 = torch.rand(1, 3, 16, 16)
    lite = (x01 - torch.tensor(LITE_MEAN).view(1, 3, 1, 1)) / torch.tensor(LITE_STD).view(1, 3, 1, 1)
    imnet = (x01 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(model.intelligibility_input(lite), imnet)


def test_preprocess_and_train_transform():
    # the paper's sizes (224-px input, 244-px training resize), given explicitly: the registered
    # default is the shipped model's 384 px
    model = create_model("ie-iqa-distortion", pretrained=False, distortion_pretrained=False, hidden=(8, 4),
                         input_size=224, train_resize=244)
    assert model.native_resolution is False and model.intelligibility is None
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 90, 3), dtype=np.uint8))
    x = model.preprocess(img)
    assert x.shape == (3, 224, 224)
    ref = np.asarray(img.resize((224, 224), Image.BILINEAR), dtype=np.float32) / 255.0
    torch.testing.assert_close(x, (torch.from_numpy(ref).permute(2, 0, 1) - LITE_MEAN[0]) / LITE_STD[0])
    torch.manual_seed(0)
    views = [model.train_transform(img) for _ in range(4)]
    assert all(v.shape == (3, 224, 224) for v in views)
    assert any(not torch.equal(views[0], v) for v in views[1:])  # random crops / flips
    big = np.asarray(img.resize((244, 244), Image.BILINEAR), dtype=np.float32) / 255.0
    big = (torch.from_numpy(big).permute(2, 0, 1) - LITE_MEAN[0]) / LITE_STD[0]
    v = views[0]
    hits = [
        (t, l, fl) for t in range(21) for l in range(21) for fl in (False, True)
        if torch.allclose((big.flip(-1) if fl else big)[:, t:t + 224, l:l + 224], v, atol=1e-5)
    ]
    assert hits, "a training view is a 224 crop (possibly mirrored) of the 244 x 244 resize"


def test_distortion_only_baseline():
    model = create_model("ie-iqa-distortion", pretrained=False, distortion_pretrained=False, hidden=(8, 4))
    assert model.model_name == "ie-iqa-distortion" and model.cfg.strategy == "none"
    assert [fc.in_features for fc in model.fc] == [G, 8, 4]
    out = model(torch.randn(2, 3, 32, 32))
    assert out["score"].shape == (2,)
    with pytest.raises(RuntimeError):
        model.intelligibility_features(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError):
        create_model("ie-iqa-distortion", pretrained=False, intelligibility_task="recognition")
    assert {"ie-iqa", "ie-iqa-distortion"} <= set(list_models())


def test_gradcam_modules_end_with_the_last_feature_map():
    torch.manual_seed(0)  # a tiny random head: some seeds leave every ReLU of FC2 dead (no gradient)
    model = create_model("ie-iqa-distortion", pretrained=False, distortion_pretrained=False, hidden=(8, 4))
    seen = {}
    mods = model.gradcam_modules()
    assert len(mods) == len(model.levels)  # every pooled level of the distortion CNN
    mod = mods[-1]
    h1 = mod.register_forward_hook(lambda m, i, o: seen.__setitem__("act", o))
    h2 = mod.register_full_backward_hook(lambda m, gi, go: seen.__setitem__("grad", go[0]))
    x = torch.randn(1, 3, 64, 64)
    model(x)["score"].sum().backward()
    h1.remove()
    h2.remove()
    with torch.no_grad():
        ref = model.distortion.forward_features(x)
    assert seen["act"].shape == ref.shape == (1, 1280, 2, 2)
    torch.testing.assert_close(seen["act"].detach(), ref)
    assert seen["grad"].shape == ref.shape and bool(seen["grad"].abs().sum() > 0)


def test_config_validation_and_to_dict():
    cfg = IEIQAConfig(intelligibility_task="detection")
    assert cfg.strategy == "contribution" and cfg.selection_ratio == 20.0
    assert IEIQAConfig(intelligibility_task="segmentation").strategy == "sensitivity"
    assert IEIQAConfig(intelligibility_task="unrecognizability").selection_ratio == 50.0
    assert IEIQAConfig(intelligibility_task="none").intelligibility_task is None
    json.dumps(IEIQAConfig(intelligibility_options={"top_k": 5}).to_dict())
    for bad in ({"fusion": "max"}, {"fusion_layer": 4}, {"selection": "random"}, {"intelligibility_task": "ocr"}, {"ratio": 0}):
        with pytest.raises(ValueError):
            IEIQAConfig(**bad)
    with pytest.raises(ValueError, match="sensitivity"):
        build_ie_iqa(intelligibility_task="unrecognizability", intelligibility_pretrained=False,
                     selection="contribution", distortion_pretrained=False)


# -- the other intelligibility tasks (random-initialised networks) ------------------------------
@pytest.mark.parametrize(
    "task,n_d,n_s",
    [("scene", 512, 25), ("detection", 1024, 204), ("segmentation", 2048, 1024), ("unrecognizability", 1280, 640)],
)
def test_task_plumbing_with_random_networks(task, n_d, n_s):
    torch.manual_seed(0)
    model = build_ie_iqa(
        intelligibility_task=task, intelligibility_pretrained=False, distortion_pretrained=False,
        hidden=(16, 8), intelligibility_options={"proposals": 20, "top_k": 4} if task == "detection" else {},
    )
    assert model.intelligibility.feature_dim == n_d and model.intelligibility_dim == n_s
    assert not any(p.requires_grad for p in model.intelligibility.parameters())
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        f = model.intelligibility.extract(model.intelligibility_input(x))
    assert f.shape == (2, n_d) and bool(torch.isfinite(f).all())
    with torch.inference_mode():  # the sensitivity strategies must work under predict()'s mode
        sel, idx = model.intelligibility_features(x)
        score = model(x)["score"]
    assert sel.shape == (2, n_s) and idx.shape == (2, n_s)
    assert bool((idx[:, 1:] > idx[:, :-1]).all())
    torch.testing.assert_close(sel, f.gather(1, idx))
    assert score.shape == (2,)
    model.train()
    assert not model.intelligibility.training
    model.loss(model(x), torch.rand(2)).backward()
    assert all(p.grad is None for p in model.intelligibility.parameters())


@pytest.mark.parametrize("task", ["scene", "detection", "segmentation", "unrecognizability"])
def test_tasks_without_weights_raise_a_clear_error(task, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty weights cache
    with pytest.raises(IntelligibilityWeightsUnavailable, match="intelligibility_checkpoint="):
        build_ie_iqa(intelligibility_task=task, distortion_pretrained=False)


def test_scene_checkpoint_with_dataparallel_prefixes(tmp_path):
    import torchvision

    torch.manual_seed(5)
    ref = torchvision.models.resnet18(weights=None, num_classes=365)
    path = tmp_path / "resnet18_places365.pth.tar"
    torch.save({"epoch": 90, "arch": "resnet18", "state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, path)
    branch = build_intelligibility("scene", checkpoint=path)
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in branch.net.state_dict().items())
    ref.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(branch.linear_head()(branch.extract(x)), ref(x))


def test_unrecognizability_training_and_checkpoint(tmp_path, make_image):
    rows = ["image,unrecognizability"]
    for i in range(4):
        make_image(tmp_path / "img" / f"{i}.png", 40, 48, seed=i)
        rows.append(f"img/{i}.png,{i / 4}")
    (tmp_path / "u.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "unrec.pt"
    predictor = train_unrecognizability(
        tmp_path / "u.csv", epochs=2, batch_size=2, out=out, pretrained=False, hidden=(16, 8),
        image_size=32, resize=36, progress=False,
    )
    assert out.is_file() and len(predictor.train_history) == 2
    model = build_ie_iqa(
        intelligibility_task="unrecognizability", intelligibility_checkpoint=str(out),
        distortion_pretrained=False, hidden=(8, 4), ratio=5,
    ).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        f = predictor.features(x)
        torch.testing.assert_close(model.intelligibility.extract(model.intelligibility_input(x)), f)
        torch.testing.assert_close(model.intelligibility.head(f)[:, 0], predictor(x))
    sel, idx = model.intelligibility_features(x)
    assert sel.shape == (2, 64)


def test_a_saved_model_loads_without_the_files_its_intelligibility_branch_came_from(tmp_path, make_image, monkeypatch):
    """The saved model holds the branch's tensors: the Places365 file, the predictor's file or the
    torch hub cache it was built from may be gone (another machine) and it still loads, alike."""
    import torchvision

    torch.manual_seed(5)
    places = tmp_path / "resnet18_places365.pth.tar"
    torch.save({"state_dict": torchvision.models.resnet18(weights=None, num_classes=365).state_dict()}, places)
    make_image(tmp_path / "img" / "0.png", 40, 48, seed=0)
    make_image(tmp_path / "img" / "1.png", 40, 48, seed=1)
    (tmp_path / "u.csv").write_text("image,unrecognizability\nimg/0.png,0.2\nimg/1.png,0.7\n")
    unrec = tmp_path / "unrec.pt"
    train_unrecognizability(tmp_path / "u.csv", epochs=1, batch_size=2, out=unrec, pretrained=False, hidden=(16, 8),
                            image_size=32, resize=36, progress=False)
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    (hub / "checkpoints" / places.name).write_bytes(places.read_bytes())
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    x = torch.randn(2, 3, 32, 32)
    saved = {}
    for name, kw in {"scene file": {"intelligibility_task": "scene", "intelligibility_checkpoint": str(places)},
                     "scene hub": {"intelligibility_task": "scene"},
                     "unrecognizability": {"intelligibility_task": "unrecognizability",
                                           "intelligibility_checkpoint": str(unrec)}}.items():
        model = build_ie_iqa(distortion_pretrained=False, hidden=(8, 4), ratio=5, **kw).eval()
        with torch.no_grad():
            saved[name] = (save_checkpoint(model, tmp_path / f"{name}.pt"), model(x)["score"])
        if name == "scene hub":  # a file that leaves the hub's tensors out needs them: a clear error without
            slim = save_checkpoint(model, tmp_path / "slim.pt", omit_pretrained_backbone=True)
    places.rename(tmp_path / "moved.pth.tar")
    unrec.rename(tmp_path / "moved.pt")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))
    for name, (path, want) in saved.items():
        with torch.no_grad():
            torch.testing.assert_close(load_checkpoint(path).eval()(x)["score"], want, msg=name)
    with pytest.raises(ValueError, match=r"slim\.pt: cannot rebuild its model: .*Places365"):
        load_checkpoint(slim)


@pytest.mark.parametrize("args", [["--set", "model.intelligibility_task=scene"],
                                  ["--set", "model.intelligibility_task=segmentation",
                                   "--set", "model.intelligibility_checkpoint=/nonexistent/deeplabv3.pth"]])
def test_train_without_a_branchs_weights_is_a_usage_error_not_a_traceback(tmp_path, make_image, monkeypatch, capsys,
                                                                            args):
    from contentiqa.cli.main import main

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))
    rows = [f"img/{i}.png,{10 * i}" for i in range(12)]
    for i in range(12):
        make_image(tmp_path / "img" / f"{i}.png", 40, 48, seed=i)
    (tmp_path / "d.csv").write_text("# mos_range: 0 110\nimage,mos\n" + "\n".join(rows) + "\n")
    assert main(["train", "--model", "ie-iqa", "--data", str(tmp_path / "d.csv"), "--out", str(tmp_path / "run"),
                 "--epochs", "1", "--quiet", "--set", "model.distortion_pretrained=false", "--set", "calibrate=false",
                 *args]) == 2
    err = capsys.readouterr().err
    assert "contentiqa train: error: cannot build ie-iqa" in err and "Traceback" not in err
    assert ("Places365" in err) if "scene" in args[1] else ("torchvision's COCO weights" in err)


def test_a_slim_checkpoint_refuses_a_branch_file_changed_since_it_was_saved(tmp_path):
    """omit_pretrained_backbone left out the tensors the config's intelligibility file gave, and the
    model loaded whatever that path held later: other weights, other scores, no word."""
    import torchvision

    places = tmp_path / "resnet18_places365.pth.tar"
    torch.manual_seed(5)
    torch.save({"state_dict": torchvision.models.resnet18(weights=None, num_classes=365).state_dict()}, places)
    kept = places.read_bytes()
    model = build_ie_iqa(distortion_pretrained=False, hidden=(8, 4), ratio=5, intelligibility_task="scene",
                         intelligibility_checkpoint=str(places)).eval()
    slim = save_checkpoint(model, tmp_path / "slim.pt", omit_pretrained_backbone=True)
    assert any(k.startswith("intelligibility.") for k in torch.load(slim, weights_only=True)["omitted_from_pretrained"])
    torch.manual_seed(6)  # the file retrained in place
    torch.save({"state_dict": torchvision.models.resnet18(weights=None, num_classes=365).state_dict()}, places)
    with pytest.raises(ValueError, match=r"slim\.pt: its intelligibility_checkpoint tensors were left out as those of "
                                         r".*resnet18_places365\.pth\.tar, and that file has changed since"):
        load_checkpoint(slim)
    places.write_bytes(kept)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(load_checkpoint(slim).eval()(x)["score"], model(x)["score"], rtol=0, atol=0)


# -- checkpoints -------------------------------------------------------------------------------
def test_checkpoint_round_trip_omits_pretrained_weights(tmp_path):
    torch.manual_seed(0)
    model = create_model("ie-iqa", pretrained=False, hidden=(16, 8), fusion="add", fusion_layer=2)
    with torch.no_grad():  # a "trained" head; both backbones stay as the pip package ships them
        for p in model.head_parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = save_checkpoint(model, tmp_path / "ie.pt", omit_pretrained_backbone=True)
    payload = torch.load(path, weights_only=True)  # checkpoints are plain data
    assert any(k.startswith("intelligibility.") for k in payload["omitted_from_pretrained"])
    assert any(k.startswith("distortion.") for k in payload["omitted_from_pretrained"])
    assert all(k.startswith(("fc.", "project.")) for k in payload["state_dict"])
    loaded = load_checkpoint(path)
    assert isinstance(loaded, IEIQA) and loaded.model_name == "ie-iqa"
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)["score"], model(x)["score"], rtol=0, atol=0)


def test_checkpoint_round_trip_from_scratch_distortion(tmp_path):
    torch.manual_seed(0)
    model = create_model("ie-iqa-distortion", pretrained=False, distortion_pretrained=False, hidden=(16, 8))
    path = save_checkpoint(model, tmp_path / "d.pt", omit_pretrained_backbone=True)
    loaded = load_checkpoint(path)
    assert loaded.model_name == "ie-iqa-distortion" and loaded.intelligibility is None
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)["score"], model(x)["score"], rtol=0, atol=0)


@pytest.mark.parametrize("weights", ["detection", "segmentation"])
def test_a_file_planted_in_the_torch_hub_cache_runs_no_code(weights, tmp_path, monkeypatch):
    """torchvision's reader unpickled whatever a shared TORCH_HOME held under its weights' name:
    the code ran before the 'does not fit' error. It is read as every checkpoint is, tensors only."""
    import os
    from urllib.parse import urlparse

    from torchvision.models import detection, segmentation

    from contentiqa.models.intelligibility import _torchvision_state

    enum = (detection.FasterRCNN_ResNet50_FPN_Weights.COCO_V1 if weights == "detection"
            else segmentation.DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1)
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"x": Payload()}, hub / "checkpoints" / os.path.basename(urlparse(enum.url).path))
    with pytest.raises(ValueError, match="Nothing in it was executed"):
        _torchvision_state(enum, False, "the branch", "file.pth")
    assert not marker.exists()
