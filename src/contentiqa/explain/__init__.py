"""Where a model looked: Grad-CAM over every CNN level the score uses, attention rollout over the Transformer's
spatial attention, and their fusion (IQA-CR Fig. 2).

    >>> from contentiqa.explain import explain
    >>> exp = explain(model, "photo.jpg")
    >>> exp.fused.shape            # (H, W) of the image (its aspect at MAP_MAX_PIXELS when larger), in [0, 1]
    >>> exp.overlay("fused").save("heat.jpg")
"""
from .attention import attention_rollout, keep_attention, normalize_map, received_attention, spatial_attention_grid
from .explanation import (DEFAULT_EXPLAIN_MAX_PIXELS, MAP_MAX_PIXELS, Explanation, explain, overlay_heatmap,
                          save_explanation_figure)
from .gradcam import GradCAMOutput, combine_levels, compute_gradcam, gradcam_modules

__all__ = [
    "DEFAULT_EXPLAIN_MAX_PIXELS",
    "Explanation",
    "MAP_MAX_PIXELS",
    "GradCAMOutput",
    "attention_rollout",
    "compute_gradcam",
    "explain",
    "gradcam_modules",
    "combine_levels",
    "keep_attention",
    "normalize_map",
    "overlay_heatmap",
    "received_attention",
    "save_explanation_figure",
    "spatial_attention_grid",
]
