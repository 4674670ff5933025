"""`contentiqa score` on phone-sized photos (12 MP JPEGs), per model: what a native-resolution model
costs where most users' photos are far larger than the 500-px clive-dev photos benchmarks/cores.py
times.

    python benchmarks/large_photos.py [--models ie-iqa iqa-cr ie-iqa-distortion+iqa-cr] [--photos 24]

The photos are clive-dev photos upscaled to 4000 x 3000 and saved as JPEG (quality 90) in a
temporary folder: their content is irrelevant here, only the decoding and the backbone passes at
the size each model reads (a fixed-size model: its input size; a native-resolution one: the photo,
its longest side limited to 2048 px). Each model is timed end to end in a fresh process (start-up
included, the ONNX graph already cached), the median of --rounds runs, holding
/tmp/contentiqa-bench.lock.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from common import (bench_lock, SHARED, check_models, command_line, md_table, positive_int, results_name,  # noqa: E402
                    write_results)
from cores import score_ips  # noqa: E402

IMAGES = SHARED / "data" / "clive-dev" / "images"
SIZE = (4000, 3000)


def make_photos(folder: Path, n: int) -> list[str]:
    from PIL import Image

    sources = sorted(p for p in IMAGES.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"))[:n]
    out = []
    for i, src in enumerate(sources):
        path = folder / f"large_{i:03d}.jpg"
        with Image.open(src) as im:
            im.convert("RGB").resize(SIZE, Image.BICUBIC).save(path, quality=90)
        out.append(str(path))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["ie-iqa", "iqa-cr", "ie-iqa-distortion+iqa-cr.clive-biq2021",
                                                    "ie-iqa-distortion+iqa-cr", "ie-iqa-distortion+iqa-cr+ie-iqa",
                                                    "ie-iqa-distortion+iqa-cr+ie-iqa-distortion"],
                    help="models timed (default: those published)")
    ap.add_argument("--photos", type=positive_int, default=24)
    ap.add_argument("--rounds", type=positive_int, default=3)
    args = ap.parse_args(argv)
    check_models(ap, args.models)
    if not IMAGES.is_dir():
        sys.exit(f"benchmark skipped: clive-dev photos not found at {IMAGES}")

    import contentiqa

    from contentiqa.inference.threads import usable_cpus

    rows, payload = [], {"command": command_line(), "photo_size": list(SIZE), "models": {}, "cpus": usable_cpus()}
    with tempfile.TemporaryDirectory(prefix="contentiqa-large-") as tmp, bench_lock():
        payload["load_average_before"] = list(os.getloadavg())
        work = Path(tmp)
        files = make_photos(work, args.photos)
        for name in args.models:
            contentiqa.load_scorer(name, threads=1)  # its graph is there (shipped, or exported once), as for score
            score_ips(files[:2], work / "warm.csv", name)
            runs = [score_ips(files, work / "out.csv", name) for _ in range(args.rounds)]
            ips = statistics.median(runs)
            payload["models"][name] = {"images_per_s": ips, "runs": runs}
            rows.append([f"`{name}`", f"{ips:.1f}", f"{1000 / ips:.0f}"])
            print(f"{name}: {ips:.2f} images/s ({', '.join(f'{r:.2f}' for r in runs)})", flush=True)
        payload["load_average_after"] = list(os.getloadavg())
    md = "\n".join([
        "# Scoring phone-sized photos (CPU)", "",
        f"`contentiqa score` on {len(files)} JPEGs of {SIZE[0]} x {SIZE[1]} px (clive-dev photos upscaled), end to end "
        f"in a fresh process, median of {args.rounds} runs; {payload['cpus']} CPU cores as `score` uses them by default.", "",
        md_table(["model", "images/s", "wall ms per photo"], rows), "",
        "A fixed-size model decodes the photo and resizes it once (its cost barely depends on the photo); a "
        "native-resolution one (`iqa-cr`, and the ensemble through it) runs its backbone on the photo itself, its "
        "longest side limited to 2048 px: about 12 times the pixels of a 500-px photo.", "",
        f"Command: `{payload['command']}`.", ""])
    write_results(results_name("large_photos", ap, args), payload, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
