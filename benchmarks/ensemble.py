"""Ensembles of trained models (contentiqa.models.ensemble): made from an experiment's rows, split
by split, so that the ship gate can judge them; and shipped from shipped weights.

    # each seed's ensemble of two rows' tested models, as a row of an experiment-like folder
    python benchmarks/ensemble.py --runs ../runs/valgate \\
        --rows "IE-IQA distortion only, probe + anchors 0.1, then 1:3 from it, mixed on both sets" \\
               "IQA-CR, probe + anchors 0.1, then 1:3 from it with damage 0.3, mixed on both sets" \\
        --name ie-iqa-distortion+iqa-cr --out ../runs/valgate_ensemble
    python benchmarks/ship_gate.py --part val --candidate ../runs/valgate_ensemble --candidate-row "<the row it printed>" \\
        --name ie-iqa-distortion+iqa-cr ...

    # rows of two experiments on the same splits (a clive-dev-only row as a third member)
    python benchmarks/ensemble.py --runs ../runs/valgate3 --member-runs ../runs/valgate3 ../runs/valgate3 \\
        ../runs/clive_finetune --rows ROW_A ROW_B "IE-IQA, fine-tuned + damage" --name ensemble \\
        --input-size 512 --weights 2 1 0.5 --out ../runs/valgate3_ens_w0.5

    # the shipped ensemble from shipped members (only once the gate passed its recipe: ship.py's rule)
    python benchmarks/ensemble.py --ship --name ie-iqa-distortion+iqa-cr --tag clive-biq2021 \\
        --members ie-iqa-distortion.clive-biq2021 iqa-cr.clive-biq2021-v2 --row "<the gate's candidate row>"

An ensemble is not trained: each member is what its own row trained on that split (its
``tested.pt``: mixed and calibrated as the experiment tested it). The folder written holds, per
seed, ``runs/<row>/seed<S>/tested.pt`` and the source folder's ``config.yaml`` and BIQ2021
splits, which is what benchmarks/ship_gate.py reads.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from common import ROOT, command_line, provenance

WEIGHTS = ROOT / "src" / "contentiqa" / "weights"


def row_name(rows: list[str], combine: str, input_size: int | None = None, weights: list[float] | None = None) -> str:
    w = f", weights {':'.join(f'{x:g}' for x in weights)}" if weights is not None else ""
    at = f" at {input_size} px" if input_size is not None else ""
    return f"Ensemble ({combine} mean{w}){at}: " + " + ".join(rows)


def _held_out(runs: Path) -> tuple[str | None, float | None]:
    """What an experiment held out of its first training set: the splits file its config names and
    the validation share carved from each train part (None where its config says nothing)."""
    import yaml

    config = runs / "config.yaml"
    cfg = (yaml.safe_load(config.read_text()) or {}) if config.is_file() else {}
    data = cfg.get("data") or [{}]
    first = data[0] if isinstance(data, list) else data
    return cfg.get("splits"), (first or {}).get("val_fraction")


def build_from_runs(runs: Path, rows: list[str], name: str, out: Path, combine: str = "harmonic",
                    weights: list[float] | None = None, input_size: int | None = None,
                    member_runs: list[Path] | None = None) -> str:
    """Write each seed's ensemble of ``rows`` (their ``tested.pt``) under ``out``; returns its row name.

    ``member_runs``: each row's own results folder, for rows trained by different experiments on the
    same splits (e.g. a clive-dev-only row beside clive-dev + BIQ2021 ones); default ``runs`` for all.
    ``runs`` gives the data protocol the ship gate reads (its config.yaml and BIQ2021 splits)."""
    from contentiqa.experiments.config import slugify
    from contentiqa.models import build_ensemble, load_checkpoint
    from contentiqa.models.registry import save_checkpoint
    from contentiqa.utils.io import atomic_write_text

    member_runs = list(member_runs) if member_runs else [runs] * len(rows)
    if len(member_runs) != len(rows):
        raise SystemExit(f"{len(rows)} rows but {len(member_runs)} member results folders")
    folders = [m / "runs" / slugify(r) for m, r in zip(member_runs, rows)]
    # A seed's members must have held out the same photos: the same splits, and where the gate will
    # judge validation parts (``runs`` carves one), the same share carved for them.
    held = {str(m): _held_out(m) for m in dict.fromkeys(member_runs)}
    gate_val = _held_out(runs)[1]
    if len({h[0] for h in held.values()}) > 1 or (gate_val and len({h[1] for h in held.values()}) > 1):
        raise SystemExit(f"the rows' experiments held out different photos (splits, validation share): {held}")
    for r, f in zip(rows, folders):
        if not f.is_dir():
            raise SystemExit(f"{f} is missing: train the row {r!r} first (contentiqa experiment ... --only ROW)")
    seeds = sorted(set.intersection(*[{p.parent.name for p in f.glob("seed*/tested.pt")} for f in folders]))
    if not seeds:
        raise SystemExit(f"no seed has a tested.pt for every row under {runs}")
    row = row_name(rows, combine, input_size, weights)
    for seed in seeds:
        target = out / "runs" / slugify(row) / seed / "tested.pt"
        members = [load_checkpoint(f / seed / "tested.pt") for f in folders]
        model = build_ensemble(members, weights, combine=combine, name=name, input_size=input_size)
        target.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(model, target, omit_pretrained_backbone=True, extra={
            "members": [str(f / seed / "tested.pt") for f in folders], "provenance": provenance()})
        print(f"{seed}: {target}", flush=True)
    for extra in ("config.yaml", "splits_BIQ2021.json"):
        if (runs / extra).is_file():
            shutil.copyfile(runs / extra, out / extra)
    atomic_write_text(out / "ensemble.json", json.dumps({"row": row, "rows": rows, "name": name, "combine": combine,
                                                         "weights": weights, "input_size": input_size,
                                                         "runs": str(runs), "seeds": seeds,
                                                         "member_runs": [str(m) for m in member_runs],
                                                         "command": command_line()}, indent=1) + "\n")
    return row


def built_row(members: list[str], combine: str, input_size: int | None, weights: list[float] | None) -> str:
    """The gate row an ensemble of shipped ``members`` is: the rows their cards say trained them
    (ship.card_row; '?' where a card says none), combined as :func:`row_name` names it."""
    from ship import card_row

    from contentiqa.models.registry import weights_file

    return row_name([card_row(weights_file(m)[0].with_suffix(".md")) or "?" for m in members], combine, input_size,
                    weights)


def ship(name: str, tag: str, members: list[str], row: str, combine: str = "harmonic",
         weights: list[float] | None = None, override_gate: bool = False, weights_dir: Path = WEIGHTS,
         input_size: int | None = None, gate: Path | None = None, default: bool = False) -> Path:
    """``<name>_<tag>.pt`` (and its card) from shipped members, once benchmarks/ship_gate.py
    passed ``row`` as ``name``'s recipe (ship.py's rule for a default). ``gate``: its results
    file stem when not benchmarks/results/ship_gate_<name> (ship_gate.py --out). ``default``: also
    make ``tag`` the name's default tag (weights/defaults.json), under the same gate."""
    from ship import CARD_CAVEAT, gate_verdict, set_default_tag

    from contentiqa.models import build_ensemble, create_model
    from contentiqa.models.registry import save_checkpoint, weights_file
    from contentiqa.utils.io import atomic_write_text, file_sha256

    gate = gate if gate is not None else ROOT / "benchmarks" / "results" / f"ship_gate_{name}"
    ok, why = gate_verdict(name, row, Path(f"{gate}.json"), weights_dir=weights_dir)
    made = built_row(members, combine, input_size, weights)
    if made != row:  # the gate judged `row`: other members, weights, mean or size are another model
        ok, why = False, (f"the ensemble asked for is not the gated row {row!r}: its members' cards, combine, "
                          f"weights and size make {made!r}")
    if not ok and not override_gate:
        raise SystemExit(f"refusing to ship {name}.{tag}: {why} (--override-gate to ship anyway)")
    verdict = f"{why}{' (OVERRIDDEN with --override-gate)' if not ok else ''}"
    print(f"ship gate: {verdict}")
    t0 = time.time()
    models = [create_model(m) for m in members]
    model = build_ensemble(models, weights, combine=combine, name=name, input_size=input_size)
    path = weights_dir / f"{name}_{tag}.pt"
    files = [weights_file(m)[0] for m in members]
    sources = [{"spec": m, "file": f.name, "sha256": file_sha256(f)} for m, f in zip(members, files)]
    save_checkpoint(model, path, omit_pretrained_backbone=True, extra={
        "tag": tag, "members": sources, "gate_row": row, "ship_gate": verdict, "provenance": provenance()})
    w = weights or [1.0] * len(members)
    shape = (f"the photo resized to {input_size} x {input_size} px, as fixed-size models resize it; the members trained"
             " at that size read that one input, so their shared frozen backbone pass runs once in the ONNX graph,"
             " and any other member gets it resized inside the model to its own size as Pillow resizes"
             if input_size is not None else
             "the photo at native resolution (longest side at most 2048 px); a fixed-size member gets it resized\n"
             "  inside the model exactly as Pillow resizes it for that member alone")
    card = f"""# Model card: `{name}.{tag}` ({path.name})

- **What**: an ensemble (`contentiqa.models.ensemble`): the weighted {combine} mean of its members' calibrated
  scores, {', '.join(f'`{m}` ({x / sum(w):.2g})' for m, x in zip(members, w))}; content categories from the
  member that has them. Not trained itself: each member is its own shipped tag (see its card), copied in.
- **Input**: {shape}.
- **Scores**: the members' calibrated CLIVE scale, 0-100, higher is better.
- **Measured**: benchmarks/results/{gate.name}.md (the ship gate: the same recipe, each member trained on the
  training parts only, on the three clive-dev test splits and BIQ2021's official test, scored through
  `contentiqa score`, against the recipe of the default named there).
{CARD_CAVEAT}- **Reproduce**: `{command_line()}` ({(time.time() - t0) / 60:.1f} min on {provenance()['machine']}).
- **Size**: {path.stat().st_size / 1e6:.1f} MB.
"""
    atomic_write_text(weights_dir / f"{name}_{tag}.md", card)
    print(card)
    if default:
        set_default_tag(name, tag, weights_dir)
        print(f"{name}: default tag is now {tag} ({weights_dir / 'defaults.json'})")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True, help="the registered ensemble (e.g. ie-iqa-distortion+iqa-cr)")
    ap.add_argument("--combine", default="harmonic", choices=("harmonic", "mean"))
    ap.add_argument("--weights", type=float, nargs="+", default=None, help="members' weights (default: equal)")
    ap.add_argument("--runs", type=Path, help="an experiment's results folder (with --rows)")
    ap.add_argument("--rows", nargs="+", help="its rows, one per member, in the ensemble's member order")
    ap.add_argument("--member-runs", type=Path, nargs="+", default=None, metavar="DIR",
                    help="each row's own results folder when the rows come from different experiments on the same "
                         "splits (default: --runs for every row, whose config and splits the gate reads)")
    ap.add_argument("--out", type=Path, help="where the per-seed ensembles go (an experiment-like folder)")
    ap.add_argument("--ship", action="store_true", help="ship NAME_TAG.pt from the shipped --members")
    ap.add_argument("--tag")
    ap.add_argument("--members", nargs="+", help="shipped name.tag of each member")
    ap.add_argument("--row", help="with --ship: the row the ship gate passed (the recipe of the members)")
    ap.add_argument("--override-gate", action="store_true")
    ap.add_argument("--gate", type=Path, default=None, metavar="STEM",
                    help="with --ship: the gate's results (default: benchmarks/results/ship_gate_<name>)")
    ap.add_argument("--default", action="store_true",
                    help="with --ship: make TAG the name's default tag (weights/defaults.json)")
    ap.add_argument("--input-size", type=int, default=None,
                    help="one square size every member reads (default: the finest member's input)")
    args = ap.parse_args(argv)
    if args.ship:
        if not (args.tag and args.members and args.row):
            ap.error("--ship needs --tag, --members and --row")
        ship(args.name, args.tag, args.members, args.row, args.combine, args.weights, args.override_gate,
             input_size=args.input_size, gate=args.gate, default=args.default)
        return 0
    if not (args.runs and args.rows and args.out):
        ap.error("give --runs, --rows and --out (or --ship)")
    row = build_from_runs(args.runs, args.rows, args.name, args.out, args.combine, args.weights, args.input_size,
                          args.member_runs)
    print(f"row: {row}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
