"""The model options the commands share, passed to the scoring layer as they are.

Not a command (main.py imports only the modules it lists). What a spec names, which runtime
and precision run it and on how many threads is decided by
:func:`contentiqa.inference.scorer.load_scorer`, never here: this module only turns flags into
its arguments and its errors into usage errors.
"""
from __future__ import annotations

import argparse
import contextlib
from typing import TYPE_CHECKING, Any, Iterator

from .common import model_spec, user_path
from .main import UsageError

if TYPE_CHECKING:  # torch is imported where a model is loaded, not at CLI start-up (seconds)
    from ..inference.scorer import Scorer
    from ..models.base import IQAModel

PRECISION_HELP = ("fp32 or int8: the ONNX Runtime graph (int8: the CNN quantized with the calibration shipped beside "
                  "the weights); bf16 or fp16: PyTorch autocast (on a GPU: tensor cores, half the memory traffic). "
                  "Default: the model's measured choice, stored with its int8 calibration (benchmarks/results/int8.md), "
                  "fp32 where there is none; bf16 on a CUDA GPU")


def add_scorer_args(p: argparse.ArgumentParser, what: str, onnx_files: bool = True) -> None:
    """--model, --runtime, --onnx-model, --precision (and its old name --autocast), --device,
    --threads: the same flags, meaning the same, for ``score``, ``serve`` and ``explain``
    (``onnx_files=False``: no ONNX file as the model, since heatmaps need the PyTorch one)."""
    files = ", checkpoint file (.pt) or ONNX file (.onnx)" if onnx_files else " or checkpoint file (.pt)"
    p.add_argument("--model", "-m", default=None, type=model_spec,
                   help=f"registered model name[.tag]{files} (default: contentiqa.DEFAULT_MODEL with its shipped "
                        "weights); a bare word is always a name: write ./NAME for a file called NAME")
    p.add_argument("--runtime", choices=("auto", "torch", "onnx"), default="auto",
                   help="auto (default): ONNX Runtime on the CPU (the graph shipped with the model, or exported to "
                        "the cache on first use; PyTorch if it cannot be exported), PyTorch on a GPU. torch / onnx "
                        f"force one{what}")
    if onnx_files:
        p.add_argument("--onnx-model", type=user_path, metavar="FILE", default=None,
                       help="an ONNX file from `contentiqa export` (the "
                       "same as --model FILE.onnx); its metadata give the preprocessing and scale")
    else:
        p.set_defaults(onnx_model=None)
    p.add_argument("--precision", choices=("fp32", "int8", "bf16", "fp16"), default=None, help=PRECISION_HELP)
    p.add_argument("--autocast", choices=("auto", "bf16", "fp16", "off"), default=None,
                   help=argparse.SUPPRESS)  # the old name of --precision bf16 / fp16 (off: fp32)
    p.add_argument("--device", default="cpu", help="torch device (default cpu; cuda runs PyTorch)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="compute threads for the model (default: ONNX Runtime one per core not busy with other "
                        "processes, of the cores this process may use and at most $OMP_NUM_THREADS; PyTorch its own). "
                        "ONNX Runtime with 8 or more inputs scores that many photos at once, one thread each")


def scorer_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The :func:`~contentiqa.inference.scorer.load_scorer` arguments of the flags above,
    checked for contradictions (before any work: no torch, no model)."""
    from ..inference.scorer import check_options, choose_runtime
    from ..utils.extras import require

    check_threads(args.threads)
    precision = args.precision
    if args.autocast not in (None, "auto"):
        alias = {"bf16": "bf16", "fp16": "fp16", "off": "fp32"}[args.autocast]
        if precision is not None and precision != alias:
            raise UsageError(f"--autocast {args.autocast} is --precision {alias}: give one of them")
        precision = alias
    spec = args.model
    if args.onnx_model is not None:
        if args.model is not None and args.model != args.onnx_model:
            raise UsageError("--onnx-model FILE is --model FILE: give one of them")
        if not str(args.onnx_model).lower().endswith(".onnx"):
            raise UsageError(f"--onnx-model {args.onnx_model}: expected an .onnx file from `contentiqa export`")
        spec = args.onnx_model
    kwargs = dict(spec=spec, runtime=args.runtime, precision=precision, device=str(args.device), threads=args.threads)
    with usage_errors():
        check_options(kwargs["runtime"], precision, kwargs["device"])
    if choose_runtime(kwargs["runtime"], precision, kwargs["device"]) == "torch":  # before any folder is made
        asked = ("--runtime torch" if kwargs["runtime"] == "torch" else
                 f"--precision {precision}" if precision in ("bf16", "fp16") else f"--device {kwargs['device']}")
        require("torch", f"scoring with {asked}")
        from ..utils.devices import resolve_device

        with usage_errors():  # a GPU that is not here: said before any output folder is made
            resolve_device(kwargs["device"])
    check_model_named(spec)
    return kwargs


def check_threads(threads: int | None) -> None:
    """--threads within what a machine can run (the library's rule), said before any work."""
    from ..inference.threads import check_thread_count

    with usage_errors():
        check_thread_count(threads, "--threads")


def check_model_named(spec: str | None) -> None:
    """A misspelt model name or a missing model file, said before a command makes its output
    folders or does any work (torch-free: the name's weights file is only looked up)."""
    from .. import DEFAULT_MODEL
    from ..models.registry import weights_file

    with usage_errors():
        weights_file(spec or DEFAULT_MODEL)


@contextlib.contextmanager
def usage_errors(prefix: str = "") -> Iterator[None]:
    """What a user can cause while a model loads (unknown name, missing file, contradicting
    options, a missing extra) as a one-line :class:`UsageError`."""
    from ..utils.extras import ExtraMissing

    try:
        yield
    except (ValueError, FileNotFoundError, ExtraMissing) as exc:
        raise UsageError(f"{prefix}{exc}") from None


def load_scorer(kwargs: dict[str, Any], notes: list[str] | None = None, **more: Any) -> Scorer:
    """:func:`~contentiqa.inference.scorer.load_scorer` with usage errors."""
    from ..inference import scorer

    with usage_errors():
        return scorer.load_scorer(kwargs["spec"], runtime=kwargs["runtime"], precision=kwargs["precision"],
                                  device=kwargs["device"], threads=kwargs["threads"], notes=notes, **more)


def load_model(spec: str | None, device: Any = "cpu") -> IQAModel:
    """The PyTorch model of ``spec`` (training, Grad-CAM, export) with usage errors."""
    from ..inference import scorer

    with usage_errors():
        return scorer.load_model(spec, device)


def heatmap_model(scorer: Scorer, kwargs: dict[str, Any]) -> IQAModel:
    """The PyTorch model Grad-CAM runs on beside ``scorer`` (heatmaps need its gradients): the
    scorer's own model when it runs in PyTorch (one copy of the weights in memory), else the
    model of the same spec, loaded with :func:`load_model`'s usage errors (no PyTorch, an ONNX file)."""
    from ..utils.extras import have

    if have("torch"):
        from ..inference.torch_runtime import TorchScorer

        if isinstance(scorer, TorchScorer):
            return scorer.model
    return load_model(kwargs["spec"], kwargs["device"])
