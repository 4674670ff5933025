"""Batched scoring of many inputs: decode in worker threads, group equal sizes, one forward
per group. Native-resolution models cannot stack different sizes, so images are bucketed by
their preprocessed shape; a window of ``batch_size * window_factor`` inputs is in memory at a
time, which keeps memory flat over arbitrarily long runs."""
from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Sequence

import torch

from ..models.base import IQAModel, Prediction, load_image_safely


def _prepare(model: IQAModel, item: Any, index: int = 0, on_image: Callable[[int, Any], None] | None = None):
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


def iter_prepared(
    model: IQAModel,
    items: Sequence[Any],
    workers: int = 2,
    window: int = 32,
    on_image: Callable[[int, Any], None] | None = None,
):
    """Yield ``(index, tensor_or_None, path, notes, error)`` in input order, decoding ahead
    in ``workers`` threads (PIL and numpy release the GIL while decoding).

    ``on_image(index, pil_image)`` is called (in the decoding thread) with every image that
    loaded, before preprocessing."""
    if workers <= 0:
        for i, it in enumerate(items):
            yield (i, *_prepare(model, it, i, on_image))
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(items), window):
            chunk = items[start:start + window]
            jobs = [(start + j, it) for j, it in enumerate(chunk)]
            for j, res in enumerate(pool.map(lambda job: _prepare(model, job[1], job[0], on_image), jobs)):
                yield (start + j, *res)


def predict_items(
    model: IQAModel,
    items: Sequence[Any],
    batch_size: int = 8,
    progress: bool = False,
    workers: int = 2,
    forward: Callable[[torch.Tensor], dict[str, torch.Tensor]] | None = None,
    on_result: Callable[[int, Prediction], None] | None = None,
    on_image: Callable[[int, Any], None] | None = None,
) -> list[Prediction]:
    """Score ``items`` and return one :class:`Prediction` per item, in order.

    ``forward`` replaces ``model(x)`` (e.g. an ONNX Runtime session); ``on_result`` is called
    as each result is ready (for incremental, resumable output); ``on_image(index, image)``
    sees each decoded RGB image (from a worker thread), e.g. to make report thumbnails.
    """
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    fwd = forward or model
    results: list[Prediction | None] = [None] * len(items)
    buckets: dict[tuple, list] = defaultdict(list)
    bar = tqdm(total=len(items), desc="scoring", unit="img", disable=not progress)

    def emit(i: int, pred: Prediction) -> None:
        results[i] = pred
        bar.update(1)
        if on_result is not None:
            on_result(i, pred)

    def flush(key: tuple) -> None:
        group = buckets.pop(key)
        x = torch.stack([g[1] for g in group]).to(model.device)
        try:
            with torch.inference_mode():
                out = fwd(x)
        except RuntimeError as exc:
            for i, _, path, notes in group:
                emit(i, Prediction(path=path, score=None, error=f"model failed: {exc}", notes=notes))
            return
        preds = model.results_from_outputs(out, [g[2] for g in group], [g[3] for g in group])
        for (i, *_), p in zip(group, preds):
            emit(i, p)

    try:
        for i, tensor, path, notes, err in iter_prepared(
            model, items, workers=workers, window=max(batch_size * 4, 8), on_image=on_image
        ):
            if err is not None:
                emit(i, Prediction(path=path, score=None, error=err, notes=notes))
                continue
            key = tuple(tensor.shape)
            buckets[key].append((i, tensor, path, notes))
            if len(buckets[key]) >= batch_size:
                flush(key)
            elif sum(len(v) for v in buckets.values()) >= batch_size * 4:
                # Many distinct sizes: flush the largest group so memory stays bounded.
                flush(max(buckets, key=lambda k: len(buckets[k])))
        for key in list(buckets):
            flush(key)
    finally:
        bar.close()
        model.train(was_training)
    return [r for r in results]  # type: ignore[misc]


def chunked(seq: Iterable[Any], n: int):
    buf = []
    for x in seq:
        buf.append(x)
        if len(buf) == n:
            yield buf
            buf = []
    if buf:
        yield buf
