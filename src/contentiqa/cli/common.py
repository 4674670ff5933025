"""Pieces shared by the commands: reading a dataset argument, a split and a size."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..utils.terminal import printable
from .main import UsageError

if TYPE_CHECKING:  # pandas costs ~0.5 s to import: not at CLI start-up
    import pandas as pd


FAILED_SHOWN = 10
"""Failed images named on stderr by a command that scores a table (its output file has all)."""


def user_path(text: str) -> str:
    """A path option's value with ``~`` expanded (argparse ``type``): the shell leaves the ``~``
    of ``--out=~/x`` alone, and the file would land in a folder named ``~``."""
    import os

    if not text.strip():  # an unset shell variable: taken as "not given", the results would be lost
        raise argparse.ArgumentTypeError("an empty path (an unset shell variable?)")
    return os.path.expanduser(text)


def model_spec(text: str) -> str:
    """A --model value (argparse ``type``): an empty one (an unset shell variable) was taken for
    "not given" by some commands, which then ran their default model without a word."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty model name (an unset shell variable?)")
    return text


def in_cli_words(error: str, own: tuple[str, ...] = (), too_large: str = "use a smaller copy of it",
                 too_thin: str | None = None) -> str:
    """An image's error with the library's advice (its attributes: ``max_pixels``, ``max_side``)
    said on the command line: the command's ``own`` options where it has them, else what
    `contentiqa score` offers, or ``too_large`` for a photo over the pixel limit of a command
    that keeps it fixed, and ``too_thin`` (default: score's option) for one downscaled thinner
    than the model reads by a command that cannot score it at full size."""
    from ..data.imageio import BOMB_HINT, MEMORY_HINT
    from ..models.scoring import DOWNSCALE_HINT

    limit = "--max-pixels" in own
    memory = "free memory, or lower --max-pixels" if limit else "free memory"
    bomb = "pass --max-pixels MP, in megapixels, to allow it" if limit else too_large
    side = "--max-side 0 scores it at full size" if "--max-side" in own else too_thin or \
        "`contentiqa score --max-side 0` scores it at full size"
    return (error.replace(MEMORY_HINT, f"{memory} (the file itself may be fine)").replace(DOWNSCALE_HINT, side)
            .replace(BOMB_HINT, bomb))


def say_failed(rows: pd.DataFrame, everything: str) -> None:
    """The images of ``rows`` (``image``, ``error`` columns) that could not be scored, with why,
    on stderr: the first few, then where ``everything`` is listed."""
    failed = list(zip(*(rows.loc[rows["error"].notna(), c] for c in ("image", "error"))))
    for path, error in failed[:FAILED_SHOWN]:
        print(printable(f"{path}: {in_cli_words(str(error))}"), file=sys.stderr)
    if len(failed) > FAILED_SHOWN:
        print(f"... and {len(failed) - FAILED_SHOWN} more failed image(s) ({everything})", file=sys.stderr)


def finite_float(text: str) -> float:
    """An argparse ``type`` for a number option: ``float`` alone takes ``inf`` and ``nan``, which
    no limit, timeout or rate means, and which fail later as a traceback."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, not {text!r}")
    return value


MAX_MEGAPIXELS = 1e6
"""The largest pixel limit an option takes: a terapixel, past any photo; a larger number is a
slip (1e303 overflowed to infinity once counted in pixels: a traceback after the model loaded)."""


def megapixels(text: str) -> float:
    """An argparse ``type`` for a ``--max-pixels MP`` option: a finite number of megapixels up
    to :data:`MAX_MEGAPIXELS` (each command says which values it allows below that)."""
    value = finite_float(text)
    if value > MAX_MEGAPIXELS:
        raise argparse.ArgumentTypeError(f"at most {MAX_MEGAPIXELS:g} megapixels, not {text!r}")
    return value


def size_arg(text: str) -> int:
    """An argparse ``type`` for a size such as ``40G`` or ``500M``: a bad one is argparse's usage
    error (exit 2) naming the option, in every command alike."""
    from ..utils.disk_cache import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_data_args(p: argparse.ArgumentParser, several: bool = False) -> None:
    """--data/--dataset; with ``several`` both may repeat (one model trained on several datasets)."""
    more = " Repeat --data (and --dataset, in the same order) to train on several datasets at once." if several else ""
    p.add_argument("--data", type=user_path, required=True, action="append" if several else "store",
                   help="dataset CSV (image,mos[,mos_std][,category][,split]) or a dataset root folder." + more)
    p.add_argument("--dataset", default=None, action="append" if several else "store",
                   help="loader for a root folder: livec, koniq10k, spaq, cid2013, bid, biq2021 (default: csv)")
    p.add_argument("--skip-missing", action="store_true",
                   help="drop images whose file is missing or not readable (permissions) with a warning instead of failing")


def each_dataset(args: argparse.Namespace) -> list[argparse.Namespace]:
    """One namespace per --data (its --dataset paired in order; a single --dataset applies to all)."""
    import copy

    datas = args.data if isinstance(args.data, list) else [args.data]
    names = args.dataset if isinstance(args.dataset, list) else ([args.dataset] if args.dataset else [])
    if len(names) not in (0, 1, len(datas)):
        raise UsageError(f"{len(datas)} --data but {len(names)} --dataset: give one --dataset per --data, in order, or one for all")
    out = []
    for i, d in enumerate(datas):
        sub = copy.copy(args)
        sub.data = d
        sub.dataset = names[i] if len(names) == len(datas) else (names[0] if names else None)
        out.append(sub)
    return out


def load_data(args: argparse.Namespace, option: str = "--data"):
    """``args.data`` read by ``args.dataset``'s loader; ``option``: how the command names the
    argument in its errors (a positional DATA is no --data)."""
    from ..data import MissingFilesError, load_dataset

    path = Path(args.data)
    name = args.dataset or "csv"
    where = f"{option} {path}" if option else str(path)
    if not path.exists():
        raise UsageError(f"{where} does not exist")
    if name == "csv" and path.is_dir():
        raise UsageError(f"{where} is a folder: pass the CSV file, or --dataset NAME for a released layout")
    try:
        return load_dataset(name, path, on_missing="skip" if args.skip_missing else "error")
    except MissingFilesError as exc:
        # The data layer speaks to Python callers (on_missing='skip'); here the switch is a flag.
        raise UsageError(str(exc).replace("Pass on_missing='skip'", "Pass --skip-missing")) from None
    except (ValueError, KeyError, OSError) as exc:  # OSError: a release's own annotation file absent
        raise UsageError(f"cannot read dataset {path}: {exc}") from None


def check_rated(table: pd.DataFrame, data: str | Path, what: str, need: int = 2) -> None:
    """Fail with a message, not a traceback, when ``table`` cannot give correlations: fewer
    than ``need`` images (a header-only or one-row file) or one MOS for all of them."""
    if len(table) < need:
        held = "no images (only a header?)" if len(table) == 0 else f"only {len(table)} image(s)"
        raise UsageError(f"--data {data}: {what} needs at least {need} rated images; it lists {held}")
    values = table["mos"].unique()
    if len(values) < 2:
        raise UsageError(
            f"--data {data}: every image has the same MOS ({values[0]:g}), so PLCC/SROCC are undefined; "
            f"{what} needs images rated differently"
        )


def add_split_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", type=user_path, default=None,
                   help="split file (from save_splits / a previous run); default: make one")
    p.add_argument("--split-index", type=int, default=0, help="which split of a multi-split file (default 0)")
    p.add_argument("--protocol", default=None, choices=["iqa-cr", "ie-iqa", "official"],
                   help="protocol when making a split (default iqa-cr); a table with a 'split' column keeps it "
                        "('official': a validation part is drawn from its training rows when it has none)")
    p.add_argument("--split-seed", type=int, default=0, help="seed when making a split")


def split_parts(split, table: pd.DataFrame, args: argparse.Namespace, own: bool = False) -> dict:
    """The split's parts as rows of ``table``; a split that names images the table lacks (the
    table changed since the split was made) is a usage error, not a KeyError. ``own``: the run's
    own split.json, read back on --resume: a few rows removed from the table since (a damaged
    photo's, as training's advice says) leave its parts, with a note; more than that is another
    table, refused as any split of another table is."""
    if own:
        from ..data import Split, image_keys

        present = set(image_keys(table["image"]))
        dropped = sum(k not in present for keys in split.parts.values() for k in keys)
        if 0 < dropped <= max(5, sum(map(len, split.parts.values())) // 100):
            print(f"note: {dropped} image(s) of {args.split} are no longer in --data {args.data}: left out of the run",
                  file=sys.stderr)
            split = Split(split.protocol, split.seed, {p: [k for k in keys if k in present] for p, keys in split.parts.items()})
    try:
        return {p: table.iloc[split.indices(table, p)] for p in ("train", "val", "test") if split.parts.get(p)}
    except KeyError as exc:
        where = f"--split {args.split}" if args.split else "the split"
        raise UsageError(f"{where}: {exc.args[0]}; it was made for another table: make a new one "
                         "(drop --split) or restore the table it was made for") from None


def _drawn_val_counts(n_train: int) -> bool:
    """Whether the official protocol's validation draw from ``n_train`` training rows is large
    enough for training to validate on (smaller, the run goes without one, as it did)."""
    from ..data.splits import OFFICIAL_VAL_FRACTION
    from ..training.trainer import MIN_VAL_PER_SET

    return round(OFFICIAL_VAL_FRACTION * n_train) >= MIN_VAL_PER_SET


def check_split_index(args: argparse.Namespace, draws: bool = False) -> None:
    """--split-index picks a split of a --split FILE: without one (a 'split' column holds one split,
    --protocol draws one per --split-seed) it is refused, not ignored. Said before any folder is made.
    ``draws``: the command draws splits itself (has --split-seed), which the refusal then suggests."""
    if args.split_index and not args.split:
        draw = "; to draw another split, use --split-seed" if draws else ""
        raise UsageError(f"--split-index {args.split_index} picks a split of a --split FILE{draw}")


def resolve_split(args: argparse.Namespace, table: pd.DataFrame, out_dir: Path | None = None, *,
                  training: bool = False, draw_val: bool = True):
    """A Split from --split, else from a 'split' column, else made by --protocol (saved to
    ``out_dir`` when made here). ``training``: a column without 'val' rows gets a validation part
    drawn from its training rows per --split-seed (the ``official`` protocol, as experiments do),
    when they are enough for one: the default recipes fit their calibration on it. ``draw_val``
    False keeps the column as it is (a resumed run keeps the parts it started with)."""
    from ..data import Split, image_keys_for, load_splits, make_splits, save_splits

    if args.split:
        try:
            splits = load_splits(args.split)
        except (FileNotFoundError, ValueError) as exc:
            raise UsageError(str(exc)) from None
        if not 0 <= args.split_index < len(splits):
            raise UsageError(f"--split-index {args.split_index}: {args.split} holds {len(splits)} split(s)")
        return splits[args.split_index]
    protocol = args.protocol if training else None
    quiet = getattr(args, "quiet", False)
    if "split" in table:
        if protocol not in (None, "official") and not quiet:
            print(f"note: --data {args.data} has a 'split' column: it is kept, --protocol {protocol} is not used",
                  file=sys.stderr)
        keys = image_keys_for(table)
        which = [str(s).strip().lower() for s in table["split"]]
        unknown = sorted(set(which) - {"train", "val", "test"})
        if unknown:  # a row in none of the parts would silently leave the run
            raise UsageError(f"--data {args.data}: the 'split' column has value(s) {unknown}; use train, val or test")
        parts = {p: [k for k, s in zip(keys, which) if s == p] for p in ("train", "val", "test")}
        if training and not parts["train"]:  # a held-out file (every row 'test') is evaluated as it is
            raise UsageError("the 'split' column marks no row as 'train'")
        if not training or not draw_val or parts["val"] or not _drawn_val_counts(len(parts["train"])):
            return Split("column", 0, {p: v for p, v in parts.items() if v})  # the table keeps it: `evaluate` reads it there
        protocol = "official"
        if not quiet:
            print(f"note: the 'split' column has no 'val' rows: a validation part is drawn from its training rows "
                  f"(--split-seed {args.split_seed})" + (f", saved to {out_dir / 'split.json'}" if out_dir else ""),
                  file=sys.stderr)
    elif protocol == "official":
        raise UsageError(f"--protocol official: --data {args.data} has no 'split' column (train/test) to keep")
    from ..data.imageio import ImageLoadError

    try:
        split = make_splits(table, protocol or "iqa-cr", seed=args.split_seed, progress=not quiet)
    except ImageLoadError as exc:  # the iqa-cr protocol reads every image for its SI
        raise UsageError(str(exc)) from None
    except ValueError as exc:
        raise UsageError(f"--data {args.data}: {exc} (or pass --split FILE / a 'split' column)") from None
    if out_dir is not None:
        save_splits(split, out_dir / "split.json")
    return split
