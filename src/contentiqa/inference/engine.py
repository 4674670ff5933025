"""Batched scoring of many inputs: a pipeline whose memory stays flat however long the run.

- **Decoding in parallel with the model.** ``workers`` threads decode and preprocess the
  next images while the model runs (PIL, numpy and torch release the GIL), with a sliding
  window of look-ahead: at most ``window`` images in flight *and* at most
  ``max_prefetch_bytes`` of prepared tensors waiting, so a folder of 12-megapixel photos does
  not fill the memory ahead of the model.
- **Batches of equal sizes.** Native-resolution models (IQA-CR) cannot stack different sizes,
  so prepared tensors are bucketed by shape; fixed-size models (IE-IQA) land in one bucket
  after their own resize. A bucket is run when it holds ``batch_size`` images or
  ``max_batch_pixels`` pixels (on a CPU a batch of large photos is no faster per image than
  one at a time and only costs memory); when many sizes are waiting, the fullest bucket is
  run early, so at most about four batches' worth of pixels are ever held.
- **Inference settings.** Every forward runs under ``torch.inference_mode``; on a CPU the
  batch is handed to the torch model in ``channels_last`` layout (measured: 15-30 % faster
  for the depthwise-separable EfficientNet backbones on this project's CPUs; results equal
  to the last bit in our checks). ``forward=`` replaces the torch model (e.g. an ONNX Runtime
  session, :mod:`contentiqa.inference.onnx`).
- **Torch or not.** A model whose ``preprocess`` gives numpy arrays (the ONNX Runtime scorer,
  :class:`contentiqa.inference.onnx_runtime.OnnxScorer`) is batched and run in numpy: the
  engine imports torch only for torch tensors, so scoring from a cached ONNX graph starts
  without it.
- **Several images at once** (``concurrency``): up to N batches run in the model at the same
  time, each from its own thread. For ONNX Runtime with one compute thread per run this beats
  one run split over N threads (benchmarks/results/cores.md, on 2 idle cores and beside a busy
  process): every layer of a split run waits for its slowest thread, whole images do not.
  Results are still made and handed out in the calling thread.
- **Inputs prepared elsewhere** (:class:`Prepared`): a server that decodes and preprocesses
  uploads on its own threads hands the engine the model's inputs, which it only batches and runs.
- **Results as they come.** ``on_result(index, prediction)`` is called for every input as
  soon as it is scored (out of order); with ``return_results=False`` the engine keeps no
  predictions itself, so a run over millions of files holds only its working set.
"""
from __future__ import annotations

from collections import defaultdict, deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np

from ..models.scoring import Prediction, load_image_safely

if TYPE_CHECKING:
    from ..models.base import IQAModel

DEFAULT_MAX_BATCH_PIXELS = 2_000_000
"""A bucket is run once it holds this many pixels (8 images of 500 x 500; 2048 x 1536 photos
go one at a time)."""
DEFAULT_MAX_PREFETCH_BYTES = 256 * 2**20
"""Prepared tensors decoded ahead of the model stop being added beyond this many bytes."""


@dataclass(frozen=True)
class Prepared:
    """An input already decoded and preprocessed (what ``model.preprocess`` returned), e.g. by a
    server's decoding threads while the model ran other requests: the engine batches and runs it
    as it is, so none of that work lands on the thread that runs the model."""

    input: Any
    path: str | None = None
    notes: tuple[str, ...] = ()


def _prepare(model: IQAModel, item: Any, index: int = 0, on_image: Callable[[int, Any], None] | None = None):
    if isinstance(item, Prepared):
        return item.input, item.path, list(item.notes), None
    img, path, notes, err = load_image_safely(item, model)
    if err is not None:
        return None, path, notes, err
    if on_image is not None:
        try:
            on_image(index, img)  # e.g. a report thumbnail, made while the pixels are decoded
        except Exception:  # a side product must never cost the score
            pass
    try:
        return model.preprocess(img), path, notes, None
    except Exception as exc:  # a preprocessing failure is that file's error, not the batch's
        return None, path, notes, f"preprocessing failed: {exc}"


def _nbytes(prepared) -> int:
    t = prepared[0]
    return 0 if t is None else int(t.nbytes)  # a torch tensor or a numpy array


def iter_prepared(
    model: IQAModel,
    items: Sequence[Any],
    workers: int = 2,
    window: int = 32,
    on_image: Callable[[int, Any], None] | None = None,
    max_prefetch_bytes: int | None = DEFAULT_MAX_PREFETCH_BYTES,
):
    """Yield ``(index, tensor_or_None, path, notes, error)`` in input order, decoding ahead
    in ``workers`` threads (PIL and numpy release the GIL while decoding).

    At most ``window`` inputs are submitted ahead of the one being yielded, and no new one is
    submitted while the look-ahead would hold more than ``max_prefetch_bytes`` of prepared
    tensors (those done and waiting, plus those in flight counted at the size of the last
    one; None: no byte limit). ``on_image(index, pil_image)`` is called (in the decoding
    thread) with every image that loaded, before preprocessing."""
    if workers <= 0:
        for i, it in enumerate(items):
            yield (i, *_prepare(model, it, i, on_image))
        return
    window = max(1, int(window))
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="contentiqa-decode")
    pending: deque = deque()
    source = iter(enumerate(items))
    last_size = [0]  # bytes of the last prepared tensor: the estimate for those in flight

    def held_bytes() -> int:
        total = 0
        for _, f in pending:
            if not f.done():
                total += last_size[0]
            elif f.exception() is None:
                total += _nbytes(f.result())
        return total

    def top_up() -> None:
        while len(pending) < window:
            if pending and max_prefetch_bytes is not None:
                if last_size[0] == 0 and len(pending) >= workers:
                    return  # sizes not known yet: keep the workers busy, no more
                if held_bytes() >= max_prefetch_bytes:
                    return
            try:
                i, it = next(source)
            except StopIteration:
                return
            pending.append((i, pool.submit(_prepare, model, it, i, on_image)))

    try:
        top_up()
        while pending:
            i, fut = pending.popleft()
            res = fut.result()
            last_size[0] = _nbytes(res) or last_size[0]
            top_up()
            yield (i, *res)
            del res
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _collate(tensors: list, channels_last: bool):
    """Stack (C, H, W) tensors into a batch; ``channels_last`` returns it in that layout
    without a strided copy when the tensors are HWC in memory (as ``pil_to_tensor`` makes
    them). Numpy arrays give a contiguous NCHW array (what ONNX Runtime takes)."""
    if isinstance(tensors[0], np.ndarray):
        return tensors[0][None] if len(tensors) == 1 else np.stack(tensors)  # one image: a view, no copy
    import torch

    if channels_last and tensors[0].ndim == 3:
        return torch.stack([t.permute(1, 2, 0) for t in tensors]).permute(0, 3, 1, 2)
    return torch.stack(tensors)


def predict_items(
    model: IQAModel,
    items: Sequence[Any],
    batch_size: int = 8,
    progress: bool = False,
    workers: int = 2,
    forward: Callable[[Any], dict[str, Any]] | None = None,
    on_result: Callable[[int, Prediction], None] | None = None,
    on_image: Callable[[int, Any], None] | None = None,
    *,
    max_batch_pixels: int | None = DEFAULT_MAX_BATCH_PIXELS,
    channels_last: bool | None = None,
    return_results: bool = True,
    window: int | None = None,
    max_prefetch_bytes: int | None = DEFAULT_MAX_PREFETCH_BYTES,
    autocast: str | None = None,
    concurrency: int = 1,
) -> list[Prediction] | None:
    """Score ``items`` and return one :class:`Prediction` per item, in order.

    ``forward`` replaces ``model(x)`` (e.g. an ONNX Runtime session); ``on_result`` is called
    as each result is ready (for incremental, resumable output); ``on_image(index, image)``
    sees each decoded RGB image (from a worker thread), e.g. to make report thumbnails.

    ``max_batch_pixels``: a batch is run once its images hold this many pixels, even below
    ``batch_size`` (None: count only). ``channels_last``: hand the torch model its batch in
    channels-last layout (None: yes on a CPU when ``forward`` is not given).
    ``return_results=False`` keeps no predictions (use ``on_result``) and returns None.
    ``window`` (default ``2 * batch_size``, at least 8) and ``max_prefetch_bytes`` bound the
    decoding look-ahead (see :func:`iter_prepared`).
    ``autocast`` ('float16' / 'bfloat16'): run a torch model under ``torch.autocast`` in that
    dtype (what makes large collections fast on a GPU: tensor cores, half the memory traffic);
    outputs come back as float32. None: full precision.
    ``concurrency``: how many batches may be in the model at once (each forward called from
    its own thread; for a forward that is safe to call concurrently and uses one core per
    call, such as an ONNX Runtime session with one intra-op thread). Results are made and
    ``on_result`` called in this thread whatever the value.
    """
    if autocast not in (None, "float16", "bfloat16"):
        raise ValueError(f"autocast must be None, 'float16' or 'bfloat16', not {autocast!r}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if int(concurrency) < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    # Only a model in training mode is switched (and switched back at the end): the switch walks
    # every submodule (5 ms for IE-IQA's 554), which a server or a predict() loop paid per call.
    was_training = model.training
    if was_training:
        model.eval()
    fwd = forward or model
    device = model.device
    if channels_last is None:
        channels_last = forward is None and model.channels_last_input and device.type == "cpu"
    results: list[Prediction | None] | None = [None] * len(items) if return_results else None
    buckets: dict[tuple, list] = defaultdict(list)
    pixels: dict[tuple, int] = defaultdict(int)
    bar = None
    if progress:  # tqdm is imported only to show a bar (0.1 s of a one-photo run's start-up)
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc="scoring", unit="img")
    runner = ThreadPoolExecutor(max_workers=int(concurrency), thread_name_prefix="contentiqa-run") if concurrency > 1 else None
    in_flight: list[tuple[Future, list]] = []
    bs = int(batch_size)
    pixel_cap = max_batch_pixels if max_batch_pixels and max_batch_pixels > 0 else None

    def emit(i: int, pred: Prediction) -> None:
        if results is not None:
            results[i] = pred
        if bar is not None:
            bar.update(1)
        if on_result is not None:
            on_result(i, pred)

    def run_model(x):
        if isinstance(x, np.ndarray):  # a numpy model (ONNX Runtime): no torch at all
            return fwd(x)
        import torch

        x = x.to(device, non_blocking=device.type == "cuda")
        with torch.inference_mode(), torch.autocast(device.type, dtype=getattr(torch, autocast or "float32"),
                                                    enabled=autocast is not None):
            out = fwd(x)
        if autocast is not None:
            out = {k: v.float() for k, v in out.items()}
        return out

    def finish(group: list, out: dict | None, exc: BaseException | None) -> None:
        if exc is not None:
            for i, _, path, notes in group:
                emit(i, Prediction(path=path, score=None, error=f"model failed: {exc}", notes=notes))
            return
        preds = model.results_from_outputs(out, [g[2] for g in group], [g[3] for g in group])
        for (i, *_), p in zip(group, preds):
            emit(i, p)

    def collect(block: bool) -> None:
        """Hand out the results of the runs that are done (with ``block``: wait for one first)."""
        if not in_flight:
            return
        if block:
            wait([f for f, _ in in_flight], return_when=FIRST_COMPLETED)
        for item in [it for it in in_flight if it[0].done()]:
            in_flight.remove(item)
            fut, group = item
            exc = fut.exception()
            if exc is not None and not isinstance(exc, RuntimeError):
                raise exc
            finish(group, None if exc is not None else fut.result(), exc)

    def flush(key: tuple) -> None:
        group = buckets.pop(key)
        pixels.pop(key, None)
        x = _collate([g[1] for g in group], channels_last)
        for g in range(len(group)):
            group[g] = (group[g][0], None, group[g][2], group[g][3])  # the batch holds the pixels now
        if runner is not None:
            while len(in_flight) >= concurrency:
                collect(block=True)
            in_flight.append((runner.submit(run_model, x), group))
            del x
            collect(block=False)
            return
        try:
            out = run_model(x)
        except RuntimeError as exc:
            finish(group, None, exc)
            return
        finally:
            del x
        finish(group, out, None)

    def held() -> tuple[int, int]:
        return sum(len(v) for v in buckets.values()), sum(pixels.values())

    try:
        for i, tensor, path, notes, err in iter_prepared(
            model, items, workers=workers, window=window or max(2 * bs, 8), on_image=on_image,
            max_prefetch_bytes=max_prefetch_bytes,
        ):
            if err is not None:
                emit(i, Prediction(path=path, score=None, error=err, notes=notes))
                continue
            key = tuple(tensor.shape)
            buckets[key].append((i, tensor, path, notes))
            pixels[key] += int(tensor.shape[-1]) * int(tensor.shape[-2])
            del tensor
            if len(buckets[key]) >= bs or (pixel_cap is not None and pixels[key] >= pixel_cap):
                flush(key)
                continue
            n_held, px_held = held()
            if n_held >= bs * 4 or (pixel_cap is not None and px_held >= 4 * pixel_cap):
                # Many distinct sizes: run the fullest group so memory stays bounded.
                flush(max(buckets, key=lambda k: (pixels[k], len(buckets[k]))))
        for key in list(buckets):
            flush(key)
        while in_flight:
            collect(block=True)
    finally:
        if runner is not None:
            runner.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.close()
        if was_training:
            model.train(True)
    return list(results) if results is not None else None  # type: ignore[arg-type]


def chunked(seq: Iterable[Any], n: int):
    buf = []
    for x in seq:
        buf.append(x)
        if len(buf) == n:
            yield buf
            buf = []
    if buf:
        yield buf
