"""Peak memory of `contentiqa score` on huge photos: the --max-side bound (issue 14).

    python benchmarks/memory.py [--model iqa-cr] [--sizes 24 50 81 100] [--native 24]

Generates JPEGs of the given megapixels (3:2, upscaled from a real CLIVE photo, so they
compress like photos), then runs `contentiqa score` on each in a fresh process and records its
peak RSS (getrusage ru_maxrss) and time: with the default --max-side (2048), once on all of
them as one folder, and with --max-side 0 (native resolution, the behaviour before the bound)
for the sizes in --native. Writes benchmarks/results/memory.json and memory.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, SHARED, command_line, md_table, results_name, write_results

CHILD = """
import json, resource, sys, time
from contentiqa.cli.main import main
t = time.time()
rc = main(sys.argv[1:])
print("MEASURE " + json.dumps({"rc": rc, "seconds": time.time() - t,
      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_photo(path: Path, megapixels: float) -> tuple[int, int]:
    from PIL import Image

    src = sorted((SHARED / "data" / "clive-dev" / "images").glob("*.JPG"))
    w = int(round((megapixels * 1e6 * 1.5) ** 0.5))
    h = int(round(w / 1.5))
    with Image.open(src[0] if src else ROOT / "examples" / "images" / "833.JPG") as im:
        im.convert("RGB").resize((w, h), Image.BICUBIC).save(path, quality=90)
    return w, h


def score(paths: list[Path], model: str, out: Path, max_side: int | None) -> dict:
    argv = ["score", *map(str, paths), "--model", model, "-o", str(out), "--force", "-q"]
    if max_side is not None:
        argv += ["--max-side", str(max_side)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, env=env)
    line = [x for x in r.stdout.splitlines() if x.startswith("MEASURE ")]
    if not line:
        raise RuntimeError(f"score failed: {r.stderr[-2000:]}")
    res = json.loads(line[-1][8:])
    rows = [json.loads(x) for x in out.read_text().splitlines()] if out.suffix == ".jsonl" else []
    res["notes"] = sorted({r.get("notes", "") for r in rows})
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="iqa-cr")
    ap.add_argument("--sizes", type=float, nargs="+", default=[24, 50, 81, 100], help="megapixels")
    ap.add_argument("--native", type=float, nargs="*", default=[24], help="sizes also run with --max-side 0")
    args = ap.parse_args()

    rows, table = [], []
    with tempfile.TemporaryDirectory(prefix="contentiqa-memory-") as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        photos = {}
        for mp in args.sizes:
            p = folder / f"photo_{mp:g}MP.jpg"
            photos[mp] = (p, make_photo(p, mp))
        base = score([ROOT / "examples" / "images" / "833.JPG"], args.model, Path(tmp) / "o.jsonl", None)
        rows.append({"input": "one 500x500 photo (baseline: model + runtime)", "max_side": 2048, **base})
        for mp, (p, (w, h)) in photos.items():
            r = score([p], args.model, Path(tmp) / "o.jsonl", None)
            rows.append({"input": f"{w}x{h} ({mp:g} MP)", "max_side": 2048, **r})
            print(rows[-1], flush=True)
        r = score([folder], args.model, Path(tmp) / "o.jsonl", None)
        rows.append({"input": f"folder of all {len(photos)} ({'+'.join(f'{m:g}' for m in photos)} MP)", "max_side": 2048, **r})
        print(rows[-1], flush=True)
        for mp in args.native:
            if mp in photos:
                p, (w, h) = photos[mp]
                r = score([p], args.model, Path(tmp) / "o.jsonl", 0)
                rows.append({"input": f"{w}x{h} ({mp:g} MP)", "max_side": "0 (native)", **r})
                print(rows[-1], flush=True)
    for r in rows:
        table.append([r["input"], str(r["max_side"]), f"{r['peak_rss_mb']:.0f}", f"{r['seconds']:.1f}", str(r["rc"])])
    md = (
        f"# Peak memory of `contentiqa score --model {args.model}` on huge photos (CPU)\n\n"
        f"Command: `{command_line()}`\n\n"
        + md_table(["input", "--max-side", "peak RSS (MB)", "time (s)", "exit"], table)
        + "\n\nEach line is a fresh `contentiqa score` process; peak RSS includes Python, the runtime "
        "`score` chose (ONNX Runtime on a CPU by default; torch is not imported then) and the model (the baseline line). With the default --max-side 2048 the model sees at most "
        "2048 px on the longest side, whatever the photo; --max-side 0 is the unbounded behaviour "
        "before issue 14. Times are wall-clock on a shared CPU (other jobs running): not speed figures.\n"
    )
    write_results(results_name("memory", ap, args), {"model": args.model, "rows": rows, "command": command_line()}, md)


if __name__ == "__main__":
    main()
