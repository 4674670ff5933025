"""int8 against fp32 in ONNX Runtime: speed and accuracy of the shipped models, on one machine.

    python benchmarks/int8.py [--models ie-iqa,iqa-cr,ie-iqa-distortion+iqa-cr+ie-iqa-distortion] [--calib 200] [--ship]
    python benchmarks/int8.py --models ie-iqa.clive-biq2021-v2 --results int8_older_tags --ship
    python benchmarks/int8.py --quick          # few photos (checks that it runs)

For each shipped model (its default weights) and each int8 recipe (which nodes are quantized):

1. calibrate the activation ranges on ``--calib`` photos of the *train* part of clive-dev split
   seed 0 (IE-IQA protocol: the splits of the shipped models' experiment,
   configs/multi_clive_biq2021.yaml) and build the int8 graph
   (:func:`contentiqa.inference.quantize.write_calibration`);
2. score the union of the *test* parts of seeds 0-2 with fp32 and with int8 (the same decoded
   photos) and compute SROCC / PLCC against the MOS per split. The shipped weights were trained
   on all of clive-dev, so the absolute figures are not held-out ones; what decides is the
   *difference* int8 - fp32 on identical photos;
3. time both graphs on the same in-memory photos, same threads (``--threads``, default 2, idle
   threads not spinning), rounds interleaved, the median round; this part holds
   /tmp/contentiqa-bench.lock (so no other timing job runs meanwhile) and records the load average.

A recipe is kept when int8 is >= 1.4x faster, loses <= 0.005 SROCC (mean over the splits) *and*
agrees with fp32 photo by photo (p99 |int8 - fp32| <= 1 point on 0-100, >= 99 % of categories the same).
``--ship`` writes the calibration file of the best recipe beside the shipped weights
(src/contentiqa/weights/<weights>.int8.json; what ``contentiqa score --precision int8`` uses).
Intermediate files (exports, calibrations, scores) are cached in benchmarks/cache/int8, so an
interrupted run resumes. Writes benchmarks/results/int8.json and int8.md.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from common import (bench_lock, CACHE, clive_splits, command_line, md_table, positive_int, require_clive,  # noqa: E402
                    results_stem, write_results)

from contentiqa.utils.io import atomic_write_text  # noqa: E402

WORK = CACHE / "int8"
MIN_SPEEDUP = 1.4
MAX_SROCC_LOSS = 0.005
MAX_P99_DIFF = 1.0
"""int8 must agree with fp32 photo by photo: the 99th percentile of |int8 - fp32| on the 0-100 scale."""
MIN_CATEGORY_AGREEMENT = 0.99
"""... and give the same content category to this share of photos (models with a content head)."""

# The CNN parts of each exported graph, by node name (after ONNX Runtime's pre-processing), and
# which of their first layers stay float. Quality is read from fine detail: int8 activations in
# the first, full-resolution layers act as added noise (the stem quantizes the photo itself onto
# a coarser grid than its 8-bit pixels), so those layers are the candidates to keep float. IE-IQA
# has two CNNs: /model/blocks.N/ + conv_stem / conv_head read the photo (quality), /model/blocks/
# + conv_stem_1 / conv_head_1 its 224-px copy (intelligibility).
_IE_CNNS = (r"^/model/(conv_stem|conv_stem_1|conv_head|conv_head_1)/", r"^/model/blocks(\.\d)?/")
_IE_STEMS = r"^/model/(conv_stem|conv_stem_1)/"
_CR_CNN = (r"^/model/(conv_stem|bn1|blocks\.\d|conv_head|bn2)/",)
_ENS_CNNS = (r"^/model/(conv_stem|bn1|blocks\.\d|conv_head(_\d)?|bn2)/",)
RECIPES = {
    "ie-iqa": {
        "both CNNs": dict(include=_IE_CNNS),
        "both CNNs, quality CNN stages 0-2 float": dict(include=_IE_CNNS, exclude=(r"^/model/(conv_stem|blocks\.[0-2])/",)),
        "both CNNs, stems float": dict(include=_IE_CNNS, exclude=(_IE_STEMS,)),
        "both CNNs, stems and stage 0 float": dict(
            include=_IE_CNNS, exclude=(_IE_STEMS, r"^/model/blocks\.0/", r"^/model/blocks/blocks\.0/")),
        "both CNNs, stems and stages 0-2 float": dict(
            include=_IE_CNNS, exclude=(_IE_STEMS, r"^/model/blocks\.[0-2]/", r"^/model/blocks/blocks\.[0-2]/")),
    },
    # the default ensemble: one shared stem and stages 0-4 (frozen ImageNet weights in every
    # member), then each member's own deep stages (blocks.5.N_1, conv_head_1 ...)
    "ie-iqa-distortion+iqa-cr+ie-iqa-distortion": {
        "CNNs": dict(include=_ENS_CNNS),
        "CNNs, stem and stage 0 float": dict(include=_ENS_CNNS, exclude=(r"^/model/(conv_stem|bn1|blocks\.0)/",)),
        "CNNs, stem and stages 0-1 float": dict(include=_ENS_CNNS, exclude=(r"^/model/(conv_stem|bn1|blocks\.[01])/",)),
        "CNNs, stem and stages 0-2 float": dict(include=_ENS_CNNS, exclude=(r"^/model/(conv_stem|bn1|blocks\.[0-2])/",)),
    },
    "iqa-cr": {
        "CNN": dict(include=_CR_CNN),
        "CNN, stages 0-2 float": dict(include=_CR_CNN, exclude=(r"^/model/(conv_stem|bn1|blocks\.[0-2])/",)),
        "CNN, stem and stage 0 float": dict(include=_CR_CNN, exclude=(r"^/model/(conv_stem|bn1|blocks\.0)/",)),
        "CNN, stem and stages 0-1 float": dict(include=_CR_CNN, exclude=(r"^/model/(conv_stem|bn1|blocks\.[01])/",)),
    },
}


def _recipe_key(recipe) -> str:
    """What a stored calibration and graph were made with: the recipe's settings and the
    quantizer's code, not the recipe's label (an edited recipe under its old label reused them)."""
    import contentiqa.inference.quantize as quantize

    made = json.dumps(recipe.to_dict(), sort_keys=True, default=str).encode() + Path(quantize.__file__).read_bytes()
    return hashlib.sha1(made).hexdigest()[:10]


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_").lower()


def load_photos(model, paths: list[str]) -> list[np.ndarray]:
    from contentiqa.models.scoring import load_image_safely

    out = []
    for p in paths:
        img, _, _, err = load_image_safely(p, model)
        if err is not None:
            raise RuntimeError(f"{p}: {err}")
        out.append(model.preprocess(img).numpy()[None])
    return out


def score_all(session_path: Path, model, paths: list[str], cache: Path, threads: int) -> dict[str, float]:
    """{path: normalised score} of every photo, and {path: content category index} in
    ``categories`` under the key ``"__categories__"`` when the graph has a content head (cached
    in ``cache``: resumable)."""
    from contentiqa.inference.onnx_runtime import make_session
    from contentiqa.models.scoring import load_image_safely

    done = json.loads(cache.read_text()) if cache.is_file() else {}
    cats = done.setdefault("__categories__", {})
    todo = [p for p in paths if p not in done]
    if todo:
        s = make_session(session_path, threads=threads, spinning=False)
        outputs = [o.name for o in s.get_outputs()]
        for k, p in enumerate(todo):
            img, _, _, err = load_image_safely(p, model)
            if err is not None:
                raise RuntimeError(f"{p}: {err}")
            x = model.preprocess(img).numpy()[None]
            out = dict(zip(outputs, s.run(outputs, {"image": x})))
            done[p] = float(out["score"][0])
            if "logits" in out:
                cats[p] = int(np.argmax(out["logits"][0]))
            if k % 50 == 49:  # whole or not at all: a killed run resumes from the last of these
                atomic_write_text(cache, json.dumps(done))
        atomic_write_text(cache, json.dumps(done))
    return {**{p: done[p] for p in paths}, "__categories__": {p: cats[p] for p in paths if p in cats}}


def time_graphs(paths: dict[str, Path], photos: list[np.ndarray], threads: int, rounds: int) -> dict[str, dict]:
    """images/s of each graph on the same in-memory photos, batch 1, rounds interleaved."""
    from contentiqa.inference.onnx_runtime import make_session

    sessions = {k: make_session(p, threads=threads, spinning=False) for k, p in paths.items()}
    for s in sessions.values():  # warm-up: the first runs of a session plan memory / pack weights
        for x in photos[:3]:
            s.run(["score"], {"image": x})
    runs: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():
            t = time.perf_counter()
            for x in photos:
                s.run(["score"], {"image": x})
            runs[k].append(len(photos) / (time.perf_counter() - t))
    return {k: {"ips": statistics.median(v), "runs_ips": v} for k, v in runs.items()}


def split_metrics(scores: dict[str, float], table, splits) -> list[dict[str, float]]:
    from contentiqa.metrics import iqa_metrics

    out = []
    for sp in splits:
        te = table.iloc[sp.indices(table, "test")]
        pred = np.array([scores[p] for p in te["image"]])
        m = iqa_metrics(pred, te["mos"].to_numpy(dtype=float))
        out.append({"seed": sp.seed, "n": len(te), "srocc": float(m["srocc"]), "plcc": float(m["plcc"])})
    return out


def prepare_model(name: str, args, table, splits) -> dict:
    """Calibrate and score (no timing): everything that need not hold the benchmark lock."""
    import contentiqa
    from contentiqa.inference.onnx import export_onnx
    from contentiqa.inference.quantize import Int8Recipe, write_calibration
    from contentiqa.utils.io import file_sha256
    from contentiqa.models.registry import weights_file

    try:
        weights = weights_file(name)[0]  # name or name.tag: the default weights, or that tag's
    except (ValueError, FileNotFoundError) as exc:
        sys.exit(f"{name}: {exc}")
    model = contentiqa.create_model(name).eval()
    sha = file_sha256(weights)[:12]
    WORK.mkdir(parents=True, exist_ok=True)
    from contentiqa.inference.onnx_runtime import EXPORT_REVISION

    sha = f"{sha}-r{EXPORT_REVISION}"  # a new export revision is a new graph: calibrate and score it afresh
    fp32 = WORK / f"{name}-{sha}.onnx"
    if not fp32.is_file():
        export_onnx(model, fp32)
    train = table.iloc[splits[0].indices(table, "train")]["image"].tolist()[: args.calib]
    test = sorted({p for sp in splits for p in table.iloc[sp.indices(table, "test")]["image"]})
    if args.quick:
        test = test[:40]
    print(f"{name}: {len(train)} calibration photos, {len(test)} test photos", flush=True)

    variants = {"fp32": fp32}
    recipes = {}
    calib_files = {}
    for label, kw in RECIPES[name.split(".")[0]].items():
        recipe = Int8Recipe(**kw)
        tag = f"{name}-{sha}-{slug(label)}-{_recipe_key(recipe)}-c{len(train)}"
        cal, q = WORK / f"{tag}.int8.json", WORK / f"{tag}.int8.onnx"
        if not (cal.is_file() and q.is_file()):
            t = time.time()
            write_calibration(fp32, iter(load_photos(model, train)), cal, weights=weights, recipe=recipe,
                              source=f"{len(train)} photos of the train part of clive-dev split seed {splits[0].seed} "
                                     f"(protocol {splits[0].protocol})", int8_out=q)
            print(f"  calibrated '{label}' in {time.time() - t:.0f} s", flush=True)
        variants[label], recipes[label], calib_files[label] = q, recipe, cal

    accuracy = {}
    scores = {}
    for label, path in variants.items():
        scores[label] = score_all(path, model, test, WORK / f"scores-{path.stem}-{len(test)}.json", args.threads)
        if not args.quick:
            accuracy[label] = split_metrics(scores[label], table, splits)

    return dict(name=name, model=model, weights=weights, train=train, test=test, variants=variants, recipes=recipes,
                calib_files=calib_files, scores=scores, accuracy=accuracy)


def time_model(st: dict, args) -> None:
    """Time the graphs of one prepared model (call under the benchmark lock)."""
    photos = load_photos(st["model"], st["test"][: args.timing_photos])
    st["load_before"] = os.getloadavg()
    st["speed"] = time_graphs(st["variants"], photos, args.threads, args.rounds)
    st["load_after"] = os.getloadavg()
    st["timing_photos"] = len(photos)


def summarise(st: dict, args) -> dict:
    from contentiqa.inference.quantize import calibration_path

    weights, train, test = st["weights"], st["train"], st["test"]
    variants, recipes, calib_files, scores, accuracy = (st[k] for k in ("variants", "recipes", "calib_files", "scores", "accuracy"))
    speed, load_before, load_after, timing_photos = st["speed"], st["load_before"], st["load_after"], st["timing_photos"]
    ref = np.array([scores["fp32"][p] for p in test])
    ref_cats = scores["fp32"]["__categories__"]
    span = st["model"].scale.high - st["model"].scale.low
    rows = {}
    for label in variants:
        got = np.array([scores[label][p] for p in test])
        r = {"ips": speed[label]["ips"], "runs_ips": speed[label]["runs_ips"],
             "speedup": speed[label]["ips"] / speed["fp32"]["ips"],
             "max_abs_diff": float(np.max(np.abs(got - ref))), "mean_abs_diff": float(np.mean(np.abs(got - ref))),
             "p99_abs_diff_0_100": float(np.percentile(np.abs(got - ref), 99) * span),
             "max_abs_diff_0_100": float(np.max(np.abs(got - ref)) * span),
             "file_mb": variants[label].stat().st_size / 2**20}
        if ref_cats:
            cats = scores[label]["__categories__"]
            r["category_agreement"] = float(np.mean([cats[p] == ref_cats[p] for p in test]))
        if accuracy:
            acc = accuracy[label]
            r["splits"] = acc
            r["srocc"] = float(np.mean([a["srocc"] for a in acc]))
            r["plcc"] = float(np.mean([a["plcc"] for a in acc]))
            base = accuracy["fp32"]
            r["srocc_delta"] = float(np.mean([a["srocc"] - b["srocc"] for a, b in zip(acc, base)]))
            r["plcc_delta"] = float(np.mean([a["plcc"] - b["plcc"] for a, b in zip(acc, base)]))
        if label != "fp32":
            r["recipe"] = recipes[label].to_dict()
            r["kept"] = bool(r["speedup"] >= MIN_SPEEDUP and r.get("srocc_delta", -1.0) >= -MAX_SROCC_LOSS
                             and r["p99_abs_diff_0_100"] <= MAX_P99_DIFF
                             and r.get("category_agreement", 1.0) >= MIN_CATEGORY_AGREEMENT)
        rows[label] = r
    int8_labels = [k for k in rows if k != "fp32"]
    kept = [k for k in int8_labels if rows[k]["kept"]]
    # what --precision int8 ships: a kept recipe (the fastest), else the most accurate of those fast
    # enough to be kept (int8 is asked for its speed), else of those faster at all
    faster = ([k for k in int8_labels if rows[k]["speedup"] >= MIN_SPEEDUP]
              or [k for k in int8_labels if rows[k]["speedup"] > 1.0] or int8_labels)
    best = max(kept, key=lambda k: rows[k]["speedup"]) if kept else max(
        faster, key=lambda k: (rows[k].get("srocc_delta", 0.0), rows[k]["speedup"]))
    shipped = None
    if args.ship and not args.quick:
        shipped = calibration_path(weights)
        data = json.loads(calib_files[best].read_text())
        # what `contentiqa score` runs when no --precision is given (quantize.default_precision)
        data["default_precision"] = "int8" if kept else "fp32"
        data["measured"] = {k: rows[best][k] for k in ("speedup", "srocc_delta", "plcc_delta") if k in rows[best]}
        atomic_write_text(shipped, json.dumps(data, separators=(",", ":")))
        print(f"  shipped {shipped} ('{best}')", flush=True)
    return {"weights": weights.name, "calibration_photos": len(train), "test_photos": len(test),
            "timing_photos": timing_photos, "load_before": load_before, "load_after": load_after,
            "variants": rows, "best": best, "int8_default": bool(kept), "shipped_calibration": shipped.name if shipped else None}


def render(p: dict) -> str:
    lines = ["# int8 against fp32 (ONNX Runtime, CPU)\n",
             f"One run: `{p['command']}`. {p['threads']} intra-op thread(s), idle threads not spinning, batch 1; "
             f"onnxruntime {p['onnxruntime']}; {p['cpus']} CPU(s): {p['cpu']}. Speed: median of {p['rounds']} interleaved "
             "rounds over the same in-memory photos (preprocessed once), under the benchmark lock. Accuracy: SROCC / PLCC "
             "against the MOS on the test parts of clive-dev splits seeds 0-2 (IE-IQA protocol, 20 %), mean over the "
             "splits; Δ = int8 - fp32 on identical photos. The shipped weights saw all of clive-dev in training, so the "
             "absolute figures are not held-out ones: only the deltas are meaningful here. Calibration: photos of split "
             "seed 0's train part.\n",
             f"Criteria for int8 as the default: >= {MIN_SPEEDUP:g}x faster, <= {MAX_SROCC_LOSS:g} SROCC lost, and "
             f"photo by photo p99 |int8 - fp32| <= {MAX_P99_DIFF:g} on the 0-100 scale with the same content category "
             f"for >= {MIN_CATEGORY_AGREEMENT:.0%} of photos.\n"]
    for name, r in p["models"].items():
        lines.append(f"\n## {name} ({r['weights']})\n")
        lines.append(f"{r['calibration_photos']} calibration photos, {r['test_photos']} test photos, "
                     f"{r['timing_photos']} timed; load average before / after timing "
                     f"{r['load_before'][0]:.2f} / {r['load_after'][0]:.2f}.\n")
        rows = []
        for label, v in r["variants"].items():
            rows.append([label if label == "fp32" else f"int8: {label}", f"{v['ips']:.1f}", f"{v['speedup']:.2f}",
                         f"{v.get('srocc', float('nan')):.4f}", f"{v.get('srocc_delta', 0.0):+.4f}",
                         f"{v.get('plcc', float('nan')):.4f}", f"{v.get('plcc_delta', 0.0):+.4f}",
                         f"{v.get('p99_abs_diff_0_100', float('nan')):.2f}", f"{v.get('max_abs_diff_0_100', float('nan')):.2f}",
                         f"{v['category_agreement']:.1%}" if "category_agreement" in v else "-", f"{v['file_mb']:.1f}",
                         "-" if label == "fp32" else ("**kept**" if v["kept"] else "no")])
        lines.append(md_table(["graph", "images/s", "x fp32", "SROCC", "Δ SROCC", "PLCC", "Δ PLCC",
                               "p99 |Δ score| (0-100)", "max |Δ score| (0-100)", "same category", "MB", "meets all"], rows))
        verdict = ("int8 is the default for this model" if r["int8_default"] else
                   "no recipe meets every criterion: fp32 stays the default; `--precision int8` uses "
                   f"'{r['best']}', the fast enough recipe with the best Δ SROCC on these same photos (so its Δ "
                   "is a little optimistic: it also chose the recipe)")
        lines.append(f"\n{verdict}" + (f" (calibration shipped as {r['shipped_calibration']})" if r["shipped_calibration"] else "") + ".\n")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="ie-iqa,iqa-cr,ie-iqa-distortion+iqa-cr+ie-iqa-distortion",
                    help="registered names (their default weights) or name.tag (older weights, with --results)")
    ap.add_argument("--results", default="int8", help="results file name (benchmarks/results/NAME.json/.md)")
    ap.add_argument("--calib", type=positive_int, default=200, help="calibration photos (train part of split seed 0)")
    ap.add_argument("--threads", type=positive_int, default=2)
    ap.add_argument("--rounds", type=positive_int, default=3)
    ap.add_argument("--timing-photos", type=positive_int, default=48)
    ap.add_argument("--ship", action="store_true", help="write the best recipe's calibration beside the shipped weights")
    ap.add_argument("--quick", action="store_true", help="8 calibration and 40 test photos, 1 round (checks that it runs)")
    args = ap.parse_args()
    if args.quick:
        args.calib, args.rounds, args.timing_photos = 8, 1, 8
    import onnxruntime
    import platform

    from contentiqa.data import load_dataset
    from contentiqa.inference.threads import usable_cpus

    ds = load_dataset("csv", require_clive())
    table = ds.table
    splits, _ = clive_splits("ie-iqa", range(3), table)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    states = [prepare_model(name, args, table, splits) for name in names]
    with bench_lock():  # all timings together, no other timing job meanwhile
        for st in states:
            time_model(st, args)
    models = {st["name"]: summarise(st, args) for st in states}
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    payload = {"command": command_line(), "threads": args.threads, "rounds": args.rounds, "onnxruntime": onnxruntime.__version__,
               "cpus": usable_cpus(), "cpu": cpu, "quick": args.quick, "models": models}
    write_results(results_stem(ap, args, "results", ignore=("ship",)), payload, render(payload))


if __name__ == "__main__":
    main()
