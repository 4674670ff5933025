"""The ONNX graphs shipped inside the package (tools/build_graphs.py): one per shipped tag (fp32,
plus int8 where that is the tag's default), each made from the weights beside it, scoring as
the PyTorch model does, and what a fresh install scores with (no cache, no torch)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from contentiqa.inference.onnx_runtime import find_graph_file, graph_places, shipped_graph_path  # noqa: E402
from contentiqa.inference.quantize import default_precision  # noqa: E402
from contentiqa.models.registry import list_pretrained, shipped_weights_path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
TAGS = list_pretrained()
TOL = 1e-3
"""ONNX Runtime against PyTorch on the normalised [0, 1] score and on category probabilities."""


def _tool():
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_graphs", REPO / "tools" / "build_graphs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_shipped_tag_has_its_graphs_and_no_other_graph_ships():
    wanted = _tool().wanted_graphs()
    assert {spec for spec, _, _ in wanted.values()} == set(TAGS)
    for spec in TAGS:
        weights = shipped_weights_path(spec)
        assert shipped_graph_path(weights, "fp32") in wanted
        assert (shipped_graph_path(weights, "int8") in wanted) == (default_precision(weights) == "int8")
    shipped = set(Path(str(SRC / "contentiqa" / "weights")).glob("*.onnx"))
    assert shipped == set(wanted), "rerun: PYTHONPATH=src python tools/build_graphs.py"


def test_the_graphs_share_their_tensors_and_keep_them_exact():
    """Every large tensor lies in the one shared file, once: the graphs hold the network only, and
    a tensor two graphs hold (the frozen ImageNet backbones) is stored once."""
    import onnx

    tool = _tool()
    shared = SRC / "contentiqa" / "weights" / tool.SHARED
    seen: dict[tuple[int, int], str] = {}
    shared_refs = 0
    for path in tool.wanted_graphs():
        assert path.stat().st_size < 1_000_000  # the network, not its weights
        for t in onnx.load(str(path), load_external_data=False).graph.initializer:
            if t.data_location != onnx.TensorProto.EXTERNAL:
                assert len(t.raw_data) < tool.SMALLEST_SHARED
                continue
            ext = {e.key: e.value for e in t.external_data}
            assert ext["location"] == shared.name and int(ext["offset"]) % tool.ALIGN == 0
            span = (int(ext["offset"]), int(ext["length"]))
            assert span[0] + span[1] <= shared.stat().st_size
            shared_refs += span in seen
            seen.setdefault(span, path.name)
    assert shared_refs > 0  # some tensors really are shared between graphs
    assert sum(n for _, n in seen) <= shared.stat().st_size < sum(n for _, n in seen) + tool.ALIGN * len(seen)


@pytest.mark.parametrize("path", sorted(_tool().wanted_graphs()), ids=lambda p: p.name)
def test_a_shipped_graph_is_the_one_of_the_weights_beside_it(path):
    """Its key is that of the weights file (and calibration) beside it: replaced weights with a
    graph not rebuilt fail here, and are never scored with the old graph."""
    spec, weights, precision = _tool().wanted_graphs()[path]
    assert _tool().stale(path, weights, precision) is None, "rerun: PYTHONPATH=src python tools/build_graphs.py"
    assert graph_places(weights, precision)[0][0] == path  # looked for first
    from contentiqa.inference.onnx_runtime import read_metadata

    meta = read_metadata(path)
    assert meta.get("precision", "fp32") == precision and meta["source_checkpoint"] == weights.name
    assert os.stat(path).st_mode & 0o044 == 0o044  # readable by everyone, as package files are


@pytest.mark.slow
@pytest.mark.parametrize("spec", TAGS)
def test_shipped_fp32_graph_scores_as_pytorch(spec, examples_dir):
    """Every shipped tag's fp32 graph against its PyTorch model on the example photos (full
    size, as `contentiqa score` feeds them): within 1e-3 on the normalised score and on the
    category probabilities."""
    import contentiqa
    from contentiqa.inference.onnx_runtime import OnnxScorer

    weights = shipped_weights_path(spec)
    graph = find_graph_file(weights)
    assert graph == shipped_graph_path(weights)
    photos = sorted(str(p) for p in examples_dir.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    model = contentiqa.create_model(spec)
    scorer = OnnxScorer.from_file(graph, threads=1)
    lo, hi = model.score_range
    for want, got in zip(model.predict(photos, batch_size=1), scorer.predict(photos)):
        assert want.ok and got.ok
        assert abs(want.score - got.score) / (hi - lo) < TOL, (spec, want.path)
        if want.probabilities:
            assert max(abs(want.probabilities[c] - got.probabilities[c]) for c in want.probabilities) < TOL


def test_a_fresh_install_scores_every_default_with_its_shipped_graph_and_no_torch(tmp_path, examples_dir):
    """No export cache and torch blocked: `score` runs the shipped graph of each registered
    default at its default precision, and the rows record that graph's precision."""
    photo = str(sorted(examples_dir.glob("*.JPG"))[0])
    code = ("import sys; sys.modules['torch'] = None\n"  # any import of torch fails, as without it
            "from contentiqa.cli.main import main\n"
            "rc = main(sys.argv[1:])\n"
            "print('RESULT', rc, sorted(m for m in ('torch', 'timm', 'pandas') if sys.modules.get(m)))\n")
    env = {**os.environ, "PYTHONPATH": str(SRC), "CONTENTIQA_CACHE_DIR": str(tmp_path / "empty-cache")}
    for name in ("ie-iqa", "iqa-cr"):
        out = tmp_path / f"{name}.csv"
        proc = subprocess.run([sys.executable, "-c", code, "score", photo, "-m", name, "-o", str(out)],
                              capture_output=True, text=True, env=env, timeout=300)
        assert "RESULT 0 []" in proc.stdout, proc.stderr[-2000:]
        assert "ONNX Runtime: " + str(SRC / "contentiqa" / "weights") in proc.stderr
        import csv

        (row,) = csv.DictReader(open(out, encoding="utf-8"))
        weights = shipped_weights_path(name)
        assert row["precision"] == default_precision(weights) and row["weights"] == weights.name and float(row["score"]) >= 0
    assert not (tmp_path / "empty-cache").exists()  # nothing exported, nothing cached


def test_the_build_tool_check_mode_agrees(capsys):
    assert _tool().main(["--check"]) == 0, capsys.readouterr().err


def test_shipped_graph_metadata_are_plain_json():
    """Every graph says what it is without contentiqa: the scale, categories and preprocessing."""
    from contentiqa.inference.onnx_runtime import read_metadata

    for path in _tool().wanted_graphs():
        meta = read_metadata(path)
        assert json.loads(meta["outputs"])[0] in ("score", "logits")
        assert len(json.loads(meta["mean"])) == 3 and np.isfinite(float(meta["score_high"]))
