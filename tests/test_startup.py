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
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
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
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr
