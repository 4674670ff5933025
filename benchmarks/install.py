"""Install size and time: ``pip install .`` (torch-free: score, serve, report) against ``pip install '.[torch]'``.

    python benchmarks/install.py              # both installs, each into a fresh venv, pip's cache off
                                              # -> benchmarks/results/install.json and install.md
    python benchmarks/install.py --ci         # the torch-free install only (pip's cache allowed), then
                                              # `contentiqa score examples/images` in it; no results written

Each install goes into a fresh virtual environment under the temporary folder, from a copy of the
files git tracks (so no build output lands in this checkout); everything is removed afterwards,
also on failure or Ctrl-C. "Size" is the venv's disk use after the install (du), "time" the wall
time of the pip command; without ``--ci`` pip's cache is off, so packages come from the registry.
In the torch-free venv the example photos are scored, and the run must not find torch.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TARGETS = {"size_mb": 400.0, "seconds": 60.0}
"""The torch-free install's targets (issue 21): at most 400 MB installed, 60 s from the registry."""


def source_copy(dest: Path) -> Path:
    """The tracked files of this checkout, as they are on disk now, copied to ``dest``."""
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def du_mb(path: Path) -> float:
    total = 0
    for dirpath, _, names in os.walk(path):
        for n in names:
            p = os.path.join(dirpath, n)
            if not os.path.islink(p):
                total += os.lstat(p).st_blocks * 512
    return total / 1e6


def install(src: Path, venv: Path, extras: str, cache: bool) -> dict:
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    empty_mb = du_mb(venv)  # python, pip and setuptools: there before the install
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--quiet"] + ([] if cache else ["--no-cache-dir"])
    t0 = time.perf_counter()
    subprocess.run(pip + [f"{src}{extras}"], check=True)
    seconds = time.perf_counter() - t0
    freeze = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format=json"], capture_output=True,
                            text=True, check=True).stdout
    packages = {p["name"].lower(): p["version"] for p in json.loads(freeze)}
    size = du_mb(venv)
    return {"seconds": round(seconds, 1), "size_mb": round(size, 1), "added_mb": round(size - empty_mb, 1),
            "packages": len(packages),
            "torch": packages.get("torch"), "contentiqa": packages.get("contentiqa")}


def score_examples(venv: Path, work: Path) -> dict:
    """``contentiqa score examples/images`` in ``venv``: every photo scored, torch never found."""
    out = work / "scores.csv"
    env = {**os.environ, "CONTENTIQA_CACHE_DIR": str(work / "cache")}
    env.pop("PYTHONPATH", None)  # the venv's own contentiqa, not this checkout's
    probe = ("import importlib.util, sys; from contentiqa.cli.main import main; "
             "rc = main(['score', sys.argv[1], '-q', '-o', sys.argv[2]]); "
             "sys.exit(rc or (3 if importlib.util.find_spec('torch') else 0))")
    t0 = time.perf_counter()
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", probe, str(ROOT / "examples" / "images"), str(out)],
                          capture_output=True, text=True, env=env, cwd=work)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"scoring in the torch-free install failed (rc {proc.returncode}):\n{proc.stderr}")
    import csv

    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    bad = [r for r in rows if r.get("error") or not r.get("score")]
    if not rows or bad:
        raise SystemExit(f"scoring in the torch-free install left {len(bad)} of {len(rows)} photo(s) unscored: {bad[:2]}")
    return {"photos": len(rows), "seconds": round(seconds, 2), "runtime_note": proc.stderr.strip().splitlines()[:1]}


def _mb(x: float | None) -> str:
    return "–" if x is None else f"{x:.0f} MB"


def _when(install: dict, res: dict) -> str:
    """When an install was measured: a row carried over from an earlier run (--skip-torch) says so."""
    when = install.get("when") or "not recorded"
    return f"{when} (an earlier run's, kept by --skip-torch)" if install.get("carried") else when


def markdown(res: dict) -> str:
    free, full = res["installs"].get("torch_free"), res["installs"].get("torch")
    lines = [
        "# Install size and time",
        "",
        f"{'`' + res['command'] + '`' if res.get('command') else 'Command not recorded'} ({res['when']}, Python "
        f"{res['python']}, load average {res['load'][0]:.1f} before"
        + (": the machine was shared, so the times are upper bounds" if res["load"][0] > 0.5 else "") + "). Each install goes into a fresh venv from "
        "the registry with pip's cache off; size is the venv's disk use after it (and what the install added to "
        "the empty venv's python, pip and setuptools).",
        "",
        "| install | what it does | time | size (added) | packages | measured |",
        "|---|---|---|---|---|---|",
    ]
    if free:
        lines.append(f"| `pip install .` | score, serve, reports (ONNX Runtime) | {free['seconds']:.0f} s | "
                     f"{free['size_mb']:.0f} MB ({_mb(free.get('added_mb'))}) | {free['packages']} | {_when(free, res)} |")
    if full:
        lines.append(f"| `pip install '.[torch]'` | + training, evaluation, heatmaps, export, GPUs (torch "
                     f"{full['torch']}) | {full['seconds']:.0f} s | {full['size_mb']:.0f} MB "
                     f"({_mb(full.get('added_mb'))}) | {full['packages']} | {_when(full, res)} |")
    if free:
        ok_size = free["size_mb"] <= TARGETS["size_mb"]
        ok_time = free["seconds"] <= TARGETS["seconds"]
        lines += ["", f"Torch-free targets: ≤ {TARGETS['size_mb']:.0f} MB installed "
                      f"({'met' if ok_size else 'NOT met'}), ≤ {TARGETS['seconds']:.0f} s from the registry "
                      f"({'met' if ok_time else 'NOT met'}). In it, `contentiqa score examples/images` scored "
                      f"{res['score']['photos']} photos in {res['score']['seconds']:.1f} s, torch not installed."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ci", action="store_true", help="torch-free install only, pip's cache allowed, no results written")
    ap.add_argument("--skip-torch", action="store_true", help="measure the torch-free install only")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="contentiqa-install-"))
    res: dict = {"when": time.strftime("%Y-%m-%d %H:%M"), "python": sys.version.split()[0],
                 "load": list(os.getloadavg()), "installs": {}}
    try:
        src = source_copy(work / "src")
        res["installs"]["torch_free"] = {**install(src, work / "venv", "", cache=args.ci),
                                         "when": time.strftime("%Y-%m-%d %H:%M")}
        if res["installs"]["torch_free"]["torch"]:
            raise SystemExit("`pip install .` installed torch: the base install must not need it")
        res["score"] = score_examples(work / "venv", work)
        shutil.rmtree(work / "venv")
        print(f"torch-free install: {res['installs']['torch_free']}; scored {res['score']['photos']} photos")
        if not args.ci and not args.skip_torch:
            res["installs"]["torch"] = {**install(src, work / "venv-torch", "[torch]", cache=False),
                                        "when": time.strftime("%Y-%m-%d %H:%M")}
            shutil.rmtree(work / "venv-torch")
            print(f"with [torch]: {res['installs']['torch']}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not args.ci:
        previous = RESULTS / "install.json"
        if args.skip_torch and previous.is_file():  # keep the last measurement of the other install, marked
            kept = json.loads(previous.read_text())
            torch_row = kept["installs"].get("torch")
            if torch_row:
                res["installs"]["torch"] = {**torch_row, "when": torch_row.get("when") or kept.get("when"),
                                            "carried": True}
        from common import command_line, write_results

        res["command"] = command_line()
        write_results("install", res, markdown(res))  # --skip-torch too: the page says which row is an earlier run's
    return 0


if __name__ == "__main__":
    sys.exit(main())
