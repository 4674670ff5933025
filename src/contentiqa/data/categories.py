"""IQA-CR's content vocabulary, kept in the data layer because labels are data: the loaders and
the pseudo-labeller (:mod:`contentiqa.data.content_labels`) name categories before any model
exists, and the models (:mod:`contentiqa.models.base`) take the same tuple from here."""
from __future__ import annotations

# The ten content categories of IQA-CR's KonIQ-10k labelling (§IV.A).
IQA_CR_CATEGORIES: tuple[str, ...] = (
    "animal", "artifact", "cityscape", "human", "indoor scene",
    "landscape", "night scene", "plant", "vehicle", "others",
)
