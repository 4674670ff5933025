"""int8 ONNX graphs (contentiqa.inference.quantize), the precision in the export cache and on the
score CLI, and the thread plan (contentiqa.inference.threads) on made-up machine loads."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from contentiqa.cli.main import main  # noqa: E402
from contentiqa.inference.onnx import cached_session, export_onnx  # noqa: E402
from contentiqa.inference.onnx_runtime import FINGERPRINT_KEY, make_session  # noqa: E402
from contentiqa.inference.quantize import (  # noqa: E402
    Int8Recipe,
    QuantizationError,
    calibration_path,
    check_precision,
    quantize_for_weights,
    quantize_onnx,
    read_calibration,
    write_calibration,
)
from contentiqa.inference.threads import choose_threads, plan_threads  # noqa: E402
from tiny_models import one_torch_thread, tiny_model  # noqa: E402,F401

CNN = (r"^/model/(conv_stem|bn1|blocks\.\d|conv_head|bn2)/",)  # IQA-CR's backbone, as benchmarks/int8.py


def smooth_batches(n: int, h: int = 96, w: int = 128, seed: int = 0) -> list[np.ndarray]:
    """Normalised photo-like inputs: smooth gradients plus a little noise (not white noise,
    whose ranges no photo has)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for _ in range(n):
        a = rng.uniform(-1.5, 1.5, size=(3, 3)).astype(np.float32)
        img = a[:, :1, None] * (xx / w) + a[:, 1:2, None] * (yy / h) + a[:, 2:3, None]
        out.append((img + 0.1 * rng.standard_normal((3, h, w), dtype=np.float32))[None])
    return out


@pytest.fixture(scope="module")
def tiny_fp32(tmp_path_factory):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = tiny_model()
    folder = tmp_path_factory.mktemp("q")
    from contentiqa.models.registry import save_checkpoint

    weights = save_checkpoint(model, folder / "tiny-iqa-cr.pt")
    return model, export_onnx(model, folder / "tiny.onnx"), Path(weights)


@pytest.fixture(scope="module")
def calibrated(tiny_fp32, tmp_path_factory):
    """The tiny weights again, in their own folder, with a calibration file beside them (made
    once: calibrating is the slow part)."""
    _, fp32, weights = tiny_fp32
    copy = tmp_path_factory.mktemp("cal") / weights.name
    copy.write_bytes(weights.read_bytes())
    write_calibration(fp32, iter(smooth_batches(4)), calibration_path(copy), weights=copy, recipe=Int8Recipe(include=CNN),
                      source="test")
    return copy


def scores(path, xs) -> np.ndarray:
    s = make_session(path, threads=1)
    return np.array([s.run(["score"], {"image": x})[0][0] for x in xs])


def test_static_int8_runs_and_stays_close_to_fp32(tiny_fp32, tmp_path):
    import onnx

    _, fp32, _ = tiny_fp32
    q = quantize_onnx(fp32, tmp_path / "int8.onnx", method="static", calibration=iter(smooth_batches(6)),
                      op_types=Int8Recipe().op_types, include=CNN)
    graph = onnx.load(str(q))
    ops = {n.op_type for n in graph.graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops  # it really is quantized
    meta = {p.key: p.value for p in graph.metadata_props}
    assert meta["precision"] == "int8" and json.loads(meta["quantization"])["method"] == "static"
    assert meta["model_name"] == "iqa-cr"  # the fp32 file's metadata carried over
    # The Transformer stays float: no quantized MatMul.
    assert not any(n.op_type == "MatMul" and any("QuantizeLinear" in i for i in n.input) for n in graph.graph.node)
    test = smooth_batches(4, seed=1) + smooth_batches(1, h=120, w=88, seed=2)  # another size: dynamic H, W
    ref, got = scores(fp32, test), scores(q, test)
    assert got.shape == ref.shape
    assert np.all(np.isfinite(got))
    assert np.max(np.abs(got - ref)) < 0.2  # the tiny random net scores around -0.8 +- 0.1; broken scales give >> 1
    assert not np.array_equal(got, ref)


def test_dynamic_int8_runs(tiny_fp32, tmp_path):
    _, fp32, _ = tiny_fp32
    q = quantize_onnx(fp32, tmp_path / "dyn.onnx", method="dynamic", include=CNN)
    x = smooth_batches(2, seed=3)
    assert np.max(np.abs(scores(q, x) - scores(fp32, x))) < 0.2


def test_quantize_refuses_what_it_cannot_do(tiny_fp32, tmp_path):
    _, fp32, _ = tiny_fp32
    # include patterns matching no node quantized the whole graph (ONNX Runtime's empty list is "all")
    with pytest.raises(QuantizationError, match="include patterns match no node"):
        quantize_onnx(fp32, tmp_path / "x.onnx", method="dynamic", include=["^/nomatch/"])
    with pytest.raises(QuantizationError, match="calibration"):
        quantize_onnx(fp32, tmp_path / "x.onnx", method="static")
    with pytest.raises(ValueError, match="unknown quantization method"):
        quantize_onnx(fp32, tmp_path / "x.onnx", method="fp8")
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        quantize_onnx(tmp_path / "missing.onnx", tmp_path / "x.onnx", method="dynamic")
    assert not list(tmp_path.glob("*.data"))  # no stray external-data files
    assert check_precision("int8") == "int8"
    with pytest.raises(ValueError, match="fp32, int8"):
        check_precision("fp16")


def test_a_graph_with_external_data_quantizes_when_symbolic_shape_inference_fails(tiny_fp32, tmp_path, monkeypatch):
    """Shipped graphs keep their tensors in graphs.bin beside them. When ONNX Runtime's symbolic
    shape inference fails, the plain-inference retry must still find those tensors (given a path,
    it copies the graph where the relative graphs.bin is not)."""
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    _, fp32, _ = tiny_fp32
    shipped = tmp_path / "ship" / "tiny.onnx"
    shipped.parent.mkdir()
    onnx.save(onnx.load(str(fp32)), str(shipped), save_as_external_data=True, all_tensors_to_one_file=True,
              location="graphs.bin", size_threshold=0)
    assert (shipped.parent / "graphs.bin").stat().st_size > shipped.stat().st_size

    def fails(*a, **k):
        raise RuntimeError("symbolic shape inference failed")

    monkeypatch.setattr(SymbolicShapeInference, "infer_shapes", staticmethod(fails))
    q = quantize_onnx(shipped, tmp_path / "int8.onnx", method="dynamic", include=CNN)
    x = smooth_batches(2, seed=3)
    assert np.max(np.abs(scores(q, x) - scores(fp32, x))) < 0.2


def test_int8_without_sympy_names_the_extra(tiny_fp32, calibrated, tmp_path, monkeypatch, examples_dir, capsys):
    """sympy comes with [torch] but not with a core install: building an int8 graph without it is a
    one-line error naming [onnx], from the library and from the CLI, never a traceback."""
    import sys

    import contentiqa.inference.scorer as scorer
    from contentiqa.utils.extras import ExtraMissing

    _, fp32, _ = tiny_fp32
    monkeypatch.setitem(sys.modules, "onnxruntime.tools.symbolic_shape_infer", None)  # import fails
    with pytest.raises(ExtraMissing, match=r"contentiqa\[onnx\]"):
        quantize_onnx(fp32, tmp_path / "int8.onnx", method="dynamic", include=CNN)
    real = scorer.have
    monkeypatch.setattr(scorer, "have", lambda m: m != "sympy" and real(m))
    monkeypatch.setenv("CONTENTIQA_CACHE_DIR", str(tmp_path / "cache"))
    img = sorted(str(p) for p in examples_dir.glob("*.JPG"))[0]
    assert main(["score", img, "--model", str(calibrated), "--precision", "int8", "-q"]) == 2
    err = capsys.readouterr().err
    assert "needs the 'sympy' package" in err and "contentiqa[onnx]" in err and "Traceback" not in err
    # weights without a calibration: said first, not a package that could not help (installed, it
    # only led to this)
    _, _, uncalibrated = tiny_fp32
    assert main(["score", img, "--model", str(uncalibrated), "--precision", "int8", "-q"]) == 2
    err = capsys.readouterr().err
    assert "no int8 calibration for tiny-iqa-cr.pt" in err and "sympy" not in err and "use fp32" in err


def test_calibration_file_round_trip_and_checks(tiny_fp32, calibrated, tmp_path):
    _, fp32, weights = tiny_fp32
    assert calibration_path(weights).name == "tiny-iqa-cr.int8.json"
    with pytest.raises(QuantizationError, match="no int8 calibration"):
        quantize_for_weights(fp32, tmp_path / "a.onnx", weights)
    cal, weights = calibration_path(calibrated), calibrated
    data = read_calibration(cal, weights)
    assert data["recipe"]["include"] == list(CNN) and data["ranges"]["data"]
    q = quantize_for_weights(fp32, tmp_path / "a.onnx", weights)  # no photos needed now
    x = smooth_batches(2, seed=5)
    assert np.max(np.abs(scores(q, x) - scores(fp32, x))) < 0.2
    other = tmp_path / "other.pt"
    other.write_bytes(weights.read_bytes() + b"x")
    with pytest.raises(QuantizationError, match="other weights"):
        read_calibration(cal, other)
    bad = dict(data, ranges={"data": {}, "CLS": "TensorsData", "calibration_method": data["ranges"]["calibration_method"]})
    broken = tmp_path / "w" / "tiny-iqa-cr.pt"
    broken.parent.mkdir()
    broken.write_bytes(weights.read_bytes())
    calibration_path(broken).write_text(json.dumps(bad))
    with pytest.raises(QuantizationError, match="do not match this graph"):
        quantize_for_weights(fp32, tmp_path / "b.onnx", broken)
    calibration_path(broken).write_text("{not json")
    with pytest.raises(QuantizationError, match="not a readable calibration file"):
        quantize_for_weights(fp32, tmp_path / "b.onnx", broken)


def test_the_default_recipe_calibrates_a_graph_with_integer_shape_arithmetic(tiny_fp32, tmp_path):
    """IQA-CR's adaptive pooling adds int64 sizes: the range check asked for ranges of those
    Adds, which are never calibrated, so a calibration made with the default recipe was refused
    by every later quantization ("made for another export")."""
    _, fp32, weights = tiny_fp32
    mine = tmp_path / weights.name
    mine.write_bytes(weights.read_bytes())
    write_calibration(fp32, iter(smooth_batches(2)), calibration_path(mine), weights=mine, recipe=Int8Recipe())
    q = quantize_for_weights(fp32, tmp_path / "q.onnx", mine)
    assert np.isfinite(scores(q, smooth_batches(1, seed=3))).all()


def test_calibration_photos_read_lazily_from_relative_paths_are_found(tiny_fp32, tmp_path, monkeypatch):
    """The quantizer works in a temporary folder: a generator reading photos by relative path
    found none there ("No data is collected")."""
    _, fp32, _ = tiny_fp32
    (tmp_path / "cal").mkdir()
    for i, x in enumerate(smooth_batches(2)):
        np.save(tmp_path / "cal" / f"{i}.npy", x)
    monkeypatch.chdir(tmp_path)

    def photos(folder):
        for p in sorted(Path(folder).glob("*.npy")):
            yield np.load(p)

    q = quantize_onnx(fp32, tmp_path / "q.onnx", calibration=photos("cal"), op_types=("Conv",), include=CNN)
    assert q.is_file()


@pytest.mark.parametrize("edit, words", [
    (lambda d: d.update(recipe="abc"), "'recipe' is not a mapping"),
    (lambda d: d["recipe"].update(op_types=5), "recipe.op_types is not a list of strings"),
    (lambda d: d["recipe"].update(include=["("]), "recipe pattern '('"),
    (lambda d: d["recipe"].update(method="bogus"), "recipe.method is one of static, dynamic"),
    (lambda d: d.update(default_precision="int4"), "default_precision is one of fp32, int8"),
    (lambda d: next(iter(d["ranges"]["data"].values())).update(lowest=5), "is not lowest / highest numbers"),
    (lambda d: next(iter(d["ranges"]["data"].values())).update(
        lowest={"data": [6.0], "dtype": "float32", "CLS": "numpy.array"},
        highest={"data": [0.0], "dtype": "float32", "CLS": "numpy.array"}), "the lowest first"),
    (lambda d: next(iter(d["ranges"]["data"].values())).update(
        highest={"data": [float("inf")], "dtype": "float32", "CLS": "numpy.array"}), "must be finite"),
])
def test_a_damaged_calibration_file_is_named_not_a_traceback_nor_a_wrong_graph(calibrated, tmp_path, edit, words):
    """Edits that kept the weights' hash gave AttributeError / TypeError / re.error tracebacks,
    or int8 graphs scoring every photo alike (swapped ends) or NaN (infinite ends)."""
    data = json.loads(calibration_path(calibrated).read_text())
    edit(data)
    mine = tmp_path / calibrated.name
    mine.write_bytes(calibrated.read_bytes())
    calibration_path(mine).write_text(json.dumps(data))
    with pytest.raises(QuantizationError, match=re.escape(words)) as info:
        read_calibration(calibration_path(mine), mine)
    assert str(calibration_path(mine)) in str(info.value) and "damaged calibration file" in str(info.value)
    calibration_path(mine).write_text("[" * 100_000 + "]" * 100_000)  # too deep for json: RecursionError
    with pytest.raises(QuantizationError, match="not a readable calibration file"):
        read_calibration(calibration_path(mine), mine)


def test_cache_key_and_file_differ_by_precision(calibrated, tmp_path):
    from contentiqa.inference.onnx_runtime import weights_cache_key
    from contentiqa.models.registry import load_checkpoint

    model = load_checkpoint(calibrated)
    folder = tmp_path / "cache"
    for weights_file in (None, calibrated):  # a model in memory, and one keyed by its weights file
        s32, p32, _ = cached_session(model, folder, threads=1, weights_file=weights_file)
        s8, p8, created = cached_session(model, folder, threads=1, precision="int8", weights_file=weights_file)
        assert created and p8 != p32 and "-int8-" in p8.name and "-fp32-" in p32.name
        k32 = s32.get_modelmeta().custom_metadata_map[FINGERPRINT_KEY]
        k8 = s8.get_modelmeta().custom_metadata_map[FINGERPRINT_KEY]
        assert k8 != k32
        assert s8.get_modelmeta().custom_metadata_map["precision"] == "int8"
        _, again, created = cached_session(model, folder, threads=1, precision="int8", weights_file=weights_file)
        assert again == p8 and not created  # reused
    # the int8 key of a weights file follows its calibration file (a new calibration, a new graph)
    before = weights_cache_key(calibrated, precision="int8")
    cal = calibration_path(calibrated)
    saved = cal.read_bytes()
    try:
        cal.write_bytes(saved + b" ")
        assert weights_cache_key(calibrated, precision="int8") != before
        assert weights_cache_key(calibrated) == weights_cache_key(calibrated)  # fp32 ignores it
    finally:
        cal.write_bytes(saved)
    with pytest.raises(ValueError, match="unknown precision"):
        cached_session(model, folder, threads=1, precision="bf16")


def test_int8_of_a_model_changed_in_memory_is_refused_and_never_filed_under_its_file(calibrated, tmp_path):
    """The changed model's fp32 export was filed under the file's key (every later `score` of the
    file ran it: other scores, silently) and the file's int8 graph returned as the changed model's;
    a recalibrated file's model in memory kept its old int8 graph."""
    import torch

    from contentiqa.inference.onnx_runtime import find_graph_file
    from contentiqa.models.registry import load_checkpoint

    folder = tmp_path / "cache"
    model = load_checkpoint(calibrated)
    with torch.no_grad():
        next(p for p in model.parameters() if p.requires_grad).add_(0.5)
    with pytest.raises(QuantizationError, match="no longer those weights"):
        cached_session(model, folder, threads=1, precision="int8")
    assert find_graph_file(calibrated, "fp32", folder=folder) is None  # nothing filed under the file's key
    model = load_checkpoint(calibrated)
    _, first, _ = cached_session(model, folder, threads=1, precision="int8")
    cal = calibration_path(calibrated)
    saved = cal.read_bytes()
    try:
        cal.write_bytes(saved.replace(b'"source"', b' "source"', 1))  # recalibrated (the same ranges will do)
        _, second, created = cached_session(model, folder, threads=1, precision="int8")
        assert created and second != first
    finally:
        cal.write_bytes(saved)


def test_score_cli_precision(tiny_fp32, calibrated, tmp_path, examples_dir, capsys, monkeypatch):
    monkeypatch.setenv("CONTENTIQA_CACHE_DIR", str(tmp_path / "cache"))
    _, fp32, weights = tiny_fp32
    img = sorted(str(p) for p in examples_dir.glob("*.JPG"))[0]
    with pytest.raises(SystemExit) as exc:
        main(["score", img, "--model", str(weights), "--precision", "int4"])
    assert exc.value.code == 2
    assert main(["score", img, "--model", str(weights), "--precision", "int8", "--runtime", "torch"]) == 2
    assert "not with the PyTorch runtime" in capsys.readouterr().err
    assert main(["score", img, "--onnx-model", str(fp32), "--precision", "int8"]) == 2
    assert "runs as it is" in capsys.readouterr().err
    assert main(["score", img, "--model", str(weights), "--precision", "int8", "-q"]) == 2  # no calibration beside it
    assert "no int8 calibration" in capsys.readouterr().err
    out = tmp_path / "s.csv"
    assert main(["score", img, "--model", str(calibrated), "--precision", "int8", "-q", "-o", str(out)]) == 0
    assert out.read_text().count("\n") == 2
    import csv

    assert [r["precision"] for r in csv.DictReader(open(out))] == ["int8"]  # the row says which graph scored it
    # --resume does not mix the two graphs' scores: fp32 is refused, naming what matches
    second = sorted(str(p) for p in examples_dir.glob("*.JPG"))[1]
    before = out.read_text()
    assert main(["score", img, second, "--model", str(calibrated), "--precision", "fp32", "-q", "-o", str(out),
                 "--resume"]) == 2
    err = capsys.readouterr().err
    assert "precision int8" in err and "--precision int8" in err and out.read_text() == before
    assert main(["score", img, second, "--model", str(calibrated), "--precision", "int8", "-q", "-o", str(out),
                 "--resume"]) == 0
    assert [r["precision"] for r in csv.DictReader(open(out))] == ["int8", "int8"]
    # the torch path records fp32, or its autocast dtype
    out2 = tmp_path / "t.csv"
    assert main(["score", img, "--model", str(calibrated), "--runtime", "torch", "-q", "-o", str(out2)]) == 0
    assert [r["precision"] for r in csv.DictReader(open(out2))] == ["fp32"]
    assert main(["score", img, "--model", str(calibrated), "--autocast", "bf16", "-q", "-o", str(out2), "--force"]) == 0
    assert [r["precision"] for r in csv.DictReader(open(out2))] == ["bf16"]
    assert main(["score", img, "--model", str(calibrated), "--precision", "bf16", "-q", "-o", str(out2), "--force"]) == 0
    assert [r["precision"] for r in csv.DictReader(open(out2))] == ["bf16"]  # --precision bf16: the new name
    assert main(["score", img, "--model", str(calibrated), "--autocast", "bf16", "--runtime", "onnx", "-q"]) == 2
    assert "autocast: not with the ONNX Runtime" in capsys.readouterr().err
    assert main(["score", img, "--model", str(calibrated), "--autocast", "bf16", "--precision", "int8", "-q"]) == 2


# -- the thread plan ------------------------------------------------------------------------------------
@pytest.mark.parametrize("cpus,busy,threads,spinning", [
    (2, 0.0, 2, False),   # idle: every core (spinning measured slower even then)
    (2, 0.3, 2, False),   # a little background noise does not take a core
    (2, 0.6, 1, False),   # one competitor: the free core only, no spinning
    (2, 1.0, 1, False),
    (2, 5.0, 1, False),   # overloaded: still one
    (8, 3.2, 5, False),
    (1, 0.0, 1, False),   # one thread never spins
])
def test_choose_threads_from_load(cpus, busy, threads, spinning):
    plan = choose_threads(cpus, busy)
    assert (plan.threads, plan.spinning) == (threads, spinning)
    assert str(threads) in plan.describe()


def test_requested_threads_are_kept_and_not_sampled(monkeypatch):
    import contentiqa.inference.threads as th

    monkeypatch.setattr(th, "busy_cores", lambda *a, **k: pytest.fail("sampled although --threads was given"))
    plan = plan_threads(3)
    assert plan.threads == 3 and not plan.spinning
    assert choose_threads(2, 1.7, requested=4).threads == 4


def test_plan_threads_follows_the_measured_load(monkeypatch):
    import contentiqa.inference.threads as th

    monkeypatch.setattr(th, "_affinity", lambda: set(range(4)))
    monkeypatch.setattr(th, "cpu_quota", lambda: None)
    monkeypatch.setattr(th, "busy_cores", lambda *a, **k: 2.0)
    assert plan_threads().threads == 2
    monkeypatch.setattr(th, "busy_cores", lambda *a, **k: 0.0)
    assert plan_threads().threads == 4 and not plan_threads().spinning


def test_busy_cores_is_a_sane_number():
    from contentiqa.inference.threads import busy_cores

    v = busy_cores(0.05)
    assert 0.0 <= v <= 1e3


def test_cpu_sample_counts_only_the_other_processes(monkeypatch):
    """A sample started at the top of a command spans its own imports: that CPU time is ours,
    not a competitor's, and a window already long enough costs no wait."""
    import contentiqa.inference.threads as th

    ticks = os.sysconf("SC_CLK_TCK")
    stats = iter([(1000, 10_000, 4), (1000 + int(0.4 * ticks) + 150, 10_000 + 400, 4)])  # 400 jiffies over 4 CPUs
    own = iter([5.0, 5.4])  # this process used 0.4 s of CPU meanwhile
    clock = iter([100.0, 100.5, 100.5])  # started; its age; the wait
    monkeypatch.setattr(th, "_proc_stat", lambda: next(stats))
    monkeypatch.setattr(th.time, "process_time", lambda: next(own))
    monkeypatch.setattr(th.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(th.time, "sleep", lambda s: pytest.fail(f"waited {s} s although the window was long enough"))
    sample = th.CpuSample.start()
    # 150 busy jiffies of others out of 400: 0.375 of the machine = 1.5 of its 4 cores
    assert sample.busy_others(0.1) == pytest.approx(1.5)


def test_the_cpu_sample_counts_only_the_cpus_this_process_may_use(monkeypatch, tmp_path):
    """The machine's line counted a host's other cores: a job pinned to 4 idle cores of a busy
    16-core host saw them all busy and ran 1 thread."""
    import contentiqa.inference.threads as th

    def stat(busy_elsewhere: int, busy_mine: int, t: int) -> str:
        lines = [f"cpu  {busy_elsewhere * 12 + busy_mine * 4} 0 0 {(t - busy_elsewhere) * 12 + (t - busy_mine) * 4} 0 0 0 0"]
        lines += [f"cpu{i} {busy_elsewhere if i < 12 else busy_mine} 0 0 "
                  f"{t - busy_elsewhere if i < 12 else t - busy_mine} 0 0 0 0" for i in range(16)]
        return "\n".join(lines) + "\nintr 1\n"

    path = tmp_path / "stat"
    monkeypatch.setattr(th, "PROC_STAT", str(path))
    monkeypatch.setattr(th, "_affinity", lambda: {12, 13, 14, 15})
    path.write_text(stat(0, 0, 100))
    first = th._proc_stat()
    path.write_text(stat(100, 0, 200))  # cores 0-11 fully busy since, this job's 12-15 idle
    now = th._proc_stat()
    assert first[2] == now[2] == 4 and now[0] - first[0] == 0 and now[1] - first[1] == 400
    monkeypatch.setattr(th, "_affinity", lambda: None)  # where there is no affinity mask: the machine's line
    assert th._proc_stat() == (1200, 3200, os.cpu_count())


def test_omp_num_threads_caps_the_cpus_a_plan_uses(monkeypatch):
    """PyTorch kept to a batch job's $OMP_NUM_THREADS; ONNX Runtime's plan took every core of the node."""
    import contentiqa.inference.threads as th

    monkeypatch.setattr(th, "_affinity", lambda: set(range(16)))
    monkeypatch.setattr(th, "busy_cores", lambda **kw: 8.0)  # other jobs on half the node
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert th.plan_threads(images=1).threads == 4  # the share, of the 8 free cores (not 4 minus the 8 busy)
    assert th.plan_threads(images=20).compute_threads == 4
    assert th.usable_cpus() == 16  # what decoding threads are sized from: not an OpenMP setting
    for value in ("0", "x", ""):
        monkeypatch.setenv("OMP_NUM_THREADS", value)
        assert th.plan_threads(images=1).threads == 8


def test_a_containers_cpu_quota_bounds_the_cpus_a_plan_uses(monkeypatch, tmp_path):
    """docker --cpus / a Kubernetes CPU limit set a quota, not the affinity mask: a pod limited to
    1 CPU on a 16-core node planned 16 threads, all throttled."""
    import contentiqa.inference.threads as th

    monkeypatch.setattr(th, "_affinity", lambda: set(range(16)))
    monkeypatch.setattr(th, "busy_cores", lambda **kw: 0.0)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    v2, quota, period = tmp_path / "cpu.max", tmp_path / "cfs_quota_us", tmp_path / "cfs_period_us"
    monkeypatch.setattr(th, "CPU_QUOTA_FILES", ((str(v2), None), (str(quota), str(period))))
    assert th.cpu_quota() is None and th.usable_cpus() == 16  # no quota files: the mask
    v2.write_text("150000 100000\n")  # 1.5 CPUs
    assert th.cpu_quota() == 1.5 and th.usable_cpus() == 2 and th.plan_threads(images=1).threads == 2
    # other pods busy on 10 of the node's 16 cores take none of this one's quota of 4: 4 threads, not 1
    v2.write_text("400000 100000\n")
    monkeypatch.setattr(th, "busy_cores", lambda **kw: 10.0)
    assert th.plan_threads(images=1).threads == 4 and th.plan_threads(images=100).compute_threads == 4
    monkeypatch.setattr(th, "busy_cores", lambda **kw: 14.0)  # 2 free: fewer than the quota
    assert th.plan_threads(images=1).threads == 2
    monkeypatch.setattr(th, "busy_cores", lambda **kw: 0.0)
    v2.write_text("150000 100000\n")
    v2.write_text("max 100000\n")  # no quota (v2), then cgroup v1's files
    quota.write_text("100000\n")
    period.write_text("100000\n")
    assert th.usable_cpus() == 1 and th.plan_threads(images=20).compute_threads == 1
    quota.write_text("-1\n")
    assert th.usable_cpus() == 16


def test_native_resolution_runs_side_by_side_only_as_many_as_memory_holds(monkeypatch):
    """Each run holds its own activations: one run per free core of a many-core machine took
    more memory than the documented bound (about 0.5 GB more per run at 2048 px)."""
    import contentiqa.inference.threads as th

    monkeypatch.setattr(th, "available_memory", lambda: 4 * 2**30)
    assert th.runs_within_memory(8, 2048) == 2  # half of 4 GB over ~0.8 GB a run
    assert th.runs_within_memory(8, 512) == 8
    monkeypatch.setattr(th, "available_memory", lambda: 2**20)
    assert th.runs_within_memory(8, 2048) == 1
    monkeypatch.setattr(th, "available_memory", lambda: None)  # where it cannot be read: as planned
    assert th.runs_within_memory(8, 2048) == 8
    monkeypatch.setattr(th, "available_memory", lambda: 64 * 2**30)  # --max-side 0: as for 24 MP photos
    assert th.runs_within_memory(16, None) == 5


def test_an_old_cpu_sample_is_started_again(monkeypatch):
    """After a long folder listing the plan samples the machine anew (its use now), waiting the
    sample's length."""
    import contentiqa.inference.threads as th

    now = [100.0]
    stats = iter([(0, 1000, 2), (500, 2000, 2), (900, 2400, 2)])  # others busy half the time, then all of it
    waited = []
    monkeypatch.setattr(th, "_proc_stat", lambda: next(stats))
    monkeypatch.setattr(th.time, "process_time", lambda: 1.0)
    monkeypatch.setattr(th.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(th.time, "sleep", lambda s: (waited.append(s), now.__setitem__(0, now[0] + s)))
    sample = th.CpuSample.start()
    now[0] += th.SAMPLE_MAX_AGE + 1
    assert sample.busy_others(0.1) == pytest.approx(2.0)  # the last 0.1 s only, not the average since the start (1.0)
    assert waited == [pytest.approx(0.1)]


def test_plan_threads_reads_a_started_sample(monkeypatch):
    import contentiqa.inference.threads as th

    class Sample:
        def busy_others(self, min_seconds):
            return 1.0

    monkeypatch.setattr(th, "_affinity", lambda: {0, 1})
    monkeypatch.setattr(th, "cpu_quota", lambda: None)
    monkeypatch.setattr(th, "_proc_stat", lambda: pytest.fail("sampled anew although a sample was given"))
    plan = plan_threads(images=100, sample=Sample())
    assert (plan.threads, plan.runs, plan.busy) == (1, 2, 1.0)


def test_default_precision_follows_the_shipped_measurement(calibrated, tmp_path):
    from contentiqa.inference.quantize import default_precision

    assert default_precision(None) == "fp32"
    assert default_precision(tmp_path / "missing.pt") == "fp32"
    assert default_precision(calibrated) == "fp32"  # no verdict recorded
    w = tmp_path / calibrated.name
    w.write_bytes(calibrated.read_bytes())
    data = json.loads(calibration_path(calibrated).read_text())
    calibration_path(w).write_text(json.dumps(dict(data, default_precision="int8")))
    assert default_precision(w) == "int8"
    w.write_bytes(calibrated.read_bytes() + b"changed")  # other weights: the verdict is not theirs
    assert default_precision(w) == "fp32"


def test_shipped_calibrations_match_their_weights():
    """Every shipped int8 calibration is for the weights file beside it (else score would
    silently run fp32, or refuse --precision int8)."""
    from contentiqa.inference.quantize import CALIBRATION_SUFFIX

    folder = Path(__import__("contentiqa").__file__).parent / "weights"
    files = sorted(folder.glob("*" + CALIBRATION_SUFFIX))
    for cal in files:
        weights = folder / (cal.name[: -len(CALIBRATION_SUFFIX)] + ".pt")
        data = read_calibration(cal, weights)
        assert data["default_precision"] in ("fp32", "int8")
    # the models benchmarks/int8.py measures have one for their default weights, so that
    # `score -m NAME --precision int8` works without naming a tag (the default model's too)
    from contentiqa import DEFAULT_MODEL
    from contentiqa.models.registry import shipped_weights_path

    for name in ("ie-iqa", "iqa-cr", DEFAULT_MODEL):
        weights = shipped_weights_path(name)
        assert calibration_path(weights).is_file(), f"{name}: no int8 calibration beside {weights.name} (benchmarks/int8.py --ship)"


def test_an_int8_graph_carries_its_own_cache_key_not_its_fp32_sources(tiny_fp32, calibrated, tmp_path):
    """The int8 file copied the fp32 graph's export-cache key: written over the fp32 entry, it
    was run (and its rows said int8) when fp32 was asked for."""
    from contentiqa.inference.onnx_runtime import read_metadata

    model, _, _ = tiny_fp32
    src = export_onnx(model, tmp_path / "fp.onnx", extra_metadata={FINGERPRINT_KEY: "fp32-key"}, verify=False)
    quantize_for_weights(src, tmp_path / "q.onnx", calibrated)
    assert FINGERPRINT_KEY not in read_metadata(tmp_path / "q.onnx")
    quantize_for_weights(src, tmp_path / "k.onnx", calibrated, extra_metadata={FINGERPRINT_KEY: "int8-key"})
    assert read_metadata(tmp_path / "k.onnx")[FINGERPRINT_KEY] == "int8-key"


def test_export_cli_int8(tiny_fp32, calibrated, tmp_path, capsys):
    """`contentiqa export --precision int8` writes the graph `score --precision int8` runs (the same
    calibration), says so in its metadata; without a calibration it is a usage error."""
    _, _, weights = tiny_fp32
    out = tmp_path / "m8.onnx"
    assert main(["export", str(calibrated), "--precision", "int8", "-o", str(out)]) == 0
    assert "precision int8" in capsys.readouterr().out
    import contentiqa
    from contentiqa.inference.onnx_runtime import read_metadata

    meta = read_metadata(out)
    assert meta["precision"] == "int8" and meta["int8_calibration"] == "test"
    # the fp32 graph's check against PyTorch is not claimed for the int8 graph
    assert "verified_max_abs_diff" not in meta and float(meta["fp32_verified_max_abs_diff"]) < 1e-3
    from contentiqa.inference.onnx_runtime import OnnxScorer

    scorer = OnnxScorer.from_file(out, threads=1)
    model = contentiqa.load_checkpoint(calibrated)
    session, _, _ = cached_session(model, tmp_path / "cache", threads=1, precision="int8", weights_file=calibrated)
    x = smooth_batches(2)[0]
    np.testing.assert_allclose(scorer.forward(x)["score"], session.run(["score"], {"image": x})[0], atol=1e-6)
    assert main(["export", str(weights), "--precision", "int8", "-o", str(tmp_path / "new0" / "no.onnx")]) == 2
    assert "no int8 calibration" in capsys.readouterr().err and not (tmp_path / "new0").exists()  # no folder made for it
    # a model that is not there is said as such, not blamed on a missing calibration, and no folder is made for it
    assert main(["export", "iqa-cr.nosuchtag", "--precision", "int8", "-o", str(tmp_path / "new" / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert "no weights tagged 'nosuchtag'" in err and "calibration" not in err and not (tmp_path / "new").exists()
    assert main(["export", str(tmp_path / "missing.pt"), "--precision", "int8", "-o", str(tmp_path / "m.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_many_images_run_side_by_side_one_thread_each():
    """From PARALLEL_RUNS_MIN_IMAGES images on, T free cores score T images at once (one thread
    each); fewer images split each over the threads; one free core is one run either way."""
    from contentiqa.inference.threads import PARALLEL_RUNS_MIN_IMAGES

    many = PARALLEL_RUNS_MIN_IMAGES
    plan = choose_threads(4, 0.0, images=many)
    assert (plan.threads, plan.runs, plan.compute_threads) == (1, 4, 4) and "4 images at once" in plan.describe()
    assert (choose_threads(4, 0.0, images=many - 1).threads, choose_threads(4, 0.0, images=many - 1).runs) == (4, 1)
    # beside a busy process: one run more than the free cores (side by side, a shared core slows only its run)
    assert (choose_threads(2, 1.0, images=many).threads, choose_threads(2, 1.0, images=many).runs) == (1, 2)
    assert choose_threads(16, 12.0, images=many).runs == 5 and choose_threads(2, 0.0, images=many).runs == 2
    assert (choose_threads(2, 1.0, images=many - 1).threads, choose_threads(2, 1.0, images=many - 1).runs) == (1, 1)
    assert choose_threads(2, 1.0, requested=1, images=many).runs == 1  # --threads 1: one run, whatever the load
    assert (choose_threads(2, 0.0, requested=3, images=many).runs) == 3  # --threads N: N photos at once
    assert choose_threads(4, 0.0).runs == 1  # images unknown: one run, as before


def test_export_int8_of_a_shipped_tag_is_the_graph_score_runs(tmp_path, examples_dir):
    """The export quantized a fresh fp32 export, whose weights differ from the shipped graph's
    in their last bits: other int8 scores than `score --precision int8` gave (0.3 points)."""
    import contentiqa

    out = tmp_path / "ie8.onnx"
    assert main(["export", "ie-iqa", "--precision", "int8", "-o", str(out), "--quiet"]) == 0
    photos = [str(p) for p in sorted(examples_dir.glob("*.JPG"))[:3]]
    exported = [p.score for p in contentiqa.load_scorer(str(out), threads=1).predict(photos)]
    scored = [p.score for p in contentiqa.load_scorer("ie-iqa", precision="int8", threads=1).predict(photos)]
    assert exported == pytest.approx(scored, abs=1e-4)
    # how a photo is read, as a fresh export says it: the shipped graph it is quantized from
    # predates some of these keys (ie-iqa's resize was missing)
    from contentiqa.inference.onnx import READING_METADATA, onnx_metadata
    from contentiqa.inference.onnx_runtime import read_metadata

    meta = read_metadata(out)
    fresh = onnx_metadata(contentiqa.create_model("ie-iqa", pretrained=True), json.loads(meta["outputs"]))
    assert {k: meta.get(k) for k in READING_METADATA} == {k: fresh[k] for k in READING_METADATA}
    assert "round(v / 257)" in meta["image_loading"] and meta["precision"] == "int8"


def test_sigterm_during_export_leaves_no_temporary(tiny_fp32, tmp_path, monkeypatch):
    """A SIGTERM while the graph was written left a hidden .NAME.XXXX.tmp of the graph's size."""
    import signal

    import contentiqa.inference.onnx as onnx_mod

    _, _, weights = tiny_fp32
    real = onnx_mod._verify

    def terminated(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **k)

    def unhandled(signum, frame):
        raise RuntimeError("SIGTERM reached the caller: export did not handle it")

    monkeypatch.setattr(onnx_mod, "_verify", terminated)
    before = signal.signal(signal.SIGTERM, unhandled)
    try:
        assert main(["export", str(weights), "-o", str(tmp_path / "m.onnx"), "--quiet"]) == 143  # 128 + SIGTERM
    finally:
        signal.signal(signal.SIGTERM, before)
    assert [p.name for p in tmp_path.iterdir()] == [".m.onnx.lock"]  # (a lock file stays, as flock's must)

