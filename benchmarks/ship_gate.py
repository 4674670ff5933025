"""The ship gate: may a candidate recipe replace the current default? Measured as a user gets it.

    CONTENTIQA_BIQ2021=/path/to/BIQ2021 python benchmarks/ship_gate.py \\
        --candidate RUNS/multi_finetune --candidate-row "IE-IQA, fine-tuned, ..." \\
        --baseline RUNS/multi_clive_biq2021 --baseline-row "IE-IQA, normalised + ranking" [--name ie-iqa]

``--baseline-from benchmarks/results/ship_gate_ie-iqa.json`` instead of ``--baseline`` takes the
default recipe's per-seed measures from the gate that passed it, when its results folder is gone.

Both recipes must have been run as experiments on clive-dev's IE-IQA splits (the published
3 seeds, benchmarks/results/splits_clive_ie-iqa.json) together with BIQ2021's official split:
the gate takes each seed's ``tested.pt`` (the model that seed's test figures come from: chosen
on validation, calibrated) and scores through ``contentiqa score`` with its defaults (ONNX
Runtime on the CPU, the precision ``score`` picks), so runtime and precision are what users
get. Per seed, on photos that seed never trained on:

- clive-dev: the seed's test part (SROCC, PLCC);
- BIQ2021: the official test part (SROCC, PLCC);
- damage: the seed's 8 best-rated test photos under blur, JPEG, noise, under- and
  overexposure at levels 0-4 (contentiqa.data.degrade): Kendall tau between level and score,
  per photo, averaged per type (-1: every step down scores lower);
- obviously bad: black, white and gray frames, uniform noise, blur of radius 16 and 32, 8x
  pixelation, JPEG quality 5 and 2, made from 8 test photos: the mean score of each, and that
  mean less the 10th percentile of the seed's clive-dev test scores (below 0: below it). The
  flat frames are constant, so a recipe trained with bad-frame anchors has seen them: for it
  they are a check of what it learnt, not a held-out measure (the other kinds are made from
  the test photos themselves);
- clipped: the share of real test photos (both sets) scored exactly at an end of the scale;
- content (a model with a content head, both sides): the category ``score`` gives each
  clive-dev photo against people's scene labels (scene_labels.csv): the main label (top-1) and
  any of the photo's labels.

A measure is worse when the candidate's mean over the seeds falls short of the baseline's by
more than the larger of their spreads (sample std over the seeds), better when it beats it by
more than that. The gate passes when nothing is worse and something is better. The table goes
to benchmarks/results/ship_gate_<name>.md and .json (and every model's in ship_gate.md), with
the issue's targets beside it (``--out STEM`` puts a candidate's table elsewhere, e.g. a rejected
one's, so that the record of the gate the default passed stays);
benchmarks/ship.py reads the verdict before it makes a tag the default. The JSON also records
what was judged: the sha256 of each seed's ``tested.pt``, the candidate row's recipe
(:attr:`~contentiqa.experiments.config.RunSpec.recipe_sha256`) and what it trained on
(:attr:`~contentiqa.experiments.config.ExperimentConfig.data_sha256`), and ship.py refuses a row
edited, trained on other data, or weights retrained or of another seed, since.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import RESULTS, ROOT, clive_table, command_line, contentiqa_env, provenance

SEEDS = (0, 1, 2)
N_DAMAGE = 8
N_BAD = 8
CLIVE_SPLITS = RESULTS / "splits_clive_ie-iqa.json"

TARGETS = {
    "CLIVE SROCC": (">=", 0.84), "CLIVE PLCC": (">=", 0.86), "BIQ2021 SROCC": (">=", 0.87),
    **{f"damage tau {k}": ("<=", -0.95) for k in ("blur", "jpeg", "noise", "underexposure", "overexposure")},
    "clipped %": ("<=", 1.0),
    "CLIVE content top-1": (">=", 0.72), "CLIVE content any label": (">=", 0.85),
}
# issue 20 asks the `iqa-cr` default for quality SROCC >= 0.82 on clive-dev; the correlation targets
# above are the product's default's
MODEL_TARGETS = {"iqa-cr": {"CLIVE SROCC": (">=", 0.82), "CLIVE PLCC": None, "BIQ2021 SROCC": None}}


def targets_for(name: str) -> dict[str, tuple[str, float]]:
    """The issue's targets for the model whose default is at stake."""
    merged = {**TARGETS, **MODEL_TARGETS.get(name, {})}
    return {m: t for m, t in merged.items() if t is not None}


def biq_root() -> Path:
    return Path(os.environ.get("CONTENTIQA_BIQ2021", ROOT.parent / "data" / "biq2021"))


def _made_from(path: str, seed: int) -> str:
    """A key of what a damage or bad-frame image is made from: its source photo (path, size,
    date), the seed and the code that degrades it. Stored images are named by it, so a changed
    split, photo or degradation never reuses another's images from a shared --work folder."""
    from contentiqa.data.degrade import code_fingerprint

    st = os.stat(path)
    code = code_fingerprint()
    return hashlib.sha1(f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{seed}|{code}".encode()).hexdigest()[:12]


def suite(seed: int, test, work: Path) -> dict[str, list]:
    """The seed's images: its real clive-dev photos (``test``: the rows judged) and the damage /
    bad-frame images made from them (written once as PNG, lossless, under ``work``)."""
    from functools import partial

    from contentiqa.data.degrade import BAD_FRAMES, DEGRADATIONS, LEVELS, bad_frame, degrade
    from contentiqa.data.imageio import load_image
    from contentiqa.utils.io import atomic_write

    best = test.sort_values("mos", ascending=False).head(N_DAMAGE)
    folder = work / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    damage, bad = [], []
    for i, path in enumerate(best["image"]):
        img = load_image(path).image
        made = _made_from(path, seed)
        for kind in DEGRADATIONS:
            for level in (0, *LEVELS):
                out = folder / f"damage_{i}_{made}_{kind}_{level}.png"
                if not out.is_file():  # written whole or not at all: a killed run leaves no torn photo
                    atomic_write(out, partial(degrade(img, kind, level, seed=1000 * seed + i).save, format="PNG"))
                damage.append({"photo": i, "kind": kind, "level": level, "path": str(out)})
    rng = np.random.default_rng([seed, 23])
    for i, path in enumerate(test["image"].iloc[rng.permutation(len(test))[:N_BAD]]):
        img = load_image(path).image
        made = _made_from(path, seed)
        for kind in BAD_FRAMES:
            out = folder / f"bad_{i}_{made}_{kind.replace(' ', '_')}.png"
            if not out.is_file():
                atomic_write(out, partial(bad_frame(img, kind, seed=1000 * seed + i).save, format="PNG"))
            bad.append({"kind": kind, "path": str(out)})
    labels = {}
    if "category" in test:  # people's scene labels: the main one, and every label of the photo
        from contentiqa.data.labels import acceptable_sets

        sets = acceptable_sets(test["categories"]) if "categories" in test else [set() for _ in range(len(test))]
        labels = {os.path.abspath(p): (c, s or {c}) for p, c, s in zip(test["image"], test["category"], sets)
                  if isinstance(c, str) and c}
    return {"clive": list(zip(test["image"], test["mos"])), "damage": damage, "bad": bad, "labels": labels}


def score_files(model: Path, files: list[str], out_csv: Path) -> dict[str, float]:
    """``contentiqa score --model MODEL FILES -o OUT`` with its defaults; path -> score (and, for a
    model with a content head, ``"category:" + path`` -> its category)."""
    def stored() -> list[dict]:
        with open(out_csv, newline="") as fh:
            return list(csv.DictReader(fh))

    wanted = {os.path.abspath(f) for f in files}
    # the rows of the images asked for: another part's rows (a failure among them) are not this run's
    rows = [r for r in stored() if os.path.abspath(r["path"]) in wanted] if out_csv.is_file() else []
    if not wanted <= {os.path.abspath(r["path"]) for r in rows if not r["error"]}:
        # scored before only when it holds every image asked for now, each scored: a failure
        # (memory, a file still syncing) is tried again, not served from the table on every rerun
        rows = []
    if not rows:
        listing = out_csv.with_suffix(".txt")
        cmd = [sys.executable, "-m", "contentiqa", "score", "--model", str(model), "-o", str(out_csv), "--force", "-q",
               *files]
        listing.write_text(" ".join(cmd))
        r = subprocess.run(cmd, env=contentiqa_env(), capture_output=True, text=True)
        if r.returncode not in (0, 1) or not out_csv.is_file():
            raise SystemExit(f"score failed for {model} (rc {r.returncode}): {r.stderr.strip()[-2000:]}")
        rows = [r for r in stored() if os.path.abspath(r["path"]) in wanted]
    scores, precision = {}, set()
    for row in rows:
        if row["error"]:
            raise SystemExit(f"{model}: {row['path']} could not be scored: {row['error']} (scores in {out_csv})")
        scores[os.path.abspath(row["path"])] = float(row["score"])
        if row.get("category"):
            scores["category:" + os.path.abspath(row["path"])] = row["category"]  # type: ignore[assignment]
        precision.add(row["precision"])
    scores["__precision__"] = ",".join(sorted(precision))  # type: ignore[assignment]
    return scores


def measures(scores: dict[str, float], images: dict[str, list], biq: list[tuple[str, float]]) -> dict[str, float]:
    from scipy.stats import kendalltau

    from contentiqa.metrics import plcc, srocc

    def get(p):
        return scores[os.path.abspath(p)]

    out: dict[str, float] = {}
    clive_scores = np.array([get(p) for p, _ in images["clive"]])
    clive_mos = np.array([m for _, m in images["clive"]])
    biq_scores = np.array([get(p) for p, _ in biq])
    biq_mos = np.array([m for _, m in biq])
    out["CLIVE SROCC"], out["CLIVE PLCC"] = srocc(clive_scores, clive_mos), plcc(clive_scores, clive_mos)
    out["BIQ2021 SROCC"], out["BIQ2021 PLCC"] = srocc(biq_scores, biq_mos), plcc(biq_scores, biq_mos)
    by_kind: dict[str, dict[int, list]] = {}
    for d in images["damage"]:
        by_kind.setdefault(d["kind"], {}).setdefault(d["photo"], []).append((d["level"], get(d["path"])))
    for kind, photos in by_kind.items():
        taus = []
        for pairs in photos.values():
            lv, sc = zip(*sorted(pairs))
            tau = kendalltau(lv, sc).statistic
            taus.append(0.0 if np.isnan(tau) else float(tau))  # a constant score: no response at all
        out[f"damage tau {kind}"] = float(np.mean(taus))
    p10 = float(np.percentile(clive_scores, 10))
    for kind in dict.fromkeys(b["kind"] for b in images["bad"]):
        mean = float(np.mean([get(b["path"]) for b in images["bad"] if b["kind"] == kind]))
        out[f"bad {kind}: mean score"] = mean
        out[f"bad {kind}: mean - p10"] = mean - p10
    real = np.concatenate([clive_scores, biq_scores])
    out["clipped %"] = 100.0 * float(np.mean((real <= 0.0) | (real >= 100.0)))
    said = {p: scores.get("category:" + p) for p in images.get("labels", {})}
    if images.get("labels") and all(said.values()):  # a content model: people's labels judge it too
        main_hits = [said[p] == main for p, (main, _) in images["labels"].items()]
        any_hits = [said[p] in every for p, (_, every) in images["labels"].items()]
        out["CLIVE content top-1"], out["CLIVE content any label"] = float(np.mean(main_hits)), float(np.mean(any_hits))
    return out


def higher_is_better(measure: str) -> bool:
    return not (measure.startswith(("damage", "bad")) or measure == "clipped %")


def compare(base: list[dict[str, float]], cand: list[dict[str, float]],
            targets: dict[str, tuple[str, float]] | None = None) -> tuple[list[dict], str]:
    """Rows and the verdict: PASS when no measure is worse beyond the larger seed spread and one
    is better beyond it. Without a spread (one seed) any difference would decide: refused. A
    measure the baseline has and the candidate lacks (content, for a model without a content
    head) is worse: the default would lose it; one only the candidate has is not compared. A
    measure that is NaN on some seed cannot show the candidate is no worse: worse. ``targets``:
    the issue's, per measure (:func:`targets_for`; default the product's default's)."""
    targets = TARGETS if targets is None else targets
    if len(base) < 2 or len(cand) < 2:
        raise ValueError(f"the gate needs two seeds or more a side (got {len(base)} and {len(cand)}): it judges by their spread")
    rows, worse, better = [], 0, 0
    measures = list(dict.fromkeys(k for r in base for k in r))
    for m in measures:
        if not any(m in r for r in cand):
            rows.append({"measure": m, "baseline": float(np.mean([r.get(m, np.nan) for r in base])), "baseline_std": 0.0,
                         "candidate": float("nan"), "candidate_std": 0.0, "spread": 0.0, "verdict": "WORSE"})
            worse += 1
            continue
        b = np.array([r.get(m, np.nan) for r in base], dtype=float)
        c = np.array([r.get(m, np.nan) for r in cand], dtype=float)
        spread = max(float(b.std(ddof=1)), float(c.std(ddof=1)))
        gain = (c.mean() - b.mean()) * (1 if higher_is_better(m) else -1)
        if not np.isfinite(gain) or not np.isfinite(spread):  # a seed lacks it or it is NaN: unproven
            verdict = "WORSE"
        else:
            verdict = "better" if gain > spread else ("WORSE" if gain < -spread else "same")
        worse += verdict == "WORSE"
        better += verdict == "better"
        row = {"measure": m, "baseline": float(b.mean()), "baseline_std": float(b.std(ddof=1)) if len(b) > 1 else 0.0,
               "candidate": float(c.mean()), "candidate_std": float(c.std(ddof=1)) if len(c) > 1 else 0.0,
               "spread": spread, "verdict": verdict}
        if m in targets:
            op, t = targets[m]
            row["target"] = f"{op} {t:g}"
            row["target_met"] = bool(c.mean() >= t if op == ">=" else c.mean() <= t)
        elif m.startswith("bad ") and m.endswith("mean score"):
            row["target"] = "<= 20"
            row["target_met"] = bool(c.mean() <= 20)
        elif m.startswith("bad ") and m.endswith("- p10"):
            row["target"] = "< 0"
            row["target_met"] = bool(c.mean() < 0)
        rows.append(row)
    return rows, ("PASS" if not worse and better else "FAIL")


def markdown(payload: dict) -> str:
    val = payload.get("part") == "val"
    lines = [f"# Ship gate: {payload['name']}" + (" (validation parts: choosing a recipe, not gating it)" if val else ""), "",
             f"**{payload['verdict']}**: candidate `{payload['candidate']['row']}` "
             f"({payload['candidate']['runs']}) against the current default's recipe `{payload['baseline']['row']}` "
             f"({payload['baseline']['runs']}), seeds {', '.join(map(str, payload['seeds']))}, scored by "
             f"`contentiqa score` with its defaults (precision: candidate {payload['candidate']['precision']}, "
             f"baseline {payload['baseline']['precision']}).", "",
             "| measure | baseline | candidate | verdict | target | met |", "|---|---|---|---|---|---|"]
    for r in payload["rows"]:
        met = "" if "target_met" not in r else ("yes" if r["target_met"] else "**no**")
        lines.append(f"| {r['measure']} | {r['baseline']:.3f} ± {r['baseline_std']:.3f} | {r['candidate']:.3f} ± "
                     f"{r['candidate_std']:.3f} | {r['verdict']} | {r.get('target', '')} | {met} |")
    where = (("the validation part its experiment held out of each seed's train part, less any seed's test photos",
              "its validation part drawn per seed", "validation") if val
             else ("each seed's test part (20 %)", "its official test part", "test"))
    lines += ["", "Mean ± sample std over the seeds' models. Worse / better: beyond the larger of the two spreads. "
              f"clive-dev: {where[0]}; BIQ2021: {where[1]}; damage and bad frames made from each seed's {where[2]} "
              "photos (benchmarks/ship_gate.py's docstring; the black, white and gray frames are constant, so "
              "a recipe trained with bad-frame anchors has seen them). Scores on the 0-100 scale.", "",
              f"Command: `{payload['command']}` ({payload['minutes']:.1f} min, {payload['provenance']['machine']}, "
              f"{payload['provenance']['date']})."]
    return "\n".join(lines) + "\n"


def parts(args, seed: int, clive, split, biq_table, tested=frozenset()):
    """The (clive-dev rows, BIQ2021 rows) judged for ``seed``: the test parts, or (``--part
    val``) the validation parts the candidate's experiment held out of the train parts, less
    the photos of any seed's test part (``tested``): a choice made on the mean over seeds would
    otherwise read the other seeds' test photos, whose figures are published."""
    if args.part == "test":
        return clive.iloc[split.indices(clive, "test")], biq_table[biq_table["split"] == "test"]
    import yaml

    from contentiqa.data import load_splits
    from contentiqa.experiments.runner import carve_val

    data = yaml.safe_load((args.candidate / "config.yaml").read_text())["data"]
    fraction = (data[0] if isinstance(data, list) else data).get("val_fraction")
    if not fraction:
        raise SystemExit(f"{args.candidate}: its first training set holds no validation part out (val_fraction)")
    _, val = carve_val(clive.iloc[split.indices(clive, "train")], float(fraction), seed)
    val = val[~val["image"].isin(tested)]
    biq_split = {s.seed: s for s in load_splits(args.candidate / "splits_BIQ2021.json")}[seed]
    return val, biq_table.iloc[biq_split.indices(biq_table, "val")]


def said(precisions: set[str]) -> str:
    """The precision(s) a side was scored at over its seeds: one, or each of a mix."""
    return ",".join(sorted(precisions))


def scoring_fingerprint() -> str:
    """A hash of the package's code and version: stored score tables are keyed by it, so that a
    changed runtime, default precision or preprocessing is judged as it scores now."""
    import contentiqa

    h = hashlib.sha1(contentiqa.__version__.encode())
    package = Path(contentiqa.__file__).parent
    for module_file in sorted(package.rglob("*.py")):
        h.update(str(module_file.relative_to(package)).encode())
        h.update(module_file.read_bytes())
    return h.hexdigest()[:12]


def val_inputs(candidate: Path, seeds: list[int]) -> None:
    """SystemExit unless the candidate's experiment holds what ``--part val`` reads: its config
    and the BIQ2021 splits of every seed."""
    from contentiqa.data import load_splits

    for needed in ("config.yaml", "splits_BIQ2021.json"):
        if not (candidate / needed).is_file():
            raise SystemExit(f"--part val: {candidate / needed} is missing (the candidate's experiment folder holds "
                             "its validation parts there)")
    try:
        have = {s.seed for s in load_splits(candidate / "splits_BIQ2021.json")}
    except (OSError, ValueError) as exc:
        raise SystemExit(f"--part val: {candidate / 'splits_BIQ2021.json'}: {exc}") from None
    if not set(seeds) <= have:
        raise SystemExit(f"--part val: {candidate / 'splits_BIQ2021.json'} has seeds {sorted(have)}, not {seeds}")


def gate_name(name: str | None, candidate: Path, row: str) -> str:
    """The model whose default is at stake: ``name`` (--name), which must be the candidate row's
    model where its config.yaml names it (ship.py reads ship_gate_<the row's model>.json, with
    that model's targets), else that model. ValueError when neither says."""
    row_model = recorded_model(candidate, row)
    if name is None:
        if row_model is None:
            raise ValueError(f"--name: the candidate row {row!r} is not in {candidate / 'config.yaml'}: "
                             "say which model's default is at stake")
        return row_model
    if row_model is not None and row_model != name:
        raise ValueError(f"--name {name}: the candidate row {row!r} trains {row_model}")
    return name


def recorded_model(runs: Path, row: str) -> str | None:
    """The row's model in the experiment folder's config.yaml; None where the row is not there."""
    cfg = _recorded_config(runs)
    return None if cfg is None else next((r.model for r in cfg.runs if r.name == row), None)


def tested_model(runs: Path, row: str, seed: int) -> Path:
    from contentiqa.experiments.config import slugify

    path = runs / "runs" / slugify(row) / f"seed{seed}" / "tested.pt"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run the experiment with that row first (contentiqa experiment ...)")
    return path


def row_recipe(runs: Path, row: str) -> str | None:
    """The row's :attr:`~contentiqa.experiments.config.RunSpec.recipe_sha256` in the experiment
    folder's config.yaml; None where the row is not there (an ensemble's folder holds its
    source's config: its row name spells its recipe)."""
    cfg = _recorded_config(runs)
    return None if cfg is None else next((r.recipe_sha256 for r in cfg.runs if r.name == row), None)


def row_data(runs: Path, row: str) -> str | None:
    """What the row was trained on (:attr:`~contentiqa.experiments.config.ExperimentConfig.data_sha256`)
    in the experiment folder's config.yaml; None where the row is not there (as :func:`row_recipe`)."""
    cfg = _recorded_config(runs)
    return cfg.data_sha256 if cfg is not None and any(r.name == row for r in cfg.runs) else None


def _recorded_config(runs: Path):
    from contentiqa.experiments import load_config
    from contentiqa.experiments.config import ConfigError

    if not (runs / "config.yaml").is_file():
        return None
    try:
        return load_config(runs / "config.yaml")
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None


def recorded_measures(path: Path, row: str, seeds: list[int], part: str
                      ) -> tuple[list[dict[str, float]], str, str, dict[str, str]]:
    """A recipe's per-seed measures from an earlier gate's JSON (either side of it), so that the
    current default's recipe need not be retrained for every candidate: a results folder does not
    outlive the machine it was trained on, a gate file does. The seeds and the part must match,
    and the file names the commit whose code scored them. Returns (measures, precision, where, the
    row's recipe_sha256 and data_sha256 as far as that record says them)."""
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"--baseline-from {path}: cannot read it as a gate's JSON ({exc})") from None
    if payload.get("part", "test") != part or list(payload.get("seeds", [])) != list(seeds):
        raise SystemExit(f"--baseline-from {path}: it holds part {payload.get('part', 'test')!r}, seeds "
                         f"{payload.get('seeds')}; this gate needs part {part!r}, seeds {seeds}")
    for side in ("candidate", "baseline"):
        if payload.get(side, {}).get("row") == row:
            copied = str(payload[side].get("runs", ""))
            if "scored at commit" in copied:  # that side was itself read from an earlier gate: name that one
                where = copied
            else:
                commit = payload.get("provenance", {}).get("git_commit", "unknown")
                where = f"{path.name} ({side} there, scored at commit {str(commit)[:12]})"
            identity = {k: payload[side][k] for k in ("recipe_sha256", "data_sha256") if payload[side].get(k)}
            return payload["per_seed"][side], payload[side]["precision"], where, identity
    raise SystemExit(f"--baseline-from {path}: no side of it is the row {row!r} "
                     f"(it has {payload.get('candidate', {}).get('row')!r} and {payload.get('baseline', {}).get('row')!r})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidate", type=Path, required=True, help="the candidate recipe's experiment results folder")
    ap.add_argument("--candidate-row", required=True)
    ap.add_argument("--baseline", type=Path, default=None, help="the current default recipe's experiment results folder")
    ap.add_argument("--baseline-from", type=Path, default=None, metavar="GATE.json",
                    help="instead of --baseline: that row's per-seed measures from an earlier gate's JSON "
                         "(e.g. benchmarks/results/ship_gate_ie-iqa.json, where the default's recipe was the candidate)")
    ap.add_argument("--baseline-row", required=True)
    ap.add_argument("--name", default=None,
                    help="the model whose default is at stake (results file name, targets; default: the candidate "
                         "row's model in its config.yaml)")
    ap.add_argument("--work", type=Path, default=ROOT.parent / "runs" / "ship_gate", help="suite images and score tables")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument("--part", choices=("test", "val"), default="test",
                    help="test (the gate) or val: the same measures on the validation parts the candidate's experiment "
                         "held out (choosing a recipe; both rows must come from experiments with those parts)")
    ap.add_argument("--out", type=Path, default=None, metavar="STEM",
                    help="write the table to STEM.md and STEM.json (default: benchmarks/results/ship_gate_<name>, "
                         "or selection_<name> with --part val); e.g. a rejected candidate's own file")
    args = ap.parse_args(argv)
    try:
        args.name = gate_name(args.name, args.candidate, args.candidate_row)
    except ValueError as exc:
        ap.error(str(exc))
    if (args.baseline is None) == (args.baseline_from is None):
        ap.error("give one of --baseline (a results folder) and --baseline-from (an earlier gate's JSON)")
    if args.baseline_from is not None:
        written = result_stem(args.name, args.part, args.out)
        if (written.parent / f"{written.name}.json").resolve() == Path(args.baseline_from).resolve():
            ap.error(f"this gate would write its verdict over --baseline-from {args.baseline_from}, the record it "
                     "reads: name another file with --out")
    t0 = time.time()
    from contentiqa.data import load_dataset, load_splits

    splits = {s.seed: s for s in load_splits(CLIVE_SPLITS)}
    # before any scoring: the verdict needs a spread, and each seed its published split
    # (a seed given twice counted twice in the mean and narrowed the spread)
    if len(set(args.seeds)) < 2 or len(set(args.seeds)) != len(args.seeds) or not set(args.seeds) <= set(splits):
        ap.error(f"--seeds: two or more of the published splits' seeds {sorted(splits)} (given {args.seeds})")
    recipe = row_recipe(args.candidate, args.candidate_row)
    trained_on = row_data(args.candidate, args.candidate_row)
    sides = [("candidate", args.candidate, args.candidate_row)]
    if args.baseline is not None:
        sides.insert(0, ("baseline", args.baseline, args.baseline_row))
    # every side's and seed's weights before any scoring: a misspelt folder or a missing seed
    # is said at once, not after the seeds before it were scored
    models = {(side, seed): tested_model(runs, row, seed) for side, runs, row in sides for seed in args.seeds}
    if args.part == "val":
        val_inputs(args.candidate, args.seeds)

    clive = clive_table()
    root = biq_root()
    if not root.is_dir():
        raise SystemExit(f"ship gate skipped: BIQ2021 not found at {root} (set CONTENTIQA_BIQ2021)")
    biq_table = load_dataset("biq2021", root).table
    results: dict[str, list[dict[str, float]]] = {"baseline": [], "candidate": []}
    precision: dict[str, set[str]] = {"baseline": set(), "candidate": set()}
    # what was judged, so that ship.py ships nothing else under this verdict
    tested: dict[str, dict[str, str]] = {"baseline": {}, "candidate": {}}
    if args.baseline_from is not None:
        results["baseline"], recorded_precision, baseline_where, baseline_identity = recorded_measures(
            args.baseline_from, args.baseline_row, args.seeds, args.part)
        precision["baseline"].update(recorded_precision.split(","))
        print(f"baseline: {args.baseline_row!r} as measured in {baseline_where}", flush=True)
    else:
        baseline_where = str(args.baseline)
        baseline_identity = {k: v for k, v in (("recipe_sha256", row_recipe(args.baseline, args.baseline_row)),
                                               ("data_sha256", row_data(args.baseline, args.baseline_row))) if v}
    scoring = scoring_fingerprint()
    # every published seed's test photos: kept out of every seed's validation part (--part val)
    published_test = frozenset(p for s in splits.values() for p in clive.iloc[s.indices(clive, "test")]["image"])
    for seed in args.seeds:
        clive_rows, biq_rows = parts(args, seed, clive, splits[seed], biq_table, published_test)
        biq = list(zip(biq_rows["image"], biq_rows["mos"]))
        images = suite(seed, clive_rows, args.work / f"suite_{args.part}")
        files = [p for p, _ in images["clive"]] + [p for p, _ in biq] + [d["path"] for d in images["damage"]] \
            + [b["path"] for b in images["bad"]]
        for side, runs, row in sides:
            model = models[side, seed]
            # keyed by the model file itself (its path and bytes) and the code that scores it: two
            # rows, or two copies of a results folder, never share stored scores, and a changed
            # `contentiqa score` (its runtime, its default precision) scores again
            from contentiqa.utils.io import file_sha256

            tested[side][str(seed)] = file_sha256(model)
            key = hashlib.sha1(f"{model.resolve()}|{tested[side][str(seed)]}|{scoring}".encode()).hexdigest()[:16]
            out = args.work / "scores" / f"{args.part}_{side}_{runs.name}_{seed}_{key}.csv"
            out.parent.mkdir(parents=True, exist_ok=True)
            print(f"seed {seed}: scoring {len(files)} images with the {side} ({model})", flush=True)
            scores = score_files(model, files, out)
            precision[side].update(str(scores.pop("__precision__")).split(","))
            results[side].append(measures(scores, images, biq))
    rows, verdict = compare(results["baseline"], results["candidate"], targets_for(args.name))
    payload = {
        "name": args.name, "verdict": verdict, "seeds": args.seeds, "rows": rows, "per_seed": results,
        "candidate": {"runs": str(args.candidate), "row": args.candidate_row, "precision": said(precision["candidate"]),
                      "recipe_sha256": recipe, "data_sha256": trained_on,
                      "tested_sha256": tested["candidate"]},
        "baseline": {"runs": baseline_where, "row": args.baseline_row, "precision": said(precision["baseline"]),
                     **baseline_identity,  # ship.py holds it to the default's own recipe, not its name alone
                     **({"tested_sha256": tested["baseline"]} if tested["baseline"] else {})},
        "command": command_line(), "minutes": (time.time() - t0) / 60, "provenance": provenance(),
    }
    payload["part"] = args.part
    write_results(payload, args.out)
    print(markdown(payload))
    if args.part == "val":  # choosing, not gating
        return 0
    return 0 if verdict == "PASS" else 1


def result_stem(name: str, part: str, out: Path | None = None) -> Path:
    """Where a gate's table goes: ``out`` (its .md/.json suffix dropped) when given, else
    ship_gate_<name> for the test parts (the record ship.py reads) or selection_<name> for the
    validation parts. A rejected candidate written elsewhere leaves the passing gate's record alone."""
    if out is not None:
        return out.with_suffix("") if out.suffix in (".md", ".json") else out
    return RESULTS / (f"selection_{name}" if part == "val" else f"ship_gate_{name}")


def write_results(payload: dict, out: Path | None = None) -> Path:
    """Write the gate's JSON and table atomically; for the test parts, ship_gate.md then gathers
    every model's record (:func:`summary_records`)."""
    from contentiqa.utils.io import atomic_write_text

    stem = result_stem(payload["name"], payload["part"], out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    # appended, not with_suffix: a stem may hold a dot ("..._anchors0.3") that is not a suffix
    atomic_write_text(stem.parent / f"{stem.name}.json", json.dumps(payload, indent=1))
    atomic_write_text(stem.parent / f"{stem.name}.md", markdown(payload))
    if payload["part"] == "test":
        write_summary()
    return stem


def summary_records() -> list[dict]:
    """What ship_gate.md shows, one record per model name: its newest passing gate on the test
    parts, whether written as ship_gate_<name> or beside it with --out (ship_gate_<name>_*: a
    default may ship under such a gate, benchmarks/ensemble.py --gate); a name none passed, its
    ship_gate_<name> record. A rejected candidate written elsewhere never shows."""
    shown: dict[str, list[tuple[tuple[bool, str], dict]]] = {}
    for path in sorted(RESULTS.glob("ship_gate_*.json")):
        record = json.loads(path.read_text())
        name = record.get("name")
        if not name or record.get("part", "test") != "test":
            continue
        passed = record.get("verdict") == "PASS"
        if path.stem == f"ship_gate_{name}" or (passed and path.stem.startswith(f"ship_gate_{name}_")):
            shown.setdefault(name, []).append(((passed, str(record["provenance"].get("date"))), record))
    # passing before failing, then the newest
    return [max(held, key=lambda kept: kept[0])[1] for _, held in sorted(shown.items())]


def write_summary() -> Path:
    """ship_gate.md from :func:`summary_records`."""
    from contentiqa.utils.io import atomic_write_text

    path = RESULTS / "ship_gate.md"
    atomic_write_text(path, "\n".join(markdown(r) for r in summary_records()))
    return path


if __name__ == "__main__":
    sys.exit(main())
