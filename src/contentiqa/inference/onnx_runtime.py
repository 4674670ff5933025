"""Scoring with ONNX Runtime alone: no torch imported (seconds of start-up saved).

``contentiqa score PHOTO`` on a CPU runs the model's exported ONNX graph. The graph is cached
per **weights file** (``$CONTENTIQA_CACHE_DIR/onnx/``, see :func:`cache_dir`), named by a hash
of the file's bytes, the export revision, the opset and the precision (``fp32``; room for
others, e.g. an int8-quantized graph), so finding it needs no model and no torch. Everything
needed to turn the graph's outputs into result rows is in its metadata (score range and
direction, categories, mean / std, input size, preprocessing); this module reads it and
scores with numpy and Pillow, giving the rows the torch model gives (tested within 1e-3).

On a cache miss the caller loads the torch model and exports it
(:func:`contentiqa.inference.onnx.cached_session`, which writes the entry this module finds
next time). A cache entry is used only when it loads in ONNX Runtime and its metadata carry
the expected key, so a truncated, corrupt or foreign file is rebuilt, never trusted.

Python, without torch:

    >>> from contentiqa.inference.onnx_runtime import OnnxScorer, cached_scorer
    >>> OnnxScorer.from_file("iqa-cr.onnx").predict("photo.jpg").score   # a `contentiqa export` file
    >>> cached_scorer("my-checkpoint.pt")        # its cached export, or None (export it first)

The key covers the weights file itself. Shipped weights omit the backbone tensors equal to the
pip-installed ImageNet weights (re-created at load time): those come from version-pinned
packages whose files do not change, and a new contentiqa version (in the key) starts a new
entry anyway.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
from PIL import Image

from ..data.imageio import DEFAULT_MAX_PIXELS
from ..utils.io import file_sha256
from ..models.scoring import DEFAULT_MAX_SIDE, Prediction, clip_to_scale, in_memory_checked, predictions_from_outputs, softmax
from .threads import PARALLEL_RUNS_MIN_IMAGES, CpuSample, plan_threads

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


class OnnxUnavailableError(ImportError):
    """onnx / onnxruntime is not installed."""


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise OnnxUnavailableError(
            f"the '{module}' package is needed for ONNX export / the ONNX runtime but is not installed: "
            "pip install onnx onnxruntime  (dependencies of contentiqa: reinstall it to get them)"
        ) from None


# -- sessions ---------------------------------------------------------------------------------
def make_session(path: str | os.PathLike, threads: int | None = None, spinning: bool | None = None):
    """An ONNX Runtime CPU session. ``threads``: intra-op threads (None: the cores really
    free now, :func:`contentiqa.inference.threads.plan_threads`). ``spinning``: let idle pool
    threads spin (None: the plan's choice; off, spinning threads take the time a busy
    machine's other processes, and our image-decoding threads, need)."""
    ort = _require("onnxruntime")
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


def _fallback_cache_dir() -> Path:
    """Where exports go when the cache folder cannot be written (a read-only home or install):
    a per-user folder in the temporary directory."""
    user = os.getuid() if os.name == "posix" else os.environ.get("USERNAME", "user")
    return Path(tempfile.gettempdir()) / f"contentiqa-onnx-{user}"


def cache_places(folder: str | os.PathLike | None = None) -> list[Path]:
    """Where cached exports are looked for and written, in order: ``folder`` (default
    ``cache_dir()/onnx``), then the per-user temporary fallback."""
    return [Path(folder) if folder is not None else cache_dir() / "onnx", _fallback_cache_dir()]


def weights_cache_key(weights_file: str | os.PathLike, opset: int = DEFAULT_OPSET, precision: str = DEFAULT_PRECISION) -> str:
    """The cache key of the graph exported from ``weights_file``: a hash of the file's bytes,
    the export revision, the opset, the precision and the contentiqa version (what changes the
    graph). Computed without torch."""
    from .. import __version__

    head = {"kind": "weights-file", "rev": EXPORT_REVISION, "opset": int(opset), "precision": precision,
            "contentiqa": __version__, "weights_sha256": file_sha256(Path(weights_file))}
    if precision != DEFAULT_PRECISION:  # a quantized graph also depends on its recipe and calibration
        from .quantize import QUANT_REVISION, calibration_path

        cal = calibration_path(weights_file)
        head.update(quant_rev=QUANT_REVISION, calibration_sha256=file_sha256(cal) if cal.is_file() else None)
    return hashlib.sha256(json.dumps(head, sort_keys=True).encode()).hexdigest()


def cache_filename(label: str, key: str, precision: str = DEFAULT_PRECISION) -> str:
    """``<label>-<precision>-<key prefix>.onnx`` (the label only helps a person reading the folder)."""
    label = str(label).replace(os.sep, "_").replace("/", "_") or "model"
    return f"{label}-{precision}-{key[:20]}.onnx"


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
            return session, where / filename
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

    @classmethod
    def parse(cls, meta: dict[str, str], where: str | os.PathLike) -> "OnnxInfo":
        """ValueError (naming ``where``) for a file contentiqa did not export or whose metadata are
        incomplete."""
        from ..data.table import MOSScale

        if meta.get("contentiqa_format") != ONNX_FORMAT:
            raise ValueError(
                f"{where} was not exported by contentiqa (no '{ONNX_FORMAT}' metadata); "
                "export one with `contentiqa export MODEL --format onnx`"
            )
        try:
            scale = MOSScale(float(meta["score_low"]), float(meta["score_high"]), bool(json.loads(meta["higher_is_better"])))
            size = json.loads(meta.get("input_size", "null"))
            info = cls(
                model_name=meta["model_name"],
                scale=scale,
                categories=list(json.loads(meta.get("categories", "[]"))),
                mean=tuple(float(v) for v in json.loads(meta["mean"])),
                std=tuple(float(v) for v in json.loads(meta["std"])),
                native_resolution=bool(json.loads(meta["native_resolution"])),
                input_size=(int(size[0]), int(size[1])) if size else None,
                min_size=int(meta.get("min_size", 32)),
                outputs=list(json.loads(meta.get("outputs", '["score"]'))),
            )
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            raise ValueError(f"{where}: incomplete contentiqa metadata ({exc})") from None
        if not info.native_resolution and info.input_size is None:
            raise ValueError(f"{where}: a fixed-size model without input_size metadata")
        if len(info.mean) != 3 or len(info.std) != 3:
            raise ValueError(f"{where}: mean / std metadata must hold 3 values each")
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


# -- the scorer -----------------------------------------------------------------------------------
class OnnxScorer:
    """A contentiqa model run by ONNX Runtime with numpy pre- and post-processing: no torch.

    It offers what the scoring engine (:func:`contentiqa.inference.engine.predict_items`) and
    ``contentiqa score`` use of a model (``preprocess``, ``results_from_outputs``,
    ``clip_to_scale``, the image limits, scale, categories, ``checkpoint_info``), and is itself
    the forward: ``scorer(batch) -> {"score": (B,), "logits": (B, C)}`` on numpy arrays.
    """

    channels_last_input = False  # the session takes contiguous NCHW
    device = "cpu"
    training = False

    def __init__(self, session: Any, path: str | os.PathLike, *, weights_file: str | os.PathLike | None = None,
                 weights_tag: str | None = None, threads: int | None = None):
        self.session = session
        self.path = Path(path)
        self.threads = threads  # as asked for (None: planned from the free cores)
        self._one_thread_session: Any = None  # made on first use: photos side by side (predict)
        # The machine's CPU use since the last plan (or since now): read by predict() for many
        # photos without a wait of its own when it comes 0.1 s or more later.
        self._cpu_sample = CpuSample.start()
        self.metadata = dict(session.get_modelmeta().custom_metadata_map)
        info = OnnxInfo.parse(self.metadata, self.path)
        self.info = info
        self.model_name = info.model_name
        self.scale = info.scale
        self.categories = list(info.categories)
        self.mean, self.std = info.mean, info.std
        self.native_resolution = info.native_resolution
        self.fixed_input_size = None if info.native_resolution else info.input_size
        self.min_size = info.min_size
        self.max_pixels: int | None = DEFAULT_MAX_PIXELS
        self.max_side: int | None = DEFAULT_MAX_SIDE  # native-resolution models only (as IQAModel)
        self.weights_tag = weights_tag
        # The weights file it stands for (what result rows record), else the ONNX file itself.
        self.checkpoint_info = {"path": str(weights_file if weights_file is not None else self.path)}
        self.input_name = session.get_inputs()[0].name
        self.output_names = [o.name for o in session.get_outputs()]

    @classmethod
    def from_file(cls, path: str | os.PathLike, threads: int | None = None) -> "OnnxScorer":
        """A scorer from a file written by ``contentiqa export`` (its metadata say everything)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model {path} does not exist")
        return cls(make_session(path, threads=threads), path, threads=threads)

    # -- what the engine and the CLI read ------------------------------------------------------
    @property
    def score_range(self) -> tuple[float, float]:
        return (self.scale.low, self.scale.high)

    @property
    def has_content_head(self) -> bool:
        return bool(self.categories) and "logits" in self.output_names

    @property
    def predicts_score(self) -> bool:
        return "score" in self.output_names

    def eval(self) -> "OnnxScorer":
        return self

    def train(self, mode: bool = True) -> "OnnxScorer":
        return self  # nothing to switch: the graph is inference-only

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return preprocess_array(image, self.mean, self.std, self.fixed_input_size)

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return self._run(self.session, x)

    def _run(self, session: Any, x: np.ndarray) -> dict[str, np.ndarray]:
        try:
            outs = session.run(self.output_names, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})
        except Exception as exc:  # onnxruntime's errors are not RuntimeErrors; the engine expects one
            raise RuntimeError(f"onnxruntime: {exc}") from None
        return {n: np.asarray(o) for n, o in zip(self.output_names, outs)}

    def _side_by_side(self, n: int) -> tuple[int, Callable[[np.ndarray], dict[str, np.ndarray]] | None]:
        """(runs, forward) for scoring ``n`` inputs: as `contentiqa score` does, many photos run
        side by side, one thread each, on a one-thread session of the same graph (made once),
        when the thread plan of the free cores says so; else one run on :attr:`session`. Threads
        asked for by name keep their session."""
        if self.threads is not None or n < PARALLEL_RUNS_MIN_IMAGES:
            return 1, None
        plan = plan_threads(images=n, sample=self._cpu_sample)
        self._cpu_sample = CpuSample.start()
        if plan.runs < 2:
            return 1, None
        if self._one_thread_session is None:
            self._one_thread_session = make_session(self.path, threads=1, spinning=False)
        session = self._one_thread_session
        return plan.runs, lambda x: self._run(session, x)

    def results_from_outputs(self, out: dict[str, np.ndarray], paths: Sequence[str | None],
                             notes: Sequence[list[str]]) -> list[Prediction]:
        score = np.asarray(out["score"], dtype=np.float32) if "score" in out else None
        probs = softmax(out["logits"]) if "logits" in out and self.categories else None
        return predictions_from_outputs(self.scale, self.categories, score, probs, paths, notes)

    def clip_to_scale(self, pred: Prediction) -> Prediction:
        return clip_to_scale(pred, self.scale)

    def predict(self, inputs: Any, batch_size: int = 1, progress: bool = False) -> list[Prediction] | Prediction:
        """Score one input or many (paths, PIL images, arrays, tensors), like ``IQAModel.predict``:
        an N x 3 x H x W tensor is N photos (a list of N Predictions, one for a 1 x 3 x H x W)."""
        from .engine import predict_items

        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
        torch = sys.modules.get("torch")  # a tensor exists only once torch is imported: never import it here
        if torch is not None and isinstance(inputs, torch.Tensor) and inputs.ndim == 4:
            inputs = list(inputs)
        single = not isinstance(inputs, (list, tuple))
        items = [in_memory_checked(self, it) for it in ([inputs] if single else list(inputs))]  # type: ignore[arg-type]
        runs, forward = self._side_by_side(len(items))
        results = predict_items(self, items, batch_size=int(batch_size), progress=progress,  # type: ignore[arg-type]
                                forward=forward, concurrency=runs)
        return results[0] if single else results


def cached_scorer(weights_file: str | os.PathLike, *, threads: int | None = None, weights_tag: str | None = None,
                  precision: str = DEFAULT_PRECISION, opset: int = DEFAULT_OPSET,
                  folder: str | os.PathLike | None = None) -> OnnxScorer | None:
    """The scorer of ``weights_file``'s cached export, or None when the cache has none (or only
    a damaged one): then load the torch model and export it
    (:func:`contentiqa.inference.onnx.cached_session` with ``weights_file``). Raises
    :class:`OnnxUnavailableError` without onnxruntime."""
    _require("onnxruntime")
    weights_file = Path(weights_file)
    key = weights_cache_key(weights_file, opset, precision)
    found = find_cached(cache_filename(weights_file.stem, key, precision), key, threads, folder)
    if found is None:
        return None
    session, path = found
    try:
        return OnnxScorer(session, path, weights_file=weights_file, weights_tag=weights_tag, threads=threads)
    except ValueError:  # metadata our export always writes are missing: treat as damaged
        return None
