"""Generalization beyond one dataset: the summary table of the experiment configs, the floor
rows, and the shipped CLIVE models on BIQ2021's official test part.

    CONTENTIQA_BIQ2021=/path/to/BIQ2021 CONTENTIQA_CACHE=/path/to/cache \\
        python benchmarks/generalization.py --runs RUNS_DIR [--shipped N]

RUNS_DIR holds the results folders of

    contentiqa experiment configs/biq2021_cross.yaml       --out RUNS_DIR/biq2021_cross
    contentiqa experiment configs/clive_cross.yaml         --out RUNS_DIR/clive_cross
    contentiqa experiment configs/multi_clive_biq2021.yaml --out RUNS_DIR/multi_clive_biq2021
    contentiqa experiment configs/clive_content.yaml       --out RUNS_DIR/clive_content

(each copied to benchmarks/results/<name>.{md,json}). The floor — ridge regression on frozen
Lite0 features (last stage, global average at native resolution), penalty chosen on a
validation part — is fitted on exactly the splits of those experiments (their splits files),
from the same cached encodings. ``--shipped N`` scores N photos of BIQ2021's test part
(stratified by MOS; all 2,000 with N=0) with each shipped model as a user would
(``contentiqa evaluate``'s code path). Writes benchmarks/results/generalization.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from common import RESULTS, md_table, results_name, write_results
from floor import ridge_fit, ridge_predict

ALPHAS = 10.0 ** np.arange(-1, 5)
EXPERIMENTS = ("biq2021_cross", "clive_cross", "multi_clive_biq2021", "clive_content")
PUBLISHED_SHIPPED = 200
"""BIQ2021 test photos the published shipped-weights table scores (``--shipped 200``)."""


def _features(table, cache: str | None) -> np.ndarray:
    """Last-stage global-average Lite0 features (1280) of every image, from the pooled cache."""
    from contentiqa.models import create_model
    from contentiqa.training.cache import cached_encodings

    model = create_model("iqa-cr-q", pretrained=False).eval()
    enc = cached_encodings(model, list(table["image"]), model.feature_end, train=False, cache_dir=cache,
                           runtime="onnx", progress=True)
    last = model.level_channels[-1]
    return np.stack([e["gap"][0, -last:].float().numpy() for e in enc]).astype(np.float64)


def _fit(x_tr, y_tr, x_va, y_va):
    from contentiqa.metrics import iqa_metrics

    best = max(ALPHAS, key=lambda a: iqa_metrics(ridge_predict(ridge_fit(x_tr, y_tr, a), x_va), y_va)["srocc"])
    return ridge_fit(x_tr, y_tr, best), float(best)


def _holdout(idx: np.ndarray, seed: int, frac: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    idx = rng.permutation(idx)
    k = max(1, int(round(len(idx) * frac)))
    return np.sort(idx[k:]), np.sort(idx[:k])


def floor_rows(runs: Path, cache: str | None) -> dict:
    """The floor, fitted on each experiment's own splits; normalised MOS for several datasets."""
    from contentiqa.data import load_dataset, load_splits
    from contentiqa.metrics import iqa_metrics, mean_std

    shared = Path(os.environ.get("CONTENTIQA_SHARED", Path(__file__).resolve().parents[2] / "shared"))
    biq_root = Path(os.environ.get("CONTENTIQA_BIQ2021", Path(__file__).resolve().parents[2] / "data" / "biq2021"))
    clive = load_dataset("csv", shared / "data" / "clive-dev" / "scores.csv")
    biq = load_dataset("biq2021", biq_root)
    xc, xb = _features(clive.table, cache), _features(biq.table, cache)
    yc, yb = clive.scale.normalize(clive.table["mos"]), biq.scale.normalize(biq.table["mos"])
    out: dict[str, dict] = {}

    def metrics(model, x, y):
        return iqa_metrics(ridge_predict(model, x), y)

    def splits(name, file="splits.json"):
        path = runs / name / file
        return load_splits(path) if path.is_file() else []

    rows = {"biq2021_cross": [], "clive_cross": [], "multi_clive_biq2021": []}
    for s in splits("biq2021_cross"):
        tr, va, te = (s.indices(biq.table, p) for p in ("train", "val", "test"))
        m, a = _fit(xb[tr], yb[tr], xb[va], yb[va])
        rows["biq2021_cross"].append({"seed": s.seed, "alpha": a, "BIQ2021": metrics(m, xb[te], yb[te]),
                                      "CLIVE": metrics(m, xc, yc)})
    biq_official = {s.seed: s for s in splits("biq2021_cross")}
    for s in splits("clive_cross"):
        tr, te = s.indices(clive.table, "train"), s.indices(clive.table, "test")
        fit_tr, va = _holdout(tr, s.seed)  # no val part in the IE-IQA protocol: 10 % of train picks alpha
        m, a = _fit(xc[fit_tr], yc[fit_tr], xc[va], yc[va])
        bte = np.flatnonzero(biq.table["split"].to_numpy() == "test")
        rows["clive_cross"].append({"seed": s.seed, "alpha": a, "CLIVE": metrics(m, xc[te], yc[te]),
                                    "BIQ2021 test": metrics(m, xb[bte], yb[bte])})
    for s in splits("multi_clive_biq2021"):
        b = biq_official.get(s.seed) or next((x for x in splits("multi_clive_biq2021", "splits_BIQ2021.json") if x.seed == s.seed), None)
        if b is None:
            continue
        ctr, cte = s.indices(clive.table, "train"), s.indices(clive.table, "test")
        btr, bva, bte = (b.indices(biq.table, p) for p in ("train", "val", "test"))
        x_tr, y_tr = np.concatenate([xc[ctr], xb[btr]]), np.concatenate([yc[ctr], yb[btr]])
        m, a = _fit(x_tr, y_tr, xb[bva], yb[bva])
        rows["multi_clive_biq2021"].append({"seed": s.seed, "alpha": a, "CLIVE": metrics(m, xc[cte], yc[cte]),
                                            "BIQ2021": metrics(m, xb[bte], yb[bte])})
    for name, rs in rows.items():
        if rs:
            labels = [k for k in rs[0] if k not in ("seed", "alpha")]
            out[name] = {lab: mean_std([{k: r[lab][k] for k in ("plcc", "srocc")} for r in rs]) for lab in labels}
            out[name]["splits"] = rs
    return out


def shipped_on_biq2021(n: int) -> dict:
    """Each shipped model on (a MOS-stratified sample of) BIQ2021's test part, scored from the files."""
    from contentiqa.data import load_dataset
    from contentiqa.models import create_model, list_pretrained
    from contentiqa.training.evaluate import evaluate_model

    biq_root = Path(os.environ.get("CONTENTIQA_BIQ2021", Path(__file__).resolve().parents[2] / "data" / "biq2021"))
    ds = load_dataset("biq2021", biq_root, split="test")
    table = ds.table.sort_values("mos").reset_index(drop=True)
    if n and n < len(table):
        table = table.iloc[np.linspace(0, len(table) - 1, n).round().astype(int)].reset_index(drop=True)
    out = {}
    for name in [n for n in list_pretrained() if n.endswith(".clive")]:  # the models trained on CLIVE alone
        t0 = time.time()
        metrics, _ = evaluate_model(create_model(name, pretrained=True), table, ds.scale, progress=True, workers=0)
        out[name] = {**metrics, "seconds": round(time.time() - t0, 1)}
        print(name, {k: round(v, 4) for k, v in metrics.items()})
    return {"n": len(table), "models": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, required=True, help="folder with the experiments' results folders")
    ap.add_argument("--shipped", type=int, default=None, metavar="N",
                    help="also score N BIQ2021 test photos with each shipped model (0 = all 2,000)")
    ap.add_argument("--cache", default=os.environ.get("CONTENTIQA_CACHE"), help="frozen-encoding cache (default $CONTENTIQA_CACHE)")
    args = ap.parse_args()
    from contentiqa.metrics import format_mean_std

    from contentiqa.utils.io import atomic_write_text

    t0 = time.time()
    # The data first: without it nothing below can be computed, and no results file is touched.
    try:
        floor = floor_rows(args.runs, args.cache)
    except FileNotFoundError as exc:
        sys.exit(f"benchmark skipped: {exc} (set CONTENTIQA_SHARED and CONTENTIQA_BIQ2021)")
    # the experiments' own tables, copied next to this summary; one not rerun into RUNS_DIR keeps
    # its earlier copy there, and its floor rows (fitted on its splits) from the earlier summary
    tables, earlier = {}, []
    for name in EXPERIMENTS:
        src = args.runs / name
        if (src / "results.json").is_file():
            for ext in ("json", "md"):
                atomic_write_text(RESULTS / f"{name}.{ext}", (src / f"results.{ext}").read_text(encoding="utf-8"))
            tables[name] = json.loads((src / "results.json").read_text())
        elif (RESULTS / f"{name}.json").is_file():
            tables[name] = json.loads((RESULTS / f"{name}.json").read_text())
            earlier.append(name)
    previous = RESULTS / "generalization.json"
    before = json.loads(previous.read_text()) if previous.is_file() else {}
    for name in earlier:
        if name not in floor and name in (before.get("floor") or {}):
            floor[name] = before["floor"][name]
    shipped = before.get("shipped")
    if args.shipped is not None:
        shipped = shipped_on_biq2021(args.shipped)

    def cell(summary: dict, label: str, metric: str) -> str:
        return format_mean_std(summary.get(label, {}), [metric]).get(metric, "–")

    lines = ["# Generalization: BIQ2021, cross-dataset and multi-dataset training\n"]
    for name, title, labels in (
        ("biq2021_cross", "Trained on BIQ2021's official train part", ["BIQ2021", "CLIVE"]),
        ("clive_cross", "Trained on clive-dev (IE-IQA protocol 80/20)", ["CLIVE", "BIQ2021 test"]),
        ("multi_clive_biq2021", "Trained on clive-dev + BIQ2021 train at once", ["CLIVE", "BIQ2021"]),
    ):
        rows = []
        for run, r in tables.get(name, {}).get("runs", {}).items():
            rows.append([run, str(len(r["seeds"]))] + [cell(r["summary"], lab, m) for lab in labels for m in ("plcc", "srocc")])
        if name in floor:
            f = floor[name]
            rows.append(["floor: frozen Lite0 GAP + ridge", str(len(f["splits"]))]
                        + [cell(f, lab, m) for lab in labels for m in ("plcc", "srocc")])
        if rows:
            header = ["model", "splits"] + [f"{lab} {m.upper()}" for lab in labels for m in ("plcc", "srocc")]
            lines += [f"## {title}\n", md_table(header, rows)]
    if shipped:
        rows = [[m, f"{v['plcc']:.3f}", f"{v['srocc']:.3f}", f"{v['seconds']:.0f} s"] for m, v in shipped["models"].items()]
        lines += [f"## The CLIVE-only shipped weights (`*.clive`: last backbone stages fine-tuned on clive-dev) on BIQ2021 test "
                  f"({shipped['n']} photos, MOS-stratified)\n",
                  md_table(["model", "PLCC", "SROCC", "time"], rows)]
    lines.append("Tables of the experiments themselves (per-split metrics, RMSE, provenance): "
                 + ", ".join(f"[{n}.md]({n}.md)" for n in tables) + ". The floor is fitted on the same splits "
                 "(ridge penalty from 10^-1..10^4 picked on the validation part; for clive-dev's IE-IQA splits, "
                 "which have none, on 10 % of the training part). Command: `python benchmarks/generalization.py "
                 f"--runs RUNS_DIR{'' if args.shipped is None else f' --shipped {args.shipped}'}` after the four "
                 "`contentiqa experiment` commands in its docstring"
                 + (f" (the shipped-weights table: an earlier `--shipped {shipped['n']}` run, kept in generalization.json)"
                    if shipped and args.shipped is None else "")
                 + (f"; {', '.join(earlier)}: earlier runs (their copies in benchmarks/results and floor rows)"
                    if earlier else "")
                 + ". This summary took "
                 f"{(time.time() - t0) / 60:.1f} min (cached features).\n")
    # the shipped table of another number of photos than the published one is a check run's
    kept = ("shipped",) if args.shipped in (None, PUBLISHED_SHIPPED) else ()
    write_results(results_name("generalization", ap, args, ignore=("runs", "cache", *kept)), {"floor": floor, "shipped": shipped, "experiments": list(tables)}, "\n".join(lines))


if __name__ == "__main__":
    main()
