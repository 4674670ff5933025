"""Heatmap thumbnails for the HTML report (``contentiqa score --explain``): Grad-CAM x
attention of the best-scored images, from the PyTorch model of the weights that scored them."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from .html import caption_for_heatmaps, make_thumbnail, score_higher_is_better
from .results import row_ok, sort_rows

if TYPE_CHECKING:
    from ..models.base import IQAModel


def heatmap_thumbnails(model: IQAModel, rows: list[dict[str, Any]], limit: int, size: int, max_pixels: int,
                       progress: bool = False, locate: Callable[[dict[str, Any]], str] | None = None,
                       ) -> tuple[dict[str, bytes], list[str], str]:
    """``(path -> thumbnail, problems, caption)``: quality heatmap thumbnails of at most ``size``
    px for the best ``limit`` scored rows (0: all), explained on copies of at most
    ``max_pixels``, and what they show (:func:`caption_for_heatmaps`). A heatmap that fails is a
    problem line, never the report's end. ``locate``: the file a row names (an earlier run's
    relative paths were written from another folder); the thumbnails stay keyed by the rows'
    paths."""
    from tqdm.auto import tqdm

    from ..explain import explain

    ok = [r for r in rows if row_ok(r)]
    if model.predicts_score:  # the best first; a content-only model's rows (no score) in their order
        ok = sort_rows(ok, "-score" if score_higher_is_better(model) else "score")
    chosen = ok if limit == 0 else ok[:limit]
    maps: dict[str, bytes] = {}
    problems: list[str] = []
    targets = ("quality",) if model.predicts_score else ("category",)
    attention = False
    for r in tqdm(chosen, desc="explaining", unit="img", disable=not progress):
        try:
            exp = explain(model, locate(r) if locate else r["path"], targets=targets, max_pixels=max_pixels,
                          exact_score=False)
            which = "fused" if exp.fused is not None else "fused_category"
            maps[r["path"]] = make_thumbnail(exp.overlay(which, max_size=size), size)
            # a flat map alone would read as "everywhere alike"
            problems += [f"{r['path']}: {note}" for note in exp.notes if " map is empty" in note]
            attention = attention or exp.attention is not None
        except Exception as exc:  # a heatmap failure must not lose the report
            problems.append(f"{r['path']}: no heatmap ({exc})")
    return maps, problems, caption_for_heatmaps("quality" if model.predicts_score else "content", attention)
