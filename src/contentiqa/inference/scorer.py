"""The fast Python API: a model's ONNX Runtime scorer, what ``contentiqa score`` runs on a CPU.

    >>> import contentiqa
    >>> scorer = contentiqa.create_scorer()            # the default model, its shipped weights
    >>> scorer.predict("photo.jpg").score
    >>> scorer.predict(["a.jpg", "b.png"], batch_size=1)   # 8 or more: side by side on the free cores

Why a second entry point beside :func:`contentiqa.create_model`: the PyTorch model is what
training, Grad-CAM and GPUs need; scoring on a CPU is faster in ONNX Runtime (the graph with
its TensorFlow-"same" convolutions fused, int8 where it was measured to keep the accuracy) and
needs no torch at all once the graph is cached. The first call for a weights file exports it
(that imports torch once, a few seconds); every later one, in any process, starts in well
under a second. Same rows as the PyTorch model (tested within 1e-3 on the normalised scale).
"""
from __future__ import annotations

import os

from .onnx_runtime import OnnxScorer, cached_scorer


def create_scorer(spec: str | None = None, *, precision: str | None = None, threads: int | None = None) -> OnnxScorer:
    """The ONNX Runtime scorer of ``spec``: a registered ``name[.tag]`` (default
    :data:`contentiqa.DEFAULT_MODEL`, shipped weights) or a checkpoint file.

    ``precision``: ``fp32`` or ``int8`` (default: the model's measured choice,
    :func:`contentiqa.inference.quantize.default_precision`). ``threads``: ONNX Runtime's
    compute threads (default: one per core not busy with other processes). Raises ValueError
    for an unknown name, FileNotFoundError for missing weights, and
    :class:`~contentiqa.inference.onnx_runtime.OnnxUnavailableError` without onnxruntime."""
    from .. import DEFAULT_MODEL
    from ..models.registry import weights_file
    from .quantize import check_precision, default_precision

    spec = spec or DEFAULT_MODEL
    weights, tag = weights_file(spec)
    precision = check_precision(precision) if precision is not None else default_precision(weights)
    scorer = cached_scorer(weights, threads=threads, weights_tag=tag, precision=precision)
    if scorer is not None:
        return scorer
    # First use of these weights: export them once (PyTorch), then read the cache like any later call.
    from ..models.registry import create_model, load_checkpoint
    from .onnx import cached_session

    model = load_checkpoint(weights) if tag is None and os.path.isfile(spec) else create_model(spec, pretrained=True)
    cached_session(model, threads=1, weights_file=weights, precision=precision)
    scorer = cached_scorer(weights, threads=threads, weights_tag=tag, precision=precision)
    if scorer is None:  # pragma: no cover - an entry just written that does not load is a bug
        raise RuntimeError(f"the ONNX export of {weights} was written but cannot be read back from the cache")
    return scorer
