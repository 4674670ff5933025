"""A single self-contained HTML report of a scoring run.

Everything is inside the one file: thumbnails are base64 JPEGs (~256 px, so thousands of
images stay a manageable size), the score histogram and the category counts are HTML with CSS
bars (no plotting library: reports are written by the torch-free install too). No JavaScript
and no external assets. The result rows are also embedded as JSON
(``<script type="application/json" id="contentiqa-results">``), which is what
``contentiqa score --resume`` reads back from an HTML output.
"""
from __future__ import annotations

import base64
import bisect
import datetime as _dt
import html
import io
import json
import os
import re
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from PIL import Image, ImageOps

from ..utils.io import atomic_write_text
from ..utils.terminal import printable
from .results import NAME_ERRORS, normalize_row, row_file, row_ok, sort_rows

DEFAULT_TITLE = "contentiqa quality report"

if TYPE_CHECKING:  # reporting takes models as data; it does not import the model layer
    from ..inference.scorer import Scorer
    from ..models.base import IQAModel

THUMBNAIL_SIZE = 256
_RESULTS_RE = re.compile(
    r'<script type="application/json" id="contentiqa-results">(.*?)</script>', re.S
)
_IMAGE_RE = {kind: re.compile(rf'<img class="{kind}" data-path="([^"]*)" src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"')
             for kind in ("thumb", "heatmap")}
_CAPTION_RE = re.compile(r'<p class="muted">Right-hand image: (.*?); shown for \d+ image\(s\)\.</p>')


def caption_for_heatmaps(target: str, attention: bool) -> str:
    """What a report's heatmaps show: the quality or content map, fused with the model's
    spatial attention when it has some (IQA-CR), else plain Grad-CAM (IE-IQA)."""
    raised = "the score" if target == "quality" else "the category"
    return (f"{target} heatmap ({'Grad-CAM x attention' if attention else 'Grad-CAM'}; red: the regions that raised "
            f"{raised} most, blue: none)")


# -- images -------------------------------------------------------------------------------
def make_thumbnail(image: Image.Image, size: int = THUMBNAIL_SIZE, quality: int = 75) -> bytes:
    """JPEG bytes of ``image`` shrunk to fit ``size`` x ``size``."""
    im = image.convert("RGB") if image.mode != "RGB" else image.copy()
    im.thumbnail((size, size), Image.BILINEAR, reducing_gap=2.0)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def thumbnail_from_file(path: str | os.PathLike, size: int = THUMBNAIL_SIZE, max_pixels: int | None = None) -> bytes | None:
    """A thumbnail read straight from a file (JPEGs decoded at reduced size), EXIF
    orientation applied; None if the file cannot be read."""
    from ..data.imageio import decodable_formats, load_image

    try:
        with Image.open(path, formats=decodable_formats()) as im:
            if max_pixels is not None and im.size[0] * im.size[1] > max_pixels:
                return None
            if im.format == "JPEG":
                im.draft("RGB", (size * 2, size * 2))
                im.load()
                oriented = ImageOps.exif_transpose(im)
                return make_thumbnail(oriented.convert("RGB"), size)
        loaded = load_image(path, max_pixels=max_pixels, min_size=1)
        return make_thumbnail(loaded.image, size)
    except Exception:
        return None


def data_uri(jpeg_or_png: bytes, mime: str = "image/jpeg") -> str:
    return f"data:{mime};base64," + base64.b64encode(jpeg_or_png).decode("ascii")


def histogram_html(scores: Sequence[float], score_range: tuple[float, float], higher_is_better: bool = True,
                   bins: int = 20, height: int = 120) -> str:
    """A histogram of ``scores`` over the model's range (extended to the scores if needed) as
    HTML: one CSS bar per bin, its count in the bar's title, the range's ends below."""
    lo, hi = float(score_range[0]), float(score_range[1])
    if not scores:
        return '<div class="histogram muted">no scores</div>'
    lo, hi = min(lo, min(scores)), max(hi, max(scores))
    width = (hi - lo) / bins or 1.0
    counts = [0] * bins
    for v in scores:
        counts[min(bins - 1, max(0, int((v - lo) / width)))] += 1
    top = max(counts)
    bars = "".join(
        f'<span class="hbar" title="{lo + i * width:g} to {lo + (i + 1) * width:g}: {n} image(s)" '
        f'style="height:{round(height * n / top)}px"></span>' for i, n in enumerate(counts))
    return (f'<div class="histogram" role="img" aria-label="score histogram"><div class="hbars" style="height:{height}px">'
            f'{bars}</div><div class="haxis"><span>{lo:g}</span><span>predicted score '
            f'({"higher" if higher_is_better else "lower"} is better)</span><span>{hi:g}</span></div></div>')


# -- reading back --------------------------------------------------------------------------
def read_html_rows(text: str) -> list[dict[str, Any]]:
    """The result rows embedded in a report written by :func:`render_html_report`."""
    m = _RESULTS_RE.search(text)
    if m is None:
        raise ValueError("not a contentiqa HTML report (no embedded results)")
    rows = json.loads(m.group(1))
    if not isinstance(rows, list):
        raise ValueError("embedded results are not a list")
    return rows


def _read_images(text: str, kind: str) -> dict[str, bytes]:
    found = {html.unescape(p): base64.b64decode(b) for p, b in _IMAGE_RE[kind].findall(text)}
    # A name that is not valid UTF-8 was written backslash-escaped (NAME_ERRORS["html"]): the
    # embedded rows read back the name itself, an attribute its escaped text. Keyed as the rows are.
    try:
        rows = read_html_rows(text)
    except ValueError:
        return found
    written = {}
    for r in rows:
        path = str(r.get("path"))
        written[path.encode("utf-8", NAME_ERRORS["html"]).decode("utf-8")] = path
    return {written.get(p, p): b for p, b in found.items()}


def read_html_thumbnails(text: str) -> dict[str, bytes]:
    """path -> thumbnail JPEG bytes from a report (so a resumed run need not re-decode)."""
    return _read_images(text, "thumb")


def read_html_heatmaps(text: str) -> tuple[dict[str, bytes], str | None]:
    """``(path -> heatmap JPEG bytes, their caption)`` from a report: a resumed run keeps them."""
    found = _CAPTION_RE.search(text)
    return _read_images(text, "heatmap"), html.unescape(found.group(1)) if found else None


# -- rendering -----------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:1.5em;margin:0 0 4px}h2{font-size:1.15em;margin:28px 0 8px}
.summary td{padding:2px 12px 2px 0;vertical-align:top}.summary td:first-child{color:#666}
.row{display:flex;flex-wrap:wrap;gap:32px;align-items:flex-start}
table.counts td,table.errors td,table.errors th{padding:2px 10px 2px 0;text-align:left}
.bar{display:inline-block;height:10px;background:#3b7dd8;border-radius:2px}
.histogram{width:480px;max-width:100%}.hbars{display:flex;align-items:flex-end;gap:2px;border-bottom:1px solid #999}
.hbar{flex:1;background:#3b7dd8;border-radius:2px 2px 0 0;min-height:1px}
.haxis{display:flex;justify-content:space-between;color:#666;font-size:.8em}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:14px;align-items:start}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px;font-size:.85em;
 content-visibility:auto;contain-intrinsic-size:220px 300px}
.card img{width:100%;height:auto;max-height:320px;object-fit:contain;display:block;border-radius:3px}
.card .imgs{display:flex;gap:4px}.card .imgs img{flex:1;min-width:0}
.score{font-size:1.3em;font-weight:600}.name{word-break:break-all;color:#444}
.cat{color:#555}.note{color:#8a6d00}.err{color:#b00020;word-break:break-word}
.muted{color:#777}
"""


def _esc(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _shown(x: Any) -> str:
    """Text a reader sees (a file name, an error): controls and bidirectional overrides written
    as escapes, as the terminal shows them (``a\\u202etxt.jpg`` otherwise reads "agpj.txt")."""
    return _esc(printable("" if x is None else str(x)))


def _fmt(x: float | None, digits: int = 2) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def render_html_report(
    rows: Sequence[Mapping[str, Any]],
    model_info: Mapping[str, Any],
    thumbnails: Mapping[str, bytes] | None = None,
    heatmaps: Mapping[str, bytes] | None = None,
    title: str = DEFAULT_TITLE,
    notes: Sequence[str] = (),
    heatmap_caption: str | None = None,
    order: str | None = None,
) -> str:
    """The report as one HTML string.

    ``model_info``: ``name``, ``score_range`` (low, high), ``higher_is_better``, and optionally
    ``predicts_score`` (False: a content-only model, its rows a category and no score),
    ``categories``, ``checkpoint``, ``meaning``. ``thumbnails`` / ``heatmaps``: path -> JPEG
    bytes; ``heatmap_caption``: what they show (:func:`caption_for_heatmaps`; None: IQA-CR's
    quality map). ``order``: the cards' order, as :func:`~.results.sort_rows` takes it (None:
    best first); failed inputs are listed in their own table.
    """
    rows = [normalize_row(r) for r in rows]  # a NaN or infinite score is no score (hand-made rows)
    thumbnails = thumbnails or {}
    heatmaps = heatmaps or {}
    heatmap_caption = heatmap_caption or caption_for_heatmaps("quality", attention=True)
    lo, hi = model_info.get("score_range", (0.0, 100.0))
    hib = bool(model_info.get("higher_is_better", True))
    scored = bool(model_info.get("predicts_score", True))
    if not scored and title == DEFAULT_TITLE:
        title = "contentiqa content report"
    ok = [r for r in rows if row_ok(r)]
    bad = [r for r in rows if not row_ok(r)]
    best = "-score" if hib else "score"
    order = order or best
    ok_sorted = sort_rows(ok, order)  # a content-only model's rows (no score) by path
    heading = ("by path" if order == "path" or not scored else "best first" if order == best else "worst first")
    scores = [float(r["score"]) for r in ok if r.get("score") is not None]
    # the badge is the photo's rank by quality (1 = best; equal scores share one) whatever order
    # the cards are shown in; a row without a score has none
    ranked = sorted(scores)
    quality_rank = {id(r): 1 + (len(ranked) - bisect.bisect_right(ranked, float(r["score"])) if hib
                                else bisect.bisect_left(ranked, float(r["score"])))
                    for r in ok if r.get("score") is not None}
    meaning = model_info.get(
        "meaning",
        "Predicted mean opinion score (MOS): the quality people would rate the photo, on the "
        "scale of the data the model was trained on.",
    )
    out: list[str] = []
    a = out.append
    a("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">")
    a("<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">")
    a(f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>")
    a(f"<h1>{_esc(title)}</h1>")
    a(f"<p class=\"muted\">generated {_esc(_dt.datetime.now().strftime('%Y-%m-%d %H:%M'))} by contentiqa</p>")

    # summary
    a("<h2>Summary</h2><table class=\"summary\">")
    # a model's name, file and categories are shown as file names are (controls and bidi
    # overrides as escapes): a checkpoint 'ab\u202ecod.pt' otherwise reads "abtp.doc"
    a(f"<tr><td>model</td><td>{_shown(model_info.get('name', '?'))}</td></tr>")
    if model_info.get("checkpoint"):
        a(f"<tr><td>checkpoint</td><td>{_shown(model_info['checkpoint'])}</td></tr>")
    if model_info.get("precision"):
        a(f"<tr><td>precision</td><td>{_shown(model_info['precision'])}</td></tr>")
    if scored:
        a(f"<tr><td>score scale</td><td>{lo:g} to {hi:g}, {'higher' if hib else 'lower'} is better</td></tr>")
        a(f"<tr><td>meaning</td><td>{_esc(meaning)}</td></tr>")
    else:
        a("<tr><td>output</td><td>content categories only (this model gives no quality score)</td></tr>")
    a(f"<tr><td>images</td><td>{len(rows)} inputs: {len(ok)} {'scored' if scored else 'classified'}, "
      f"{len(bad)} failed</td></tr>")
    if scores:
        a(
            f"<tr><td>scores</td><td>min {min(scores):.2f} &middot; median {statistics.median(scores):.2f} "
            f"&middot; mean {statistics.fmean(scores):.2f} &middot; max {max(scores):.2f}</td></tr>"
        )
    for n in notes:
        a(f"<tr><td>note</td><td>{_shown(n)}</td></tr>")  # notes name files too
    a("</table>")

    # histogram + categories
    a("<div class=\"row\">")
    if scored:
        a("<div><h2>Score distribution</h2>")
        a(histogram_html(scores, (lo, hi), hib))
        a("</div>")
    cats = [r.get("category") for r in ok if r.get("category")]
    if cats or model_info.get("categories"):
        counts: dict[str, int] = {c: 0 for c in model_info.get("categories", [])}
        for c in cats:
            counts[c] = counts.get(c, 0) + 1
        top = max(counts.values()) if counts else 0
        a("<div><h2>Categories</h2><table class=\"counts\">")
        for c, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
            width = 0 if top == 0 else int(round(160 * n / top))
            a(f"<tr><td>{_shown(c)}</td><td>{n}</td><td><span class=\"bar\" style=\"width:{width}px\"></span></td></tr>")
        a("</table></div>")
    a("</div>")

    # failures
    if bad:
        a(f"<h2>Failed inputs ({len(bad)})</h2><table class=\"errors\"><tr><th>path</th><th>error</th></tr>")
        for r in bad:
            a(f"<tr><td class=\"name\">{_shown(r.get('path'))}</td><td class=\"err\">{_shown(r.get('error') or 'no score')}</td></tr>")
        a("</table>")

    # cards
    a(f"<h2>Images, {heading} ({len(ok_sorted)})</h2>")
    shown = sum(1 for r in ok_sorted if str(r["path"]) in heatmaps)
    if shown:
        a(f"<p class=\"muted\">Right-hand image: {_esc(heatmap_caption)}; shown for {shown} image(s).</p>")
    a("<div class=\"grid\">")
    for rank, r in enumerate(ok_sorted, 1):
        path = str(r["path"])
        a(f"<div class=\"card\" id=\"card-{rank}\"><div class=\"imgs\">")
        thumb = thumbnails.get(path)
        if thumb is not None:
            a(f"<img class=\"thumb\" data-path=\"{_esc(path)}\" src=\"{data_uri(thumb)}\" alt=\"{_shown(os.path.basename(path))}\">")
        else:
            a("<span class=\"muted\">(no thumbnail)</span>")
        if path in heatmaps:
            a(f"<img class=\"heatmap\" data-path=\"{_esc(path)}\" src=\"{data_uri(heatmaps[path])}\" alt=\"heatmap\">")
        a("</div>")
        if scored:
            a(f"<div class=\"score\">{_fmt(r['score'])} <span class=\"muted\" title=\"rank by quality, 1 = best\">"
              f"#{quality_rank[id(r)]}</span></div>" if id(r) in quality_rank else
              f"<div class=\"score\">{_fmt(r['score'])}</div>")
        if r.get("category"):
            a(f"<div class=\"cat\">{_shown(r['category'])} ({_fmt(r.get('category_confidence'))})</div>")
        a(f"<div class=\"name\" title=\"{_shown(path)}\">{_shown(path)}</div>")
        if r.get("notes"):
            a(f"<div class=\"note\">{_shown(r['notes'])}</div>")
        a("</div>")
    a("</div>")

    payload = json.dumps([dict(r) for r in rows], ensure_ascii=False).replace("<", "\\u003c")
    a(f"<script type=\"application/json\" id=\"contentiqa-results\">{payload}</script>")
    a("</body></html>\n")
    return "\n".join(out)


def write_html_report(
    path: str | os.PathLike,
    rows: Sequence[Mapping[str, Any]],
    model_info: Mapping[str, Any],
    thumbnails: Mapping[str, bytes] | None = None,
    heatmaps: Mapping[str, bytes] | None = None,
    fill_missing_thumbnails: bool = True,
    thumbnail_size: int = THUMBNAIL_SIZE,
    **kwargs: Any,
) -> Path:
    """Render and write the report atomically. With ``fill_missing_thumbnails``, scored rows
    without a thumbnail get one read from their file (``thumbnails`` is updated in place
    when it is a dict, so periodic rewrites do not decode twice)."""
    thumbs = thumbnails if isinstance(thumbnails, dict) else dict(thumbnails or {})
    if fill_missing_thumbnails:
        for r in rows:
            p = str(r.get("path"))
            if row_ok(r) and p not in thumbs:
                own = row_file(r)  # an earlier run's row from its folder; as written, from here, when that is unknown
                t = thumbnail_from_file(own if own is not None else p, thumbnail_size)
                if t is not None:
                    thumbs[p] = t
    return atomic_write_text(path, render_html_report(rows, model_info, thumbs, heatmaps, **kwargs),
                             errors=NAME_ERRORS["html"])


def score_higher_is_better(model: "IQAModel | Scorer") -> bool:
    """Direction of the scores a model reports (its MOS scale's, e.g. False for DMOS)."""
    return bool(model.scale.higher_is_better)


def model_info(scorer: "Scorer") -> dict[str, Any]:
    """The ``model_info`` mapping of the report for what a :class:`~contentiqa.inference.scorer.Scorer`
    scores with: name, weights file, precision, scale and categories."""
    ident = scorer.identity
    lo, hi = scorer.score_range
    info: dict[str, Any] = {
        "name": ident.name,
        "score_range": (float(lo), float(hi)),
        "higher_is_better": score_higher_is_better(scorer),
        "predicts_score": scorer.predicts_score,
        "categories": list(scorer.categories),
        "precision": ident.precision,
    }
    if ident.weights is not None:
        info["checkpoint"] = str(ident.weights)
    if ident.sha256:
        info["weights_sha256"] = ident.sha256
    return info
