"""Scoring with ONNX Runtime alone: no torch imported (seconds of start-up saved).

``contentiqa score PHOTO`` on a CPU runs the model's ONNX graph. Where the graph of a weights
file is looked for, in order (:func:`find_graph`):

1. **shipped** beside the weights, ``<weights stem>.onnx`` / ``<stem>.int8.onnx``: every shipped
   tag's graph at its default precision is in the package (``tools/build_graphs.py`` makes them),
   so a fresh install scores without torch;
2. the **export cache** (``$CONTENTIQA_CACHE_DIR/onnx/``, see :func:`cache_dir`), named by a
   hash of the weights file's bytes, the export revision, the opset and the precision.

Either is used only when it loads in ONNX Runtime and its metadata carry the expected key
(:func:`weights_cache_key` of that very weights file), so a truncated, corrupt, foreign or stale
file (weights replaced, graph not rebuilt) is passed over, never trusted. Everything needed to
turn the graph's outputs into result rows is in its metadata (score range and direction,
categories, mean / std, input size, preprocessing); this module reads it and scores with numpy
and Pillow, giving the rows the torch model gives (tested within 1e-3). When neither exists,
:func:`contentiqa.inference.scorer.load_scorer` exports the model (PyTorch) into the cache.

A cache key covers the weights file itself and the contentiqa version: shipped weights omit the
backbone tensors equal to the pip-installed ImageNet weights (re-created at load time), which
come from version-pinned packages. A shipped graph's key leaves the version out (it is rebuilt
with the weights, and tests/test_shipped_graphs.py checks it against PyTorch).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import tempfile
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from ..data.imageio import DEFAULT_MAX_PIXELS
from ..models.scoring import DEFAULT_MAX_SIDE, Prediction, predictions_from_outputs, softmax
from ..utils.disk_cache import touch
from ..utils.extras import ExtraMissing
from ..utils.io import atomic_write, file_sha256
from .scorer import BaseScorer, ScorerIdentity
from .threads import PARALLEL_RUNS_MIN_IMAGES, CpuSample, ThreadPlan, plan_threads, runs_within_memory

if TYPE_CHECKING:
    from ..data.table import MOSScale

ONNX_FORMAT = "contentiqa-onnx/1"
DEFAULT_OPSET = 17
INPUT_NAME = "image"
EXPORT_REVISION = "2"  # 2: TF-"same" convolutions as Conv(auto_pad=SAME_UPPER). Bump when the exported graph changes, to refresh cached exports
DEFAULT_PRECISION = "fp32"
"""The plain export. Other precisions (e.g. ``int8``, a quantized graph) are cached beside it
under their own key and file name."""

FINGERPRINT_KEY = "contentiqa_fingerprint"
"""Metadata key of a cached export: the cache key it was made under (:func:`weights_cache_key`
for a weights file, :func:`contentiqa.inference.onnx.model_fingerprint` for a model in
memory). An entry is used only when it loads and carries the expected key."""


class OnnxExportError(RuntimeError):
    """The model (or part of it) cannot be exported to ONNX; the message says why."""


def require_onnxruntime():
    """The ``onnxruntime`` module; :class:`~contentiqa.utils.extras.ExtraMissing` without it (a
    core dependency: only a broken install lacks it)."""
    try:
        import onnxruntime
    except ImportError as exc:
        if isinstance(exc.__context__, KeyboardInterrupt):  # Ctrl-C while its native part loads
            raise exc.__context__ from None
        if isinstance(exc, ModuleNotFoundError) and exc.name == "onnxruntime":
            raise ExtraMissing("the ONNX Runtime needs the 'onnxruntime' package", extra="") from None
        raise ExtraMissing(f"the ONNX Runtime needs a working 'onnxruntime' package (importing it failed: {exc})",
                           extra="") from None
    return onnxruntime


# -- sessions ---------------------------------------------------------------------------------
def make_session(path: str | os.PathLike, threads: int | None = None, spinning: bool | None = None):
    """An ONNX Runtime CPU session. ``threads``: intra-op threads (None: the cores really
    free now, :func:`contentiqa.inference.threads.plan_threads`). ``spinning``: let idle pool
    threads spin (None: the plan's choice; off, spinning threads take the time a busy
    machine's other processes, and our image-decoding threads, need)."""
    ort = require_onnxruntime()
    if threads is None or spinning is None:
        from .threads import plan_threads

        plan = plan_threads(threads)
        threads = plan.threads
        spinning = plan.spinning if spinning is None else spinning
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1
    so.intra_op_num_threads = int(threads)
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    # Native-resolution inputs come in many shapes: a memory plan cached per shape would grow
    # with every new photo size, so plan each run afresh (measured: no speed difference).
    so.enable_mem_pattern = False
    try:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ValueError(f"{path}: cannot load as an ONNX model ({type(exc).__name__}: {exc})") from None


def read_metadata(path_or_session: Any) -> dict[str, str]:
    """The metadata_props of an ONNX file (or of a session)."""
    session = path_or_session
    if isinstance(path_or_session, (str, os.PathLike)):
        path = Path(path_or_session)
        if path.is_dir():
            raise ValueError(f"ONNX model {path} is a folder, not a model file")
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model {path} does not exist")
        session = make_session(path, threads=1)
    return dict(session.get_modelmeta().custom_metadata_map)


# -- the export cache ---------------------------------------------------------------------------
def cache_dir() -> Path:
    """``$CONTENTIQA_CACHE_DIR`` or ``$XDG_CACHE_HOME/contentiqa`` (``~/.cache/contentiqa``)."""
    env = os.environ.get("CONTENTIQA_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "contentiqa"


def _fallback_cache_dir(create: bool = False) -> Path | None:
    """Where exports go when the cache folder cannot be written (a read-only home or install):
    a per-user folder in the temporary directory, made private (``create``). None when it does
    not exist, or when that name is anything but a folder of this user's that no one else can
    write: in a shared /tmp another user could have made it first, to have this user's scores
    read their graphs, or this user's exports follow their links."""
    user = os.getuid() if os.name == "posix" else os.environ.get("USERNAME", "user")
    path = Path(tempfile.gettempdir()) / f"contentiqa-onnx-{user}"
    if create:
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            pass
        except OSError:
            return None
    try:
        st = os.lstat(path)
    except OSError:
        return None
    why = ("it is not a folder" if not stat.S_ISDIR(st.st_mode)  # a link, or a file
           else "it belongs to another user" if os.name == "posix" and st.st_uid != os.getuid()
           else "others can write to it" if os.name == "posix" and st.st_mode & 0o022 else None)
    if why is not None:  # said, so that a fallback an older version made (0775) does not vanish unexplained
        warnings.warn(f"{path} is not used for ONNX exports: {why}, so its graphs cannot be trusted; remove it "
                      "(it is made again, private) or, if it is yours, `chmod 700` it", stacklevel=2)
        return None
    return path


def cache_places(folder: str | os.PathLike | None = None) -> list[Path]:
    """Where cached exports are looked for, in order: ``folder`` (default ``cache_dir()/onnx``),
    then the per-user temporary fallback when it exists and is safe to use."""
    fallback = _fallback_cache_dir()
    return [Path(folder) if folder is not None else cache_dir() / "onnx"] + ([fallback] if fallback is not None else [])


def write_places(folder: str | os.PathLike | None = None) -> Iterator[Path]:
    """Where a graph is written, in order: the cache folder, then (made, private, only when the
    folder could not take it) the per-user temporary fallback."""
    yield cache_places(folder)[0]
    fallback = _fallback_cache_dir(create=True)
    if fallback is not None:
        yield fallback


def weights_cache_key(weights_file: str | os.PathLike, opset: int = DEFAULT_OPSET, precision: str = DEFAULT_PRECISION,
                      *, versioned: bool = True, sha256: str | None = None) -> str:
    """The key of the graph exported from ``weights_file``: a hash of the file's bytes, the
    export revision, the opset, the precision and (``versioned``: cache entries) the contentiqa
    version: what changes the graph. Computed without torch. ``sha256``: of the bytes the graph
    is (or was) made from, when already known (default: the file's now)."""
    from .. import __version__

    head = {"kind": "weights-file", "rev": EXPORT_REVISION, "opset": int(opset), "precision": precision,
            "weights_sha256": sha256 or file_sha256(Path(weights_file))}
    if versioned:
        head["contentiqa"] = __version__
    if precision != DEFAULT_PRECISION:  # a quantized graph also depends on its recipe and calibration
        from .quantize import calibration_fingerprint

        head.update(calibration_fingerprint(weights_file))
    return hashlib.sha256(json.dumps(head, sort_keys=True).encode()).hexdigest()


def cache_filename(label: str, key: str, precision: str = DEFAULT_PRECISION) -> str:
    """``<label>-<precision>-<key prefix>.onnx`` (the label only helps a person reading the folder)."""
    label = str(label).replace(os.sep, "_").replace("/", "_") or "model"
    return f"{label}-{precision}-{key[:20]}.onnx"


def _file_state(path: Path) -> tuple[int, int, int] | None:
    """What tells a file from its replacement: device, inode and size (None: gone). Not its time:
    using a cached graph marks it used (a touch), and a new export replaces the file (a new inode)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size


def open_cached(path: Path, key: str, threads: int | None = None):
    """A session on ``path`` when it is a complete contentiqa export made under ``key``, else
    None (missing, truncated, not ONNX, or another model's export)."""
    if not path.is_file():
        return None
    try:
        session = make_session(path, threads=threads)
    except ValueError:  # truncated / not ONNX: onnxruntime refuses to parse it
        return None
    meta = session.get_modelmeta().custom_metadata_map
    if meta.get("contentiqa_format") != ONNX_FORMAT or meta.get(FINGERPRINT_KEY) != key:
        return None
    return session


def find_cached(filename: str, key: str, threads: int | None = None,
                folder: str | os.PathLike | None = None) -> tuple[Any, Path] | None:
    """``(session, path)`` of a usable cache entry in any of :func:`cache_places`, or None."""
    for where in cache_places(folder):
        session = open_cached(where / filename, key, threads)
        if session is not None:
            touch(where / filename)  # used now: what `contentiqa cache --max-size` goes by
            return session, where / filename
    return None


class CacheUnwritable(OSError):
    """No place of the export cache (:func:`write_places`) could take a graph (read-only, full)."""

    def __init__(self, places: list[Path], error: OSError):
        self.places, self.error = places, error
        super().__init__(f"no export cache folder could take the graph ({', '.join(map(str, places))}): "
                         f"{error.strerror or error}")


def write_cache_entry(weights_file: str | os.PathLike, precision: str, write: Callable[[Path, str], Any],
                      opset: int = DEFAULT_OPSET, folder: str | os.PathLike | None = None) -> Path:
    """``write(path, key)`` the cache entry of ``weights_file``'s graph at ``precision`` in the
    first of :func:`write_places` that can be written (a read-only cache falls back to the
    temporary folder); returns its path."""
    weights_file = Path(weights_file)
    key = weights_cache_key(weights_file, opset, precision)
    return write_into_cache(cache_filename(weights_file.stem, key, precision), key, write, folder)


def write_into_cache(filename: str, key: str, write: Callable[[Path, str], Any],
                     folder: str | os.PathLike | None = None) -> Path:
    """``write(path, key)`` the entry ``filename`` into the first of :func:`write_places` that
    takes it; returns its path. :class:`CacheUnwritable` when none does."""
    error: OSError | None = None
    tried: list[Path] = []
    for where in write_places(folder):
        tried.append(where)
        try:
            # written beside, then renamed onto the entry's own name: a link planted under that
            # predictable name (a shared cache) is replaced, never written through
            atomic_write(where / filename, lambda tmp: write(Path(tmp), key), follow_links=False)
        except OSError as exc:  # read-only (or full) folder: try the next
            error = exc
            continue
        return where / filename
    assert error is not None
    raise CacheUnwritable(tried, error)


def shipped_graph_path(weights_file: str | os.PathLike, precision: str = DEFAULT_PRECISION) -> Path:
    """Where the graph of ``weights_file`` is shipped: beside it, ``<stem>.onnx`` (fp32) or
    ``<stem>.<precision>.onnx``."""
    weights_file = Path(weights_file)
    suffix = ".onnx" if precision == DEFAULT_PRECISION else f".{precision}.onnx"
    return weights_file.with_name(weights_file.stem + suffix)


def graph_places(weights_file: str | os.PathLike, precision: str = DEFAULT_PRECISION, opset: int = DEFAULT_OPSET,
                 folder: str | os.PathLike | None = None, *, sha256: str | None = None) -> list[tuple[Path, str]]:
    """``(path, key)`` of every place the graph of ``weights_file`` may be, in the order they
    are tried: shipped beside the weights, then the export cache (:func:`cache_places`)."""
    weights_file = Path(weights_file)
    sha256 = sha256 or file_sha256(weights_file)  # one reading for every key
    shipped = shipped_graph_path(weights_file, precision)
    places = [(shipped, weights_cache_key(weights_file, opset, precision, versioned=False, sha256=sha256))] \
        if shipped.is_file() else []
    key = weights_cache_key(weights_file, opset, precision, sha256=sha256)
    filename = cache_filename(weights_file.stem, key, precision)
    return places + [(where / filename, key) for where in cache_places(folder)]


def find_graph_file(weights_file: str | os.PathLike, precision: str = DEFAULT_PRECISION,
                    folder: str | os.PathLike | None = None) -> Path | None:
    """The first usable graph of ``weights_file`` (see :func:`graph_places`), or None."""
    for path, key in graph_places(weights_file, precision, folder=folder):
        if open_cached(path, key, threads=1) is not None:
            _mark_used(path, weights_file, precision)
            return path
    return None


def _mark_used(path: Path, weights_file: str | os.PathLike, precision: str) -> None:
    """A cache entry found is used now (what `contentiqa cache --max-size` / `--older-than` go by:
    least recently used first); a shipped graph is no cache entry."""
    if path != shipped_graph_path(Path(weights_file), precision):
        touch(path)


def find_graph(weights_file: str | os.PathLike, *, precision: str = DEFAULT_PRECISION, tag: str | None = None,
               threads: int | None = None, images: int | None = None, cpu_sample: CpuSample | None = None,
               spec: str = "", folder: str | os.PathLike | None = None) -> "OnnxScorer | None":
    """The scorer of the first usable graph of ``weights_file`` (shipped, then cached), with the
    thread plan for ``images`` inputs; None when there is none (then export it:
    :func:`contentiqa.inference.onnx.export_to_cache`)."""
    require_onnxruntime()
    plan = plan_threads(threads, images=images, sample=cpu_sample)
    sha256 = file_sha256(Path(weights_file))  # the graph found is this content's, and the rows say so
    for path, key in graph_places(weights_file, precision, folder=folder, sha256=sha256):
        session = open_cached(path, key, plan.threads)
        if session is None:
            continue
        try:
            scorer = OnnxScorer(session, path, plan=plan, threads=threads, images=images, weights=Path(weights_file),
                                tag=tag, spec=spec, weights_sha256=sha256)
        except ValueError:  # metadata our export always writes are missing: treat as damaged
            continue
        _mark_used(path, weights_file, precision)
        return scorer
    return None


# -- what the metadata say ------------------------------------------------------------------------
@dataclass(frozen=True)
class OnnxInfo:
    """An export's metadata, parsed: all that scoring needs besides the graph."""

    model_name: str
    scale: "MOSScale"
    categories: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    native_resolution: bool
    input_size: tuple[int, int] | None
    min_size: int
    outputs: list[str]
    precision: str = DEFAULT_PRECISION

    @classmethod
    def parse(cls, meta: dict[str, str], where: str | os.PathLike) -> "OnnxInfo":
        """ValueError (naming ``where``) for a file contentiqa did not export or whose metadata are
        incomplete."""
        from ..data.table import MOSScale

        said = meta.get("contentiqa_format")
        if said != ONNX_FORMAT and str(said).startswith(ONNX_FORMAT.rsplit("/", 1)[0] + "/"):
            from .. import __version__

            raise ValueError(f"{where} is in format {said} (contentiqa {meta.get('contentiqa_version', '?')} exported "
                             f"it); this contentiqa ({__version__}) reads {ONNX_FORMAT}: upgrade contentiqa, or export "
                             "the model again with this one")
        if said != ONNX_FORMAT:
            raise ValueError(
                f"{where} was not exported by contentiqa (no '{ONNX_FORMAT}' metadata); "
                "export one with `contentiqa export MODEL --format onnx`"
            )
        from .quantize import PRECISIONS

        def typed(key: str, kind: type | tuple[type, ...], default: str | None = None) -> Any:
            # JSON of the expected type: bool("false") is True, list("abc") three categories
            value = json.loads(meta[key] if default is None else meta.get(key, default))
            if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
                raise ValueError(f"{key} is {meta.get(key)!r}")
            return value

        def strings(key: str, default: str) -> list[str]:
            value = typed(key, list, default)
            if not all(isinstance(v, str) for v in value):
                raise ValueError(f"{key} is {meta.get(key)!r}, not a list of names")
            return value

        def numbers(key: str) -> tuple[float, ...]:
            value = tuple(float(v) for v in typed(key, list))
            if len(value) != 3 or not all(math.isfinite(v) for v in value):
                raise ValueError(f"{key} is {meta[key]!r}, not 3 finite values")
            return value

        try:
            scale = MOSScale(float(meta["score_low"]), float(meta["score_high"]), typed("higher_is_better", bool))
            if not (math.isfinite(scale.low) and math.isfinite(scale.high) and scale.low < scale.high):
                raise ValueError(f"the score range {meta['score_low']}..{meta['score_high']} is not a range")
            size = typed("input_size", (list, type(None)), "null")
            info = cls(
                model_name=meta["model_name"],
                scale=scale,
                categories=strings("categories", "[]"),
                mean=numbers("mean"),
                std=numbers("std"),
                native_resolution=typed("native_resolution", bool),
                input_size=(int(size[0]), int(size[1])) if size else None,
                min_size=int(meta.get("min_size", 32)),
                outputs=strings("outputs", '["score"]'),
                precision=meta.get("precision", DEFAULT_PRECISION),
            )
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            raise ValueError(f"{where}: incomplete contentiqa metadata ({exc})") from None
        if not info.native_resolution and info.input_size is None:
            raise ValueError(f"{where}: a fixed-size model without input_size metadata")
        if 0.0 in info.std:
            raise ValueError(f"{where}: std metadata {list(info.std)} divides by zero")
        if info.precision not in PRECISIONS:
            raise ValueError(f"{where}: precision metadata {info.precision!r} is none of {', '.join(PRECISIONS)}")
        return info


def preprocess_array(image: Image.Image, mean: Sequence[float], std: Sequence[float],
                     input_size: tuple[int, int] | None = None) -> np.ndarray:
    """An 8-bit RGB PIL image -> the normalised float32 (3, H, W) array the graph takes.

    ``input_size`` (H, W): first a bilinear resize to it (what fixed-size models' ``preprocess``
    does). The arithmetic is :func:`contentiqa.models.base.pil_to_tensor`'s, step for step
    (float32 multiply, then float32 add, of the same constants), so the values are equal to
    the last bit. The result is contiguous (3, H, W), what ONNX Runtime takes, written channel
    by channel from the 8-bit pixels in one pass each: no float HWC image to convert, then copy
    to CHW (a one-off timing on this project's CPU: 1.4 against 3.4 ms at 384 px)."""
    if input_size is not None:
        h, w = input_size
        image = image.resize((int(w), int(h)), Image.BILINEAR)
    arr = np.asarray(image, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB image, got an array of shape {arr.shape}")
    scale = np.array([1.0 / (255.0 * s) for s in std], dtype=np.float32)
    shift = np.array([-m / s for m, s in zip(mean, std)], dtype=np.float32)
    x = np.empty((3, arr.shape[0], arr.shape[1]), dtype=np.float32)
    for c in range(3):
        np.multiply(arr[..., c], scale[c], out=x[c])  # uint8 -> float32, then the float32 multiply
        x[c] += shift[c]
    return x


def _check_outputs(session: Any, info: OnnxInfo, where: Path) -> None:
    """ValueError (naming ``where``) for a graph whose outputs are not those its metadata name,
    or that gives neither a score nor categories: such a file would fail every photo later, or
    score them from an output that means something else."""
    names = {o.name for o in session.get_outputs()}
    missing = [n for n in info.outputs if n not in names]
    if missing or not names & {"score", "logits"}:
        raise ValueError(f"{where}: its metadata name the outputs {info.outputs}, but the graph gives "
                         f"{sorted(names)}; export the model again with `contentiqa export`")
    if "logits" in names and not info.categories:
        raise ValueError(f"{where}: the graph gives category logits but its metadata name no categories")
    # the shapes the graph declares against what its metadata say (a hand-edited field scored
    # every photo wrong, or failed each one with onnxruntime's words)
    logits = next((o.shape for o in session.get_outputs() if o.name == "logits"), None)
    if logits and isinstance(logits[-1], int) and logits[-1] != len(info.categories):
        raise ValueError(f"{where}: the graph gives {logits[-1]} category logits, but its metadata name "
                         f"{len(info.categories)} categories")
    dims = session.get_inputs()[0].shape[-2:]
    fixed = tuple(d for d in dims if isinstance(d, int))
    if info.native_resolution and fixed:
        raise ValueError(f"{where}: its metadata say it takes photos at their own size, but the graph's input is "
                         f"fixed at {dims}")
    if not info.native_resolution and len(fixed) == 2 and fixed != info.input_size:
        raise ValueError(f"{where}: its metadata say input_size {list(info.input_size or ())}, but the graph takes "
                         f"{list(fixed)}")


# -- the scorer ---------------------------------------------------------------------------------
class OnnxScorer(BaseScorer):
    """A contentiqa model run by ONNX Runtime with numpy pre- and post-processing: no torch.

    The :class:`~contentiqa.inference.scorer.Scorer` of a graph whose metadata say everything
    (``contentiqa export`` files, shipped and cached graphs). Threads: the plan made for the
    first run (``images``) sets the session's; later runs of many photos are planned again from
    the cores free then, side by side on a one-thread session of the same graph when that is
    faster (threads asked for by name: that many runs)."""

    def __init__(self, session: Any, path: str | os.PathLike, *, plan: ThreadPlan | None = None,
                 threads: int | None = None, images: int | None = None, weights: Path | None = None,
                 tag: str | None = None, spec: str = "", weights_sha256: str | None = None):
        self.session = session
        self.path = Path(path)
        self.threads = threads  # as asked for (None: planned from the free cores)
        self.session_threads = plan.threads if plan is not None else threads
        # The plan made at load for the first run (from the command's own CPU sample), when it
        # was made for many photos; later runs plan again from the CPU use since.
        self._pending_plan = plan if plan is not None and (images or 0) >= PARALLEL_RUNS_MIN_IMAGES else None
        self._one_thread_session: Any = None  # made on first use: photos side by side
        self._file_state = _file_state(self.path)  # that session must read the file this one read
        self._cpu_sample = CpuSample.start()
        self.metadata = dict(session.get_modelmeta().custom_metadata_map)
        info = OnnxInfo.parse(self.metadata, self.path)
        self.info = info
        self.model_name = info.model_name
        self.scale = info.scale
        self.categories = list(info.categories)
        self.mean, self.std = info.mean, info.std
        self._native = info.native_resolution
        self.fixed_input_size = None if info.native_resolution else info.input_size
        self.min_size = info.min_size
        self.max_pixels: int | None = DEFAULT_MAX_PIXELS
        self.max_side: int | None = DEFAULT_MAX_SIDE  # native-resolution models only (memory bound)
        self._weights = weights
        self._weights_sha256 = weights_sha256
        self._tag = tag
        self._spec = spec or str(self.path)
        self.input_name = session.get_inputs()[0].name
        self.output_names = [o.name for o in session.get_outputs()]
        _check_outputs(session, info, self.path)

    @classmethod
    def from_file(cls, path: str | os.PathLike, threads: int | None = None, *, images: int | None = None,
                  cpu_sample: CpuSample | None = None, spec: str = "") -> "OnnxScorer":
        """A scorer from a file written by ``contentiqa export`` (its metadata say everything).
        FileNotFoundError / ValueError (naming the file) for a missing or foreign file."""
        path = Path(path)
        if path.is_dir():
            raise ValueError(f"ONNX model {path} is a folder, not a model file")
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model {path} does not exist")
        plan = plan_threads(threads, images=images, sample=cpu_sample)
        return cls(make_session(path, threads=plan.threads), path, plan=plan, threads=threads, images=images,
                   spec=spec)

    @cached_property
    def identity(self) -> ScorerIdentity:
        return ScorerIdentity(name=self.model_name, tag=self._tag, weights=self._weights or self.path, runtime="onnx",
                              precision=self.info.precision, spec=self._spec, graph=self.path,
                              known_sha256=self._weights_sha256 if self._weights is not None else None)

    # -- what the engine reads -------------------------------------------------------------------
    @property
    def native_resolution(self) -> bool:
        return self._native

    @property
    def has_content_head(self) -> bool:
        return bool(self.categories) and "logits" in self.output_names

    @property
    def predicts_score(self) -> bool:
        return "score" in self.output_names

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return preprocess_array(image, self.mean, self.std, self.fixed_input_size)

    def collate(self, inputs: list[np.ndarray]) -> np.ndarray:
        """Contiguous NCHW, what the session takes (one image: a view, no copy)."""
        return inputs[0][None] if len(inputs) == 1 else np.stack(inputs)

    def forward(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return self._run(self.session, x)

    def _run(self, session: Any, x: np.ndarray) -> dict[str, np.ndarray]:
        try:
            outs = session.run(self.output_names, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})
        except Exception as exc:  # onnxruntime's errors are not RuntimeErrors; the engine expects one
            raise RuntimeError(f"onnxruntime: {exc}") from None
        out = {n: np.asarray(o) for n, o in zip(self.output_names, outs)}
        expected = {"score": (len(x),), "logits": (len(x), len(self.categories))}
        for name, shape in expected.items():
            if name in out and out[name].shape != shape:  # a graph whose metadata promise another model
                raise RuntimeError(f"{self.path}: the graph's {name!r} output has shape {tuple(out[name].shape)} "
                                   f"for {len(x)} photo(s), not {shape}")
        return out

    def _forward_for(self, n: int) -> tuple[int, Callable[[np.ndarray], dict[str, np.ndarray]]]:
        """As `contentiqa score` does: many photos run side by side, one thread each, when the
        thread plan of the free cores says so (on the session itself when it has one thread,
        else on a one-thread session of the same graph, made once); a few split over the
        session's threads."""
        if n < PARALLEL_RUNS_MIN_IMAGES:
            return 1, self.forward
        plan = self._pending_plan or plan_threads(self.threads, images=n, sample=self._cpu_sample)
        self._pending_plan = None
        self._cpu_sample = CpuSample.start()
        runs = runs_within_memory(plan.runs, self.max_side) if self.native_resolution else plan.runs
        if runs < 2:
            return 1, self.forward
        if self.session_threads == 1:
            return runs, self.forward
        if self._one_thread_session is None:
            if _file_state(self.path) != self._file_state:
                # gone since load (a cache pruned) or replaced (exported again to the same path):
                # the session held runs, never another model's graph under this one's metadata
                return 1, self.forward
            try:
                self._one_thread_session = make_session(self.path, threads=1, spinning=False)
            except ValueError:
                return 1, self.forward
        session = self._one_thread_session
        return runs, lambda x: self._run(session, x)

    def results_from_outputs(self, out: dict[str, np.ndarray], paths: Sequence[str | None],
                             notes: Sequence[list[str]]) -> list[Prediction]:
        score = np.asarray(out["score"], dtype=np.float32) if "score" in out else None
        probs = softmax(out["logits"]) if "logits" in out and self.categories else None
        return predictions_from_outputs(self.scale, self.categories, score, probs, paths, notes)
