"""Table loaders for the layouts each dataset is distributed in.

Each loader returns a DataFrame with ``image`` (absolute path), ``mos`` (native scale) and
``mos_std`` / ``category`` where the release has them. Missing-file handling is done by
:func:`contentiqa.data.load_dataset`, not here.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from .registry import register_dataset
from .table import MOSScale, canonical_columns, cell_path, leading_comment, read_csv_table, under_root

if TYPE_CHECKING:  # imported by each loader: registering the names (`contentiqa models`) needs neither
    import numpy as np
    import pandas as pd

CLIVE_SCALE = MOSScale(0.0, 100.0)
KONIQ_SCALE = MOSScale(1.0, 5.0)
SPAQ_SCALE = MOSScale(0.0, 100.0)
CID_SCALE = MOSScale(0.0, 100.0)
BID_SCALE = MOSScale(0.0, 5.0)
BIQ2021_SCALE = MOSScale(0.0, 1.0)


def _find_file(root: Path, name: str, subdirs: tuple[str, ...] = ("",)) -> Path:
    """First existing ``root/sub/name``; else, for converted copies (BMP -> PNG), a file with the
    same stem and another image extension; else the first candidate (reported as missing)."""
    candidates = [root / sub / name for sub in subdirs]
    for c in candidates:
        if c.is_file():
            return c
    stem = Path(name).stem
    for sub in subdirs:
        folder = root / sub
        for ext in (".png", ".jpg", ".JPG", ".jpeg", ".bmp", ".BMP", ".tif"):
            c = folder / f"{stem}{ext}"
            if c.is_file():
                return c
    return candidates[0]


def _read_sheet(path: Path) -> pd.DataFrame:
    import pandas as pd

    if path.suffix.lower() in (".xlsx", ".xls"):
        try:
            return pd.read_excel(path)
        except ImportError as exc:  # pandas reads .xlsx with openpyxl, the old .xls with xlrd
            need = ("openpyxl: pip install 'contentiqa[excel]'" if path.suffix.lower() == ".xlsx"
                    else "xlrd (pip install xlrd), or save it as .xlsx or .csv")
            raise ValueError(f"{path}: reading this spreadsheet needs {need}") from exc
        except Exception as exc:  # noqa: BLE001 - a truncated download, a CSV saved as .xlsx: each reader's own type
            raise ValueError(f"{path}: cannot be read as a spreadsheet ({type(exc).__name__}: {exc}); "
                             "save it again as .xlsx or .csv") from None
    return read_csv_table(path)


def _mat_variable(path: Path, variable: str):
    """One variable of a release's .mat file; a damaged file, MATLAB's HDF5 format (-v7.3) or
    another variable name said with the file, not as scipy's bare exception."""
    from scipy.io import loadmat

    try:
        contents = loadmat(path)
    except NotImplementedError:  # what scipy raises for -v7.3 files
        raise ValueError(f"{path}: a MATLAB -v7.3 (HDF5) file; save it again with -v7, as the release has it") from None
    except Exception as exc:  # noqa: BLE001 - truncated or not a .mat at all: scipy's own exception types
        raise ValueError(f"{path}: cannot be read as a .mat file ({type(exc).__name__}: {exc})") from None
    if variable not in contents:
        has = sorted(k for k in contents if not k.startswith("__"))
        raise ValueError(f"{path}: no variable {variable!r} (it has {has}); the release's file holds {variable!r}")
    return contents[variable]


def _column(df: pd.DataFrame, *names: str, file: Path, required: bool = True) -> str | None:
    """The actual column whose normalised name matches one of ``names`` (case/space-insensitive)."""
    norm = {re.sub(r"[^a-z0-9]", "", str(c).lower()): c for c in df.columns}
    for n in names:
        key = re.sub(r"[^a-z0-9]", "", n.lower())
        if key in norm:
            return norm[key]
    if required:
        raise ValueError(f"{file}: no column named any of {names}; columns are {list(df.columns)}")
    return None


def _numbers(df: pd.DataFrame, col: str, file: Path) -> np.ndarray:
    """Column ``col`` of a release's sheet as floats (an empty cell NaN); a cell that is no
    number is a ValueError naming the file, the column and the row, not float()'s bare words."""
    import pandas as pd

    values = pd.to_numeric(df[col], errors="coerce")
    text = df[col].astype(str).str.strip()
    bad = values.isna() & df[col].notna() & (text != "") & (text.str.lower() != "nan")
    if bad.any():  # counted among the rows of data: the blank lines a reader skips are not
        rows = [f"data row {int(i) + 1}: {v!r}" for i, v in zip(df.index[bad][:3], df[col][bad][:3])]
        raise ValueError(f"{file}: column {col!r} holds {int(bad.sum())} cell(s) that are no number ({', '.join(rows)})")
    return values.astype(float).to_numpy()


def _first_existing(root: Path, names: tuple[str, ...], what: str) -> Path:
    for n in names:
        matches = sorted(root.glob(n)) if any(ch in n for ch in "*?[") else [root / n]
        for m in matches:
            if m.is_file():
                return m
    raise FileNotFoundError(f"{what}: none of {names} found under {root}")


@register_dataset("livec", CLIVE_SCALE)
def load_livec(root: Path) -> pd.DataFrame:
    """LIVE In the Wild Image Quality Challenge (Ghadiyaram & Bovik), as released::

        root/Data/AllImages_release.mat   # 1169 names (cell array); the first 7 are t1..t7
        root/Data/AllMOS_release.mat      # MOS, 0-100, higher is better
        root/Data/AllStdDev_release.mat   # std of the opinion scores
        root/Images/<name>                # the 1162 test images
        root/Images/trainingImages/<name> # t1.bmp .. t7.bmp

    A copy whose BMPs were converted to PNG (same stem) is found too.
    """
    import numpy as np
    import pandas as pd

    data = root / "Data"
    absent = [f for f in ("AllImages_release.mat", "AllMOS_release.mat", "AllStdDev_release.mat") if not (data / f).is_file()]
    if absent:
        raise FileNotFoundError(f"livec: {', '.join(absent)} not found in {data} (the release's Data folder)")
    names_mat = _mat_variable(data / "AllImages_release.mat", "AllImages_release")
    names = [str(np.asarray(x).ravel()[0]) for x in names_mat.ravel()]
    mos = _mat_variable(data / "AllMOS_release.mat", "AllMOS_release").ravel().astype(float)
    std = _mat_variable(data / "AllStdDev_release.mat", "AllStdDev_release").ravel().astype(float)
    if not (len(names) == len(mos) == len(std)):
        raise ValueError(f"livec: {len(names)} names, {len(mos)} MOS, {len(std)} std values in {data}")
    # t1..t7 live in Images/trainingImages/: look there first so that, when missing, the path
    # reported is where the release puts them.
    images = [
        str(_find_file(root / "Images", n, ("trainingImages", "") if re.match(r"t\d+\.", n) else ("", "trainingImages")))
        for n in names
    ]
    return pd.DataFrame({"image": images, "mos": mos, "mos_std": std})


@register_dataset("koniq10k", KONIQ_SCALE)
def load_koniq10k(root: Path, resolution: str = "1024x768") -> pd.DataFrame:
    """KonIQ-10k (Hosu et al. 2020)::

        root/koniq10k_scores_and_distributions.csv   # image_name, c1..c5, c_total, MOS, SD, MOS_zscore
        root/koniq10k_distributions_sets.csv         # optional: ..., set (training/validation/test)
        root/1024x768/<image_name>                   # or root/512x384/ (resolution='512x384')

    ``mos`` is the MOS column (1-5 scale), ``mos_std`` the SD column; ``split`` the authors'
    train/val/test sets where their sets file lies beside it (``protocol: official``). If the
    requested resolution folder is absent, the other one is used, with a warning.
    """
    import pandas as pd

    if resolution not in KONIQ_RESOLUTIONS:
        raise ValueError(f"koniq10k: resolution {resolution!r} is not one of the release's folders {KONIQ_RESOLUTIONS}")
    csv = _first_existing(root, ("koniq10k_scores_and_distributions.csv", "*scores_and_distributions*.csv"), "koniq10k")
    df = read_csv_table(csv)
    name_col = _column(df, "image_name", file=csv)
    mos_col = _column(df, "MOS", file=csv)
    sd_col = _column(df, "SD", file=csv, required=False)
    folder = root / resolution
    if not folder.is_dir():
        other = next(r for r in KONIQ_RESOLUTIONS if r != resolution)
        if (root / other).is_dir():
            warnings.warn(f"koniq10k: no {folder}: reading the {other} images instead", stacklevel=2)
            folder = root / other
    df = df[df[name_col].notna()]  # a trailing empty row (",,") names no image
    out = pd.DataFrame({"image": [str(folder / str(n)) for n in df[name_col]], "mos": df[mos_col].values})
    if sd_col:  # by position: the filtered frame's index no longer counts 0..n-1
        out["mos_std"] = _numbers(df, sd_col, csv)
    sets_file = root / "koniq10k_distributions_sets.csv"
    if sets_file.is_file():
        # only its set column: its MOS is on another scale (0-100)
        sets = read_csv_table(sets_file)
        s_name, s_set = _column(sets, "image_name", file=sets_file), _column(sets, "set", file=sets_file)
        sets = sets[sets[s_name].notna()]  # a trailing empty row, as in the scores file
        # an image listed in two sets would land in whichever row came last: refused, like a
        # scores file listing an image twice
        sets_of = sets.groupby(sets[s_name].astype(str).str.strip())[s_set].agg(
            lambda s: {str(v).strip().lower() for v in s})
        twice = sorted(n for n, s in sets_of.items() if len(s) > 1)
        if twice:
            raise ValueError(f"{sets_file}: {len(twice)} image(s) listed in two sets, e.g. "
                             f"{', '.join(f'{n} ({sorted(sets_of[n])})' for n in twice[:3])}")
        which = {str(n).strip(): KONIQ_SETS.get(str(s).strip().lower()) for n, s in zip(sets[s_name], sets[s_set])}
        unknown = sorted({str(s) for s in sets[s_set] if KONIQ_SETS.get(str(s).strip().lower()) is None})
        if unknown:
            raise ValueError(f"{sets_file}: unknown set value(s) {unknown[:5]}; expected {sorted(KONIQ_SETS)}")
        missing = [str(n) for n in df[name_col] if str(n).strip() not in which]
        if missing:
            raise ValueError(f"{sets_file}: {len(missing)} image(s) of {csv.name} have no set, e.g. {missing[:3]}")
        out["split"] = [which[str(n).strip()] for n in df[name_col]]
    return out


KONIQ_RESOLUTIONS = ("1024x768", "512x384")
KONIQ_SETS = {"training": "train", "validation": "val", "test": "test"}
"""The KonIQ-10k authors' set names (koniq10k_distributions_sets.csv) -> contentiqa's split parts."""


# SPAQ's nine scene categories, as its "Scene category labels" spreadsheet names them.
SPAQ_SCENES = (
    "Animal", "Cityscape", "Human", "Indoor scene", "Landscape", "Night scene", "Plant", "Still-life", "Others",
)


def _spaq_key(name) -> str:
    """How SPAQ's two sheets name one image alike: ``00001.jpg``, ``00001.JPG``, ``00001`` and
    the number 1 (a spreadsheet's own conversion) all give ``1``."""
    stem = Path(str(name).strip()).stem if not isinstance(name, (int, float)) else str(int(name))
    return stem.lstrip("0").lower() or "0"


@register_dataset("spaq", SPAQ_SCALE)
def load_spaq(root: Path, with_attributes: bool = True) -> pd.DataFrame:
    """SPAQ, Smartphone Photography Attribute and Quality (Fang et al. 2020)::

        root/Annotations/MOS and Image attribute scores.xlsx  # Image name, MOS, Brightness,
                                                              # Colorfulness, Contrast, Noisiness, Sharpness
        root/Annotations/Scene category labels.xlsx           # Image name + one 0/1 column per scene
        root/TestImage/<Image name>                           # 11,125 JPEGs

    ``.csv`` exports of the spreadsheets are read too. A photo's scenes are the columns marked
    above 0 (1/k each for k scenes; a quarter of SPAQ's photos have two or three): ``category``
    is the first in :data:`SPAQ_SCENES` order and ``categories`` all of them (``|``-separated: a
    prediction naming any is acceptable), in IQA-CR's spelling as every table's categories
    (SPAQ's ``Still-life`` is ``artifact``). Attribute scores are kept as extra columns when
    ``with_attributes``.
    """
    import pandas as pd

    ann = root / "Annotations"
    mos_file = _first_existing(ann, ("MOS and Image attribute scores.xlsx", "MOS and Image attribute scores.csv", "*MOS*.xlsx", "*MOS*.csv"), "spaq")
    df = _read_sheet(mos_file)
    name_col = _column(df, "Image name", "image_name", "Image", file=mos_file)
    mos_col = _column(df, "MOS", file=mos_file)
    df = df[df[name_col].notna()]  # an empty row of the spreadsheet (or its csv export) names no image
    out = pd.DataFrame({
        "image": [str(root / "TestImage" / str(n)) for n in df[name_col]],
        "mos": df[mos_col].values,
    })
    if with_attributes:
        for attr in ("Brightness", "Colorfulness", "Contrast", "Noisiness", "Sharpness"):
            col = _column(df, attr, file=mos_file, required=False)
            if col:
                out[attr.lower()] = _numbers(df, col, mos_file)
    try:
        scene_file = _first_existing(ann, ("Scene category labels.xlsx", "Scene category labels.csv", "*cene*.xlsx", "*cene*.csv"), "spaq")
    except FileNotFoundError:
        return out
    scenes = _read_sheet(scene_file)
    s_name = _column(scenes, "Image name", "image_name", "Image", file=scene_file)
    scenes = scenes[scenes[s_name].notna()]
    scene_cols = [(s, _column(scenes, s, file=scene_file, required=False)) for s in SPAQ_SCENES]
    scene_cols = [(s, c) for s, c in scene_cols if c is not None]
    if not scene_cols:
        raise ValueError(f"{scene_file}: none of the scene columns {SPAQ_SCENES} found")
    from .categories import normalize_category
    from .labels import CATEGORY_SEPARATOR

    labels, every = {}, {}
    for _, row in scenes.iterrows():
        marked = [s for s, c in scene_cols if pd.notna(row[c]) and float(row[c]) > 0]
        labels[_spaq_key(row[s_name])] = marked[0].lower() if marked else pd.NA
        every[_spaq_key(row[s_name])] = (CATEGORY_SEPARATOR.join(dict.fromkeys(normalize_category(s) for s in marked))
                                         if marked else pd.NA)
    out["category"] = [labels.get(_spaq_key(Path(p).name), pd.NA) for p in out["image"]]
    out["categories"] = [every.get(_spaq_key(Path(p).name), pd.NA) for p in out["image"]]
    if labels and out["category"].isna().all():
        warnings.warn(f"spaq: no image of {mos_file.name} is named in {scene_file.name}: no scene categories", stacklevel=2)
    return out


@register_dataset("cid2013", CID_SCALE)
def load_cid2013(root: Path) -> pd.DataFrame:
    """CID2013, Camera Image Database (Virtanen et al. 2015)::

        root/CID2013 data - checkpoint.xlsx (or any *.xlsx / *.csv at the top level)
            # one row per image: 'Source ID' (file stem, e.g. IS1_C01_D01),
            # 'Realignment MOS' (0-100; 'Realigned MOS' or 'MOS' also accepted), 'Image set'
        root/IS1/co1/<Source ID>.jpg ... root/IS6/co8/...   # images, any depth below root

    The database's images sit in image-set / scene folders; they are found by file stem
    anywhere under ``root``, so both the original and flattened copies load.
    """
    import pandas as pd

    sheet = _first_existing(root, ("CID2013 data - checkpoint.xlsx", "*.xlsx", "*.csv"), "cid2013")
    df = _read_sheet(sheet)
    id_col = _column(df, "Source ID", "Image ID", "image", "filename", file=sheet)
    mos_col = _column(df, "Realignment MOS", "Realigned MOS", "MOS", file=sheet)
    set_col = _column(df, "Image set", file=sheet, required=False)
    index: dict[str, Path] = {}
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp", ".tif"):
            if p.stem in index:  # which copy a row names must not depend on the folder walk
                raise ValueError(f"cid2013: two images are named {p.stem} ({index[p.stem]} and {p}); keep one")
            index[p.stem] = p
    df = df[pd.notna(df[id_col])]
    stems = [Path(str(s)).stem for s in df[id_col]]
    out = pd.DataFrame({
        "image": [str(index.get(s, root / f"{s}.jpg")) for s in stems],
        "mos": df[mos_col].values,
    })
    if set_col:
        out["image_set"] = df[set_col].astype(str).values
    return out


@register_dataset("bid", BID_SCALE)
def load_bid(root: Path) -> pd.DataFrame:
    """BID, Blurred Image Database (Ciancio et al. 2011)::

        root/DatabaseGrades.xlsx (.xls / .csv)  # 'Image Number', 'Average Subjective Grade' (0-5)
        root/ImageDatabase/DatabaseImage0001.JPG ... DatabaseImage0586.JPG

    Images are looked up in ``ImageDatabase/`` first, then ``root`` itself.
    """
    import pandas as pd

    sheet = _first_existing(root, ("DatabaseGrades.xlsx", "DatabaseGrades.xls", "DatabaseGrades.csv", "*.xlsx", "*.csv"), "bid")
    df = _read_sheet(sheet)
    num_col = _column(df, "Image Number", "image", file=sheet)
    mos_col = _column(df, "Average Subjective Grade", "MOS", file=sheet)
    std_col = _column(df, "Standard Deviation", "SD", file=sheet, required=False)
    df = df[pd.notna(df[num_col]) & pd.notna(df[mos_col])]
    numbers = pd.to_numeric(df[num_col], errors="coerce")
    bad = [str(v) for v in df[num_col][numbers.isna() | (numbers != numbers.round())]]
    if bad:
        raise ValueError(f"{sheet}: column {num_col!r} holds {len(bad)} cell(s) that are no image number, e.g. {bad[:3]}")
    names = [f"DatabaseImage{int(n):04d}.JPG" for n in numbers]
    out = pd.DataFrame({
        "image": [str(_find_file(root, n, ("ImageDatabase", ""))) for n in names],
        "mos": df[mos_col].values,
    })
    if std_col:
        out["mos_std"] = _numbers(df, std_col, sheet)
    return out


def _resolve_case(folder: Path, name: str, listing: dict[str, str], dataset: str) -> Path:
    """``folder/name``; when only a file differing in letter case exists (``.JPG`` for
    ``.jpg``), that file, with a warning naming both."""
    import warnings

    if name in listing:
        return folder / name
    other = listing.get(f"\0{name.lower()}")
    if other is not None:
        warnings.warn(f"{dataset}: '{name}' is listed but the file is '{other}' in {folder}; using it", stacklevel=3)
        return folder / other
    return folder / name  # reported as missing by load_dataset


@register_dataset("biq2021", BIQ2021_SCALE)
def load_biq2021(root: Path, split: str | None = None) -> pd.DataFrame:
    """BIQ2021 (Ahmed et al., JEI 2022), as its GitHub repository lays it out::

        root/Images/<name>                    # 12,000 JPEGs, 512x512, e.g. 'ss03 (3753).jpg'
        root/Train (Images and MOS).csv       # 'Image Name', 'MOS' (+ empty columns): 10,000
        root/Test (Images and MOS).csv        # 2,000: the official test split

    ``mos`` stays on the release's 0-1 scale (1-5 ratings of 30 observers, rescaled).
    ``split`` is the official one (train / test); ``subset`` is the name prefix (ss01 gallery
    photos, ss02 deliberate camera-setting variations, ss03 Unsplash). One file is ``.JPG``
    where the CSV says ``.jpg``: it is used, with a warning. ``split`` ('train' or 'test')
    keeps that part alone (e.g. the official test set as a cross-dataset test).
    """
    import pandas as pd

    if split not in (None, "train", "test"):
        raise ValueError(f"biq2021: split must be 'train', 'test' or None, not {split!r}")
    folder = root / "Images"
    listing: dict[str, str] = {}
    if folder.is_dir():
        for n in sorted(p.name for p in folder.iterdir()):
            listing[n] = n
            listing.setdefault(f"\0{n.lower()}", n)
    parts = []
    for part, names in (("train", ("Train (Images and MOS).csv", "Train*.csv")), ("test", ("Test (Images and MOS).csv", "Test*.csv"))):
        if split is not None and part != split:
            continue
        csv = _first_existing(root, names, "biq2021")
        df = read_csv_table(csv)
        name_col = _column(df, "Image Name", "image", file=csv)
        mos_col = _column(df, "MOS", file=csv)
        df = df[pd.notna(df[name_col])]
        names_ = [str(n).strip() for n in df[name_col]]
        parts.append(pd.DataFrame({
            "image": [str(_resolve_case(folder, n, listing, "biq2021")) for n in names_],
            "mos": df[mos_col].values,
            "split": part,
            "subset": [n.split(" ")[0] for n in names_],
        }))
    return pd.concat(parts, ignore_index=True)


_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def _declared_range(line: str, path: Path) -> tuple[float, float] | None:
    """``# mos_range: LO HI`` (or ``LO-HI``, ``LO to HI``, ``LO, HI``) of a CSV's first line;
    a comment that names mos_range but does not give two numbers, low below high, is an error
    (read wrongly, it would put every MOS on another scale without a word)."""
    # any case, "_", "-" or a space between the words: a spelling read as no declaration would
    # leave the scale to the guess from the values
    name = r"mos[\s_-]*range"
    if not re.search(name, line, re.IGNORECASE):
        return None
    # A spreadsheet saving the file pads the comment's row with empty cells: "# mos_range: 0 9,,"
    line = line.strip().rstrip(",;\t ")
    m = re.search(rf"{name}\s*[:=]?\s*({_NUMBER})\s*(?:,|\bto\b|-|\s)\s*({_NUMBER})\s*$", line, re.IGNORECASE)
    if not m:
        raise ValueError(f"{path}: cannot read the rating scale from {line.strip()!r}; write '# mos_range: LO HI'")
    lo, hi = float(m.group(1)), float(m.group(2))
    if not lo < hi:
        raise ValueError(f"{path}: mos_range {lo:g} {hi:g} is empty: the low end must be below the high end")
    return lo, hi


@register_dataset("csv", MOSScale(0.0, 100.0))
def load_csv(root: Path, mos_range: tuple[float, float] | None = None) -> pd.DataFrame:
    """A generic CSV: ``image,mos[,mos_std][,category][,split]``, image paths relative to the CSV.

    The MOS scale is taken from ``mos_range`` when given, else from a ``# mos_range: lo hi``
    comment on the first line, else guessed from the values: within [0, 1] -> 0-1, within
    [1, 5] -> 1-5, within [0, 5] -> 0-5, within [0, 100] -> 0-100; values outside every one of
    those (a 0-1000 or z-score MOS) must be declared, since a wrong scale would clip every score.
    """
    import pandas as pd

    path = Path(root)
    if path.is_dir():
        candidates = sorted(path.glob("*.csv"))
        if len(candidates) != 1:
            raise ValueError(f"csv: {path} is a folder with {len(candidates)} CSV files; pass the CSV file itself")
        path = candidates[0]
    # utf-8-sig: a spreadsheet's byte-order mark must not hide the comment line
    first = leading_comment(path)
    declared = _declared_range(first, path) if first is not None else None
    df = read_csv_table(path, skip_comment=True)
    written = list(df.columns)
    df.columns = canonical_columns(df, path)
    for col in ("image", "mos"):
        if col not in df.columns:
            raise ValueError(f"{path}: CSV needs columns 'image' and 'mos'; it has {list(df.columns)}")
    # file names as written: '0001' is not the number 1, nor a file called 'NA' a missing cell
    name = written[list(df.columns).index("image")]
    df["image"] = read_csv_table(path, skip_comment=True, usecols=[name], dtype=str,
                                 keep_default_na=False, na_values=[""])[name].to_numpy()
    blank = df["image"].isna() | (df["image"].astype(str).str.strip() == "")
    if blank.any():
        rows = [int(i) + 1 for i in df.index[blank][:5]]
        raise ValueError(f"{path}: empty 'image' cell in data row(s) {rows} (counted from 1 after the header)")
    base = path.parent
    # absolute ones normalised too: one spelling each. A cell written "a.png, 10" after a comma
    # holds " a.png": its spaces are the CSV's, unless a file is named with them
    df["image"] = [under_root(base, cell_path(base, str(p))) for p in df["image"]]
    if mos_range is not None and not float(mos_range[0]) < float(mos_range[1]):
        raise ValueError(f"{path}: mos_range {tuple(mos_range)} is empty: the low end must be below the high end")
    lo_hi = mos_range or declared
    # Only finite numbers say what the scale is: other cells are the table check's to name.
    mos = pd.to_numeric(df["mos"], errors="coerce").replace([float("inf"), float("-inf")], float("nan"))
    if lo_hi is None:
        lo, hi = float(mos.min()), float(mos.max())
        # Narrowest range first: values within [0, 1] are also within [0, 5].
        if lo >= 0 and hi <= 1:
            lo_hi = (0.0, 1.0)
        elif lo >= 1 and hi <= 5:
            lo_hi = (1.0, 5.0)
        elif lo >= 0 and hi <= 5:
            lo_hi = (0.0, 5.0)
        elif lo >= 0 and hi <= 100:
            lo_hi = (0.0, 100.0)
            if hi <= 10:  # e.g. a 0-9 scale (TID2013): 0-100 would squeeze every rating into its bottom tenth
                warnings.warn(f"{path}: MOS values span [{lo:g}, {hi:g}], read on a 0-100 scale; if the ratings "
                              "used another, declare it with a first line '# mos_range: LO HI'", stacklevel=2)
        else:  # nan (no numbers) is left to the table's own check, which names the bad cells
            if lo == lo and hi == hi:
                raise ValueError(f"{path}: MOS values span [{lo:g}, {hi:g}], outside the scales guessed from the values "
                                 f"(0-1, 1-5, 0-5, 0-100); declare the rating scale with a first line "
                                 f"'# mos_range: LO HI'")
            lo_hi = (0.0, 100.0)
    else:
        outside = (mos < lo_hi[0]) | (mos > lo_hi[1])
        if outside.any():
            raise ValueError(f"{path}: {int(outside.sum())} MOS value(s) outside the declared range "
                             f"{lo_hi[0]:g} to {lo_hi[1]:g}, e.g. {mos[outside].iloc[0]:g}")
    df.attrs["__scale__"] = MOSScale(float(lo_hi[0]), float(lo_hi[1]))
    return df
