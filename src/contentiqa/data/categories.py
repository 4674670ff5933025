"""IQA-CR's content vocabulary, kept in the data layer because labels are data: the loaders and
the pseudo-labeller (:mod:`contentiqa.data.content_labels`) name categories before any model
exists, and the models (:mod:`contentiqa.models.base`) take the same tuple from here."""
from __future__ import annotations

import re

# The ten content categories of IQA-CR's KonIQ-10k labelling (§IV.A).
IQA_CR_CATEGORIES: tuple[str, ...] = (
    "animal", "artifact", "cityscape", "human", "indoor scene",
    "landscape", "night scene", "plant", "vehicle", "others",
)

# SPAQ's nine scene labels -> IQA-CR's ten categories. SPAQ has no vehicle category and calls
# photos of objects "still-life", which is IQA-CR's "artifact".
SPAQ_TO_IQA_CR: dict[str, str] = {
    "animal": "animal",
    "cityscape": "cityscape",
    "human": "human",
    "indoor scene": "indoor scene",
    "landscape": "landscape",
    "night scene": "night scene",
    "plant": "plant",
    "still-life": "artifact",
    "others": "others",
}

# LIQE's nine scene names (its human labels of LIVE Challenge) -> IQA-CR's categories.
LIQE_TO_IQA_CR: dict[str, str] = {
    "animal": "animal",
    "cityscape": "cityscape",
    "human": "human",
    "indoor": "indoor scene",
    "landscape": "landscape",
    "night": "night scene",
    "plant": "plant",
    "still_life": "artifact",
    "others": "others",
}
"""IQA-CR's tenth category, ``vehicle``, has no LIQE counterpart."""

MISSING_LABELS = frozenset({"", "nan", "na", "n/a", "none", "null", "<na>"})
"""Cells that say "no label": a spreadsheet's or pandas' placeholders (compared lowercased)."""


def normalize_category(value) -> str | None:
    """An IQA-CR category for a label found in a table (IQA-CR, SPAQ or LIQE spelling, any case);
    ``None`` when empty; an unknown name in the same one spelling (lowercase, single spaces), so
    that a vocabulary of one's own (``Cat``, ``cat``) meets itself as IQA-CR's names do."""
    if value is None:
        return None
    if not isinstance(value, str):
        import pandas as pd  # NaN / NA cells of a table (pandas is not needed otherwise)

        if pd.isna(value):
            return None
    text = str(value).strip()
    if text.lower() in MISSING_LABELS:
        return None
    key = re.sub(r"[\s_]+", " ", text.lower())
    if key in IQA_CR_CATEGORIES:
        return key
    if key.replace(" ", "_") in LIQE_TO_IQA_CR:  # "night", "indoor", "still_life"
        return LIQE_TO_IQA_CR[key.replace(" ", "_")]
    spaq = key.replace("still life", "still-life").replace("stilllife", "still-life")
    return SPAQ_TO_IQA_CR.get(spaq, key)
