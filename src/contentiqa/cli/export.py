"""``contentiqa export MODEL --format onnx --out model.onnx``: write a model as an ONNX file.

MODEL is a registered name (with its shipped weights) or a checkpoint file. Needs PyTorch
(pip install 'contentiqa[torch]'): every shipped model's graph already ships with the package. The file takes a
normalised image batch (dynamic batch; dynamic height and width for native-resolution models
such as IQA-CR) and returns the normalised score (and the content logits when the model has
a content head); its metadata hold the scale, categories, mean/std and input size, and say how
`contentiqa score` reads and resizes a photo, so `contentiqa score --model FILE.onnx` or any
ONNX Runtime user needs nothing else. The export
is checked against PyTorch in ONNX Runtime before the file is written.

--precision int8 writes the graph `contentiqa score --precision int8` runs: the fp32 export with
its CNN quantized to int8 (static, per-channel), from the activation ranges calibrated on photos
and shipped beside the weights (<weights>.int8.json); the file's metadata say precision int8.

Exit code: 0 written, 2 usage error (or a model that cannot be exported, with the reason).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .common import user_path
from .main import UsageError

FORMATS = ("onnx",)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a model to ONNX (dynamic batch and image size; metadata for standalone use)",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", nargs="?", metavar="MODEL", help="registered model name or checkpoint file (.pt)")
    p.add_argument("--format", "-f", default="onnx", help="output format (only 'onnx')")
    p.add_argument("--out", "-o", type=user_path, metavar="FILE", help="where to write the exported model (e.g. model.onnx)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    p.add_argument("--precision", choices=("fp32", "int8"), default="fp32",
                   help="fp32 (default) or int8: the CNN quantized with the calibration shipped beside the weights "
                        "(what `score --precision int8` runs; benchmarks/results/int8.md has its speed and accuracy)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the check of ONNX Runtime against PyTorch (then onnxruntime is not needed)")
    p.add_argument("--force", action="store_true", help="replace an existing --out (without it, an existing file is an error)")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ._model_loading import load_model

    if not args.model:
        raise UsageError("no MODEL given: name a registered model (see `contentiqa models`) or a checkpoint .pt")
    fmt = str(args.format).lower()
    if fmt not in FORMATS:
        raise UsageError(f"--format {args.format!r} is not supported; use one of: {', '.join(FORMATS)}")
    if not args.out:
        raise UsageError("--out FILE is required (e.g. --out model.onnx)")
    out = Path(args.out)
    if out.is_dir() or str(args.out).endswith(("/", os.sep)):
        raise UsageError(f"--out {args.out} is a folder; give a file name such as model.onnx")
    if out.suffix.lower() != ".onnx":  # what `--model FILE` reads as a graph, not a checkpoint
        raise UsageError(f"--out {args.out}: name an .onnx file (e.g. model.onnx), so that `--model` reads it as a graph")
    if args.opset is not None and not 13 <= args.opset <= 21:
        raise UsageError("--opset must be between 13 and 21")
    if out.exists() and not args.force:  # another export (an int8 graph, weights since gone) is not lost
        raise UsageError(f"--out {args.out} exists: pass --force to replace it, or name another file")
    from ._output import check_writable

    # The model first: a mistyped name or a missing file is said as such (an int8 export blamed a
    # missing calibration), and leaves no --out folder made for nothing.
    model = load_model(args.model, "cpu")
    from ..inference.quantize import calibration_path
    from ..models.registry import weights_file

    source = weights_file(args.model)[0]
    # an --out that is (a link to) the weights it reads: one slip, and --force replaced them
    # (realpath: resolve() raises on a link loop)
    target = os.path.realpath(out)
    if target in (os.path.realpath(source), os.path.realpath(calibration_path(source))):
        what = source if target == os.path.realpath(source) else f"the int8 calibration of {source}"
        raise UsageError(f"--out {args.out} is {what}, which this export reads: name another file")
    weights = None
    if args.precision == "int8":
        weights = source
        if not calibration_path(weights).is_file():
            raise UsageError(f"--precision int8: no int8 calibration for {args.model} (expected "
                             f"{calibration_path(weights)}); make one with "
                             "contentiqa.inference.quantize.write_calibration, or export fp32")
    check_writable(out, "--out")  # before the export's work

    from ..inference.onnx import DEFAULT_OPSET, OnnxExportError, export_onnx
    from ..inference.onnx_runtime import read_metadata
    from ..utils.extras import ExtraMissing
    from ._output import output_lock, terminate_as_interrupt

    try:
        # a SIGTERM unwinds the write (its temporary removed); the lock makes a killed export's
        # temporary, a file the model's size, safe to remove
        with terminate_as_interrupt(), output_lock(out, "--out"):
            if weights is None:
                path = export_onnx(model, out, opset=args.opset or DEFAULT_OPSET, verify=not args.no_verify)
            else:
                path = _export_int8(model, weights, out, args.opset or DEFAULT_OPSET, not args.no_verify)
    except ExtraMissing as exc:
        raise UsageError(str(exc)) from None
    except OnnxExportError as exc:
        raise UsageError(f"cannot export {args.model}: {exc}") from None
    except OSError as exc:
        raise UsageError(f"cannot write --out {out}: {exc.strerror or exc}") from None
    if not args.quiet:
        size_mb = path.stat().st_size / 2**20
        dims = "batch x 3 x height x width" if model.native_resolution else "batch x 3 x {0} x {1}".format(*model.fixed_input_size)
        line = f"wrote {path} ({size_mb:.1f} MB): {model.model_name}, input 'image' [{dims}]"
        try:
            meta = read_metadata(path)
            line += f", outputs {', '.join(json.loads(meta['outputs']))}"
            if meta.get("precision"):
                line += f"; precision {meta['precision']}"
            if "verified_max_abs_diff" in meta:
                line += f"; max |ONNX Runtime - PyTorch| = {meta['verified_max_abs_diff']}"
        except Exception:  # onnxruntime missing with --no-verify: the file is written all the same
            pass
        print(line, file=sys.stdout)
    return 0


def _export_int8(model, weights: Path, out: Path, opset: int, verify: bool) -> Path:
    """The fp32 export (checked against PyTorch), quantized with the calibration beside ``weights``."""
    import tempfile

    from ..inference.onnx import READING_METADATA, export_onnx, onnx_metadata
    from ..inference.onnx_runtime import DEFAULT_OPSET, find_graph_file, read_metadata
    from ..inference.quantize import QuantizationError, quantize_for_weights

    with tempfile.TemporaryDirectory(prefix="contentiqa-export-") as tmp:
        # The fp32 graph score's int8 is quantized from (shipped or cached), so that the file is
        # the graph `score --precision int8` runs: a fresh export differs in the weights' last
        # bits, which quantization turns into other scores.
        fp32 = find_graph_file(weights) if opset == DEFAULT_OPSET else None
        if fp32 is None:
            fp32 = export_onnx(model, Path(tmp) / "fp32.onnx", opset=opset, verify=verify)
        reading = onnx_metadata(model, json.loads(read_metadata(fp32)["outputs"]))
        try:
            return quantize_for_weights(fp32, out, weights, extra_metadata={k: reading[k] for k in READING_METADATA})
        except QuantizationError as exc:
            raise UsageError(f"--precision int8: {exc}") from None
