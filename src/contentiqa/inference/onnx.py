"""ONNX export (needs PyTorch): the graphs ONNX Runtime scores with.

    >>> from contentiqa.inference.onnx import export_onnx
    >>> export_onnx(contentiqa.create_model("iqa-cr"), "iqa-cr.onnx")
    >>> contentiqa.load_scorer("iqa-cr.onnx").predict("photo.jpg").score   # no weights, no torch

The exported graph takes the *normalised* image batch ``image`` (float32, N x 3 x H x W:
``(pixel / 255 - mean) / std``, RGB) and returns ``score`` (N,), the normalised quality on
[0, 1] of the training MOS range, and, for models with a content head, ``logits`` (N, C).
The batch axis is dynamic; for native-resolution models (IQA-CR and its variants) so are
height and width, so one file scores photos of any size. Fixed-size models (IE-IQA) take
``input_size`` x ``input_size`` after a bilinear resize.

Everything needed to use the file without contentiqa's Python model is in its metadata
(``metadata_props``): ``model_name``, ``score_low`` / ``score_high`` /
``higher_is_better`` (MOS = low + score * (high - low), or low + (1 - score) * (high - low)
when lower is better), ``categories`` (JSON list, the order of ``logits``), ``mean`` /
``std`` (JSON), ``native_resolution``, ``input_size`` (JSON [H, W] or null),
``preprocess`` (``native`` or ``resize_bilinear``), ``min_size``, ``outputs``, the model
config and the maximum difference to PyTorch measured at export; and how `contentiqa score`
reads a photo before that, in words a user of the file alone can follow: ``image_loading``,
``resize`` (Pillow's bilinear, which filters when shrinking: OpenCV's or torch's plain
bilinear give other inputs and scores points apart), ``max_side`` and ``downscale`` (a
native-resolution model's large photos are shrunk first).

Exporter: the TorchScript-based ``torch.onnx.export(dynamo=False)`` with ``dynamic_axes``; the
backbones' TensorFlow-"same" convolutions are written as one ``Conv(auto_pad=SAME_UPPER)`` each
(:mod:`contentiqa.backbones.onnx_same_padding`: without it a Pad and its shape arithmetic before
every stride-2 convolution cost a third of the CPU time).
It traces IQA-CR with dynamic height and width because the adaptive pooling to the token
grid is written as two matrix products built from the input's shape
(:func:`contentiqa.models.layers.adaptive_avg_pool2d_matmul`); ``export_onnx`` checks
ONNX Runtime against PyTorch at two sizes and two batch sizes before it returns. IE-IQA's
per-image feature selection exports as ArgMax / Gather / TopK (contribution) or, for
Linear/ReLU heads, the written-out gradient (sensitivity); what cannot be exported raises
:class:`OnnxExportError` saying why.

Sessions, the cache's places and keys, and the scorer (numpy, no torch) are
:mod:`contentiqa.inference.onnx_runtime`.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..backbones.onnx_same_padding import same_padding_as_onnx_conv
from ..models.base import IQAModel
from ..models.scoring import DEFAULT_MAX_SIDE
from ..utils.extras import ExtraMissing
from ..utils.io import atomic_write

from . import onnx_runtime as _rt
from .onnx_runtime import DEFAULT_OPSET, DEFAULT_PRECISION, FINGERPRINT_KEY, INPUT_NAME, ONNX_FORMAT, OnnxExportError, make_session

_EXPORT_LOCK = threading.RLock()
"""Held around every ``torch.onnx.export`` (the exporter keeps process-global state: two threads
exporting at once fail each other) and around a cache entry's look-up and export (threads
loading one new model at once export it once)."""

VERIFY_ATOL = 1e-3
_EXPORT_REVISION = _rt.EXPORT_REVISION


def _require_onnx():
    try:
        import onnx
    except ImportError:
        raise ExtraMissing("ONNX export needs the 'onnx' package", extra="torch") from None
    return onnx


# -- export -------------------------------------------------------------------------------------
class _ExportWrapper(nn.Module):
    """``model(x)`` (a dict) as a tuple in the order of ``names``."""

    def __init__(self, model: IQAModel, names: Sequence[str]):
        super().__init__()
        self.model = model
        self.names = tuple(names)

    def forward(self, x: torch.Tensor):
        out = self.model(x)
        return tuple(out[n] for n in self.names)


def input_size(model: IQAModel) -> tuple[int, int] | None:
    """The fixed (H, W) a model takes, or None for native resolution."""
    if model.native_resolution:
        return None
    try:
        size = model.fixed_input_size
    except NotImplementedError as exc:
        raise OnnxExportError(str(exc)) from None
    return None if size is None else (int(size[0]), int(size[1]))


def _check_exportable(model: IQAModel) -> None:
    """Refuse, with the model's reason, what the exporter cannot express."""
    reason = model.onnx_unsupported_reason()
    if reason is not None:
        raise OnnxExportError(reason)


def _output_names(model: IQAModel, example: torch.Tensor) -> list[str]:
    with torch.no_grad():
        out = model(example)
    names = [n for n in ("score", "logits") if n in out]
    if not names:
        raise OnnxExportError(f"{type(model).__name__} returned neither 'score' nor 'logits'")
    return names


def _example_input(model: IQAModel, batch: int = 2) -> torch.Tensor:
    size = input_size(model)
    h, w = size if size is not None else (160, 224)
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, h, w, generator=g)


READING_METADATA = ("preprocess", "image_loading", "resize", "max_side", "downscale", "input_layout",
                    "source_checkpoint")
"""The metadata that says how a photo is read for the graph (and from which weights): a graph
quantized from an older export takes today's (its weights, hence its scores, are the same)."""


def onnx_metadata(model: IQAModel, outputs: Sequence[str]) -> dict[str, str]:
    """The metadata_props written into an exported file (all values are strings)."""
    from .. import __version__

    size = input_size(model)
    try:
        config = json.dumps(model.cfg.to_dict())
    except (TypeError, ValueError):
        config = "{}"
    ck = model.checkpoint_info or {}
    return {
        "contentiqa_format": ONNX_FORMAT,
        "contentiqa_version": __version__,
        "model_name": str(model.model_name),
        "source_checkpoint": str(ck.get("path", "")),
        "score_low": repr(float(model.scale.low)),
        "score_high": repr(float(model.scale.high)),
        "higher_is_better": json.dumps(bool(model.scale.higher_is_better)),
        "score_output": "normalised quality in [0, 1] of [score_low, score_high] (see higher_is_better)",
        "categories": json.dumps(list(model.categories)),
        "mean": json.dumps([float(v) for v in model.mean]),
        "std": json.dumps([float(v) for v in model.std]),
        "native_resolution": json.dumps(bool(model.native_resolution)),
        "input_size": json.dumps(list(size) if size is not None else None),
        "preprocess": "native" if size is None else "resize_bilinear",
        # how `contentiqa score` reads a photo, for a user of the file alone: other resamplings
        # move scores by points (OpenCV's and torch's bilinear do not filter when shrinking)
        "image_loading": ("8-bit RGB, EXIF orientation applied, transparency composited on white; 16-bit grey and "
                          "float samples scaled to 8 bits on their range (16-bit: round(v / 257)), not clipped as "
                          "Pillow's convert('RGB') does; 16-bit colour files as Pillow decodes them (top 8 bits)"),
        "resize": "none" if size is None else "PIL Image.resize((W, H), Image.BILINEAR) of the 8-bit RGB image",
        "max_side": str(DEFAULT_MAX_SIDE) if model.native_resolution else "none",
        "downscale": "none" if not model.native_resolution else (
            "a photo whose longest side is over max_side is first shrunk to it, aspect kept: PIL Image.resize("
            "(max(1, round(w * f)), max(1, round(h * f))), Image.LANCZOS, reducing_gap=3.0), f = max_side / max(w, h)"),
        "input_name": INPUT_NAME,
        "input_layout": "NCHW float32 RGB, (pixel / 255 - mean) / std",
        "outputs": json.dumps(list(outputs)),
        "min_size": str(int(model.min_size)),
        "config": config,
        "torch_version": torch.__version__,
    }


def export_onnx(
    model: IQAModel,
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
    atol: float = VERIFY_ATOL,
    extra_metadata: dict[str, str] | None = None,
) -> Path:
    """Export ``model`` to an ONNX file at ``path`` (written atomically) and return the path.

    Dynamic batch; dynamic height and width for native-resolution models. Outputs ``score``
    (normalised) and ``logits`` when the model has a content head. ``verify`` runs the file
    in ONNX Runtime at two input sizes (native-resolution models) and two batch sizes and
    raises :class:`OnnxExportError` when any output differs from PyTorch by more than
    ``atol``; the largest difference is stored in the metadata (``verified_max_abs_diff``).
    Needs the ``onnx`` package (and ``onnxruntime`` to verify).
    """
    onnx = _require_onnx()
    if verify:
        _rt.require_onnxruntime()
    path = Path(path)
    _check_exportable(model)
    was_training = model.training
    model.eval()
    try:
        example = _example_input(model)
        names = _output_names(model, example)
        wrapper = _ExportWrapper(model, names).eval()
        axes: dict[str, dict[int, str]] = {INPUT_NAME: {0: "batch"}}
        if model.native_resolution:
            axes[INPUT_NAME].update({2: "height", 3: "width"})
        for n in names:
            axes[n] = {0: "batch"}

        def write(tmp: str) -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the legacy exporter's deprecation / tracer notes
                try:
                    with _EXPORT_LOCK, same_padding_as_onnx_conv(model, opset):
                        torch.onnx.export(
                            wrapper, (example,), tmp, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                            output_names=names, dynamic_axes=axes, do_constant_folding=True,
                        )
                except (NotImplementedError, RuntimeError, torch.onnx.errors.OnnxExporterError) as exc:
                    raise OnnxExportError(f"torch.onnx.export failed for {type(model).__name__}: {exc}") from exc
            meta = onnx_metadata(model, names)
            if verify:
                diff = _verify(model, tmp, names, atol)
                meta["verified_max_abs_diff"] = f"{diff:.3g}"
            meta.update({k: str(v) for k, v in (extra_metadata or {}).items()})
            proto = onnx.load(tmp)
            del proto.metadata_props[:]
            for k, v in meta.items():
                entry = proto.metadata_props.add()
                entry.key, entry.value = k, v
            proto.doc_string = f"contentiqa {meta['model_name']}: no-reference image quality ({ONNX_FORMAT})"
            onnx.save(proto, tmp)

        # the permissions a plain write would give (or the replaced file's), through a symlink
        path = atomic_write(path, write)
    finally:
        model.train(was_training)
    return path


def _verify_inputs(model: IQAModel) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    size = input_size(model)
    # and a flat frame: features a ReLU zeroes tie, which random inputs never show
    if size is None:  # two sizes (one not a multiple of the stride) and two batch sizes
        return [torch.randn(2, 3, 160, 224, generator=g), torch.randn(1, 3, 203, 130, generator=g),
                torch.zeros(1, 3, 160, 224)]
    return [torch.randn(2, 3, *size, generator=g), torch.randn(1, 3, *size, generator=g), torch.zeros(1, 3, *size)]


def _verify(model: IQAModel, file: str, names: Sequence[str], atol: float) -> float:
    session = make_session(file, threads=1)
    worst = 0.0
    for x in _verify_inputs(model):
        with torch.no_grad():
            ref = model(x)
        got = session.run(list(names), {INPUT_NAME: x.numpy()})
        for n, g in zip(names, got):
            r = ref[n].detach().numpy()
            if g.shape != r.shape:
                raise OnnxExportError(f"exported '{n}' has shape {g.shape} for input {tuple(x.shape)}, PyTorch {r.shape}")
            d = float(np.max(np.abs(g - r))) if r.size else 0.0
            worst = max(worst, d)
            if not d <= atol:
                raise OnnxExportError(
                    f"the exported graph differs from PyTorch: max |{n}| difference {d:.3g} > {atol:g} "
                    f"for input {tuple(x.shape)}"
                )
    return worst


# -- the export cache (graphs of weights that ship without one, and of models in memory) ---------------------
def model_fingerprint(model: IQAModel, opset: int = DEFAULT_OPSET) -> str:
    """A hash of what the exported graph depends on: name, config, scale, categories, the
    weights (every tensor of the state dict), the opset and the export revision. The key of
    a model in memory; a model just read from a file is keyed by the file instead
    (:func:`~contentiqa.inference.onnx_runtime.weights_cache_key`), which needs no torch."""
    h = hashlib.sha256()
    head = {
        "rev": _EXPORT_REVISION,
        "opset": opset,
        "name": model.model_name,
        "class": type(model).__name__,
        "config": model.cfg.to_dict(),
        "scale": [model.scale.low, model.scale.high, model.scale.higher_is_better],
        "categories": list(model.categories),
    }
    h.update(json.dumps(head, sort_keys=True, default=str).encode())
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        t = v.detach().cpu().contiguous()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _export_precision(model: IQAModel, path: Path, precision: str, opset: int, key: str, folder: Path) -> None:
    """Write the ``precision`` graph of ``model`` to ``path`` with ``key`` in its metadata
    (int8: quantized from the fp32 graph of its weights file)."""
    if precision == DEFAULT_PRECISION:
        export_onnx(model, path, opset=opset, extra_metadata={FINGERPRINT_KEY: key})
    else:
        _quantize_cached(model, path, key, folder, opset)


def cached_session(
    model: IQAModel, folder: str | os.PathLike | None = None, opset: int = DEFAULT_OPSET, threads: int | None = None,
    *, weights_file: str | os.PathLike | None = None, precision: str = DEFAULT_PRECISION,
) -> tuple[Any, Path, bool]:
    """An ONNX Runtime session for ``model`` from the export cache, exporting on first use:
    ``(session, path, created)``.

    ``weights_file``: the file ``model`` was just loaded from, unchanged: the entry is keyed
    by that file (:func:`~contentiqa.inference.onnx_runtime.weights_cache_key`), so the next
    run finds it without torch. Without it the key is :func:`model_fingerprint` (a model in
    memory). A changed checkpoint gets a new entry; one that does not load or lacks the key is
    rebuilt. A cache folder that cannot be written falls back to a per-user temp folder.
    ``precision="int8"``: the int8 graph quantized from the fp32 export with the calibration
    file beside the model's weights (:func:`contentiqa.inference.quantize.quantize_for_weights`),
    cached under its own name and key."""
    from .quantize import check_precision

    check_precision(precision)
    if weights_file is not None:
        # Keyed by the bytes the model was read from when it came from this file: a file replaced
        # since (a run rewriting best.pt) must not file the old weights' graph under the new bytes.
        key = _rt.weights_cache_key(weights_file, opset, precision, sha256=model.loaded_sha256(weights_file))
        label = Path(weights_file).stem
    else:
        key = model_fingerprint(model, opset) if precision == DEFAULT_PRECISION else \
            hashlib.sha256(f"{model_fingerprint(model, opset)}|{precision}|{_calibration_identity(model)}".encode()).hexdigest()
        label = str(model.model_name)
    filename = _rt.cache_filename(label, key, precision)
    found = _rt.find_cached(filename, key, threads, folder)  # a usable entry anywhere: no export at all
    if found is not None:
        return found[0], found[1], False
    with _EXPORT_LOCK:
        found = _rt.find_cached(filename, key, threads, folder)  # another thread's export, while this one waited
        if found is not None:
            return found[0], found[1], False
        return _export_into_cache(model, filename, key, precision, opset, threads, folder)


def _export_into_cache(model: IQAModel, filename: str, key: str, precision: str, opset: int, threads: int | None,
                       folder: str | os.PathLike | None) -> tuple[Any, Path, bool]:
    """Export into the first cache place that can be written; (session, path, True)."""
    path = _rt.write_into_cache(filename, key, lambda path, key: _export_precision(model, path, precision, opset, key,
                                                                                   path.parent), folder)
    session = _rt.open_cached(path, key, threads)
    if session is None:  # pragma: no cover - a fresh export that does not load is a bug
        raise OnnxExportError(f"the export just written to {path} does not load in ONNX Runtime")
    return session, path, True


def _calibration_identity(model: IQAModel) -> str:
    """What an int8 graph of ``model`` in memory also depends on: the quantization revision and
    the calibration file beside the weights it was read from (recalibrated: another graph)."""
    from .quantize import QUANT_REVISION, calibration_fingerprint

    weights = (model.checkpoint_info or {}).get("path")
    return json.dumps(calibration_fingerprint(weights) if weights else {"quant_rev": QUANT_REVISION}, sort_keys=True)


def _quantize_cached(model: IQAModel, path: Path, key: str, folder: Path, opset: int) -> None:
    """Write the int8 entry ``path`` from the fp32 graph of the weights file ``model`` was read
    from (shipped or cached; exported now when there is none). Its calibration was made for that
    file's weights: a model changed in memory since (fine-tuned, edited) is refused, and its
    export never filed under the file's key, where `contentiqa score` of the file would find it."""
    from ..models.registry import load_checkpoint
    from ..utils.io import file_sha256
    from .quantize import QuantizationError, calibration_path, quantize_for_weights

    weights = (model.checkpoint_info or {}).get("path")
    if not weights or not os.path.isfile(weights):
        raise QuantizationError(
            f"int8 needs the weights file of {model.model_name} (its calibration lies beside it); "
            "this model was not loaded from a file: use fp32"
        )
    if not calibration_path(weights).is_file():
        raise QuantizationError(f"no int8 calibration for {Path(weights).name} (expected {calibration_path(weights)}): "
                                "use fp32")
    if model.loaded_sha256(weights) not in (None, file_sha256(weights)) or \
            model_fingerprint(model, opset) != model_fingerprint(load_checkpoint(weights), opset):
        raise QuantizationError(
            f"int8 quantizes with the calibration made for {weights}, and this {model.model_name} is no longer those "
            "weights (changed since it was read, or the file replaced): save it, calibrate it "
            "(contentiqa.inference.quantize.write_calibration), or use fp32")
    src = _rt.find_graph_file(weights, DEFAULT_PRECISION, folder=folder)
    if src is None:
        src = cached_session(model, folder, opset, threads=1, weights_file=weights)[1]
    quantize_for_weights(src, path, weights, extra_metadata={FINGERPRINT_KEY: key})


def cached_export(model: IQAModel, folder: str | os.PathLike | None = None, opset: int = DEFAULT_OPSET) -> tuple[Path, bool]:
    """The ONNX file of ``model`` in the cache, exported on first use: ``(path, created)``
    (see :func:`cached_session`)."""
    _, path, created = cached_session(model, folder, opset, threads=1)
    return path, created


def export_to_cache(model: IQAModel, weights_file: str | os.PathLike, precision: str = DEFAULT_PRECISION) -> Path:
    """Export ``model``, just read from ``weights_file``, into the cache under that file's key
    (int8: quantized from its fp32 graph), where :func:`~contentiqa.inference.onnx_runtime.find_graph`
    finds it without torch from then on. Returns the entry's path."""
    return cached_session(model, threads=1, weights_file=weights_file, precision=precision)[1]
