"""Caching the frozen part of a backbone: the CPU-time lever for training on real photos.

When the first ``k`` stages of a backbone are frozen and its BatchNorm uses running statistics,
their output for a given image is a constant; computing it once (for the image and its
horizontal mirror) and training only the stages after it gives the same gradients as the
end-to-end model on those views at a fraction of the cost. Augmentations that change the input
before the network (IE-IQA's resize-then-random-crop, ``train_resize``) are not among them: a
cached run trains on the photo as scored and its mirror (a crop of a native-resolution model's
cached map stands for a crop of the photo), or, when every stage the model uses is cached (its
pooled features), on the photo as scored alone. The cache is keyed by backbone, stage, image
path, size and modification time, so a changed file is recomputed.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import time
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..backbones.stages import run_stages
from ..data.imageio import load_image
from ..models.base import CachePart, IQAModel, pil_to_tensor
from ..utils.disk_cache import ABOUT, STALE_TEMPORARY_S, describe, touch, using


def cache_key(paths: Sequence[str], tag: str) -> str:
    h = hashlib.sha1(tag.encode())
    for p in paths:
        h.update(f"{_file_key(p)}\n".encode())
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
    ``flips`` else 1. Stored in ``cache_dir`` when given and reused from there, keyed by the
    stages' weights too (another network's features were returned under the same tag).
    """
    from tqdm.auto import tqdm

    cache_file = None
    if cache_dir is not None:
        fp = weights_fingerprint(stages[:end_stage])
        key = cache_key(paths, f"{tag}|{end_stage}|{flips}|{dtype}|{tuple(mean)}|{tuple(std)}|{fp}")
        cache_file = Path(cache_dir) / f"features_{tag or 'backbone'}_s{end_stage}_{key}.pt"
        stored = _read_tensors(cache_file, "cached stage features")
        if isinstance(stored, list) and len(stored) == len(paths):
            touch(cache_file)
            return stored  # else computed again and the file replaced
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

        atomic_torch_save(out, cache_file, follow_links=False)  # a shared cache's name: a link there is not followed
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


def frozen_fingerprint(model: IQAModel, start_stage: int) -> str:
    """A hash of the frozen weights the cache of ``model`` up to ``start_stage`` is computed with
    (every cached part's): a run resumed with other ones holds encodings of another network."""
    return hashlib.sha1("|".join(weights_fingerprint(p.modules) for p in model.cache_parts(start_stage)).encode()
                        ).hexdigest()[:16]


def _file_key(path: str, damage: str = "") -> str:
    """What identifies one photo's pixels without reading them: path, size, and the nanosecond
    modification and change times. ctime too, because ``touch -r``, ``cp -p`` and ``rsync -a``
    put an old mtime back on new pixels, and a rewrite within one second keeps the second."""
    st = os.stat(path)
    key = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"
    if not damage:
        return key
    from ..data.degrade import code_fingerprint

    return f"{key}|{damage}|{code_fingerprint()}"  # the damage as this code makes it


def _entry_name(file_key: str) -> str:
    return hashlib.sha1(file_key.encode()).hexdigest()[:24] + ".pt"


def damage_seed(path: str, damage: str) -> int:
    """The noise seed of one damaged copy: fixed per (file, damage), so a cached encoding and a
    recomputed one agree."""
    return int(hashlib.sha1(f"{os.path.basename(path)}|{damage}".encode()).hexdigest()[:8], 16)


class CacheWriteError(OSError):
    """The cache folder cannot be written (full, read-only): one line naming it, for commands
    to show instead of a traceback from deep in a save."""


def _remove_old_temporaries(folder: Path) -> None:
    """Temporaries a writer killed mid-save left in a shared cache folder: another writer's for a
    moment, a killed one's once older than :data:`~contentiqa.utils.disk_cache.STALE_TEMPORARY_S`."""
    cutoff = time.time() - STALE_TEMPORARY_S
    try:
        with os.scandir(folder) as it:
            for e in it:
                if e.name.startswith(".") and e.name.endswith(".tmp"):
                    try:
                        if e.stat().st_mtime < cutoff:
                            os.unlink(e.path)
                    except OSError:
                        pass
    except OSError:
        pass


def _read_tensors(path: Path, what: str) -> list[torch.Tensor] | dict[str, torch.Tensor] | None:
    """A cache file's tensors (a list or a dict of them), or None when it is absent, unreadable
    or damaged (a torn write from a killed run, rotted bytes): recomputed, never trusted."""
    from ..utils.checkpoint_io import CheckpointReadError, load_torch_file

    if not path.is_file():
        return None
    try:
        # torch.load does not check the zip's CRCs: bytes that rotted inside an intact file
        # would load, and be trained on. testzip reads them once (entries are stored, not
        # compressed: a CRC pass, small beside an epoch).
        with zipfile.ZipFile(path) as z:
            if z.testzip() is not None:
                return None
    except Exception:  # noqa: BLE001 - damaged zip metadata (no CRC covers it) raises many kinds:
        return None    # RuntimeError for a flipped 'encrypted' bit, NotImplementedError, UnicodeDecodeError...
    try:
        entry = load_torch_file(path, what)
    except (CheckpointReadError, FileNotFoundError, OSError):
        return None
    values = entry.values() if isinstance(entry, dict) else entry if isinstance(entry, list) else None
    if values is None or not all(isinstance(v, torch.Tensor) for v in values):
        return None
    if any(v.is_floating_point() and not bool(torch.isfinite(v).all()) for v in values):
        return None  # a frozen network's encoding is finite: this one is damaged
    return entry


def _load_entry(path: Path) -> dict[str, torch.Tensor] | None:
    """One cached encoding, or None when it is absent or unreadable."""
    entry = _read_tensors(path, "cached encoding")
    return entry if isinstance(entry, dict) else None


class _EncodeWrapper(nn.Module):
    """One cache part's ``encode(views)`` as a tuple in the order of ``names`` (export)."""

    def __init__(self, owner: nn.Module, part: CachePart, names: Sequence[str]):
        super().__init__()
        self.owner, self.names = owner, tuple(names)
        self.encode = part.encode

    def forward(self, views: torch.Tensor):
        out = self.encode(views)
        return tuple(out[n] for n in self.names)


class OnnxEncoder:
    """A cache part's ``encode`` run by ONNX Runtime: about twice as fast as eager PyTorch on a
    CPU, which is what a first pass over a 10,000-photo dataset is bound by. One graph per
    input shape (exported on first use into a temporary folder), checked against PyTorch on its
    first input; encodings agree to float16 storage precision."""

    def __init__(self, model: nn.Module, part: CachePart, threads: int | None = None, atol: float = 2e-3):
        import tempfile

        self.model, self.part, self.threads, self.atol = model, part, threads, atol
        self.dir = tempfile.TemporaryDirectory(prefix="contentiqa-enc-")
        self.sessions: dict[tuple, Any] = {}
        self.names: list[str] | None = None

    def _session(self, views: torch.Tensor):
        import warnings

        from ..inference.onnx import make_session

        shape = tuple(views.shape)
        if shape not in self.sessions:
            ref = self.part.encode(views)
            self.names = sorted(ref)
            path = Path(self.dir.name) / f"enc_{len(self.sessions)}.onnx"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(_EncodeWrapper(self.model, self.part, self.names).eval(), (views,), str(path),
                                  dynamo=False, opset_version=17, input_names=["views"], output_names=self.names,
                                  do_constant_folding=True)
            sess = make_session(path, threads=self.threads)
            outs = sess.run(self.names, {"views": views.numpy()})
            for n, o in zip(self.names, outs):
                diff = float((torch.from_numpy(o) - ref[n]).abs().max())
                if diff > self.atol * max(1.0, float(ref[n].abs().max())):
                    raise RuntimeError(f"ONNX Runtime encoding '{n}' differs from PyTorch by {diff:.3g}")
            self.sessions[shape] = sess
        return self.sessions[shape]

    def __call__(self, views: torch.Tensor) -> dict[str, torch.Tensor]:
        sess = self._session(views)
        outs = sess.run(self.names, {"views": np.ascontiguousarray(views.numpy())})
        return {n: torch.from_numpy(o) for n, o in zip(self.names, outs)}


def part_folder(model: IQAModel, part: CachePart, dtype: torch.dtype, cache_dir: str | os.PathLike) -> Path:
    """Where one cache part's encodings live: named by the part and keyed by what computes
    them (its key, which says where the cache stops when that matters; the frozen weights;
    the storage type; the views), so two models or two cache depths that share a component
    (``ie-iqa`` and ``ie-iqa-distortion``: the same distortion stages; IE-IQA's intelligibility
    features at any depth) share its encodings, and anything that changes them gets a new folder."""
    fp = weights_fingerprint(part.modules)
    tag = hashlib.sha1(f"{part.key}|{dtype}|{fp}|views:{model.cache_view_names()}".encode()).hexdigest()[:12]
    return Path(cache_dir) / f"{part.name}_{tag}"


@torch.inference_mode()
def cached_encodings(
    model: IQAModel,
    paths: Sequence[str],
    start_stage: int,
    train: bool,
    cache_dir: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float16,
    progress: bool = True,
    runtime: str = "torch",
    damage: Sequence[str] | None = None,
) -> list[dict[str, torch.Tensor]]:
    """For each image, the model's frozen-part encoding of each of its cached views.

    The model defines the views (:meth:`~contentiqa.models.base.IQAModel.cache_views`: the
    image as scored and its mirror) and the parts that are cached
    (:meth:`~contentiqa.models.base.IQAModel.cache_parts`: e.g. IE-IQA's frozen distortion stages
    and its intelligibility features, each under its own key). ``train`` returns every view;
    otherwise the first (the image as scored), so training and evaluation share one store.
    ``damage`` (one spec per path, see :func:`contentiqa.data.degrade.apply_spec`) encodes a
    degraded copy of the image instead of the image itself.

    With ``cache_dir``, encodings are stored one file per image and part, so every split and
    seed reuses them and an interrupted pass over a large dataset resumes where it stopped.
    ``runtime="onnx"`` computes them with ONNX Runtime (CPU; see :class:`OnnxEncoder`).
    """
    from tqdm.auto import tqdm

    from ..data.degrade import apply_spec
    from ..utils.memory import growing_store

    if runtime not in ("torch", "onnx"):
        raise ValueError(f"runtime must be 'torch' or 'onnx', not {runtime!r}")
    damage = list(damage) if damage is not None else [""] * len(paths)
    if len(damage) != len(paths):
        raise ValueError(f"{len(damage)} damage specs for {len(paths)} images")
    # The store is long-lived and grows between large temporaries (utils/memory.py); the folders
    # are held as in use while they fill (`contentiqa cache --max-size` leaves them alone).
    with growing_store(), contextlib.ExitStack() as held:
        parts = model.cache_parts(start_stage)
        keys = [_file_key(p, d) for p, d in zip(paths, damage)]
        folders = ([part_folder(model, part, dtype, cache_dir) for part in parts]
                   if cache_dir is not None else [None] * len(parts))
        def make(folder: Path, part: CachePart) -> None:
            folder.mkdir(parents=True, exist_ok=True)
            describe(folder, {"model": type(model).__name__, "part": part.name,
                              "dtype": str(dtype).replace("torch.", ""), "views": model.cache_view_names(),
                              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

        for part, folder in zip(parts, folders):
            if folder is not None:
                try:
                    make(folder, part)
                except OSError as exc:
                    raise CacheWriteError(f"cannot write the cache {folder}: {exc.strerror or exc}") from None
                touch(folder)  # used now: what least-recently-used eviction goes by (utils/disk_cache.py)
                held.enter_context(using(folder))
                _remove_old_temporaries(folder)
        stores: list[dict[str, dict[str, torch.Tensor]]] = []
        for folder in folders:
            store: dict[str, dict[str, torch.Tensor]] = {}
            if folder is not None:
                for k in dict.fromkeys(keys):
                    entry = _load_entry(folder / _entry_name(k))
                    if entry is not None:
                        store[k] = entry
            stores.append(store)
        todo = [(p, d, k) for p, d, k in dict.fromkeys(zip(paths, damage, keys)) if any(k not in s for s in stores)]
        if todo and cache_dir is not None:
            # Processes that share the folder (a row's seeds side by side on one machine) start at
            # different points of the list and take what another has written meanwhile, so
            # together they encode each image about once. The order changes nothing stored.
            start = int(hashlib.sha1(str(os.getpid()).encode()).hexdigest(), 16) % len(todo)  # neighbouring pids, far apart
            todo = todo[start:] + todo[:start]
        if todo:
            from ..utils.io import atomic_torch_save

            device = next(model.parameters()).device
            was = model.training
            model.eval()
            encoders = [OnnxEncoder(model, part) if runtime == "onnx" else part.encode for part in parts]
            try:
                for p, d, k in tqdm(todo, desc="caching frozen encodings", unit="img", disable=not progress):
                    for store, folder in zip(stores, folders):
                        if k not in store and folder is not None:
                            entry = _load_entry(folder / _entry_name(k))  # written by a process beside this one
                            if entry is not None:
                                store[k] = entry
                    if all(k in store for store in stores):
                        continue
                    image = apply_spec(load_image(p).image, d, damage_seed(p, d))
                    views = torch.stack(model.cache_views(image)).to(device)
                    for encode, part, store, folder in zip(encoders, parts, stores, folders):
                        if k in store:
                            continue
                        enc = encode(views)
                        # Kept on the CPU: the store can outgrow an accelerator's memory.
                        store[k] = {n: (v.to(dtype) if v.is_floating_point() else v).cpu().contiguous() for n, v in enc.items()}
                        if folder is not None:
                            try:
                                # `contentiqa cache --max-size` may evict the folder while a run fills it:
                                # an entry's name is predictable: a link planted there is replaced, never followed
                                try:
                                    atomic_torch_save(store[k], folder / _entry_name(k), follow_links=False)
                                except FileNotFoundError:  # during the write: made again, written again
                                    make(folder, part)
                                    atomic_torch_save(store[k], folder / _entry_name(k), follow_links=False)
                                if not (folder / ABOUT).is_file():  # before it: the write made a bare folder
                                    make(folder, part)
                            except OSError as exc:  # a full disk, a folder turned read-only
                                raise CacheWriteError(f"cannot write the cache {folder}: {exc.strerror or exc}") from None
            finally:
                model.train(was)
        out = []
        for k in keys:
            merged: dict[str, torch.Tensor] = {}
            for store in stores:
                merged.update(store[k] if train else {n: v[:1] for n, v in store[k].items()})
            out.append(merged)
        return out
