"""Scoring a large collection: `contentiqa score` over BIQ2021's 12,000 photos on one device.

    python benchmarks/collection.py                      # the CPU (ONNX Runtime, the default)
    python benchmarks/collection.py --device cuda        # one GPU (PyTorch, bf16 autocast by default)
    python benchmarks/collection.py --limit 200 --quick  # a few photos (checks that it runs)

What a user runs, as they run it: ``contentiqa score IMAGES/ -o out.csv -q --device D`` in a
fresh process, its default settings (runtime, precision / autocast, batch size, decoding
threads), timed end to end (start-up, decoding, writing the CSV). Beside it, to show whether
decoding limits the run, the same photos are decoded and preprocessed alone by the engine's
pipeline (:func:`contentiqa.inference.engine.iter_prepared`) with the worker count `score`
chose, no model.

Resumable: the run goes through ``score --resume`` on benchmarks/cache/collection/<device>.csv;
each segment's wall time and rows are kept in a state file beside it, so an interrupted run
continues (rerun the command) and the figure is all rows over all segments' time (each segment's
start-up counted). Holds /tmp/contentiqa-bench.lock on a CPU (no other timing job meanwhile).
Photos: ``$CONTENTIQA_BIQ2021/Images`` (default ../data/biq2021/Images), or ``--images DIR``.
Writes benchmarks/results/collection_<cpu|cuda>.{json,md}.
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
from contextlib import nullcontext
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from common import (CACHE, ROOT, bench_lock, command_line, contentiqa_env, md_table, positive_int,  # noqa: E402
                    results_name, write_results)

from contentiqa.utils.io import atomic_write_text  # noqa: E402

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


def default_images() -> Path:
    root = Path(os.environ.get("CONTENTIQA_BIQ2021", ROOT.parent / "data" / "biq2021"))
    return root / "Images"


def score_segment(folder: Path, out_csv: Path, device: str, extra: list[str]) -> tuple[float, int, str]:
    """One `contentiqa score FOLDER -o out.csv -q --device D [--resume]` run in a fresh process;
    returns (wall seconds, rows scored in it, stderr tail)."""
    before = count_rows(out_csv)
    env = contentiqa_env()
    cmd = [sys.executable, "-m", "contentiqa", "score", str(folder), "-o", str(out_csv), "-q",
           "--device", device, *extra]
    if out_csv.exists():
        cmd.append("--resume")
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode not in (0, 1):  # a usage error (a mistyped option passed through) or a crash
        sys.exit(f"contentiqa score exited {r.returncode} (the rows so far are kept in {out_csv}):\n{r.stderr[-2000:]}")
    return wall, count_rows(out_csv) - before, r.stderr[-500:]


def read_rows(out_csv: Path, scored_only: bool = True) -> list[dict]:
    if not out_csv.exists():
        return []
    with open(out_csv, newline="") as fh:
        return [row for row in csv.DictReader(fh) if row.get("score") or not scored_only]


def count_rows(out_csv: Path) -> int:
    """Photos done: scored or failed (an unreadable photo's row is as final as a score; counted as
    not done, a finished run looked unfinished and every rerun added a segment to it)."""
    return len(read_rows(out_csv, scored_only=False))


def subset_folder(images: list[str], where: Path) -> Path:
    """A folder of links to ``images`` (--limit): `score` still gets a folder, as a user passes it."""
    if where.exists():
        for p in where.iterdir():
            p.unlink()
    where.mkdir(parents=True, exist_ok=True)
    for src in images:
        (where / Path(src).name).symlink_to(src)
    return where


def settings(device: str) -> tuple[dict, object]:
    """What `contentiqa score` chooses by default on ``device`` (runtime, batch, workers, precision):
    the scorer of the scoring layer, asked as the command asks."""
    import contentiqa

    scorer = contentiqa.load_scorer(contentiqa.DEFAULT_MODEL, device=device)
    ident = scorer.identity
    return {
        "model": contentiqa.DEFAULT_MODEL,
        "runtime": ident.runtime,
        "precision": ident.precision,
        "batch_size": scorer.default_batch_size(),
        "workers": scorer.default_workers(),
        "device_name": (__import__("torch").cuda.get_device_name(device) if device.startswith("cuda") else cpu_name()),
    }, scorer


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU"


def decode_only_ips(model, images: list[str], workers: int, n: int) -> float:
    """images/s of decoding + preprocessing alone (the engine's pipeline, no model)."""
    from contentiqa.inference.engine import iter_prepared

    sample = images[:n]
    t = time.perf_counter()
    for _ in iter_prepared(model, sample, workers=workers, window=max(8, 2 * workers)):
        pass
    return len(sample) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Other options are passed to `contentiqa score` as they are.")
    ap.add_argument("--images", type=Path, default=None, help="folder of photos (default: BIQ2021's Images)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--limit", type=positive_int, default=None, help="only the first N photos")
    ap.add_argument("--quick", action="store_true", help="results go to collection_<device>_quick (a check, not a figure)")
    ap.add_argument("--fresh", action="store_true", help="discard an unfinished earlier run and start over")
    ap.add_argument("--decode-sample", type=positive_int, default=500, help="photos timed for the decode-only figure")
    args, extra = ap.parse_known_args()
    if args.device != "cpu":  # a GPU that is not here: one line, before any folder or state is made
        try:
            from contentiqa.utils.devices import resolve_device

            resolve_device(args.device)
        except ModuleNotFoundError:  # the CPU's run is ONNX Runtime's: only a GPU needs PyTorch
            ap.error(f"--device {args.device} needs PyTorch (pip install 'contentiqa[torch]')")
        except ValueError as exc:
            ap.error(str(exc))
    folder = args.images or default_images()
    if not folder.is_dir():
        sys.exit(f"benchmark skipped: no photos at {folder} (set CONTENTIQA_BIQ2021 or pass --images)")
    images = sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)[: args.limit]
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    # fewer or other photos, another decode sample: a check run, never the published figure
    name = results_name(f"collection_{kind}", ap, args, ignore=("device", "fresh", "quick"))
    # options passed through to `contentiqa score` (another model, runtime or batch) too
    name += "_quick" if (args.quick or extra) and not name.endswith("_quick") else ""
    work = CACHE / "collection"
    work.mkdir(parents=True, exist_ok=True)
    out_csv, state_file = work / f"{name}.csv", work / f"{name}.state.json"
    # An earlier run continues only on the same photos with the same options; another one is
    # never reported as this one's, nor discarded without --fresh (hours of scoring).
    run = {"folder": str(folder.resolve()), "images": len(images),
           "paths_sha256": hashlib.sha256("\n".join(images).encode("utf-8", "surrogateescape")).hexdigest(),
           "extra": extra}
    state = json.loads(state_file.read_text()) if state_file.exists() and not args.fresh else None
    # what the state records of the run (one written before folder and paths were recorded: its count and options)
    same = state is not None and all(state[k] == v for k, v in run.items() if k in state)
    if state is not None and state.get("reported", True) and count_rows(out_csv) >= state["images"]:
        state = None  # the earlier run finished and was reported: this one measures afresh, never reports it again
    if state is not None and not same:
        sys.exit(f"{out_csv} holds an unfinished run of other photos or options ({state.get('folder')}, "
                 f"{state.get('images')} photos, options {state.get('extra')}): rerun that command to finish it, "
                 "or add --fresh to discard it")
    if state is None:
        out_csv.unlink(missing_ok=True)
        state = {**run, "segments": [], "reported": False}
    state.update(run)
    chosen, model = settings(args.device)
    target = folder if args.limit is None else subset_folder(images, work / f"{name}-photos")
    lock = bench_lock() if kind == "cpu" else nullcontext()
    with lock:
        load_before = os.getloadavg()
        while count_rows(out_csv) < len(images):
            wall, rows, tail = score_segment(target, out_csv, args.device, extra)
            state["segments"].append({"seconds": wall, "rows": rows, "load_after": os.getloadavg()[0]})
            atomic_write_text(state_file, json.dumps(state))
            if rows == 0:  # every remaining photo failed: report what was scored
                print(f"no progress in the last segment: {tail}", file=sys.stderr)
                break
        decode = decode_only_ips(model, images, chosen["workers"], min(args.decode_sample, len(images)))
        load_after = os.getloadavg()
    seconds = sum(s["seconds"] for s in state["segments"])
    ips = sum(s["rows"] for s in state["segments"]) / seconds if seconds else 0.0  # every photo gone through
    scored = len(read_rows(out_csv))
    precisions = sorted({r.get("precision") or "?" for r in read_rows(out_csv)})
    payload = {"command": command_line(), "folder": str(folder), "photos": len(images), "scored": scored,
               "segments": state["segments"], "seconds": seconds, "images_per_s": ips,
               "decode_only_images_per_s": decode, "settings": chosen, "precision": precisions, "extra_args": extra, "cpus": os.cpu_count(),
               "load_before": load_before, "load_after": load_after, "quick": args.quick}
    lines = [
        f"# Scoring a large collection ({kind})\n",
        f"One run: `{payload['command']}`{' (holds /tmp/contentiqa-bench.lock)' if kind == 'cpu' else ''}. "
        f"`contentiqa score FOLDER -o out.csv -q --device {args.device}` with its defaults, end to end in "
        f"{len(state['segments'])} segment(s) (resumed with --resume; each start-up counted), on {folder.name} "
        f"({len(images)} photos). Load average before / after: {load_before[0]:.2f} / {load_after[0]:.2f}.\n",
        md_table(["device", "model", "runtime", "precision", "batch", "decode threads", "photos scored", "seconds",
                  "images/s", "decode-only images/s"],
                 [[chosen["device_name"], chosen["model"], chosen["runtime"], ", ".join(precisions),
                   chosen["batch_size"], chosen["workers"], scored, f"{seconds:.0f}", f"{ips:.1f}", f"{decode:.1f}"]]),
        f"\n{os.cpu_count()} CPU(s). 'decode-only': the same photos decoded and preprocessed by the engine's pipeline "
        f"with {chosen['workers']} thread(s), no model ({min(args.decode_sample, len(images))} photos); when it is close "
        "to images/s, decoding is what limits the run.\n",
    ]
    write_results(name, payload, "\n".join(lines))
    atomic_write_text(state_file, json.dumps({**state, "reported": True}))


if __name__ == "__main__":
    main()
