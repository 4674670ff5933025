"""``contentiqa evaluate``: PLCC, SROCC, KROCC, RMSE (and top-1 accuracy) of a model on data."""
from __future__ import annotations

import argparse
import json

from .common import (add_data_args, check_rated, check_split_index, load_data, model_spec, resolve_split, say_failed,
                     split_parts, user_path)
from .main import UsageError

def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="measure a model against human scores (PLCC/SROCC/KROCC/RMSE, accuracy)",
        description="Score every image of a dataset (or one part of a split) and compare with its MOS.",
    )
    p.add_argument("--model", "-m", required=True, type=model_spec, help="registered model name (shipped weights) or a checkpoint .pt")
    add_data_args(p)
    p.add_argument("--split", type=user_path, default=None,
                   help="split file; evaluate only --part of it (default: the table's 'split' column when it has one)")
    p.add_argument("--split-index", type=int, default=0,
                   help="which split of a file with several, by position (an experiment's splits.json holds one "
                        "per seed, in the config's seed order; the output names the split's seed)")
    p.add_argument("--part", default=None, choices=["train", "val", "test"],
                   help="which part of the split (file or column) to evaluate (default test)")
    p.add_argument("--json", type=user_path, default=None, help="write the metrics to this JSON file")
    p.add_argument("--predictions", type=user_path, default=None, help="write per-image predictions to this CSV")
    p.add_argument("--fit-logistic", action="store_true", help="PLCC after the 4-parameter logistic fit")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..models import create_model
    from ..training.evaluate import evaluate_model
    from ..utils.io import atomic_write_text

    from pathlib import Path

    from ._model_loading import check_model_named
    from ._output import check_writable

    check_split_index(args)
    inputs = {Path(p).resolve(): what for p, what in ((args.data, "the file the data come from"),
                                                      (args.split, "the split file"),
                                                      (args.model, "the --model checkpoint"))
              if p and Path(p).is_file()}
    if args.json and args.predictions and Path(args.json).resolve() == Path(args.predictions).resolve():
        raise UsageError(f"--json and --predictions name one file ({args.json}): the predictions would replace the metrics")
    check_model_named(args.model)  # before the outputs' folders are made
    for option, path in (("--json", args.json), ("--predictions", args.predictions)):
        if path:
            if Path(path).resolve() in inputs:
                raise UsageError(f"{option} {path} is {inputs[Path(path).resolve()]}: name another file to write")
            check_writable(Path(path), option)  # before the scoring: its results must not be lost
    ds = load_data(args)
    table = ds.table
    part = None
    if not args.split and "split" not in table and args.part is not None:
        # said, not ignored: the figures would be every row's, looking like one part's
        raise UsageError(f"--part needs a split: --split FILE, or a 'split' column in --data {args.data}")
    args.part = args.part or "test"
    split = None
    if args.split or "split" in table:  # a split file, or a table that carries its split: that part, not every row
        split = resolve_split(args, table)
        table = split_parts(split, table, args).get(args.part, table.iloc[:0])
        # the seed said: an index taken for a seed would measure another split's test part
        part = (f"--part {args.part} of {args.split}, split {args.split_index}: seed {split.seed}, {split.protocol}"
                if args.split else f"the rows whose 'split' is {args.part!r}")
    if part is not None and len(table) == 0:
        raise UsageError(f"--data {args.data}: {part} hold no images")
    try:
        model = create_model(args.model, pretrained=True, device=args.device)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    if model.predicts_score:  # a content-only model is measured by labels: its MOS may be a placeholder
        check_rated(table, args.data, "evaluate" + (f" ({part})" if part else ""))
    from ..training.evaluate import NotMeasurable

    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    try:
        metrics, preds = evaluate_model(model, table, ds.scale, batch_size=args.batch_size, progress=not args.quiet,
                                        fit_logistic=args.fit_logistic)
    except NotMeasurable as exc:  # e.g. too few images could be scored, or constant predictions
        _say_failed(exc.rows, args)
        if args.predictions:
            atomic_write_text(args.predictions, exc.rows.to_csv(index=False))
        raise UsageError(f"cannot measure {args.model} on {args.data}: {exc}") from None
    _say_failed(preds, args)
    # what was measured, so that a train part's file, a test part's and a fitted PLCC's tell apart;
    # the weights by file and SHA-256, as score's rows: a name's tag moves between releases
    from ..inference.torch_runtime import TorchScorer
    from ..reporting.results import model_record

    metrics = {**model_record(TorchScorer(model, precision="fp32").identity), "model_spec": args.model,
               "data": str(args.data), "part": args.part if part else None,
               "split": str(args.split) if args.split else ("column" if part else None),
               "split_index": args.split_index if args.split else None,
               "split_seed": split.seed if args.split and split is not None else None,
               "mos_scale": ds.scale.to_dict(),  # the scale RMSE and the predictions are on
               "fit_logistic": args.fit_logistic, **metrics}
    names = [("plcc", "PLCC"), ("srocc", "SROCC"), ("krocc", "KROCC"), ("rmse", "RMSE"), ("accuracy", "top-1 acc"),
             ("acceptable", "any label")]  # multi-label data: the category is one of the photo's labels
    print(f"{args.model} on {args.data}{' (' + part + ')' if part else ''} ({int(metrics['n'])} images"
          f"{', %d failed' % metrics['n_failed'] if metrics.get('n_failed') else ''}):")
    for key, label in names:
        if key in metrics:
            note = (_accuracy_note(preds, model.categories, metrics) if key == "accuracy" else
                    f" (on the {int(metrics['n_acceptable'])} images with a label the model knows)"
                    if key == "acceptable" and "n_acceptable" in metrics else "")
            print(f"  {label:10s} {metrics[key]:.4f}{note}")
    if "accuracy" not in metrics and model.categories:
        unmet = _unknown_labels(preds, model.categories)
        if unmet:  # labelled, but with names the model has no category for: said, not left out silently
            print(f"  {'top-1 acc':10s} not measured: no main label is one of the model's categories "
                  f"(labels: {', '.join(unmet[:10])}{', ...' if len(unmet) > 10 else ''})")
    if args.json:
        atomic_write_text(args.json, json.dumps(metrics, indent=1))
    if args.predictions:
        atomic_write_text(args.predictions, preds.to_csv(index=False))
    return 1 if metrics.get("n_failed") else 0


def _say_failed(preds, args: argparse.Namespace) -> None:
    say_failed(preds, f"all in {args.predictions}" if args.predictions else "--predictions FILE lists them all")


def _accuracy_note(preds, categories, metrics: dict) -> str:
    """On which images top-1 accuracy was counted, when not on every labelled one: labels the
    model has no category for (a label file's ``vehicle`` for a nine-category head) cannot be hit."""
    unknown = _unknown_labels(preds, categories)
    if not unknown:
        return ""
    return (f" (on the {int(metrics.get('n_labelled', 0))} of {_labelled(preds).sum()} labelled images whose label "
            f"the model knows; not: {', '.join(unknown)})")


def _labelled(preds):
    """Which scored rows carry a category label."""
    scored = preds["error"].isna()
    return scored & preds["category"].notna() & (preds["category"].astype(str).str.strip() != "")


def _unknown_labels(preds, categories) -> list[str]:
    """The scored images' labels that name none of the model's ``categories``."""
    if "category" not in preds:
        return []
    from ..training.evaluate import category_indices

    names = preds.loc[_labelled(preds), "category"].astype(str)
    return sorted(set(names[category_indices(names, categories) < 0]))
