"""Model registry: ``list_models()``, ``create_model(name, pretrained=...)`` (timm / pyiqa style).

A registered entry point builds a model from keyword arguments. ``pretrained=True`` loads the
weights shipped inside the package (``contentiqa/weights/<file>``), offline. Checkpoints
store the model's name and config, so ``create_model("path/to/checkpoint.pt")`` rebuilds
whatever was trained.

Whether a string names a registered model or a file is decided here only
(:func:`parse_spec`), for every command and API: a file path has a folder separator or a model
file's suffix (``.pt``, ``.pth``, ``.onnx``); anything else is ``name[.tag]``. So a file that
happens to be called ``ie-iqa`` in the working folder never shadows the model (``./ie-iqa``
names the file).
"""
from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # torch is imported where a model is built: names, tags and weights need none
    import torch

    from .base import IQAModel

from .recipes import TrainRecipe  # torch-free

CHECKPOINT_FORMAT = "contentiqa-model/1"


@dataclass(frozen=True)
class ModelEntry:
    """A registered architecture and its pretrained weights, by tag (as timm's
    ``name.tag``): a tag names what the weights were trained on; its checkpoint carries the
    architecture it was trained with (a wider head, another input size: see
    :mod:`contentiqa.models.recipes`), and loads as such. A bare name means ``default_tag``."""

    name: str
    builder: Callable[..., IQAModel]
    tags: dict[str, str]
    default_tag: str | None
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)
    """Architecture arguments ``create_model(name, pretrained=False)`` applies unless given:
    the default tag's architecture (see :mod:`contentiqa.models.recipes`)."""
    recipe: TrainRecipe | None = None
    """How the default tag was trained: what ``contentiqa train --model NAME`` starts from."""
    trainable: bool = True
    """False for a model made from trained ones (an ensemble): it has no recipe."""

    @property
    def weights(self) -> str | None:
        """The file of the default tag's weights."""
        return self.tags.get(self.default_tag) if self.default_tag else None


_REGISTRY: dict[str, ModelEntry] = {}


def _registered() -> dict[str, ModelEntry]:
    """The registry with zoo.py's entries in it (zoo.py imports no model code until one is built)."""
    from . import zoo  # noqa: F401  (registers the models)

    return _REGISTRY


def register_model(name: str, weights: str | dict[str, str] | None = None, description: str = "",
                   default_tag: str | None = None, defaults: dict[str, Any] | None = None,
                   recipe: TrainRecipe | None = None, trainable: bool = True) -> Callable:
    """Register ``fn(**kwargs) -> IQAModel`` as ``name``. ``weights``: tag -> file under
    ``contentiqa/weights`` (a single file is the tag ``default``); ``default_tag``: what a
    bare ``name`` loads (default: the first tag); ``defaults``: the architecture an untrained
    ``name`` gets (the default tag's); ``recipe``: how to train it; ``trainable``: False for a
    model made from trained ones (it has no recipe)."""
    tags = {"default": weights} if isinstance(weights, str) else dict(weights or {})
    if "." in name:
        raise ValueError(f"model name {name!r} must not contain '.' (it separates the weights tag)")

    def deco(fn: Callable[..., IQAModel]) -> Callable[..., IQAModel]:
        chosen = default_tag or shipped_default_tags().get(name)
        _REGISTRY[name] = ModelEntry(name, fn, tags, chosen if chosen in tags else next(iter(tags), None),
                                     description or _first_sentence(fn.__doc__ or ""),
                                     dict(defaults or {}), recipe, trainable)
        return fn

    return deco


DEFAULT_TAGS_FILE = "defaults.json"
"""Under ``contentiqa/weights``: which tag a bare model name loads, per model. Written by
benchmarks/ship.py only when the ship gate (benchmarks/ship_gate.py) passes, so that a new
default never ships worse than the one it replaces; a model it does not name defaults to its
first tag."""


def shipped_default_tags() -> dict[str, str]:
    """The default tag of each model as :data:`DEFAULT_TAGS_FILE` records it ({} without one)."""
    import json

    path = resources.files("contentiqa") / "weights" / DEFAULT_TAGS_FILE
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


MODEL_FILE_SUFFIXES = (".pt", ".pth", ".onnx")
"""Suffixes that make a spec a file (checkpoints; ``.onnx``: a graph from ``contentiqa export``)."""


@dataclass(frozen=True)
class ModelSpec:
    """What a model spec names: a file (``path``) or a registered ``name`` with its weights
    ``tag`` (None: the entry's default tag, or no weights at all)."""

    text: str
    path: Path | None = None
    name: str | None = None
    tag: str | None = None

    @property
    def is_file(self) -> bool:
        return self.path is not None

    @property
    def is_onnx(self) -> bool:
        """An ONNX graph (scored as it is: no weights, no PyTorch)."""
        return self.path is not None and self.path.suffix.lower() == ".onnx"


def is_path_spec(spec: str | os.PathLike) -> bool:
    """The one rule telling a file from a model name: a path object, a folder separator or a
    model file's suffix (:data:`MODEL_FILE_SUFFIXES`) make a file."""
    if isinstance(spec, os.PathLike):
        return True
    s = str(spec)
    return os.sep in s or bool(os.altsep and os.altsep in s) or s.lower().endswith(MODEL_FILE_SUFFIXES)


def parse_spec(spec: str | os.PathLike) -> ModelSpec:
    """``spec`` as a :class:`ModelSpec` by :func:`is_path_spec`. A file is not opened here; a
    name must be registered with that tag (ValueError otherwise, saying how to name a file of
    that name instead when one exists)."""
    if is_path_spec(spec):
        return ModelSpec(os.fspath(spec), path=Path(os.fspath(spec)).expanduser())
    text = str(spec)
    try:
        entry, tag = resolve_tag(text)
    except ValueError as exc:
        if os.path.isfile(text):
            raise ValueError(f"{exc} (to load the file {text!r} in this folder, write ./{text})") from None
        raise
    return ModelSpec(text, name=entry.name, tag=tag)


def _first_sentence(doc: str) -> str:
    """A docstring's first sentence on one line (it may wrap): what ``contentiqa models`` shows."""
    para = " ".join(doc.strip().split("\n\n", 1)[0].split())
    para = re.sub(r"``(.+?)``", r"\1", para)  # a docstring's literals, plain in a terminal table
    end = para.find(". ")
    return para if end < 0 else para[: end + 1]


def split_name(spec: str) -> tuple[str, str | None]:
    """``"iqa-cr.clive"`` -> ``("iqa-cr", "clive")``; a bare name -> ``(name, None)``."""
    name, dot, tag = str(spec).partition(".")
    if dot and not tag:  # "ie-iqa." would silently load the default tag
        raise ValueError(f"model '{spec}': a tag follows the dot (name.tag), or leave the dot out for the default tag")
    return (name, tag) if dot else (name, None)


def list_models(pretrained_only: bool = False) -> list[str]:
    """Registered model names; with ``pretrained_only`` just those with shipped weights."""
    if not isinstance(pretrained_only, bool):  # timm's first argument is a name pattern: never truthy here
        raise TypeError(f"pretrained_only is True or False, not {pretrained_only!r} (list_models takes no name pattern)")
    names = sorted(_registered())
    if pretrained_only:
        names = [n for n in names if shipped_weights_path(n) is not None]
    return names


def list_pretrained() -> list[str]:
    """Every ``name.tag`` whose weights ship in this install (the default tag first per name)."""
    out = []
    registry = _registered()
    for name in sorted(registry):
        entry = registry[name]
        for tag in sorted(entry.tags, key=lambda t: (t != entry.default_tag, t)):
            if shipped_weights_path(name, tag) is not None:
                out.append(f"{name}.{tag}")
    return out


def model_entry(name: str) -> ModelEntry:
    base, _ = split_name(name)
    registry = _registered()
    if base not in registry:
        raise ValueError(f"unknown model '{name}'; available: {', '.join(list_models())}")
    return registry[base]


def model_recipe(name: str) -> TrainRecipe:
    """The training recipe of ``name``: a bare name's is its entry's (how the default tag was
    trained); a ``name.tag`` of another shipped tag gives how that tag was trained, read from
    its checkpoint's ``extra.train_config`` (e.g. ``ie-iqa.clive``: the paper's SGD recipe)."""
    entry, tag = resolve_tag(name) if split_name(name)[1] is not None else (model_entry(name), None)
    if not entry.trainable:
        raise ValueError(f"model '{entry.name}' is made from trained models and is not trained itself: train its members")
    if tag is not None and tag != entry.default_tag:
        return _tag_recipe(entry, tag)
    if entry.recipe is None:
        raise ValueError(f"model '{entry.name}' has no training recipe; give the training settings explicitly")
    return entry.recipe


def _tag_recipe(entry: ModelEntry, tag: str) -> TrainRecipe:
    from ..utils.checkpoint_io import load_torch_file

    path = shipped_weights_path(entry.name, tag)
    if path is None:
        raise ValueError(f"'{entry.name}.{tag}' has no weights in this install to read its recipe from")
    payload = load_torch_file(path, "checkpoint")
    stored = (payload.get("extra") or {}).get("train_config") if isinstance(payload, dict) else None
    if not isinstance(stored, dict):
        raise ValueError(f"{path} does not record how it was trained (no extra.train_config)")
    # what it was trained with, less the run's own settings (its seed, device and loader workers)
    values = {k: v for k, v in stored.items() if k not in _RUN_ONLY}
    return TrainRecipe.of(f"{entry.name}.{tag}: extra.train_config of {path.name}", **values)


_RUN_ONLY = frozenset({"seed", "device", "num_workers"})


def resolve_tag(name: str, tag: str | None = None) -> tuple[ModelEntry, str | None]:
    """The entry and weights tag that ``name`` (``name`` or ``name.tag``) stands for."""
    entry = model_entry(name)
    given = split_name(name)[1]
    tag = tag or given or entry.default_tag
    if tag is not None and tag not in entry.tags:
        known = ", ".join(f"{entry.name}.{t}" for t in entry.tags) or "none"
        raise ValueError(f"model '{entry.name}' has no weights tagged '{tag}'; tags: {known}")
    return entry, tag


def shipped_weights_path(name: str, tag: str | None = None) -> Path | None:
    entry, tag = resolve_tag(name, tag)
    if tag is None:
        return None
    path = Path(str(resources.files("contentiqa") / "weights" / entry.tags[tag]))
    return path if path.is_file() else None


def weights_file(spec: str | os.PathLike | ModelSpec) -> tuple[Path, str | None]:
    """``(file, weights tag)`` that loading ``spec`` reads, found without torch: a checkpoint
    file (tag None) or a registered ``name[.tag]``'s shipped weights (:func:`parse_spec`).
    ValueError for an unknown name or tag, FileNotFoundError for a missing file or when no
    weights are shipped."""
    spec = spec if isinstance(spec, ModelSpec) else parse_spec(spec)
    if spec.path is not None:
        if spec.path.is_dir():
            raise ValueError(f"model file {spec.text} is a folder: name the .pt or .onnx file in it")
        if not spec.path.exists():
            raise FileNotFoundError(f"model file {spec.text} does not exist")
        if not spec.path.is_file():
            raise ValueError(f"model file {spec.text} is not a regular file (a device or a pipe)")
        return spec.path, None
    assert spec.name is not None
    path = shipped_weights_path(spec.name, spec.tag)
    if path is None:
        shipped = list_pretrained()
        made = ("a model file (an ensemble is made from trained members: contentiqa.models.ensemble.build_ensemble, "
                "then save_checkpoint)" if not model_entry(spec.name).trainable
                else "a checkpoint file (e.g. one written by `contentiqa train`)")
        raise FileNotFoundError(f"model '{spec.text}' has no trained weights in this install; pass {made}"
                                + (f", or one of: {', '.join(shipped)}" if shipped else ""))
    return path, spec.tag


def _state_without_base(model: IQAModel, base_state: dict[str, torch.Tensor] | None) -> tuple[dict, list[str]]:
    import torch

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}  # device-independent files
    if base_state is None:
        return state, []
    omitted = [k for k, v in state.items() if k in base_state and base_state[k].shape == v.shape and torch.equal(base_state[k], v)]
    return {k: v for k, v in state.items() if k not in set(omitted)}, omitted


def save_checkpoint(
    model: IQAModel,
    path: str | os.PathLike,
    extra: dict[str, Any] | None = None,
    omit_pretrained_backbone: bool = False,
    half: bool = False,
) -> Path:
    """Write a self-describing checkpoint (name, config, weights, scale, categories).

    ``omit_pretrained_backbone`` leaves out every tensor identical to the pip-installed
    ImageNet weights (they are re-created at load time), which is how shipped models stay small.
    Tensors a file the config names provides (``intelligibility_checkpoint``, ...) are left out
    too, and the file's SHA-256 kept: loading refuses that file changed since, whose tensors
    would be other weights without a word.
    ``half`` stores floating tensors as float16 (loaded back as float32).
    """
    from ..utils.io import atomic_torch_save, file_sha256

    base = None
    if omit_pretrained_backbone:
        fresh = rebuild(model.model_name, model.cfg.to_dict())
        base = fresh.state_dict()
    state, omitted = _state_without_base(model, base)
    named = {k: str(v) for k, v in model.cfg.to_dict().items() if k.endswith("_checkpoint") and v}
    rebuilt_from = {k: {"path": v, "sha256": file_sha256(v)} for k, v in named.items() if omitted and Path(v).is_file()}
    if half:
        state = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model_name": model.model_name,
        "config": model.cfg.to_dict(),
        "state_dict": state,
        "omitted_from_pretrained": omitted,
        **({"rebuilt_from": rebuilt_from} if rebuilt_from else {}),
        "scale": model.scale.to_dict(),
        "categories": list(model.categories),
        "extra": extra or {},
    }
    return atomic_torch_save(payload, path)


def _check_rebuilt_from(path: Path, rebuilt_from: Any) -> None:
    """ValueError when a file whose tensors the checkpoint left out (its config names it) is not
    the file it was saved with: the model would load other weights without a word."""
    from ..utils.io import file_sha256

    for key, then in (rebuilt_from or {}).items():
        if not isinstance(then, dict):
            continue
        now = file_sha256(then["path"]) if Path(then["path"]).is_file() else None
        if now is not None and now != then.get("sha256"):
            raise ValueError(f"{path}: its {key} tensors were left out as those of {then['path']}, and that file has "
                             f"changed since it was saved (sha256 {str(then.get('sha256'))[:12]}, now {now[:12]}): "
                             "restore the file, or save the model whole (without omit_pretrained_backbone)")


def rebuild(model_name: str, config: dict) -> IQAModel:
    """Construct an untrained model of ``model_name`` from a stored config dict, its pretrained
    parts (ImageNet backbones) loaded as the config says: a checkpoint leaves out the tensors
    equal to them, and its config must stay what it was trained with (it is saved again)."""
    return model_entry(model_name).builder(**dict(config))


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> IQAModel:
    """Rebuild a model from a checkpoint written by :func:`save_checkpoint`.

    The file is read as data (``weights_only``): one whose pickle asks for code raises
    :class:`~contentiqa.utils.checkpoint_io.UnsafeCheckpointError`, and a Python pickle that
    ``torch.save`` did not write a :class:`~contentiqa.utils.checkpoint_io.CheckpointReadError`
    (both ValueErrors), nothing in either executed."""
    from ..utils.extras import require

    require("torch", "loading a PyTorch checkpoint (contentiqa.load_checkpoint; scoring: contentiqa.load_scorer)")
    import torch

    from ..utils.checkpoint_io import read_torch_file
    from ..utils.devices import resolve_device

    device = resolve_device(device)  # an unknown or absent device: a ValueError now, not torch's after the read
    path = Path(path).expanduser()
    payload, sha256 = read_torch_file(path, "checkpoint")  # plain data only: a file never runs code
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a contentiqa model checkpoint")
    omitted = payload.get("omitted_from_pretrained", [])
    name, config, state = payload.get("model_name"), payload.get("config"), payload.get("state_dict")
    if not isinstance(name, str) or not isinstance(config, dict) or not isinstance(state, dict) \
            or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a valid contentiqa model checkpoint (its model_name, config or "
                         "state_dict is missing or not what save_checkpoint writes)")
    from ..backbones import WeightsUnavailableError
    from ..backbones.factory import checkpoint_files_unread

    try:
        # A state dict that holds every tensor needs none of the files its config names (the
        # backbone weights it started from): a model stays loadable when they are gone.
        with checkpoint_files_unread() if not omitted else contextlib.nullcontext():
            model = rebuild(name, config)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{path}: cannot rebuild its model: {exc} (a file its config names, whose "
                                "weights it needs: restore it)") from None
    except WeightsUnavailableError as exc:  # weights left out of the file, not on this machine either
        raise ValueError(f"{path}: cannot rebuild its model: {exc}") from None
    except (ValueError, TypeError, KeyError) as exc:  # an unknown model, arguments its config does not take
        raise ValueError(f"{path}: cannot rebuild its model {name!r}: {exc}") from None
    _check_rebuilt_from(path, payload.get("rebuilt_from"))
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # tensors of other shapes
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise ValueError(f"{path}: checkpoint does not match {name}: {(lines[1:] or lines)[0]}") from None
    missing = set(result.missing_keys) - set(omitted)
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{path}: checkpoint does not match {payload['model_name']} "
            f"(missing {sorted(missing)[:5]}, unexpected {list(result.unexpected_keys)[:5]})"
        )
    # file_sha256: of the bytes these weights came from (the file may have been replaced since)
    # path and file_sha256 are the file's own: a saved extra of the same name never stands in for them
    model.checkpoint_info = {**payload.get("extra", {}), "path": str(path), "file_sha256": sha256}
    return model.to(device).eval()


def create_model(
    name: str,
    pretrained: bool = True,
    device: str | torch.device = "cpu",
    checkpoint_path: str | os.PathLike | None = None,
    **kwargs,
) -> IQAModel:
    """Build a registered model (or load a checkpoint file given as ``name``).

    ``pretrained=True`` loads the package's shipped weights for ``name`` (offline): the
    checkpoint's own stored architecture, whatever the entry's defaults.
    ``pretrained=False`` returns an untrained head on an ImageNet backbone, built from the
    entry's architecture defaults (those of its default weights tag: e.g. ``ie-iqa`` without
    selection at 384 px) updated by ``kwargs``; the papers' configurations are explicit
    arguments (:data:`~contentiqa.models.recipes.IE_IQA_PAPER_ARGS`). For a fully random model, e.g.
    in tests, set the backbones' ImageNet weights off too: ``backbone_pretrained=False`` for the
    IQA-CR family, ``distortion_pretrained=False`` (and ``intelligibility_pretrained=False``) for IE-IQA.
    """
    from ..utils.devices import resolve_device
    from ..utils.extras import require

    require("torch", "the PyTorch model API (contentiqa.create_model; scoring: contentiqa.load_scorer)")
    if not isinstance(pretrained, bool):  # "False" would be truthy: the shipped weights, unasked
        raise TypeError(f"pretrained is True or False, not {pretrained!r}")
    device = resolve_device(device)  # an absent GPU: a ValueError now, not torch's error after the weights load
    asked = None  # the model the caller expects checkpoint_path to hold
    if checkpoint_path is not None:
        asked, tag = split_name(name)
        model_entry(asked)  # a mistyped name is refused, as timm does, not loaded as whatever the file holds
        if tag is not None:
            raise ValueError(f"'{name}' names shipped weights, and checkpoint_path loads others: give the bare "
                             f"name '{asked}'")
    else:
        spec = parse_spec(name)
        if spec.is_onnx:
            raise ValueError(f"{name} is an ONNX graph, not a PyTorch checkpoint: score it with "
                             "contentiqa.load_scorer(path) (`contentiqa score --model FILE.onnx`)")
        checkpoint_path = spec.path
    if checkpoint_path is not None:
        if kwargs:  # the file's own stored architecture is what it loads into
            raise ValueError(f"a checkpoint file takes no architecture arguments (got {sorted(kwargs)}): "
                             f"{checkpoint_path} is built as it was saved")
        model = load_checkpoint(checkpoint_path, device)
        if asked is not None and asked != model.model_name:
            raise ValueError(f"{checkpoint_path} holds a '{model.model_name}' model, not '{asked}'")
        return model
    entry, tag = resolve_tag(name)
    if pretrained:
        weights = shipped_weights_path(entry.name, tag)
        if weights is None:
            raise FileNotFoundError(
                f"model '{name}' has no shipped weights in this install; "
                + (f"train one (pretrained=False, or `contentiqa train --model {entry.name}`)" if entry.trainable else
                   "it is made from trained members (contentiqa.models.ensemble.build_ensemble)")
                + f", or use one of: {', '.join(list_pretrained()) or 'none'}"
            )
        if kwargs:
            raise ValueError(f"pretrained '{name}' takes no architecture arguments (got {sorted(kwargs)})")
        model = load_checkpoint(weights, device)
        model.weights_tag = tag
        return model
    if split_name(name)[1] is not None:
        raise ValueError(f"'{name}' names pretrained weights; with pretrained=False give the bare name '{entry.name}'")
    return entry.builder(**{**entry.defaults, **kwargs}).to(device)
