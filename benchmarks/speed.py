"""Scoring speed and memory on this machine's CPU, every figure a ratio inside one run.

    python benchmarks/speed.py            # the full benchmark (a free CPU: ~10-15 min on 2 cores)
    python benchmarks/speed.py --quick    # a few images, one repeat (checks that it runs)

What is measured, in one run, on the same files (the naive loop and the long run each in a
fresh process of their own, as a user's script would be, so that neither inherits the other
measurements' memory or thread state):

(a) the practical limit: the bare backbone (EfficientNet-Lite0 ``forward_features``, ImageNet
    weights) in ONNX Runtime on an in-memory tensor of the model's input size, batch 1;
(b) each shipped model (iqa-cr, ie-iqa) the naive way: PIL open, the model's own
    ``preprocess`` ("to tensor"), ``model(x[None])`` one image at a time, plain PyTorch eager
    (eval mode, autograd on, default threads) -- what a first script does;
(c) each model through ``contentiqa score`` (called in-process), files on disk to the CSV,
    PyTorch and ONNX Runtime (export cached beforehand and timed separately);
(d) time per image against pixel count (500 x 500 -> 2048 x 1536) and against batch size;
plus where the fast path spends its time (decode / model), the choices kept (channels_last,
decoding threads, ONNX Runtime's idle-thread spinning) measured on and off, and the resident
memory (RSS) over a long run of 10,000 inputs (the same few generated images, repeated).
The limit, naive and fast measurements are interleaved round by round (median of 3 rounds),
so that a drifting machine load affects them alike.

Real photos: the first 64 images of ../shared/data/clive-dev (all 500 x 500; when the data are
absent, the example photos stand in and the results go to speed_quick), plus generated 1024 x 768 and 2048 x 1536 JPEGs (real
photos upscaled, so decoding costs what a camera JPEG costs). When a model's shipped weights
(src/contentiqa/weights/*.pt) are absent, ``create_model(name, pretrained=False)`` stands in:
the same architecture and cost, with an untrained head (said in the output).

Writes benchmarks/results/speed.json and speed.md.
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from common import (ROOT, SHARED, bench_lock, check_models, command_line, md_table, positive_int,  # noqa: E402
                    results_name, write_results)

CLIVE_IMAGES = SHARED / "data" / "clive-dev" / "images"
EXAMPLES = ROOT / "examples" / "images"
PIXEL_SIZES = [(500, 500), (1024, 768), (1536, 1152), (2048, 1536)]  # (width, height)
RSS_SIZES = [(256, 192), (192, 256), (224, 224), (320, 240)]
TARGET_VS_NAIVE = 3.0
TARGET_VS_LIMIT = 0.7


# -- measuring helpers -------------------------------------------------------------------------
class RssSampler:
    """Peak resident memory of this process while the block runs (sampled every 5 ms)."""

    def __init__(self, interval: float = 0.005):
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.start = self.peak = 0

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        release_memory()
        self.start = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20

    @property
    def added_mb(self) -> float:
        """How far the peak rose above the RSS at the start of the block."""
        return (self.peak - self.start) / 2**20


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc ``malloc_trim``), so a
    section's RSS is not inflated by what an earlier one freed."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def warm_page_cache(files: list[str]) -> None:
    for f in files:
        with open(f, "rb") as fh:
            while fh.read(1 << 20):
                pass


# -- inputs ------------------------------------------------------------------------------------------
def source_photos(n: int) -> tuple[list[str], str]:
    """Up to ``n`` real photos: CLIVE dev when present, else the repository's examples."""
    if CLIVE_IMAGES.is_dir():
        files = sorted(str(p) for p in CLIVE_IMAGES.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"))
        if files:
            return files[:n], "clive-dev"
    files = sorted(str(p) for p in EXAMPLES.glob("*") if p.suffix.lower() in (".jpg", ".png"))
    return files[:n], "examples"


def generate_images(folder: Path, sources: list[str], size: tuple[int, int], count: int, tag: str = "") -> list[str]:
    """``count`` JPEGs of ``size`` (w, h) made from real photos (Lanczos), quality 90."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(count):
        p = folder / f"{tag}{size[0]}x{size[1]}_{k:03d}.jpg"
        if not p.exists():
            if sources:
                img = Image.open(sources[k % len(sources)]).convert("RGB").resize(size, Image.LANCZOS)
            else:  # no photo at all: a smooth synthetic image
                yy, xx = np.mgrid[0:size[1], 0:size[0]]
                arr = np.stack([(xx * 255 // max(1, size[0] - 1)), (yy * 255 // max(1, size[1] - 1)),
                                ((xx + yy + 37 * k) % 256)], -1).astype(np.uint8)
                img = Image.fromarray(arr)
            img.save(p, quality=90)
        out.append(str(p))
    return out


# -- the models ------------------------------------------------------------------------------------------
def load_benchmark_models(names: list[str], folder: Path) -> dict[str, dict[str, Any]]:
    """name -> {model, ckpt (a file for the CLI), weights (what was loaded)}."""
    import torch

    import contentiqa
    from contentiqa.models.registry import save_checkpoint, shipped_weights_path

    out = {}
    for name in names:
        shipped = shipped_weights_path(name)
        if shipped is not None:
            model = contentiqa.create_model(name).eval()
            ckpt, weights = str(shipped), f"shipped weights ({shipped.name})"
        else:
            torch.manual_seed(0)
            model = contentiqa.create_model(name, pretrained=False).eval()
            ckpt = str(save_checkpoint(model, folder / f"{name}-untrained.pt"))
            weights = ("shipped weights absent: create_model(pretrained=False), ImageNet backbone(s) + untrained head "
                       "(same architecture and cost)")
        out[name] = {"model": model, "ckpt": ckpt, "weights": weights}
    return out


def input_hw(model, photo_hw: tuple[int, int]) -> tuple[int, int]:
    """The (H, W) the network sees for a photo of ``photo_hw``."""
    from contentiqa.inference.onnx import input_size

    size = input_size(model)
    return photo_hw if size is None else size


def pass_hws(model, passes: list, photo_hw: tuple[int, int]) -> list[tuple[int, int]]:
    """The (H, W) of each whole backbone pass for a photo of ``photo_hw``: a native-resolution
    pass reads the photo as the model does, a fixed-size one its own size (IE-IQA: 384 px, and
    224 px for its intelligibility network)."""
    hw = tuple(input_hw(model, photo_hw))
    return [hw if p.native else (p.size, p.size) for p in passes if not p.partial]


def backbone_passes(model) -> list:
    """The EfficientNet-Lite0 backbone passes per forward (IQA-CR 1; IE-IQA 2, the distortion
    backbone and the intelligibility network; an ensemble's member that shares its first stages
    only its own deep stages): cores.py's passes."""
    from cores import backbone_passes as passes

    return passes(model)


# -- (a) the bare backbone in ONNX Runtime ---------------------------------------------------------------
def export_backbone(folder: Path, backbone_module=None) -> Path:
    import torch
    from torch import nn

    from contentiqa.backbones import create_backbone

    class Features(nn.Module):
        def __init__(self, b):
            super().__init__()
            self.b = b

        def forward(self, x):
            return self.b.forward_features(x)

    if backbone_module is None:
        try:
            backbone_module = create_backbone("efficientnet_lite0", pretrained=True)
        except Exception:  # weights unavailable: the cost is the same
            backbone_module = create_backbone("efficientnet_lite0", pretrained=False)
    return export_like_contentiqa(Features(backbone_module).eval(), (1, 3, 224, 224), folder / "backbone-lite0.onnx",
                                  dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}})


def export_like_contentiqa(net, shape: tuple[int, ...], path: Path, input_name: str = "image",
                           dynamic_axes: dict | None = None) -> Path:
    """``net`` as an ONNX graph of one input (example ``shape``), exported as contentiqa exports its
    models (TF-"same" convolutions as one Conv node), so it is the best graph of it we know, not a
    slower one."""
    import warnings

    import torch

    from contentiqa.backbones.onnx_same_padding import same_padding_as_onnx_conv

    with warnings.catch_warnings(), same_padding_as_onnx_conv(net, 17):
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(*shape),), str(path), dynamo=False, opset_version=17,
                          input_names=[input_name], output_names=["features"], dynamic_axes=dynamic_axes)
    return path


def bare_backbone_seconds(session, hw: tuple[int, int] | None, runs: int, batch: int = 1,
                          feed: dict[str, np.ndarray] | None = None) -> float:
    """Median seconds per image of the backbone alone at (H, W) (or of a graph on its ``feed``)."""
    if feed is None:
        feed = {session.get_inputs()[0].name: np.random.default_rng(0).standard_normal((batch, 3, *hw), dtype=np.float32)}
    session.run(None, feed)  # warm-up (first run of a shape plans its memory)
    times = []
    for _ in range(max(1, runs)):
        t = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - t) / batch)
    return statistics.median(times)


# -- (b) naive eager ----------------------------------------------------------------------------------------------
def naive_eager(model, files: list[str]) -> float:
    """Seconds for the naive loop over ``files``."""
    from PIL import Image

    model.eval()
    t = time.perf_counter()
    scores = []
    for f in files:
        img = Image.open(f).convert("RGB")
        x = model.preprocess(img)
        out = model(x[None])
        scores.append(out["score"][0].item())
    return time.perf_counter() - t


def naive_child(spec: dict[str, Any], model=None) -> dict[str, float]:
    """The naive loop as its own script would run it: load the model, warm up on one image,
    time the loop (seconds per image) and its peak RSS."""
    if model is None:
        from contentiqa.models.registry import load_checkpoint

        model = load_checkpoint(spec["ckpt"]).eval()
    naive_eager(model, spec["files"][:1])
    with RssSampler() as mem:
        sec = naive_eager(model, spec["files"])
    return {"sec_per_image": sec / len(spec["files"]), "peak_rss_mb": mem.peak_mb, "added_rss_mb": mem.added_mb}


def run_child(kind: str, spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """``naive_child`` / ``rss_child`` in a fresh Python process (this script, --child)."""
    import json
    import subprocess

    out = workdir / f"child-{kind}.json"
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", kind, json.dumps(spec), str(out)], check=True)
    return json.loads(out.read_text())


# -- (c) the fast path: the score command ----------------------------------------------------------------------------
def cli_score(ckpt: str, files: list[str], out_csv: Path, runtime: str, batch_size: int | None = None, workers: int | None = None,
              extra: list[str] | None = None) -> dict[str, float]:
    """``contentiqa score FILES --model CKPT -o OUT.csv`` in-process (its default batch size
    unless ``batch_size``): wall seconds and the part spent loading the model (and finding its
    ONNX export), which the steady rate excludes."""
    import contentiqa.cli.score as score_mod
    from contentiqa.cli.main import main

    loaded = {"s": 0.0}
    real = score_mod.load_scorer

    def timed_load(*a, **k):
        t = time.perf_counter()
        try:
            return real(*a, **k)
        finally:
            loaded["s"] += time.perf_counter() - t

    score_mod.load_scorer = timed_load
    try:
        t = time.perf_counter()
        rc = main(["score", *files, "--model", ckpt, "-o", str(out_csv), "-q", "--force", "--runtime", runtime,
                   *(["--batch-size", str(batch_size)] if batch_size else []),
                   *(["--workers", str(workers)] if workers is not None else []), *(extra or [])])
        wall = time.perf_counter() - t
    finally:
        score_mod.load_scorer = real
    if rc != 0:
        raise RuntimeError(f"contentiqa score exited {rc} ({runtime}, {out_csv})")
    n = len(files)
    steady = max(wall - loaded["s"], 1e-9)
    return {"wall_s": wall, "load_s": loaded["s"], "ips_end_to_end": n / wall, "ips": n / steady, "ms_per_image": 1000 * steady / n}


def interleaved(tasks: dict[Any, Callable[[], dict[str, Any]]], repeats: int) -> dict[Any, dict[str, Any]]:
    """Run every task once per round, ``repeats`` rounds, so all see the same machine load;
    per task, the median round by ``ips`` (with the peak RSS over its rounds)."""
    runs: dict[Any, list] = {k: [] for k in tasks}
    for _ in range(max(1, repeats)):
        for k, fn in tasks.items():
            with RssSampler() as mem:
                r = fn()
            runs[k].append({**r, "peak_rss_mb": mem.peak_mb})
    out = {}
    for k, rs in runs.items():
        ordered = sorted(rs, key=lambda r: r["ips"])
        out[k] = {**ordered[len(ordered) // 2], "peak_rss_mb": max(r["peak_rss_mb"] for r in rs), "runs_ips": [r["ips"] for r in rs]}
    return out


# -- where the time goes ---------------------------------------------------------------------------------------------
def breakdown(scorer, files: list[str], batch_size: int = 1, workers: int = 2) -> dict[str, float]:
    """The engine on ``scorer`` with timers: wall, time inside the model's forward, and
    decode+preprocess time summed over the decoding threads."""
    import contentiqa.inference.engine as engine

    lock = threading.Lock()
    acc = {"forward": 0.0, "prepare": 0.0, "batches": 0}
    real_prepare = engine._prepare
    fwd = scorer.forward

    def timed_prepare(*a, **k):
        t = time.perf_counter()
        try:
            return real_prepare(*a, **k)
        finally:
            with lock:
                acc["prepare"] += time.perf_counter() - t

    def timed_forward(x):
        t = time.perf_counter()
        try:
            return fwd(x)
        finally:
            acc["forward"] += time.perf_counter() - t
            acc["batches"] += 1

    engine._prepare = timed_prepare
    try:
        t = time.perf_counter()
        engine.Engine(scorer, timed_forward, batch_size=batch_size, workers=workers).run(files, return_results=False)
        wall = time.perf_counter() - t
    finally:
        engine._prepare = real_prepare
    n = len(files)
    return {"wall_s": wall, "ips": n / wall, "forward_s": acc["forward"], "prepare_s": acc["prepare"],
            "forward_share": acc["forward"] / wall, "prepare_ms_per_image": 1000 * acc["prepare"] / n,
            "forward_ms_per_image": 1000 * acc["forward"] / n, "batches": acc["batches"]}


# -- memory over a long run ------------------------------------------------------------------------------------------------
def rss_long_run(scorer, files: list[str], n_inputs: int, every: int, batch_size: int = 1) -> dict[str, Any]:
    """Score ``files`` cycled to ``n_inputs`` inputs (no results kept, as the CLI does) and
    record RSS every ``every`` results. ``working_set_mb``: RSS at the first sample minus RSS
    before the run (the pipeline's working set: decoded images, a batch and the runtime's
    buffers); ``growth_mb``: from the sample at 20 % of the run to the last one."""
    import psutil

    from contentiqa.inference.engine import DEFAULT_MAX_BATCH_PIXELS, Engine

    proc = psutil.Process()
    items = [files[k % len(files)] for k in range(n_inputs)]
    series: list[tuple[int, float]] = []
    count = {"n": 0}

    def on_result(i, pred):
        count["n"] += 1
        if count["n"] % every == 0:
            series.append((count["n"], proc.memory_info().rss / 2**20))

    release_memory()
    start = rss_mb()
    t = time.perf_counter()
    Engine(scorer, scorer.forward, batch_size=batch_size).run(items, on_result=on_result, return_results=False)
    wall = time.perf_counter() - t
    ref = series[min(len(series) - 1, len(series) // 5)] if series else (0, start)
    growth = series[-1][1] - ref[1] if series else 0.0
    span = series[-1][0] - ref[0] if series else 0
    from PIL import Image

    px = max(Image.open(f).size[0] * Image.open(f).size[1] for f in files)
    batch_mb = batch_size * 3 * px * 4 / 2**20  # one batch of float input at the largest size
    return {
        "n_inputs": n_inputs, "every": every, "wall_s": wall, "ips": n_inputs / wall,
        "rss_start_mb": start, "rss_after_first_mb": series[0][1] if series else start, "growth_from": ref[0],
        "working_set_mb": (series[0][1] if series else start) - start, "rss_end_mb": series[-1][1] if series else start,
        "rss_max_mb": max((v for _, v in series), default=start), "growth_mb": growth,
        "growth_mb_per_1000": 1000 * growth / span if span else 0.0, "one_batch_input_mb": batch_mb,
        "max_batch_pixels": DEFAULT_MAX_BATCH_PIXELS, "series": series,
    }


# -- the whole benchmark ----------------------------------------------------------------------------------------------------
def run_benchmark(
    models: dict[str, dict[str, Any]],
    real: list[str],
    generated: dict[tuple[int, int], list[str]],
    rss_files: list[str],
    workdir: Path,
    repeats: int = 3,
    backbone_runs: int = 10,
    batch_sizes: dict[str, list[int]] | None = None,
    rss_inputs: int = 10_000,
    rss_every: int = 500,
    backbone_module=None,
    log: Callable[[str], None] = print,
    subprocesses: bool = True,
) -> dict[str, Any]:
    """Every measurement; returns the JSON payload. ``models``: name -> {model, ckpt, weights};
    ``real``: photos for the main comparison (all one size); ``generated``: (w, h) -> files for
    the pixel-count sweep; ``rss_files``: the images cycled in the long run."""
    import onnxruntime as ort
    import torch
    from PIL import Image

    from cores import backbone_sessions, describe_passes

    from contentiqa.inference.onnx import cached_export
    from contentiqa.inference.onnx_runtime import OnnxScorer, make_session
    from contentiqa.inference.torch_runtime import TorchScorer

    os.environ["CONTENTIQA_CACHE_DIR"] = str(workdir / "cache")  # a fresh export cache, timed below
    warm_page_cache(real + [f for fs in generated.values() for f in fs] + rss_files)
    photo_hw = Image.open(real[0]).size[::-1]
    payload: dict[str, Any] = {
        "threads": {"torch": torch.get_num_threads(), "cpu_count": os.cpu_count(), "onnxruntime": ort.__version__},
        "images": {"real": len(real), "real_hw": list(photo_hw), "generated": {f"{w}x{h}": len(v) for (w, h), v in generated.items()}},
        "repeats": repeats, "models": {}, "bare_backbone": {}, "pixels": {}, "batch": {}, "ablations": {}, "rss": {},
    }

    # (a) the bare backbone in ONNX Runtime at every input size used below, with ONNX Runtime's
    # default session and with the one the score command uses (idle threads do not spin); the
    # limit is the faster of the two
    log("bare backbone (ONNX Runtime) ...")
    bb_path = export_backbone(workdir, backbone_module)
    bare = {"ort_default": ort.InferenceSession(str(bb_path), providers=["CPUExecutionProvider"]),
            "no_spinning": make_session(bb_path, spinning=False)}

    def limit_seconds(hw) -> float:
        return min(bare_backbone_seconds(sess, hw, backbone_runs) for sess in bare.values())

    sizes_needed = {tuple(photo_hw)} | {(h, w) for (w, h) in generated}
    for entry in models.values():
        passes = backbone_passes(entry["model"])
        sizes_needed.update(pass_hws(entry["model"], passes, tuple(photo_hw)))
        for w, h in generated:
            sizes_needed.update(pass_hws(entry["model"], passes, (h, w)))
    with RssSampler() as mem:
        for hw in sorted(sizes_needed, key=lambda s: s[0] * s[1]):
            per = {k: bare_backbone_seconds(sess, hw, backbone_runs) for k, sess in bare.items()}
            sec = min(per.values())
            payload["bare_backbone"][f"{hw[0]}x{hw[1]}"] = {
                "ms_per_image": 1000 * sec, "ips": 1 / sec, **{f"{k}_ms": 1000 * v for k, v in per.items()}}
    payload["bare_backbone_peak_rss_mb"] = mem.peak_mb
    for k in list(bare):  # fresh sessions: their memory arenas now hold only what the rounds below use
        bare[k] = None
    release_memory()
    bare = {"ort_default": ort.InferenceSession(str(bb_path), providers=["CPUExecutionProvider"]),
            "no_spinning": make_session(bb_path, spinning=False)}

    for name, entry in models.items():
        model, ckpt = entry["model"], entry["ckpt"]
        passes = backbone_passes(model)
        whole = sum(not p.partial for p in passes)
        whole_hws = pass_hws(model, passes, tuple(photo_hw))
        res: dict[str, Any] = {"weights": entry["weights"], "backbone_passes": describe_passes(passes),
                               "input": "native resolution" if model.native_resolution else f"{input_hw(model, photo_hw)}"}
        # a member's own deep stages after the shared ones: timed on their own graph, as cores.py does
        tails = backbone_sessions(workdir, [p for p in passes if p.partial])
        tail_sec = sum(min(bare_backbone_seconds(runs[i][0], None, backbone_runs, feed=runs[i][1]) for runs in tails.values())
                       for i in range(len(passes) - whole))

        # the ONNX export, once (cached for the score command)
        t = time.perf_counter()
        onnx_path, _ = cached_export(model)
        res["onnx_export_s"] = time.perf_counter() - t
        res["onnx_file_mb"] = onnx_path.stat().st_size / 2**20

        # (a) limit, (b) naive eager and (c) the score command, interleaved repeat by repeat so
        # that all see the same machine (a shared CPU's load drifts)
        log(f"{name}: limit / naive eager / score --runtime torch / onnx, {repeats} round(s) ...")
        for runtime in ("torch", "onnx"):  # warm-ups
            cli_score(ckpt, real[:2], workdir / "warm.csv", runtime)
        rounds: dict[str, list] = {"limit": [], "naive": [], "torch": [], "onnx": []}
        peaks = {"naive": 0.0, "torch": 0.0, "onnx": 0.0}
        added = {"naive": 0.0, "torch": 0.0, "onnx": 0.0}
        for _ in range(max(1, repeats)):
            rounds["limit"].append(sum(limit_seconds(hw) for hw in whole_hws) + tail_sec)
            spec = {"ckpt": ckpt, "files": real}
            nv = run_child("naive", spec, workdir) if subprocesses else naive_child(spec, model)
            rounds["naive"].append(nv["sec_per_image"])
            peaks["naive"] = max(peaks["naive"], nv["peak_rss_mb"])
            added["naive"] = max(added["naive"], nv["added_rss_mb"])
            for runtime in ("torch", "onnx"):
                with RssSampler() as mem:
                    rounds[runtime].append(cli_score(ckpt, real, workdir / f"{name}-{runtime}.csv", runtime))
                peaks[runtime] = max(peaks[runtime], mem.peak_mb)
                added[runtime] = max(added[runtime], mem.added_mb)
        limit_sec = statistics.median(rounds["limit"])
        res["limit_ips"] = 1 / limit_sec
        res["limit_runs_ips"] = [1 / v for v in rounds["limit"]]
        naive_sec = statistics.median(rounds["naive"])
        res["naive"] = {"ips": 1 / naive_sec, "ms_per_image": 1000 * naive_sec, "peak_rss_mb": peaks["naive"],
                        "added_rss_mb": added["naive"],
                        "runs_ips": [1 / v for v in rounds["naive"]]}
        for runtime in ("torch", "onnx"):
            runs = sorted(rounds[runtime], key=lambda r: r["ips"])
            r = dict(runs[len(runs) // 2])  # the median round
            r.update(peak_rss_mb=peaks[runtime], added_rss_mb=added[runtime], runs_ips=[x["ips"] for x in rounds[runtime]])
            r["vs_naive"] = r["ips"] / res["naive"]["ips"]
            r["vs_limit"] = r["ips"] / res["limit_ips"]
            res[f"fast_{runtime}"] = r

        # where the time goes (the same pipeline, timed inside)
        scorers = {"torch": TorchScorer(model), "onnx": OnnxScorer.from_file(onnx_path)}
        res["breakdown"] = {}
        for rt, scorer in scorers.items():
            kw = {"batch_size": scorer.default_batch_size(), "workers": scorer.default_workers()}
            res["breakdown"][rt] = {**breakdown(scorer, real, **kw), **kw}

        # (d) batch size (rounds interleaved over the settings, as above)
        sweep = (batch_sizes or {}).get(name) or ([1, 2, 4, 8] if model.native_resolution else [1, 4, 8, 16])
        log(f"{name}: batch sizes {sweep} ...")
        got = interleaved({(rt, b): (lambda rt=rt, b=b: cli_score(ckpt, real, workdir / f"b{b}.csv", rt, batch_size=b))
                           for rt in ("torch", "onnx") for b in sweep}, repeats)
        payload["batch"][name] = {
            f"{rt}_b{b}": {"batch_size": b, "runtime": rt, "ips": r["ips"], "ms_per_image": r["ms_per_image"], "peak_rss_mb": r["peak_rss_mb"]}
            for (rt, b), r in got.items()}

        # (d) pixel count
        log(f"{name}: pixel counts {[f'{w}x{h}' for w, h in generated]} ...")
        got = interleaved({(rt, w, h): (lambda rt=rt, files=files, w=w: cli_score(ckpt, files, workdir / f"px{w}.csv", rt))
                           for (w, h), files in generated.items() for rt in ("torch", "onnx")}, repeats)
        payload["pixels"][name] = {}
        for (rt, w, h), r in got.items():
            mp = w * h / 1e6
            each = [payload["bare_backbone"].get(f"{a}x{b}", {}).get("ms_per_image") for a, b in pass_hws(model, passes, (h, w))]
            bare_ms = sum(each) if all(each) else None
            payload["pixels"][name][f"{rt}_{w}x{h}"] = {
                "width": w, "height": h, "megapixels": mp, "runtime": rt, "ms_per_image": r["ms_per_image"],
                "ms_per_megapixel": r["ms_per_image"] / mp, "peak_rss_mb": r["peak_rss_mb"],
                "limit_ms_per_image": bare_ms + 1000 * tail_sec if bare_ms else None,
            }

        # the choices the fast path makes, on and off (in the pipeline, rounds interleaved)
        spinning = OnnxScorer(make_session(onnx_path, spinning=True), onnx_path)
        torch_workers = scorers["torch"].default_workers()
        settings = {
            "torch, channels_last on (default)": (TorchScorer(model, channels_last=True), {}),
            "torch, channels_last off": (TorchScorer(model, channels_last=False), {}),
            f"torch, decoding threads 2{' (default)' if torch_workers == 2 else ''}": (scorers["torch"], {"workers": 2}),
            f"torch, decoding threads 0{' (default: no core left free)' if torch_workers == 0 else ''}":
                (scorers["torch"], {"workers": 0}),
            "onnx, decoding threads 2, idle threads not spinning (default)": (scorers["onnx"], {"workers": 2}),
            "onnx, decoding threads 0": (scorers["onnx"], {"workers": 0}),
            "onnx, idle threads spinning (ONNX Runtime's default)": (spinning, {"workers": 2}),
        }
        log(f"{name}: ablations ...")
        got = interleaved({k: (lambda sc=sc, kw=kw: breakdown(sc, real, **kw)) for k, (sc, kw) in settings.items()},
                          repeats)
        payload["ablations"][name] = {k: r["ips"] for k, r in got.items()}
        del spinning, settings, scorers
        payload["models"][name] = res
        gc.collect()

    # memory over a long run (IQA-CR-like native-resolution model: the one whose shapes vary),
    # each runtime in a fresh process so that nothing measured above weighs on its RSS
    rss_model_name = next((n for n, e in models.items() if e["model"].native_resolution), next(iter(models)))
    for runtime in ("onnx", "torch"):
        log(f"RSS over {rss_inputs} inputs ({rss_model_name}, {runtime}) ...")
        spec = {"ckpt": models[rss_model_name]["ckpt"], "files": rss_files, "n": rss_inputs, "every": rss_every, "runtime": runtime}
        if subprocesses:
            r = run_child("rss", spec, workdir)
        else:
            r = rss_child(spec, models[rss_model_name]["model"])
        payload["rss"][runtime] = {"model": rss_model_name, **r}
    return payload


def rss_child(spec: dict[str, Any], model=None) -> dict[str, Any]:
    """One long run as described by ``spec`` (ckpt, files, n, every, runtime)."""
    from contentiqa.inference.onnx import cached_export
    from contentiqa.inference.onnx_runtime import OnnxScorer
    from contentiqa.inference.torch_runtime import TorchScorer

    if model is None:
        from contentiqa.models.registry import load_checkpoint

        model = load_checkpoint(spec["ckpt"]).eval()
    scorer = OnnxScorer.from_file(cached_export(model)[0]) if spec["runtime"] == "onnx" else TorchScorer(model)
    release_memory()
    return rss_long_run(scorer, spec["files"], spec["n"], spec["every"])


# -- the report -------------------------------------------------------------------------------------------------------------
def _f(x, nd=1) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def render_markdown(p: dict[str, Any], command: str) -> str:
    real_hw = "x".join(str(v) for v in p["images"]["real_hw"][::-1])
    lines = [
        "# Scoring speed and memory (CPU)\n",
        f"One run: `{command}` (naive loop and long run in fresh processes). Torch threads {p['threads']['torch']}, {p['threads']['cpu_count']} CPUs, "
        f"onnxruntime {p['threads']['onnxruntime']}. Real photos: {p['images']['real']} x {real_hw} "
        f"({p.get('photo_source', '?')}); median of {p['repeats']} round(s), the limit, naive and fast paths interleaved "
        "in every round. Images/s of the score command exclude loading the model (reported separately as end-to-end). "
        "The limit is the faster of ONNX Runtime's default session and the score command's (idle threads not spinning).\n",
        "## Throughput on real photos\n",
    ]
    rows = []
    for name, r in p["models"].items():
        hw = r["input"]
        rows.append([f"{name}: bare backbone passes ({r['backbone_passes']}; ONNX Runtime, in memory, batch 1) = limit",
                     _f(r["limit_ips"]),
                     _f(1000 / r["limit_ips"]), "-", "-", "1.00"])
        n = r["naive"]
        rows.append([f"{name}: naive PyTorch eager, one at a time (own process)", _f(n["ips"]), _f(n["ms_per_image"]),
                     f"{n['peak_rss_mb']:.0f} (+{n['added_rss_mb']:.0f})", "1.00", f"{n['ips'] / r['limit_ips']:.2f}"])
        for rt in ("torch", "onnx"):
            f = r[f"fast_{rt}"]
            rows.append([f"{name}: `contentiqa score --runtime {rt}` (end to end {_f(f['ips_end_to_end'])}/s)", _f(f["ips"]),
                         _f(f["ms_per_image"]), f"{f['peak_rss_mb']:.0f} (+{f['added_rss_mb']:.0f})",
                         f"**{f['vs_naive']:.2f}**", f"**{f['vs_limit']:.2f}**"])
        del hw
    lines.append(md_table(["what", "images/s", "ms/image", "peak RSS MB (+ rise during it)", "x naive", "x limit"], rows))
    lines.append("\nPeak RSS is the whole process's: the score command runs inside the benchmark process, which also "
                 "holds the other models and ONNX Runtime sessions; the rise during the run and the fresh-process long "
                 "run below show the fast path's own memory.\n")
    lines.append(f"\nTargets: fast path >= {TARGET_VS_NAIVE:g}x naive eager, >= {TARGET_VS_LIMIT:g}x the bare-backbone limit.\n")
    verdict = []
    for name, r in p["models"].items():
        for rt in ("torch", "onnx"):
            f = r[f"fast_{rt}"]
            ok_n = "met" if f["vs_naive"] >= TARGET_VS_NAIVE else "NOT met"
            ok_l = "met" if f["vs_limit"] >= TARGET_VS_LIMIT else "NOT met"
            verdict.append(f"- {name}, {rt}: {f['vs_naive']:.2f}x naive ({ok_n}), {f['vs_limit']:.2f}x limit ({ok_l})")
    lines.append("\n".join(verdict) + "\n")
    lines.append("\nModels: " + "; ".join(f"{n}: {r['weights']}, input {r['input']}, ONNX export {r['onnx_export_s']:.1f} s "
                                          f"({r['onnx_file_mb']:.0f} MB)" for n, r in p["models"].items()) + ".\n")

    lines.append("\n## Where the fast path spends its time (real photos)\n")
    rows = []
    for name, r in p["models"].items():
        for rt, b in r["breakdown"].items():
            rows.append([name, rt, str(b.get("batch_size", 1)), str(b.get("workers", 2)), _f(b["ips"]),
                         _f(b["forward_ms_per_image"]), _f(b["prepare_ms_per_image"]), f"{100 * b['forward_share']:.0f} %"])
    lines.append(md_table(["model", "runtime", "batch", "decoding threads", "images/s", "model ms/image",
                           "decode+preprocess ms/image", "model busy"], rows))
    lines.append("\nThe score command's defaults (batch size, decoding threads: see `contentiqa score --help`). With decoding "
                 "threads, decoding overlaps the model; with none it runs between forwards. 'model busy' is the share of the "
                 "wall time spent inside the forward.\n")

    lines.append("\n## Time per image against pixel count\n")
    rows = []
    for name, d in p["pixels"].items():
        for key, v in sorted(d.items(), key=lambda kv: (kv[1]["runtime"], kv[1]["megapixels"])):
            rows.append([name, v["runtime"], f"{v['width']}x{v['height']}", f"{v['megapixels']:.2f}", _f(v["ms_per_image"]),
                         _f(v["ms_per_megapixel"]), _f(v["limit_ms_per_image"]), _f(v["peak_rss_mb"], 0)])
    lines.append(md_table(["model", "runtime", "size", "MP", "ms/image", "ms/MP", "limit ms/image", "peak RSS MB"], rows))
    lines.append("\nIQA-CR reads every pixel at native resolution, so its cost should grow in proportion to the pixels "
                 "(flat ms/MP); IE-IQA resizes to its fixed input, so only decoding and the resize grow with the pixels.\n")

    lines.append("\n## Time per image against batch size (real photos)\n")
    rows = []
    for name, d in p["batch"].items():
        for key, v in d.items():
            rows.append([name, v["runtime"], str(v["batch_size"]), _f(v["ips"]), _f(v["ms_per_image"]), _f(v["peak_rss_mb"], 0)])
    lines.append(md_table(["model", "runtime", "batch size", "images/s", "ms/image", "peak RSS MB"], rows))

    lines.append("\n## Choices, measured on and off (images/s, in the pipeline)\n")
    rows = [[name, k, _f(v)] for name, d in p["ablations"].items() for k, v in d.items()]
    lines.append(md_table(["model", "setting", "images/s"], rows))

    lines.append("\n## Resident memory over a long run\n")
    rows = []
    for rt, r in p["rss"].items():
        rows.append([r["model"], rt, str(r["n_inputs"]), _f(r["ips"]), _f(r["rss_start_mb"], 0), _f(r["working_set_mb"], 0),
                     _f(r["rss_max_mb"], 0), _f(r["rss_end_mb"], 0), f"{r['growth_mb']:+.1f} (from input {r['growth_from']})",
                     f"{r['growth_mb_per_1000']:+.2f}"])
    lines.append(md_table(["model", "runtime", "inputs", "images/s", "RSS before MB", "working set MB (first sample - before)",
                           "max MB", "end MB", "growth MB", "MB per 1000 inputs"], rows))
    lines.append("\nThe same few generated images (4 sizes), repeated; no results kept (as `contentiqa score` passes "
                 "them on to the output file); RSS sampled every "
                 + (str(next(iter(p["rss"].values()))["every"]) if p["rss"] else "-")
                 + " inputs. Flat memory: the growth after warm-up is small against the working set.\n")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a few images, one repeat, a short long-run (checks that it runs)")
    ap.add_argument("--images", type=positive_int, default=None, help="real photos to use (default 64; quick 6)")
    ap.add_argument("--repeats", type=positive_int, default=None, help="repeats per timing (default 3; quick 1)")
    ap.add_argument("--rss-inputs", type=positive_int, default=None, help="inputs in the long run (default 10000; quick 300)")
    ap.add_argument("--models", default=None,
                    help="comma-separated model names (default: contentiqa.DEFAULT_MODEL, iqa-cr, ie-iqa)")
    ap.add_argument("--child", nargs=3, metavar=("KIND", "SPEC", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    check_models(ap, [m.strip() for m in (args.models or "").split(",")])
    if args.child:  # a measurement in a fresh process (called by run_benchmark)
        import json

        kind, spec, out = args.child
        result = (naive_child if kind == "naive" else rss_child)(json.loads(spec))
        Path(out).write_text(json.dumps(result))
        return
    quick = args.quick
    n_real = args.images or (6 if quick else 64)
    repeats = args.repeats or (1 if quick else 3)
    rss_inputs = args.rss_inputs or (300 if quick else 10_000)
    rss_every = max(1, rss_inputs // 20)

    real, source = source_photos(n_real)
    if source != "clive-dev":
        print(f"note: real CLIVE photos not found at {CLIVE_IMAGES}; using {len(real)} example photos instead")
    if not real:
        sys.exit("benchmark skipped: no photos found (neither CLIVE dev nor examples/images)")
    with tempfile.TemporaryDirectory(prefix="contentiqa-speed-") as tmp:
        work = Path(tmp)
        from PIL import Image

        gen_counts = {(1024, 768): 2, (2048, 1536): 1} if quick else {(1024, 768): 16, (1536, 1152): 8, (2048, 1536): 8}
        generated: dict[tuple[int, int], list[str]] = {}
        if Image.open(real[0]).size == PIXEL_SIZES[0]:  # the real photos are the 500 x 500 point
            generated[PIXEL_SIZES[0]] = real[: (2 if quick else 16)]
        for size, count in gen_counts.items():
            generated[size] = generate_images(work / "gen", real, size, count)
        rss_files = [generate_images(work / "rss", real, s, 1, tag="rss")[0] for s in RSS_SIZES]
        from contentiqa import DEFAULT_MODEL

        names = args.models.split(",") if args.models else [DEFAULT_MODEL, "iqa-cr", "ie-iqa"]
        models = load_benchmark_models(list(dict.fromkeys(m.strip() for m in names if m.strip())), work)
        with bench_lock():
            load_before = os.getloadavg()
            payload = run_benchmark(models, real, generated, rss_files, work, repeats=repeats,
                                    backbone_runs=3 if quick else 10, rss_inputs=rss_inputs, rss_every=rss_every,
                                    batch_sizes={"iqa-cr": [1, 8], "ie-iqa": [1, 16]} if quick else None)
            payload["load_average_before_after"] = [list(load_before), list(os.getloadavg())]
    payload["photo_source"] = source
    payload["quick"] = quick
    command = command_line()
    # the example photos stand in for clive-dev's: not the published measurement either
    name = results_name("speed", ap, args)
    if source != "clive-dev" and not name.endswith("_quick"):
        name += "_quick"
    write_results(name, payload, render_markdown(payload, command))


if __name__ == "__main__":
    main()
