"""Tests that pin the architecture: the IQA-CR building blocks, the IQAModel contract of every
registered model, and the configurations that are refused rather than silently changed."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from contentiqa.models import IQACRConfig, IQAModel, build_ensemble, create_model, list_models
from contentiqa.models.iqa_cr import AxialAttention, ChannelTokenAttention, SpatialChannelLayer
from contentiqa.models.layers import MultiHeadAttention, adaptive_avg_pool2d_matmul
from contentiqa.models.registry import model_entry

TINY_CR = dict(pretrained=False, backbone_pretrained=False, dim=16, heads=2, mlp_dim=32, grid=(2, 2), depth=1)
TINY_IE = dict(pretrained=False, distortion_pretrained=False, hidden=(8, 4), input_size=64, train_resize=72)


def tiny_registered(name: str, seed: int = 0) -> IQAModel:
    """A small random model of any registered name (IE-IQA with a random recognition branch; an
    ensemble of tiny members: its own entry's, else ie-iqa-distortion and iqa-cr)."""
    torch.manual_seed(seed)
    if not model_entry(name).trainable:
        if name == "ensemble":
            return build_ensemble([tiny_registered("ie-iqa-distortion", seed), tiny_registered("iqa-cr", seed)])
        members = name.split("+")
        return create_model(name, pretrained=False, member_args={
            m: ({k: v for k, v in (TINY_IE if m.startswith("ie-iqa") else TINY_CR).items() if k != "pretrained"}
                | ({"intelligibility_pretrained": False} if m == "ie-iqa" else {})) for m in members})
    if name.startswith("ie-iqa"):
        extra = {"intelligibility_pretrained": False} if name == "ie-iqa" else {}
        return create_model(name, **TINY_IE, **extra)
    return create_model(name, **TINY_CR)


MODELS = list_models()
TRAINABLE = [n for n in MODELS if model_entry(n).trainable]


# -- adaptive_avg_pool2d_matmul ------------------------------------------------------------------
@pytest.mark.parametrize("hw,out", [((8, 8), (2, 2)), ((8, 12), (4, 3)), ((7, 5), (3, 2)), ((13, 17), (4, 6)),
                                    ((3, 3), (5, 4)), ((1, 9), (1, 4))])
def test_matmul_pooling_equals_adaptive_avg_pool2d(hw, out):
    torch.manual_seed(0)
    x = torch.randn(2, 3, *hw, dtype=torch.float64, requires_grad=True)
    ours = adaptive_avg_pool2d_matmul(x, out)
    ref = F.adaptive_avg_pool2d(x, out)
    assert ours.shape == ref.shape == (2, 3, *out)
    assert torch.allclose(ours, ref, atol=1e-12)
    g = torch.randn_like(ref)
    (ga,) = torch.autograd.grad(ours, x, g)
    (gb,) = torch.autograd.grad(F.adaptive_avg_pool2d(x, out), x, g)
    assert torch.allclose(ga, gb, atol=1e-12)


# -- ChannelTokenAttention -----------------------------------------------------------------------
def test_channel_token_attention_attends_among_channels():
    torch.manual_seed(0)
    s, d, heads = 6, 5, 3
    att = ChannelTokenAttention(num_positions=s, heads=heads, dropout=0.0).eval()
    att.attn.keep_attention = True
    z = torch.randn(2, s, d)
    y = att(z)
    assert y.shape == (2, s, d)
    assert att.attn.last_attention.shape == (2, heads, d, d)  # D channel tokens, each of S values
    # Channels are tokens without positions: permuting them permutes the output the same way.
    perm = torch.tensor([3, 0, 4, 1, 2])
    assert torch.allclose(att(z[:, :, perm]), y[:, :, perm], atol=1e-6)


def test_channel_heads_must_divide_the_positions():
    with pytest.raises(ValueError, match="not divisible"):
        ChannelTokenAttention(num_positions=6, heads=4, dropout=0.0)
    with pytest.raises(ValueError, match="not divisible"):
        AxialAttention(axial_dim=6, heads=4, dropout=0.0, axis="channel")


# -- SpatialChannelLayer -------------------------------------------------------------------------
_LAYER_KW = dict(backbone_pretrained=False, variant="full", dim=8, heads=2, mlp_dim=16, grid=(2, 3), channel_heads=3,
                 axial_dim=4, dropout=0.0)


def _layer(variant: str, channel_attention: str = "tokens") -> SpatialChannelLayer:
    cfg = IQACRConfig(**{**_LAYER_KW, "variant": variant, "channel_attention": channel_attention})
    torch.manual_seed(0)
    return SpatialChannelLayer(cfg, num_positions=6).eval()


@pytest.mark.parametrize("variant,has_cr,has_qa", [("full", True, True), ("q", False, True), ("c", True, False)])
def test_spatial_channel_layer_branches_per_variant(variant, has_cr, has_qa):
    layer = _layer(variant)
    assert hasattr(layer, "mlp_cr") == has_cr and hasattr(layer, "mlp_qa") == has_qa
    assert hasattr(layer, "channel") == has_qa  # channel attention belongs to the quality branch only
    z = torch.randn(2, 6, 8)
    assert layer(z).shape == (2, 6, 8)


def test_spatial_attention_is_computed_once_and_shared_by_both_branches():
    """Z' = Z_CR + Z_QA with one spatial encoding Z_sp feeding both (the module docstring's
    equations, written out)."""
    layer = _layer("full")
    calls = []
    h = layer.spatial.register_forward_hook(lambda m, i, o: calls.append(o))
    z = torch.randn(2, 6, 8)
    with torch.no_grad():
        out = layer(z)
    h.remove()
    assert len(calls) == 1
    with torch.no_grad():
        z_sp = z + layer.spatial(layer.norm_sp(z))
        z_cr = z_sp + layer.mlp_cr(layer.norm_cr(z_sp))
        z_ch = z_sp + layer.channel(layer.norm_ch(z_sp))
        z_qa = z_ch + layer.mlp_qa(layer.norm_qa(z_ch))
    assert torch.allclose(out, z_cr + z_qa, atol=1e-6)


@pytest.mark.parametrize("merge", ["sum", "shared-once", "mean"])
def test_layer_merge_of_the_two_branches(merge):
    """sum = Z_CR + Z_QA (Z_sp twice), shared-once = one copy of Z_sp plus both updates,
    mean = half the sum; all three share every parameter, so one state dict serves each."""
    ref = _layer("full")
    layer = SpatialChannelLayer(IQACRConfig(**{**_LAYER_KW, "merge": merge}), num_positions=6).eval()
    layer.load_state_dict(ref.state_dict())
    z = torch.randn(2, 6, 8)
    with torch.no_grad():
        z_sp = z + ref.spatial(ref.norm_sp(z))
        total = ref(z)
        expected = {"sum": total, "shared-once": total - z_sp, "mean": total / 2}[merge]
        torch.testing.assert_close(layer(z), expected)


def test_literal_sum_doubles_the_residual_stream_and_shared_once_does_not():
    """The reason for the ablation (configs/iqa_cr_merge.yaml): with Z_sp counted twice the
    stream's norm grows about 2x per layer."""
    torch.manual_seed(0)
    z = torch.randn(4, 6, 8)
    growth = {}
    for merge in ("sum", "shared-once"):
        layer = SpatialChannelLayer(IQACRConfig(**{**_LAYER_KW, "merge": merge}), num_positions=6).eval()
        with torch.no_grad():
            growth[merge] = float(layer(z).norm() / z.norm())
    assert growth["sum"] > 1.6 and growth["shared-once"] < 1.4


def test_merge_needs_two_branches():
    with pytest.raises(ValueError, match="two branches"):
        IQACRConfig(variant="q", merge="mean")
    with pytest.raises(ValueError, match="merge must be one of"):
        IQACRConfig(merge="concat")


def test_attention_shapes_of_a_layer():
    layer = _layer("full")
    layer.spatial.keep_attention = True
    layer.channel.attn.keep_attention = True
    layer(torch.randn(2, 6, 8))
    assert layer.spatial.last_attention.shape == (2, 2, 6, 6)  # S x S per head
    assert layer.channel.attn.last_attention.shape == (2, 3, 8, 8)  # D x D per channel head
    axial = _layer("full", "axial")
    axial.spatial.attn.keep_attention = True
    axial(torch.randn(2, 6, 8))
    assert axial.spatial.attn.last_attention.shape == (2, 8, 2, 6, 6)  # per channel: S x S
    assert axial.attention_modules() == [axial.spatial.attn]


# -- the contract, for every registered model ------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_outputs_match_the_declared_contract(name):
    model = tiny_registered(name).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
    assert tuple(out) == model.output_names
    assert ("score" in out) == model.predicts_score and ("logits" in out) == model.has_content_head
    assert model.trainable == model_entry(name).trainable  # the registry answers without building it
    if model.predicts_score:
        assert out["score"].shape == (2,)
    if model.has_content_head:
        assert out["logits"].shape == (2, len(model.categories))


@pytest.mark.parametrize("name", MODELS)
def test_the_scoring_copy_computes_what_the_model_does(name):
    """The PyTorch scorer's copy (BatchNorm folded into the convolutions, channels-last weights;
    an ensemble's shared stages run once) gives the model's own outputs."""
    from contentiqa.inference.torch_runtime import scoring_copy

    model = tiny_registered(name).eval()
    with torch.no_grad():
        for m in model.modules():  # statistics far from (0, 1), so a norm lost or applied twice shows
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)
        x = torch.randn(2, 3, 64, 64)
        ref = model(x)
        run = scoring_copy(model, channels_last=True)
        out = run(x.contiguous(memory_format=torch.channels_last))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in run.modules())
    assert tuple(out) == tuple(ref)
    for k in ref:
        torch.testing.assert_close(out[k], ref[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", TRAINABLE)
def test_parameter_groups_cover_every_trainable_parameter_once(name):
    model = tiny_registered(name)
    groups = model.parameter_groups()
    assert set(groups) == {"head", "backbone"}
    ids = [id(p) for g in groups.values() for p in g]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    bb = {id(p) for p in model.backbone_module().parameters()}
    assert all(id(p) in bb for p in groups["backbone"]) and not any(id(p) in bb for p in groups["head"])


@pytest.mark.parametrize("name", TRAINABLE)
def test_gradient_reaches_every_trainable_parameter(name):
    model = tiny_registered(name).train()
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    loss = sum((v.float() ** 2).sum() for v in out.values())
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not missing, f"{name}: no gradient reaches {missing[:8]}"
    # and nothing frozen gets one
    leaked = [n for n, p in model.named_parameters() if not p.requires_grad and p.grad is not None]
    assert not leaked


@pytest.mark.parametrize("name", TRAINABLE)
def test_stage_hooks_are_consistent(name):
    model = tiny_registered(name)
    assert model.supports_stage_cache
    assert model.backbone_from_seed  # tiny models: random backbones (no shared encodings across seeds)
    assert 0 < model.feature_end <= len(model.stages) and list(model.levels) == sorted(model.levels)
    assert model.levels[-1] + 1 == model.feature_end
    mods = model.gradcam_modules()
    assert mods and all(isinstance(m, torch.nn.Module) for m in mods) and len(mods) == len(model.levels)
    frozen = model.frozen_modules(2)
    assert frozen[:2] == list(model.stages[:2])
    assert all(isinstance(m, MultiHeadAttention) for m in model.attention_layers())


def test_base_model_declares_hooks_it_does_not_implement():
    class Bare(IQAModel):
        pass

    m = Bare()
    assert m.predicts_score and m.output_names == ("score",) and not m.supports_stage_cache
    assert m.attention_layers() == [] and m.token_grid is None and m.onnx_unsupported_reason() is None
    assert m.trained_stages(0) == "everything (nothing cached)"  # not "head only": it has no stages to freeze
    with pytest.raises(NotImplementedError):
        m.cache_encode(torch.zeros(1, 3, 8, 8), 1)
    with pytest.raises(NotImplementedError, match="gradcam_modules"):
        m.gradcam_modules()


# -- configurations refused rather than silently changed -------------------------------------------
def test_num_categories_must_agree_with_the_categories():
    with pytest.raises(ValueError, match="num_categories=5 but 10 categories"):
        IQACRConfig(num_categories=5)
    assert IQACRConfig().num_categories == 10
    assert IQACRConfig(categories=("a", "b", "c")).num_categories == 3
    assert IQACRConfig(categories=("a", "b"), num_categories=2).num_categories == 2
    assert IQACRConfig(variant="q", num_categories=3).num_categories == 3  # no content head: not used


@pytest.mark.parametrize("kwargs,match", [
    (dict(dim=10, heads=4), "dim=10 is not divisible by heads=4"),
    (dict(grid=(3, 3), channel_heads=4), "channel_heads"),
    (dict(channel_attention="axial", axial_dim=6, heads=4, dim=8), "axial_dim=6"),
])
def test_head_counts_that_do_not_divide_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        IQACRConfig(**kwargs)


def test_channel_heads_are_irrelevant_without_a_channel_branch():
    IQACRConfig(variant="c", grid=(3, 3), channel_heads=4)
    IQACRConfig(variant="mtl-transformer", grid=(3, 3), channel_heads=4)


def test_generic_code_uses_the_contract_not_model_internals():
    """No hasattr/getattr probes of a model and no variant checks outside contentiqa.models:
    what generic code needs from a model is declared on IQAModel."""
    import re
    from pathlib import Path

    import contentiqa

    root = Path(contentiqa.__file__).parent
    probe = re.compile(r"\b(hasattr|getattr)\(\s*(self\.)?(model|m|loaded\.model)\b|variant\s*==|\.cfg\.variant")
    found = []
    for pkg in ("training", "explain", "inference", "cli", "experiments", "serve", "reporting"):
        for f in sorted((root / pkg).rglob("*.py")):
            for i, line in enumerate(f.read_text().splitlines(), 1):
                if probe.search(line):
                    found.append(f"{f.relative_to(root)}:{i}: {line.strip()}")
    assert not found, "\n".join(found)


# The packages from the bottom up: each may import those below it, never those above (a lazy
# import inside a function counts too). One documented exception: ``IQAModel.predict`` reaches
# up to the scoring layer so that a model scores through the engine ``contentiqa score`` runs.
LAYERS = ("utils", "metrics", "backbones", "data", "models", "inference", "analysis", "training",
          "experiments", "explain", "reporting", "serve", "cli")
UPWARD_IMPORTS_ALLOWED = {("models/base.py", "inference")}


def _package_imports(path, root):
    """(line, imported contentiqa package) for every import in ``path``, relative ones resolved."""
    import ast

    rel = path.relative_to(root)
    here = ["contentiqa", *rel.parent.parts]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                names = [".".join(base + ([node.module] if node.module else []))]
                if not node.module:  # ``from .. import x``: x may itself be a package
                    names = [f"{names[0]}.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "contentiqa" and len(parts) > 1 and parts[1] in LAYERS:
                yield node.lineno, parts[1]


def test_lower_layers_never_import_higher_ones():
    from pathlib import Path

    import contentiqa

    root = Path(contentiqa.__file__).parent
    packages = {p.name for p in root.iterdir() if (p / "__init__.py").exists()} - {"weights"}
    assert packages == set(LAYERS), "a package is missing from LAYERS: place it in the order"
    rank = {name: i for i, name in enumerate(LAYERS)}
    found = []
    for pkg in LAYERS:
        for f in sorted((root / pkg).rglob("*.py")):
            rel = f.relative_to(root).as_posix()
            for line, target in _package_imports(f, root):
                if rank[target] > rank[pkg] and (rel, target) not in UPWARD_IMPORTS_ALLOWED:
                    found.append(f"{rel}:{line} imports contentiqa.{target}")
    assert not found, "\n".join(found)
