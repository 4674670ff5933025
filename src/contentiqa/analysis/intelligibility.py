"""Intelligibility vs quality (IE-IQA §3.1, Fig. 2A/B).

The intelligibility of an image is measured as the top-1 probability ``c = max_i o_i`` of an
ImageNet classifier (Eq. 1; here the offline EfficientNet-Lite0, images resized to 224 x 224).
Then:

(a) the MOS range ``[min(MOS), max(MOS)]`` is cut into 6 equal intervals
    ``[m_i, m_{i+1})`` (the last one closed) and the mean confidence of each is reported
    (Fig. 2A: does quality affect intelligibility?);
(b) the confidence range is cut the same way (by default ``[min(c), max(c)]``; or ``[0, 1]``)
    and the mean MOS of each interval is reported (Fig. 2B: does intelligibility indicate
    quality?),

plus the Spearman (and Pearson) correlation between confidence and MOS.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn

from ..utils.io import atomic_write, atomic_write_text

N_BINS = 6


def equal_bins(values: Sequence[float], n_bins: int = N_BINS, value_range: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Assign each value to one of ``n_bins`` equal intervals of ``value_range`` (default
    ``[min, max]`` of the values). Bin ``i`` is ``[e_i, e_{i+1})``; the last bin also holds
    its upper edge. Returns ``(bin index per value (0-based; -1 for NaN or out of range),
    edges (n_bins + 1))``."""
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    if value_range is None:
        if finite.size == 0:
            raise ValueError("no finite values to bin")
        lo, hi = float(finite.min()), float(finite.max())
    else:
        lo, hi = map(float, value_range)
    if hi <= lo:
        hi = lo + 1e-12  # all values equal: everything falls in the first bin
    edges = np.linspace(lo, hi, n_bins + 1)
    idx = np.searchsorted(edges[1:-1], v, side="right")
    idx = np.where(np.isfinite(v) & (v >= lo) & (v <= hi), idx, -1)
    return idx.astype(int), edges


def bin_summary(bins: np.ndarray, edges: np.ndarray, values: Sequence[float], name: str) -> pd.DataFrame:
    """Per bin: ``bin`` (1-based), ``low``, ``high``, ``count`` and the mean / std of
    ``values`` in it (columns ``mean_<name>``, ``std_<name>``; NaN for an empty bin)."""
    v = np.asarray(values, dtype=np.float64)
    rows = []
    for i in range(len(edges) - 1):
        sel = v[bins == i]
        rows.append({
            "bin": i + 1,
            "low": float(edges[i]),
            "high": float(edges[i + 1]),
            "count": int(sel.size),
            f"mean_{name}": float(sel.mean()) if sel.size else float("nan"),
            f"std_{name}": float(sel.std(ddof=1)) if sel.size > 1 else float("nan"),
        })
    return pd.DataFrame(rows)


def _default_classifier(backbone: str = "efficientnet_lite0") -> tuple[nn.Module, tuple, tuple, list[str]]:
    from ..backbones import create_backbone, imagenet_class_names

    net = create_backbone(backbone, pretrained=True).eval()
    cfg = net.contentiqa_cfg
    try:
        names = imagenet_class_names()
    except Exception:  # class names are a nicety
        names = []
    return net, cfg.mean, cfg.std, names


def top1_confidence(
    images: Sequence[Any],
    classifier: nn.Module | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
    backbone: str = "efficientnet_lite0",
    size: int = 224,
    batch_size: int = 16,
    workers: int = 2,
    progress: bool = True,
) -> pd.DataFrame:
    """Top-1 softmax probability (Eq. 1) of an ImageNet classifier for each image (paths or
    PIL images), resized to ``size`` x ``size``. Returns a DataFrame with
    ``top1_confidence``, ``top1_index``, ``top1_class`` and ``error`` (unreadable files get
    NaN and the reason), in input order."""
    from tqdm.auto import tqdm

    from ..data.imageio import BOMB_HINT, ImageLoadError, load_image
    from ..models.base import pil_to_tensor

    if classifier is None:
        classifier, mean, std, names = _default_classifier(backbone)
        class_names = class_names or names
    if mean is None or std is None:
        cfg = getattr(classifier, "contentiqa_cfg", None)
        if cfg is None:
            raise ValueError("pass mean and std for a classifier not built by create_backbone")
        mean, std = cfg.mean, cfg.std
    class_names = list(class_names or [])
    classifier.eval()
    device = next(classifier.parameters()).device

    def prepare(item):
        try:
            img = item if isinstance(item, Image.Image) else load_image(item).image
            return pil_to_tensor(img.convert("RGB").resize((size, size), Image.BILINEAR), mean, std), None
        except ImageLoadError as exc:  # its reason: the row names the file already
            return None, exc.reason.replace(BOMB_HINT, "this command reads photos up to that size only")
        except (OSError, ValueError) as exc:
            return None, str(exc)

    n = len(images)
    conf = np.full(n, np.nan)
    index = np.full(n, -1, dtype=int)
    errors: list[str | None] = [None] * n
    bar = tqdm(total=n, desc="top-1 confidence", unit="img", disable=not progress)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for start in range(0, n, batch_size):
            chunk = list(range(start, min(n, start + batch_size)))
            prepared = list(pool.map(prepare, [images[i] for i in chunk]))
            ok = [(i, t) for i, (t, e) in zip(chunk, prepared) if t is not None]
            for i, (t, e) in zip(chunk, prepared):
                if t is None:
                    errors[i] = e
            if ok:
                with torch.inference_mode():
                    probs = classifier(torch.stack([t for _, t in ok]).to(device)).float().softmax(dim=1)
                p, j = probs.max(dim=1)
                for (i, _), pi, ji in zip(ok, p.tolist(), j.tolist()):
                    conf[i], index[i] = pi, ji
            bar.update(len(chunk))
    bar.close()
    labels = [class_names[k] if 0 <= k < len(class_names) else "" for k in index]
    return pd.DataFrame({"top1_confidence": conf, "top1_index": index, "top1_class": labels, "error": errors})


@dataclass
class IntelligibilityAnalysis:
    per_image: pd.DataFrame
    by_mos_bin: pd.DataFrame
    by_confidence_bin: pd.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)


def _as_table(source: Any) -> tuple[pd.DataFrame, str]:
    from ..data import IQADataset, load_dataset

    if isinstance(source, pd.DataFrame):
        return source.reset_index(drop=True), "table"
    if isinstance(source, IQADataset):
        return source.table.reset_index(drop=True), source.name
    ds = load_dataset("csv", source)
    return ds.table.reset_index(drop=True), str(source)


def analyze_intelligibility(
    source: Any,
    n_bins: int = N_BINS,
    confidence_range: str | tuple[float, float] = "data",
    confidences: Sequence[float] | None = None,
    name: str | None = None,
    **confidence_kwargs: Any,
) -> IntelligibilityAnalysis:
    """Run the §3.1 analysis on ``source``: a CSV path (``contentiqa.data.load_dataset('csv',
    ...)``), an :class:`~contentiqa.data.IQADataset`, or a DataFrame with ``image`` and
    ``mos``. ``confidence_range``: 'data' (``[min, max]`` of the confidences, like the MOS
    bins), 'unit' (``[0, 1]``) or an explicit ``(low, high)``. ``confidences`` skips the
    classifier (precomputed values, in table order); ``name`` is what errors and the summary
    call the source (default: the path, the dataset's name or 'table'); other keyword
    arguments go to :func:`top1_confidence`."""
    from scipy import stats

    table, default_name = _as_table(source)
    name = name or default_name
    if "image" not in table or "mos" not in table:
        raise ValueError(f"{name}: needs columns 'image' and 'mos'")
    if len(table) < 2:  # said before the classifier loads: no correlation from fewer
        held = "none (only a header?)" if len(table) == 0 else f"only {len(table)}"
        raise ValueError(f"{name}: the analysis needs at least two images; it lists {held}")
    if confidences is None:
        conf = top1_confidence(list(table["image"]), **confidence_kwargs)
    else:
        if len(confidences) != len(table):
            raise ValueError(f"{len(confidences)} confidences for {len(table)} images")
        conf = pd.DataFrame({"top1_confidence": np.asarray(confidences, dtype=float), "top1_index": -1, "top1_class": "", "error": None})
    per = pd.DataFrame({"image": table["image"].astype(str), "mos": table["mos"].astype(float)})
    per = pd.concat([per, conf.reset_index(drop=True)], axis=1)
    ok = per["top1_confidence"].notna() & per["mos"].notna()
    good = per[ok]
    if len(good) < 2:
        failed = per[~ok & per["error"].notna()]
        first = f"; first: {failed['image'].iloc[0]}: {failed['error'].iloc[0]}" if len(failed) else ""
        raise ValueError(f"{name}: fewer than two images could be scored ({int((~ok).sum())} of {len(per)} failed{first})")

    mos_bins, mos_edges = equal_bins(good["mos"], n_bins)
    if confidence_range == "data":
        c_range = None
    elif confidence_range == "unit":
        c_range = (0.0, 1.0)
    else:
        c_range = tuple(map(float, confidence_range))  # type: ignore[arg-type]
    conf_bins, conf_edges = equal_bins(good["top1_confidence"], n_bins, c_range)
    per["mos_bin"] = -1
    per["confidence_bin"] = -1
    per.loc[ok, "mos_bin"] = mos_bins + 1  # 1-based in the files; 0 = not binned
    per.loc[ok, "confidence_bin"] = conf_bins + 1
    per.loc[per["mos_bin"] < 1, "mos_bin"] = 0
    per.loc[per["confidence_bin"] < 1, "confidence_bin"] = 0

    by_mos = bin_summary(mos_bins, mos_edges, good["top1_confidence"], "confidence")
    by_mos.insert(4, "mean_mos", bin_summary(mos_bins, mos_edges, good["mos"], "mos")["mean_mos"])
    by_conf = bin_summary(conf_bins, conf_edges, good["mos"], "mos")
    by_conf.insert(4, "mean_confidence", bin_summary(conf_bins, conf_edges, good["top1_confidence"], "confidence")["mean_confidence"])

    c, m = good["top1_confidence"].to_numpy(), good["mos"].to_numpy()
    rho, p_rho = stats.spearmanr(c, m)
    r, p_r = stats.pearsonr(c, m)
    summary = {
        "source": name,
        "n_images": int(len(per)),
        "n_scored": int(len(good)),
        "n_failed": int((~ok).sum()),
        "n_bins": int(n_bins),
        "mos_range": [float(mos_edges[0]), float(mos_edges[-1])],
        "confidence_range": [float(conf_edges[0]), float(conf_edges[-1])],
        "spearman": float(rho),
        "spearman_p": float(p_rho),
        "pearson": float(r),
        "pearson_p": float(p_r),
        "mean_confidence": float(c.mean()),
        "mean_confidence_by_mos_bin": [None if np.isnan(v) else float(v) for v in by_mos["mean_confidence"]],
        "mean_mos_by_confidence_bin": [None if np.isnan(v) else float(v) for v in by_conf["mean_mos"]],
        "classifier": confidence_kwargs.get("backbone", "efficientnet_lite0") if confidences is None and confidence_kwargs.get("classifier") is None else "custom",
        "image_size": int(confidence_kwargs.get("size", 224)),
    }
    return IntelligibilityAnalysis(per, by_mos, by_conf, summary)


def _interval_labels(df: pd.DataFrame, digits: int) -> list[str]:
    """Bin edges as labels, with ``digits`` decimals or as many more as bins this narrow need to
    tell their edges apart (BIQ2021's MOS is on 0-1: one decimal gave '[0.5, 0.5)' twice)."""
    widths = (df["high"] - df["low"]).to_numpy(dtype=float)
    widths = widths[np.isfinite(widths) & (widths > 0)]
    if len(widths):
        digits = max(digits, int(np.ceil(-np.log10(widths.min()))) + 1)
    return [f"[{lo:.{digits}f}, {hi:.{digits}f}{']' if i == len(df) - 1 else ')'}" for i, (lo, hi) in enumerate(zip(df["low"], df["high"]))]


def plot_intelligibility(result: IntelligibilityAnalysis, path: str | os.PathLike) -> Path:
    """Two-panel bar plot like the paper's Fig. 2A/B, written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(11, 4.2))
    a, b = result.by_mos_bin, result.by_confidence_bin
    xa = np.arange(len(a))
    ax_a.bar(xa, a["mean_confidence"].fillna(0), color="#4C72B0")
    ax_a.set_xticks(xa, _interval_labels(a, 1), rotation=30, ha="right", fontsize=8)
    ax_a.set_xlabel("MOS interval")
    ax_a.set_ylabel("mean top-1 confidence")
    ax_a.set_title("(A) confidence per MOS interval")
    for x, (v, n) in enumerate(zip(a["mean_confidence"], a["count"])):
        ax_a.text(x, 0 if np.isnan(v) else v, f"n={n}", ha="center", va="bottom", fontsize=7)
    xb = np.arange(len(b))
    ax_b.bar(xb, b["mean_mos"].fillna(0), color="#DD8452")
    ax_b.set_xticks(xb, _interval_labels(b, 2), rotation=30, ha="right", fontsize=8)
    ax_b.set_xlabel("top-1 confidence interval")
    ax_b.set_ylabel("mean MOS")
    ax_b.set_title("(B) MOS per confidence interval")
    for x, (v, n) in enumerate(zip(b["mean_mos"], b["count"])):
        ax_b.text(x, 0 if np.isnan(v) else v, f"n={n}", ha="center", va="bottom", fontsize=7)
    s = result.summary
    fig.suptitle(f"Intelligibility vs quality: {s.get('n_scored')} images, Spearman {s.get('spearman', float('nan')):.3f}", fontsize=10)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    finally:
        plt.close(fig)


def _json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinity as None: ``json.dumps`` writes them as ``NaN`` /
    ``Infinity``, which are not JSON (a strict reader rejects the file). A p-value from two
    images, or the correlation of constant values, is NaN."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)) and not np.isfinite(value):
        return None
    return value


OUTPUT_FILES = {"per_image": "intelligibility.csv", "by_mos_bin": "by_mos_bin.csv",
                "by_confidence_bin": "by_confidence_bin.csv", "summary": "summary.json", "plot": "intelligibility.png"}
"""What :func:`write_intelligibility_analysis` writes into its folder, by the key it returns each under."""


def write_intelligibility_analysis(result: IntelligibilityAnalysis, out_dir: str | os.PathLike, plot: bool = True) -> dict[str, Path]:
    """Write ``intelligibility.csv`` (per image), ``by_mos_bin.csv``,
    ``by_confidence_bin.csv``, ``summary.json`` and ``intelligibility.png`` into ``out_dir``
    (each atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts = {
        "per_image": result.per_image.to_csv(index=False),
        "by_mos_bin": result.by_mos_bin.to_csv(index=False),
        "by_confidence_bin": result.by_confidence_bin.to_csv(index=False),
        "summary": json.dumps(_json_safe(result.summary), indent=2, allow_nan=False) + "\n",
    }
    files = {key: atomic_write_text(out / OUTPUT_FILES[key], text) for key, text in texts.items()}
    if plot:
        files["plot"] = plot_intelligibility(result, out / OUTPUT_FILES["plot"])
    else:  # an earlier run's plot would contradict these numbers beside it
        (out / OUTPUT_FILES["plot"]).unlink(missing_ok=True)
    return files
