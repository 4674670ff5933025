#!/usr/bin/env python
"""Build the ONNX graphs shipped inside the package, so a torch-free install scores every shipped tag.

For every ``name.tag`` whose weights ship (``contentiqa.models.registry.list_pretrained``) this
writes, beside its ``.pt`` in ``src/contentiqa/weights/``:

- ``<stem>.onnx``: the fp32 export (checked against PyTorch within 1e-3 at export);
- ``<stem>.int8.onnx``: only where int8 is the tag's default precision (its shipped calibration
  ``<stem>.int8.json`` says ``default_precision: int8``), quantized from that fp32 graph with it.

Each graph carries the key of its weights file (:func:`contentiqa.inference.onnx_runtime.weights_cache_key`
without the version), so a graph left over from replaced weights is never used; graphs of tags
or precisions no longer shipped are removed. Rerun it whenever weights or calibrations change:

    PYTHONPATH=src python tools/build_graphs.py            # rebuild every graph
    PYTHONPATH=src python tools/build_graphs.py --check    # exit 1 when a graph is missing or stale

tests/test_shipped_graphs.py checks the result against PyTorch.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def wanted_graphs() -> dict[Path, tuple[str, Path, str]]:
    """``graph path -> (name.tag, weights file, precision)`` of every graph that should ship."""
    from contentiqa.inference.onnx_runtime import shipped_graph_path
    from contentiqa.inference.quantize import default_precision
    from contentiqa.models.registry import list_pretrained, shipped_weights_path

    out: dict[Path, tuple[str, Path, str]] = {}
    for spec in list_pretrained():
        weights = shipped_weights_path(spec)
        assert weights is not None
        for precision in ["fp32"] + (["int8"] if default_precision(weights) == "int8" else []):
            out[shipped_graph_path(weights, precision)] = (spec, weights, precision)
    return out


def stale(graph: Path, weights: Path, precision: str) -> str | None:
    """Why ``graph`` cannot be used for ``weights`` (None: it can)."""
    from contentiqa.inference.onnx_runtime import open_cached, weights_cache_key

    if not graph.is_file():
        return "missing"
    if open_cached(graph, weights_cache_key(weights, precision=precision, versioned=False), threads=1) is None:
        return "built from other weights, calibration or export code"
    return None


def build(spec: str, weights: Path, precision: str, graph: Path) -> None:
    from contentiqa.inference.onnx import export_onnx
    from contentiqa.inference.onnx_runtime import FINGERPRINT_KEY, shipped_graph_path, weights_cache_key
    from contentiqa.inference.quantize import quantize_for_weights
    from contentiqa.models.registry import create_model

    meta = {FINGERPRINT_KEY: weights_cache_key(weights, precision=precision, versioned=False),
            "source_checkpoint": weights.name}  # not the builder's path
    if precision == "fp32":
        export_onnx(create_model(spec), graph, extra_metadata=meta)
    else:
        quantize_for_weights(shipped_graph_path(weights, "fp32"), graph, weights, extra_metadata=meta)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only say which graphs are missing or stale (exit 1 if any)")
    args = ap.parse_args(argv)
    wanted = wanted_graphs()
    problems = 0
    for graph, (spec, weights, precision) in sorted(wanted.items(), key=lambda kv: (kv[1][2] != "fp32", kv[0])):
        why = stale(graph, weights, precision)
        if args.check:
            if why is not None:
                print(f"{graph.name}: {why}", file=sys.stderr)
                problems += 1
            continue
        build(spec, weights, precision, graph)
        graph.chmod(0o644)  # a package file (the export writes private temporary files)
        print(f"{graph.name}: {spec} {precision}, {graph.stat().st_size / 2**20:.1f} MiB")
    folder = next(iter(wanted)).parent if wanted else None
    for extra in sorted(folder.glob("*.onnx")) if folder is not None else []:
        if extra not in wanted:
            if args.check:
                print(f"{extra.name}: no shipped tag uses it", file=sys.stderr)
                problems += 1
            else:
                extra.unlink()
                print(f"{extra.name}: removed (no shipped tag uses it)")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
