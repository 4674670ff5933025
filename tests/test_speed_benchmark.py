"""Smoke test of benchmarks/speed.py: every measurement runs, on two tiny images with a tiny
model (the real benchmark is run by hand: `python benchmarks/speed.py`)."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("onnxruntime")
pytest.importorskip("psutil")

from tiny_models import cached_loader, one_torch_thread, tiny_checkpoint, tiny_model  # noqa: E402,F401

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def speed(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("speed", None)
    return importlib.import_module("speed")


def test_speed_benchmark_runs_end_to_end(tmp_path, speed, monkeypatch, rng):
    import contentiqa.models.registry as registry
    from contentiqa.backbones import create_backbone

    monkeypatch.setattr(registry, "load_checkpoint", cached_loader(registry.load_checkpoint))
    monkeypatch.setenv("CONTENTIQA_CACHE_DIR", str(tmp_path / "cache"))  # restored afterwards
    real = []
    for k in range(2):
        p = tmp_path / f"real{k}.jpg"
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype="uint8")).save(p, quality=90)
        real.append(str(p))
    generated = {(80, 60): speed.generate_images(tmp_path / "gen", real, (80, 60), 1)}
    rss_files = [speed.generate_images(tmp_path / "rss", real, s, 1, tag="r")[0] for s in [(48, 40), (40, 48)]]
    models = {"tiny": {"model": tiny_model(), "ckpt": tiny_checkpoint(), "weights": "tiny random"}}
    payload = speed.run_benchmark(
        models, real, generated, rss_files, tmp_path, repeats=1, backbone_runs=1, batch_sizes={"tiny": [1, 2]},
        rss_inputs=12, rss_every=4, backbone_module=create_backbone("efficientnet_lite0", pretrained=False),
        log=lambda msg: None, subprocesses=False,
    )
    r = payload["models"]["tiny"]
    for key in ("naive", "fast_torch", "fast_onnx"):
        assert r[key]["ips"] > 0
    assert r["fast_onnx"]["vs_naive"] > 0 and r["fast_onnx"]["vs_limit"] > 0
    assert set(payload["batch"]["tiny"]) == {"torch_b1", "torch_b2", "onnx_b1", "onnx_b2"}
    assert set(payload["pixels"]["tiny"]) == {"torch_80x60", "onnx_80x60"}
    assert len(payload["ablations"]["tiny"]) == 7
    assert payload["rss"]["onnx"]["n_inputs"] == 12 and len(payload["rss"]["onnx"]["series"]) == 3
    md = speed.render_markdown({**payload, "photo_source": "test"}, "pytest")
    assert "x naive" in md and "Resident memory" in md


def test_the_limit_times_each_pass_at_its_own_size():
    """IE-IQA's limit timed its 384-px pass twice: its intelligibility network reads 224 px."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import speed

    from contentiqa.models import create_model

    ie = create_model("ie-iqa", pretrained=False, distortion_pretrained=False)
    assert speed.pass_hws(ie, speed.backbone_passes(ie), (500, 400)) == [(384, 384), (224, 224)]
    cr = create_model("iqa-cr", pretrained=False, backbone_pretrained=False)
    assert speed.pass_hws(cr, speed.backbone_passes(cr), (500, 400)) == [(500, 400)]  # the photo as it is
    # a fixed size that happens to be clive-dev's side is still fixed (it read as the photo's)
    ie500 = create_model("ie-iqa", pretrained=False, distortion_pretrained=False, intelligibility_input_size=500)
    assert speed.pass_hws(ie500, speed.backbone_passes(ie500), (750, 1000)) == [(384, 384), (500, 500)]
