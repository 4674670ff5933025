"""Result rows (one per input) and their files: CSV, JSON, JSON Lines and the HTML report.

A row is a dict with the keys of :data:`FIELDS`: ``path``, ``score`` (float on the model's
MOS scale, or None), ``category``, ``category_confidence``, ``error`` (None when scored) and
``notes`` (a '; '-joined string); rows written by ``contentiqa score`` also carry the
:data:`MODEL_FIELDS` (which model, weights file and its SHA-256, the numeric precision it ran in,
contentiqa version), so a file always says what scored it and ``--resume`` can refuse to mix two
models, or one model's fp32 and int8 graphs, and :data:`RUN_FIELDS` (the folder a relative
``path`` starts from), so ``--resume`` from another folder finds each row's own file. Every
write is atomic (temporary file + rename), so a run killed mid-write leaves the previous complete
file, never a half-written one.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from ..utils.io import atomic_write_text
from ..utils.spreadsheet import looks_like_formula
from ..utils.terminal import printable

if TYPE_CHECKING:
    from ..inference.scorer import ScorerIdentity

FIELDS = ("path", "score", "category", "category_confidence", "error", "notes")
MODEL_FIELDS = ("model", "weights_tag", "weights", "weights_sha256", "precision", "contentiqa_version")
RUN_FIELDS = ("start_folder",)
PRECISION_LABELS = ("fp32", "int8", "fp16", "bf16")
"""What the ``precision`` field holds: the ONNX graph's precision (fp32 / int8), or the
PyTorch autocast dtype (fp16 / bf16; fp32 without autocast)."""
FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "jsonl", ".html": "html", ".htm": "html"}


def output_format(path: str | os.PathLike) -> str:
    """'csv' | 'json' | 'jsonl' | 'html' from the file extension; ValueError otherwise."""
    ext = Path(path).suffix.lower()
    if ext not in FORMATS:
        raise ValueError(f"unsupported output extension {ext or '(none)'!r} for {path}; use one of .csv, .json, .jsonl, .html")
    return FORMATS[ext]


def _num(x: Any, digits: int = 6) -> float | None:
    if x is None or x == "":
        return None
    v = float(x)
    return round(v, digits) if math.isfinite(v) else None  # NaN and inf are no number (and not JSON)


def normalize_row(row: dict[str, Any]) -> dict[str, Any]:
    """Coerce a row read from any format (or made from a Prediction) to the canonical types."""
    out = dict(row)
    out["path"] = str(row.get("path") or "")
    out["score"] = _num(row.get("score"))
    out["category"] = row.get("category") or None
    out["category_confidence"] = _num(row.get("category_confidence"))
    out["error"] = row.get("error") or None
    notes = row.get("notes")
    out["notes"] = "; ".join(notes) if isinstance(notes, (list, tuple)) else (notes or "")
    return out


def row_from_prediction(pred) -> dict[str, Any]:
    """A :class:`~contentiqa.models.Prediction` -> row."""
    return normalize_row(pred.to_dict())


def model_record(identity: ScorerIdentity) -> dict[str, str]:
    """The :data:`MODEL_FIELDS` of what scored a row (a scorer's
    :class:`~contentiqa.inference.scorer.ScorerIdentity`): the weights file it was read from and
    that file's SHA-256 identify the model exactly (shipped weights by their file name, a file
    given by path by that path); ``precision`` says how it was run."""
    if identity.precision not in PRECISION_LABELS:
        raise ValueError(f"unknown precision {identity.precision!r}: one of {', '.join(PRECISION_LABELS)}")
    from .. import __version__

    path = identity.weights
    given_as_file = path is not None and identity.tag is None
    return {
        "model": identity.name or identity.spec,
        "weights_tag": identity.tag or "",
        "weights": "" if path is None else (str(path) if given_as_file else path.name),
        "weights_sha256": identity.sha256 or "",
        "precision": identity.precision,
        "contentiqa_version": __version__,
    }


def row_file(row: dict[str, Any]) -> str | None:
    """The file a row names: its absolute path, or its relative one read from the row's
    ``start_folder`` while the photo's folder is there (the photo in it, or deleted since). None
    where that cannot be told: no start folder (an older contentiqa, a hand edit), or the photos
    have moved (the start folder alone is often a parent that stayed)."""
    path = str(row.get("path") or "")
    if os.path.isabs(path):
        return path
    folder = row.get("start_folder")
    if not folder or not os.path.isabs(folder):
        return None
    own = os.path.join(folder, path)
    return own if os.path.isdir(os.path.dirname(own)) else None


def row_ok(row: dict[str, Any]) -> bool:
    """A result, not a failure: a score, or for a content-only model (IQA-CR-C) a category."""
    return not row.get("error") and (row.get("score") is not None or bool(row.get("category")))


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return str(v)


NAME_ERRORS = {"csv": "surrogateescape", "json": "backslashreplace", "jsonl": "backslashreplace",
               "html": "backslashreplace"}
"""How each format writes a file name that is not valid UTF-8 (bytes Python holds as lone
surrogates): a CSV cell gets the name's own bytes back; JSON, and the HTML report's embedded
JSON, a ``\\udcXX`` escape, which is valid JSON and reads back as the same name (``--resume``)."""


def rows_to_csv(rows: Iterable[dict[str, Any]]) -> str:
    """The rows as CSV, the scoring model's columns always: the parts of a sharded run are joined
    under the first part's header, and an empty part's must be the same."""
    rows = [normalize_row(r) for r in rows]  # a NaN or infinite score is no score, as in JSON
    fields = FIELDS + MODEL_FIELDS + RUN_FIELDS
    # columns a user added to the table (kept through --resume, as JSON keeps extra keys)
    fields += tuple(dict.fromkeys(k for r in rows for k in r if isinstance(k, str) and k not in fields))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    # A carriage return in a file name is no line end to the writer (its terminator is "\n"), so
    # it would go unquoted and read back as two rows: such a row is written fully quoted.
    quoted = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)
    w.writerow(fields)
    for r in rows:
        cells = [_csv_path(_cell(r.get(k))) if k == "path" else _csv_text(r.get(k)) for k in fields]
        (quoted if any("\r" in c for c in cells) else w).writerow(cells)
    return buf.getvalue()


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _csv_path(path: str) -> str:
    """A file name a spreadsheet would run as a formula (``=cmd|...``, ``+SUM(...)``) gets a
    leading ``./``: the same file (``--resume`` keys by the resolved path), inert as text."""
    return "./" + path if looks_like_formula(path) else path


def _csv_text(v: Any) -> str:
    """A cell other than the path: text a spreadsheet would run as a formula (a model file's
    own category or model name, '=HYPERLINK(...)') gets a leading apostrophe, as spreadsheets
    write literal text; numbers (a negative score) are left as they are."""
    cell = _cell(v)
    # (apostrophes already before formula-like text get one more: reading back drops one)
    if not isinstance(v, str) or not looks_like_formula(cell.lstrip("'")) or _NUMBER.fullmatch(cell):
        return cell  # a number read back as text (a column of one's own, on --resume) stays one
    return "'" + cell


def _from_csv_text(cell: str) -> str:
    """A cell other than the path as :func:`_csv_text` was given it: its apostrophe dropped."""
    return cell[1:] if cell[:1] == "'" and looks_like_formula(cell.lstrip("'")) else cell


def _json_row(r: dict[str, Any]) -> dict[str, Any]:
    r = normalize_row(r)
    extra = {k: v for k, v in r.items() if k not in FIELDS}
    return {**{k: r.get(k) for k in FIELDS}, **extra}


def write_results(path: str | os.PathLike, rows: Sequence[dict[str, Any]], fmt: str | None = None) -> Path:
    """Write rows as CSV / JSON / JSON Lines (atomically). HTML: see :mod:`.html`."""
    fmt = fmt or output_format(path)
    if fmt == "csv":
        text = rows_to_csv(rows)
    elif fmt == "json":
        text = json.dumps([_json_row(r) for r in rows], indent=1, ensure_ascii=False) + "\n"
    elif fmt == "jsonl":
        text = "".join(json.dumps(_json_row(r), ensure_ascii=False) + "\n" for r in rows)
    else:
        raise ValueError(f"write_results does not write {fmt!r}")
    return atomic_write_text(path, text, errors=NAME_ERRORS[fmt])


def read_results(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read the rows of a results file written by :func:`write_results` or an HTML report
    (whose rows are embedded as JSON). Raises ValueError for a file it cannot parse."""
    fmt = output_format(path)
    # utf-8-sig: a table a spreadsheet saved again starts with a byte-order mark. Decoded as
    # bytes, not read as text: universal newlines would turn a "\r" inside a file name into "\n".
    text = Path(path).read_bytes().decode("utf-8-sig", errors="surrogateescape")
    try:
        if fmt == "csv":
            reader = csv.DictReader(io.StringIO(text))
            if reader.fieldnames is None or "path" not in reader.fieldnames:
                raise ValueError("no 'path' column")
            rows = [{k: _from_csv_text(v) if k != "path" and isinstance(v, str) else v for k, v in r.items()}
                    for r in reader]
        elif fmt == "json":
            rows = json.loads(text) if text.strip() else []
            if not isinstance(rows, list):
                raise ValueError("not a JSON list")
        elif fmt == "jsonl":
            rows = []
            # "\n" ends a JSON Lines record; splitlines() would also break a file name at the
            # U+0085, U+2028 or U+2029 that json.dumps(ensure_ascii=False) leaves as they are.
            lines = text.split("\n")
            for k, line in enumerate(lines):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    if k == len(lines) - 1:  # a torn last line (file appended by another tool)
                        break
                    raise
        else:
            from .html import read_html_rows

            rows = read_html_rows(text)
        out = []
        for k, r in enumerate(rows, 1):
            if not (isinstance(r, dict) and r.get("path")):
                # not a results file (another tool's table): refused, never overwritten
                raise ValueError(f"row {k} is not a result (no 'path')")
            try:
                out.append(normalize_row({key: v for key, v in r.items() if isinstance(key, str)}))
            except (TypeError, ValueError) as exc:  # a cell edited by hand: "n/a", a list
                raise ValueError(f"row {k} ({r.get('path')!r}): {exc}") from None
    except (ValueError, KeyError, csv.Error) as exc:
        raise ValueError(f"cannot read results from {path}: {exc}") from None
    return out


def sort_rows(rows: Sequence[dict[str, Any]], order: str | None) -> list[dict[str, Any]]:
    """``order``: None (as is), 'score' (ascending), '-score' (descending) or 'path'.
    Failed rows (:func:`row_ok` false) always come last; a content-only model's rows, which
    have no score, are ordered by path."""
    rows = list(rows)
    if not order:
        return rows
    if order not in ("score", "-score", "path"):
        raise ValueError(f"unknown sort order {order!r}")
    ok = [r for r in rows if row_ok(r)]
    bad = sorted((r for r in rows if not row_ok(r)), key=lambda r: r["path"])
    unscored = sorted((r for r in ok if r.get("score") is None), key=lambda r: r["path"])
    if order == "path" or len(unscored) == len(ok):
        return sorted(ok, key=lambda r: r["path"]) + bad
    # rows with a category and no score (a hand-edited table) after the scored ones: one of them
    # put every row in path order
    scored = sorted((r for r in ok if r.get("score") is not None), key=lambda r: r["score"], reverse=order == "-score")
    return scored + unscored + bad


def _shorten(s: str, width: int, keep_end: bool = True) -> str:
    if len(s) <= width:
        return s
    return "..." + s[-(width - 3):] if keep_end else s[: width - 3] + "..."


def format_table(rows: Sequence[dict[str, Any]], max_path: int = 60, max_error: int = 70) -> str:
    """A plain-text table: path, score, category, confidence, error (and notes if any)."""
    with_notes = any(r.get("notes") for r in rows)
    header = ["path", "score", "category", "confidence", "error"] + (["notes"] if with_notes else [])
    body = []
    for r in rows:
        cells = [
            _shorten(printable(r["path"]), max_path),
            "" if r.get("score") is None else f"{r['score']:.2f}",
            printable(r.get("category") or ""),
            "" if r.get("category_confidence") is None else f"{r['category_confidence']:.2f}",
            _shorten(printable(r.get("error") or ""), max_error, keep_end=False),
        ]
        if with_notes:
            cells.append(printable(r.get("notes") or ""))
        body.append(cells)
    widths = [max([len(header[i])] + [len(b[i]) for b in body]) for i in range(len(header))]
    right = {1, 3}

    def fmt(cells):
        return "  ".join(c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)).rstrip()

    lines = [fmt(header), fmt(["-" * w for w in widths])]
    lines += [fmt(b) for b in body]
    return "\n".join(lines)
