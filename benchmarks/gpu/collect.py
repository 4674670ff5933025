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
import json
import os
import re
import shutil
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
            # finished splits only: best.pt exists from a split's first epoch, and an interrupted
            # one would travel as a GPU row's start
            found = sorted(t for t in (runs / "runs" / slugify(row)).glob(f"seed*/{name}")
                           if (runs / "metrics" / slugify(row) / f"{t.parent.name}.json").is_file())
            if not found:  # an empty piece would travel, and the GPU row fail only at its init_from
                raise SystemExit(f"{runs / 'runs' / slugify(row)}: no finished seed*/{name} (row {row!r} not trained "
                                 "there, or its splits not finished: metrics/<row>/seed<N>.json)")
            print(f"{row}: {', '.join(t.parent.name for t in found)}")
            for tested in found:
                model = load_checkpoint(tested)
                extra = {k: v for k, v in model.checkpoint_info.items() if k not in ("path", "file_sha256")}
                small = save_checkpoint(model, Path(tmp) / "t.pt", extra=extra, omit_pretrained_backbone=True)
                tar.add(small, arcname=str(tested.relative_to(runs)))
    data = buf.getvalue()
    out.mkdir(parents=True, exist_ok=True)
    for i in range(0, len(data), PIECE):
        piece = out / f"weights.tar.{i // PIECE:02d}"
        (out / f".{piece.name}.tmp").write_bytes(data[i:i + PIECE])
        os.replace(out / f".{piece.name}.tmp", piece)  # a piece is whole or absent
    print(f"{len(data) / 1e6:.1f} MB of models in {-(-len(data) // PIECE)} piece(s)")


SPLIT_FILE = re.compile(r"(?:metrics/([^/]+)/(seed\d+)\.json|runs/([^/]+)/(seed\d+)/.+)")
"""A file of one split in a results folder: its metrics, or a file of its run folder."""


def join(files: Path, runs: Path, replace: bool = False) -> None:
    """Unpack a GPU run's files into ``runs``, keeping the splits ``runs`` has finished (unless
    ``replace``): the table and the models ship_gate scores would otherwise come from two
    trainings. Everything is read in full first and moved into place file by file."""
    pieces = sorted(files.glob("weights.tar.[0-9][0-9]"))
    if not (files / "metrics.tgz").is_file() and not pieces:
        raise SystemExit(f"{files}: no metrics.tgz and no weights.tar.NN pieces (a call that ran out of time brings "
                         "back partial.tgz only: its logs say how far it got)")
    if [int(p.name[-2:]) for p in pieces] != list(range(len(pieces))):
        raise SystemExit(f"{files}: weights.tar pieces {[p.name[-2:] for p in pieces]} are not 00..NN: fetch the "
                         "missing ones again")
    if runs.exists() and not runs.is_dir():
        raise SystemExit(f"--runs {runs} is a file, not a results folder")
    runs.mkdir(parents=True, exist_ok=True)
    finished = {(p.parent.name, p.stem) for p in runs.glob("metrics/*/seed*.json")}
    with tempfile.TemporaryDirectory(dir=runs, prefix=".join-") as tmp:
        try:
            if (files / "metrics.tgz").is_file():
                with tarfile.open(files / "metrics.tgz") as tar:
                    names = tar.getnames()
                    if "results.json" in names:  # the experiment it belongs to
                        theirs = json.load(tar.extractfile("results.json")).get("name")
                        ours = _experiment_name(runs)
                        if theirs and ours and theirs != ours:
                            raise SystemExit(f"{files / 'metrics.tgz'} is experiment {theirs!r}'s; {runs} holds {ours!r}")
                    # the GPU's own table lists only the rows it ran: this folder's is rebuilt with --table-only
                    tar.extractall(tmp, members=[m for m in tar.getmembers()
                                                 if m.name not in ("results.json", "results.md")], filter="data")
            if pieces:
                with tarfile.open(fileobj=io.BytesIO(b"".join(p.read_bytes() for p in pieces))) as tar:
                    tar.extractall(tmp, filter="data")
        except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
            raise SystemExit(f"{files}: a damaged or incomplete archive ({type(exc).__name__}: {exc}); fetch it "
                             "again. Nothing was put in place") from None
        placed = {}
        for src in sorted(p for p in Path(tmp).rglob("*") if p.is_file()):
            m = SPLIT_FILE.fullmatch(src.relative_to(tmp).as_posix())
            placed[src] = m and ((m[1], m[2]) if m[1] else (m[3], m[4]))
        for row, seed in {s for s in placed.values() if s} - (set() if replace else finished):
            # the split becomes the archive's whole: none of this folder's files of it stay beside
            # (its metrics beside another training's models, or an interrupted best.pt counted finished)
            shutil.rmtree(runs / "runs" / row / seed, ignore_errors=True)
            (runs / "metrics" / row / f"{seed}.json").unlink(missing_ok=True)
        for src, split in placed.items():
            name = src.relative_to(tmp).as_posix()
            if split in finished and not replace:
                print(f"kept {runs / name}: split {split[1]} of {split[0]} is finished here (--replace to take the GPU's)")
                continue
            (runs / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, runs / name)
            print(runs / name)


def _experiment_name(runs: Path) -> str | None:
    """The experiment a results folder holds, as its results.json names it (None: none yet)."""
    try:
        return json.loads((runs / "results.json").read_text()).get("name")
    except (OSError, ValueError):
        return None


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
    j.add_argument("--replace", action="store_true", help="take the GPU's files of splits finished here too")
    args = ap.parse_args()
    if args.cmd == "slim":
        slim(args.runs, [r for r in args.rows.split(";") if r], args.out, args.name)
    else:
        join(args.files, args.runs, args.replace)


if __name__ == "__main__":
    main()
