"""Start-up: `contentiqa --help`, usage errors and `import contentiqa` must not import torch
(importing it takes seconds). Checked by module, not by timing, so it holds on a busy machine;
benchmarks/startup.py measures the time."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")
WITHOUT_TORCH = (
    "import runpy, sys\n"  # what the [torch] extra installs, as if absent: blocked before contentiqa's first import
    f"table = runpy.run_path({os.path.join(SRC, 'contentiqa', 'utils', 'extras.py')!r})['EXTRA_OF_MODULE']\n"
    "for m, extra in table.items():\n"
    "    if extra == 'torch':\n"
    "        sys.modules[m] = None\n"
)
"""The start of a `python -c` program that runs contentiqa as an install without [torch] would."""


def source_env(**extra: str) -> dict[str, str]:
    """The environment of a subprocess that imports contentiqa from this checkout's src/."""
    return {**os.environ, **extra, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


def run_without_torch(program: str, cwd: Path) -> list[str]:
    """The lines ``program`` prints, run as an install without [torch] would run it (it must end well)."""
    proc = subprocess.run([sys.executable, "-c", WITHOUT_TORCH + program], capture_output=True, text=True,
                          env=source_env(), timeout=300, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-1500:]
    return proc.stdout.splitlines()

PROBE = """
import json, sys
from contentiqa.cli.main import main
try:
    rc = main(sys.argv[1:])
except SystemExit as exc:
    rc = exc.code
print(json.dumps({"rc": rc, "heavy": sorted(m for m in ("torch", "pandas", "onnxruntime") if m in sys.modules)}), file=sys.stderr)
"""


def _probe(*argv: str) -> dict:
    env = source_env()
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=env, timeout=300)
    return json.loads(proc.stderr.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "argv, rc",
    [
        (["--help"], 0),
        (["--version"], 0),
        ([], 2),
        (["score", "--bogus"], 2),
        (["score"], 2),
        (["score", "--help"], 0),
        (["export"], 2),
        (["score", "--runtime", "onnx", "--device", "cuda", "x.jpg"], 2),
        (["models"], 0),  # names, tags, shipped weights, backbones, loaders: all known without torch
    ],
)
def test_cli_light_paths_do_not_import_torch(argv: list[str], rc: int) -> None:
    got = _probe(*argv)
    assert got["rc"] == rc
    assert got["heavy"] == [], f"contentiqa {' '.join(argv)} imported {got['heavy']}"


def test_import_contentiqa_is_lazy() -> None:
    code = (
        "import sys, contentiqa; assert 'torch' not in sys.modules, 'import contentiqa imported torch'; "
        "assert callable(contentiqa.create_model) and 'torch' not in sys.modules, 'the registry imported torch'; "
        "assert contentiqa.IQAModel and 'torch' in sys.modules; print('ok')"
    )
    env = source_env()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr


# -- one photo from a cached ONNX graph: no torch --------------------------------------------------
def test_scoring_from_the_cached_onnx_graph_does_not_import_torch(tmp_path, examples_dir):
    """The first run exports the model (torch); every later one finds the export by the weights
    file's hash and scores with ONNX Runtime, numpy and Pillow alone."""
    pytest.importorskip("onnxruntime")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from tiny_models import tiny_checkpoint

    from contentiqa.cli.main import main

    ckpt = tiny_checkpoint()
    img = str(sorted(examples_dir.glob("*.JPG"))[0])
    env_cache = {"CONTENTIQA_CACHE_DIR": str(tmp_path / "cache")}
    saved = {k: os.environ.get(k) for k in env_cache}
    os.environ.update(env_cache)
    try:
        assert main(["score", img, "--model", ckpt, "-q", "-o", str(tmp_path / "first.csv")]) == 0  # exports
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    (entry,) = (tmp_path / "cache" / "onnx").glob("*.onnx")
    env = source_env(**env_cache)
    for argv in (["score", img, "--model", ckpt, "-o", str(tmp_path / "again.csv")],  # the cached export
                 ["score", img, "--onnx-model", str(entry), "-q"]):  # an exported file named outright
        proc = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=env, timeout=300)
        got = json.loads(proc.stderr.strip().splitlines()[-1])
        assert got["rc"] == 0, proc.stderr
        assert "torch" not in got["heavy"] and "pandas" not in got["heavy"], f"{argv} imported {got['heavy']}"
        assert "onnxruntime" in got["heavy"]
    import csv

    (first,) = csv.DictReader(open(tmp_path / "first.csv", encoding="utf-8"))
    (again,) = csv.DictReader(open(tmp_path / "again.csv", encoding="utf-8"))
    for k in ("score", "category_confidence"):  # one graph: only the softmax (numpy / torch) differs
        assert abs(float(first.pop(k)) - float(again.pop(k))) < 1e-5
    assert first == again  # category, notes, error, model, weights file and its SHA-256, version


# -- without PyTorch -------------------------------------------------------------------------------
def test_names_that_need_pytorch_say_so_when_imported_and_a_star_import_works(tmp_path):
    """`from contentiqa import IQAModel` / `contentiqa.data.load_dataset` without [torch] were a bare
    ModuleNotFoundError from inside, and `from contentiqa import *` failed outright."""
    star, model, data = run_without_torch(
        "from contentiqa import *\nprint(sorted(n for n in dir() if not n.startswith('_')))\n"
        "import contentiqa.data\nfrom contentiqa.utils.extras import ExtraMissing\n"
        "for name in ('IQAModel',):\n"
        "    try:\n        getattr(__import__('contentiqa'), name)\n    except ExtraMissing as exc:\n        print(exc)\n"
        "try:\n    contentiqa.data.load_dataset\nexcept ExtraMissing as exc:\n    print(exc)\n", tmp_path)
    assert "create_scorer" in star and "IQAModel" not in star
    assert "IQAModel needs PyTorch" in model and "pip install 'contentiqa[torch]'" in model
    assert data.startswith("contentiqa.data.load_dataset needs the 'pandas' package") and "contentiqa[torch]" in data


def test_commands_that_need_pytorch_say_which_extra_in_one_line(tmp_path, examples_dir):
    """An install without the [torch] extra (its packages blocked here): every command that needs it
    fails with exit code 2 and one line naming the extra, never a traceback; scoring works."""
    photos = sorted(examples_dir.glob("*.JPG"))[:2]
    data = tmp_path / "rated.csv"
    data.write_text("image,mos\n" + "".join(f"{p},{50 + 10 * k}\n" for k, p in enumerate(photos)))
    code = (WITHOUT_TORCH + "from contentiqa.cli.main import main\nsys.exit(main(sys.argv[1:]))\n")
    env = source_env(CONTENTIQA_CACHE_DIR=str(tmp_path / "cache"))
    needs_torch = [
        ["explain", str(photos[0]), "--out", str(tmp_path / "ex" / "h.png")],
        ["explain", str(photos[0]), "--out-dir", str(tmp_path / "exd")],
        ["export", "iqa-cr", "--out", str(tmp_path / "m.onnx")],
        ["score", str(photos[0]), "--runtime", "torch", "-o", str(tmp_path / "s1" / "r.csv")],
        ["score", str(photos[0]), "--precision", "bf16"],
        ["score", str(photos[0]), "-o", str(tmp_path / "r.html"), "--explain"],
        ["evaluate", "--model", "iqa-cr", "--data", str(data)],
        ["label-content", str(data), "--out", str(tmp_path / "labelled.csv")],
        ["train", "--model", "ie-iqa", "--data", str(data), "--out", str(tmp_path / "run")],
        ["analyze-intelligibility", str(data), "--out", str(tmp_path / "an")],
    ]
    for argv in needs_torch:
        proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, timeout=300)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (argv, proc.stderr[-1500:])
        assert len(lines) == 1 and "pip install 'contentiqa[torch]'" in lines[0], (argv, proc.stderr)
    # said before any folder is made (or a graph built for explain's scores)
    assert not any((tmp_path / name).exists() for name in ("ex", "exd", "s1"))
    proc = subprocess.run([sys.executable, "-c", code, "score", str(photos[0]), "-q"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-1500:]


def test_model_api_without_pytorch_names_the_extra(tmp_path):
    """The library's PyTorch entry points fail as the CLI does without [torch]: ExtraMissing (an
    ImportError) naming the extra and the torch-free way to score, not torch's bare
    ModuleNotFoundError from a helper deep inside."""
    lines = run_without_torch(
        "import contentiqa\nfrom contentiqa.utils.extras import ExtraMissing\n"
        "for call in (lambda: contentiqa.create_model(contentiqa.DEFAULT_MODEL), lambda: contentiqa.load_checkpoint('x.pt')):\n"
        "    try:\n        call()\n    except ExtraMissing as exc:\n        print(exc)\n"
        "print(len(contentiqa.list_models()) > 0)\n", tmp_path)
    assert len(lines) == 3 and lines[2] == "True", lines
    assert "create_model" in lines[0] and "load_checkpoint" in lines[1]
    assert all("needs PyTorch" in x and "pip install 'contentiqa[torch]'" in x and "load_scorer" in x for x in lines[:2])
