"""Using the cores: `contentiqa score` against the bare-backbone limit, idle and beside a busy process.

    python benchmarks/cores.py [--photos 200] [--rounds 2]
    python benchmarks/cores.py --quick          # 16 photos, one round (checks that it runs)

All in one run, holding /tmp/contentiqa-bench.lock (no other timing job meanwhile), on the
first ``--photos`` photos of ../shared/data/clive-dev, with the default model (its shipped
weights; the ONNX export cached beforehand, as on any run after the first):

- **limit**: the bare EfficientNet-Lite0 backbone(s) of the model (``forward_features``) in ONNX
  Runtime on in-memory tensors at the model's input sizes (:func:`backbone_passes`: IE-IQA one
  pass at 384 px for the quality CNN + one at 224 px for the recognition CNN; a native-resolution
  model one at the photos' 500 px; an ensemble its members' passes, a member that shares its first
  stages with the others only its own deep stages), batch 1, exported as contentiqa exports
  its models: the best of ONNX Runtime's default session (a thread per core, spinning), one
  thread, and one thread per photo with a photo per core at once; no decoding, no start-up;
- **score (default)**: ``contentiqa score PHOTOS -o out.csv -q`` in a fresh process, timed end
  to end (start-up, model load, decoding, writing the CSV): its compute threads follow the cores
  really free (:mod:`contentiqa.inference.threads`);
- **score --threads N**: the same with the thread count fixed to the machine's CPUs (the behaviour
  before the thread plan: a thread per core whatever else runs).

Each is measured idle and with one competing CPU-bound process (``python -c "while True:
pass"``), rounds interleaved, the median round. Targets: default score idle >= 0.85x the idle
limit; with the competitor >= 0.45x its idle throughput. Writes benchmarks/results/cores.{json,md}.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from common import (bench_lock, SHARED, check_models, command_line, contentiqa_env, md_table, positive_int,  # noqa: E402
                    results_name, write_results)

IMAGES = SHARED / "data" / "clive-dev" / "images"
TARGET_VS_LIMIT = 0.85
TARGET_LOADED = 0.45


@contextmanager
def competitor(active: bool):
    """One CPU-bound process for the duration of the block (none when not ``active``)."""
    if not active:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(1.0)  # let it take its core before we start
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


@dataclass(frozen=True)
class Pass:
    """One backbone pass the model makes for a photo: a whole pass of the bare Lite0 backbone at
    ``size`` (``stages`` None), or a member's own deep stages ``stages[start:end]``, run from the
    output of the stages before them, which it shares with the others."""

    size: int
    start: int = 0
    end: int = 0
    stages: Any = None
    native: bool = False
    """Reads the photo as it is (``size``: clive-dev's side, what it is timed at here)."""

    @property
    def partial(self) -> bool:
        return self.stages is not None


def backbone_sessions(work: Path, passes: list[Pass]) -> dict[str, list]:
    """Per session kind (ONNX Runtime's default: threads per core, spinning; 1 thread), one
    ``(session, feed)`` per pass: the bare Lite0 backbone for a whole pass, the member's own deep
    stages (exported as contentiqa exports its models) for a partial one."""
    import onnxruntime as ort
    import torch

    from speed import export_backbone, export_like_contentiqa

    rng = np.random.default_rng(0)
    whole: Path | None = None
    graphs: list[tuple[Path, np.ndarray]] = []
    for i, p in enumerate(passes):
        if not p.partial:
            whole = whole or export_backbone(work)
            graphs.append((whole, rng.standard_normal((1, 3, p.size, p.size), dtype=np.float32)))
            continue
        net = torch.nn.Sequential(*p.stages[p.start:p.end]).eval()
        with torch.no_grad():  # the shape the shared stages hand over at this size
            h = torch.zeros(1, 3, p.size, p.size)
            for stage in p.stages[:p.start]:
                h = stage(h)
        path = export_like_contentiqa(net, tuple(h.shape), work / f"tail{i}.onnx", input_name="features_in")
        graphs.append((path, rng.standard_normal(tuple(h.shape), dtype=np.float32)))
    out = {}
    for label, threads in (("default", 0), ("1 thread", 1)):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        made: dict[Path, object] = {}
        runs = []
        for path, x in graphs:
            if path not in made:
                made[path] = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            runs.append((made[path], {made[path].get_inputs()[0].name: x}))
        out[label] = runs
    return out


PHOTO_SIDE = 500
"""clive-dev's photos are 500 x 500: what a native-resolution model's backbone sees of them."""


def backbone_passes(model) -> list[Pass]:
    """The backbone passes the model makes for one clive-dev photo."""
    from contentiqa.models import Ensemble

    if isinstance(model, Ensemble):
        if model.cfg.input_size is None:
            return [p for m in model.members for p in backbone_passes(m)]
        # One input for every member: the members that read it as it is through the same stages
        # (Ensemble.shared_stages) make one main pass between them; a member that shares only its
        # first k stages runs its own stages from k on (what Ensemble.forward does), and a member
        # of another size resizes the input and makes all its own passes.
        shared = model.shared_stages()
        whole = {i for i, k in shared.items() if k == model.members[i].feature_end}
        if not whole:
            whole = {next((i for i, m in enumerate(model.members) if model.reads_input(m)), -1)}
        size = model.cfg.input_size
        passes = [Pass(size)]
        for i, m in enumerate(model.members):
            own = backbone_passes(m)
            if model.reads_input(m):
                k = shared.get(i, 0)
                first = ([] if i in whole else
                         [Pass(size, k, m.feature_end, m.stages)] if k else [Pass(size)])
                own = first + own[1:]
            passes += own
        return passes
    if model.native_resolution:
        return [Pass(PHOTO_SIDE, native=True)]
    cfg = model.cfg.to_dict()
    return [Pass(int(cfg["input_size"]))] + ([Pass(int(cfg["intelligibility_input_size"]))]
                                             if cfg.get("intelligibility_task") and cfg.get("intelligibility_input_size")
                                             else [])


def describe_passes(passes: list[Pass]) -> str:
    return ", ".join(f"{p.size} px from stage {p.start}" if p.partial else f"{p.size} px" for p in passes)


def limit_ips(sessions: dict[str, list], n: int, cpus: int) -> dict[str, float]:
    """images/s of the backbone passes of one photo, per session kind, and with the one-thread
    sessions running ``cpus`` photos at once (what `score` does with many)."""
    from concurrent.futures import ThreadPoolExecutor

    def photo(runs) -> None:
        for s, feed in runs:
            s.run(None, feed)

    out = {}
    for label, runs in sessions.items():
        photo(runs)
        t = time.perf_counter()
        for _ in range(n):
            photo(runs)
        out[label] = n / (time.perf_counter() - t)
    if cpus > 1:
        runs = sessions["1 thread"]
        with ThreadPoolExecutor(cpus) as pool:
            list(pool.map(lambda _: photo(runs), range(cpus)))
            t = time.perf_counter()
            list(pool.map(lambda _: photo(runs), range(n)))
            out[f"{cpus} at once, 1 thread each"] = n / (time.perf_counter() - t)
    return out


def decode_seconds(files: list[str], model: str) -> float:
    """Seconds of one core per photo to decode and preprocess it as `score` does (the file read
    from the page cache, Pillow's decoding, the resize and the normalisation of the ONNX path),
    one photo after another on one thread."""
    import contentiqa
    from contentiqa.data.imageio import load_image

    scorer = contentiqa.create_scorer(model, threads=1)
    for f in files[:4]:
        scorer.preprocess(load_image(f).image)
    t = time.perf_counter()
    for f in files:
        scorer.preprocess(load_image(f).image)
    return (time.perf_counter() - t) / len(files)


def score_ips(files: list[str], out_csv: Path, model: str, extra: tuple[str, ...] = ()) -> float:
    """images/s of `contentiqa score -m MODEL` in a fresh process, end to end."""
    env = contentiqa_env()
    cmd = [sys.executable, "-m", "contentiqa", "score", *files, "-m", model, "-o", str(out_csv), "-q", "--force",
           *extra]
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"contentiqa score exited {r.returncode}: {r.stderr[-2000:]}")
    return len(files) / wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=positive_int, default=200)
    ap.add_argument("--rounds", type=positive_int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", default=None, help="a registered name[.tag] (default: contentiqa.DEFAULT_MODEL); "
                                                  "another model's figures go to cores_<model>.{json,md}")
    args = ap.parse_args()
    check_models(ap, [args.model])
    if args.quick:
        args.photos, args.rounds = 16, 1
    if not IMAGES.is_dir():
        sys.exit(f"benchmark skipped: clive-dev photos not found at {IMAGES}")
    files = sorted(str(p) for p in IMAGES.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"))[: args.photos]

    import contentiqa
    from contentiqa.inference.threads import busy_cores, plan_threads, usable_cpus
    from contentiqa.models.registry import weights_file

    name = args.model or contentiqa.DEFAULT_MODEL
    model = contentiqa.create_model(name).eval()
    passes = backbone_passes(model)
    contentiqa.load_scorer(name, threads=1)  # its graph is there (shipped, or exported into the cache once), as for score
    cpus = usable_cpus()
    results: dict[str, dict[str, list]] = {}
    with tempfile.TemporaryDirectory(prefix="contentiqa-cores-") as tmp, bench_lock():
        work = Path(tmp)
        sessions = backbone_sessions(work, passes)
        load_before = os.getloadavg()
        score_ips(files[:4], work / "warm.csv", name)  # page cache and Python bytecode warm
        for _ in range(args.rounds):
            for loaded in (False, True):
                cond = "loaded" if loaded else "idle"
                with competitor(loaded):
                    busy = busy_cores(0.5)
                    plan = plan_threads(images=len(files))
                    lim = limit_ips(sessions, max(8, len(files) // 4), cpus)
                    res = results.setdefault(cond, {})
                    for k, v in lim.items():
                        res.setdefault(f"limit ({k})", []).append(v)
                    res.setdefault("limit", []).append(max(lim.values()))
                    res.setdefault("score (default)", []).append(score_ips(files, work / "a.csv", name))
                    res.setdefault(f"score --threads {cpus}", []).append(
                        score_ips(files, work / "b.csv", name, ("--threads", str(cpus))))
                    res.setdefault("busy cores before", []).append(busy)
                    if not loaded:  # what the pipeline adds to the bare backbone(s), on the idle machine
                        res.setdefault("decode ms/photo", []).append(1e3 * decode_seconds(files, name))
                        res.setdefault("start-up s", []).append(1.0 / score_ips(files[:1], work / "c.csv", name))
                    res.setdefault("plan", []).append(plan.describe())
        load_after = os.getloadavg()
    med = {c: {k: statistics.median(v) for k, v in d.items() if k != "plan"} for c, d in results.items()}
    idle, loaded = med["idle"], med["loaded"]
    # The best any pipeline can do that decodes on the same cores and starts a process: one
    # start-up with its first photo (`score` of one photo), then for each other photo the
    # backbone time plus its decoding shared over the cores.
    n = len(files)
    ceiling = n / (idle["start-up s"] + (n - 1) * (1 / idle["limit"] + idle["decode ms/photo"] / 1e3 / cpus))
    ratios = {
        "score_idle_vs_limit_idle": idle["score (default)"] / idle["limit"],
        "ceiling_vs_limit_idle": ceiling / idle["limit"],
        "score_idle_vs_ceiling": idle["score (default)"] / ceiling,
        "score_loaded_vs_idle": loaded["score (default)"] / idle["score (default)"],
        "fixed_threads_loaded_vs_idle": loaded[f"score --threads {cpus}"] / idle[f"score --threads {cpus}"],
        "limit_loaded_vs_idle": loaded["limit"] / idle["limit"],
    }
    payload = {"command": command_line(), "photos": len(files), "rounds": args.rounds, "cpus": cpus, "passes": describe_passes(passes),
               # the weights the name loaded then: a name's default tag moves, its file says which model ran
               "model": name, "weights": weights_file(name)[0].name,
               "runs": results, "median": med, "ratios": ratios,
               "ceiling_images_per_s": ceiling,
               "load_before": load_before, "load_after": load_after, "quick": args.quick}
    lines = [
        "# Using the cores (CPU)\n",
        f"One run: `{payload['command']}` (holds /tmp/contentiqa-bench.lock). {len(files)} clive-dev photos, model "
        f"{payload['model']} ({payload['weights']}; bare-backbone passes at {describe_passes(passes)}), "
        f"{cpus} CPU(s); median of {args.rounds} round(s), idle and loaded interleaved. Load average before / after: "
        f"{load_before[0]:.2f} / {load_after[0]:.2f} (other jobs on this shared machine count in it).\n",
        f"'score' rows: `contentiqa score PHOTOS -m {name} -o out.csv -q` in a fresh process, end to end including start-up, "
        "the ONNX export already cached. 'limit': the bare backbone(s) in ONNX Runtime on in-memory tensors, the "
        "best of its default session (a thread per core, spinning), one thread, and a photo per core at once "
        "(one thread each). 'loaded': beside one "
        "`python -c \"while True: pass\"`.\n",
    ]
    rows = []
    for k in idle:
        if k in ("busy cores before", "decode ms/photo", "start-up s"):
            continue
        rows.append([k, f"{idle[k]:.1f}", f"{loaded[k]:.1f}", f"{loaded[k] / idle[k]:.2f}"])
    rows.append(["busy cores before (other processes)", f"{idle['busy cores before']:.2f}", f"{loaded['busy cores before']:.2f}", ""])
    lines.append(md_table(["images/s", "idle", "loaded (1 competitor)", "loaded / idle"], rows))
    lines.append("\nThread plan chosen at the start of each default run: idle " + "; ".join(results["idle"]["plan"])
                 + " | loaded " + "; ".join(results["loaded"]["plan"]) + ".\n")
    ok1 = "met" if ratios["score_idle_vs_limit_idle"] >= TARGET_VS_LIMIT else "NOT met"
    ok2 = "met" if ratios["score_loaded_vs_idle"] >= TARGET_LOADED else "NOT met"
    lines.append(f"\nTargets: default score idle / limit idle = **{ratios['score_idle_vs_limit_idle']:.2f}** "
                 f"(>= {TARGET_VS_LIMIT:g}: {ok1}); default score loaded / idle = **{ratios['score_loaded_vs_idle']:.2f}** "
                 f"(>= {TARGET_LOADED:g}: {ok2}); with the threads fixed to {cpus}: "
                 f"{ratios['fixed_threads_loaded_vs_idle']:.2f}.\n")
    lines.append(
        f"\nWhere the rest goes (idle): decoding and preprocessing a photo as `score` does takes "
        f"{idle['decode ms/photo']:.1f} ms of one core (Pillow's JPEG decoding, the model's "
        f"resize, the normalisation), against {1e3 * cpus / idle['limit']:.1f} core-ms for the backbone passes; the start-up "
        f"(`score` of one photo, end to end) is {idle['start-up s']:.2f} s. A pipeline that loses nothing else, "
        f"its decoding on the same {cpus} cores, reaches {ceiling:.1f} images/s over {n} photos: "
        f"**{ratios['ceiling_vs_limit_idle']:.2f}x** the limit. `score` reaches "
        f"**{ratios['score_idle_vs_ceiling']:.2f}x** of that ceiling.\n")
    stem = "cores" + ("" if name == contentiqa.DEFAULT_MODEL else f"_{name}")
    write_results(results_name(stem, ap, args, ignore=("model",)), payload, "\n".join(lines))


if __name__ == "__main__":
    main()
