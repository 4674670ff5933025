#!/usr/bin/env python
"""Record what every shipped ``name.tag`` scores on the example photos (tests/data/recorded_scores.json).

Why: refactors of the registry, configs or recipes must not change what a shipped model
outputs. ``tests/test_recorded_scores.py`` recomputes these scores with the current code and
compares them within 1e-4; this script writes the reference once, from a known-good state,
and refuses to overwrite it without ``--force`` (re-recording hides a regression). A newly shipped
tag is added with ``--add NAME.TAG``: the other models' recordings stay as they were, and the
commit that added it is kept under ``added``.

Torch runtime, CPU, float32, one photo per forward pass (no batching effects):

    PYTHONPATH=src python tools/record_scores.py [--force] [--out tests/data/recorded_scores.json]
    PYTHONPATH=src python tools/record_scores.py --add NAME.TAG     # a tag shipped after the recording
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "images"
DEFAULT_OUT = REPO / "tests" / "data" / "recorded_scores.json"


def example_photos(folder: Path = EXAMPLES) -> list[Path]:
    """The bundled example photos, in the order of their scores.csv."""
    import csv

    with open(folder / "scores.csv", newline="") as f:
        return [folder / row["image"] for row in csv.DictReader(f)]


def score_shipped(name: str, photos: list[Path]) -> dict[str, Any]:
    """``name``'s raw (unclipped) MOS-scale and normalised scores and category probabilities."""
    import torch

    import contentiqa

    model = contentiqa.create_model(name, pretrained=True, device="cpu").float().eval()
    rows = {}
    with torch.inference_mode():
        for photo in photos:
            pred = model.predict(str(photo), batch_size=1)
            if not pred.ok:
                raise RuntimeError(f"{name} could not score {photo}: {pred.error}")
            rows[photo.name] = {
                "score": pred.score,
                "normalized": float(model.scale.normalize(pred.score)),
                "probabilities": pred.probabilities,
            }
    return {"scale": model.scale.to_dict(), "categories": list(model.categories), "photos": rows}


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def record() -> dict[str, Any]:
    from contentiqa.models.registry import list_pretrained

    photos = example_photos()
    commit = _commit()
    return {
        "recorded_by": "tools/record_scores.py",
        "commit": commit,
        "runtime": "torch, cpu, float32, batch_size=1",
        "models": {name: score_shipped(name, photos) for name in list_pretrained()},
    }


def add(data: dict[str, Any], name: str) -> dict[str, Any]:
    """``data`` with ``name`` (a shipped ``name.tag`` not yet recorded) recorded as well."""
    from contentiqa.models.registry import list_pretrained

    if name not in list_pretrained():
        raise ValueError(f"{name!r} is not a shipped model: choose from {', '.join(list_pretrained())}")
    if name in data["models"]:
        raise ValueError(f"{name!r} is already recorded: re-record everything with --force instead")
    models = dict(data["models"], **{name: score_shipped(name, example_photos())})
    return dict(data, models=models, added=dict(data.get("added", {}), **{name: _commit()}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--force", action="store_true", help="overwrite an existing recording")
    ap.add_argument("--add", metavar="NAME.TAG", help="record one newly shipped model into the existing file")
    args = ap.parse_args(argv)
    if args.add:
        if not args.out.exists():
            print(f"{args.out} does not exist: record every model first (without --add)", file=sys.stderr)
            return 2
        try:
            data = add(json.loads(args.out.read_text()), args.add)
        except ValueError as e:
            print(f"record_scores: {e}", file=sys.stderr)
            return 2
        _write(args.out, data)
        print(f"added {args.add} to {args.out}")
        return 0
    if args.out.exists() and not args.force:
        print(f"{args.out} exists: it is the reference the regression test compares against; "
              "pass --force to re-record it (only from a known-good state)", file=sys.stderr)
        return 2
    data = record()
    _write(args.out, data)
    print(f"wrote {args.out}: {', '.join(data['models'])}")
    return 0


def _write(path: Path, data: dict[str, Any]) -> None:
    from contentiqa.utils.io import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
