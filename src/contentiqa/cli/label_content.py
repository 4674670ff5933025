"""``contentiqa label-content``: fill a dataset CSV's content categories with pseudo-labels.

IQA-CR needs a content category per training image; most IQA datasets have none. This command
labels them with the offline ImageNet classifier and night cue of
:mod:`contentiqa.data.content_labels`, or, with ``--model``, with a trained content head (e.g.
an IQA-CR trained on human scene labels: ImageNet has no person class, a head trained on people's
labels has), and writes a dataset CSV that trains as it is, and that a person can correct by
hand and feed back in (existing categories are kept).
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from ..data.categories import normalize_category
from ..data.table import canonical_columns, own_column_names
from ..utils.terminal import printable
from ._output import check_writable, interrupt_exit_code, output_lock, terminate_as_interrupt
from .common import in_cli_words, model_spec, user_path
from .main import UsageError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "label-content",
        help="pseudo-label a dataset CSV's content categories (IQA-CR's ten)",
        description=(
            "Add category, category_confidence and category_source columns to a dataset CSV, "
            "labelling each image with an offline ImageNet classifier (classes mapped to IQA-CR's "
            "categories) and a luminance cue for night scenes. Rows that already have a category "
            "are kept unless --overwrite. Image paths in the output are relative to its folder."
        ),
    )
    p.add_argument("data", metavar="DATA.csv", type=user_path, help="dataset CSV with an 'image' column (paths relative to the CSV)")
    p.add_argument("--out", "-o", type=user_path, required=True, metavar="LABELED.csv", help="output CSV")
    p.add_argument("--overwrite", action="store_true", help="relabel rows that already have a category")
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="images per forward pass (default 16)")
    p.add_argument("--no-class-balance", action="store_true",
                   help="use plain summed ImageNet probabilities per category (default: class-balanced; "
                        "the ImageNet classifier only, not --model)")
    p.add_argument("--model", "-m", metavar="NAME|CKPT", type=model_spec,
                   help="label with this model's content head (a registered name or a checkpoint) instead of "
                        "the ImageNet classifier")
    p.add_argument("--device", default="cpu", help="device for --model (default cpu)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def label_with_model(table, model, overwrite: bool, batch_size: int, progress: bool):
    """``table`` with ``category``, ``category_confidence`` and ``category_source`` from
    ``model``'s content head (rows with a category kept unless ``overwrite``)."""
    import warnings

    import numpy as np
    import pandas as pd

    from ..data.content_labels import kept_source
    from ..inference.torch_runtime import TorchScorer

    out = table.copy()
    for c in ("category", "category_confidence", "category_source"):
        if c not in out:
            out[c] = pd.NA
    out["category"] = pd.array([normalize_category(v) for v in out["category"]], dtype="string")  # as train reads them
    have = out["category"].notna()
    out.loc[have, "category_source"] = [kept_source(v) for v in out.loc[have, "category_source"]]
    unknown = sorted(set(out.loc[have, "category"]) - {normalize_category(c) for c in model.categories})
    if unknown and not overwrite:
        warnings.warn(f"kept categories that are not {model.model_name}'s: {unknown}", stacklevel=2)
    todo = np.flatnonzero(overwrite | ~have.to_numpy())
    scorer = TorchScorer(model, precision="fp32")
    preds = scorer.run([out["image"].iloc[i] for i in todo], batch_size=batch_size, progress=progress)
    out["category_confidence"] = pd.to_numeric(out["category_confidence"], errors="coerce")
    # which head labelled: shipped weights by name.tag, one's own checkpoint by its path
    who = scorer.identity
    source = f"model:{who.name}.{who.tag}" if who.tag else f"model:{who.weights or who.name}"
    for i, p in zip(todo, preds):
        if p.error:
            out.loc[out.index[i], ["category", "category_confidence", "category_source"]] = [pd.NA, np.nan, f"error: {p.path}: {p.error}"]
        else:
            # in the one spelling the given labels are written in (a head's own 'Animal' is 'animal')
            out.loc[out.index[i], ["category", "category_confidence", "category_source"]] = [
                normalize_category(p.category), p.category_confidence, source]
    return out


def _with_scene_categories(table, src: Path):
    """A table in the scene-label layout (``scene1..3``: clive-dev's scene_labels.csv): a row
    without a category of its own takes its people's first scene (source ``human``) and their
    scenes as ``categories``, as a label file of that layout is read; ImageNet's guesses
    replaced them, and train read the guesses."""
    from ..data.labels import LabelsError, scene_categories

    try:
        main, every = scene_categories(table, src, what="DATA")
    except LabelsError as exc:
        raise UsageError(str(exc)) from None
    table = table.copy()
    for column in ("category", "category_source", "categories"):
        if column not in table:
            table[column] = ""
    for i, (category, categories) in enumerate(zip(main, every)):
        # a placeholder ('n/a') is no category of the row's own, as the labeller reads it
        if category is not None and normalize_category(table["category"].iat[i]) is None:
            table.loc[table.index[i], ["category", "category_source"]] = [category, "human"]
            if normalize_category(table["categories"].iat[i]) is None:
                table.loc[table.index[i], "categories"] = categories
    return table


def _read_csv(path: Path):
    """The CSV with every value kept as text (so unrelated columns round-trip unchanged), and
    its leading ``#`` comment line (e.g. ``# mos_range: 1 5``) if it has one."""
    from ..data.table import leading_comment, read_csv_table

    first = leading_comment(path)
    # as the dataset loader reads it: a decimal comma refused, a row's trailing comma no index
    table = read_csv_table(path, skip_comment=True, dtype=str, keep_default_na=False)
    return table, "" if first is None else first + "\n"


SAVE_EVERY = 64
"""Rows labelled between writes of ``--out``: a stopped run keeps what it labelled, and the file
fed back in labels the rest (rows with a category are kept)."""


def _relative(path: str, folder: Path) -> str:
    try:
        return Path(os.path.relpath(path, folder)).as_posix()
    except ValueError:  # another drive on Windows: no relative path exists
        return path


def _resume_command(args: argparse.Namespace, out: Path) -> str:
    """The command that labels the rest of ``out`` as this run would have: with its labeller and
    options (without them the rest would be labelled by the ImageNet classifier)."""
    words = ["contentiqa", "label-content", str(out), "--out", str(out)]
    if args.model:
        words += ["--model", args.model]
    if args.device != "cpu":
        words += ["--device", args.device]
    if args.no_class_balance:
        words.append("--no-class-balance")
    if args.batch_size != 16:
        words += ["--batch-size", str(args.batch_size)]
    return " ".join(shlex.quote(w) for w in words)


def run(args: argparse.Namespace) -> int:
    src = Path(args.data)
    if not src.is_file():
        raise UsageError(f"{src} is not a file")
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    out = Path(args.out)
    if out.exists() and out.is_dir():
        raise UsageError(f"--out {out} is a folder; give a CSV file name")
    if out.suffix.lower() != ".csv":  # a slip of the tab key (--out images/103.png) replaced a photo
        raise UsageError(f"--out {out}: name a .csv file (the labelled table is written there)")
    from ..utils.extras import require

    require("torch", "labelling content (an ImageNet classifier)")  # before the CSV is blamed for pandas' absence
    try:
        table, comment = _read_csv(src)
    except Exception as exc:  # pandas raises several types for malformed CSVs
        raise UsageError(f"cannot read {src} as CSV: {exc}") from None
    from ..data.labels import SCENE_COLUMNS  # (with pandas: not for `contentiqa --help`)

    own = own_column_names(table, also=SCENE_COLUMNS)  # written back as the file had them
    try:  # as training reads them: one 'category'
        table.columns = canonical_columns(table, src, also=SCENE_COLUMNS)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if "image" not in table.columns:
        raise UsageError(f"{src} has no 'image' column; columns are {list(table.columns)}")
    if table.empty:
        raise UsageError(f"{src} lists no images (only a header?)")
    if "scene1" in table.columns and not args.overwrite:  # (--overwrite: every row labelled anew)
        table = _with_scene_categories(table, src)
    elif args.overwrite and "categories" in table.columns:  # people's set is no part of a guess's row
        table = table.drop(columns=["categories"])
    if not args.model and args.device != "cpu":  # the ImageNet classifier runs on the CPU: not ignored
        raise UsageError(f"--device is for --model (the ImageNet classifier runs on the CPU): drop --device "
                         f"{args.device}, or give --model")
    if args.model:
        from ._model_loading import check_model_named

        if args.no_class_balance:  # a model's content head gives its own probabilities: nothing to balance
            raise UsageError("--no-class-balance is for the ImageNet classifier; with --model its content head "
                             "labels as it is: give one of them")
        check_model_named(args.model)  # before --out's folder is made
    check_writable(out, "--out")  # before the model loads and labels: not after hours of work
    with output_lock(out, "--out"):  # one writer per file: a second run's saves would replace this one's
        return _label(args, src, out, table, comment, own)


def _label(args: argparse.Namespace, src: Path, out: Path, table, comment: str, own: dict[str, str]) -> int:
    """Label ``table`` (read from ``src``) and write it to ``out``, part by part; the columns
    of one's own under the names ``own`` gives them."""
    import pandas as pd

    from ..data.content_labels import CLASS_BALANCE_PSEUDOCOUNT, REVIEW_CONFIDENCE, given_labels, label_table
    from ..data.categories import IQA_CR_CATEGORIES
    from ..data.table import cell_path
    from ..utils.io import atomic_write_text

    # Paths as the dataset loaders join them (os.path, links not followed): resolving links
    # would write a link's target, a key the dataset's label files no longer join on.
    base = Path(os.path.abspath(src)).parent
    # An empty cell names no file: joined to the CSV's folder it would label that folder
    # and be written back as '.' or '..'. It stays empty and its row gets an error.
    empty = [not p.strip() for p in table["image"]]
    cells = [p if e else cell_path(base, p) for p, e in zip(table["image"], empty)]  # ", a.jpg": as the loader reads it
    absolute = [p if e or os.path.isabs(p) else os.path.normpath(os.path.join(base, p))
                for p, e in zip(cells, empty)]
    work = table[[not e for e in empty]].copy()
    work["image"] = [p for p, e in zip(absolute, empty) if not e]
    categories = IQA_CR_CATEGORIES
    if args.model:
        from ._model_loading import load_model

        model = load_model(args.model, args.device)
        if not model.categories:
            raise UsageError(f"model {args.model!r} has no content head (use an IQA-CR model or checkpoint)")
        categories = model.categories

        def label(rows):
            return label_with_model(rows, model, args.overwrite, args.batch_size, False)
    else:
        from ..data.content_labels import default_classifier

        balance = None if args.no_class_balance else CLASS_BALANCE_PSEUDOCOUNT
        classifier = default_classifier()  # once, not per part

        def label(rows):
            return label_table(rows, model=classifier, overwrite=args.overwrite, batch_size=args.batch_size,
                               progress=False, class_balance=balance)

    out_dir = Path(os.path.abspath(out)).parent  # where the file is read from (a link's own folder)

    def write(parts: list) -> "pd.DataFrame":
        done = sum(len(p) for p in parts)
        # rows not reached (a stop): as the table gave them, the unlabelled ones left for the next run
        # (with --overwrite none is kept: the resume command, which has no --overwrite, labels them)
        labeled = pd.concat([*parts, given_labels(work.iloc[done:], overwrite=args.overwrite)])
        labeled = _with_empty_rows(labeled if len(work) else None, table.index, empty, src)
        # the library's advice in this command's words (it has no max_pixels to raise)
        labeled["category_source"] = [in_cli_words(s, too_large="label a smaller copy of it",
                                                   too_thin="label a copy cropped to a less elongated shape")
                                      if isinstance(s, str) and s.startswith("error") else s
                                      for s in labeled["category_source"]]
        result = table.copy()
        result["image"] = [p if e else _relative(p, out_dir) for p, e in zip(absolute, empty)]
        result["category"] = labeled["category"].fillna("").astype(str).values
        result["category_confidence"] = [f"{c:.4f}" if pd.notna(c) else "" for c in labeled["category_confidence"]]
        result["category_source"] = labeled["category_source"].fillna("").astype(str).values
        result = result.rename(columns={c: w for c, w in own.items() if c in result.columns})
        try:
            atomic_write_text(out, comment + result.to_csv(index=False, lineterminator="\n"))
        except OSError as exc:  # e.g. the folder went away or filled up while labelling
            raise UsageError(f"cannot write --out {out}: {exc.strerror or exc}") from None
        return labeled

    from tqdm.auto import tqdm

    parts: list = []
    step = max(SAVE_EVERY, 4 * args.batch_size)
    try:
        with terminate_as_interrupt(), tqdm(total=len(work), desc="labelling", unit="img", disable=args.quiet) as bar:
            for start in range(0, len(work), step):
                parts.append(label(work.iloc[start:start + step]))
                bar.update(len(parts[-1]))
                if start + step < len(work):
                    write(parts)  # what is labelled survives a stop, even a kill
    except KeyboardInterrupt:
        done = sum(len(p) for p in parts)
        if done:
            write(parts)
            print(f"interrupted: {done} of {len(work)} row(s) done and written to {printable(str(out))}; "
                  f"`{printable(_resume_command(args, out))}` labels the rest "
                  "(without --overwrite: the rows labelled are kept)", file=sys.stderr)
        else:
            print("interrupted before any row was labelled: nothing written", file=sys.stderr)
        return interrupt_exit_code()
    labeled = write(parts)

    _print_summary(labeled, out, categories, REVIEW_CONFIDENCE)
    failed = labeled["category_source"].fillna("").str.startswith("error")
    for reason in labeled.loc[failed, "category_source"]:
        print(f"failed: {printable(reason.removeprefix('error: '))}", file=sys.stderr)
    return 1 if failed.any() else 0


def _with_empty_rows(labeled, index, empty: list[bool], src: Path):
    """The labels of every row of the table (``index``): ``labeled``'s for the rows it
    labelled (None: none were), and an error for each row whose image cell is empty, so the
    summary and the exit code report those rows like any other that could not be labelled."""
    import numpy as np
    import pandas as pd

    columns = ["category", "category_confidence", "category_source"]
    if labeled is None:
        labeled = pd.DataFrame({"category": pd.array([], dtype="string"), "category_confidence": np.array([], dtype=float),
                                "category_source": pd.array([], dtype="string")})
    full = labeled[columns].reindex(index)
    full["category_source"] = full["category_source"].astype("string")
    for i in np.flatnonzero(empty):
        full.loc[index[i], "category_source"] = f"error: {src}: data row {i + 1}: empty image path"
    return full


def _print_summary(labeled, out: Path, categories, review: float) -> None:
    """Counts and mean confidence per category, so a run's plausibility shows at a glance."""
    n = len(labeled)
    print(f"wrote {out} ({n} rows)")
    print(f"{'category':14s} {'count':>6s} {'share':>7s} {'mean conf':>10s}")
    cats = labeled["category"]
    categories = list(dict.fromkeys(normalize_category(c) for c in categories))  # the spelling the file is written in
    extra = sorted(set(cats.dropna()) - set(categories))
    for cat in list(categories) + extra:
        mask = cats == cat
        k = int(mask.sum())
        if k == 0:
            print(f"{cat:14s} {0:6d} {0:7.1%} {'-':>10s}")
            continue
        conf = labeled.loc[mask, "category_confidence"].mean()
        conf_text = f"{conf:.3f}" if conf == conf else "-"
        print(f"{cat:14s} {k:6d} {k / max(n, 1):7.1%} {conf_text:>10s}")
    sources = labeled["category_source"].fillna("").map(lambda s: "error" if s.startswith("error") else s)
    print("sources: " + ", ".join(f"{s} {c}" for s, c in sources.value_counts().items()))
    conf = labeled["category_confidence"]
    if conf.notna().any():
        low = int((conf < review).sum())
        print(f"mean confidence {conf.mean():.3f}; {low} row(s) below {review} are worth a human look")
