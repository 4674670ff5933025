"""Caching the frozen part of a backbone: the CPU-time lever for training on real photos.

When the first ``k`` stages of a backbone are frozen and its BatchNorm uses running statistics,
their output for a given image is a constant; computing it once (for the image and its
horizontal mirror) and training only the stages after it gives the same gradients as the
end-to-end model at a fraction of the cost. The cache is keyed by backbone, stage, image
path, size and modification time, so a changed file is recomputed.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..backbones.stages import run_stages
from ..data.imageio import load_image
from ..models.base import pil_to_tensor


def cache_key(paths: Sequence[str], tag: str) -> str:
    h = hashlib.sha1(tag.encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{os.path.abspath(p)}|{st.st_size}|{int(st.st_mtime)}\n".encode())
    return h.hexdigest()[:16]


@torch.inference_mode()
def stage_features(
    stages: Sequence[nn.Module],
    paths: Sequence[str],
    end_stage: int,
    mean: Sequence[float],
    std: Sequence[float],
    flips: bool = True,
    dtype: torch.dtype = torch.float16,
    cache_dir: str | os.PathLike | None = None,
    tag: str = "",
    progress: bool = True,
) -> list[torch.Tensor]:
    """Output of ``stages[:end_stage]`` for each image at native resolution.

    Returns one tensor per image of shape (F, C, H, W): F = 2 (original, mirrored) when
    ``flips`` else 1. Stored in ``cache_dir`` when given and reused from there.
    """
    from tqdm.auto import tqdm

    cache_file = None
    if cache_dir is not None:
        key = cache_key(paths, f"{tag}|{end_stage}|{flips}|{dtype}|{tuple(mean)}|{tuple(std)}")
        cache_file = Path(cache_dir) / f"features_{tag or 'backbone'}_s{end_stage}_{key}.pt"
        if cache_file.is_file():
            return torch.load(cache_file, map_location="cpu", weights_only=True)
    for s in stages:
        s.eval()
    out: list[torch.Tensor] = []
    for p in tqdm(paths, desc=f"caching stage-{end_stage} features", unit="img", disable=not progress):
        x = pil_to_tensor(load_image(p).image, mean, std)[None]
        if flips:
            x = torch.cat([x, x.flip(-1)])
        out.append(run_stages(list(stages), x, 0, end_stage).to(dtype).contiguous())
    if cache_file is not None:
        from ..utils.io import atomic_torch_save

        atomic_torch_save(out, cache_file)
    return out


def weights_fingerprint(modules: Sequence[nn.Module]) -> str:
    """A hash of the parameters and buffers of ``modules``: cached encodings are only valid
    for the exact frozen weights that made them (random-init backbones differ per seed)."""
    h = hashlib.sha1()
    for m in modules:
        for name, t in m.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _file_key(path: str) -> str:
    st = os.stat(path)
    return f"{os.path.abspath(path)}|{st.st_size}|{int(st.st_mtime)}"


@torch.inference_mode()
def cached_encodings(
    model: nn.Module,
    paths: Sequence[str],
    start_stage: int,
    train: bool,
    cache_dir: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float16,
    progress: bool = True,
) -> list[dict[str, torch.Tensor]]:
    """For each image, the model's frozen-part encoding of each of its cached views.

    The model defines the views (``cache_views(image, train)``: e.g. the image and its mirror
    for IQA-CR, the ten 224-px crops/flips of the 244-px resize for IE-IQA) and what is cached
    (``cache_encode(views, start_stage)`` -> dict of tensors with a leading view axis).
    With ``cache_dir``, encodings are stored per image (keyed by path, size and mtime) in one
    file per model family / frozen part, so every split and seed reuses them.
    """
    from tqdm.auto import tqdm

    store: dict[str, dict[str, torch.Tensor]] = {}
    cache_file = None
    if cache_dir is not None:
        frozen = list(model.stages[:start_stage])
        if getattr(model, "intelligibility", None) is not None:
            frozen.append(model.intelligibility)
        fp = weights_fingerprint(frozen)
        tag = hashlib.sha1(f"{model.cache_tag()}|{start_stage}|{train}|{dtype}|{fp}".encode()).hexdigest()[:12]
        cache_file = Path(cache_dir) / f"enc_{type(model).__name__}_s{start_stage}_{'train' if train else 'eval'}_{tag}.pt"
        if cache_file.is_file():
            store = torch.load(cache_file, map_location="cpu", weights_only=True)
    keys = [_file_key(p) for p in paths]
    todo = [(p, k) for p, k in zip(paths, keys) if k not in store]
    if todo:
        device = next(model.parameters()).device
        was = model.training
        model.eval()
        try:
            for p, k in tqdm(todo, desc=f"caching frozen encodings ({'train' if train else 'eval'})", unit="img", disable=not progress):
                views = torch.stack(model.cache_views(load_image(p).image, train)).to(device)
                enc = model.cache_encode(views, start_stage)
                # Kept on the CPU: the store can outgrow an accelerator's memory.
                store[k] = {n: (v.to(dtype) if v.is_floating_point() else v).cpu().contiguous() for n, v in enc.items()}
        finally:
            model.train(was)
        if cache_file is not None:
            from ..utils.io import atomic_torch_save

            atomic_torch_save(store, cache_file)
    return [store[k] for k in keys]
