"""``contentiqa score PATH...``: score photos, print a table, write CSV / JSON / JSONL / HTML.

PATHs are image files, folders (their images; with --recursive their subfolders' too) and glob
patterns (expanded here, like the shell would, so quoted patterns work). Inside folders only
files with an image extension are taken; a file named explicitly is always attempted. Every
input gets a row: one that cannot be scored (missing, not an image, truncated, too small, ...)
gets an error instead of a score, and the rest of the batch goes on.

Runtimes: --runtime auto (default) runs ONNX Runtime on the CPU and PyTorch on a GPU
(--device cuda); --runtime torch or onnx forces one. For ONNX Runtime the model is exported once
to an ONNX file in the cache ($CONTENTIQA_CACHE_DIR, default ~/.cache/contentiqa; files under
onnx/, named by a hash of the weights file, rebuilt if damaged; a read-only cache falls back to
the temporary folder), or taken from --onnx-model FILE, which needs no PyTorch weights at all.
Once the export is cached (and with --onnx-model), scoring runs without importing PyTorch: the
graph's metadata give the preprocessing, scale and categories.
--precision int8 runs an int8 graph quantized from that export (cached beside it) with the
calibration shipped beside the weights. Without --precision a model runs int8 only where that
was measured to keep its accuracy (iqa-cr; ie-iqa stays fp32: benchmarks/results/int8.md).
ONNX Runtime's compute threads follow the cores free when the run starts (--threads N fixes them);
with 8 or more inputs each thread scores its own photo, side by side.

Many machines: --shard I/N scores a fixed 1/N of the inputs (by a hash of each file's absolute
path), so N jobs, e.g. a SLURM array with
`--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT -o part$SLURM_ARRAY_TASK_ID.csv`,
write tables that concatenate to the whole, every input once.

Nothing is lost: --output is checked writable and locked (a second run writing the same file
is refused) before scoring; an existing --output needs --resume (finish it: only inputs not yet
scored are run, and only with the model that scored the rest) or --force (replace it). Results
are saved every --flush-every rows, and on Ctrl-C, SIGTERM (a batch system's time limit) or
SIGHUP; if --output cannot be written, they go to a rescue file in the temporary folder, named
in the message. Every row records the model, its weights file and SHA-256, the precision it ran in
(fp32 / int8 graph, or bf16 / fp16 autocast) and the version; --resume refuses to mix them.

Exit code: 0 every input scored, 1 some failed (the output still lists every input),
2 usage error (nothing scored), 3 results could not be written to --output (saved to the
rescue file named on stderr), 128+N stopped by signal N (130 Ctrl-C, 143 SIGTERM; progress saved).
"""
from __future__ import annotations

import argparse
import errno
import glob
import os
import re
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .main import UsageError

EXPLAIN_REPORT_MAX_PIXELS = 1_000_000
"""Images are explained for the report on a copy of at most this size (the heatmap is shown
as a thumbnail anyway)."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="score images (files, folders, globs) and write a table / report",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="image files, folders or glob patterns")
    p.add_argument("--model", "-m", default=None,
                   help="registered model name or checkpoint file (default: contentiqa.DEFAULT_MODEL with its shipped weights)")
    p.add_argument("--recursive", "-r", action="store_true", help="also take images in subfolders of folder PATHs")
    p.add_argument("--output", "-o", metavar="FILE", help="write results to FILE.csv, .json, .jsonl or .html (report)")
    p.add_argument("--batch-size", "-b", type=int, default=None,
                   help="images per forward pass (equal sizes are batched). Default on the CPU: 4 for fixed-input models "
                        "(ie-iqa) under --runtime torch, else 1 (native-size and ONNX batches were measured no faster "
                        "per image; benchmarks/results/speed.md); 32 on a GPU")
    p.add_argument("--workers", "-j", type=int, default=None,
                   help="image-decoding threads (0 = decode in the main thread). Default: 2 with --runtime onnx; with "
                        "torch, the cores its threads leave free, at most 2 (so 0 on a 2-core machine, where decoding "
                        "beside the model was measured slower); on a GPU one per CPU core but one, at most 16")
    p.add_argument("--sort", nargs="?", const="-score", choices=("score", "-score", "path"),
                   help="order of the table and output file: score (ascending), -score (best first; "
                        "what a bare --sort means) or path; failed inputs last")
    p.add_argument("--explain", action="store_true", help="HTML report: add a quality heatmap to each card (see --explain-limit)")
    p.add_argument("--explain-limit", type=int, default=100, metavar="N",
                   help="with --explain, heatmaps for the N best-scored images only (default 100; 0 = all)")
    p.add_argument("--resume", action="store_true",
                   help="keep the rows already in --output and score only the inputs missing there (failed ones are "
                        "retried); refused if they were scored with another model")
    p.add_argument("--force", action="store_true", help="replace an existing --output (without it, or --resume, an existing file is an error)")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors and notes on inputs passed over")
    p.add_argument("--max-pixels", type=float, default=None, metavar="MP",
                   help="refuse images larger than MP megapixels (decompression-bomb guard; default 100)")
    p.add_argument("--max-side", type=int, default=None, metavar="PX",
                   help="native-resolution models (iqa-cr): downscale images whose longest side exceeds PX first, "
                        "noted in the row (default 2048, which bounds memory at about 2 GB; 0 = never: a 24 MP "
                        "photo then needs about 6 GB)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--runtime", choices=("auto", "torch", "onnx"), default=None,
                   help="auto (default): ONNX Runtime on the CPU (faster; the model is exported to the cache on "
                        "first use, or PyTorch if it cannot be exported), PyTorch on a GPU. torch / onnx force one")
    p.add_argument("--onnx-model", metavar="FILE", default=None,
                   help="with --runtime onnx: this file from `contentiqa export` (default: export --model "
                        "to the cache on first use); its metadata give the preprocessing and scale")
    p.add_argument("--precision", choices=("fp32", "int8"), default=None,
                   help="ONNX Runtime graph: fp32 or int8 (the CNN quantized with the calibration shipped beside the "
                        "weights). Default: the model's measured choice (benchmarks/results/int8.md): int8 for iqa-cr "
                        "(1.92x faster, SROCC within 0.005); fp32 for ie-iqa, the default model (int8 lost 0.016-0.14 SROCC)")
    p.add_argument("--autocast", choices=("auto", "bf16", "fp16", "off"), default="auto", help=AUTOCAST_HELP)
    p.add_argument("--shard", metavar="I/N", default=None,
                   help="score only shard I of N (0 <= I < N): a deterministic 1/N of the inputs, so N "
                        "machines split one job and their outputs concatenate without duplicates")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="compute threads for the model (default: ONNX Runtime one per core not busy with other "
                        "processes when the run starts; torch its own, one per core). ONNX Runtime with 8 or more "
                        "inputs scores that many photos at once, one thread each (measured faster than splitting "
                        "each photo over the threads)")
    p.add_argument("--flush-every", type=int, default=100, metavar="N",
                   help="rewrite --output after every N new results (and at least every minute) so a killed run keeps its progress")
    p.add_argument("--thumbnail-size", type=int, default=256, metavar="PX", help="HTML report thumbnail size (default 256)")
    p.set_defaults(func=run)
    # Let "--sort -score" through: argparse would take "-score" for an option. It treats
    # strings its negative-number pattern matches as values ("--sort=-score" always works).
    matcher = getattr(p, "_negative_number_matcher", None)
    if matcher is not None:
        p._negative_number_matcher = re.compile(f"(?:{matcher.pattern})|^-score$")


# -- inputs --------------------------------------------------------------------------------
def path_key(path: str) -> str:
    """How two spellings of one file are recognised as the same input."""
    return os.path.normcase(os.path.abspath(os.path.expanduser(path)))


def _hidden(name: str) -> bool:
    return name.startswith(".")


@dataclass
class FolderScan:
    """What scanning one folder found: image files, the problems that must become rows
    (unreadable folders, broken or looping links: their images cannot be scored) and what was
    passed over on purpose (summarised on stderr, so nothing is skipped without a word)."""

    files: list[str] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)
    subfolders_skipped: list[str] = field(default_factory=list)
    not_images: list[str] = field(default_factory=list)
    links_seen: list[str] = field(default_factory=list)


def _classify(scan: FolderScan, folder: str, name: str, recursive: bool) -> str | None:
    """Add the entry ``name`` of ``folder`` to ``scan``; returns its path when it is a folder
    to descend into."""
    from ..data.imageio import is_image_file

    path = os.path.normpath(os.path.join(folder, name))
    try:
        st = os.stat(path)  # follows links
    except OSError as exc:
        if os.path.islink(path):
            reason = "symbolic link loop" if exc.errno == errno.ELOOP else "broken symbolic link"
            if is_image_file(name) or exc.errno == errno.ELOOP:
                scan.problems.append((path, f"{reason} ({exc.strerror})"))
            else:
                scan.not_images.append(path)
        else:
            scan.problems.append((path, f"cannot read: {exc.strerror or exc}"))
        return None
    if stat.S_ISDIR(st.st_mode):
        if recursive:
            return path
        scan.subfolders_skipped.append(path)
    elif is_image_file(name):
        scan.files.append(path)
    else:
        scan.not_images.append(path)
    return None


def list_folder(folder: str, recursive: bool) -> FolderScan:
    """Image files in ``folder`` (sorted; hidden files and folders skipped), descending into
    subfolders (and linked folders, each real folder once, so link loops end) with
    ``recursive``. Files are recognised by extension: every format Pillow can open."""
    scan = FolderScan()
    seen: set[tuple[int, int]] = set()
    stack = [os.path.normpath(folder)]
    while stack:
        d = stack.pop()
        try:
            st = os.stat(d)
            if (st.st_dev, st.st_ino) in seen:
                scan.links_seen.append(d)
                continue
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(d) as it:
                names = sorted(e.name for e in it)
        except OSError as exc:
            scan.problems.append((d, f"folder cannot be read: {exc.strerror or exc}; its images were not scored"))
            continue
        subdirs = [_classify(scan, d, n, recursive) for n in names if not _hidden(n)]
        stack.extend(reversed([s for s in subdirs if s is not None]))
    return scan


def collect_inputs(args_paths: list[str], recursive: bool, notes: list[str] | None = None) -> list[tuple[str, str | None]]:
    """``[(path, error_or_None)]`` in order, duplicates removed. Entries with an error are
    PATH arguments (or parts of folders) that yield nothing to score: a glob matching nothing,
    a folder without images, an unreadable folder, a broken or looping link; a path that does
    not exist is passed on and reported by the image reader. What was passed over on purpose
    (subfolders without --recursive, non-image files, a folder reached twice through links)
    is summarised in ``notes``."""
    out: list[tuple[str, str | None]] = []
    seen: set[str] = set()
    notes = notes if notes is not None else []

    def add(path: str, error: str | None = None) -> None:
        k = path_key(path)
        if k not in seen:
            seen.add(k)
            out.append((path, error))

    def expand(arg: str, from_glob: bool) -> None:
        p = os.path.expanduser(arg)
        if os.path.isdir(p):
            scan = list_folder(p, recursive)
            for f in scan.files:
                add(f)
            for f, err in scan.problems:
                add(f, err)
            if not scan.files and not scan.problems:
                hint = " (it has subfolders: add --recursive)" if scan.subfolders_skipped else ""
                add(p, f"folder contains no image files{hint}")
            elif scan.subfolders_skipped:
                notes.append(f"{p}: {len(scan.subfolders_skipped)} subfolder(s) not searched "
                             f"(e.g. {scan.subfolders_skipped[0]}): add --recursive to score their images")
            if scan.not_images:
                notes.append(f"{p}: {len(scan.not_images)} file(s) without an image extension skipped "
                             f"(e.g. {scan.not_images[0]}); name a file to have it attempted anyway")
            if scan.links_seen:
                notes.append(f"{p}: {len(scan.links_seen)} linked folder(s) already scanned under another "
                             f"name, not repeated (e.g. {scan.links_seen[0]})")
        elif not os.path.lexists(p) and not from_glob and glob.has_magic(p):
            matches = sorted(glob.glob(p, recursive=True))
            if not matches:
                add(arg, "no files match this pattern")
            for m in matches:
                expand(m, True)
        elif os.path.islink(p) and not os.path.exists(p):
            add(p, "broken symbolic link or link loop")
        else:
            add(p)  # a file (always attempted) or a missing path (an error row)

    for a in args_paths:
        expand(a, False)
    return out


# -- the command ---------------------------------------------------------------------------
def _validate(args: argparse.Namespace) -> str | None:
    from ..reporting.results import output_format

    if not args.paths:
        raise UsageError("no PATHs given: name image files, folders or glob patterns to score")
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if args.workers is not None and args.workers < 0:
        raise UsageError("--workers must be 0 or more")
    if args.flush_every < 1:
        raise UsageError("--flush-every must be at least 1")
    if args.explain_limit < 0:
        raise UsageError("--explain-limit must be 0 or more")
    if args.thumbnail_size < 16:
        raise UsageError("--thumbnail-size must be at least 16")
    if args.max_side is not None and args.max_side < 0:
        raise UsageError("--max-side must be 0 (never downscale) or a number of pixels")
    if args.max_pixels is not None and not args.max_pixels > 0:
        raise UsageError("--max-pixels must be a positive number of megapixels")
    if args.threads is not None and args.threads < 1:
        raise UsageError("--threads must be at least 1")
    args.shard_spec = None
    if args.shard is not None:
        from ..inference.shard import parse_shard

        try:
            args.shard_spec = parse_shard(args.shard)
        except ValueError as exc:
            raise UsageError(f"--shard: {exc}") from None
    settle_runtime(args)
    if args.runtime == "onnx" and args.explain and args.onnx_model is not None:
        raise UsageError("--explain needs the PyTorch model (Grad-CAM): use --model instead of --onnx-model")
    fmt = None
    if args.output:
        try:
            fmt = output_format(args.output)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if os.path.isdir(args.output):
            raise UsageError(f"--output {args.output} is a folder; give a file name")
    if args.resume and not args.output:
        raise UsageError("--resume needs --output (the file to resume)")
    if args.resume and args.force:
        raise UsageError("--resume keeps --output's rows, --force replaces them: choose one")
    if args.explain and fmt != "html":
        raise UsageError(
            "--explain adds heatmaps to the HTML report: use --output REPORT.html "
            "(or `contentiqa explain IMAGE` for one image)"
        )
    return fmt


def settle_runtime(args: argparse.Namespace) -> None:
    """--runtime from --autocast, --precision and --onnx-model, or a usage error for a
    combination that contradicts itself: the same rules for ``score`` and ``serve``."""
    from ._model_loading import resolve_runtime

    if args.autocast in ("bf16", "fp16"):
        if args.runtime == "onnx" or args.onnx_model is not None:
            raise UsageError(f"--autocast {args.autocast} is a PyTorch setting: drop --runtime onnx / --onnx-model")
        if args.precision is not None:
            raise UsageError(f"--autocast {args.autocast} runs PyTorch; --precision chooses the ONNX Runtime graph: choose one")
        args.runtime = args.runtime or "torch"  # autocast asked for by name: PyTorch, on the CPU too
    resolve_runtime(args, "auto")  # auto: a model that cannot be exported falls back to torch in _load_runtime
    if args.precision is not None:
        if args.runtime == "torch":
            raise UsageError(f"--precision {args.precision} chooses the ONNX Runtime graph: drop --runtime torch")
        if args.onnx_model is not None:
            raise UsageError("--precision chooses the cached export; --onnx-model FILE runs that file as it is")


AUTOCAST_HELP = ("PyTorch: run the model under autocast in bfloat16 / float16 (on a GPU: tensor cores and half the "
                 "memory traffic; scores come back as float32). auto (default): bf16 on a CUDA GPU (fp16 where it "
                 "lacks bf16), off on the CPU. bf16 / fp16 on the CPU choose --runtime torch")


def _heatmaps(model, rows: list[dict], limit: int, size: int, quiet: bool) -> tuple[dict[str, bytes], list[str]]:
    """Quality heatmap thumbnails for the best ``limit`` scored rows."""
    from tqdm.auto import tqdm

    from ..explain import explain
    from ..reporting.html import make_thumbnail, score_higher_is_better

    ok = [r for r in rows if not r.get("error") and r.get("score") is not None]
    ok.sort(key=lambda r: r["score"], reverse=score_higher_is_better(model))
    chosen = ok if limit == 0 else ok[:limit]
    maps: dict[str, bytes] = {}
    problems: list[str] = []
    targets = ("quality",) if model.predicts_score else ("category",)
    for r in tqdm(chosen, desc="explaining", unit="img", disable=quiet):
        try:
            exp = explain(model, r["path"], targets=targets, max_pixels=EXPLAIN_REPORT_MAX_PIXELS, exact_score=False)
            which = "fused" if exp.fused is not None else "fused_category"
            maps[r["path"]] = make_thumbnail(exp.overlay(which, max_size=size), size)
        except Exception as exc:  # a heatmap failure must not lose the report
            problems.append(f"{r['path']}: no heatmap ({exc})")
    return maps, problems


def default_workers(runtime: str, threads: int | None = None, device: str = "cpu") -> int:
    """Decoding threads that do not fight the model for cores: ONNX Runtime's idle threads
    sleep (it gains from 2), torch's intra-op threads keep every core they are given busy. On a
    GPU the CPUs do nothing but decode: one thread per core but one (for the main thread
    feeding the GPU), at most 16 (Pillow's decoding and resizing release the GIL)."""
    if str(device) != "cpu":
        return max(1, min(16, (os.cpu_count() or 2) - 1))
    if runtime != "torch":
        return 2
    import torch

    return max(0, min(2, (os.cpu_count() or 1) - (threads or torch.get_num_threads())))


def default_batch_size(model, runtime: str) -> int:
    """Measured on a CPU (benchmarks/results/speed.md): batches only pay off for torch on
    fixed-size inputs; native-size inputs rarely match in size, and ONNX Runtime is flat."""
    if runtime == "onnx":  # always on the CPU
        return 1
    if model.device.type != "cpu":
        return 32  # a GPU needs large batches to be busy; 32 x 384 px is ~60 MB of input
    return 4 if runtime == "torch" and not model.native_resolution else 1


class _torch_threads:
    """Set torch's intra-op threads for a block (None: leave them), then restore them."""

    def __init__(self, n: int | None):
        self.n, self.saved = n, None

    def __enter__(self):
        if self.n:
            import torch

            self.saved = torch.get_num_threads()
            torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        if self.saved is not None:
            import torch

            torch.set_num_threads(self.saved)


def resolve_autocast(choice: str, runtime: str, device) -> str | None:
    """The torch autocast dtype for --autocast ``choice`` (None: full precision). ``auto`` is
    bfloat16 on a CUDA GPU (float16 on one without bf16: same speed, narrower range) and off
    elsewhere; ONNX Runtime runs never autocast (their graph has its own precision)."""
    if runtime != "torch" or choice == "off":
        return None
    if choice == "bf16":
        return "bfloat16"
    if choice == "fp16":
        return "float16"
    if getattr(device, "type", str(device)) != "cuda":
        return None
    import torch

    return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"


AUTOCAST_LABELS = {None: "fp32", "bfloat16": "bf16", "float16": "fp16"}
"""The ``precision`` recorded in result rows for a PyTorch run with that autocast dtype."""


def run_precision(args: argparse.Namespace, model, forward) -> tuple[str | None, str]:
    """``(autocast dtype, precision label)`` of a loaded runtime (:func:`_load_runtime`): the
    ONNX graph's precision, or the torch model's autocast under --autocast; what ``score`` rows
    and ``serve`` responses record."""
    autocast = resolve_autocast(args.autocast, args.runtime, model.device) if forward is None else None
    return autocast, args.precision_used or AUTOCAST_LABELS[autocast]


def _ort_threads(args: argparse.Namespace) -> int | None:
    """ONNX Runtime intra-op threads per run: the run's thread plan (``args.plan``, made once the
    inputs are counted; None in ``serve``), else --threads (None: planned when the session is made)."""
    return args.plan.threads if args.plan is not None else args.threads


def _torch_free(args: argparse.Namespace):
    """``(scorer, spec)`` when this run can score from a cached ONNX graph without importing
    torch: ONNX Runtime chosen (``auto`` on the CPU, or ``onnx``), no --explain (Grad-CAM needs
    the torch model), and the weights file (shipped or a checkpoint) exported before. Else
    None: the torch path loads the model (and exports it on a cache miss)."""
    from .. import DEFAULT_MODEL
    from ._model_loading import weights_file_for

    if args.runtime not in ("onnx", "onnx_or_torch") or args.explain or args.onnx_model is not None:
        return None
    spec = args.model or DEFAULT_MODEL
    found = weights_file_for(spec)
    if found is None:
        return None
    from ..inference.onnx_runtime import OnnxUnavailableError, cached_scorer

    from ..inference.quantize import default_precision

    precision = args.precision or default_precision(found[0])
    try:
        scorer = cached_scorer(found[0], threads=_ort_threads(args), weights_tag=found[1], precision=precision)
    except (OnnxUnavailableError, OSError, ValueError):  # the torch path says what is missing, or reads the file itself
        return None
    return (scorer, spec) if scorer is not None else None


def _load_runtime(args: argparse.Namespace, device=None, torch_free: bool = True):
    """``(model, model_spec, forward)``: the torch model, or for --runtime onnx the torch model
    with an ONNX Runtime forward (exported to the cache on first use), or a model served by
    ONNX Runtime alone (forward None: it runs the session itself) — from --onnx-model, or,
    with ``torch_free``, from the cached export of the weights (no torch imported at all).
    ``device``: the torch device (default: --device, resolved only when torch is needed)."""
    from .. import DEFAULT_MODEL
    from ._model_loading import load_model, resolve_device, weights_file_for

    if torch_free:
        fast = _torch_free(args)
        if fast is not None:
            scorer, spec = fast
            args.runtime = "onnx"
            args.precision_used = scorer.metadata.get("precision", "fp32")
            if not args.quiet:
                print(f"ONNX Runtime: {scorer.path}", file=sys.stderr)
            return scorer, spec, None
        if args.runtime == "onnx" and args.onnx_model is not None:
            from ..inference.onnx_runtime import OnnxScorer, OnnxUnavailableError

            try:
                model = OnnxScorer.from_file(args.onnx_model, threads=_ort_threads(args))
                args.precision_used = model.metadata.get("precision", "fp32")
            except OnnxUnavailableError as exc:
                raise UsageError(str(exc)) from None
            except (ValueError, FileNotFoundError) as exc:
                raise UsageError(str(exc)) from None
            if args.model and not _same_model(args.model, model.model_name):
                raise UsageError(f"--onnx-model {args.onnx_model} holds model '{model.model_name}', not --model {args.model}")
            return model, args.onnx_model, None
    if device is None:
        device = resolve_device(args.device)
    spec = args.model or DEFAULT_MODEL
    found = weights_file_for(spec)
    weights = found[0] if found is not None else None  # the export is cached under this file's hash

    if args.runtime == "onnx_or_torch":  # --runtime auto on the CPU
        from ..inference.onnx import OnnxExportError, onnx_available

        model = load_model(spec, device)
        if onnx_available():
            try:
                forward, path = _onnx_forward(args, model, weights)
            except (OnnxExportError, ValueError) as exc:
                if not args.quiet:
                    print(f"note: running in PyTorch, not ONNX Runtime ({exc})", file=sys.stderr)
            else:
                args.runtime = "onnx"
                if not args.quiet:
                    print(f"ONNX Runtime: {path}", file=sys.stderr)
                return model, spec, forward
        elif not args.quiet:
            print("note: onnxruntime is not installed: running in PyTorch (slower on a CPU)", file=sys.stderr)
        args.runtime = "torch"
        return model, spec, None
    if args.runtime == "onnx":
        try:
            from ..inference.onnx import OnnxExportError, OnnxModel, OnnxUnavailableError
        except ImportError as exc:  # pragma: no cover - the module itself imports no optional package
            raise UsageError(str(exc)) from None
        try:
            if args.onnx_model is not None:
                model = OnnxModel(args.onnx_model, threads=_ort_threads(args))
                args.precision_used = model.metadata.get("precision", "fp32")
                if args.model and not _same_model(args.model, model.model_name):
                    raise UsageError(
                        f"--onnx-model {args.onnx_model} holds model '{model.model_name}', not --model {args.model}"
                    )
                return model, args.onnx_model, None
            model = load_model(spec, device)
            forward, path = _onnx_forward(args, model, weights)
            if not args.quiet:
                print(f"ONNX Runtime: {path}", file=sys.stderr)
            return model, spec, forward
        except OnnxUnavailableError as exc:
            raise UsageError(str(exc)) from None
        except OnnxExportError as exc:
            raise UsageError(f"cannot run this model in ONNX Runtime: {exc}; use --runtime torch") from None
        except (ValueError, FileNotFoundError) as exc:
            raise UsageError(str(exc)) from None
    return load_model(spec, device), spec, None


def _onnx_forward(args: argparse.Namespace, model, weights=None):
    """The ONNX Runtime forward at --precision, or at the model's default precision (int8 only
    where it was measured to keep the accuracy: :func:`contentiqa.inference.quantize.default_precision`;
    an int8 default that cannot be built falls back to fp32 with a note)."""
    from ..inference.onnx import onnx_forward_for
    from ..inference.quantize import QuantizationError, default_precision

    precision = args.precision or default_precision((model.checkpoint_info or {}).get("path"))
    try:
        found = onnx_forward_for(model, threads=_ort_threads(args), weights_file=weights, precision=precision)
    except QuantizationError as exc:
        if args.precision:  # asked for by name: no quiet fallback
            raise UsageError(f"--precision {args.precision}: {exc}") from None
        if not args.quiet:
            print(f"note: running the fp32 graph ({exc})", file=sys.stderr)
        precision = "fp32"
        found = onnx_forward_for(model, threads=_ort_threads(args), weights_file=weights, precision=precision)
    args.precision_used = precision  # what the result rows record (set only once the graph is there)
    return found


def _same_model(spec: str, name: str) -> bool:
    """Whether --model SPEC can name the model ``name`` of an ONNX file (a checkpoint path
    cannot be checked without loading it, so it is accepted)."""
    from ._model_loading import looks_like_checkpoint

    return looks_like_checkpoint(spec) or spec == name


def run(args: argparse.Namespace) -> int:
    from ..inference.threads import CpuSample
    from ._output import check_writable, output_lock

    # The machine's CPU use is sampled over the start-up work (imports, the folder listing)
    # instead of a wait of its own before the thread plan.
    args.cpu_sample = CpuSample.start() if args.threads is None else None
    fmt = _validate(args)
    output = Path(args.output) if args.output else None
    if output is None:
        return _run(args, fmt, None)
    check_writable(output)  # before any work: a run must not score everything, then fail to write
    with output_lock(output):  # one writer per file: a second run would erase this one's rows
        if output.exists() and not (args.resume or args.force):
            raise UsageError(f"--output {output} exists: pass --resume to finish it, or --force to replace it")
        return _run(args, fmt, output)


def _check_same_model(existing: list[dict], record: dict[str, str], output: Path) -> None:
    """--resume only adds rows of the model that made the file (same weights, byte for byte)."""
    from ..reporting.results import row_ok

    for r in existing:
        if not row_ok(r):
            continue  # failed rows are retried with the current model anyway
        if not r.get("weights_sha256"):
            raise UsageError(
                f"cannot resume {output}: its rows do not say which model scored them (written by an older "
                "contentiqa); score again with --force, or write to another --output"
            )
        if (r.get("model"), r.get("weights_sha256")) == (record["model"], record["weights_sha256"]) and \
                r.get("precision") != record["precision"]:
            was = r.get("precision") or "not recorded (an older contentiqa wrote it)"
            hint = {"fp32": "--precision fp32", "int8": "--precision int8", "bf16": "--autocast bf16",
                    "fp16": "--autocast fp16"}.get(r.get("precision") or "")
            raise UsageError(
                f"cannot resume {output}: its rows were scored in precision {was}, this run is {record['precision']} "
                "(one model's weights in two precisions give slightly different scores); "
                + (f"pass {hint} to match them, " if hint else "")
                + "write to another --output, or --force to start over"
            )
        if (r.get("model"), r.get("weights_sha256")) != (record["model"], record["weights_sha256"]):
            raise UsageError(
                f"cannot resume {output}: it was scored with model {r.get('model')} ({r.get('weights') or '?'}, "
                f"sha256 {str(r.get('weights_sha256'))[:12]}), not {record['model']} ({record['weights']}, "
                f"sha256 {record['weights_sha256'][:12]}); mixing them would make the scores incomparable. "
                "Use that model, another --output, or --force to start over"
            )


def _run(args: argparse.Namespace, fmt: str | None, output: Path | None) -> int:
    from ..inference.engine import predict_items
    from ..reporting.html import make_thumbnail, model_info, read_html_thumbnails, write_html_report
    from ..reporting.results import format_table, model_record, read_results, row_from_prediction, row_ok, sort_rows, write_results
    from ._output import EXIT_NOT_WRITTEN, StopSignals, Stopped, rescue_path

    existing: list[dict] = []
    thumbs: dict[str, bytes] = {}
    if args.resume and output is not None and output.exists():
        try:
            existing = read_results(output)
        except (ValueError, OSError) as exc:
            raise UsageError(f"cannot resume: {exc}") from None
        if fmt == "html":
            try:
                thumbs.update(read_html_thumbnails(output.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                pass

    scan_notes: list[str] = []
    entries = collect_inputs(args.paths, args.recursive, scan_notes)
    if args.shard_spec is not None:
        from ..inference.shard import select_shard

        n_all = len(entries)
        entries = select_shard(entries, *args.shard_spec, key=lambda e: e[0])
        if not args.quiet:
            print(f"shard {args.shard_spec[0]}/{args.shard_spec[1]}: {len(entries)} of {n_all} input(s)", file=sys.stderr)
    for note in scan_notes:
        print(f"note: {note}", file=sys.stderr)
    args.precision_used = None
    args.plan = None
    if args.runtime in ("onnx", "onnx_or_torch"):
        from ..inference.threads import plan_threads

        # Many photos: the compute threads score whole photos side by side (one thread each);
        # a few: each photo's layers split over them (it comes back sooner).
        args.plan = plan_threads(args.threads, images=len(entries), sample=args.cpu_sample)
    model, model_spec, forward = _load_runtime(args)
    autocast, precision = run_precision(args, model, forward)
    if args.max_pixels is not None:
        model.max_pixels = max(1, int(round(args.max_pixels * 1e6)))
    if args.max_side is not None:
        model.max_side = args.max_side or None
    info = model_info(model, model_spec)
    record = model_record(model, model_spec, precision)
    info["weights_sha256"] = record["weights_sha256"]
    info["precision"] = precision
    if existing:
        _check_same_model(existing, record, output)

    # What is already done (resume): scored rows are kept and skipped; failed rows are retried.
    input_keys = {path_key(p) for p, _ in entries}
    done = {path_key(r["path"]) for r in existing if row_ok(r)}
    kept = [r for r in existing if row_ok(r) or path_key(r["path"]) not in input_keys]
    todo = [(k, p, err) for k, (p, err) in enumerate(entries) if path_key(p) not in done]
    new_rows: dict[int, dict] = {}
    for k, p, err in todo:
        if err is not None:
            new_rows[k] = {"path": p, "score": None, "category": None, "category_confidence": None, "error": err,
                           "notes": "", **record}
    to_score = [(k, p) for k, p, err in todo if err is None]

    report_notes: list[str] = []
    if model.max_pixels is not None:
        report_notes.append(f"images over {model.max_pixels / 1e6:g} MP are refused (decompression-bomb guard)")
    if model.native_resolution and model.max_side:
        report_notes.append(f"images with a side over {model.max_side} px are scored downscaled to it (memory bound)")

    def current_rows() -> list[dict]:
        return sort_rows(kept + [new_rows[k] for k in sorted(new_rows)], args.sort)

    stops = StopSignals()
    state = {"since": 0, "last": time.monotonic(), "cost": 0.0, "write_error": None}

    def save(heatmaps: dict[str, bytes] | None = None, extra_notes: list[str] | None = None) -> bool:
        """Rewrite --output (atomically; a signal waits for the write); False if it failed."""
        if output is None:
            return True
        rows = current_rows()
        try:
            with stops.critical():
                if fmt == "html":
                    notes = report_notes + (extra_notes or [])
                    write_html_report(output, rows, info, thumbs, heatmaps, thumbnail_size=args.thumbnail_size, notes=notes)
                else:
                    write_results(output, rows, fmt)
        except OSError as exc:
            if state["write_error"] is None:
                print(f"warning: cannot write {output} ({exc.strerror or exc}); results are kept in memory",
                      file=sys.stderr)
            state["write_error"] = exc
            return False
        state["write_error"] = None
        return True

    def rescue() -> int:
        """--output could not be written: the rows go to a file in the temporary folder."""
        exc = state["write_error"]
        spare = rescue_path(output, fmt)
        try:
            write_results(spare, current_rows(), "jsonl" if fmt == "html" else fmt)
        except OSError as exc2:
            print(f"error: cannot write {output} ({exc.strerror or exc}) nor {spare} ({exc2.strerror or exc2}); "
                  "the results follow on stdout as CSV", file=sys.stderr)
            from ..reporting.results import rows_to_csv

            sys.stdout.write(rows_to_csv(current_rows()))
            return EXIT_NOT_WRITTEN
        print(f"error: cannot write {output} ({exc.strerror or exc}); all {len(current_rows())} result(s) were saved "
              f"to {spare} instead (exit code {EXIT_NOT_WRITTEN}); continue from there with --resume -o {spare}",
              file=sys.stderr)
        return EXIT_NOT_WRITTEN

    def on_result(i: int, pred) -> None:
        new_rows[to_score[i][0]] = {**row_from_prediction(model.clip_to_scale(pred)), **record}
        state["since"] += 1
        now = time.monotonic()
        waited = now - state["last"]
        # Each save rewrites the whole file: once that takes noticeable time (a long run's big
        # table), space the saves so they cost at most ~10 % of the run, not O(n^2) in total.
        spaced = state["cost"] < 0.05 or waited >= min(60.0, 10.0 * state["cost"])
        due = state["since"] >= args.flush_every and spaced and (fmt != "html" or waited >= 30.0)
        if due or waited >= 60.0:
            save()
            done = time.monotonic()
            state["since"], state["last"], state["cost"] = 0, done, done - now

    def on_image(i: int, image) -> None:
        thumbs[to_score[i][1]] = make_thumbnail(image, args.thumbnail_size)

    with stops:
        try:
            if to_score:
                with _torch_threads(args.threads if args.runtime == "torch" else None):
                    predict_items(
                        model,
                        [p for _, p in to_score],
                        batch_size=args.batch_size or default_batch_size(model, args.runtime),
                        progress=not args.quiet,
                        forward=forward,
                        on_result=on_result,
                        on_image=on_image if fmt == "html" else None,
                        return_results=False,
                        autocast=autocast,
                        concurrency=args.plan.runs if args.plan is not None and args.runtime == "onnx" else 1,
                        workers=(default_workers(args.runtime, args.threads, model.device) if args.workers is None
                                 else args.workers),
                    )

            heatmaps: dict[str, bytes] | None = None
            heat_notes: list[str] = []
            if args.explain:
                heatmaps, problems = _heatmaps(model, current_rows(), args.explain_limit, args.thumbnail_size, args.quiet)
                heat_notes.append(
                    f"heatmaps: quality Grad-CAM x spatial attention, for the {len(heatmaps)} best-scored image(s)"
                    f"{'' if args.explain_limit == 0 else f' (limit {args.explain_limit})'}; images over "
                    f"{EXPLAIN_REPORT_MAX_PIXELS / 1e6:g} MP are explained on a downscaled copy"
                )
                heat_notes += problems
            saved = save(heatmaps, heat_notes)
        except (KeyboardInterrupt, Stopped) as exc:
            signum = exc.signum if isinstance(exc, Stopped) else 2
            what = exc.name if isinstance(exc, Stopped) else "SIGINT"
            stops.ignore_further()  # a second Ctrl-C must not cut the save that keeps the results
            if output is None:
                print(f"interrupted ({what})", file=sys.stderr)
            elif save():
                print(f"interrupted ({what}): {len(new_rows)} new result(s) saved in {output}; rerun with --resume "
                      "to finish", file=sys.stderr)
            else:
                rescue()
            return 128 + signum

    rows = current_rows()
    mine = [r for r in rows if path_key(r["path"]) in input_keys]
    failed = [r for r in mine if not row_ok(r)]
    if args.quiet:
        for r in failed:
            print(f"{r['path']}: {r.get('error') or 'no score'}", file=sys.stderr)
    else:
        print(format_table(rows))
        lo, hi = info["score_range"]
        direction = "higher" if info["higher_is_better"] else "lower"
        resumed = len(entries) - len(todo)
        print(
            f"\n{len(mine) - len(failed)} of {len(mine)} input(s) scored, {len(failed)} failed"
            + (f" ({resumed} already in {output}, skipped)" if resumed else "")
            + f"; model {info['name']}" + (f" ({info['checkpoint']})" if info.get("checkpoint") else "")
            + f"; scores on [{lo:g}, {hi:g}], {direction} is better"
        )
        if output is not None and saved:
            print(f"wrote {output}")
    if not saved:
        return rescue()
    return 1 if failed else 0
