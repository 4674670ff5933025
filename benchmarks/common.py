"""Shared plumbing of the benchmarks: where the real data is, the fixed splits, result files."""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import shlex
import sys
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CACHE = ROOT / "benchmarks" / "cache"
SHARED = Path(os.environ.get("CONTENTIQA_SHARED", ROOT.parent / "shared"))
CLIVE_CSV = SHARED / "data" / "clive-dev" / "scores.csv"
BENCH_LOCK = "/tmp/contentiqa-bench.lock"
"""One timing job at a time on a machine: the benchmarks that time hold this file's lock (the
same file a shell's `flock /tmp/contentiqa-bench.lock CMD` takes, so do not wrap them in it)."""


@contextmanager
def bench_lock():
    """Hold the machine's benchmark lock while timing (saying so when another benchmark holds it)."""
    with open(BENCH_LOCK, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for {BENCH_LOCK}: another benchmark is timing", file=sys.stderr, flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def results_name(name: str, parser, args, ignore: tuple[str, ...] = ()) -> str:
    """``name`` for a run with every option at its default (the published measurement), else
    ``name_quick``: a check run, another model or fewer photos never write over the published
    figures (which benchmarks/docs.py copies into the README)."""
    changed = [a.dest for a in parser._actions
               if a.dest not in ("help", *ignore) and a.default is not argparse.SUPPRESS
               and getattr(args, a.dest, a.default) != a.default]
    if changed:
        print(f"not the published settings ({', '.join(changed)}): results go to {name}_quick", flush=True)
    return f"{name}_quick" if changed else name


def positive_int(text: str) -> int:
    """An argparse ``type`` for a count of photos, runs or rounds: 0 was a traceback (a median
    of nothing) after the setup work."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def check_models(parser, names) -> None:
    """The parser's usage error for a model name or tag nothing is registered under (a checkpoint
    path is the script's to open): said before any work, not as a traceback after it."""
    from contentiqa.models.registry import is_path_spec, resolve_tag

    for name in names:
        if name and not is_path_spec(name):
            try:
                resolve_tag(name)
            except ValueError as exc:
                parser.error(str(exc))


def results_stem(parser, args, dest: str, ignore: tuple[str, ...] = ()) -> str:
    """The results file of a script whose option ``dest`` names it: the name given there when it
    is given (a deliberate record, e.g. backbone_probe_levels6), else :func:`results_name` of its
    default: a check run of the published settings' file writes ``_quick`` beside it."""
    name = getattr(args, dest)
    if name != parser.get_default(dest):  # (a --quick check of a named record still writes beside it)
        return f"{name}_quick" if getattr(args, "quick", False) else name
    return results_name(name, parser, args, ignore=(dest, *ignore))


def _source_state() -> dict:
    """The commit and the changed source files (results files left out) of this checkout now."""
    import subprocess

    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = [line[3:] for line in git("status", "--porcelain").splitlines()
               if not line[3:].startswith(("benchmarks/results/", "benchmarks/runs/", "benchmarks/cache/"))]
    return {"commit": git("rev-parse", "HEAD").strip() or None, "changed_files": sorted(changed)}


_STARTED = _source_state()
"""The source this run started from: results files record whether it changed before they were
written (a long benchmark may outlive a commit, and its early steps ran the older code)."""


PYCACHE = Path(os.environ.get("CONTENTIQA_BENCH_PYCACHE", Path.home() / ".cache" / "contentiqa-bench-pycache"))


def contentiqa_env(**extra: str) -> dict[str, str]:
    """The environment of a contentiqa command a benchmark times: this checkout's ``src`` first,
    and Python's bytecode cached (in a private folder, :data:`PYCACHE`), as an installed package
    has it compiled by pip, even where PYTHONDONTWRITEBYTECODE is set: that would recompile every
    contentiqa module on every run (~50 ms of each start-up here), a cost no user pays."""
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def require_clive() -> Path:
    if not CLIVE_CSV.is_file():
        sys.exit(f"benchmark skipped: real CLIVE data not found at {CLIVE_CSV} (set CONTENTIQA_SHARED)")
    return CLIVE_CSV


def clive_table():
    """clive-dev's scores.csv with absolute image paths and, where scene_labels.csv lies beside
    it, people's scene labels joined (``category``: the main one, ``categories``: all)."""
    import pandas as pd

    from contentiqa.data.labels import join_labels

    csv = require_clive()
    table = pd.read_csv(csv)
    table["image"] = [str(csv.parent / p) for p in table["image"]]
    labels = csv.parent / "scene_labels.csv"
    return join_labels(table, labels, csv.parent) if labels.is_file() else table


def clive_splits(protocol: str, seeds, table):
    """The benchmark splits, made once per protocol and saved beside the results; seeds the
    published file lacks (a check run's) are saved under benchmarks/cache, never over it."""
    from contentiqa.data import load_splits, make_split_set, save_splits

    path = RESULTS / f"splits_clive_{protocol}.json"
    seeds = list(seeds)
    if path.is_file():
        splits = {s.seed: s for s in load_splits(path)}
        if all(s in splits for s in seeds):
            return [splits[s] for s in seeds], path
        import hashlib

        path = CACHE / f"splits_clive_{protocol}_{hashlib.sha1(repr(seeds).encode()).hexdigest()[:12]}.json"
    splits = make_split_set(table, protocol, seeds=seeds)
    save_splits(splits, path)
    return splits, path


def command_line() -> str:
    """How this script was run, for the results file (every argument, as typed)."""
    return shlex.join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])


def provenance() -> dict:
    """The package's provenance record (version, git commit, torch, machine, GPU, date, command)."""
    from contentiqa.experiments import provenance as package_provenance

    return package_provenance()


def write_results(name: str, payload: dict, markdown: str) -> None:
    from contentiqa.utils.io import atomic_write_text

    now = _source_state()
    source = {"at_start": _STARTED, "at_end": now} if _STARTED != now else now
    if _STARTED != now:
        print(f"warning: the source changed while {name} ran (commit or files); the results say so", file=sys.stderr)
    payload = {**payload, "provenance": {**provenance(), "source": source}}
    atomic_write_text(RESULTS / f"{name}.json", json.dumps(payload, indent=1))
    atomic_write_text(RESULTS / f"{name}.md", markdown)
    print(markdown)


def save_npz(path: Path, **arrays) -> None:
    """``np.savez`` made atomic: a run stopped while writing a feature cache leaves no half file."""
    import numpy as np

    from contentiqa.utils.io import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:  # a file object: np.savez would add ".npz" to the temporary name
            np.savez(fh, **arrays)

    atomic_write(path, write)


def md_table(header: list[str], rows: list[list]) -> str:
    # imported when called: importing contentiqa imports torch, which speed.py must configure first
    from contentiqa.experiments.runner import md_table as _md

    return _md(header, rows)


def floor_note() -> str:
    """The floor (benchmarks/floor.py: frozen Lite0 features + ridge) as a line under a table."""
    path = RESULTS / "floor.json"
    if not path.is_file():
        return ""
    from contentiqa.metrics import format_mean_std

    floor = json.loads(path.read_text())
    f = format_mean_std(floor["summary"])
    return (f"Floor for reference (benchmarks/results/floor.md: frozen lite0 GAP + ridge, IQA-CR splits, "
            f"{floor['summary']['srocc']['n']} seeds): PLCC {f['plcc']}, SROCC {f['srocc']}, RMSE {f['rmse']}.\n")


def run_config_benchmark(default_config: Path, default_results: str, doc: str, argv: list[str] | None = None) -> int:
    """A benchmark that trains models is an experiment config run by the package's runner (the
    code path of ``contentiqa experiment``): run it (finished splits are read back, an
    interrupted one resumes), copy its results table and JSON to benchmarks/results/NAME.{md,json}
    with the floor for reference, and optionally ship one row (benchmarks/ship.py)."""
    import argparse

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", nargs="?", type=Path, default=default_config, help=f"experiment config (default {default_config})")
    ap.add_argument("--results", default=default_results, help="results file stem under benchmarks/results")
    ap.add_argument("--out", type=Path, default=None, help="the experiment's folder (default benchmarks/runs/<config name>)")
    ap.add_argument("--only", action="append", default=None, metavar="ROW", help="train only this row (repeatable)")
    ap.add_argument("--device", default=None, help="torch device for every run (cpu, cuda)")
    ap.add_argument("--ship", default=None, metavar="ROW", help="then train ROW on all the data and ship it")
    ap.add_argument("--tag", default="clive", help="weights tag of --ship (default clive)")
    ap.add_argument("--weights-dir", type=Path, default=None, help="where --ship writes (default: the package's weights)")
    ap.add_argument("--override-gate", action="store_true",
                    help="--ship over a model's default tag although the ship gate did not pass the row")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)

    from contentiqa.experiments import load_config, run_experiment
    from contentiqa.experiments.runner import default_out_dir

    cfg = load_config(args.config)
    gate = weights_dir = None
    if args.ship:  # before hours of training: a row that may not be shipped there is said now
        from ship import WEIGHTS, gate_for, ship_row

        run = next((r for r in cfg.runs if r.name == args.ship), None)
        if run is None:
            raise SystemExit(f"{args.config}: no row {args.ship!r} to --ship; rows: {[r.name for r in cfg.runs]}")
        weights_dir = args.weights_dir or WEIGHTS
        gate = gate_for(run.model, args.ship, args.tag, weights_dir, default=False, override=args.override_gate,
                        recipe=run.recipe_sha256, data=cfg.data_sha256)
    out = args.out or ROOT / "benchmarks" / "runs" / default_out_dir(cfg).name
    from contentiqa.experiments import ConfigError

    try:
        result = run_experiment(cfg, out, progress=not args.quiet, device=args.device, only=args.only)
    except ConfigError as exc:  # as `contentiqa experiment` says it: one line (a device not here, a data mistake)
        raise SystemExit(f"{Path(sys.argv[0]).name}: {exc}") from None
    if not result.ran:
        print("benchmark skipped: " + "; ".join(result.skipped), file=sys.stderr)
        return 1
    payload = json.loads((out / "results.json").read_text())
    md = result.markdown + "\n" + floor_note() + f"\nCommand: `{command_line()}`\n"
    # (another config, or --only some rows, is a check run's: its table would replace the published one)
    name = results_stem(ap, args, "results", ignore=("out", "device", "ship", "tag", "weights_dir", "override_gate", "quiet"))
    write_results(name, {**payload, "experiment_dir": str(out)}, md)
    if args.ship:
        ship_row(args.config, args.ship, args.tag, results=RESULTS / f"{name}.json",  # the figures just written
                 weights_dir=weights_dir, work_dir=out / "ship" / args.tag, gate=gate)
    return 0
