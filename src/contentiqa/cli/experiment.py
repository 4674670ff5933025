"""``contentiqa experiment``: run a results table from a YAML config (see configs/README.md)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Iterable

from .common import size_arg, user_path
from .main import UsageError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "experiment",
        help="train and test every model row of a config on every split; write the mean ± std table",
        description=(
            "Run an experiment config: each run (model + settings) is trained on every split of the "
            "training data (protocol + seeds) and tested on the split's test part and/or other datasets "
            "(cross-dataset). Finished splits are skipped and interrupted ones resume, so rerunning is "
            "safe. Writes per-split metrics JSON, results.md (mean ± std table), results.json and "
            "provenance.json to OUT (default runs/experiments/<name>). A config whose data or weights "
            "are missing is skipped with a message naming them (exit 0; 1 with --strict). "
            "Under `torchrun --nproc_per_node N -m contentiqa experiment ...` each split trains with DDP. "
            "--check lists which configs can run (default: every configs/*.yaml)."
        ),
    )
    p.add_argument("configs", nargs="*", metavar="CONFIG.yaml", type=user_path, help="experiment config file(s)")
    p.add_argument("--out", type=user_path, default=None, help="results folder (one config only)")
    p.add_argument("--check", action="store_true",
                   help="do not run: list each config as ready / partial / missing / invalid (each row's model built "
                        "from its arguments; exit 1 if any cannot fully run, 2 if one is invalid)")
    p.add_argument("--strict", action="store_true", help="missing data or weights is an error (exit 1) instead of a skip")
    p.add_argument("--device", default=None, help="train on this device (cpu, cuda, cuda:1, ...) instead of the config's train.device")
    p.add_argument("--only", action="append", default=None, metavar="ROW",
                   help="train only this row (repeatable); the table still lists the other rows' finished splits")
    p.add_argument("--seed", action="append", type=int, default=None, dest="seeds", metavar="N",
                   help="train only this split seed (repeatable): several processes can share the seeds of a row, "
                        "e.g. one per seed on a GPU, each with its own --out (merged with --import); the table "
                        "still lists every finished split")
    p.add_argument("--import", type=user_path, action="append", default=None, dest="imports", metavar="RESULTS.json",
                   help="count the finished splits of an earlier results.json of this config as done (repeatable), "
                        "for rows whose settings are unchanged: merges sessions' results into one table")
    p.add_argument("--table-only", action="store_true",
                   help="train nothing: rebuild results.json/.md from the finished (and imported) splits")
    p.add_argument("--cache-limit", type=size_arg, default=None, metavar="SIZE",
                   help="after each split, remove the least recently used entries of the shared cache beyond SIZE "
                        "(e.g. 40G; default the config's cache_limit, else no limit); the split's own entries stay")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.set_defaults(func=run)


def _configs(args: argparse.Namespace) -> list[Path]:
    if args.configs:
        named: dict[Path, Path] = {}
        for c in args.configs:  # a config named twice (t.yaml ./t.yaml) runs once
            named.setdefault(Path(c).resolve(), Path(c))
        return list(named.values())
    if args.check and Path("configs").is_dir():
        found = sorted(Path("configs").glob("*.yaml")) + sorted(Path("configs").glob("*.yml"))
        if found:
            return found
    raise UsageError("give a CONFIG.yaml" + (" (no configs/*.yaml here to check)" if args.check else ""))


def check(paths: list[Path], out: str | None = None, device: str | None = None) -> int:
    """Each config's status line: invalid (2), missing something (1), or ready. Ready means what
    the run itself checks before its first row trains passed too (each row's model built from its
    arguments, its training settings against it and its parts, dataset_ratio and init_from, each
    dataset's table read and its images looked up), not only that the roots are there; the splits'
    own checks (split columns, enough photos) come when the run makes them."""
    from ..experiments import (ConfigError, StartMissing, check_before_training, data_absent, default_out_dir,
                               experiment_missing, load_config, run_missing)
    from ..utils.extras import have, install_hint

    torch = have("torch")
    built: dict[str, bool] = {}  # configs share models: each built once
    coming: set[Path] = set()  # what the configs before this one will write, as one command runs them in turn
    rc = 0
    width = max(len(str(p)) for p in paths)
    read: list[tuple[Path, object]] = []
    for path in paths:
        try:
            cfg = load_config(path)
            read.append((path, cfg))
        except ConfigError as exc:
            print(f"invalid  {str(path):<{width}}  {exc}")
            rc = 2
            continue
        missing = experiment_missing(cfg) + ([] if torch else [f"PyTorch ({install_hint('torch')})"])
        runs = {r.name: run_missing(cfg, r) for r in cfg.runs}
        if not missing:  # the tables read and their images looked up, as the run does before training
            try:
                missing = data_absent(cfg)
            except ConfigError as exc:
                print(f"invalid  {str(path):<{width}}  {exc}")
                rc = 2
                continue
        if not missing:  # what the run checks before its first row trains (building each row's model)
            unavailable: dict[str, str] = {}
            try:
                check_before_training(cfg, Path(out) if out else default_out_dir(cfg), None, None, built, unavailable,
                                      coming, device)
            except StartMissing as exc:
                missing = [str(exc)]
            except ConfigError as exc:
                print(f"invalid  {str(path):<{width}}  {exc}")
                rc = 2
                continue
            for name, why in unavailable.items():
                runs[name] = [*runs[name], f"{name}: {why}"]
        ok = [n for n, m in runs.items() if not m]
        size = f"{len(cfg.runs)} run(s), seeds {cfg.seeds[0]}..{cfg.seeds[-1]} ({len(cfg.seeds)}), {cfg.training_sets_said}"
        lacking = [m for ms in runs.values() for m in ms]
        if missing:
            also = f"; also missing for some runs: {'; '.join(lacking)}" if lacking else ""
            print(f"missing  {str(path):<{width}}  {size}; cannot run: " + "; ".join(missing) + also)
            rc = max(rc, 1)
        elif len(ok) < len(runs):
            print(f"partial  {str(path):<{width}}  {len(ok)}/{len(runs)} run(s) can run; missing: " + "; ".join(lacking))
            rc = max(rc, 1)
        else:
            print(f"ready    {str(path):<{width}}  {size} -> {out or default_out_dir(cfg)}")
    shared = None if out else _sharing_a_folder(read)
    if shared:  # each alone is fine; one command running them together is not
        print(f"invalid  together: {shared}")
        rc = 2
    return rc


def run(args: argparse.Namespace) -> int:
    from ..experiments import ConfigError, ExperimentSkipped, run_experiment
    from ..utils.io import Busy
    from ._output import terminate_as_interrupt

    paths = _configs(args)
    if args.out and len(paths) > 1:
        raise UsageError("--out takes one config; without it each config writes to its own runs/experiments/<name>")
    if args.out and os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out {args.out} is a file: name a folder")
    if args.check:
        return check(paths, args.out, args.device)
    log = (lambda *a, **k: None) if args.quiet else print
    configs = _check_all_first(paths, args)
    rc = 0
    for path, cfg in zip(paths, configs):
        asked = _asked(cfg, args, len(paths))
        if asked is None:
            continue
        only, seeds = asked
        try:
            with terminate_as_interrupt():
                result = run_experiment(path, args.out, progress=not args.quiet, log=log, strict=args.strict,
                                        device=args.device, only=only, seeds=seeds, imports=args.imports,
                                        train=not args.table_only, cache_limit=args.cache_limit)
        except ConfigError as exc:  # which of several configs said it
            raise UsageError(str(exc) if len(paths) == 1 or str(exc).startswith(str(path)) else f"{path}: {exc}") from None
        except Busy as exc:
            raise UsageError(f"{exc}: wait for it to finish, or give another --out") from None
        except KeyboardInterrupt:
            raise KeyboardInterrupt(f"interrupted: rerun the same command to go on ({path}: finished splits are "
                                    "kept, the one in progress resumes from its last finished epoch)") from None
        except ExperimentSkipped as exc:
            print(f"contentiqa experiment: {path}: missing {exc}", file=sys.stderr)
            rc = 1
            continue
        except RuntimeError as exc:  # (below ExperimentSkipped, a RuntimeError said above)
            from ..training.distributed import lost_peer

            said = lost_peer(exc)
            if said is None:
                raise
            print(f"contentiqa experiment: error: {path}: lost another process of the run ({said}); once the others "
                  "have stopped, rerun the same command to go on from the last finished epoch", file=sys.stderr)
            return 1
        # (without --quiet the runner has said it already)
        if not result.ran:
            if args.quiet:
                print(f"contentiqa experiment: skipped {path}: " + "; ".join(result.skipped), file=sys.stderr)
            continue
        if not result.markdown:
            continue  # a rank other than 0 under torchrun
        for name, why in result.skipped_runs.items():
            if args.quiet:
                print(f"contentiqa experiment: {path}: skipped run " + "; ".join(why), file=sys.stderr)
        if not args.quiet:
            print(result.markdown)
        print(f"results: {result.out_dir / 'results.md'}")
    return rc


def _sharing_a_folder(configs: Iterable[tuple[Path, Any]]) -> str | None:
    """Why configs of one command (each ``(path, config)``) cannot run together: two write
    runs/experiments/<name> of one name (the same file name in two folders), where the second's
    table replaced the first's."""
    from ..experiments import default_out_dir

    seen: dict[Path, Path] = {}
    for path, cfg in configs:
        folder = default_out_dir(cfg).resolve()
        if folder in seen:
            return (f"{seen[folder]} and {path} both write {default_out_dir(cfg)}: give one a 'name:' (or an "
                    "'out:') of its own, or run them one at a time with --out")
        seen[folder] = path
    return None


def _asked(cfg, args: argparse.Namespace, n_configs: int) -> tuple[list[str] | None, list[int] | None] | None:
    """The rows (--only) and seeds (--seed) one of ``n_configs`` configs runs: each the rows it
    has, each the seeds they have; None when it has none of them."""
    only, seeds = args.only, args.seeds
    if n_configs > 1 and (only or seeds):
        asked = [r for r in cfg.runs if not args.only or r.name in args.only]
        only = [r.name for r in asked] if args.only else None
        seeds = [s for s in args.seeds or () if s in {x for r in asked for x in r.seeds}] or None
        if not asked or (args.seeds and seeds is None):
            return None
    return only, seeds


def _check_all_first(paths: list, args: argparse.Namespace) -> list:
    """Every config read, and --only / --seed found, before any trains: a mistake in the last
    config is a usage error now, not after hours of the first's training. With several, what
    each run checks before its first row trains is checked for all of them too (each row's model
    built from its arguments, its settings, init_from), naming the config."""
    from ..experiments import (ConfigError, check_before_training, data_absent, default_out_dir, experiment_missing,
                               load_config)
    from ..utils.extras import have

    configs = []
    for path in paths:
        try:
            configs.append(load_config(path))
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
    shared = _sharing_a_folder(zip(paths, configs))
    if shared:
        raise UsageError(shared)
    if len(paths) > 1:  # one config: the runner says which of its rows or seeds are unknown
        rows = {r.name for cfg in configs for r in cfg.runs}
        if set(args.only or ()) - rows:
            raise UsageError(f"--only: no config has row(s) {sorted(set(args.only) - rows)}")
        # of the rows asked for, as one config's run says: --only ROW --seed S trained nothing (exit 0) when ROW lacks S
        asked = [r for cfg in configs for r in cfg.runs if not args.only or r.name in args.only]
        seeds = {s for r in asked for s in r.seeds}
        if set(args.seeds or ()) - seeds:
            stray = sorted(set(args.seeds) - seeds)
            said = f"row(s) {args.only} have no split seed {stray}" if args.only else f"no config has split seed(s) {stray}"
            raise UsageError(f"--seed: {said}; seeds: {sorted(seeds)}")
        built: dict[str, bool] = {}  # configs share models: each built once
        coming: set[Path] = set()  # what the configs before this one will write, as they run in turn
        for path, cfg in zip(paths, configs):
            asked = _asked(cfg, args, len(paths))
            if args.table_only or asked is None or not have("torch"):  # (without it: the run's own error)
                continue
            try:
                if experiment_missing(cfg) or data_absent(cfg):
                    continue  # skipped when its turn comes, as the run says
                check_before_training(cfg, Path(args.out) if args.out else default_out_dir(cfg), *asked, built, {}, coming,
                                      args.device)
            except ConfigError as exc:
                raise UsageError(f"{path}: {exc}") from None
    return configs
