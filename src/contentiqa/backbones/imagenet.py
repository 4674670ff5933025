"""ImageNet-1k class names, from the label files timm ships (offline)."""
from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in logit order (first WordNet lemma of each synset)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    return [info.index_to_description(i).split(",")[0].strip() for i in range(info.num_classes())]
