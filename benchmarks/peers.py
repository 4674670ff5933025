"""Side-by-side race with pyiqa's no-reference metrics: speed measured here, accuracy as published.

    python benchmarks/peers.py --pyiqa-python /work/peers-venv/bin/python   # 48 photos, ~15-25 min on 2 cores
    python benchmarks/peers.py --quick --pyiqa-python ...                   # 3 photos, 3 metrics (checks that it runs)

pyiqa is installed separately, in a virtual environment of its own (its licence is
non-commercial, so it is no dependency of contentiqa; none of its code is copied here):

    python3 -m venv /work/peers-venv
    /work/peers-venv/bin/pip install torch==<the torch contentiqa uses> torchvision pyiqa "setuptools<81"

What is timed, on the same N clive-dev photos (500 x 500, the first N by name), in one run:

- each pyiqa metric in a fresh process of the pyiqa interpreter, created with **random weights**
  (speed does not depend on weight values): ``pretrained=False`` where the arch takes it, and
  every weight fetch -- timm / torchvision ImageNet weights, pyiqa's own checkpoints, OpenAI CLIP
  -- replaced by an untrained module of the same architecture; a socket guard refuses (and
  records) any network connection, so a metric that still tried to download would fail loudly.
  Scored one image at a time on the file path, as ``pyiqa METRIC -t FOLDER`` does
  (``metric(path).item()``), after one warm-up image;
- contentiqa in a fresh process of this (contentiqa's) interpreter: (a) ``contentiqa score
  FOLDER`` end to end, its default model and runtime (ONNX Runtime on a CPU), the ONNX export
  made by a first untimed run as it is on any machine after the first use; wall time of the
  whole command, process start and model load included; (b) the Python API loop,
  ``model.predict(path)`` one image at a time (PyTorch), after one warm-up image; (c) the same
  loop with the fast API, ``contentiqa.create_scorer().predict(path)`` (ONNX Runtime).

Why two interpreters: pyiqa pins its own stack (transformers, timm, opencv ...) and contentiqa is
tested on its own; each library runs in its own environment, with the same torch version (checked
and reported), default torch threads, and the same files, one process at a time.

Params count every tensor of the network, including modules that pyiqa keeps out of the module
tree (the CLIP backbone of clipiqa+ sits in a plain list). GFLOPs: ``torch.utils.flop_counter.
FlopCounterMode`` on one forward of a 500 x 500 photo (after the model's own preprocessing;
matrix products and convolutions only, a multiply-add counted as 2 FLOPs); contentiqa's ONNX
model is an export of the same graph, so the PyTorch count stands for it.

Accuracy is not measured here: each peer's CLIVE (LIVE Challenge) figures come from a published
table, cited per row (``PUBLISHED``); contentiqa's from this repository's results files (clive-dev
test parts, not the full 1,162-photo CLIVE).

Writes benchmarks/results/peers.json and peers.md. Exit 2 when pyiqa cannot be imported.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from common import RESULTS, SHARED, bench_lock, contentiqa_env, positive_int  # noqa: E402  (stdlib only: the pyiqa child imports it too)

CLIVE_IMAGES = SHARED / "data" / "clive-dev" / "images"
PEERS = ["paq2piq", "nima", "clipiqa+", "topiq_nr", "liqe", "dbcnn", "hyperiqa", "maniqa", "brisque"]
QUICK_PEERS = ["paq2piq", "topiq_nr", "brisque"]
CLASSICAL = {"brisque"}
TARGET_VS_FASTEST = 1.5  # x the fastest learned pyiqa metric
TARGET_VS_TOPIQ = 7.0

# pyiqa's NR benchmark (docs/benchmark.rst, "Performance on NR benchmarks"; tests/NR_benchmark_results.csv,
# last changed in commit 3c6ebdc, 2024-09-03): pyiqa's default weights -- trained on KonIQ-10k unless the
# paper's official weights exist -- tested on all of LIVE Challenge (column "livec", PLCC without fitting).
PYIQA_BENCH = ("pyiqa NR benchmark, column livec (chaofengc/IQA-PyTorch docs/benchmark.rst; "
               "tests/NR_benchmark_results.csv @3c6ebdc): default weights, mostly trained on KonIQ-10k, "
               "tested on all 1,162 CLIVE photos (cross-dataset)")
PUBLISHED: dict[str, dict[str, Any]] = {
    "paq2piq": {"trained_on": "FLIVE (official weights)", "srocc": 0.7188, "plcc": 0.7542, "source": PYIQA_BENCH},
    "nima": {"trained_on": "AVA (aesthetics)", "srocc": 0.5071, "plcc": 0.4993, "source": PYIQA_BENCH},
    "clipiqa+": {"trained_on": "KonIQ-10k", "srocc": 0.8045, "plcc": 0.8312, "source": PYIQA_BENCH},
    "topiq_nr": {"trained_on": "KonIQ-10k", "srocc": 0.8106, "plcc": 0.8261, "source": PYIQA_BENCH},
    "liqe": {"trained_on": "KonIQ-10k (re-trained, per the LIQE README)", "srocc": None, "plcc": None,
             "source": "not in pyiqa's NR benchmark; the LIQE README (zwx8981/LIQE @a64655f) lists no CLIVE figure; "
                       "the paper's (Zhang et al., CVPR 2023) CLIVE table was not checked here: left blank"},
    "dbcnn": {"trained_on": "KonIQ-10k (retrained by pyiqa)", "srocc": 0.7562, "plcc": 0.774, "source": PYIQA_BENCH},
    "hyperiqa": {"trained_on": "KonIQ-10k (retrained by pyiqa)", "srocc": 0.7546, "plcc": 0.7779, "source": PYIQA_BENCH},
    "maniqa": {"trained_on": "KonIQ-10k", "srocc": 0.8399, "plcc": 0.8262, "source": PYIQA_BENCH},
    "brisque": {"trained_on": "LIVE IQA (original SVM)", "srocc": 0.3128, "plcc": 0.3509, "source": PYIQA_BENCH},
}

# OpenAI CLIP's released model sizes (the hyper-parameters pyiqa's clip loader reads off the downloaded
# weight file's tensor shapes): the same network, built here untrained instead.
CLIP_ARCH = {
    "RN50": dict(embed_dim=1024, image_resolution=224, vision_layers=(3, 4, 6, 3), vision_width=64,
                 vision_patch_size=None),
    "ViT-B/32": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32),
    "ViT-B/16": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=16),
}
CLIP_TEXT = dict(context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8, transformer_layers=12)


# -- pure helpers (tested without pyiqa) ------------------------------------------------------------------
def install_hint(python: str) -> str:
    """What to tell a user whose pyiqa interpreter cannot import pyiqa."""
    return (f"pyiqa is not importable by {python}.\n"
            "Install it in a virtual environment of its own (it is no dependency of contentiqa), e.g.\n"
            "    python3 -m venv /work/peers-venv\n"
            "    /work/peers-venv/bin/pip install torch==<your torch version> torchvision pyiqa 'setuptools<81'\n"
            "    (setuptools<81: the clip package pyiqa uses still imports pkg_resources)\n"
            "then run:  python benchmarks/peers.py --pyiqa-python /work/peers-venv/bin/python\n"
            "(or set CONTENTIQA_PYIQA_PYTHON).")


def pyiqa_versions(python: str) -> dict[str, str] | None:
    """pyiqa's and torch's versions in ``python``, or None when pyiqa cannot be imported there."""
    code = "import json, pyiqa, torch; print(json.dumps({'pyiqa': pyiqa.__version__, 'torch': torch.__version__}))"
    try:
        proc = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _f(x: float | None, nd: int = 2) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def verdict(rows: dict[str, dict[str, Any]], ours: str) -> list[str]:
    """The issue's targets, checked on the measured images/s and the cited accuracies."""
    learned = {k: v for k, v in rows.items() if v.get("kind") == "pyiqa" and k not in CLASSICAL and v.get("ips")}
    if not learned or ours not in rows:
        return ["targets not checked: missing rows"]
    fastest = max(learned, key=lambda k: learned[k]["ips"])
    me = rows[ours]
    out = []
    r = me["ips"] / learned[fastest]["ips"]
    out.append(f"- speed vs the fastest learned pyiqa metric ({fastest}, {learned[fastest]['ips']:.2f} img/s): "
               f"{r:.2f}x (target >= {TARGET_VS_FASTEST:g}x: {'met' if r >= TARGET_VS_FASTEST else 'NOT met'})")
    if "topiq_nr" in learned:
        r = me["ips"] / learned["topiq_nr"]["ips"]
        out.append(f"- speed vs topiq_nr ({learned['topiq_nr']['ips']:.2f} img/s): {r:.2f}x "
                   f"(target >= {TARGET_VS_TOPIQ:g}x: {'met' if r >= TARGET_VS_TOPIQ else 'NOT met'})")
    for peer in dict.fromkeys([fastest, "topiq_nr"]):
        pub = PUBLISHED.get(peer, {})
        if peer in rows and pub.get("srocc") is not None and me.get("srocc") is not None:
            better = me["srocc"] > pub["srocc"]
            out.append(f"- CLIVE SROCC vs {peer}: {me['srocc']:.3f} vs {pub['srocc']:.3f} "
                       f"({'higher' if better else 'NOT higher'}; different protocols, see the accuracy notes)")
    return out


def render_markdown(p: dict[str, Any], command: str) -> str:
    """The results page: one table of speed and accuracy, then how each figure was obtained."""
    from common import md_table

    rows = []
    for name, r in p["rows"].items():
        gflops = "n/a (classical)" if name in CLASSICAL else _f(r.get("gflops"), 1)
        params = "–" if r.get("params") is None else f"{r['params'] / 1e6:.1f}"
        acc = "–" if r.get("srocc") is None else f"{r['srocc']:.3f} / {_f(r.get('plcc'), 3)}"
        rows.append([r["label"], params, gflops, _f(r.get("ips")), _f(r.get("ms_per_image"), 0),
                     f"{r.get('n_timed', '–')}", acc, r.get("acc_ref", "")])
    lines = [
        "# contentiqa against pyiqa's no-reference metrics (CPU)\n",
        f"One run: `{command}`. Machine: {p['machine']}. torch {p['torch_contentiqa']} (contentiqa) / "
        f"{p['torch_pyiqa']} (pyiqa {p['pyiqa']}), default torch threads. Photos: {p['n_images']} x 500x500 from "
        f"clive-dev (the first by name), the same files for every row; one image at a time; each row in a fresh "
        f"process, one after another. Load average (1, 5, 15 min) before: {p['load_before']}, after: "
        f"{p['load_after']}.\n",
        md_table(["model", "params (M)", "GFLOPs / 500x500 photo", "images/s", "ms/image", "images timed",
                  "CLIVE SROCC / PLCC", "accuracy source"], rows),
        "\nTargets (issue 13): contentiqa >= 1.5x the fastest learned pyiqa metric and >= 7x topiq_nr, with higher "
        "CLIVE accuracy than both.\n",
        "\n".join(p["verdict"]) + "\n",
        "\n## How the figures were obtained\n",
        "- **pyiqa rows**: `pyiqa.create_metric(name, device='cpu')` with random weights: `pretrained=False` "
        "(and `backbone_pretrain=False`) where the arch accepts it; timm and torchvision weights, pyiqa checkpoints "
        "and OpenAI CLIP replaced by untrained modules of the same architecture (CLIP built from its published "
        "sizes); BRISQUE's SVM gets random support vectors. Network connections refused and counted: "
        f"{p['network_attempts']} attempted. Weight loads skipped per metric are in peers.json. "
        "Timed as pyiqa's command line scores a folder: `metric(path).item()` per file, decoding included, after "
        "one warm-up image; a metric slower than the time budget "
        f"({p['budget_s']:.0f} s) is timed on the images done by then (column 'images timed').",
        "- **contentiqa rows**: the default model (`" + p["contentiqa_model"] + "`), run first and again last (a "
        "drifting machine load shows as a difference between the two; the targets use the slower). `contentiqa "
        "score` end to end: wall time of `python -m contentiqa.cli.main score FOLDER -o out.csv` (process start, "
        "imports, model load and the CSV included; the ONNX export cached by a first, untimed run); 'after "
        "start-up' is (N - 1) / (t(N photos) - t(1 photo)), the rate once the command is running. API loop: "
        "`model.predict(path)` per file in PyTorch, after one warm-up image, model creation excluded as for pyiqa; "
        "the ONNX Runtime API loop: `contentiqa.create_scorer().predict(path)` per file, the same way.",
        "- **GFLOPs**: `torch.utils.flop_counter.FlopCounterMode` over one forward of a 500x500 photo (pyiqa: the "
        "metric's forward on the 1x3x500x500 tensor, its internal resizing and crops included; contentiqa: the "
        "model's forward on its preprocessed input). Convolutions and matrix products only; a multiply-add is 2 "
        "FLOPs. The ONNX model of `contentiqa score` is an export of the same graph.",
        "- **Accuracy**: not measured here. Peers: " + PYIQA_BENCH + "; the training set of each row's weights is in "
        "the table. LIQE is not in that benchmark and is left blank. contentiqa: " + p["contentiqa_acc_note"]
        + " The protocols differ: the pyiqa figures are cross-dataset (trained on another dataset, tested on all "
        "of CLIVE), contentiqa's are within-dataset (trained on clive-dev, tested on held-out clive-dev photos, a "
        "75 % subset of CLIVE; those test parts also chose the recipe, in the ship gate, so the figure is slightly "
        "optimistic); contentiqa's own cross-dataset figure (BIQ2021 -> clive-dev) is in "
        "generalization.md. The peers' papers also report within-dataset CLIVE figures (the protocol of "
        "contentiqa's); those tables were not checked here, so they are not listed.",
        "- **Load**: the machine is shared (2 cores); the load average before and after is above. Absolute "
        "images/s on a quiet machine are higher for every row; the ratios inside one run are what the targets use.",
    ]
    return "\n".join(lines) + "\n"


# -- the pyiqa side (runs in the pyiqa interpreter; imports nothing from contentiqa) -----------------------
class NetworkGuard:
    """Refuses every internet connection and counts the attempts."""

    def __init__(self) -> None:
        self.attempts: list[str] = []

    def install(self) -> None:
        import socket

        guard = self
        real_connect = socket.socket.connect

        def connect(sock, address):  # type: ignore[no-untyped-def]
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                guard.attempts.append(repr(address))
                raise OSError(f"peers.py: network access refused ({address!r})")
            return real_connect(sock, address)

        socket.socket.connect = connect  # type: ignore[method-assign]
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"


def random_weight_patches(tmp: Path, skipped: list[str]) -> None:
    """Make pyiqa build its nets untrained: no pretrained weight is fetched or read."""
    import importlib
    import pkgutil

    import timm
    import torch
    import torchvision
    import pyiqa.archs as archs

    real_timm = timm.create_model

    def timm_create(name, *a, **kw):  # type: ignore[no-untyped-def]
        if kw.get("pretrained") or (a and a[0] is True):
            skipped.append(f"timm {name} ImageNet weights")
        kw["pretrained"] = False
        return real_timm(name, *a[1:] if a else a, **kw)

    timm.create_model = timm_create
    for name in torchvision.models.list_models(module=torchvision.models):
        builder = getattr(torchvision.models, name, None)
        if callable(builder):
            def untrained(*a, _b=builder, _n=name, **kw):  # type: ignore[no-untyped-def]
                if kw.get("weights") or kw.get("pretrained"):
                    skipped.append(f"torchvision {_n} weights")
                kw.pop("pretrained", None)
                kw["weights"] = None
                return _b(*a, **kw)
            setattr(torchvision.models, name, untrained)

    from pyiqa.archs.clip_model import CLIP

    def clip_load(name, device="cpu", *a, **kw):  # type: ignore[no-untyped-def]
        skipped.append(f"CLIP {name} weights")
        return CLIP(**CLIP_ARCH[name], **CLIP_TEXT).float().to(device).eval()

    def no_load(*a, **kw):  # type: ignore[no-untyped-def]
        skipped.append(f"pyiqa checkpoint {a[1] if len(a) > 1 else kw.get('model_path')}")

    def no_file(url, *a, **kw):  # type: ignore[no-untyped-def]
        raise RuntimeError(f"peers.py: a weight file was asked for ({url}); random weights need none")

    for mod in pkgutil.iter_modules(archs.__path__):
        if not mod.name.endswith("_arch"):
            continue
        try:
            m = importlib.import_module(f"pyiqa.archs.{mod.name}")
        except Exception:  # an arch whose optional dependency is missing: not one we race
            continue
        for attr, repl in (("load_pretrained_network", no_load), ("load_file_from_url", no_file), ("load", clip_load)):
            if hasattr(m, attr) and (attr != "load" or getattr(m, "load").__module__.endswith("clip_model")):
                setattr(m, attr, repl)
        if hasattr(m, "DEFAULT_CACHE_DIR"):  # LIQE caches text features computed by the (random) CLIP
            m.DEFAULT_CACHE_DIR = str(tmp)
    torch.hub.set_dir(str(tmp / "hub"))


def build_random_metric(name: str, tmp: Path, skipped: list[str]):
    """``pyiqa.create_metric`` with random weights (patches installed by the caller)."""
    import inspect

    import torch
    from pyiqa.archs import build_network  # noqa: F401  (registers the arch registry)
    from pyiqa.default_model_configs import DEFAULT_CONFIGS
    from pyiqa.utils.registry import ARCH_REGISTRY
    import pyiqa

    arch_type = DEFAULT_CONFIGS[name]["metric_opts"]["type"]
    try:
        cls = ARCH_REGISTRY.get(arch_type)
    except KeyError:
        from pyiqa.archs import _lazy_import_arch  # type: ignore[attr-defined]

        _lazy_import_arch(arch_type)
        cls = ARCH_REGISTRY.get(arch_type)
    params = inspect.signature(cls.__init__).parameters
    kw: dict[str, Any] = {}
    if "pretrained" in params:
        kw["pretrained"] = False
    if "backbone_pretrain" in params:
        kw["backbone_pretrain"] = False
    if arch_type == "BRISQUE":  # its SVM (support vectors over 36 features) from a random file of ours
        g = torch.Generator().manual_seed(0)
        path = tmp / "brisque_random_svm.pth"
        torch.save((torch.randn(800, generator=g), torch.rand(800, 36, generator=g)), path)
        kw["pretrained_model_path"] = str(path)
        skipped.append("BRISQUE SVM (random support vectors)")
    skipped.append("create_metric(" + ", ".join(f"{k}={v!r}" for k, v in kw.items() if k != "pretrained_model_path") + ")")
    torch.manual_seed(0)
    return pyiqa.create_metric(name, device="cpu", **kw)


def all_parameters(module) -> int:
    """Every parameter reachable from ``module``, including modules kept in plain lists."""
    import torch

    seen: set[int] = set()
    total = 0
    stack = [module]
    visited: set[int] = set()
    while stack:
        m = stack.pop()
        if id(m) in visited:
            continue
        visited.add(id(m))
        for p in m.parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
        stack.extend(m.children())
        for v in vars(m).values():
            if isinstance(v, (list, tuple)):
                stack.extend(x for x in v if isinstance(x, torch.nn.Module))
    return total


def count_gflops(fn: Callable[[], Any]) -> float:
    """GFLOPs of ``fn()`` as FlopCounterMode counts them."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def time_loop(score_one: Callable[[str], Any], files: list[str], budget_s: float) -> dict[str, float]:
    """Score ``files`` one at a time (after one warm-up) until done or past ``budget_s`` (>= 2 images)."""
    score_one(files[0])
    t0 = time.perf_counter()
    n = 0
    for f in files:
        score_one(f)
        n += 1
        if n >= 2 and time.perf_counter() - t0 > budget_s:
            break
    sec = time.perf_counter() - t0
    return {"n_timed": n, "seconds": sec, "ips": n / sec, "ms_per_image": 1000 * sec / n}


def pyiqa_child(spec: dict[str, Any]) -> dict[str, Any]:
    """One pyiqa metric, random weights, timed as pyiqa's command line runs it."""
    import torch

    guard = NetworkGuard()
    guard.install()
    skipped: list[str] = []
    with tempfile.TemporaryDirectory(prefix="peers-pyiqa-") as tmp:
        random_weight_patches(Path(tmp), skipped)
        t = time.perf_counter()
        metric = build_random_metric(spec["metric"], Path(tmp), skipped)
        create_s = time.perf_counter() - t
        params = all_parameters(metric.net)
        x = torch.rand(1, 3, 500, 500)
        gflops = count_gflops(lambda: metric(x))
        loop = time_loop(lambda f: metric(f).item(), spec["files"], spec["budget_s"])
    return {**loop, "params": params, "gflops": gflops, "create_s": create_s, "skipped_weights": skipped,
            "network_attempts": guard.attempts, "torch_threads": torch.get_num_threads()}


# -- the contentiqa side (runs in contentiqa's interpreter) -----------------------------------------------
def contentiqa_api_child(spec: dict[str, Any]) -> dict[str, Any]:
    """contentiqa's Python API, one image at a time, as a user's script would call it."""
    import torch
    from PIL import Image

    import contentiqa

    t = time.perf_counter()
    model = contentiqa.create_model(spec["model"]).eval()
    create_s = time.perf_counter() - t
    with Image.open(spec["files"][0]) as im:
        x = model.preprocess(im.convert("RGB"))
    gflops = count_gflops(lambda: model(x[None]))
    loop = time_loop(lambda f: model.predict(f).score, spec["files"], spec["budget_s"])
    # The fast API: the same model's ONNX Runtime scorer (the graph `contentiqa score` runs).
    t = time.perf_counter()
    scorer = contentiqa.create_scorer(spec["model"])
    scorer_s = time.perf_counter() - t
    fast = time_loop(lambda f: scorer.predict(f).score, spec["files"], spec["budget_s"])
    return {**loop, "params": all_parameters(model), "gflops": gflops, "create_s": create_s,
            "input": list(x.shape[-2:]), "torch_threads": torch.get_num_threads(),
            "fast": {**fast, "create_s": scorer_s}}


def cli_end_to_end(folder: Path, n: int, work: Path) -> dict[str, Any]:
    """``contentiqa score FOLDER`` as a user runs it: a first run makes the ONNX export (untimed),
    the second is timed, process start included. A run on one photo gives the fixed cost (start,
    imports, model load), so the rate after start-up is (N - 1) / (t_N - t_1)."""
    env = contentiqa_env(CONTENTIQA_CACHE_DIR=str(work / "cache"))
    cmd = [sys.executable, "-m", "contentiqa", "score", "--quiet"]
    one = work / "one-photo"
    if not one.is_dir():
        photo_folder([str(next(p for p in sorted(folder.iterdir())).resolve())], one)

    def timed(src: Path, out: Path) -> float:
        out.unlink(missing_ok=True)
        t = time.perf_counter()
        subprocess.run([*cmd, str(src), "-o", str(out)], check=True, env=env, capture_output=True)
        return time.perf_counter() - t

    timed(folder, work / "warm.csv")
    sec = timed(folder, work / "timed.csv")
    rows = (work / "timed.csv").read_text().strip().splitlines()
    if len(rows) - 1 != n:
        raise RuntimeError(f"contentiqa score wrote {len(rows) - 1} rows for {n} photos ({work / 'timed.csv'})")
    sec1 = timed(one, work / "one.csv")
    after = (n - 1) / (sec - sec1) if n > 1 and sec > sec1 else None
    return {"n_timed": n, "seconds": sec, "ips": n / sec, "ms_per_image": 1000 * sec / n, "one_photo_s": sec1,
            "ips_after_startup": after}


def run_child(python: str, kind: str, spec: dict[str, Any], work: Path) -> dict[str, Any]:
    out = work / f"child-{kind}-{spec.get('metric', 'ciqa').replace('+', 'p')}.json"
    env = contentiqa_env() if kind == "contentiqa" else {**os.environ}
    proc = subprocess.run([python, str(Path(__file__).resolve()), "--child", kind, json.dumps(spec), str(out)],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} child failed ({spec.get('metric', '')}):\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def contentiqa_accuracy(results: Path = RESULTS) -> list[dict[str, Any]]:
    """The CLIVE figures of every shipped tag of the default model, where benchmarks/docs.py's
    SHIPPED (the one list of where each tag's figures are) points: read from this repository's
    results files, never typed in."""
    import contentiqa
    from contentiqa.models.registry import list_pretrained
    from docs import clive_figures

    out = []
    for tag in (t for t in list_pretrained() if t.split(".")[0] == contentiqa.DEFAULT_MODEL):
        try:
            out.append(clive_figures(tag, results))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            out.append({"weights": tag, "srocc": None, "plcc": None, "file": "", "row": "",
                        "how": f"not read: {type(exc).__name__}: {exc}"})
    return out


def default_weights() -> str:
    """``name.tag`` of what `contentiqa score` loads by default (contentiqa.DEFAULT_MODEL and its default tag)."""
    import contentiqa
    from contentiqa.models.registry import resolve_tag

    return f"{contentiqa.DEFAULT_MODEL}.{resolve_tag(contentiqa.DEFAULT_MODEL)[1]}"


def cited_accuracy(metric: str) -> dict[str, Any]:
    """A pyiqa row's accuracy fields, from PUBLISHED."""
    pub = PUBLISHED.get(metric, {})
    ref = (f"pyiqa NR benchmark (weights trained on {pub.get('trained_on', '?')})" if pub.get("srocc") is not None
           else f"none found (weights trained on {pub.get('trained_on', '?')}; see peers.json)")
    return {"srocc": pub.get("srocc"), "plcc": pub.get("plcc"), "acc_ref": ref}


def photo_folder(files: list[str], folder: Path) -> Path:
    """A folder of links to the photos, for `contentiqa score FOLDER` (nothing is copied)."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        (folder / Path(f).name).symlink_to(f)
    return folder


def run(args: argparse.Namespace, versions: dict[str, str], files: list[str], metrics: list[str], budget: float,
        name: str = "peers") -> int:
    import platform

    import torch

    import contentiqa

    acc = contentiqa_accuracy()
    ours = default_weights()
    default_acc = next((a for a in acc if a["weights"] == ours), None)
    if default_acc is None:
        raise SystemExit(f"benchmarks/peers.py: no CLIVE figures for the default {ours} (benchmarks/docs.py's SHIPPED)")
    before = loadavg()
    rows: dict[str, dict[str, Any]] = {}
    attempts = 0
    with tempfile.TemporaryDirectory(prefix="peers-") as tmp, bench_lock():  # no other benchmark times meanwhile
        work = Path(tmp)
        spec = {"files": files, "budget_s": budget, "model": contentiqa.DEFAULT_MODEL}
        folder = photo_folder(files, work / "photos")
        acc_ref = f"{default_acc['file']} ({default_acc['how']})"

        def contentiqa_rows(when: str) -> None:
            """Both contentiqa rows; run first and again last, so a drifting load shows."""
            print(f"contentiqa ({contentiqa.DEFAULT_MODEL}, {when}): score command end to end ...", flush=True)
            cli = cli_end_to_end(folder, len(files), work)
            print(f"  {cli['ips']:.2f} img/s", flush=True)
            print(f"contentiqa ({contentiqa.DEFAULT_MODEL}, {when}): API loop ...", flush=True)
            api = run_child(sys.executable, "contentiqa", spec, work)
            print(f"  {api['ips']:.2f} img/s (PyTorch), {api['fast']['ips']:.2f} img/s (ONNX Runtime)", flush=True)
            fields = {"kind": "contentiqa", "params": api["params"], "gflops": api["gflops"],
                      "srocc": default_acc["srocc"], "plcc": default_acc["plcc"], "acc_ref": acc_ref}
            after = "" if cli["ips_after_startup"] is None else f"; {cli['ips_after_startup']:.2f}/s after start-up"
            rows[f"contentiqa score ({when})"] = {
                **fields, **cli, "label": f"**contentiqa `score` ({contentiqa.DEFAULT_MODEL}, ONNX Runtime, end to end, "
                f"{when}{after})**"}
            fast = api.pop("fast")
            rows[f"contentiqa api ({when})"] = {
                **fields, **api, "label": f"contentiqa API loop ({contentiqa.DEFAULT_MODEL}, PyTorch, "
                f"`model.predict(path)`, {when})"}
            rows[f"contentiqa fast-api ({when})"] = {
                **fields, **fast, "label": f"contentiqa API loop ({contentiqa.DEFAULT_MODEL}, ONNX Runtime, "
                f"`contentiqa.create_scorer().predict(path)`, {when})"}

        contentiqa_rows("first")
        for m in metrics:
            print(f"pyiqa {m} ...", flush=True)
            r = run_child(args.pyiqa_python, "pyiqa", {**spec, "metric": m}, work)
            attempts += len(r["network_attempts"])
            rows[m] = {**r, "kind": "pyiqa", "label": f"pyiqa `{m}`" + (" (classical)" if m in CLASSICAL else ""),
                       **cited_accuracy(m)}
            print(f"  {r['ips']:.2f} img/s over {r['n_timed']} images", flush=True)
        contentiqa_rows("last")
    after = loadavg()
    # the targets are checked on the slower of the two contentiqa runs of each kind
    for kind in ("score", "api", "fast-api"):
        first, last = rows[f"contentiqa {kind} (first)"], rows[f"contentiqa {kind} (last)"]
        rows[f"contentiqa {kind} (first)"]["slower"] = first["ips"] <= last["ips"]
        rows[f"contentiqa {kind} (last)"]["slower"] = last["ips"] < first["ips"]
    score_key = next(k for k, r in rows.items() if k.startswith("contentiqa score") and r["slower"])
    api_key = next(k for k, r in rows.items() if k.startswith("contentiqa api") and r["slower"])
    fast_key = next(k for k, r in rows.items() if k.startswith("contentiqa fast-api") and r["slower"])
    ver = [f"Checked on the slower contentiqa run of each kind ({score_key}; {api_key}; {fast_key}):"]
    ver += verdict(rows, score_key)
    ver += [v.replace("- ", "- API loop, PyTorch: ", 1) for v in verdict(rows, api_key) if v.startswith("- speed")]
    ver += [v.replace("- ", "- API loop, ONNX Runtime (create_scorer): ", 1) for v in verdict(rows, fast_key)
            if v.startswith("- speed")]
    for alt in (a for a in acc if a is not default_acc and a["weights"].split(".")[0] == ours.split(".")[0]):
        for peer in ("paq2piq", "topiq_nr"):
            pub = PUBLISHED[peer]["srocc"]
            if alt["srocc"] is not None and peer in rows:
                ver.append(f"- with `{alt['weights']}` weights (another tag of the same model): CLIVE SROCC {alt['srocc']:.3f} "
                           f"vs {peer} {pub:.3f} ({'higher' if alt['srocc'] > pub else 'NOT higher'})")
    payload = {
        "n_images": len(files), "files": [Path(f).name for f in files], "budget_s": budget, "metrics": metrics,
        "rows": rows, "verdict": ver, "load_before": before, "load_after": after, "network_attempts": attempts,
        "pyiqa": versions["pyiqa"], "torch_pyiqa": versions["torch"], "torch_contentiqa": torch.__version__,
        "pyiqa_python": args.pyiqa_python, "contentiqa_model": contentiqa.DEFAULT_MODEL,
        "contentiqa_accuracy": acc, "published": PUBLISHED,
        "contentiqa_acc_note": " ".join(
            f"`{a['weights']}` SROCC {_f(a['srocc'], 3)} / PLCC {_f(a['plcc'], 3)} from {a['file']}, row "
            f"\"{a['row']}\" ({a['how']})." for a in acc),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
    }
    command = "python benchmarks/peers.py" + (" --quick" if args.quick else "") + (
        f" --images {args.images}" if args.images else "") + (f" --metrics {args.metrics}" if args.metrics else "") + (
        f" --budget {args.budget:g}" if args.budget else "") + " --pyiqa-python PYIQA_VENV/bin/python"
    payload["command"] = command
    from common import write_results

    write_results(name, payload, render_markdown(payload, command))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pyiqa-python", default=os.environ.get("CONTENTIQA_PYIQA_PYTHON", sys.executable),
                    help="the interpreter that has pyiqa (default: $CONTENTIQA_PYIQA_PYTHON, else this one)")
    ap.add_argument("--images", type=positive_int, default=None, help="clive-dev photos (default 48; quick 3)")
    ap.add_argument("--metrics", default=None, help="comma-separated pyiqa metrics (default: the issue's nine)")
    ap.add_argument("--budget", type=float, default=None, help="seconds of timing per row at most (default 90; quick 10)")
    ap.add_argument("--quick", action="store_true", help="3 photos, 3 metrics (checks that it runs)")
    ap.add_argument("--render", action="store_true",
                    help="only rewrite peers.md from peers.json (after a change to this page's wording)")
    ap.add_argument("--child", nargs=3, metavar=("KIND", "SPEC", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, spec, out = args.child
        result = (pyiqa_child if kind == "pyiqa" else contentiqa_api_child)(json.loads(spec))
        Path(out).write_text(json.dumps(result))
        return 0

    if args.render:  # the measured figures kept, the citations (PUBLISHED) and the page's wording refreshed
        from contentiqa.utils.io import atomic_write_text

        payload = json.loads((RESULTS / "peers.json").read_text())
        payload["published"] = PUBLISHED
        for name, row in payload["rows"].items():
            if row.get("kind") == "pyiqa":
                row.update(cited_accuracy(name))
        command = payload.get("command") or "python benchmarks/peers.py --pyiqa-python PYIQA_VENV/bin/python"
        atomic_write_text(RESULTS / "peers.json", json.dumps(payload, indent=1))
        atomic_write_text(RESULTS / "peers.md", render_markdown(payload, command))
        return 0
    versions = pyiqa_versions(args.pyiqa_python)
    if versions is None:
        print(install_hint(args.pyiqa_python), file=sys.stderr)
        return 2
    if not CLIVE_IMAGES.is_dir():
        print(f"benchmark skipped: clive-dev photos not found at {CLIVE_IMAGES} (set CONTENTIQA_SHARED)", file=sys.stderr)
        return 2
    n = args.images or (3 if args.quick else 48)
    budget = args.budget or (10.0 if args.quick else 90.0)
    metrics = [m.strip() for m in (args.metrics or ",".join(QUICK_PEERS if args.quick else PEERS)).split(",") if m.strip()]
    files = sorted(str(p) for p in CLIVE_IMAGES.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"))[:n]
    from common import results_name

    # a check run (--quick, fewer photos or metrics) never writes over the published page
    return run(args, versions, files, metrics, budget, results_name("peers", ap, args, ignore=("pyiqa_python",)))


if __name__ == "__main__":
    sys.exit(main())
