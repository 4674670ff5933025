"""Bring a GPU run's trained models back under the lent machine's return limit, and put them
together again here (benchmarks/gpu/README.md).

    python benchmarks/gpu/collect.py slim RUNS --rows "ROW A;ROW B" --out $OUT     # there
    python benchmarks/gpu/collect.py join FILES_AT --runs ../runs/NAME             # here
    python benchmarks/gpu/collect.py slim RUNS --rows "START" --name best.pt --out .gpu/cN/init   # a start, there-bound

``slim`` rewrites each seed's ``tested.pt`` without the tensors identical to the pip-installed
ImageNet weights (what shipped weights leave out too: they are re-created at load time, so the
model is the same), tars them and cuts the tar into pieces of at most 15 MiB. With ``--name
best.pt``, a row trained here whose weights a GPU row starts from (``init_from``) travels the
other way, in a chunk: ``join`` there puts it where the row looks for it. ``join`` puts
the pieces together, unpacks ``metrics.tgz`` and the models into the results folder, where
``contentiqa experiment CONFIG --out RUNS --table-only`` writes the table and
``benchmarks/ship_gate.py`` finds ``runs/<row>/seed<N>/tested.pt``. A checkpoint is read as data
(never unpickled as code), as everywhere else.
"""
from __future__ import annotations

import argparse
import io
import tarfile
import tempfile
from pathlib import Path

PIECE = 15 * 2**20


def slim(runs: Path, rows: list[str], out: Path, name: str = "tested.pt") -> None:
    from contentiqa.experiments.config import slugify
    from contentiqa.models import load_checkpoint
    from contentiqa.models.registry import save_checkpoint

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar, tempfile.TemporaryDirectory() as tmp:
        for row in rows:
            found = sorted((runs / "runs" / slugify(row)).glob(f"seed*/{name}"))
            if not found:  # an empty piece would travel, and the GPU row fail only at its init_from
                raise SystemExit(f"{runs / 'runs' / slugify(row)}: no seed*/{name} (row {row!r} not trained there?)")
            print(f"{row}: {', '.join(t.parent.name for t in found)}")
            for tested in found:
                model = load_checkpoint(tested)
                extra = {k: v for k, v in model.checkpoint_info.items() if k not in ("path", "file_sha256")}
                small = save_checkpoint(model, Path(tmp) / "t.pt", extra=extra, omit_pretrained_backbone=True)
                tar.add(small, arcname=str(tested.relative_to(runs)))
    data = buf.getvalue()
    out.mkdir(parents=True, exist_ok=True)
    for i in range(0, len(data), PIECE):
        (out / f"weights.tar.{i // PIECE:02d}").write_bytes(data[i:i + PIECE])
    print(f"{len(data) / 1e6:.1f} MB of models in {-(-len(data) // PIECE)} piece(s)")


def join(files: Path, runs: Path) -> None:
    pieces = sorted(files.glob("weights.tar.[0-9][0-9]"))
    if not (files / "metrics.tgz").is_file() and not pieces:
        raise SystemExit(f"{files}: no metrics.tgz and no weights.tar.NN pieces (a call that ran out of time brings "
                         "back partial.tgz only: its logs say how far it got)")
    runs.mkdir(parents=True, exist_ok=True)
    if (files / "metrics.tgz").is_file():
        with tarfile.open(files / "metrics.tgz") as tar:
            # the GPU's own table lists only the rows it ran: this folder's is rebuilt with --table-only
            tar.extractall(runs, members=[m for m in tar.getmembers()
                                          if m.name not in ("results.json", "results.md")], filter="data")
    if pieces:
        data = b"".join(p.read_bytes() for p in pieces)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(runs, filter="data")
            print("\n".join(str(runs / m.name) for m in tar.getmembers() if m.isfile()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("slim")
    s.add_argument("runs", type=Path)
    s.add_argument("--rows", required=True, help="row names separated by ';'")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--name", default="tested.pt", help="which checkpoint of each seed (best.pt: a start for init_from)")
    j = sub.add_parser("join")
    j.add_argument("files", type=Path)
    j.add_argument("--runs", type=Path, required=True)
    args = ap.parse_args()
    if args.cmd == "slim":
        slim(args.runs, [r for r in args.rows.split(";") if r], args.out, args.name)
    else:
        join(args.files, args.runs)


if __name__ == "__main__":
    main()
