"""Start-up time of the ``contentiqa`` command, measured per process (issue 13: --help, models
and usage errors under 0.5 s; one photo scored end to end with a cached ONNX graph <= 1.5 s).

    python benchmarks/startup.py              # 7 runs of each command
    python benchmarks/startup.py --runs 3     # quicker

Each command runs in a fresh process (``python -m contentiqa ...`` with this checkout's
``src`` first on PYTHONPATH), timed from before ``subprocess.run`` to after it returns
(``time.perf_counter``): what a user waits for, interpreter start-up included. One warm-up
run per command is not counted (it fills the OS file cache and Python's bytecode cache, kept
in a private folder: an installed package has its bytecode compiled by pip). Median, min and max are reported,
plus, for each command, whether it imported torch (from ``-X importtime``).

Scoring uses the default runtime (``--runtime auto``: ONNX Runtime on the CPU) with the graph
shipped in the package, found without a cache (the first run in an empty private cache folder is
timed once, separately). When the default model's shipped weights are absent (a checkout without
src/contentiqa/weights), a random-weights checkpoint of the same architecture stands in: the
same cost, other scores (its graph is exported into the cache by that first run).

Timings depend on the machine's load: the load average before and after is recorded with
them. Writes benchmarks/results/startup.json and startup.md.
"""
from __future__ import annotations

import argparse
import atexit
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, bench_lock, command_line, contentiqa_env, positive_int, results_name, write_results  # noqa: E402

SRC = ROOT / "src"
PHOTO = ROOT / "examples" / "images" / "671.JPG"


def _env(cache: Path) -> dict[str, str]:
    """The commands' environment: this checkout first, a private export cache, Python's bytecode
    cached as installed (:func:`common.contentiqa_env`)."""
    return contentiqa_env(CONTENTIQA_CACHE_DIR=str(cache))


def _run(argv: list[str], env: dict[str, str]) -> tuple[float, int]:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "contentiqa", *argv], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    return time.perf_counter() - t, proc.returncode


def _imports_torch(argv: list[str], env: dict[str, str]) -> bool:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "contentiqa", *argv], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # lines "import time: self | cumulative | <indent>module"; nested imports are indented
    return any(line.split("|")[-1].strip() == "torch" for line in proc.stderr.splitlines() if line.count("|") == 2)


def _model_spec(folder: Path) -> tuple[str, str]:
    """The default model, or a random-weights checkpoint of it when its weights are not shipped."""
    env = _env(folder / "cache")
    code = (
        "import sys, contentiqa\n"
        "from contentiqa.models.registry import shipped_weights_path, save_checkpoint\n"
        "name = contentiqa.DEFAULT_MODEL\n"
        "if shipped_weights_path(name):\n    print(name)\n"
        "else:\n"
        "    m = contentiqa.create_model(name, pretrained=False)\n"
        f"    print(save_checkpoint(m, {str(folder / 'stand-in.pt')!r}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    spec = out.strip().splitlines()[-1]
    return spec, "random weights (same architecture and cost)" if spec.endswith(".pt") else "shipped weights"


def _loadavg() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - not on every platform
        return []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=positive_int, default=7)
    args = ap.parse_args()

    with bench_lock():
        _measure(ap, args)


def _measure(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="contentiqa-startup-"))
    atexit.register(shutil.rmtree, work, True)  # its stand-in weights, cache and CSVs, however the run ends
    env = _env(work / "cache")
    load_before = _loadavg()
    spec, weights = _model_spec(work)
    out_csv = str(work / "one.csv")
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "contentiqa", "score", str(PHOTO), "--model", spec, "-q", "-o", out_csv,
                    "--force"], env=env, check=True)
    first_run_s = time.perf_counter() - t

    commands = {
        "contentiqa --help": ["--help"],
        "contentiqa score (usage error: no PATH)": ["score"],
        "contentiqa score --bogus (argparse error)": ["score", "--bogus"],
        "contentiqa models": ["models"],
        "contentiqa score PHOTO (default runtime: ONNX Runtime, the model's graph)": [
            "score", str(PHOTO), "--model", spec, "-q", "-o", out_csv, "--force"],
        "contentiqa score PHOTO --runtime torch": [
            "score", str(PHOTO), "--model", spec, "-q", "-o", out_csv, "--force", "--runtime", "torch"],
    }
    rows = []
    for label, argv in commands.items():
        _run(argv, env)  # warm-up
        times, codes = [], set()
        for _ in range(args.runs):
            dt, rc = _run(argv, env)
            times.append(dt)
            codes.add(rc)
        rows.append({"command": label, "argv": argv, "exit_codes": sorted(codes), "median_s": statistics.median(times),
                     "min_s": min(times), "max_s": max(times), "runs": args.runs,
                     "imports_torch": _imports_torch(argv, env)})
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], env=env, check=True)
    torch_import_s = time.perf_counter() - t
    load_after = _loadavg()

    payload = {"command": command_line(), "bytecode_cached": True, "model": spec, "weights": weights, "photo": str(PHOTO.relative_to(ROOT)),
               "cpu_count": os.cpu_count(), "load_average_before": load_before, "load_average_after": load_after,
               "first_score_empty_cache_s": first_run_s, "python_import_torch_s": torch_import_s, "results": rows}
    lines = [
        "# Start-up time of the `contentiqa` command",
        "",
        f"Command: `{command_line()}`; each row a fresh process, {args.runs} runs after one warm-up, "
        f"wall time around `subprocess.run`, Python bytecode cached (as installed). {os.cpu_count()} CPUs; "
        f"load average (1, 5, 15 min) before {load_before}, after {load_after} — a busy machine makes every "
        "figure slower.",
        "",
        "| command | median s | min s | max s | exit | imports torch |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['command']} | {r['median_s']:.2f} | {r['min_s']:.2f} | {r['max_s']:.2f} | "
                     f"{','.join(map(str, r['exit_codes']))} | {'yes' if r['imports_torch'] else 'no'} |")
    lines += [
        "",
        f"Reference: `python -c 'import torch'` alone took {torch_import_s:.2f} s (one run). The first scoring "
        f"run, with an empty export cache, took {first_run_s:.2f} s"
        + (" (the shipped graph: nothing to export)." if weights.startswith("shipped") else " (it exported the model)."),
        f"Model: `{Path(spec).name if spec.endswith('.pt') else spec}` ({weights}); photo: {PHOTO.relative_to(ROOT)}.",
        "",
        "`score` finds the graph of the weights (shipped beside them, or cached under their hash) and scores with "
        "ONNX Runtime, numpy and Pillow (contentiqa.inference.onnx_runtime): no torch import. `models` reads the "
        "registry, which imports no model code.",
        "",
    ]
    write_results(results_name("startup", ap, args), payload, "\n".join(lines))


if __name__ == "__main__":
    main()
