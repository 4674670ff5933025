"""IQA-CR's content named from the backbone levels (``content_from="levels"``): fitted on each
split's trained IQA-CR for the ship gate, and on a shipped tag to ship it.

    # each seed's tested IQA-CR with a content head on the levels, fitted on the seed's training
    # photos (L2 and target mix chosen on its validation part; the test part is never read)
    python benchmarks/content_head.py --runs ../runs/multi_finetune \\
        --row "IQA-CR, probe + anchors 0.1, then 1:3 from it with damage 0.3, mixed on both sets, calibrated" \\
        [--out ../runs/multi_finetune]
    python benchmarks/ship_gate.py --candidate ../runs/multi_finetune --candidate-row "<the row it printed>" \\
        --baseline ../runs/multi_finetune --baseline-row "<--row>" --name iqa-cr \\
        --out benchmarks/results/ship_gate_iqa-cr_level_content

    # a shipped tag with its content head fitted on the clive-dev photos that tag trained on
    python benchmarks/content_head.py --ship --from iqa-cr.clive-biq2021-v2 --tag clive-biq2021-v3 \\
        --row "<the gate's candidate row>" --gate benchmarks/results/ship_gate_iqa-cr_level_content [--default]

The score is the model's own (copied, :meth:`contentiqa.models.iqa_cr.IQACR.with_level_content`);
only the category changes. Per seed the photos are the experiment's: the seed's clive-dev train
part less the validation share it held out (``val_fraction`` of the runs' config.yaml, drawn as
:func:`contentiqa.experiments.runner.carve_val` draws it), both flips of each. Results:
benchmarks/results/content_head.json/.md, or ``--name``'s (validation parts only).
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from common import RESULTS, ROOT, clive_table, command_line, provenance, results_stem, save_npz

WEIGHTS = ROOT / "src" / "contentiqa" / "weights"
SUFFIX = ", content head on the levels"


def labelled(table):
    """Rows people labelled: (rows, main labels, label sets)."""
    from contentiqa.data.labels import acceptable_sets

    if "category" not in table:
        raise SystemExit("people's scene labels are needed: scene_labels.csv beside clive-dev's scores.csv")
    rows = table[[isinstance(c, str) and bool(c) for c in table["category"]]]
    sets = [s or {c} for s, c in zip(acceptable_sets(rows["categories"]), rows["category"])]
    return rows, list(rows["category"]), sets


def features(model, table, work: Path) -> dict[bool, dict[str, np.ndarray]]:
    """{hflip: {image: level means}} for every photo of ``table``, cached under ``work`` per
    backbone weights (the frozen ImageNet stages every seed shares)."""
    from tqdm import tqdm

    from contentiqa.training.cache import weights_fingerprint
    from contentiqa.training.content_head import level_means

    key = weights_fingerprint(list(model.stages[:model.feature_end]))
    path = work / f"level_means_{key}.npz"
    images = list(table["image"])
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            if list(z["images"]) == images:
                return {flip: dict(zip(images, z[f"flip{int(flip)}"])) for flip in (False, True)}
    arrays = {f"flip{int(flip)}": level_means(model, images, flip, lambda it: tqdm(it, desc=f"level means, flip {flip}"))
              for flip in (False, True)}
    save_npz(path, images=np.array(images), **arrays)
    return {flip: dict(zip(images, arrays[f"flip{int(flip)}"])) for flip in (False, True)}


def fit_on(model, feats, train, val):
    """The fitted head for ``model``: trained on both flips of ``train``'s labelled photos, chosen
    on ``val``'s; (fit, the model's own validation accuracy from its tokens, the photo counts, each
    head's :func:`calibration` on ``val``)."""
    import torch

    from contentiqa.data.imageio import load_image
    from contentiqa.training.content_head import accuracy, fit_content_head

    tr, main_tr, sets_tr = labelled(train)
    va, main_va, sets_va = labelled(val)
    x_tr = np.concatenate([np.stack([feats[flip][p] for p in tr["image"]]) for flip in (False, True)])
    x_va = np.stack([feats[False][p] for p in va["image"]])
    fit = fit_content_head(x_tr, main_tr * 2, sets_tr * 2, model.categories, val=(x_va, main_va, sets_va))
    with torch.no_grad():
        logits = np.concatenate([model(model.preprocess(load_image(p).image).unsqueeze(0))["logits"].numpy()
                                 for p in va["image"]])
    confidence = {"levels": calibration(x_va @ fit.weight.T + fit.bias, main_va, model.categories),
                  "tokens": calibration(logits, main_va, model.categories)}
    return fit, accuracy(logits, main_va, sets_va, model.categories), (len(tr), len(va)), confidence


def calibration(logits: np.ndarray, main, categories) -> tuple[float, float]:
    """(mean confidence of the named category, its expected calibration error against the main
    label, 10 bins): what ``category_confidence`` promises against how often the category is right."""
    import torch
    from torchmetrics.functional.classification import multiclass_calibration_error

    probs = torch.as_tensor(np.asarray(logits), dtype=torch.float64).softmax(-1)
    target = torch.tensor([list(categories).index(m) for m in main])
    ece = multiclass_calibration_error(probs, target, num_classes=len(categories), n_bins=10, norm="l1")
    return float(probs.max(-1).values.mean()), float(ece)


def per_seed(args) -> None:
    import yaml

    from contentiqa.data import load_splits
    from contentiqa.experiments.config import slugify
    from contentiqa.experiments.runner import carve_val
    from contentiqa.models import load_checkpoint
    from contentiqa.models.registry import save_checkpoint
    from contentiqa.utils.io import atomic_write_text

    t0 = time.time()
    table = clive_table()
    data = yaml.safe_load((args.runs / "config.yaml").read_text())["data"]
    fraction = float((data[0] if isinstance(data, list) else data)["val_fraction"])
    splits = {s.seed: s for s in load_splits(RESULTS / "splits_clive_ie-iqa.json")}
    row = args.row + SUFFIX
    records = []
    for seed in args.seeds:
        source = args.runs / "runs" / slugify(args.row) / f"seed{seed}" / "tested.pt"
        if not source.is_file():
            raise SystemExit(f"{source} is missing: run the experiment with that row first")
        model = load_checkpoint(source)
        feats = features(model, table, args.work)
        train, val = carve_val(table.iloc[splits[seed].indices(table, "train")], fraction, seed)
        fit, (tok_top1, tok_any), (n_tr, n_va), conf = fit_on(model, feats, train, val)
        new = model.with_level_content(fit.weight, fit.bias)
        target = args.out / "runs" / slugify(row) / f"seed{seed}" / "tested.pt"
        target.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(new, target, omit_pretrained_backbone=True, extra={
            "from": str(source), "content_head": {"l2": fit.l2, "mix": fit.mix}, "provenance": provenance()})
        records.append({"seed": seed, "train_photos": n_tr, "val_photos": n_va, "l2": fit.l2, "mix": fit.mix,
                        "levels_top1": fit.val_top1, "levels_any": fit.val_any,
                        "tokens_top1": tok_top1, "tokens_any": tok_any,
                        **{f"{k}_{m}": v for k, (c, e) in conf.items() for m, v in (("confidence", c), ("ece", e))}})
        print(f"seed {seed}: l2 {fit.l2:g}, mix {fit.mix:g}: validation top-1 {fit.val_top1:.3f} / any {fit.val_any:.3f}"
              f" (tokens {tok_top1:.3f} / {tok_any:.3f}) -> {target}", flush=True)
    for extra in ("config.yaml", "splits_BIQ2021.json"):
        if (args.runs / extra).is_file() and args.out.resolve() != args.runs.resolve():
            shutil.copyfile(args.runs / extra, args.out / extra)
    payload = {"row": row, "from_row": args.row, "runs": str(args.runs), "part": "val", "seeds": records,
               "command": command_line(), "minutes": (time.time() - t0) / 60, "provenance": provenance()}
    atomic_write_text(RESULTS / f"{args.name}.json", json.dumps(payload, indent=1) + "\n")
    atomic_write_text(RESULTS / f"{args.name}.md", markdown(payload))
    print(f"candidate row: {row}")


def markdown(payload: dict) -> str:
    def ms(key: str) -> str:
        v = np.array([r[key] for r in payload["seeds"]])
        return f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}"

    lines = [
        "# content_head", "",
        "IQA-CR's content from a linear head on the global means of the backbone levels its bottleneck reads "
        "(`content_from=\"levels\"`), against the same models' own content from the pooled tokens, on each seed's "
        "clive-dev **validation** part (people's scene labels; top-1 = the main label, any = one of the photo's "
        "labels). The head was fitted on the seed's training photos (both flips); its L2 strength and target mix "
        "were chosen here, among eight settings, so its figures are a little optimistic. The scores are the "
        "models' own. Test parts: the ship gate's table (ship_gate_iqa-cr_level_content.md).", "",
        f"Models: each seed's tested model of row \"{payload['from_row']}\" (its experiment folder "
        f"`{payload['runs']}`).", "",
        "| content from | seeds | top-1 | any label | mean confidence | calibration error (ECE) |",
        "|---|---|---|---|---|---|",
        *[f"| {name} | {len(payload['seeds'])} | {ms(k + '_top1')} | {ms(k + '_any')} | {ms(k + '_confidence')} | "
          f"{ms(k + '_ece')} |" for name, k in (("pooled tokens (the paper's head)", "tokens"),
                                                ("the levels' global means", "levels"))], "",
        "Mean confidence: the softmax probability of the named category (`category_confidence`), averaged; "
        "calibration error: how far that confidence is from how often the category is the main label (10 bins, "
        "torchmetrics' multiclass ECE).", "",
        "| seed | training photos | validation photos | L2 | mix |", "|---|---|---|---|---|",
        *[f"| {r['seed']} | {r['train_photos']} | {r['val_photos']} | {r['l2']:g} | {r['mix']:g} |" for r in payload["seeds"]],
        "", f"Command: `{payload['command']}` ({payload['minutes']:.1f} min on {payload['provenance']['machine']}).", "",
    ]
    return "\n".join(lines)


def ship(args) -> Path:
    """``iqa-cr_<tag>.pt`` from the shipped ``--from`` tag, its content head fitted on the
    clive-dev photos that tag trained on (the settings chosen on the photos it held out)."""
    from ship import CARD_CAVEAT, gate_for, set_default_tag

    from contentiqa.experiments.runner import carve_val
    from contentiqa.models import create_model
    from contentiqa.models.registry import save_checkpoint, weights_file
    from contentiqa.utils.io import atomic_write_text, file_sha256

    gate = args.gate if args.gate is not None else RESULTS / "ship_gate_iqa-cr"
    verdict = gate_for("iqa-cr", args.row, args.tag, args.weights_dir, default=args.default, override=args.override_gate,
                       path=Path(f"{gate}.json")) or "a tag beside the default: no gate needed"
    t0 = time.time()
    model = create_model(args.source)
    table = clive_table()
    # The tag's own held-out photos: benchmarks/ship.py holds out seed 0's val_fraction of all of
    # clive-dev, drawn as the experiment draws a split's validation part.
    train, val = carve_val(table, args.val_fraction, 0)
    fit, (tok_top1, tok_any), (n_tr, n_va), _ = fit_on(model, features(model, table, args.work), train, val)
    new = model.with_level_content(fit.weight, fit.bias)
    path = args.weights_dir / f"iqa-cr_{args.tag}.pt"
    source_file = weights_file(args.source)[0]
    source_extra = model.checkpoint_info or {}
    save_checkpoint(new, path, omit_pretrained_backbone=True, extra={
        # how the score was trained is the source tag's (the recipe tests read it from here)
        **{k: source_extra[k] for k in ("trained_on", "train_config", "best_epoch", "val_srocc") if k in source_extra},
        "tag": args.tag, "from": {"spec": args.source, "file": source_file.name, "sha256": file_sha256(source_file)},
        "content_head": {"l2": fit.l2, "mix": fit.mix, "val_top1": fit.val_top1, "val_any": fit.val_any},
        "gate_row": args.row, "ship_gate": verdict, "provenance": provenance()})
    card = f"""# Model card: `iqa-cr.{args.tag}` ({path.name})

- **What**: `{args.source}` (see its card: architecture, training, calibration) with its content categories
  named by a linear head on the global means of the backbone levels its bottleneck reads (`content_from: levels`)
  instead of by its Transformer's pooled tokens. Its score is `{args.source}`'s, copied.
- **Content head**: multinomial logistic regression (`contentiqa.training.content_head`) on people's scene labels of
  the {n_tr} labelled clive-dev photos `{args.source}` trained on (both flips); L2 {fit.l2:g} and target mix {fit.mix:g}
  (share of the target spread over all of a photo's labels) chosen on the {n_va} labelled photos it held out:
  top-1 {fit.val_top1:.3f} and any label {fit.val_any:.3f} there, against {tok_top1:.3f} and {tok_any:.3f} from the tokens.
- **Content categories**: {', '.join(new.categories)}.
- **Measured**: benchmarks/results/{Path(gate).name}.md (the ship gate: the same head fitted per split on the
  training parts of the three clive-dev splits, scored through `contentiqa score` on the test parts).
{CARD_CAVEAT}- **Reproduce**: `{command_line()}` ({(time.time() - t0) / 60:.1f} min on {provenance()['machine']}).
- **Size**: {path.stat().st_size / 1e6:.1f} MB.
"""
    atomic_write_text(args.weights_dir / f"iqa-cr_{args.tag}.md", card)
    print(card)
    if args.default:
        set_default_tag("iqa-cr", args.tag, args.weights_dir)
        print(f"iqa-cr: default tag is now {args.tag}")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, help="an experiment's results folder holding the row's IQA-CR runs")
    ap.add_argument("--row", required=True, help="the row whose models get the head (with --ship: the gate's candidate row)")
    ap.add_argument("--out", type=Path, default=None,
                    help="where each seed's model goes, as a row of an experiment-like folder (default: --runs, "
                         "beside the row's own runs, so that benchmarks/ensemble.py can pair it with the others)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--name", default="content_head",
                    help="results stem under benchmarks/results (one per row judged, so none overwrites another)")
    ap.add_argument("--ship", action="store_true", help="fit the head on a shipped tag and write a new tag")
    ap.add_argument("--from", dest="source", default="iqa-cr.clive-biq2021-v2")
    ap.add_argument("--tag", default=None)
    ap.add_argument("--val-fraction", type=float, default=0.15, help="the tag's held-out share (its config's)")
    ap.add_argument("--gate", type=Path, default=None, metavar="STEM", help="the ship gate's results stem")
    ap.add_argument("--default", action="store_true", help="make the tag iqa-cr's default (the gate must have passed)")
    ap.add_argument("--override-gate", action="store_true")
    ap.add_argument("--weights-dir", type=Path, default=WEIGHTS)
    ap.add_argument("--work", type=Path, default=ROOT.parent / "runs" / "content_head",
                    help="where the photos' level means are cached")
    args = ap.parse_args(argv)
    if args.ship:
        if not args.tag:
            ap.error("--ship needs --tag")
        ship(args)
    else:
        if args.runs is None:
            ap.error("give --runs (an experiment's results folder) or --ship")
        if not (args.runs / "config.yaml").is_file():
            ap.error(f"--runs {args.runs}: no config.yaml there, so not an experiment's results folder "
                     "(`contentiqa experiment CONFIG --out DIR` makes one)")
        args.out = args.out or args.runs
        # (the row and folders are what is measured; fewer seeds are a check run's)
        args.name = results_stem(ap, args, "name", ignore=("runs", "row", "out", "work"))
        per_seed(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
