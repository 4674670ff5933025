"""int8 quantization of an exported contentiqa ONNX graph (``onnxruntime.quantization``).

    >>> from contentiqa.inference.quantize import quantize_onnx
    >>> quantize_onnx("ie-iqa.onnx", "ie-iqa.int8.onnx", method="static", calibration=batches)

Why: the CNN backbones (EfficientNet-Lite0: ReLU6, no squeeze-excitation, made for int8) are
almost all of the compute; on CPUs with VNNI an int8 convolution runs several times the
multiply-adds per cycle of a float one. What is quantized: the convolutions (``Conv``) only
by default, so the Transformer, the attention, the feature selection and the regressor stay
float (their cost is small and their ranges are not the backbone's); ``exclude`` names nodes
to keep in float as well. Two ways, compared by ``benchmarks/int8.py``:

- ``static``: weights *and* activations int8 (QDQ format, per-channel weights), activation
  ranges calibrated by running photos through the graph (``calibration``: arrays of the
  graph's input, i.e. normalised images) or read from a calibration file (``calibration_file``:
  ONNX Runtime's own JSON of tensor ranges, written by a calibrated run), so a user's machine
  can rebuild the int8 graph without the training photos;
- ``dynamic``: int8 weights, activation ranges computed at run time per tensor (no
  calibration; ``ConvInteger``).

The quantized file keeps the fp32 file's metadata (so :class:`~contentiqa.inference.onnx_runtime.OnnxScorer`
serves it unchanged) plus ``precision`` = ``int8`` and ``quantization`` (JSON: method, ops,
excluded nodes, calibration).
"""
from __future__ import annotations

import json
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..utils.io import atomic_write, atomic_write_text, file_sha256

PRECISIONS = ("fp32", "int8")
METHODS = ("static", "dynamic")
DEFAULT_OP_TYPES = ("Conv",)
CNN_OP_TYPES = ("Conv", "Clip", "Add")
"""The ops of the CNN parts: quantizing the activations and residual additions along with the
convolutions keeps the data int8 between layers (Conv alone converts back to float around
every convolution: measured slower, benchmarks/results/int8.md)."""
QUANT_REVISION = "1"  # bump when the recipe below changes, to refresh cached int8 files


class QuantizationError(RuntimeError):
    """The graph could not be quantized; the message says why."""


def check_precision(precision: str) -> str:
    """``precision`` when it is one of :data:`PRECISIONS`, else a ValueError naming them."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    return precision


def _reader(input_name: str, batches: Iterable[np.ndarray], cwd: str):
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        """Feeds the calibration batches (N x 3 x H x W float32, normalised) one by one. The
        quantizer runs in a work folder (see :func:`quantize_onnx`); the batches are drawn in
        the caller's ``cwd``, where a lazy reader of relative paths finds its photos."""

        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            work = os.getcwd()
            os.chdir(cwd)
            try:
                x = next(self._it, None)
            finally:
                os.chdir(work)
            if x is None:
                return None
            x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
            return {input_name: x if x.ndim == 4 else x[None]}

    return _Reader()


def _input_name(path: Path) -> str:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    if len(names) != 1:
        raise QuantizationError(f"{path}: expected one graph input, found {names}")
    return names[0]


def matching_nodes(path: str | os.PathLike, patterns: Sequence[str]) -> list[str]:
    """Names of the nodes of the ONNX file ``path`` that match any of the regular expressions."""
    import onnx

    if not patterns:
        return []
    rx = [re.compile(p) for p in patterns]
    graph = onnx.load(str(path), load_external_data=False).graph
    return [n.name for n in graph.node if any(r.search(n.name) for r in rx)]


def _check_ranges(path: Path, cal_path: Path, op_types: Sequence[str], excluded: Sequence[str],
                  included: Sequence[str] | None) -> None:
    """QuantizationError unless ``cal_path`` has a range for every activation the static
    quantizer will need (inputs and outputs of the nodes it quantizes)."""
    import onnx

    try:
        ranges = json.loads(cal_path.read_text())
    except (OSError, ValueError) as exc:
        raise QuantizationError(f"{cal_path}: cannot read the calibration ranges ({exc})") from None
    known = set(ranges.get("data", ranges) if isinstance(ranges, dict) else ())
    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    # Integer tensors (the shape arithmetic of adaptive pooling: Add of int64 sizes) are never
    # calibrated, so no range is needed for them; a tensor of unknown type is asked for.
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.input, *graph.output)}
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
    skip = set(excluded)
    only = set(included) if included is not None else None
    needed = {t for n in graph.node if n.op_type in op_types and n.name not in skip and (only is None or n.name in only)
              for t in (*n.input[:1], *n.output[:1]) if t and t not in inits and types.get(t, onnx.TensorProto.FLOAT) in floats}
    missing = sorted(needed - known)
    if missing:
        raise QuantizationError(
            f"the calibration ranges do not match this graph ({len(missing)} of {len(needed)} tensors missing, e.g. "
            f"{missing[0]}); they were made for another export (torch / onnx version): make them again with "
            "contentiqa.inference.quantize.write_calibration"
        )


def _preprocess(src: Path, out: Path) -> Path:
    """ONNX Runtime's recommended step before quantizing: shape inference and graph
    optimisation (folds the exporter's Identity-wrapped weights into initializers, which the
    quantizer needs, and fuses what can be fused so that fewer tensors are calibrated)."""
    import onnx
    from onnxruntime.quantization import quant_pre_process

    from ..utils.extras import ExtraMissing

    # In memory with its external data (shipped graphs keep their tensors in graphs.bin beside
    # them): given a path, the plain-inference route copies the graph to a temporary folder
    # where that relative graphs.bin is missing.
    try:
        quant_pre_process(onnx.load(str(src)), str(out), skip_symbolic_shape=False)
    except ImportError as exc:  # sympy, which symbolic shape inference needs
        raise ExtraMissing(f"building an int8 graph needs {exc.name or 'sympy'}", extra="onnx") from None
    except Exception:  # symbolic shape inference can fail on dynamic shapes: plain ONNX inference then
        try:
            quant_pre_process(onnx.load(str(src)), str(out), skip_symbolic_shape=True)
        except Exception as exc:
            raise QuantizationError(f"{src}: ONNX Runtime's pre-processing failed ({type(exc).__name__}: {exc})") from None
    return out


def _copy_metadata(src: Path, dst: Path, extra: dict[str, str]) -> None:
    import onnx

    from .onnx_runtime import FINGERPRINT_KEY

    meta = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    # The fp32 graph's export-cache key is not this graph's: an int8 file written where the cache
    # looks (by hand, or --out) would pass for the fp32 entry. A cached int8 entry gets its own.
    meta.pop(FINGERPRINT_KEY, None)
    if "verified_max_abs_diff" in meta:  # the fp32 graph's check against PyTorch, not this graph's
        meta["fp32_verified_max_abs_diff"] = meta.pop("verified_max_abs_diff")
    meta.update(extra)
    out = onnx.load(str(dst))
    del out.metadata_props[:]
    for k, v in meta.items():
        e = out.metadata_props.add()
        e.key, e.value = k, v
    onnx.save(out, str(dst))


def quantize_onnx(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    method: str = "static",
    calibration: Iterable[np.ndarray] | None = None,
    calibration_file: str | os.PathLike | None = None,
    op_types: Sequence[str] = DEFAULT_OP_TYPES,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    per_channel: bool = True,
    ranges_check: bool = False,
    quant_format: str = "qdq",
    extra_metadata: dict[str, str] | None = None,
) -> Path:
    """Quantize the fp32 ONNX file ``src`` to int8 at ``dst`` (written atomically).

    ``static`` needs ``calibration`` (normalised input arrays) or an existing
    ``calibration_file``; when both are given and the file does not exist yet, the ranges
    calibrated here are saved to it (ONNX Runtime's calibration cache). ``quant_format``:
    ``qdq`` (Quantize/DequantizeLinear pairs that ONNX Runtime fuses into int8 kernels) or
    ``qoperator`` (QLinearConv etc. written out). ``exclude``: regular expressions; nodes
    whose name (in the graph as ONNX Runtime's pre-processing leaves it) matches one stay
    float; ``include`` (if given): only nodes matching one of these are quantized (e.g. the CNN
parts, leaving a Transformer's Add / MatMul float). ``ranges_check``: refuse a calibration file that lacks a range the quantizer needs
    (one made for another graph). Raises :class:`QuantizationError`."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    if method not in METHODS:
        raise ValueError(f"unknown quantization method {method!r}: use one of {', '.join(METHODS)}")
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"ONNX model {src} does not exist")
    cal_path = Path(calibration_file) if calibration_file is not None else None
    if method == "static" and calibration is None and (cal_path is None or not cal_path.is_file()):
        raise QuantizationError(
            "static quantization needs calibration images or an existing calibration file"
            + (f" ({cal_path} does not exist)" if cal_path is not None else "")
        )
    info: dict[str, Any] = {"method": method, "op_types": list(op_types), "exclude": list(exclude), "revision": QUANT_REVISION}
    src = src.resolve()
    cal_path = cal_path.resolve() if cal_path is not None else None

    def write(tmp: str) -> None:
        tmp = str(Path(tmp).resolve())  # the work below runs in another folder
        work = tempfile.TemporaryDirectory(prefix="contentiqa-quant-")
        cwd = os.getcwd()
        try:
            # onnx / onnxruntime.quantization write temporary external-data files (<uuid>.data,
            # the size of the weights) into the working directory and leave them: work in the
            # temporary folder. (Quantization happens once per cache entry, before scoring starts.)
            os.chdir(work.name)
            try:
                pre = _preprocess(src, Path(work.name) / "pre.onnx")
                excluded = matching_nodes(pre, exclude)
                included = matching_nodes(pre, include) if include else None
                if included is not None:
                    skip = set(excluded)
                    included = [n for n in included if n not in skip]
                    if not included:  # ONNX Runtime reads an empty list as "every node"
                        raise QuantizationError("the recipe's include patterns match no node of this graph (made "
                                                "for another export?): make the calibration again")
                info.update(include=list(include), excluded_nodes=len(excluded))
                if ranges_check and method == "static" and cal_path is not None and cal_path.is_file():
                    _check_ranges(pre, cal_path, op_types, excluded, included)
                if method == "dynamic":
                    quantize_dynamic(str(pre), tmp, op_types_to_quantize=list(op_types), per_channel=per_channel,
                                     weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
                                     nodes_to_quantize=included)
                else:
                    fmt = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}[quant_format]
                    reader = _reader(_input_name(src), calibration, cwd) if calibration is not None else None
                    quantize_static(
                        str(pre), tmp, reader, quant_format=fmt, op_types_to_quantize=list(op_types),
                        per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=excluded, nodes_to_quantize=included, calibrate_method=CalibrationMethod.MinMax,
                        calibration_cache_path=str(cal_path) if cal_path is not None else None,
                    )
                    info.update(format=quant_format, per_channel=per_channel, activations="uint8", weights="int8",
                                calibration=(cal_path.name if cal_path is not None else "in-process"))
            except (ValueError, KeyError, RuntimeError) as exc:
                raise QuantizationError(f"cannot quantize {src} ({method}): {exc}") from exc
            _copy_metadata(src, Path(tmp), {"precision": "int8", "quantization": json.dumps(info),
                                            **{k: str(v) for k, v in (extra_metadata or {}).items()}})
        finally:
            os.chdir(cwd)
            work.cleanup()

    # the permissions a plain write would give (or the replaced file's), through a symlink
    atomic_write(dst, write)
    return dst


# -- calibration files: an int8 recipe and its activation ranges, kept beside the weights -------------
CALIBRATION_FORMAT = "contentiqa-int8-calibration/1"
CALIBRATION_SUFFIX = ".int8.json"


@dataclass(frozen=True)
class Int8Recipe:
    """What to quantize: the op types and the node-name patterns kept float (chosen by
    measurement in benchmarks/int8.py), and how."""

    op_types: tuple[str, ...] = CNN_OP_TYPES
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    method: str = "static"
    per_channel: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"op_types": list(self.op_types), "include": list(self.include), "exclude": list(self.exclude), "method": self.method,
                "per_channel": self.per_channel}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Int8Recipe":
        return cls(tuple(d.get("op_types", CNN_OP_TYPES)), tuple(d.get("include", ())), tuple(d.get("exclude", ())),
                   str(d.get("method", "static")), bool(d.get("per_channel", True)))


def calibration_path(weights: str | os.PathLike) -> Path:
    """Where the int8 calibration of a weights file lives: beside it, ``<stem>.int8.json``."""
    weights = Path(weights)
    return weights.with_name(weights.stem + CALIBRATION_SUFFIX)


def calibration_fingerprint(weights: str | os.PathLike) -> dict[str, Any]:
    """What an int8 graph of ``weights`` depends on besides them: the quantization revision and
    the calibration file beside them (its SHA-256; None without one). Part of every int8 cache
    key, a file's or a model's in memory: a new calibration is a new graph."""
    from ..utils.io import file_sha256

    cal = calibration_path(weights)
    return {"quant_rev": QUANT_REVISION, "calibration_sha256": file_sha256(cal) if cal.is_file() else None}


def write_calibration(
    fp32_onnx: str | os.PathLike,
    batches: Iterable[np.ndarray],
    out: str | os.PathLike,
    *,
    weights: str | os.PathLike,
    recipe: Int8Recipe = Int8Recipe(),
    source: str = "",
    int8_out: str | os.PathLike | None = None,
) -> Path:
    """Calibrate ``fp32_onnx`` (the export of the weights file ``weights``) on ``batches``
    and write the calibration file ``out``: the recipe, the activation ranges (ONNX
    Runtime's calibration cache) and the weights' SHA-256, so that :func:`quantize_for_weights`
    rebuilds the same int8 graph on any machine without the photos. ``int8_out`` keeps the
    int8 graph made on the way."""
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="contentiqa-calib-") as tmp:
        ranges = Path(tmp) / "ranges.json"
        quantize_onnx(fp32_onnx, int8_out or Path(tmp) / "int8.onnx", method=recipe.method, calibration=batches,
                      calibration_file=ranges, op_types=recipe.op_types, include=recipe.include, exclude=recipe.exclude,
                      per_channel=recipe.per_channel)
        payload = {
            "format": CALIBRATION_FORMAT,
            "weights": Path(weights).name,
            "weights_sha256": file_sha256(weights),
            "recipe": recipe.to_dict(),
            "source": source,
            "quant_revision": QUANT_REVISION,
            "ranges": json.loads(ranges.read_text()) if ranges.is_file() else None,
        }
    return atomic_write_text(out, json.dumps(payload, indent=None, separators=(",", ":")))


def read_calibration(path: str | os.PathLike, weights: str | os.PathLike | None = None) -> dict[str, Any]:
    """The calibration file at ``path``; with ``weights``, checked to be for that file (by
    SHA-256). QuantizationError saying what is wrong otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise QuantizationError(f"no int8 calibration file {path}") from None
    except (OSError, ValueError, RecursionError) as exc:
        raise QuantizationError(f"{path}: not a readable calibration file ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
        raise QuantizationError(f"{path}: not a contentiqa int8 calibration file (format {CALIBRATION_FORMAT})")
    if weights is not None and data.get("weights_sha256") != file_sha256(weights):
        raise QuantizationError(f"{path} was calibrated for other weights than {weights} (SHA-256 differs)")
    problem = _calibration_problem(data)
    if problem is not None:  # a damaged or hand-edited file: never a traceback, nor a graph scoring NaN
        raise QuantizationError(f"{path}: damaged calibration file: {problem}")
    return data


def _calibration_problem(data: dict[str, Any]) -> str | None:
    """What is wrong with a calibration file's recipe, ranges or default, or None."""
    recipe = data.get("recipe") or {}
    if not isinstance(recipe, dict):
        return "'recipe' is not a mapping"
    for key in ("op_types", "include", "exclude"):
        value = recipe.get(key, [])
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            return f"recipe.{key} is not a list of strings"
    for pattern in (*recipe.get("include", []), *recipe.get("exclude", [])):
        try:
            re.compile(pattern)
        except re.error as exc:
            return f"recipe pattern {pattern!r}: {exc}"
    if recipe.get("method", "static") not in METHODS:
        return f"recipe.method is one of {', '.join(METHODS)}, not {recipe.get('method')!r}"
    if not isinstance(recipe.get("per_channel", True), bool):
        return "recipe.per_channel is not true or false"
    if data.get("default_precision", "fp32") not in PRECISIONS:
        return f"default_precision is one of {', '.join(PRECISIONS)}, not {data.get('default_precision')!r}"
    ranges = data.get("ranges")
    if ranges is None:
        return None
    tensors = ranges.get("data") if isinstance(ranges, dict) else None
    if not isinstance(tensors, dict):
        return "'ranges' holds no tensor ranges"
    for name, r in tensors.items():
        try:
            lo, hi = (float(r[end]["data"][0]) for end in ("lowest", "highest"))
        except (TypeError, KeyError, IndexError, ValueError, OverflowError):
            return f"range of {name} is not lowest / highest numbers"
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            return f"range of {name} is [{lo}, {hi}]: the ends must be finite, the lowest first"
    return None


def quantize_for_weights(
    fp32_onnx: str | os.PathLike, dst: str | os.PathLike, weights: str | os.PathLike,
    extra_metadata: dict[str, str] | None = None,
) -> Path:
    """The int8 graph of ``fp32_onnx`` (the export of ``weights``) from the calibration file
    beside the weights (:func:`calibration_path`). QuantizationError when there is none or it
    does not fit."""
    cal = calibration_path(weights)
    if not cal.is_file():
        raise QuantizationError(
            f"no int8 calibration for {Path(weights).name} (expected {cal}): int8 needs activation ranges "
            "calibrated on photos; make them with contentiqa.inference.quantize.write_calibration, or use fp32"
        )
    data = read_calibration(cal, weights)
    recipe = Int8Recipe.from_dict(data.get("recipe") or {})
    with tempfile.TemporaryDirectory(prefix="contentiqa-calib-") as tmp:
        ranges = None
        if data.get("ranges") is not None:
            ranges = Path(tmp) / "ranges.json"
            ranges.write_text(json.dumps(data["ranges"]))
        elif recipe.method == "static":
            raise QuantizationError(f"{cal}: a static recipe without activation ranges")
        try:
            return quantize_onnx(fp32_onnx, dst, method=recipe.method, calibration_file=ranges, op_types=recipe.op_types,
                                 include=recipe.include, exclude=recipe.exclude, per_channel=recipe.per_channel,
                                 ranges_check=True,
                                 extra_metadata={"int8_calibration": data.get("source", ""), **(extra_metadata or {})})
        except QuantizationError as exc:  # the file the user has, not the temporary copies made from it
            raise QuantizationError(f"{cal}: {exc}") from None


def default_precision(weights: str | os.PathLike | None) -> str:
    """The precision ``contentiqa score`` uses for ``weights`` when none is asked for: int8 only
    where the calibration file beside them says so (benchmarks/int8.py writes
    ``default_precision: int8`` only when int8 was measured >= 1.4x faster, within 0.005 SROCC
    of fp32 *and* in agreement with it photo by photo: p99 |int8 - fp32| <= 1 point on 0-100,
    >= 99 % of content categories the same), else fp32."""
    if not weights or not os.path.isfile(weights):
        return "fp32"
    cal = calibration_path(weights)
    if not cal.is_file():
        return "fp32"
    try:
        data = read_calibration(cal, weights)
    except QuantizationError:
        return "fp32"
    return "int8" if data.get("default_precision") == "int8" else "fp32"
