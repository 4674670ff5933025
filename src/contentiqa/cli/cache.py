"""``contentiqa cache``: what the caches hold, and least-recently-used eviction
(:mod:`contentiqa.utils.disk_cache`). Without a folder it looks at the ONNX export cache; a
training cache (an experiment's ``cache_dir``, default ``OUT/cache``) is named explicitly."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .common import finite_float, size_arg, user_path
from ..utils.terminal import printable
from .main import UsageError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cache", help="list cache folders, and free space by removing least recently used entries",
        description="List what cache folders hold (frozen encodings for training, exported ONNX graphs), "
                    "least recently used first; with --max-size or --older-than, remove entries. "
                    "Without FOLDER: the ONNX export cache ($CONTENTIQA_CACHE_DIR/onnx, default "
                    "~/.cache/contentiqa/onnx). A removed entry is rebuilt when next needed.")
    p.add_argument("folders", nargs="*", metavar="FOLDER", type=user_path,
                   help="cache folder(s): an experiment's cache_dir, a training run's OUT/cache")
    p.add_argument("--max-size", type=size_arg, metavar="SIZE",
                   help="remove least recently used entries until each folder holds at most SIZE (e.g. 40G, 500M; "
                        "binary units: 1K = 1024 bytes)")
    p.add_argument("--older-than", type=finite_float, metavar="DAYS", help="remove entries not used for DAYS days")
    p.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    p.set_defaults(func=run)


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def run(args: argparse.Namespace) -> int:
    from ..utils.disk_cache import PruneIncomplete, entries_word, format_size, prune, scan

    max_bytes = args.max_size
    if args.older_than is not None and args.older_than < 0:
        raise UsageError(f"--older-than: DAYS cannot be negative ({args.older_than:g})")
    pruning = max_bytes is not None or args.older_than is not None
    if args.dry_run and not pruning:
        raise UsageError("--dry-run goes with --max-size or --older-than")
    if args.folders:
        folders = [Path(f) for f in args.folders]
    else:
        from ..inference.onnx_runtime import cache_places

        # the fallback too, where scoring exported while the main folder could not be written
        folders = cache_places()
    status = 0
    for folder in folders:
        shown = printable(str(folder))  # a name's control characters escaped, not sent to the terminal
        if not folder.exists():
            if args.folders:
                print(f"{shown}: no such folder", file=sys.stderr)
                status = 1
            else:
                print(f"{shown}: empty (nothing exported yet)")
            continue
        if not folder.is_dir():
            print(f"{shown}: not a folder", file=sys.stderr)
            status = 1
            continue
        try:
            entries = scan(folder)
        except OSError as exc:
            print(f"{shown}: cannot be read ({exc.strerror or exc})", file=sys.stderr)
            status = 1
            continue
        if pruning:
            try:
                gone = prune(folder, max_bytes=max_bytes,
                             older_than_s=None if args.older_than is None else args.older_than * 86400,
                             dry_run=args.dry_run, entries=entries)
            except PruneIncomplete as exc:  # what was removed is still said
                for e, why in exc.failed:
                    print(f"cannot remove {printable(str(e.path))}: {why.strerror or why}", file=sys.stderr)
                gone, status = exc.removed, 1
            except (ValueError, OSError) as exc:
                print(printable(str(exc)), file=sys.stderr)
                status = 1
                continue
            verb = "would remove" if args.dry_run else "removed"
            for e in gone:
                print(f"{verb} {printable(str(e.path))}  ({format_size(e.bytes)}, last used {_when(e.last_used)})")
            freed = sum(e.bytes for e in gone)
            left = sum(e.bytes for e in entries) - freed
            print(f"{shown}: {verb} {entries_word(len(gone))}, {format_size(freed)}; "
                  f"{format_size(left)} left")
            held = [e for e in entries if e.in_use]
            if held:  # a training filling them: evicting one would lose what it wrote so far
                print(f"{shown}: kept {entries_word(len(held))} in use by a running process "
                      f"({', '.join(printable(e.name) for e in held[:3])}{' …' if len(held) > 3 else ''})")
            continue
        print(f"{shown}: {entries_word(len(entries))}, {format_size(sum(e.bytes for e in entries))}")
        if entries:
            names = [printable(e.name) for e in entries]
            width = max(map(len, names))
            print(f"  {'last used':16s}  {'size':>8s}  {'files':>6s}  {'entry':{width}s}  holds")
            for e, name in zip(entries, names):
                print(f"  {_when(e.last_used):16s}  {format_size(e.bytes):>8s}  {e.files:>6d}  {name:{width}s}  "
                      f"{printable(e.about) if e.known else '(not written by contentiqa)'}"
                      f"{' (in use by a running process)' if e.in_use else ''}")
    return status
