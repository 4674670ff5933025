"""The PyTorch scorer: a model in memory scored through the engine (GPUs, autocast, training).

What the PyTorch runtime adds around ``model(x)``: the batch on the model's device (handed
over ``non_blocking`` to a GPU), ``torch.inference_mode``, autocast in bf16 / fp16 when asked
for (the GPU default: tensor cores, half the memory traffic; outputs come back as float32),
channels-last batches on a CPU (faster for the depthwise-separable EfficientNet backbones on
this project's CPUs; benchmarks/results/speed.md), its intra-op threads for the run, and the
model it runs: a scoring copy (:func:`scoring_copy`), never the caller's model itself.

Why a copy: eager PyTorch runs every BatchNorm as its own pass over the feature map, which ONNX
Runtime folds away when it loads a graph. The copy has them folded into the convolutions
(:func:`contentiqa.backbones.fusion.fold_batchnorm`), its weights in the batches' memory format
and eval mode, and the caller's model stays as it was (trainable, its state dict unchanged). The
copy is kept per model and made again when the model's tensors or configs change (an optimizer
step, ``load_state_dict``, a new calibration), so scoring after each epoch, or ``model.predict``
called per photo, scores the weights as they are without paying for the copy each time.
"""
from __future__ import annotations

import copy
import json
import threading
import weakref
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from ..backbones.fusion import fold_batchnorm
from ..models.base import IQAModel, tensor_versions
from ..models.scoring import Prediction
from .scorer import TORCH_PRECISIONS, BaseScorer, ScorerIdentity
from .threads import usable_cpus

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def default_precision(device: torch.device) -> str:
    """bf16 autocast on a CUDA GPU (fp16 on one without bf16: same speed, narrower range),
    fp32 elsewhere (a CPU gains nothing from it)."""
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def collate(tensors: list[torch.Tensor], channels_last: bool) -> torch.Tensor:
    """Stack (C, H, W) tensors into a batch; ``channels_last`` returns it in that layout without
    a strided copy when the tensors are HWC in memory (as ``pil_to_tensor`` makes them)."""
    if channels_last and tensors[0].ndim == 3:
        return torch.stack([t.permute(1, 2, 0) for t in tensors]).permute(0, 3, 1, 2)
    return torch.stack(tensors)


_COPIES: "weakref.WeakKeyDictionary[IQAModel, tuple[tuple, IQAModel]]" = weakref.WeakKeyDictionary()
_COPIES_LOCK = threading.Lock()


def _state_key(model: IQAModel, channels_last: bool) -> tuple:
    """What a scoring copy depends on: every tensor (:func:`~contentiqa.models.base.tensor_versions`,
    device, dtype) and every model config (calibrations live there). Changes made in place
    through ``tensor.data`` bypass the version counter and are not seen; nothing in contentiqa
    makes them."""
    tensors: list[torch.Tensor] = []
    cfgs = []
    for m in model.modules():  # one walk (model.parameters() and .buffers() walk it twice more slowly)
        tensors += [t for t in (*m._parameters.values(), *m._buffers.values()) if t is not None]
        if isinstance(m, IQAModel):
            cfgs.append(m.cfg.to_dict())
    return (channels_last, tensor_versions(tensors), tuple((t.device, t.dtype) for t in tensors),
            json.dumps(cfgs, sort_keys=True, default=str))


def scoring_copy(model: IQAModel, channels_last: bool) -> IQAModel:
    """``model`` as the PyTorch scorer runs it (see the module docstring): a copy in eval mode
    with BatchNorm folded and, when ``channels_last``, its weights channels-last; the same copy
    while the model is unchanged."""
    key = _state_key(model, channels_last)
    with _COPIES_LOCK:
        kept = _COPIES.get(model)
        if kept is not None and kept[0] == key:
            return kept[1]
        with torch.inference_mode(False), torch.no_grad():  # ordinary tensors, whatever mode the caller is in
            run = copy.deepcopy(model).eval()
            fold_batchnorm(run, *(stage for m in run.modules() if isinstance(m, IQAModel) for stage in m.stages))
            if channels_last:
                run = run.to(memory_format=torch.channels_last)
        _COPIES[model] = (key, run)
        return run


class TorchScorer(BaseScorer):
    """The :class:`~contentiqa.inference.scorer.Scorer` of a PyTorch model.

    ``precision``: ``fp32``, ``bf16`` or ``fp16`` autocast (None: :func:`default_precision`).
    ``threads``: torch's intra-op threads during a run (None: torch's own)."""

    def __init__(self, model: IQAModel, *, precision: str | None = None, threads: int | None = None, spec: str = "",
                 weights: Path | None = None, channels_last: bool | None = None):
        self.model = model
        self.device = model.device
        dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
        if dtypes - {torch.float32}:  # photos come in float32: every one would fail alone, as if it were bad
            raise ValueError(f"the model's weights are {', '.join(sorted(map(str, dtypes)))}; scoring runs a float32 "
                             "model (model.float()), in bf16 or fp16 through precision='bf16' / 'fp16'")
        precision = precision or default_precision(self.device)
        if precision not in TORCH_PRECISIONS:
            raise ValueError(f"PyTorch runs in {', '.join(TORCH_PRECISIONS)}, not {precision}")
        self.precision = precision
        self.autocast = AUTOCAST_DTYPES[precision]
        self.threads = threads
        self.channels_last = (model.channels_last_input and self.device.type == "cpu") if channels_last is None \
            else channels_last
        self.scale = model.scale
        self.categories = list(model.categories)
        self._spec = spec
        self._weights = weights
        self._run: IQAModel | None = None

    @cached_property
    def identity(self) -> ScorerIdentity:
        path = self._weights or (self.model.checkpoint_info or {}).get("path")
        return ScorerIdentity(name=str(self.model.model_name), tag=self.model.weights_tag,
                              weights=Path(path) if path else None, runtime="torch", precision=self.precision,
                              spec=self._spec or str(self.model.model_name), known_sha256=self.model.loaded_sha256(path))

    # The image limits are the model's own (a caller may set them on either).
    @property
    def max_pixels(self) -> int | None:  # type: ignore[override]
        return self.model.max_pixels

    @max_pixels.setter
    def max_pixels(self, value: int | None) -> None:
        self.model.max_pixels = value

    @property
    def max_side(self) -> int | None:  # type: ignore[override]
        return self.model.max_side

    @max_side.setter
    def max_side(self, value: int | None) -> None:
        self.model.max_side = value

    @property
    def min_size(self) -> int:  # type: ignore[override]
        return self.model.min_size

    @min_size.setter
    def min_size(self, value: int) -> None:
        self.model.min_size = value

    @property
    def native_resolution(self) -> bool:
        return self.model.native_resolution

    @property
    def has_content_head(self) -> bool:
        return self.model.has_content_head

    @property
    def predicts_score(self) -> bool:
        return self.model.predicts_score

    def preprocess(self, image: Any) -> torch.Tensor:
        return self.model.preprocess(image)

    def collate(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return collate(inputs, self.channels_last)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = x.to(self.device, non_blocking=self.device.type == "cuda")
        run = self._run if self._run is not None else scoring_copy(self.model, self.channels_last)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.autocast or torch.float32,
                                                    enabled=self.autocast is not None):
            out = run(x)
        if self.autocast is not None:
            out = {k: v.float() for k, v in out.items()}
        return out

    def results_from_outputs(self, out: dict[str, torch.Tensor], paths: Sequence[str | None],
                             notes: Sequence[list[str]]) -> list[Prediction]:
        return self.model.results_from_outputs(out, paths, notes)

    def _forward_for(self, n: int) -> tuple[int, Callable[[Any], dict[str, Any]]]:
        return 1, self.forward  # torch's own threads split every batch

    def default_batch_size(self) -> int:
        """Measured on a CPU (benchmarks/results/speed.md): batches pay off for fixed-size inputs
        only (native sizes rarely match); a GPU needs large ones to be busy (32 x 384 px is
        ~60 MB of input)."""
        if self.device.type != "cpu":
            return 32
        return 1 if self.native_resolution else 4

    def max_batch_pixels(self) -> int | None:
        """On an accelerator a fixed-size model's batch is bounded by its batch size alone (the
        CPU's 2 MP would cut the 32 :meth:`default_batch_size` asks for to 8 at 512 px); photos at
        native size keep the bound there too (one 2048 x 1536 photo's activations take about as
        much memory as a small GPU has to spare)."""
        return None if self.device.type != "cpu" and not self.native_resolution else super().max_batch_pixels()

    def default_workers(self) -> int:
        """Decoding threads that do not fight the model for cores: torch's intra-op threads keep
        every core they are given busy (on a 2-core machine decoding beside them was measured
        slower). On a GPU the CPUs do nothing but decode: one thread per core but one (for the
        thread feeding the GPU), at most 16 (Pillow decodes and resizes outside the GIL)."""
        cpus = usable_cpus()  # the affinity mask's (taskset, a batch job's cores), not the machine's
        if self.device.type != "cpu":
            return max(1, min(16, cpus - 1))
        return max(0, min(2, cpus - (self.threads or torch.get_num_threads())))

    @contextmanager
    def _running(self) -> Iterator[None]:
        self._run = scoring_copy(self.model, self.channels_last)  # the model as it is now, once per run
        saved = torch.get_num_threads() if self.threads else None
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            self._run = None  # outside a run, forward() checks the copy against the model each time
            if saved is not None:
                torch.set_num_threads(saved)
