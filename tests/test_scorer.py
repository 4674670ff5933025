"""The scoring layer (contentiqa.inference.scorer): one name-or-path rule, one place that decides
the runtime and precision, two scorers with one contract and one identity."""
from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest

import contentiqa
from contentiqa.inference.scorer import Scorer, check_options, choose_runtime, load_scorer
from contentiqa.models.registry import create_model, parse_spec, weights_file
from tiny_models import cached_loader, one_torch_thread, tiny_checkpoint  # noqa: F401


@pytest.fixture
def ckpt(monkeypatch) -> str:
    import contentiqa.models.registry as registry

    monkeypatch.setattr(registry, "load_checkpoint", cached_loader(registry.load_checkpoint))
    return tiny_checkpoint()


# -- what a spec names ---------------------------------------------------------------------------
def test_a_file_named_like_a_model_never_shadows_it(tmp_path, monkeypatch):
    """The four places that used to decide (registry, CLI loading, create_scorer, weights_file)
    are one rule: a bare word is a registered name; ./word, a folder or a model file's suffix
    is a file."""
    monkeypatch.chdir(tmp_path)
    Path("ie-iqa").write_bytes(b"not a checkpoint")
    Path("mine").write_bytes(b"not a checkpoint")
    spec = parse_spec("ie-iqa")
    assert spec.name == "ie-iqa" and spec.path is None and spec.tag == "clive-biq2021-v3"
    assert weights_file("ie-iqa")[0].parent.name == "weights"  # the shipped weights, not ./ie-iqa
    assert load_scorer("ie-iqa", threads=1).identity.weights.name == "ie-iqa_clive-biq2021-v3.pt"
    assert parse_spec("./ie-iqa").path == Path("ie-iqa") and parse_spec(Path("ie-iqa")).is_file
    with pytest.raises(ValueError, match="checkpoint ie-iqa"):
        create_model("./ie-iqa")  # the file, read (as data) and refused
    with pytest.raises(ValueError, match=re.escape("write ./mine")):
        parse_spec("mine")  # a bare word that names no model, with a file of that name here
    assert parse_spec("model.pt").path == Path("model.pt") and parse_spec("x/iqa-cr").is_file
    assert parse_spec("graph.ONNX").is_onnx and not parse_spec("m.pth").is_onnx
    assert (parse_spec("iqa-cr.clive").name, parse_spec("iqa-cr.clive").tag) == ("iqa-cr", "clive")
    with pytest.raises(ValueError, match="no weights tagged"):
        parse_spec("iqa-cr.nope")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        weights_file("missing.pt")
    with pytest.raises(ValueError, match="ONNX graph"):
        create_model("graph.onnx")


def test_a_path_object_to_a_file_named_like_a_model_scores_the_file(tmp_path, monkeypatch, examples_dir):
    """load_scorer(Path("iqa-cr-q")) took the path for a file, then loaded its text as the name:
    the shipped weights were scored (and their graph cached) as the file's."""
    from contentiqa.models.registry import save_checkpoint
    from tiny_models import tiny_model

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CONTENTIQA_CACHE_DIR", str(tmp_path / "cache"))
    model = tiny_model("iqa-cr-q")
    save_checkpoint(model, tmp_path / "iqa-cr-q")
    photo = sorted(str(p) for p in examples_dir.glob("*.JPG"))[0]
    want = model.predict([photo])[0].score
    for runtime in ("torch", "onnx"):
        got = load_scorer(Path("iqa-cr-q"), runtime=runtime, threads=1).predict([photo])[0].score
        assert got == pytest.approx(want, abs=1e-3), runtime


# -- the choices ------------------------------------------------------------------------------------
def test_options_that_contradict_each_other_are_refused_before_any_work():
    check_options("auto", None, "cpu")
    check_options("torch", "bf16", "cuda")
    for args, why in [(("onnx", None, "cuda"), "runs on the CPU"), (("torch", "int8", "cpu"), "not with the PyTorch"),
                      (("auto", "int8", "cuda:1"), "not with the PyTorch"), (("onnx", "fp16", "cpu"), "autocast"),
                      (("tensorrt", None, "cpu"), "unknown runtime"), (("auto", "fp8", "cpu"), "unknown precision")]:
        with pytest.raises(ValueError, match=why):
            check_options(*args)
    assert [choose_runtime(*a) for a in [("auto", None, "cpu"), ("auto", None, "cuda"), ("auto", "bf16", "cpu"),
                                         ("torch", None, "cpu"), ("onnx", "int8", "cpu")]] == \
        ["onnx", "torch", "torch", "torch", "onnx"]


def test_both_runtimes_are_scorers_of_one_model_with_one_identity(ckpt, examples_dir):
    """load_scorer gives an ONNX Runtime and a PyTorch scorer of one checkpoint: both fulfil the
    Scorer contract, name the same weights (file and SHA-256), differ in runtime only, and give
    the same scores (1e-3 of the scale); create_model(...).predict is the PyTorch scorer's."""
    photos = sorted(str(p) for p in examples_dir.glob("*.JPG"))[:3]
    onnx = load_scorer(ckpt, threads=1)
    torch_ = load_scorer(ckpt, runtime="torch")
    assert isinstance(onnx, Scorer) and isinstance(torch_, Scorer)
    a, b = onnx.identity, torch_.identity
    assert (a.runtime, b.runtime) == ("onnx", "torch") and a.precision == b.precision == "fp32"
    assert (a.name, a.tag, a.weights, a.sha256) == (b.name, b.tag, b.weights, b.sha256) and len(a.sha256) == 64
    assert a.graph is not None and b.graph is None
    assert onnx.score_range == torch_.score_range and onnx.categories == torch_.categories
    lo, hi = onnx.score_range
    model_rows = contentiqa.load_checkpoint(ckpt).predict(photos)
    for x, y, z in zip(onnx.predict(photos), torch_.predict(photos), model_rows):
        assert abs(x.score - y.score) / (hi - lo) < 1e-3 and abs(y.score - z.score) / (hi - lo) < 1e-6
        assert x.category == y.category == z.category
    single = onnx.predict(photos[0])
    assert not isinstance(single, list) and single.path == photos[0]


def test_a_default_int8_graph_that_cannot_be_had_falls_back_to_fp32_with_a_note(ckpt, tmp_path, monkeypatch):
    """The model's measured choice is int8, but its graph cannot be built (here: a broken
    calibration): the fp32 graph runs and the caller is told why; asked for by name, int8 is an
    error instead."""
    import shutil

    from contentiqa.inference.quantize import calibration_path

    monkeypatch.setenv("CONTENTIQA_CACHE_DIR", str(tmp_path / "cache"))
    weights = Path(shutil.copy(ckpt, tmp_path / "w.pt"))
    calibration_path(weights).write_text('{"format": "contentiqa-int8-calibration/1", "weights_sha256": "'
                                         + __import__("contentiqa.utils.io", fromlist=["x"]).file_sha256(weights)
                                         + '", "default_precision": "int8", "recipe": {"method": "static"}}')
    notes: list[str] = []
    scorer = load_scorer(weights, threads=1, notes=notes)
    assert scorer.identity.precision == "fp32" and any("running the fp32 graph" in n for n in notes)
    with pytest.raises(ValueError, match="precision int8"):
        load_scorer(weights, precision="int8", threads=1)


def test_no_module_outside_inference_decides_the_runtime():
    """Runtimes, precisions, thread plans and ONNX Runtime sessions are chosen in
    contentiqa.inference only; the commands and the service pass their flags through.
    (training.cache's runtime for cached frozen-stage encodings is a training setting.)"""
    root = Path(contentiqa.__file__).parent
    pattern = re.compile(r"runtime\s*(==|!=|in\s*\()|plan_threads|default_precision\(|torch\.autocast|"
                         r"InferenceSession|import onnxruntime")
    found = []
    for pkg in ("cli", "serve", "reporting", "explain", "models", "data"):
        for f in sorted((root / pkg).rglob("*.py")):
            for i, line in enumerate(f.read_text().splitlines(), 1):
                if pattern.search(line):
                    found.append(f"{f.relative_to(root)}:{i}: {line.strip()}")
    assert not found, "\n".join(found)


def test_device_and_thread_arguments_are_checked_up_front():
    import numpy as np

    for bad in ("2", 1.5, True, 0, 2**31, 10_000):  # the bound is the library's, not only the CLI's
        with pytest.raises(ValueError, match="threads must be a whole number from 1 to"):
            contentiqa.load_scorer("ie-iqa", threads=bad)
    assert contentiqa.load_scorer("ie-iqa", threads=np.int64(1)).identity.runtime == "onnx"
    for bad in ("x", -3, True):  # the thread plan's count: was a TypeError deep inside, or taken
        with pytest.raises(ValueError, match="images must be a whole number"):
            contentiqa.load_scorer("ie-iqa", images=bad)
    assert contentiqa.load_scorer("ie-iqa", device="cpu:0").identity.runtime == "onnx"  # the CPU, spelt with an index
    with pytest.raises(ValueError, match="unknown device"):
        contentiqa.create_model("ie-iqa", device="bogus")
    for other in ("xpu", "meta", "hip"):  # device types torch knows, not run here: tracebacks while loading
        with pytest.raises(ValueError, match="contentiqa runs on cpu, cuda"):
            contentiqa.create_model("ie-iqa", device=other)


def test_a_trailing_dot_is_not_the_default_tag():
    with pytest.raises(ValueError, match="a tag follows the dot"):
        contentiqa.load_scorer("ie-iqa.")


def test_a_models_direction_is_its_scales():
    """IQAModel.higher_is_better was a class constant (True) while its scorer read the scale."""
    from contentiqa.data.table import MOSScale
    from contentiqa.inference.torch_runtime import TorchScorer
    from contentiqa.models import create_model

    model = create_model("iqa-cr-q", pretrained=False, backbone_pretrained=False)
    assert model.higher_is_better and not model.lower_better
    model.set_scale(MOSScale(0.0, 100.0, higher_is_better=False))  # a model trained on DMOS
    assert (model.higher_is_better, model.lower_better) == (False, True)
    assert TorchScorer(model).higher_is_better is False


@pytest.mark.parametrize("name", ["iqa-cr-q", "ie-iqa"])
def test_model_arguments_are_numbers_of_their_kind_when_read(name):
    """heads=2.0 built a model that failed with a TypeError at its first step (after a long caching
    pass), and dropout='1e-1' (YAML's reading of 1e-1) was refused in comparison's words."""
    wide = {"iqa-cr-q": "dim", "ie-iqa": "input_size"}[name]
    offline = ({"backbone_pretrained": False} if name == "iqa-cr-q"
               else {"distortion_pretrained": False, "intelligibility_pretrained": False})
    model = create_model(name, pretrained=False, **offline, **{wide: "64" if name == "ie-iqa" else 64.0},
                         dropout="1e-1")
    assert isinstance(getattr(model.cfg, wide), int) and model.cfg.dropout == 0.1
    with pytest.raises(ValueError, match=f"model argument {wide} must be a whole number, not 64.5"):
        create_model(name, pretrained=False, **offline, **{wide: 64.5})
    with pytest.raises(ValueError, match="model argument dropout must be a number, not 'much'"):
        create_model(name, pretrained=False, **offline, dropout="much")


def test_pretrained_must_be_a_bool():
    """pretrained="False" is truthy: it loaded the shipped weights without a word."""
    from contentiqa.models import create_model

    with pytest.raises(TypeError, match="True or False, not 'False'"):
        create_model("iqa-cr-q", pretrained="False")


@pytest.mark.parametrize("name, arg", [("iqa-cr", "backbone_pretrained"), ("ie-iqa", "distortion_pretrained")])
def test_a_boolean_model_argument_given_as_a_word_is_refused(name, arg):
    """backbone_pretrained: "false" (quoted in a YAML config) is truthy: the ImageNet weights
    were loaded without a word."""
    with pytest.raises(ValueError, match=f"model argument {arg} is true or false, not 'false'"):
        create_model(name, pretrained=False, **{arg: "false"})


def test_list_models_refuses_a_name_pattern_as_its_flag():
    """timm's first argument is a pattern: list_models('iqa-cr*') listed the pretrained names."""
    with pytest.raises(TypeError, match="True or False, not 'iqa-cr\\*'"):
        contentiqa.list_models("iqa-cr*")


def test_a_checkpoint_file_loads_as_saved_and_must_hold_the_model_named(tmp_path):
    """Architecture arguments, and a name other than the file's model, were ignored without a word."""
    from contentiqa.models.registry import save_checkpoint
    from tiny_models import tiny_model

    path = save_checkpoint(tiny_model("iqa-cr"), tmp_path / "mine.pt")
    assert create_model("iqa-cr", checkpoint_path=path).model_name == "iqa-cr"
    with pytest.raises(ValueError, match="holds a 'iqa-cr' model, not 'ie-iqa'"):
        create_model("ie-iqa", checkpoint_path=path)
    for spec, kw in ((str(path), {}), ("iqa-cr", {"checkpoint_path": path})):
        with pytest.raises(ValueError, match=r"no architecture arguments \(got \['dim'\]\)"):
            create_model(spec, dim=8, **kw)
    # a mistyped name, or a tag (which names shipped weights), loaded the file without a word
    with pytest.raises(ValueError, match="unknown model 'iqa_cr'"):
        create_model("iqa_cr", checkpoint_path=path)
    with pytest.raises(ValueError, match="'iqa-cr.clive' names shipped weights, and checkpoint_path loads others"):
        create_model("iqa-cr.clive", checkpoint_path=path)


def test_a_model_cast_to_another_dtype_is_refused_up_front(examples_dir):
    """A .double() model gave every photo an error row ("Input type (float) and bias type
    (double)..."), as if the photos were bad."""
    from tiny_models import tiny_model

    model = tiny_model("iqa-cr").double()
    with pytest.raises(ValueError, match="float64.*model.float\\(\\)"):
        model.predict(str(sorted(examples_dir.glob("*.JPG"))[0]))


def test_threads_loading_one_new_checkpoint_at_once_all_get_its_graph(tmp_path, monkeypatch):
    """torch.onnx.export is not thread-safe: threads exporting one user checkpoint at once failed
    each other with AssertionErrors (GLOBALS.in_onnx_export)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from contentiqa.models.registry import save_checkpoint
    from tiny_models import tiny_model

    monkeypatch.setenv("CONTENTIQA_CACHE_DIR", str(tmp_path / "cache"))
    path = str(save_checkpoint(tiny_model("iqa-cr"), tmp_path / "mine.pt"))
    start = threading.Barrier(4)

    def load(_):
        start.wait()
        return load_scorer(path, runtime="onnx", threads=1).identity.graph

    with ThreadPoolExecutor(4) as pool:
        graphs = list(pool.map(load, range(4)))
    assert len(set(graphs)) == 1 and graphs[0] is not None  # one export, found by the others


def test_an_in_memory_pil_image_out_of_its_range_raises_as_an_array_does():
    """A float PIL image over 1 became an error row, where the same array raises ValueError."""
    import numpy as np
    from PIL import Image

    from contentiqa.models import create_model

    model = create_model("iqa-cr-q", pretrained=False, backbone_pretrained=False)
    bad = np.full((40, 48), 1.5, np.float32)
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        model.predict(Image.fromarray(bad, "F"))
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        model.predict(bad)
    assert model.predict(Image.fromarray(bad / 2, "F")).error is None


def test_weights_replaced_while_they_load_never_file_the_old_graph_under_the_new_bytes(tmp_path, monkeypatch, examples_dir):
    """Scoring RUN/best.pt while a run rewrites it: the file can be replaced between reading the
    weights and keying the exported graph. The graph must be filed under the bytes it came from
    (else every later run of the new file scores the old model, its rows naming the new file's
    hash); this run says so and stops, the next one exports the new weights."""
    import hashlib

    import contentiqa.inference.scorer as scorer
    from contentiqa.models.registry import save_checkpoint
    from tiny_models import tiny_model

    monkeypatch.setenv("CONTENTIQA_CACHE_DIR", str(tmp_path / "cache"))
    run = tmp_path / "run"
    run.mkdir()
    best = save_checkpoint(tiny_model(seed=0), run / "best.pt")
    newer = save_checkpoint(tiny_model(seed=1), tmp_path / "newer.pt")
    photo = sorted(str(p) for p in examples_dir.glob("*.JPG"))[0]
    real = scorer.load_model

    def load_then_replace(*a, **k):
        model = real(*a, **k)
        Path(newer).replace(best)  # the trainer's atomic save lands now
        return model

    monkeypatch.setattr(scorer, "load_model", load_then_replace)
    with pytest.raises(ValueError, match="changed while it was being read"):
        load_scorer(best, threads=1)
    monkeypatch.setattr(scorer, "load_model", real)
    onnx, torch_ = load_scorer(best, threads=1), load_scorer(best, runtime="torch")
    assert onnx.identity.sha256 == torch_.identity.sha256 == hashlib.sha256(Path(best).read_bytes()).hexdigest()
    assert abs(onnx.predict(photo).score - torch_.predict(photo).score) < 1e-3  # the new weights' graph


def test_a_closed_pil_image_and_an_empty_path_say_what_they_are(tmp_path):
    """An image scored after its `with Image.open(...)` block was 'cannot read image
    (AssertionError: )' (explain: Pillow's traceback); '' was 'is a directory' (the current one)."""
    from PIL import Image

    from contentiqa.inference.torch_runtime import TorchScorer

    Image.new("RGB", (64, 64), (90, 120, 150)).save(tmp_path / "s.png")
    with Image.open(tmp_path / "s.png") as im:
        pass
    scorer = TorchScorer(create_model("iqa-cr-q", pretrained=False, backbone_pretrained=False), threads=1)
    closed, empty = scorer.predict([im, ""])
    assert "file was closed before its pixels were read" in closed.error
    assert empty.error == "empty path (an unset variable?)"


def test_one_lazily_opened_image_given_twice_is_decoded_once(tmp_path):
    """Decoding threads read the one file handle of ``Image.open(...)`` at once when it came
    twice: garbage pixels scored without a word, and left in the caller's image. A damaged one
    given twice is an error both times (PIL hands a second load the partial pixels)."""
    import numpy as np
    from PIL import Image

    from contentiqa.inference.torch_runtime import TorchScorer

    model = create_model("iqa-cr-q", pretrained=False, backbone_pretrained=False)
    scorer = TorchScorer(model, threads=1)
    path = tmp_path / "p.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(path)
    ref = scorer.run([str(path)], workers=0)[0].score
    pixels = np.asarray(Image.open(path))
    for _ in range(12):  # a race: each try caught it about one time in four
        im = Image.open(path)
        got = [p.score for p in scorer.run([im] * 8, workers=2)]
        assert got == pytest.approx([ref] * 8, abs=1e-4)
        assert np.array_equal(np.asarray(im), pixels)
    # other images decode side by side: the lock is each image's own (one for all made them take turns)
    from contentiqa.models import scoring

    slow = [Image.open(path) for _ in range(2)]
    real_load = type(slow[0]).load
    inside, most = [0], [0]

    def counted_load(self):
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        time.sleep(0.3)
        try:
            return real_load(self)
        finally:
            inside[0] -= 1

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(slow[0]), "load", counted_load)
        threads = [threading.Thread(target=scoring._decode_once, args=(im,)) for im in slow]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert most[0] == 2
    cut = tmp_path / "cut.png"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    im = Image.open(cut)
    rows = scorer.run([im, im], workers=2)
    assert all(r.error and r.score is None for r in rows), rows
