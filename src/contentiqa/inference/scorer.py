"""The scoring layer: one way to get a model's scorer, whichever runtime runs it.

    >>> import contentiqa
    >>> scorer = contentiqa.load_scorer()                 # the default model, its shipped weights
    >>> scorer.predict("photo.jpg").score
    >>> scorer.predict(["a.jpg", "b.png"])                # 8 or more: side by side on the free cores
    >>> scorer.identity                                   # name, tag, weights + sha256, runtime, precision

:func:`load_scorer` is the only place that decides, for ``contentiqa score``, ``serve``, and the
Python API alike:

- what a spec names (a registered ``name[.tag]``, a checkpoint or an ONNX file:
  :func:`contentiqa.models.registry.parse_spec`);
- the runtime: ONNX Runtime on the CPU (``auto``; faster, and no torch once a graph exists),
  PyTorch on a GPU, for ``--runtime torch`` and where a model cannot be exported;
- where the graph comes from: shipped inside the package (every shipped tag, at its default
  precision), the export cache, or an export made now (that one needs PyTorch);
- the precision: the model's measured choice of fp32 / int8 graph, or bf16 / fp16 autocast on a GPU;
- the thread plan (ONNX Runtime: the cores free now, photos side by side when there are many).

Both runtimes are a :class:`Scorer` and score through the one engine
(:class:`contentiqa.inference.engine.Engine`); ``create_model(...).predict`` runs the PyTorch
scorer of a model already in memory.
"""
from __future__ import annotations

import numbers
import os
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np

from ..models.scoring import OnScale, Prediction, clip_to_scale, in_memory_checked
from ..utils.devices import is_cpu, resolve_device
from ..utils.extras import ExtraMissing, have
from .engine import DEFAULT_MAX_BATCH_PIXELS, Engine

if TYPE_CHECKING:
    from ..data.table import MOSScale
    from .threads import CpuSample
    from ..models.base import IQAModel

RUNTIMES = ("auto", "onnx", "torch")
PRECISIONS = ("fp32", "int8", "bf16", "fp16")
"""``fp32`` / ``int8``: the ONNX Runtime graph; ``bf16`` / ``fp16``: PyTorch under autocast
(``fp32`` there: no autocast)."""
TORCH_PRECISIONS = ("fp32", "bf16", "fp16")
RUNTIME_NAMES = {"onnx": "ONNX Runtime", "torch": "PyTorch"}


@dataclass(frozen=True)
class ScorerIdentity:
    """Which model gave a score, exactly: what result rows and the service record."""

    name: str
    """The model's registered name (``ie-iqa``), or the one an ONNX file's metadata give."""
    tag: str | None
    """The shipped weights' tag (``clive-biq2021``); None for a checkpoint or ONNX file."""
    weights: Path | None
    """The file the weights come from: shipped weights, a checkpoint, or the ONNX file run alone
    (None: a model built in memory)."""
    runtime: str
    """``onnx`` or ``torch``."""
    precision: str
    """One of :data:`PRECISIONS`."""
    spec: str = ""
    """What was asked for (a name, ``name.tag`` or a path)."""
    graph: Path | None = None
    """ONNX Runtime: the graph file run."""

    @property
    def label(self) -> str:
        """What computed the scores, for people (a figure's title): "ONNX Runtime int8", "PyTorch bf16"."""
        return f"{RUNTIME_NAMES[self.runtime]} {self.precision}"

    known_sha256: str | None = None
    """SHA-256 of the bytes the weights were read from, when the runtime knows it (then
    :attr:`sha256` is that, even if the file has been replaced since)."""

    @cached_property
    def sha256(self) -> str | None:
        """SHA-256 of :attr:`weights` (None without a file)."""
        from ..utils.io import file_sha256

        if self.known_sha256 is not None:
            return self.known_sha256
        if self.weights is None or not self.weights.is_file():
            return None
        return file_sha256(self.weights)


@runtime_checkable
class Scorer(Protocol):
    """A model ready to score photos, whichever runtime runs it (:func:`load_scorer`).

    ``predict`` is what a user calls; ``run`` is the engine under it, with the options a long
    command needs (results as they come, report thumbnails, decoding threads)."""

    identity: ScorerIdentity
    scale: MOSScale
    categories: list[str]
    max_pixels: int | None
    max_side: int | None
    min_size: int

    @property
    def native_resolution(self) -> bool: ...

    @property
    def score_range(self) -> tuple[float, float]: ...

    @property
    def higher_is_better(self) -> bool: ...

    @property
    def has_content_head(self) -> bool: ...

    @property
    def predicts_score(self) -> bool: ...

    def preprocess(self, image: Any) -> Any: ...

    def clip_to_scale(self, pred: Prediction) -> Prediction: ...

    def default_batch_size(self) -> int:
        """Images per forward pass when none is asked for (the runtime's measured choice)."""
        ...

    def default_workers(self) -> int:
        """Decoding threads beside the model when none are asked for."""
        ...

    def max_batch_pixels(self) -> int | None:
        """A batch is run once its images hold this many pixels, whatever the batch size."""
        ...

    def predict(self, inputs: Any, batch_size: int | None = None, progress: bool = False) -> Prediction | list[Prediction]: ...

    def run(self, items: Sequence[Any], *, on_result: Callable[[int, Prediction], None] | None = None,
            on_image: Callable[[int, Any], None] | None = None, progress: bool = False, return_results: bool = True,
            batch_size: int | None = None, workers: int | None = None,
            concurrency: int | None = None) -> list[Prediction] | None: ...


class BaseScorer(OnScale):
    """What both runtimes share: :meth:`predict` and :meth:`run` through the one engine. A
    runtime fills in the steps (``preprocess``, ``collate``, ``results_from_outputs``), how many
    batches may run at once (:meth:`_forward_for`) and its defaults."""

    identity: ScorerIdentity
    scale: MOSScale
    categories: list[str]
    max_pixels: int | None
    max_side: int | None
    min_size: int

    # -- what a runtime fills in -------------------------------------------------------------
    @property
    def native_resolution(self) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def preprocess(self, image: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def collate(self, inputs: list[Any]) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, batch: Any) -> dict[str, Any]:  # pragma: no cover - abstract
        """The model on one batch: ``{"score": (B,), "logits": (B, C)}``."""
        raise NotImplementedError

    def results_from_outputs(self, out: dict[str, Any], paths: Sequence[str | None],
                             notes: Sequence[list[str]]) -> list[Prediction]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _forward_for(self, n: int) -> tuple[int, Callable[[Any], dict[str, Any]]]:  # pragma: no cover - abstract
        """``(batches at once, forward)`` for scoring ``n`` inputs."""
        raise NotImplementedError

    def default_batch_size(self) -> int:
        return 1

    def default_workers(self) -> int:
        return 2

    @contextmanager
    def _running(self) -> Iterator[None]:
        """Around a run (PyTorch: eval mode and its threads)."""
        yield

    # -- shared --------------------------------------------------------------------------------
    def clip_to_scale(self, pred: Prediction) -> Prediction:
        """``pred`` with its score clipped to the scale's ends, the raw value in its notes (what
        people read: tables, files, reports; ``predict`` keeps the raw output)."""
        return clip_to_scale(pred, self.scale)

    def run(self, items: Sequence[Any], *, on_result: Callable[[int, Prediction], None] | None = None,
            on_image: Callable[[int, Any], None] | None = None, progress: bool = False, return_results: bool = True,
            batch_size: int | None = None, workers: int | None = None,
            concurrency: int | None = None) -> list[Prediction] | None:
        """Score ``items`` (paths, PIL images, :class:`~contentiqa.inference.engine.Prepared`
        inputs) through the engine; a file that cannot be read gets a Prediction with ``error``.
        ``batch_size`` / ``workers`` default to the runtime's measured choice; ``concurrency``
        (batches in the model at once) to the thread plan (1: one at a time)."""
        runs, forward = self._forward_for(len(items)) if concurrency is None else (concurrency, self.forward)
        engine = Engine(self, forward, batch_size=self.default_batch_size() if batch_size is None else batch_size,
                        workers=self.default_workers() if workers is None else workers, concurrency=runs,
                        max_batch_pixels=self.max_batch_pixels(), progress=progress)
        with self._running():
            return engine.run(items, on_result=on_result, on_image=on_image, return_results=return_results)

    def max_batch_pixels(self) -> int | None:
        """A CPU's bound (:data:`~contentiqa.inference.engine.DEFAULT_MAX_BATCH_PIXELS`): a
        batch of large photos is no faster per image there than one at a time, only larger."""
        return DEFAULT_MAX_BATCH_PIXELS

    def predict(self, inputs: Any, batch_size: int | None = None, progress: bool = False) -> Prediction | list[Prediction]:
        """Score one input or many (paths, PIL images, arrays, tensors): a :class:`Prediction` per
        input, in order (one for one input). A file that cannot be read gives a Prediction with
        ``error``; an in-memory input the model would score wrongly (NaN, bool, out-of-range
        values, over ``max_pixels``) raises ValueError before anything is scored, as does
        ``batch_size < 1`` (None: the runtime's choice)."""
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
                                       or batch_size < 1):
            raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
        items, single = split_inputs(inputs)
        # In-memory inputs are converted (and checked) now: a bad array is the caller's bug, not a
        # file to report; PIL images hold 1 byte per value, a quarter of a float tensor.
        items = [in_memory_checked(self, it) for it in items]
        results = self.run(items, batch_size=None if batch_size is None else int(batch_size), progress=progress)
        assert results is not None
        return results[0] if single else results


def split_inputs(inputs: Any) -> tuple[list[Any], bool]:
    """``(items, single)``: a list or tuple is many inputs, and so is a 4-D array or tensor ((N, H,
    W, C) numpy, as images are held; (N, C, H, W) torch); anything else (a path, an image, an
    (H, W, C) array, a (C, H, W) tensor) is one."""
    if isinstance(inputs, (list, tuple)):
        return list(inputs), False
    ndim = getattr(inputs, "ndim", None)  # numpy arrays and torch tensors alike, without importing torch
    if ndim == 4 and not isinstance(inputs, (str, os.PathLike)):
        return list(inputs), False
    return [inputs], True


# -- options ------------------------------------------------------------------------------------
def check_options(runtime: str = "auto", precision: str | None = None, device: str = "cpu") -> None:
    """ValueError for a combination of options that contradicts itself; cheap (no torch), so
    commands call it before any work."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}: use one of {', '.join(RUNTIMES)}")
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    on_cpu = is_cpu(device)
    if runtime == "onnx" and not on_cpu:
        raise ValueError(f"the ONNX Runtime runs on the CPU, not {device}: use the PyTorch runtime (--runtime torch) there")
    if precision == "int8" and (runtime == "torch" or not on_cpu):
        raise ValueError("precision int8 is an ONNX Runtime graph (CPU): not with the PyTorch runtime")
    if precision in ("bf16", "fp16") and runtime == "onnx":
        raise ValueError(f"precision {precision} is PyTorch autocast: not with the ONNX Runtime")


def choose_runtime(runtime: str, precision: str | None, device: str) -> str:
    """``auto`` settled: ONNX Runtime on the CPU (the faster runtime there:
    benchmarks/results/speed.md), PyTorch on any other device or for autocast asked by name."""
    if runtime != "auto":
        return runtime
    return "onnx" if is_cpu(device) and precision not in ("bf16", "fp16") else "torch"



# -- loading --------------------------------------------------------------------------------------
def load_scorer(
    spec: str | os.PathLike | None = None,
    *,
    runtime: str = "auto",
    precision: str | None = None,
    device: str = "cpu",
    threads: int | None = None,
    images: int | None = None,
    cpu_sample: CpuSample | None = None,
    notes: list[str] | None = None,
) -> Scorer:
    """The scorer of ``spec``: a registered ``name[.tag]`` (default
    :data:`contentiqa.DEFAULT_MODEL`, shipped weights), a checkpoint file or an ONNX file from
    ``contentiqa export``.

    ``runtime``: ``auto`` (ONNX Runtime on the CPU, PyTorch elsewhere; PyTorch too where a model
    cannot be exported), ``onnx`` or ``torch``. ``precision``: one of :data:`PRECISIONS`
    (default: the model's measured choice of graph, :func:`~contentiqa.inference.quantize.default_precision`;
    bf16 autocast on a CUDA GPU). ``device``: a torch device (``cuda``: PyTorch). ``threads``:
    compute threads (default: ONNX Runtime one per core not busy with other processes, PyTorch
    its own). ``images``: how many inputs the first run will score, so the thread plan can run
    many side by side; ``cpu_sample``: a :class:`~contentiqa.inference.threads.CpuSample` started
    earlier (saves the plan's wait). ``notes``: gets a line for each choice made for the caller
    (a fallback to fp32 or to PyTorch).

    Raises ValueError (unknown name or tag, contradicting options, a file that is no model),
    FileNotFoundError (missing file or weights), and :class:`~contentiqa.utils.extras.ExtraMissing`
    when what it needs is not installed (PyTorch to export or run a model, onnxruntime): each
    message says what to do."""
    from .. import DEFAULT_MODEL
    from ..models.registry import parse_spec, weights_file
    from .threads import check_thread_count

    check_options(runtime, precision, device)
    check_thread_count(threads)
    if images is not None and (isinstance(images, bool) or not isinstance(images, numbers.Integral) or images < 0):
        raise ValueError(f"images must be a whole number of 0 or more, got {images!r}")
    notes = notes if notes is not None else []
    source = parse_spec(spec if spec is not None else DEFAULT_MODEL)
    chosen = choose_runtime(runtime, precision, device)
    if source.is_onnx:
        if chosen == "torch":
            raise ValueError(f"{source.text} is an ONNX graph: it runs in ONNX Runtime on the CPU, not PyTorch")
        if precision is not None:
            raise ValueError(f"{source.text} runs as it is: its precision is the file's (drop the precision)")
        from .onnx_runtime import OnnxScorer

        return OnnxScorer.from_file(source.path, threads=threads, images=images, cpu_sample=cpu_sample, spec=source.text)
    weights, tag = weights_file(source)
    # a file goes on as its path: its text alone (Path("iqa-cr-q"), a file named as a model) reads
    # as a registered name again, whose weights were then scored (and cached) as the file's
    model_ref = source.path if source.is_file else source.text
    if chosen == "onnx":
        scorer = _onnx_scorer(source.text, model_ref, weights, tag, precision, threads, images, cpu_sample, notes,
                              fallback=runtime == "auto")
        if scorer is not None:
            return scorer
    model = load_model(model_ref, device)
    from .torch_runtime import TorchScorer

    return TorchScorer(model, precision=precision, threads=threads, spec=source.text, weights=weights)


def _onnx_scorer(spec: str, model_ref: str | os.PathLike, weights: Path, tag: str | None, precision: str | None,
                 threads: int | None, images: int | None, cpu_sample: CpuSample | None, notes: list[str],
                 fallback: bool) -> Scorer | None:
    """The ONNX Runtime scorer of ``weights`` (``spec`` as the caller wrote it, ``model_ref`` what
    loads the model): its shipped graph, else the cached one, else one built now
    (:func:`_build_graph`). None when the model cannot be exported and ``fallback`` allows PyTorch
    instead. A default int8 graph that cannot be had falls back to fp32 (noted)."""
    from .onnx_runtime import CacheUnwritable, OnnxExportError, find_graph, require_onnxruntime
    from .quantize import QuantizationError, default_precision

    if not have("onnxruntime"):
        if fallback and have("torch"):
            notes.append("onnxruntime is not installed: running in PyTorch (slower on a CPU)")
            return None
        require_onnxruntime()
    wanted = precision or default_precision(weights)
    tries = [wanted] + (["fp32"] if precision is None and wanted != "fp32" else [])
    for prec in tries:
        # Built at most twice: an entry can be pruned (`contentiqa cache --max-size`, another
        # process) between its writing and its reading.
        for built in range(3):
            scorer = find_graph(weights, precision=prec, tag=tag, threads=threads, images=images,
                                cpu_sample=cpu_sample, spec=spec)
            if scorer is not None:
                return scorer
            if built == 2:
                raise ValueError(f"the ONNX graph of {spec} was written to the export cache twice and was gone both "
                                 "times when read back (is the cache being pruned?): use --runtime torch")
            try:
                _build_graph(model_ref, weights, prec)
            except OnnxExportError as exc:
                if precision == "int8":  # asked for: only an ONNX graph runs it, and PyTorch cannot
                    raise ValueError(f"precision int8 runs {spec}'s ONNX graph, and it cannot be exported: {exc}; use "
                                     "fp32 (or bf16 with --runtime torch)") from None
                if not fallback:
                    raise ValueError(f"cannot run {spec} in ONNX Runtime: {exc}; use the PyTorch runtime") from None
                notes.append(f"running in PyTorch, not ONNX Runtime ({exc})")
                return None
            except CacheUnwritable as exc:  # neither the cache nor its temporary fallback (full disks)
                why = f"cannot write its ONNX graph: {exc}"
                if not fallback:
                    raise ValueError(f"{spec}: {why}; free space, or set CONTENTIQA_CACHE_DIR to another folder") \
                        from None
                notes.append(f"running in PyTorch, not ONNX Runtime: {why}")
                return None
            except (QuantizationError, ExtraMissing) as exc:
                if precision is not None or prec == "fp32":  # asked for by name: no quiet fallback
                    if isinstance(exc, ExtraMissing):
                        raise
                    raise ValueError(f"precision {prec}: {exc}") from None
                notes.append(f"running the fp32 graph ({exc})")
                break
    raise AssertionError("unreachable: the fp32 try returns or raises")  # pragma: no cover


def _build_graph(spec: str | os.PathLike, weights: Path, precision: str) -> None:
    """Write the ``precision`` graph of ``weights`` into the export cache: fp32 exported from
    the PyTorch model, int8 quantized from the fp32 graph (shipped or cached) with the
    calibration shipped beside the weights (needs the ``onnx`` package, not PyTorch, when an
    fp32 graph exists)."""
    from .onnx_runtime import FINGERPRINT_KEY, find_graph_file, write_cache_entry

    if precision == "fp32":
        if not have("torch"):
            raise ExtraMissing(f"no ONNX graph of {spec} ({weights.name}) ships with this install or is cached, and "
                               "exporting one needs PyTorch", extra="torch")
        from ..utils.io import file_sha256
        from .onnx import export_to_cache

        model = load_model(spec, "cpu")
        export_to_cache(model, weights)  # filed under the bytes the model was read from
        if model.loaded_sha256(weights) not in (None, file_sha256(weights)):
            raise ValueError(f"{weights} changed while it was being read (is a run writing it?): score again "
                             "once it is written")
        return
    from .quantize import QuantizationError, calibration_path

    if not calibration_path(weights).is_file():  # before asking for packages that could not help
        raise QuantizationError(f"no int8 calibration for {weights.name} (expected {calibration_path(weights)}): int8 "
                                "needs activation ranges calibrated on photos (`contentiqa models` lists the weights "
                                "that have them); use fp32")
    fp32 = find_graph_file(weights)
    if fp32 is None:
        _build_graph(spec, weights, "fp32")
        fp32 = find_graph_file(weights)
        assert fp32 is not None
    lacking = [m for m in ("onnx", "sympy") if not have(m)]
    if lacking:
        raise ExtraMissing(f"building the {precision} graph of {spec} needs the {' and '.join(map(repr, lacking))} "
                           f"package{'s' if len(lacking) > 1 else ''}", extra="onnx")
    from .quantize import quantize_for_weights

    write_cache_entry(weights, precision, lambda path, key: quantize_for_weights(
        fp32, path, weights, extra_metadata={FINGERPRINT_KEY: key}))


def load_model(spec: str | os.PathLike | None = None, device: Any = "cpu") -> IQAModel:
    """The PyTorch model of ``spec`` (a registered ``name[.tag]`` with its shipped weights, or a
    checkpoint file): what training, Grad-CAM and exports need. Raises as :func:`load_scorer`."""
    from .. import DEFAULT_MODEL
    from ..models.registry import parse_spec, weights_file

    source = parse_spec(spec if spec is not None else DEFAULT_MODEL)
    if source.is_onnx:
        raise ValueError(f"{source.text} is an ONNX graph: explaining, exporting and PyTorch scoring need the model "
                         "(a registered name or a .pt checkpoint)")
    weights_file(source)  # a missing file or unshipped weights: FileNotFoundError saying so, before torch loads
    if not have("torch"):
        raise ExtraMissing(f"loading the PyTorch model of {source.text} needs PyTorch", extra="torch")
    from ..models.registry import create_model, load_checkpoint

    device = resolve_device(device)
    if source.path is not None:
        return load_checkpoint(source.path, device)
    return create_model(source.text, pretrained=True, device=device)


def create_scorer(spec: str | os.PathLike | None = None, *, precision: str | None = None, threads: int | None = None,
                  runtime: str = "auto", device: str = "cpu") -> Scorer:
    """:func:`load_scorer` under the name of :func:`contentiqa.create_model`'s family (pyiqa's
    ``create_metric``): the same scorer."""
    return load_scorer(spec, precision=precision, threads=threads, runtime=runtime, device=device)
