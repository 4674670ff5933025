"""Shared plumbing of the benchmarks: where the real data is, the fixed splits, result files."""
from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CACHE = ROOT / "benchmarks" / "cache"
SHARED = Path(os.environ.get("CONTENTIQA_SHARED", ROOT.parent / "shared"))
CLIVE_CSV = SHARED / "data" / "clive-dev" / "scores.csv"


def require_clive() -> Path:
    if not CLIVE_CSV.is_file():
        sys.exit(f"benchmark skipped: real CLIVE data not found at {CLIVE_CSV} (set CONTENTIQA_SHARED)")
    return CLIVE_CSV


def clive_splits(protocol: str, seeds, table):
    """The benchmark splits, made once per protocol and saved beside the results."""
    from contentiqa.data import load_splits, make_split_set, save_splits

    path = RESULTS / f"splits_clive_{protocol}.json"
    seeds = list(seeds)
    if path.is_file():
        splits = {s.seed: s for s in load_splits(path)}
        if all(s in splits for s in seeds):
            return [splits[s] for s in seeds], path
    splits = make_split_set(table, protocol, seeds=seeds)
    save_splits(splits, path)
    return splits, path


def command_line() -> str:
    """How this script was run, for the results file (every argument, as typed)."""
    return shlex.join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])


def provenance() -> dict:
    """The package's provenance record (version, git commit, torch, machine, GPU, date, command)."""
    from contentiqa.experiments import provenance as package_provenance

    return package_provenance()


def write_results(name: str, payload: dict, markdown: str) -> None:
    from contentiqa.utils.io import atomic_write_text

    payload = {**payload, "provenance": provenance()}
    atomic_write_text(RESULTS / f"{name}.json", json.dumps(payload, indent=1))
    atomic_write_text(RESULTS / f"{name}.md", markdown)
    print(markdown)


def md_table(header: list[str], rows: list[list]) -> str:
    # imported when called: importing contentiqa imports torch, which speed.py must configure first
    from contentiqa.experiments.runner import md_table as _md

    return _md(header, rows)


def format_row_table(rows: list[tuple[str, str]], model: str, out_name: str, title: str, first_col: str, note: str) -> str:
    """Collect one model's summary from several results files into one comparison table."""
    from contentiqa.metrics import format_mean_std

    table = []
    for label, stem in rows:
        path = RESULTS / f"{stem}.json"
        if not path.is_file():
            continue
        res = json.loads(path.read_text())["results"][model]
        f = format_mean_std(res["summary"])
        table.append([label, str(len(res["runs"])), f.get("plcc", "–"), f.get("srocc", "–"), f.get("rmse", "–"),
                      f.get("accuracy", "–")])
    md = title + md_table([first_col, "splits", "PLCC", "SROCC", "RMSE (0-100)", "content acc. (pseudo-labels)"], table) + note
    write_results(out_name, {"rows": [r[0] for r in rows], "table": table}, md)
    return md
