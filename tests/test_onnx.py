"""ONNX export and the ONNX Runtime scoring path: round trips at several input sizes from one
file (dynamic height/width), IE-IQA's per-image selection in the graph, metadata, the score
CLI with --runtime onnx and auto (the default: ONNX Runtime on a CPU), the export cache
(damaged entries rebuilt, read-only folders), the export CLI and its usage errors."""
from __future__ import annotations

import csv
import json
import re
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image
import pytest
import torch

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import contentiqa  # noqa: E402
from contentiqa.cli.main import main  # noqa: E402
from contentiqa.inference.onnx import OnnxExportError, cached_export, export_onnx  # noqa: E402
from contentiqa.inference.onnx_runtime import (  # noqa: E402
    FINGERPRINT_KEY,
    OnnxScorer,
    make_session,
    read_metadata,
    weights_cache_key,
)
from tiny_models import cached_loader, one_torch_thread, tiny_checkpoint, tiny_model  # noqa: E402,F401

IMAGE_GLOBS = ("*.JPG", "*.png")


def example_images(examples_dir: Path) -> list[str]:
    return sorted(str(p) for g in IMAGE_GLOBS for p in examples_dir.glob(g))


def tiny_ie_iqa(**kw):
    torch.manual_seed(0)
    args = dict(pretrained=False, distortion_pretrained=False, intelligibility_pretrained=False, hidden=(16, 8), input_size=64,
                selection="auto", intelligibility_input_size=None)  # the paper's per-task selection, one input size
    return contentiqa.create_model("ie-iqa", **{**args, **kw}).eval()


@pytest.fixture(scope="module")
def tiny_cr_onnx(tmp_path_factory):
    torch.set_num_threads(1)
    model = tiny_model()
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "tiny-iqa-cr.onnx")
    return model, path


@pytest.fixture
def ckpt(monkeypatch) -> str:
    import contentiqa.models.registry as registry

    monkeypatch.setattr(registry, "load_checkpoint", cached_loader(registry.load_checkpoint))
    return tiny_checkpoint()


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CONTENTIQA_CACHE_DIR", str(tmp_path / "cache"))


def run_session(path, x: torch.Tensor) -> dict[str, np.ndarray]:
    s = make_session(path, threads=1)
    names = [o.name for o in s.get_outputs()]
    return dict(zip(names, s.run(names, {"image": x.numpy()})))


# -- export round trips ----------------------------------------------------------------------------
def test_iqa_cr_one_file_many_sizes(tiny_cr_onnx):
    model, path = tiny_cr_onnx
    g = torch.Generator().manual_seed(3)
    for shape in [(2, 3, 64, 80), (1, 3, 97, 131), (3, 3, 40, 300)]:  # one file, three sizes
        x = torch.randn(*shape, generator=g)
        with torch.no_grad():
            ref = model(x)
        got = run_session(path, x)
        assert set(got) == {"score", "logits"}
        np.testing.assert_allclose(got["score"], ref["score"].numpy(), atol=1e-3, rtol=0)
        np.testing.assert_allclose(got["logits"], ref["logits"].numpy(), atol=1e-3, rtol=0)
        assert got["score"].shape == (shape[0],) and got["logits"].shape == (shape[0], 10)


@pytest.mark.parametrize("key,value,said", [
    ("precision", "int4", "precision metadata 'int4' is none of"),  # a traceback at the first row
    ("categories", '"abcdefghij"', "categories is"),  # a string read as ten one-letter categories
    ("higher_is_better", '"false"', "higher_is_better is"),  # bool("false") is True
    ("score_low", "nan", "is not a range"),  # every photo "no score", no error
    ("score_low", "200", "is not a range"),  # scores flipped
    ("std", "[0, 0, 0]", "divides by zero"),  # every photo "float division by zero"
    ("mean", "[0.5, 0.5]", "not 3 finite values"),
])
def test_metadata_of_the_wrong_kind_is_refused_at_load(tiny_cr_onnx, key, value, said):
    from contentiqa.inference.onnx_runtime import OnnxInfo

    meta = read_metadata(tiny_cr_onnx[1])
    OnnxInfo.parse(meta, "g.onnx")  # as exported: fine
    with pytest.raises(ValueError, match=f"^g.onnx: .*{re.escape(said)}"):
        OnnxInfo.parse({**meta, key: value}, "g.onnx")


def test_metadata_describes_the_model(tiny_cr_onnx):
    model, path = tiny_cr_onnx
    meta = read_metadata(path)
    assert meta["contentiqa_format"] == "contentiqa-onnx/1"
    assert meta["model_name"] == "iqa-cr"
    assert float(meta["score_low"]) == 0.0 and float(meta["score_high"]) == 100.0
    assert json.loads(meta["higher_is_better"]) is True
    assert json.loads(meta["categories"]) == list(model.categories)
    np.testing.assert_allclose(json.loads(meta["mean"]), model.mean)
    np.testing.assert_allclose(json.loads(meta["std"]), model.std)
    assert json.loads(meta["native_resolution"]) is True and json.loads(meta["input_size"]) is None
    assert json.loads(meta["outputs"]) == ["score", "logits"]
    assert float(meta["verified_max_abs_diff"]) < 1e-3
    s = make_session(path)
    dims = s.get_inputs()[0].shape
    assert isinstance(dims[0], str) and isinstance(dims[2], str) and isinstance(dims[3], str) and dims[1] == 3


def test_standalone_onnx_model_scores_like_torch(tiny_cr_onnx, examples_dir):
    model, path = tiny_cr_onnx
    images = example_images(examples_dir)[:4]
    om = contentiqa.load_scorer(path, threads=1)  # the file alone: no weights, no torch model
    assert om.identity.runtime == "onnx" and om.identity.weights == path and om.identity.tag is None
    a = model.predict(images)
    b = om.predict(images)
    for p, q in zip(a, b):
        assert p.ok and q.ok and p.path == q.path
        assert abs(p.score - q.score) / 100 < 1e-3
        assert p.category == q.category


def test_following_the_metadata_by_hand_scores_as_contentiqa_does(tiny_cr_onnx, tmp_path):
    """A user with ONNX Runtime and the file alone got other scores for a photo over 2048 px:
    the metadata did not say that `score` shrinks it first, nor with which filter."""
    from PIL import Image

    _, path = tiny_cr_onnx
    meta = read_metadata(path)
    assert meta["resize"] == "none" and meta["max_side"] == "2048" and "LANCZOS, reducing_gap=3.0" in meta["downscale"]
    photo = tmp_path / "wide.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (70, 2300, 3), dtype=np.uint8)).save(photo)
    img = Image.open(photo).convert("RGB")
    w, h = img.size
    f = int(meta["max_side"]) / max(w, h)  # as the metadata say, word for word
    img = img.resize((max(1, round(w * f)), max(1, round(h * f))), Image.LANCZOS, reducing_gap=3.0)
    x = (np.asarray(img, np.float32) / 255 - json.loads(meta["mean"])) / json.loads(meta["std"])
    s = float(run_session(path, torch.from_numpy(x.transpose(2, 0, 1)[None].astype(np.float32)))["score"][0])
    by_hand = float(meta["score_low"]) + s * (float(meta["score_high"]) - float(meta["score_low"]))
    said = contentiqa.load_scorer(path, threads=1).predict(str(photo))
    assert said.score == pytest.approx(by_hand, abs=1e-3) and "downscaled from 2300x70 to 2048x62" in said.notes[0]


def test_ie_iqa_selection_inside_the_graph():
    model = tiny_ie_iqa()
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    _, idx = model.intelligibility_features(x)
    assert len({tuple(r) for r in idx.tolist()}) > 1  # the selection differs per image: it is not a constant
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = export_onnx(model, Path(d) / "ie.onnx")
        meta = read_metadata(path)
        assert json.loads(meta["native_resolution"]) is False and json.loads(meta["input_size"]) == [64, 64]
        assert meta["preprocess"] == "resize_bilinear" and json.loads(meta["outputs"]) == ["score"]
        assert "Image.BILINEAR" in meta["resize"] and meta["max_side"] == meta["downscale"] == "none"
        for b in (1, 4):
            with torch.no_grad():
                ref = model(x[:b])["score"].numpy()
            np.testing.assert_allclose(run_session(path, x[:b])["score"], ref, atol=1e-3, rtol=0)
        ops = {n.op_type for n in __import__("onnx").load(str(path)).graph.node}
        assert {"ArgMax", "TopK"} <= ops


def test_same_padding_exports_as_one_conv_at_any_size(tmp_path):
    """TensorFlow-"same" convolutions (the EfficientNet-Lite stride-2 ones) export as one
    Conv(auto_pad=SAME_UPPER): no Pad / shape arithmetic left in the graph, outputs equal to
    PyTorch at even and odd sizes, the module's own forward back after the export."""
    import onnx
    from timm.layers.conv2d_same import Conv2dSame

    from contentiqa.backbones.onnx_same_padding import same_padding_as_onnx_conv

    torch.manual_seed(0)
    net = torch.nn.Sequential(Conv2dSame(3, 8, 3, stride=2, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU6(),
                              Conv2dSame(8, 8, 5, stride=2, groups=8, bias=True)).eval()
    path = tmp_path / "same.onnx"
    with same_padding_as_onnx_conv(net, 17) as n:
        assert n == 2
        torch.onnx.export(net, (torch.randn(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17,
                          input_names=["image"], dynamic_axes={"image": {0: "b", 2: "h", 3: "w"}})
    assert "forward" not in vars(net[0]) and "forward" not in vars(net[3])  # restored
    nodes = onnx.load(str(path)).graph.node
    assert {n.op_type for n in nodes} <= {"Conv", "Clip", "Constant", "Identity"}, {n.op_type for n in nodes}
    convs = [n for n in nodes if n.op_type == "Conv"]
    assert len(convs) == 2 and all(
        onnx.helper.get_attribute_value(next(a for a in c.attribute if a.name == "auto_pad")) == b"SAME_UPPER" for c in convs)
    for hw in ((32, 32), (33, 31), (7, 10), (5, 5)):
        x = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(hw[0]))
        with torch.no_grad():
            ref = net(x).numpy()
        got = make_session(path, threads=1).run(None, {"image": x.numpy()})[0]
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_ie_iqa_sensitivity_with_a_linear_relu_head_exports(tmp_path):
    model = tiny_ie_iqa(intelligibility_task="unrecognizability", ratio=20)
    assert model.cfg.strategy == "sensitivity"
    path = export_onnx(model, tmp_path / "ie-s.onnx")
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x)["score"].numpy()
    np.testing.assert_allclose(run_session(path, x)["score"], ref, atol=1e-3, rtol=0)


def test_unexportable_selection_says_why(tmp_path, monkeypatch):
    model = tiny_ie_iqa(selection="sensitivity")
    monkeypatch.setattr(model.intelligibility, "head_layers", lambda: None)  # a head with no closed-form gradient
    with pytest.raises(OnnxExportError, match="autograd"):
        export_onnx(model, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_an_export_is_written_like_any_file_through_a_link(tmp_path):
    """Not mkstemp's private 0600: the umask's permissions (or the replaced file's), and a
    symlinked output stays a link to the file it names."""
    model = tiny_model()
    old = os.umask(0o022)
    try:
        plain = export_onnx(model, tmp_path / "plain.onnx", verify=False)
    finally:
        os.umask(old)
    assert plain.stat().st_mode & 0o777 == 0o644
    target = tmp_path / "real.onnx"
    target.write_bytes(b"old")
    target.chmod(0o640)
    (tmp_path / "link.onnx").symlink_to(target)
    export_onnx(model, tmp_path / "link.onnx", verify=False)
    assert (tmp_path / "link.onnx").is_symlink() and target.stat().st_mode & 0o777 == 0o640
    assert target.read_bytes() == plain.read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_real_size_iqa_cr_on_real_photos(tmp_path, examples_dir):
    """The paper-size IQA-CR on the pretrained EfficientNet-Lite0 (untrained head), 500 x 500
    photos: ONNX Runtime = PyTorch within 1e-3 on the normalised scale."""
    torch.manual_seed(0)
    model = contentiqa.create_model("iqa-cr", pretrained=False).eval()
    path = export_onnx(model, tmp_path / "iqa-cr.onnx")
    images = example_images(examples_dir)
    om = OnnxScorer.from_file(path, threads=1)
    a, b = model.predict(images, batch_size=4), om.predict(images, batch_size=4)
    for p, q in zip(a, b):
        assert p.ok and q.ok
        assert abs(p.score - q.score) / 100 < 1e-3
        assert p.category == q.category
        assert max(abs(p.probabilities[c] - q.probabilities[c]) for c in p.probabilities) < 1e-3


# -- the score command ---------------------------------------------------------------------------------
def read_scores(path: Path) -> dict[str, float]:
    with open(path, newline="", encoding="utf-8") as f:
        return {Path(r["path"]).name: float(r["score"]) for r in csv.DictReader(f)}


def test_score_cli_onnx_equals_torch(tmp_path, ckpt, examples_dir):
    images = example_images(examples_dir)
    assert main(["score", *images, "--model", ckpt, "--runtime", "torch", "-o", str(tmp_path / "t.csv"), "-q"]) == 0
    assert main(["score", *images, "--model", ckpt, "--runtime", "onnx", "-o", str(tmp_path / "o.csv"), "-q"]) == 0
    torch_scores, onnx_scores = read_scores(tmp_path / "t.csv"), read_scores(tmp_path / "o.csv")
    assert set(torch_scores) == set(onnx_scores) and len(torch_scores) == len(images)
    for k, v in torch_scores.items():
        assert abs(v - onnx_scores[k]) / 100 < 1e-3
    cached = list((tmp_path / "cache" / "onnx").glob("*.onnx"))
    assert len(cached) == 1  # exported once, into the cache
    # second run: the cached file is used, not exported again
    import contentiqa.inference.onnx as onnx_mod

    def no_export(*a, **k):
        raise AssertionError("exported again")

    orig = onnx_mod.export_onnx
    onnx_mod.export_onnx = no_export
    try:
        assert main(["score", images[0], "--model", ckpt, "--runtime", "onnx", "-o", str(tmp_path / "o2.csv"), "-q"]) == 0
    finally:
        onnx_mod.export_onnx = orig
    # and the exported file alone (--onnx-model) gives the same numbers
    assert main(["score", *images[:3], "--onnx-model", str(cached[0]), "-o", str(tmp_path / "f.csv"), "-q"]) == 0
    for k, v in read_scores(tmp_path / "f.csv").items():
        assert abs(v - onnx_scores[k]) < 1e-6 * 100


def test_score_cli_onnx_usage_errors(tmp_path, ckpt, examples_dir, tiny_cr_onnx, capsys):
    img = example_images(examples_dir)[0]
    _, path = tiny_cr_onnx
    assert main(["score", img, "--runtime", "torch", "--onnx-model", str(path)]) == 2
    assert main(["score", img, "--onnx-model", str(tmp_path / "missing.onnx")]) == 2
    assert main(["score", img, "--model", ckpt, "--runtime", "onnx", "--device", "cuda"]) == 2
    assert main(["score", img, "--onnx-model", str(path), "--model", "ie-iqa"]) == 2
    assert "give one of them" in capsys.readouterr().err
    assert main(["score", img, "--model", str(path), "--precision", "int8"]) == 2  # a file runs as it is
    assert "runs as it is" in capsys.readouterr().err
    assert main(["score", img, "--onnx-model", str(path), "--explain", "-o", str(tmp_path / "r.html")]) == 2
    not_onnx = tmp_path / "bad.onnx"
    not_onnx.write_bytes(b"not a model")
    assert main(["score", img, "--onnx-model", str(not_onnx)]) == 2


def _graph_with_metadata_of(source: Path, out: Path, outputs: dict[str, str], **edits: str) -> Path:
    """A graph with ``source``'s contentiqa metadata (``edits`` replacing some) but other outputs:
    ``name: "4d"`` is the image's mean kept as (N, 1, 1, 1), ``name: "2d"`` its channel means (N, 3)."""
    import onnx
    from onnx import TensorProto, helper

    nodes, outs = [], []
    for name, kind in outputs.items():
        nodes.append(helper.make_node("ReduceMean", ["image"], [name], keepdims=int(kind == "4d"),
                                      axes=[1, 2, 3] if kind == "4d" else [2, 3]))
        outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])
    model = helper.make_model(helper.make_graph(nodes, "forged", [image], outs), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in {**read_metadata(source), **edits}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, out)
    return out


@pytest.mark.parametrize("graph,edits,said", [
    ("iqa-cr", {"categories": json.dumps([f"c{i}" for i in range(9)])},
     "the graph gives 10 category logits, but its metadata name 9"),
    ("iqa-cr", {"contentiqa_format": "contentiqa-onnx/2", "contentiqa_version": "9.0"}, "upgrade contentiqa"),
    ("ie-iqa", {"input_size": "[96, 96]"}, "input_size [96, 96], but the graph takes [64, 64]"),
    ("ie-iqa", {"native_resolution": "true"}, "at their own size, but the graph's input is fixed"),  # resized, silently
])
def test_metadata_edited_against_the_graph_are_refused_at_load(tmp_path, examples_dir, tiny_cr_onnx, capsys, graph,
                                                               edits, said):
    """Each loaded, then scored every photo wrong or failed each one with onnxruntime's words; a
    newer format was 'not exported by contentiqa'."""
    import onnx

    source = tiny_cr_onnx[1] if graph == "iqa-cr" else export_onnx(tiny_ie_iqa(), tmp_path / "ie.onnx")
    model = onnx.load(str(source))
    for entry in model.metadata_props:
        if entry.key in edits:
            entry.value = edits[entry.key]
    edited = tmp_path / "edited.onnx"
    onnx.save(model, str(edited))
    assert main(["score", example_images(examples_dir)[0], "--model", str(edited)]) == 2
    err = capsys.readouterr().err
    assert "edited.onnx" in err and said in err, err


def test_a_graph_whose_outputs_are_not_those_its_metadata_name_is_refused(tmp_path, examples_dir, tiny_cr_onnx, capsys):
    img, img2 = example_images(examples_dir)[:2]
    _, path = tiny_cr_onnx
    other = _graph_with_metadata_of(path, tmp_path / "other.onnx", {"features": "4d"})
    assert main(["score", img, "--model", str(other)]) == 2
    err = capsys.readouterr().err
    assert "other.onnx" in err and "'features'" in err and "Traceback" not in err
    # (three categories, as many as the forged logits: a width that disagrees is refused at load)
    shapes = _graph_with_metadata_of(path, tmp_path / "shapes.onnx", {"score": "4d", "logits": "2d"},
                                     categories='["a", "b", "c"]')
    out = tmp_path / "r.csv"
    assert main(["score", img, img2, "--model", str(shapes), "-o", str(out)]) == 1  # rows, not a traceback
    rows = list(csv.DictReader(open(out, newline="")))
    assert len(rows) == 2 and all("shapes.onnx" in r["error"] and "'score' output has shape (" in r["error"] for r in rows)


def test_missing_onnxruntime_is_a_clear_usage_error(tmp_path, ckpt, examples_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    img = example_images(examples_dir)[0]
    assert main(["score", img, "--model", ckpt, "--runtime", "onnx", "-q"]) == 2
    err = capsys.readouterr().err
    assert "onnxruntime" in err and "pip install" in err


# -- the export command ---------------------------------------------------------------------------------
def test_export_cli_writes_a_verified_file(tmp_path, ckpt, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", ckpt, "--format", "onnx", "--out", str(out)]) == 0
    assert out.is_file()
    assert "max |ONNX Runtime - PyTorch|" in capsys.readouterr().out
    assert read_metadata(out)["model_name"] == "iqa-cr"
    # an existing file (another export: an int8 graph, weights gone since) is replaced only when asked
    out.write_bytes(b"another graph")
    assert main(["export", ckpt, "--out", str(out), "-q"]) == 2
    assert "--out" in capsys.readouterr().err and out.read_bytes() == b"another graph"
    assert main(["export", ckpt, "--out", str(out), "-q", "--force"]) == 0
    assert read_metadata(out)["model_name"] == "iqa-cr"
    # an --out that links to the checkpoint it exports: the weights are not replaced, --force or not
    victim = tmp_path / "victim.pt"
    victim.write_bytes(Path(ckpt).read_bytes())
    (tmp_path / "link.onnx").symlink_to(victim)
    assert main(["export", str(victim), "--out", str(tmp_path / "link.onnx"), "-q", "--force"]) == 2
    assert "which this export reads" in capsys.readouterr().err and victim.read_bytes() == Path(ckpt).read_bytes()
    (tmp_path / "loop.onnx").symlink_to("loop.onnx")  # a link to itself: one line, not a traceback
    assert main(["export", str(victim), "--out", str(tmp_path / "loop.onnx"), "-q", "--force"]) == 0


def test_export_cli_usage_errors(tmp_path, ckpt, capsys):
    assert main(["export"]) == 2
    assert main(["export", ckpt]) == 2  # no --out
    assert "--out" in capsys.readouterr().err
    assert main(["export", ckpt, "--format", "tflite", "--out", str(tmp_path / "m.tflite")]) == 2
    assert "not supported" in capsys.readouterr().err
    assert main(["export", ckpt, "--out", str(tmp_path)]) == 2  # a folder
    assert main(["export", "no-such-model", "--out", str(tmp_path / "m.onnx")]) == 2
    assert main(["export", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "m.onnx")]) == 2
    assert main(["export", ckpt, "--out", str(tmp_path / "m.onnx"), "--opset", "7"]) == 2
    assert not (tmp_path / "m.onnx").exists()
    capsys.readouterr()
    assert main(["export", ckpt, "--out", str(tmp_path / "m.bin")]) == 2  # --model would read it as a checkpoint
    assert "name an .onnx file" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    assert main(["export", ckpt, "--out", str(tmp_path / "afile" / "m.onnx")]) == 2  # checked before the work
    assert "cannot write --out" in capsys.readouterr().err


def test_an_export_removes_what_a_killed_export_of_that_file_left(tmp_path, ckpt):
    """SIGKILL mid-write left a hidden temporary the model's size beside --out, one per killed run."""
    out = tmp_path / "m.onnx"
    stale = tmp_path / ".m.onnx.abc123xy.tmp"
    stale.write_bytes(b"\0" * 1000)
    other = tmp_path / ".n.onnx.abc123xy.tmp"  # another file's: not this export's to remove
    other.write_bytes(b"x")
    assert main(["export", ckpt, "--out", str(out), "-q"]) == 0
    assert out.is_file() and not stale.exists() and other.exists()


def test_cached_export_is_keyed_by_the_weights(tmp_path):
    a = tiny_model(seed=0)
    b = tiny_model(seed=1)
    pa, made = cached_export(a, tmp_path)
    assert made and cached_export(a, tmp_path) == (pa, False)
    pb, made_b = cached_export(b, tmp_path)
    assert made_b and pb != pa


# -- --runtime auto (the default) and the export cache ----------------------------------------------
def cache_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "cache" / "onnx").glob("*.onnx"))


def test_default_runtime_is_onnx_on_the_cpu_and_equals_torch(tmp_path, ckpt, examples_dir, capsys):
    images = example_images(examples_dir)
    assert main(["score", *images, "--model", ckpt, "--runtime", "torch", "-o", str(tmp_path / "t.csv"), "-q"]) == 0
    capsys.readouterr()
    assert main(["score", *images, "--model", ckpt, "-o", str(tmp_path / "d.csv")]) == 0
    assert "ONNX Runtime:" in capsys.readouterr().err
    assert len(cache_files(tmp_path)) == 1
    torch_scores, default_scores = read_scores(tmp_path / "t.csv"), read_scores(tmp_path / "d.csv")
    assert set(torch_scores) == set(default_scores) and len(default_scores) == len(images)
    for k, v in torch_scores.items():  # MOS 0..100: within 1e-3 of the normalised score
        assert abs(v - default_scores[k]) / 100 < 1e-3, k


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "foreign"])
def test_a_damaged_cache_entry_is_rebuilt(tmp_path, ckpt, examples_dir, tiny_cr_onnx, damage):
    img = example_images(examples_dir)[0]
    assert main(["score", img, "--model", ckpt, "-o", str(tmp_path / "a.csv"), "-q"]) == 0
    (entry,) = cache_files(tmp_path)
    good = entry.read_bytes()
    if damage == "truncated":  # an export cut short (disk full, killed copy)
        entry.write_bytes(good[: len(good) // 2])
    elif damage == "garbage":
        entry.write_bytes(b"\x00not onnx" * 100)
    elif damage == "empty":
        entry.write_bytes(b"")
    else:  # a valid contentiqa export of other weights under this name
        entry.write_bytes(Path(tiny_cr_onnx[1]).read_bytes())
    assert main(["score", img, "--model", ckpt, "-o", str(tmp_path / "b.csv"), "-q"]) == 0
    assert cache_files(tmp_path) == [entry] and entry.read_bytes() != b""
    meta = read_metadata(entry)  # loads again, and is the export of these weights
    assert meta["model_name"] == "iqa-cr" and meta[FINGERPRINT_KEY] == weights_cache_key(ckpt)  # keyed by the file
    assert read_scores(tmp_path / "a.csv") == read_scores(tmp_path / "b.csv")


def test_an_unwritable_cache_falls_back_to_a_temp_folder(tmp_path, ckpt, examples_dir, monkeypatch):
    import contentiqa.inference.onnx_runtime as onnx_mod

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be: mkdir fails, even for root")
    monkeypatch.setenv("CONTENTIQA_CACHE_DIR", str(blocker / "cache"))
    monkeypatch.setattr(onnx_mod, "_fallback_cache_dir", lambda create=False: tmp_path / "fallback")
    img = example_images(examples_dir)[0]
    assert main(["score", img, "--model", ckpt, "-o", str(tmp_path / "a.csv"), "-q"]) == 0
    assert len(list((tmp_path / "fallback").glob("*.onnx"))) == 1
    assert main(["score", img, "--model", ckpt, "--runtime", "torch", "-o", str(tmp_path / "t.csv"), "-q"]) == 0
    (name, score), = read_scores(tmp_path / "a.csv").items()
    assert abs(score - read_scores(tmp_path / "t.csv")[name]) / 100 < 1e-3


def test_default_runtime_without_onnxruntime_runs_torch(tmp_path, ckpt, examples_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    img = example_images(examples_dir)[0]
    assert main(["score", img, "--model", ckpt, "-o", str(tmp_path / "a.csv")]) == 0
    assert "running in PyTorch" in capsys.readouterr().err
    assert not cache_files(tmp_path)


# -- the torch-free scorer (contentiqa.inference.onnx_runtime) -------------------------------------------
def _image_files(folder: Path) -> dict[str, Path]:
    """Inputs as imageio reads them: odd sizes, grey, grey+alpha, RGBA, palette, 16- and 32-bit grey."""
    from PIL import Image

    rng = np.random.default_rng(7)
    out = {}

    def save(name: str, img: "Image.Image") -> None:
        out[name] = folder / name
        img.save(out[name])

    save("rgb-odd.png", Image.fromarray(rng.integers(0, 256, (33, 47, 3), dtype=np.uint8)))
    save("rgb.jpg", Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)))
    save("grey.png", Image.fromarray(rng.integers(0, 256, (41, 35), dtype=np.uint8), "L"))
    save("grey-alpha.png", Image.fromarray(rng.integers(0, 256, (40, 40, 2), dtype=np.uint8), "LA"))
    save("rgba.png", Image.fromarray(rng.integers(0, 256, (37, 52, 4), dtype=np.uint8), "RGBA"))
    save("palette.png", Image.fromarray(rng.integers(0, 256, (48, 36, 3), dtype=np.uint8)).quantize(16))
    save("grey16.png", Image.fromarray(rng.integers(0, 65536, (45, 39), dtype=np.uint16)))
    save("grey32.tif", Image.fromarray(rng.integers(0, 256, (34, 50), dtype=np.int32), "I"))  # 32-bit: 8-bit values
    return out


def test_numpy_preprocessing_equals_pil_to_tensor(tmp_path):
    """preprocess_array is pil_to_tensor (and, with a size, IE-IQA's test-time resize) to the bit,
    for every kind of file imageio turns into RGB."""
    from contentiqa.data.imageio import load_image
    from contentiqa.inference.onnx_runtime import preprocess_array
    from contentiqa.models.base import pil_to_tensor
    from contentiqa.models.ie_iqa import resize_crop_flip

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    for name, path in _image_files(tmp_path).items():
        img = load_image(path).image
        assert img.mode == "RGB", name
        got = preprocess_array(img, mean, std)
        want = pil_to_tensor(img, mean, std).numpy()
        assert got.dtype == np.float32 and got.shape == want.shape == (3, img.height, img.width), name
        assert np.array_equal(got, want), name
        for size in (64, 37):
            got = preprocess_array(img, mean, std, (size, size))
            want = resize_crop_flip(img, size, size, False, mean, std).numpy()
            assert got.shape == (3, size, size) and np.array_equal(got, want), (name, size)
    # the independent definition: (pixel / 255 - mean) / std
    img = load_image(tmp_path / "rgb-odd.png").image
    ref = (np.asarray(img, dtype=np.float64) / 255 - mean) / std
    np.testing.assert_allclose(preprocess_array(img, mean, std).transpose(1, 2, 0), ref, atol=1e-5)


@pytest.mark.parametrize("which", ["iqa-cr", "ie-iqa"])
def test_scorer_preprocesses_as_its_torch_model(tmp_path, which):
    """The scorer takes preprocessing from the graph's metadata: for both model kinds (native
    resolution, fixed-size resize) it gives the torch model's input exactly."""
    from contentiqa.data.imageio import load_image
    from contentiqa.inference.onnx_runtime import OnnxScorer

    model = tiny_model() if which == "iqa-cr" else tiny_ie_iqa()
    scorer = OnnxScorer.from_file(export_onnx(model, tmp_path / f"{which}.onnx", verify=False), threads=1)
    assert scorer.native_resolution == model.native_resolution and scorer.min_size == model.min_size
    for name, path in _image_files(tmp_path).items():
        img = load_image(path).image
        assert np.array_equal(scorer.preprocess(img), model.preprocess(img).numpy()), name


def test_torch_free_scores_equal_the_torch_path(tmp_path, ckpt, examples_dir, monkeypatch, capsys):
    """Second run of the default runtime: no torch model is loaded at all, and every row equals
    the PyTorch run's (score within 1e-3 of the scale, category, notes, model record)."""
    import contentiqa.inference.scorer as scorer_mod

    images = example_images(examples_dir) + [str(tmp_path / "missing.jpg")]
    assert main(["score", *images, "--model", ckpt, "--runtime", "torch", "-o", str(tmp_path / "t.csv"), "-q"]) == 1
    assert main(["score", images[0], "--model", ckpt, "-o", str(tmp_path / "warm.csv"), "-q"]) == 0  # exports
    capsys.readouterr()

    def no_torch_model(*a, **k):
        raise AssertionError("the torch model was loaded")

    monkeypatch.setattr(scorer_mod, "load_model", no_torch_model)
    assert main(["score", *images, "--model", ckpt, "-o", str(tmp_path / "o.csv"), "--max-side", "100"]) == 1
    assert "ONNX Runtime:" in capsys.readouterr().err
    with pytest.raises(AssertionError, match="torch model was loaded"):  # the torch path: the check above is real
        main(["score", *images, "--model", ckpt, "--runtime", "torch", "-q"])
    monkeypatch.undo()
    assert main(["score", *images, "--model", ckpt, "--runtime", "torch", "-o", str(tmp_path / "t2.csv"), "-q",
                 "--max-side", "100"]) == 1

    def rows(name):
        with open(tmp_path / name, newline="", encoding="utf-8") as f:
            return {Path(r["path"]).name: r for r in csv.DictReader(f)}

    t, o = rows("t2.csv"), rows("o.csv")
    assert set(t) == set(o) and len(t) == len(images)
    for k in t:
        a, b = dict(t[k]), dict(o[k])
        if a["score"]:
            assert abs(float(a.pop("score")) - float(b.pop("score"))) / 100 < 1e-3, k
            assert abs(float(a.pop("category_confidence")) - float(b.pop("category_confidence"))) < 1e-3, k
        assert a == b, k  # category, error, notes (downscaling, clipping), model, weights, SHA-256
    assert "downscaled" in rows("o.csv")[Path(images[0]).name]["notes"]


def test_a_new_checkpoint_takes_the_torch_path_once(tmp_path, examples_dir):
    """The cache is keyed by the weights file's bytes: other weights under the same file name
    are exported afresh (not scored with the old graph), then found without torch."""
    from contentiqa.inference.onnx_runtime import find_graph
    from contentiqa.models.registry import save_checkpoint

    img = example_images(examples_dir)[0]
    path = tmp_path / "m.pt"
    save_checkpoint(tiny_model(seed=0), path)
    assert find_graph(path, threads=1) is None
    assert main(["score", img, "--model", str(path), "-o", str(tmp_path / "a.csv"), "-q"]) == 0
    first = find_graph(path, threads=1)
    assert first is not None and first.identity.weights == path
    save_checkpoint(tiny_model(seed=1), path)  # same name, other weights
    assert find_graph(path, threads=1) is None
    assert main(["score", img, "--model", str(path), "-o", str(tmp_path / "b.csv"), "-q"]) == 0
    assert find_graph(path, threads=1).path != first.path
    assert read_scores(tmp_path / "a.csv") != read_scores(tmp_path / "b.csv")


def test_the_cache_key_names_what_changes_the_graph(tmp_path):
    from contentiqa.inference.onnx_runtime import weights_cache_key

    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"weights")
    b.write_bytes(b"weights")
    assert weights_cache_key(a) == weights_cache_key(b)  # the bytes, not the name
    b.write_bytes(b"weight5")
    assert len({weights_cache_key(a), weights_cache_key(b), weights_cache_key(a, opset=18),
                weights_cache_key(a, precision="int8"), weights_cache_key(a, versioned=False)}) == 5


def test_create_scorer_exports_once_then_runs_without_torch(tmp_path, ckpt, examples_dir):
    """contentiqa.create_scorer: the first call exports the checkpoint to the cache; a later one in a
    fresh process imports no torch; its scores equal the PyTorch model's within 1e-3 (normalised)."""
    import subprocess

    images = example_images(examples_dir)[:3]
    scorer = contentiqa.create_scorer(ckpt, threads=1)
    assert scorer.identity.tag is None and scorer.identity.weights == Path(ckpt)
    assert (scorer.identity.runtime, scorer.identity.precision) == ("onnx", "fp32")
    got = [p.score for p in scorer.predict(images)]
    model = contentiqa.load_checkpoint(ckpt)
    ref = [p.score for p in model.predict(images)]
    lo, hi = model.score_range
    np.testing.assert_allclose(np.array(got) / (hi - lo), np.array(ref) / (hi - lo), atol=1e-3, rtol=0)
    # tensors as create_model(...).predict takes them: N x 3 x H x W is N photos, 3 x H x W one (issue 22)
    batch = torch.rand(2, 3, 64, 80, generator=torch.Generator().manual_seed(0))
    for x in (batch[:1], batch):
        rows, ref_rows = scorer.predict(x), model.predict(x)
        assert isinstance(rows, list) and len(rows) == len(ref_rows) == len(x)
        np.testing.assert_allclose([p.score / (hi - lo) for p in rows], [p.score / (hi - lo) for p in ref_rows],
                                   atol=1e-3, rtol=0)
    assert scorer.predict(batch[0]).score == pytest.approx(rows[0].score, abs=1e-4)
    code = ("import sys, contentiqa; s = contentiqa.create_scorer(sys.argv[1], threads=1); "
            "print(s.predict(sys.argv[2]).score); assert 'torch' not in sys.modules, 'torch imported'")
    r = subprocess.run([sys.executable, "-c", code, ckpt, images[0]], capture_output=True, text=True,
                       env={**__import__("os").environ})
    assert r.returncode == 0, r.stderr[-2000:]
    assert abs(float(r.stdout.strip()) - got[0]) < 1e-4
    with pytest.raises(ValueError):
        contentiqa.create_scorer("no-such-model")
    with pytest.raises(ValueError, match="precision"):
        contentiqa.create_scorer(ckpt, precision="int4")
    with pytest.raises(ValueError, match="autocast: not with the ONNX Runtime"):
        contentiqa.create_scorer(ckpt, runtime="onnx", precision="fp16")


def test_scorer_runs_many_photos_side_by_side(tiny_cr_onnx, tmp_path, monkeypatch):
    """predict(many photos) does what `contentiqa score` does: when the plan of the free cores
    says so, photos run side by side (on the session itself when it has one thread, else on a
    one-thread session of the same graph), with the same scores as one run; a few photos, or
    one thread asked for by name, keep one run."""
    import contentiqa.inference.engine as engine
    import contentiqa.inference.onnx_runtime as ort_mod
    from contentiqa.inference.threads import PARALLEL_RUNS_MIN_IMAGES, ThreadPlan

    _, path = tiny_cr_onnx
    photos = []
    for k in range(PARALLEL_RUNS_MIN_IMAGES):
        p = tmp_path / f"{k}.png"
        Image.fromarray(np.random.default_rng(k).integers(0, 255, (48 + 4 * k, 64, 3), dtype=np.uint8)).save(p)
        photos.append(str(p))
    calls = []
    real_init = engine.Engine.__init__

    def spy(self, *a, **k):
        calls.append(k.get("concurrency", 1))
        real_init(self, *a, **k)

    monkeypatch.setattr(engine.Engine, "__init__", spy)
    one = OnnxScorer.from_file(path, threads=1)  # one thread by name: one run
    ref = [p.score for p in one.predict(photos)]
    assert calls == [1] and one._one_thread_session is None
    free = OnnxScorer.from_file(path, threads=2)
    free.threads = None  # as load_scorer() leaves it: planned from the free cores
    monkeypatch.setattr(ort_mod, "plan_threads", lambda *a, **k: ThreadPlan(threads=1, spinning=False, cpus=2, busy=0.0,
                                                                            runs=2))
    got = [p.score for p in free.predict(photos)]
    assert calls[-1] == 2 and free._one_thread_session is not None
    assert got == pytest.approx(ref, abs=1e-5)
    free.predict(photos[: PARALLEL_RUNS_MIN_IMAGES - 1])
    assert calls[-1] == 1  # a few photos: one run
    planned = OnnxScorer.from_file(path, images=PARALLEL_RUNS_MIN_IMAGES)  # the plan made at load (1 thread, 2 runs)
    assert planned.session_threads == 1
    assert [p.score for p in planned.predict(photos)] == pytest.approx(ref, abs=1e-5)
    assert calls[-1] == 2 and planned._one_thread_session is None  # its own session is the one-thread one
    moved = tmp_path / "graph.onnx"  # a scorer whose graph file is pruned since it loaded: its session runs
    moved.write_bytes(Path(path).read_bytes())
    gone = OnnxScorer.from_file(moved, threads=2)
    gone.threads, gone.session_threads = None, 2  # a two-thread session: side by side needs a second one
    moved.unlink()
    assert [p.score for p in gone.predict(photos)] == pytest.approx(ref, abs=1e-5)
    assert calls[-1] == 1 and gone._one_thread_session is None


def test_the_temp_fallback_is_private_and_another_users_folder_there_is_never_used(tmp_path, monkeypatch):
    """In a shared /tmp another user could make contentiqa-onnx-<uid> first and plant graphs (read
    as this user's scores) or links (followed by this user's exports)."""
    import tempfile

    import contentiqa.inference.onnx_runtime as onnx_mod

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    mine = tmp_path / f"contentiqa-onnx-{os.getuid()}"
    assert onnx_mod.cache_places("main") == [Path("main")]  # looked for only where it exists
    assert list(onnx_mod.write_places("main")) == [Path("main"), mine]  # made when written to
    assert onnx_mod.cache_places("main") == [Path("main"), mine]
    assert mine.stat().st_mode & 0o777 == 0o700
    mine.chmod(0o777)  # writable by anyone: another user's graphs may be in it
    with pytest.warns(UserWarning, match="others can write to it"):
        assert onnx_mod.cache_places("main") == [Path("main")]
    mine.rmdir()
    (tmp_path / "elsewhere").mkdir()
    mine.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.warns(UserWarning, match="it is not a folder"):
        assert list(onnx_mod.write_places("main")) == [Path("main")]
    mine.unlink()
    mine.mkdir(mode=0o700)
    try:
        os.chown(mine, 65534, 65534)
    except PermissionError:
        pytest.skip("changing a folder's owner needs root")
    with pytest.warns(UserWarning, match="belongs to another user"):
        assert list(onnx_mod.write_places("main")) == [Path("main")] and onnx_mod.cache_places("main") == [Path("main")]


def test_int8_asked_of_a_model_that_cannot_be_exported_says_so(tmp_path, ckpt, examples_dir, monkeypatch, capsys):
    """The default runtime fell back to PyTorch, which then refused int8 ("PyTorch runs in fp32, bf16,
    fp16, not int8"): the reason, the export, was left out."""
    import contentiqa.inference.scorer as scorer

    def cannot(spec, weights, precision):
        raise OnnxExportError("IE-IQA with the detection intelligibility branch cannot be exported")

    monkeypatch.setenv("CONTENTIQA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(scorer, "_build_graph", cannot)
    img = example_images(examples_dir)[0]
    assert main(["score", img, "--model", ckpt, "--precision", "int8", "-q"]) == 2
    err = capsys.readouterr().err
    assert "precision int8 runs" in err and "detection intelligibility branch cannot be exported" in err
    assert "use fp32" in err and "PyTorch runs in" not in err
    assert main(["score", img, "--model", ckpt, "-o", str(tmp_path / "a.csv")]) == 0  # fp32: PyTorch, said
    assert "running in PyTorch, not ONNX Runtime (IE-IQA with the detection" in capsys.readouterr().err


def test_a_full_cache_and_fallback_run_in_pytorch_or_say_why_not(tmp_path, ckpt, examples_dir, monkeypatch, capsys):
    import contentiqa.inference.onnx_runtime as onnx_mod

    blocker = tmp_path / "not-a-folder"  # what a full disk does to a write: an OSError for every place
    blocker.write_text("x")
    monkeypatch.setenv("CONTENTIQA_CACHE_DIR", str(blocker / "cache"))
    monkeypatch.setattr(onnx_mod, "_fallback_cache_dir", lambda create=False: blocker / "fallback")
    img = example_images(examples_dir)[0]
    assert main(["score", img, "--model", ckpt, "-o", str(tmp_path / "a.csv")]) == 0  # auto: PyTorch, said
    assert "running in PyTorch, not ONNX Runtime: cannot write its ONNX graph" in capsys.readouterr().err
    assert main(["score", img, "--model", ckpt, "--runtime", "onnx", "-q"]) == 2
    err = capsys.readouterr().err
    assert "no export cache folder could take the graph" in err and "Traceback" not in err


def test_a_graph_pruned_between_its_export_and_its_reading_is_exported_again(tmp_path, ckpt, examples_dir, monkeypatch):
    import contentiqa.inference.scorer as scorer_mod

    real, built = scorer_mod._build_graph, []

    def build_then_pruned(spec, weights, precision):
        real(spec, weights, precision)
        built.append(1)
        if len(built) == 1:  # `contentiqa cache --max-size 0` in another terminal, at that moment
            for f in (tmp_path / "cache").rglob("*.onnx"):
                f.unlink()

    monkeypatch.setattr(scorer_mod, "_build_graph", build_then_pruned)
    img = example_images(examples_dir)[0]
    assert main(["score", img, "--model", ckpt, "-o", str(tmp_path / "a.csv"), "-q"]) == 0
    assert len(built) == 2


def test_a_cached_graph_found_is_marked_used_for_the_cache_pruning(tmp_path, examples_dir):
    """`contentiqa cache --max-size/--older-than` go by last use: scoring never marked the graph
    it found, so the one in daily use went first."""
    from contentiqa.inference.onnx_runtime import find_graph, find_graph_file
    from contentiqa.models.registry import save_checkpoint

    path = save_checkpoint(tiny_model(seed=0), tmp_path / "m.pt")
    assert main(["score", example_images(examples_dir)[0], "--model", str(path), "-o", str(tmp_path / "a.csv"),
                 "-q"]) == 0
    graph = find_graph_file(path)
    assert graph is not None and graph.parent == tmp_path / "cache" / "onnx"
    for find in (find_graph, find_graph_file):
        os.utime(graph, (1_000_000, 1_000_000))
        assert find(path) is not None
        assert graph.stat().st_mtime > 1_000_000, find.__name__


def test_a_scorer_never_reads_another_graph_put_at_its_path_since(tmp_path):
    """Many photos run side by side on a second session of the same file, made on first use: a
    file exported again to that path since was read under the first one's metadata."""
    from contentiqa.inference.onnx_runtime import OnnxScorer
    from contentiqa.inference.threads import PARALLEL_RUNS_MIN_IMAGES

    export_onnx(tiny_model(seed=0), tmp_path / "m.onnx", verify=False)
    export_onnx(tiny_model(seed=1), tmp_path / "other.onnx", verify=False)
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8))
              for i in range(PARALLEL_RUNS_MIN_IMAGES)]
    scorer = OnnxScorer.from_file(tmp_path / "m.onnx", threads=2)
    want = [p.score for p in OnnxScorer.from_file(tmp_path / "m.onnx", threads=1).predict(images)]
    scorer.predict(images[:1])  # one photo: the scorer's own session
    os.replace(tmp_path / "other.onnx", tmp_path / "m.onnx")
    assert [p.score for p in scorer.predict(images)] == pytest.approx(want, abs=1e-4)


def test_a_cached_graph_marked_used_keeps_its_scorers_parallel_runs(tmp_path, examples_dir):
    """Marking the graph used (a touch) made the scorer think its file replaced: one run only."""
    from contentiqa.inference.onnx_runtime import find_graph
    from contentiqa.inference.threads import PARALLEL_RUNS_MIN_IMAGES
    from contentiqa.models.registry import save_checkpoint

    path = save_checkpoint(tiny_model(seed=0), tmp_path / "m.pt")
    assert main(["score", example_images(examples_dir)[0], "--model", str(path), "-o", str(tmp_path / "a.csv"),
                 "-q"]) == 0
    scorer = find_graph(path, threads=2)
    os.utime(scorer.path)  # another run marks it used too
    assert scorer._forward_for(PARALLEL_RUNS_MIN_IMAGES)[0] == 2


def test_a_native_resolution_graph_runs_side_by_side_only_as_many_as_memory_holds(tmp_path, examples_dir, monkeypatch):
    import contentiqa.inference.threads as th
    from contentiqa.inference.onnx_runtime import find_graph
    from contentiqa.inference.threads import PARALLEL_RUNS_MIN_IMAGES
    from contentiqa.models.registry import save_checkpoint

    path = save_checkpoint(tiny_model(seed=0), tmp_path / "m.pt")  # IQA-CR: native resolution
    assert main(["score", example_images(examples_dir)[0], "--model", str(path), "-o", str(tmp_path / "a.csv"),
                 "-q"]) == 0
    scorer = find_graph(path, threads=4)
    assert scorer.native_resolution and scorer._forward_for(PARALLEL_RUNS_MIN_IMAGES)[0] == 4
    monkeypatch.setattr(th, "available_memory", lambda: 2 * 2**30)  # half of it holds one run at 2048 px
    assert scorer._forward_for(PARALLEL_RUNS_MIN_IMAGES)[0] == 1


def test_onnxruntime_that_does_not_load_is_told_apart_from_a_missing_one_and_from_ctrl_c(monkeypatch):
    """Ctrl-C while onnxruntime's native part loaded (its ImportError carries the KeyboardInterrupt)
    was 'the package is missing, reinstall' and exit 2, not an interruption."""
    import builtins

    from contentiqa.inference.onnx_runtime import require_onnxruntime
    from contentiqa.utils.extras import ExtraMissing

    real = builtins.__import__

    def failing(why: BaseException | None):
        def fake(name, *args, **kwargs):
            if name != "onnxruntime":
                return real(name, *args, **kwargs)
            try:
                if why is not None:
                    raise why
            except BaseException:
                raise ImportError("initialization failed")  # noqa: B904 (as the native module does it)
            raise ImportError("libonnxruntime.so: cannot open shared object file")
        return fake

    monkeypatch.setattr(builtins, "__import__", failing(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        require_onnxruntime()
    monkeypatch.setattr(builtins, "__import__", failing(None))
    with pytest.raises(ExtraMissing, match=r"needs a working 'onnxruntime' package \(importing it failed: libonnx"):
        require_onnxruntime()
    monkeypatch.setattr(builtins, "__import__", real)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ExtraMissing, match=r"needs the 'onnxruntime' package, which this install lacks"):
        require_onnxruntime()
