"""The one record type of contentiqa: a table of ``image, mos[, mos_std][, category][, split]``.

Every dataset loader produces a pandas DataFrame with these columns, so splitting, training
and evaluation never care where the data came from. MOS stays on the dataset's native scale
(0-100 for LIVE Challenge, 1-5 for KonIQ-10k, 0-100 for SPAQ, ...); :class:`MOSScale` maps it to
[0, 1] and back, which is how models are trained and how their outputs return to the scale
people know.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .categories import normalize_category

if TYPE_CHECKING:  # imported where used: the dataset registry (`contentiqa models`) needs neither
    import pandas as pd

REQUIRED_COLUMNS = ("image", "mos")
OPTIONAL_COLUMNS = ("mos_std", "category", "split")
LABEL_COLUMNS = ("categories", "category_confidence", "category_source")
"""What label files and ``contentiqa label-content`` add beside ``category``."""


def canonical_columns(table: pd.DataFrame, path: str | os.PathLike, also: tuple[str, ...] = ()) -> list[str]:
    """The header of ``table`` (read by :func:`read_csv_table`) with the table's own columns
    (:data:`REQUIRED_COLUMNS`, ..., and ``also``) in their lowercase names whatever their
    spelling (``Split``, `` MOS ``); others stripped, kept as written. A 'Split' read as an extra
    column would send the official test rows to training without a word. ValueError naming
    ``path`` when two columns become one: ``split,Split``, or ``split,split``, which pandas
    reads as ``split`` and ``split.1``, so the header is taken as the file wrote it (a column of
    one's own given twice keeps pandas' two names)."""
    read, written = _header(table)
    known = _known_columns(also)
    names = [known.get(w.strip().lower(), r.strip()) for w, r in zip(written, read)]
    twice = sorted({c for c in names if names.count(c) > 1})
    if twice:
        raise ValueError(f"{path}: column(s) {twice} given twice (names are read in any case)")
    return names


def own_column_names(table: pd.DataFrame, also: tuple[str, ...] = ()) -> dict[str, str]:
    """Columns of one's own (none of :func:`canonical_columns`' names): the name
    :func:`canonical_columns` gives each -> the name as the file wrote it (``x`` given twice,
    `` note ``), for a command that writes the table back to leave them as they were."""
    read, written = _header(table)
    known = _known_columns(also)
    return {r.strip(): w for w, r in zip(written, read) if w.strip().lower() not in known}


def _known_columns(also: tuple[str, ...]) -> dict[str, str]:
    """The table's own column names (and ``also``), each under its lowercase spelling."""
    return {c.lower(): c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS, *LABEL_COLUMNS, *also)}


def _header(table: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(the names pandas read, the names the file wrote) of ``table``'s columns."""
    read = [str(c) for c in table.columns]
    written = table.attrs.get(HEADER_ATTR) or []
    if len(written) != len(read):  # not a table as read (or no header kept): its own names
        written = read
    return read, written


@dataclass(frozen=True)
class MOSScale:
    """A dataset's MOS range. ``normalize`` maps it linearly to [0, 1] (higher = better)."""

    low: float
    high: float
    higher_is_better: bool = True

    def normalize(self, mos):
        import numpy as np

        x = (np.asarray(mos, dtype=np.float64) - self.low) / (self.high - self.low)
        return x if self.higher_is_better else 1.0 - x

    def denormalize(self, x):
        import numpy as np

        x = np.asarray(x, dtype=np.float64)
        x = x if self.higher_is_better else 1.0 - x
        return x * (self.high - self.low) + self.low

    def to_dict(self) -> dict:
        return {"low": self.low, "high": self.high, "higher_is_better": self.higher_is_better}


class MissingFilesError(FileNotFoundError):
    """Some images listed by a dataset are missing or unreadable; ``.paths`` lists them."""

    def __init__(self, dataset: str, paths: list[str]):
        self.paths = paths
        shown = "\n  ".join(paths[:20])
        more = f"\n  ... and {len(paths) - 20} more" if len(paths) > 20 else ""
        super().__init__(
            f"{dataset}: {len(paths)} image file(s) missing or unreadable:\n  {shown}{more}\n"
            "Pass on_missing='skip' to drop them with a warning."
        )


def check_files(table: pd.DataFrame, dataset: str, on_missing: str = "error") -> pd.DataFrame:
    """Verify every ``image`` exists and is readable.

    ``on_missing``: 'error' raises :class:`MissingFilesError` listing them, 'skip' drops them
    with a warning, 'keep' does not look (useful to read the annotations alone).
    """
    if on_missing == "keep":
        return table
    if on_missing not in ("error", "skip"):
        raise ValueError(f"on_missing must be 'error', 'skip' or 'keep', not {on_missing!r}")
    bad = [p for p in table["image"] if not (os.path.isfile(p) and os.access(p, os.R_OK))]
    if not bad:
        return table
    if on_missing == "error":
        raise MissingFilesError(dataset, bad)
    warnings.warn(f"{dataset}: skipping {len(bad)} missing/unreadable image(s), e.g. {bad[0]}", stacklevel=3)
    return table[~table["image"].isin(set(bad))].reset_index(drop=True)


def photo_ids(table: "pd.DataFrame") -> list[str]:
    """Each row's photo as it stays across runs: its dataset-relative key (a data folder moved
    keeps it), after its dataset's name when several train together."""
    ids = table["key" if "key" in table else "image"].astype(str)
    if "dataset" in table:
        ids = table["dataset"].astype(str) + "/" + ids
    return list(ids)


def cell_path(base: Path, cell: str) -> str:
    """A CSV cell's image path without the spaces around it (``image, mos`` written by hand),
    unless the file is named with them."""
    stripped = cell.strip()
    if stripped == cell or (base / cell).exists():
        return cell
    return stripped


def under_root(root: str | os.PathLike, relative: str) -> str:
    """A table's relative image path made absolute under the table's folder, links left as they
    are: the image's key (its path relative to the dataset's folder) must stay ``images/x.png``
    when the folder, or its ``images/``, is a symbolic link to where the data lives. An absolute
    path is normalised alike: ``/data//a.png`` and ``a.png`` beside it are one image, never a
    training row and a test row of the same photo."""
    return os.path.normpath(os.path.join(os.path.abspath(root), relative))


def standardize_table(table: pd.DataFrame, root: str | os.PathLike | None = None) -> pd.DataFrame:
    """Validate and order columns; make ``image`` absolute (relative to ``root``)."""
    import pandas as pd

    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"dataset table lacks column(s) {missing}; has {list(table.columns)}")
    out = table.copy()
    if root is not None:
        base = Path(root)
        out["image"] = [under_root(base, str(p)) for p in out["image"]]
    mos = pd.to_numeric(out["mos"], errors="coerce").astype(float)
    for bad, what in ((mos.isna() & out["mos"].notna() & (out["mos"].astype(str).str.strip() != ""), "non-numeric"),
                      (mos.isna(), "empty"), (mos.abs() == float("inf"), "infinite")):
        if bad.any():
            shown = ", ".join(f"{Path(str(i)).name} ({v!r})" for i, v in zip(out["image"][bad][:5], out["mos"][bad][:5]))
            raise ValueError(f"dataset table has {int(bad.sum())} {what} MOS value(s): {shown}")
    out["mos"] = mos
    if "mos_std" in out:
        out["mos_std"] = pd.to_numeric(out["mos_std"], errors="coerce").astype(float)
    if "category" in out:  # one spelling per category, as label files and label-content write them
        out["category"] = pd.array([normalize_category(v) for v in out["category"]], dtype="string")
    if out["image"].duplicated().any():
        dup = out["image"][out["image"].duplicated()].tolist()[:5]
        raise ValueError(f"dataset table lists the same image twice: {dup}")
    cols = list(REQUIRED_COLUMNS) + [c for c in OPTIONAL_COLUMNS if c in out] + [
        c for c in out.columns if c not in REQUIRED_COLUMNS and c not in OPTIONAL_COLUMNS
    ]
    return out[cols].reset_index(drop=True)


def leading_comment(path: str | os.PathLike) -> str | None:
    """A CSV's first line when it is a ``#`` comment (``# mos_range: 1 5``, which label-content
    writes back too), else None: every reader skips it."""
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
        first = f.readline()
    return first.rstrip("\r\n") if first.lstrip().startswith("#") else None


HEADER_ATTR = "contentiqa_header"
"""Where :func:`read_csv_table` keeps the header as the file wrote it (in ``DataFrame.attrs``)."""


def read_csv_table(path: Path, skip_comment: bool = False, **options: Any) -> pd.DataFrame:
    """A release's or a user's CSV; what cannot be read as one names the file. Rows ending in a
    stray comma keep their columns (pandas would otherwise take the first column for an index,
    shifting every cell one column left). ``skip_comment``: a user's table, whose first line may
    be a :func:`leading_comment`. ``options`` go to ``pd.read_csv``. The header as written
    (before pandas renames a repeated name) is kept for :func:`canonical_columns`."""
    import csv

    import pandas as pd

    skiprows = int(skip_comment and leading_comment(path) is not None)
    try:
        if skip_comment:  # a later comment line would be read as the header, and blamed on a decimal comma
            with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
                first = next((line for k, line in enumerate(f) if k >= skiprows and line.strip()), "")
            if first.lstrip().startswith("#"):
                raise ValueError(f"{path}: a '#' line where the header should be: only the file's first line is "
                                 "read as a comment (# mos_range: ...); remove the others and blank lines before it")
        with warnings.catch_warnings():
            # a row with more cells than the header (a decimal comma: 3,5) would lose its last ones
            warnings.simplefilter("error", pd.errors.ParserWarning)
            table = pd.read_csv(path, comment=None, skiprows=skiprows, encoding="utf-8-sig", index_col=False, **options)
        if not {"usecols", "header", "names", "sep", "delimiter"} & set(options):
            with open(path, encoding="utf-8-sig", newline="") as f:
                # (blank lines before it skipped, as pandas skips them)
                header = next(csv.reader(line for k, line in enumerate(f) if k >= skiprows and line.strip()), [])
            if len(header) == len(table.columns):
                table.attrs[HEADER_ATTR] = header
        return table
    except pd.errors.ParserWarning:
        raise ValueError(f"{path}: a row has more cells than the header names (a decimal comma, 3,5, or a column "
                         "without a name?)") from None
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ValueError(f"{path}: cannot read as a UTF-8 CSV table: {str(exc).splitlines()[0]}") from None
