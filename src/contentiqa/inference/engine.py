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
- **Any runtime.** The engine sees a scorer only through :class:`Runnable` (its image
  limits, ``preprocess``, ``collate``, ``results_from_outputs``) and a ``forward``: the ONNX
  Runtime scorer (numpy, no torch) and the PyTorch one (inference mode, channels-last batches,
  autocast: :mod:`contentiqa.inference.torch_runtime`) run through the same code.
- **Several images at once** (``concurrency``): up to N batches run in the model at the same
  time, each from its own thread (``forward`` must be safe to call so). For ONNX Runtime with one compute thread per run this beats
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
from typing import Any, Callable, Protocol, Sequence

from PIL import Image

from ..models.scoring import ImageLimits, Prediction, load_image_safely

DEFAULT_MAX_BATCH_PIXELS = 2_000_000
"""A bucket is run once it holds this many pixels (8 images of 500 x 500; 2048 x 1536 photos
go one at a time)."""
DEFAULT_MAX_PREFETCH_BYTES = 256 * 2**20
"""Prepared tensors decoded ahead of the model stop being added beyond this many bytes."""


class Runnable(ImageLimits, Protocol):
    """What the engine needs of a scorer besides its ``forward``: the image limits files are read
    under (:class:`~contentiqa.models.scoring.ImageLimits`) and the steps around the model."""

    def preprocess(self, image: Image.Image) -> Any:
        """A decoded RGB image -> the model's input for one image (C, H, W)."""
        ...

    def collate(self, inputs: list[Any]) -> Any:
        """Inputs of one shape -> one batch."""
        ...

    def results_from_outputs(self, out: dict[str, Any], paths: Sequence[str | None],
                             notes: Sequence[list[str]]) -> list[Prediction]:
        """A batch's outputs -> one :class:`Prediction` per image."""
        ...


@dataclass(frozen=True)
class Prepared:
    """An input already decoded and preprocessed (what ``model.preprocess`` returned), e.g. by a
    server's decoding threads while the model ran other requests: the engine batches and runs it
    as it is, so none of that work lands on the thread that runs the model."""

    input: Any
    path: str | None = None
    notes: tuple[str, ...] = ()


def _prepare(model: Runnable, item: Any, index: int = 0, on_image: Callable[[int, Any], None] | None = None):
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
        return None, path, notes, f"preprocessing failed: {str(exc) or type(exc).__name__}"


def _nbytes(prepared) -> int:
    t = prepared[0]
    return 0 if t is None else int(t.nbytes)  # a torch tensor or a numpy array


def iter_prepared(
    model: Runnable,
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


class Engine:
    """Scores a sequence of inputs through ``forward`` in batches (see the module docstring).

    ``batch_size``: images per forward pass at most; ``max_batch_pixels``: a batch is run once
    its images hold this many pixels, even below ``batch_size`` (None: count only).
    ``workers``: decoding threads (0: decode in the calling thread); ``window`` (default
    ``2 * batch_size``, at least 8) and ``max_prefetch_bytes`` bound the look-ahead (see
    :func:`iter_prepared`). ``concurrency``: how many batches may be in ``forward`` at once, each
    from its own thread; results are made, and ``on_result`` called, in the calling thread.
    A ``RuntimeError`` from ``forward`` becomes the error of that batch's images; anything else
    propagates."""

    def __init__(self, model: Runnable, forward: Callable[[Any], dict[str, Any]], *, batch_size: int = 8,
                 workers: int = 2, concurrency: int = 1, max_batch_pixels: int | None = DEFAULT_MAX_BATCH_PIXELS,
                 window: int | None = None, max_prefetch_bytes: int | None = DEFAULT_MAX_PREFETCH_BYTES,
                 progress: bool = False):
        if isinstance(batch_size, bool) or int(batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if int(concurrency) < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.model = model
        self.forward = forward
        self.batch_size = int(batch_size)
        self.workers = int(workers)
        self.concurrency = int(concurrency)
        self.pixel_cap = max_batch_pixels if max_batch_pixels and max_batch_pixels > 0 else None
        self.window = window or max(2 * self.batch_size, 8)
        self.max_prefetch_bytes = max_prefetch_bytes
        self.progress = progress

    def run(self, items: Sequence[Any], on_result: Callable[[int, Prediction], None] | None = None,
            on_image: Callable[[int, Any], None] | None = None, return_results: bool = True) -> list[Prediction] | None:
        """One :class:`Prediction` per item, in order (None with ``return_results=False``: then
        only ``on_result(index, prediction)`` sees them, as each is ready, out of order).
        ``on_image(index, image)`` sees each decoded RGB image, from a decoding thread."""
        run = _Run(self, len(items), on_result, return_results)
        try:
            for i, prepared, path, notes, err in iter_prepared(
                self.model, items, workers=self.workers, window=self.window, on_image=on_image,
                max_prefetch_bytes=self.max_prefetch_bytes,
            ):
                if err is not None:
                    run.emit(i, Prediction(path=path, score=None, error=err, notes=notes))
                else:
                    run.add(i, prepared, path, notes)
                del prepared
            run.finish_all()
        finally:
            run.close()
        return run.results


class _Run:
    """The state of one :meth:`Engine.run`: inputs waiting in buckets of equal shape, batches in
    the model, results handed out."""

    def __init__(self, engine: Engine, n: int, on_result: Callable[[int, Prediction], None] | None,
                 return_results: bool):
        self.engine = engine
        self.on_result = on_result
        self.results: list[Prediction] | None = [None] * n if return_results else None  # type: ignore[list-item]
        self.buckets: dict[tuple, list] = defaultdict(list)
        self.pixels: dict[tuple, int] = defaultdict(int)
        self.in_flight: list[tuple[Future, list]] = []
        self.pool = (ThreadPoolExecutor(max_workers=engine.concurrency, thread_name_prefix="contentiqa-run")
                     if engine.concurrency > 1 else None)
        self.bar = None
        if engine.progress:  # tqdm is imported only to show a bar (0.1 s of a one-photo run's start-up)
            from tqdm.auto import tqdm

            self.bar = tqdm(total=n, desc="scoring", unit="img")

    def emit(self, i: int, pred: Prediction) -> None:
        if self.results is not None:
            self.results[i] = pred
        if self.bar is not None:
            self.bar.update(1)
        if self.on_result is not None:
            self.on_result(i, pred)

    def add(self, i: int, prepared: Any, path: str | None, notes: list[str]) -> None:
        """Bucket one prepared input by shape; run the batches that are due."""
        eng = self.engine
        key = tuple(prepared.shape)
        self.buckets[key].append((i, prepared, path, notes))
        self.pixels[key] += int(prepared.shape[-1]) * int(prepared.shape[-2])
        if len(self.buckets[key]) >= eng.batch_size or (eng.pixel_cap is not None and self.pixels[key] >= eng.pixel_cap):
            self.flush(key)
            return
        held = sum(len(v) for v in self.buckets.values())
        if held >= eng.batch_size * 4 or (eng.pixel_cap is not None and sum(self.pixels.values()) >= 4 * eng.pixel_cap):
            # Many distinct sizes: run the fullest group so memory stays bounded.
            self.flush(max(self.buckets, key=lambda k: (self.pixels[k], len(self.buckets[k]))))

    def finish(self, group: list, out: dict | None, exc: BaseException | None) -> None:
        if exc is not None:
            for i, _, path, notes in group:
                self.emit(i, Prediction(path=path, score=None, error=f"model failed: {exc}", notes=notes))
            return
        preds = self.engine.model.results_from_outputs(out, [g[2] for g in group], [g[3] for g in group])
        for (i, *_), p in zip(group, preds):
            self.emit(i, p)

    def collect(self, block: bool) -> None:
        """Hand out the results of the runs that are done (with ``block``: wait for one first)."""
        if not self.in_flight:
            return
        if block:
            wait([f for f, _ in self.in_flight], return_when=FIRST_COMPLETED)
        for item in [it for it in self.in_flight if it[0].done()]:
            self.in_flight.remove(item)
            fut, group = item
            exc = fut.exception()
            if exc is not None and not isinstance(exc, RuntimeError):
                raise exc
            self.finish(group, None if exc is not None else fut.result(), exc)

    def flush(self, key: tuple) -> None:
        group = self.buckets.pop(key)
        self.pixels.pop(key, None)
        x = self.engine.model.collate([g[1] for g in group])
        for g in range(len(group)):
            group[g] = (group[g][0], None, group[g][2], group[g][3])  # the batch holds the pixels now
        if self.pool is not None:
            while len(self.in_flight) >= self.engine.concurrency:
                self.collect(block=True)
            self.in_flight.append((self.pool.submit(self.engine.forward, x), group))
            del x
            self.collect(block=False)
            return
        try:
            out = self.engine.forward(x)
        except RuntimeError as exc:
            self.finish(group, None, exc)
            return
        finally:
            del x
        self.finish(group, out, None)

    def finish_all(self) -> None:
        for key in list(self.buckets):
            self.flush(key)
        while self.in_flight:
            self.collect(block=True)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        if self.bar is not None:
            self.bar.close()
