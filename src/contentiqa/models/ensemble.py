"""An ensemble of trained models: one model whose score combines its members' calibrated scores.

    >>> ens = build_ensemble([create_model("ie-iqa"), create_model("iqa-cr")])
    >>> ens(x)["score"]        # the weighted harmonic mean of the members' scores; iqa-cr's logits

Why: models that look at a photo differently err differently. IE-IQA's head reads Lite0's pooled
levels at 384 px, IQA-CR's Transformer reads its grid at native resolution; on validation parts
their combined score ranks both datasets' photos better than either alone, where two heads on the
same features gain nothing (docs/results.md, benchmarks/ensemble.py).

Why one model and not a scorer that runs two: everything a model does (one checkpoint, one ONNX
graph, ``explain``, ``evaluate``, the service) then works for the ensemble unchanged. Its input is
what its finest member takes (the photo at native resolution when one member reads it so); a
fixed-size member gets it resized inside the model as Pillow resizes (:func:`~contentiqa.models.layers.resize_like_pillow`),
so it sees the pixels it was trained on.

Why ``input_size``: with one fixed size for all (native-resolution members read the photo at that
size too), members that take the same input and share frozen backbone weights compute the same
backbone pass, which the ensemble runs once (next paragraph): it then costs about one backbone
pass, not one per member. A fixed size also bounds the cost
of a large photo, which a native-resolution member pays in full. What it costs in accuracy depends
on the members: the shipped pair loses what IQA-CR gains from native resolution (docs/results.md).

Why members share stages: members that read the same input through the same first backbone
stages (same structure, same weights: the frozen ImageNet Lite0 of both shipped members) compute
the same maps. The ensemble runs those stages once and hands their outputs to each member
(:meth:`~contentiqa.models.base.IQAModel.forward_from_stages`), in eager PyTorch as in the exported
graph, each as deep as its own stages are the same: a member whose deep stages were fine-tuned takes
the shallow ones and runs its own deep ones, while the others still share the whole pass. Which
stages are the same is checked on the weights themselves, again whenever a member's tensors change
(``load_state_dict``, training), never assumed from a name.

Why the harmonic mean: both members are calibrated onto the same rating scale, and a photo that
either finds worthless (a black frame, a photo blurred beyond recognition) should stay near the
bottom of the scale, not halfway up because the other member is less sure; for photos the two
rate alike it is their plain mean. ``combine: mean`` is the plain weighted mean.

An ensemble is not trained: its members are (``contentiqa train``), then combined
(:func:`build_ensemble`); the trainer refuses one (``trainable`` is False).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from PIL import Image
from torch import nn

from .base import IQAModel, resized_input, tensor_versions
from .layers import resize_like_pillow

COMBINES = ("harmonic", "mean")
_FLOOR = 1e-6
"""Scores are floored here before the harmonic mean (a member's calibrated score is > 0, but an
uncalibrated one may reach 0 or below)."""


@dataclass
class EnsembleConfig:
    """The members (each a registered model name, its stored config and its weight) and how
    their normalised scores combine."""

    members: list[dict] = field(default_factory=list)
    """``[{"model": name, "config": {...}, "weight": w}, ...]``: what :func:`build_ensemble` writes."""
    combine: str = "harmonic"
    input_size: int | None = None
    """One square size every member reads (the photo resized to it as fixed-size models resize;
    a member trained at another fixed size gets it resized again inside the model). None: the
    finest member's input (native resolution when a member reads it so)."""
    scale: dict | None = None
    """The rating scale (the members', which must agree); None: taken from them."""
    calibration: list[float] | None = None
    """Always None: the members carry their calibrations (kept for :meth:`IQAModel.calibrate`)."""

    def __post_init__(self) -> None:
        if self.combine not in COMBINES:
            raise ValueError(f"unknown combine {self.combine!r}: use one of {', '.join(COMBINES)}")
        if len(self.members) < 2:
            raise ValueError(f"an ensemble needs at least two members, got {len(self.members)}")
        for m in self.members:
            if not isinstance(m, dict) or not {"model", "config", "weight"} <= set(m):
                raise ValueError(f"an ensemble member is {{model, config, weight}}, got {m!r}")
            if not 0 < float(m["weight"]) < math.inf:
                raise ValueError(f"member {m['model']}: weight must be a finite number > 0, got {m['weight']}")
        if not math.isfinite(sum(float(m["weight"]) for m in self.members)):  # the mean divides by it
            raise ValueError("the members' weights add up past the largest float: scale them down")
        if self.calibration is not None:
            raise ValueError("an ensemble is not calibrated itself: its members are")
        if self.input_size is not None:
            try:
                ok = not isinstance(self.input_size, bool) and int(self.input_size) == self.input_size >= 32
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ValueError(f"input_size must be a whole number of pixels >= 32, got {self.input_size!r}")
            self.input_size = int(self.input_size)

    def to_dict(self) -> dict:
        return {"members": [dict(m) for m in self.members], "combine": self.combine,
                "input_size": self.input_size, "scale": self.scale, "calibration": None}


class Ensemble(IQAModel):
    """Members' normalised scores combined (see the module docstring); content from the one
    member with a content head (at most one may have one)."""

    model_name = "ensemble"
    trainable = False

    def __init__(self, cfg: EnsembleConfig, members: Sequence[IQAModel] | None = None):
        from .registry import rebuild  # the registry builds members; it imports no model module itself

        built = list(members) if members is not None else [rebuild(m["model"], m["config"]) for m in cfg.members]
        scales = {(m.scale.low, m.scale.high, m.scale.higher_is_better) for m in built}
        if len(scales) != 1:
            raise ValueError(f"ensemble members must share one rating scale, got {sorted(scales)}")
        content = [m for m in built if m.has_content_head]
        if len(content) > 1:
            raise ValueError("at most one ensemble member may have a content head: "
                             + ", ".join(m.model_name for m in content))
        if any(not m.predicts_score for m in built):
            raise ValueError("every ensemble member must predict a score: "
                             + ", ".join(m.model_name for m in built if not m.predicts_score))
        norms = {(tuple(m.mean), tuple(m.std)) for m in built}
        if len(norms) != 1:
            raise ValueError("ensemble members must take the same input normalisation (mean/std)")
        super().__init__(built[0].scale, content[0].categories if content else ())
        cfg.scale = built[0].scale.to_dict()
        self._cfg = cfg
        self.members = nn.ModuleList(built)
        self.register_buffer("_weights", torch.tensor([float(m["weight"]) for m in cfg.members]), persistent=False)
        self._content = built.index(content[0]) if content else None
        self.mean, self.std = built[0].mean, built[0].std
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)
        native = [m for m in built if m.native_resolution]
        self._reference: IQAModel | None
        if cfg.input_size is not None:
            self._native, self._input, self._reference = False, (cfg.input_size, cfg.input_size), None
        else:
            self._native = bool(native)
            sizes = [m.fixed_input_size for m in built if not m.native_resolution]
            self._input = None if native else max(sizes, key=lambda s: s[0] * s[1])
            self._reference = native[0] if native else next(m for m in built if m.fixed_input_size == self._input)
        self.min_size = max(m.min_size for m in built)
        self._sharing: tuple[tuple, tuple[list[int], int]] | None = None

    # -- inputs ----------------------------------------------------------------------------
    @property
    def cfg(self) -> EnsembleConfig:
        return _live_config(self)

    @property
    def native_resolution(self) -> bool:
        return self._native

    @property
    def fixed_input_size(self) -> tuple[int, int] | None:
        return self._input

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """The photo at ``input_size`` (resized as fixed-size models resize it), else what the
        finest member takes; members that take another size get it resized in :meth:`forward`."""
        if self._reference is None:
            return resized_input(image, self._input[0], self.mean, self.std)
        return self._reference.preprocess(image)

    # -- outputs ---------------------------------------------------------------------------
    def reads_input(self, m: IQAModel) -> bool:
        """Whether member ``m`` reads the ensemble's input as it is (else resized for it)."""
        return m.native_resolution or (not self._native and m.fixed_input_size == self._input)

    def member_inputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each member's input from the ensemble's: as it is, or resized as Pillow resizes the
        8-bit photo (back to pixel values, resized with Pillow's rounding, normalised again)."""
        out, pixels = [], None
        for m in self.members:
            if self.reads_input(m):
                out.append(x)
                continue
            # From a native-resolution input always resized, even to its own size (then a copy): a
            # branch on the input's shape would be frozen into an exported graph at the example's size.
            if pixels is None:
                pixels = torch.floor((x * self._std + self._mean) * 255.0 + 0.5)
            size = m.fixed_input_size
            out.append((resize_like_pillow(pixels, size) / 255.0 - self._mean) / self._std)
        return out

    def combine(self, scores: Sequence[torch.Tensor]) -> torch.Tensor:
        """The members' normalised scores (each (B,)) -> the ensemble's (B,)."""
        s = torch.stack([t.float() for t in scores], dim=-1)
        w = self._weights / self._weights.sum()
        if self._cfg.combine == "mean":  # not .cfg: that refreshes the members' configs, needless per batch
            return (s * w).sum(-1)
        return 1.0 / (w / torch.clamp(s, min=_FLOOR)).sum(-1)

    def shared_stages(self) -> dict[int, int]:
        """``{member index: k}``: the members that read the ensemble's input as it is and whose
        first ``k`` stages are the same as the first such member's (same structure and weights):
        :meth:`forward` runs the first member's stages once, as deep as any needs, and hands each
        its first ``k`` outputs. Empty when fewer than two share any."""
        able = [m.shares_stages and self.reads_input(m) for m in self.members]
        key = tensor_versions(t for m, ok in zip(self.members, able) if ok
                              for stage in m.stages for t in (*stage.parameters(), *stage.buffers()))
        if self._sharing is None or self._sharing[0] != key:
            self._sharing = (key, _common_stages(self.members, able))
        return self._sharing[1]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        inputs = self.member_inputs(x)
        sharing = self.shared_stages()
        outs: list[dict[str, torch.Tensor] | None] = [None] * len(self.members)
        if sharing:
            h, stage_outputs = x, []
            for stage in self.members[next(iter(sharing))].stages[:max(sharing.values())]:
                h = stage(h)
                stage_outputs.append(h)
            for i, k in sharing.items():
                outs[i] = self.members[i].forward_from_stages(x, stage_outputs[:k])
        outs = [o if o is not None else m(xi) for o, m, xi in zip(outs, self.members, inputs)]
        result = {"score": self.combine([o["score"] for o in outs])}
        if self._content is not None:
            result["logits"] = outs[self._content]["logits"]
        return result

    # -- explanations ----------------------------------------------------------------------
    def gradcam_modules(self) -> list[nn.Module]:
        """Every member's maps: the heatmap shows what each member's part of the score rests on.
        A stage the members share runs once (:meth:`shared_stages`), so it is listed once: its
        map's gradient then carries every member's part, and the combined heatmap is the one
        their separate maps would add up to."""
        sharing = self.shared_stages()
        owner = self.members[next(iter(sharing))].stages if sharing else []
        same = {id(self.members[j].stages[i]): owner[i] for j, k in sharing.items() for i in range(k)}
        out: list[nn.Module] = []
        for m in self.members:
            for mod in m.gradcam_modules():
                mod = same.get(id(mod), mod)
                if all(mod is not o for o in out):
                    out.append(mod)
        return out

    def attention_layers(self) -> list[nn.Module]:
        return [] if self._content is None else self.members[self._content].attention_layers()

    @property
    def token_grid(self) -> tuple[int, int] | None:
        return None if self._content is None else self.members[self._content].token_grid

    # -- export ----------------------------------------------------------------------------
    def onnx_unsupported_reason(self) -> str | None:
        reasons = [f"{m.model_name}: {r}" for m in self.members if (r := m.onnx_unsupported_reason())]
        return "; ".join(reasons) or None


def _same_stage(a: nn.Module, b: nn.Module) -> bool:
    """Whether two stages compute the same function: the same structure (their repr names every
    layer's shape, stride, padding, eps and activation) and equal parameters and buffers."""
    if a is b:
        return True
    if type(a) is not type(b) or repr(a) != repr(b):
        return False
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[n].shape == sb[n].shape and sa[n].dtype == sb[n].dtype and torch.equal(sa[n], sb[n]) for n in sa)


@torch.no_grad()
def _common_stages(members: Sequence[IQAModel], able: Sequence[bool]) -> dict[int, int]:
    """See :meth:`Ensemble.shared_stages` (``able``: which members can take part): the first
    able member owns the shared stages; each member's k is its common run of stages with it, at
    most as deep as that member's features go (the owner's: as deep as any other's)."""
    able = [i for i, (m, ok) in enumerate(zip(members, able)) if ok and len(m.stages)]
    if len(able) < 2:
        return {}
    owner = members[able[0]].stages
    depth: dict[int, int] = {}
    for i in able[1:]:
        stages = members[i].stages
        n = 0
        while n < min(len(owner), len(stages)) and _same_stage(owner[n], stages[n]):
            n += 1
        if n:
            depth[i] = min(n, members[i].feature_end)
    if not depth:
        return {}
    return {able[0]: min(max(depth.values()), members[able[0]].feature_end), **depth}


def check_members(name: str, members: Sequence[str]) -> None:
    """ValueError unless ``members`` (model names, in order) may form the registered ensemble
    ``name``: a named ensemble's members are its architecture (``zoo.ENSEMBLE_MEMBERS``), and
    ``ensemble`` takes any."""
    from .zoo import ENSEMBLE_MEMBERS

    wanted = ENSEMBLE_MEMBERS.get(name)
    if wanted is not None and tuple(members) != wanted:
        raise ValueError(f"{name}'s members are {list(wanted)}, got {list(members)}")


def _live_config(ensemble: "Ensemble") -> EnsembleConfig:
    """The ensemble's config with each member's as the member holds it now: a member
    recalibrated (``set_calibration``) or rescaled since the ensemble was built is saved, and
    fingerprinted for the ONNX cache, as it scores, not as it was."""
    cfg = ensemble._cfg
    members = ensemble._modules.get("members")
    if members is not None:
        for entry, m in zip(cfg.members, members):
            entry["config"] = m.cfg.to_dict()
    return cfg


def member_entry(model: IQAModel, weight: float) -> dict[str, Any]:
    return {"model": model.model_name, "config": model.cfg.to_dict(), "weight": float(weight)}


def build_ensemble(members: Sequence[IQAModel], weights: Sequence[float] | None = None,
                   combine: str = "harmonic", name: str = "ensemble", input_size: int | None = None) -> Ensemble:
    """An ensemble of trained models as they are (their weights are the ensemble's): save it with
    :func:`~contentiqa.models.registry.save_checkpoint` like any model. ``name``: the registered
    ensemble it is (``ensemble``: any members; ``ie-iqa-distortion+iqa-cr``: those two, in that order).
    ``input_size``: one size for all members (:class:`EnsembleConfig`)."""
    weights = list(weights) if weights is not None else [1.0] * len(members)
    if len(weights) != len(members):
        raise ValueError(f"{len(members)} members but {len(weights)} weights")
    cfg = EnsembleConfig(members=[member_entry(m, w) for m, w in zip(members, weights)], combine=combine,
                         input_size=input_size)
    from .registry import model_entry

    if model_entry(name).trainable:
        raise ValueError(f"{name} is not a registered ensemble")
    check_members(name, [m.model_name for m in members])
    raw = [m.model_name for m in members if m.cfg.calibration is None]
    if raw and combine == "harmonic":
        import warnings

        warnings.warn(f"ensemble member(s) {raw} have no output calibration: a raw score at or below 0 is floored "
                      f"at {_FLOOR:g} and pulls the harmonic mean of every photo to about 0 (calibrate them: "
                      "Trainer.calibrate, or combine='mean')", stacklevel=2)
    model = Ensemble(cfg, members=[m.cpu().eval() for m in members])
    model.model_name = name
    return model.eval()
