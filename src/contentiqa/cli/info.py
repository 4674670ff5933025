"""``contentiqa models``: what this install offers (models and their weights tags, backbones with offline
weights, dataset loaders), all known without torch."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list models (and which have shipped weights)",
                       description="List registered models, backbones and dataset loaders.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import DEFAULT_MODEL, list_models
    from ..backbones import list_backbones
    from ..data import list_datasets
    from ..inference.quantize import calibration_path
    from ..models.registry import list_pretrained, model_entry, shipped_weights_path, weights_file
    from ..utils.extras import have, install_hint

    print("models (* = shipped weights, default marked):")
    names = list_models()
    width = max(map(len, names))
    for name in names:
        mark = "*" if shipped_weights_path(name) else " "
        default = "  [default]" if name == DEFAULT_MODEL else ""
        print(f" {mark} {name:{width}s} {model_entry(name).description}{default}")
    tagged = list_pretrained()
    if tagged:
        print("pretrained weights (name.tag; a bare name loads its default tag, listed first):", ", ".join(tagged))
        int8 = [t for t in tagged if calibration_path(weights_file(t)[0]).is_file()]
        print("with an int8 calibration (--precision int8):", ", ".join(int8) or "none")
    print("backbones with offline ImageNet weights:", ", ".join(list_backbones(pretrained_offline=True))
          or ("none" if have("torch") else f"none: they come with PyTorch ({install_hint('torch')})"))
    print("dataset loaders:", ", ".join(list_datasets()))
    return 0
