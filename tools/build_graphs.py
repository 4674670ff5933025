#!/usr/bin/env python
"""Build the ONNX graphs shipped inside the package, so a torch-free install scores every shipped tag.

For every ``name.tag`` whose weights ship (``contentiqa.models.registry.list_pretrained``) this
writes, beside its ``.pt`` in ``src/contentiqa/weights/``:

- ``<stem>.onnx``: the fp32 export (checked against PyTorch within 1e-3 at export);
- ``<stem>.int8.onnx``: only where int8 is the tag's default precision (its shipped calibration
  ``<stem>.int8.json`` says ``default_precision: int8``), quantized from that fp32 graph with it.

Each graph carries the key of its weights file (:func:`contentiqa.inference.onnx_runtime.weights_cache_key`
without the version), so a graph left over from replaced weights is never used; graphs of tags
or precisions no longer shipped are removed.

Size: the graphs keep their weights, exact fp32, in one shared file, ``graphs.bin`` (ONNX external
data): a tensor several graphs hold (the frozen ImageNet backbones most tags share) is stored once,
which took the graphs from 96 to 64 MB when it was written. A graph file is then the network and
where its tensors lie in ``graphs.bin``; ONNX Runtime reads them from there (a standalone file for
use elsewhere: ``contentiqa export``). Every graph is rebuilt together, so the shared file always
matches them. Rerun it whenever weights or calibrations change:

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


SHARED = "graphs.bin"
"""The file beside the graphs that holds their tensors."""
ALIGN = 64
"""Tensors start at multiples of this many bytes in :data:`SHARED`."""
SMALLEST_SHARED = 1024
"""Smaller tensors stay inside their graph (a shared copy saves nothing there)."""


def build(spec: str, weights: Path, precision: str, graph: Path, fp32: Path | None = None) -> None:
    """Write the self-contained ``precision`` graph of ``spec`` to ``graph`` (int8: quantized from
    the fp32 graph ``fp32``)."""
    from contentiqa.inference.onnx import export_onnx
    from contentiqa.inference.onnx_runtime import FINGERPRINT_KEY, weights_cache_key
    from contentiqa.inference.quantize import quantize_for_weights
    from contentiqa.models.registry import create_model

    meta = {FINGERPRINT_KEY: weights_cache_key(weights, precision=precision, versioned=False),
            "source_checkpoint": weights.name}  # not the builder's path
    if precision == "fp32":
        export_onnx(create_model(spec), graph, extra_metadata=meta)
    else:
        assert fp32 is not None
        quantize_for_weights(fp32, graph, weights, extra_metadata=meta)


def share_tensors(graphs: list[Path], folder: Path) -> Path:
    """Write ``graphs`` (self-contained, in this order) into ``folder`` with their tensors in one
    shared file, each distinct tensor once (same type, shape and bytes); returns that file."""
    import hashlib

    import onnx

    blob = bytearray()
    where: dict[str, tuple[int, int]] = {}
    protos = []
    for graph in graphs:
        proto = onnx.load(str(graph))
        for t in proto.graph.initializer:
            raw = t.raw_data
            if len(raw) < SMALLEST_SHARED:
                continue
            key = hashlib.sha256(f"{t.data_type}|{list(t.dims)}|".encode() + raw).hexdigest()
            if key not in where:
                offset = -len(blob) % ALIGN + len(blob)
                blob.extend(bytes(offset - len(blob)) + raw)
                where[key] = (offset, len(raw))
            offset, length = where[key]
            t.ClearField("raw_data")
            t.data_location = onnx.TensorProto.EXTERNAL
            del t.external_data[:]
            for k, v in (("location", SHARED), ("offset", str(offset)), ("length", str(length))):
                entry = t.external_data.add()
                entry.key, entry.value = k, v
        protos.append((graph.name, proto))
    shared = folder / SHARED
    shared.write_bytes(bytes(blob))
    for name, proto in protos:
        onnx.save(proto, str(folder / name))
    return shared


def main(argv: list[str] | None = None) -> int:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only say which graphs are missing or stale (exit 1 if any)")
    args = ap.parse_args(argv)
    wanted = wanted_graphs()
    order = sorted(wanted, key=lambda g: (wanted[g][2] != "fp32", g.name))  # fp32 first: int8 is made from it
    folder = order[0].parent
    if args.check:
        problems = [f"{g.name}: {why}" for g in order if (why := stale(g, *wanted[g][1:])) is not None]
        problems += [f"{extra.name}: no shipped tag uses it" for extra in sorted(folder.glob("*.onnx"))
                     if extra not in wanted]
        for line in problems:
            print(line, file=sys.stderr)
        return 1 if problems else 0
    with tempfile.TemporaryDirectory(prefix="contentiqa-graphs-") as tmp:
        built = []
        for graph in order:
            spec, weights, precision = wanted[graph]
            fp32 = Path(tmp) / graph.name.replace(f".{precision}.onnx", ".onnx")
            build(spec, weights, precision, Path(tmp) / graph.name, fp32=fp32)
            built.append(Path(tmp) / graph.name)
            print(f"{graph.name}: {spec} {precision}, {built[-1].stat().st_size / 2**20:.1f} MiB on its own")
        for extra in sorted(folder.glob("*.onnx")):
            if extra not in wanted:
                extra.unlink()
                print(f"{extra.name}: removed (no shipped tag uses it)")
        shared = share_tensors(built, folder)
    for path in [*order, shared]:
        path.chmod(0o644)  # package files (the export writes private temporary files)
    total = sum(p.stat().st_size for p in [*order, shared]) / 2**20
    print(f"{shared.name}: the graphs' tensors, each once; {len(order)} graphs, {total:.1f} MiB in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
