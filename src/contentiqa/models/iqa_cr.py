"""IQA-CR (You, "Apples and Oranges? Assessing Image Quality over Content Recognition").

Architecture (Fig. 1, §III): base CNN -> 1x1 bottleneck conv to D channels -> adaptive
average pooling of the feature map to a fixed grid [CH, CW] (the image itself is never
rescaled) -> learned spatial position embedding (Eq. 1) -> L encoder layers of *sequential
spatial-channel attention* -> LayerNorm -> mean over tokens -> one linear head of 1 + N units
(score, N category logits).

One encoder layer, as implemented here (numbers are the paper's equations)::

    Z_sp = Z + SpatialMHA(LN(Z))            # Eq. 2-4, 6: attention among spatial positions,
                                            #   shared by both tasks
    Z_CR = Z_sp + MLP_CR(LN(Z_sp))          # Eq. 5 with MLP_CR: the content encoding
    Z_ch = Z_sp + ChannelMHA(LN(Z_sp))      # Eq. 7: channel attention, quality only
    Z_QA = Z_ch + MLP_QA(LN(Z_ch))          # Eq. 5 with MLP_QA: the quality encoding
    Z'   = Z_CR + Z_QA                      # summed, fed to the next layer (merge="sum")

Read literally, that sum counts the shared encoding ``Z_sp`` twice (both Z_CR and Z_QA are
residual on it), so in the full model the residual stream roughly doubles per layer while the
-Q/-C variants, with one branch, do not. ``IQACRConfig.merge`` chooses: ``"sum"`` (the literal
reading, what the shipped checkpoints use), ``"shared-once"`` (``Z_sp + dCR + dQA``: each
branch adds its own update to one copy of the stream, as in a standard residual network) or
``"mean"`` (``(Z_CR + Z_QA) / 2``).

Decided by a measured ablation (``contentiqa experiment configs/iqa_cr_merge.yaml``:
D=128, human scene labels, frozen Lite0, 3 seeds; benchmarks/results/iqa_cr_merge.md and
iqa_cr_merge_norms.md). The doubling is real: in the trained models the stream grows 2.1x per
layer with ``sum`` against 1.05x with ``shared-once`` or ``mean``. It does not cost accuracy at
the paper's depth: at L=2 clive-dev test SROCC is 0.754 (sum), 0.745 (shared-once), 0.749
(mean), paired per-seed differences within +-0.02 (pre-norm LayerNorms and the final norm
absorb the scale). At L=4 shared-once is 0.018 ahead, within the seeds' spread. So the literal
reading stays the default (it is the paper's equation and what the shipped weights use);
``shared-once`` is the choice for deeper stacks.

What a "channel token" is (Eq. 7) is ambiguous in the text. Two readings are implemented:

- ``channel_attention="tokens"`` (default): the D channels are the tokens, each described by
  its values over the S = CH*CW positions; attention among the D channel tokens (embedding
  S). This is the reading of Eq. 7's ``{q_(s,c')}_{c'=1..C}`` as "compare channel c with every
  other channel c'" at the granularity of whole feature maps, the way SE/CBAM channel attention
  (the paper's refs [26], [28]) treats a channel as a unit; it costs O(D^2 S), in line with the
  paper's complexity argument (spatial and channel attention never over S*D tokens).
- ``channel_attention="axial"``: every point (s, c) of the S x C grid is a token (its scalar
  value lifted to ``axial_dim`` features); Eq. 6 attends along s for each c and Eq. 7 along c
  for each s (axial attention). This is the literal per-point reading of Eq. 6-7; the spatial
  step then also runs per channel.

Base features from several depths (``feature_stages``, default the last four stages). The
paper feeds the bottleneck from the base CNN's last feature map. On CLIVE with the small
EfficientNet-Lite0 this leaves much of the quality signal unused: low-level stages see blur,
noise and compression that the last, semantic stage is built to ignore. Measured with frozen
features and ridge regression on validation data (benchmarks/results/feature_levels.md): last stage
only SROCC 0.756, last four stages 0.808. So each level gets its own 1x1 bottleneck to D after pooling to the
grid, and the results are summed — exactly a 1x1 bottleneck on the channel concatenation of the
levels, i.e. the paper's design with a wider base feature; ``feature_stages=None`` is the
paper's single-level base (``feature_stage``). This also fits the paper's premise that CNN
channels stand for frequency bands (§II): more depths, more bands for channel attention.

Variants (Tables I-III): ``iqa-cr`` (both branches, 1 + N outputs), ``iqa-cr-q`` (quality
branch only: spatial -> channel -> MLP_QA; 1 output), ``iqa-cr-c`` (content branch only:
spatial -> MLP_CR; N outputs) and the "MTL-modified" single-task baselines
``mtl-transformer`` (same backbone, plain ViT encoder, 1 + N head) and ``mtl-pooled``
(pooled backbone features, 1 + N linear head).
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, replace
from typing import Sequence

import torch
from torch import nn

from ..backbones import create_backbone
from ..backbones.stages import (backbone_stages, freeze_stages, frozen_levels, levels_from_outputs, resolve_levels,
                                run_stages_levels, set_bn_eval)
from ..data.table import MOSScale
from ..utils.fields import check_booleans, check_numbers
from .base import IQA_CR_CATEGORIES, CachePart, IQAModel, check_calibration, pil_to_tensor
from .layers import Mlp, MultiHeadAttention, adaptive_avg_pool2d_matmul

VARIANTS = ("full", "q", "c", "mtl-transformer", "mtl-pooled")
MERGES = ("sum", "shared-once", "mean")
CONTENT_FROM = ("tokens", "levels")


@dataclass
class IQACRConfig:
    """Hyper-parameters of IQA-CR; defaults are the paper's (L=2, D=64, H=8, d_f=128)."""

    backbone: str = "efficientnet_lite0"
    backbone_pretrained: bool = True
    backbone_checkpoint: str | None = None
    feature_stage: int = -1
    """Which backbone stage feeds the bottleneck (index into the staged backbone; -1 = last),
    when ``feature_stages`` is None (the paper's single-level base)."""
    feature_stages: tuple[int, ...] | None = (-4, -3, -2, -1)
    """Several stages feed the bottleneck (multi-level base features; see the module docstring).
    Negative indices count from the last stage: (-4, -3, -2, -1) is the last four."""
    frozen_stages: int = 0
    """Stages of the backbone (from the input) that get no gradient."""
    bn_eval: bool = True
    """Keep backbone BatchNorm statistics fixed while fine-tuning (small native-size batches)."""
    dim: int = 64
    depth: int = 2
    heads: int = 8
    mlp_dim: int = 128
    grid: tuple[int, int] = (8, 8)
    dropout: float = 0.1
    channel_attention: str = "tokens"
    channel_heads: int = 4
    axial_dim: int = 8
    variant: str = "full"
    merge: str = "sum"
    """How the full model's layer combines its two branches (module docstring): ``sum`` =
    Z_CR + Z_QA literally (Z_sp counted twice), ``shared-once`` = Z_sp + both branch updates,
    ``mean`` = (Z_CR + Z_QA) / 2. Only the full variant has two branches."""
    content_from: str = "tokens"
    """What the full model's content logits read: ``tokens`` = the paper's head, one linear layer
    of 1 + N units on the encoder's pooled tokens; ``levels`` = the score alone from the tokens
    and the N logits from a linear layer on the global means of the backbone levels the
    bottleneck reads. The tokens are shaped by the quality loss on every photo while only the
    labelled few teach content; the frozen ImageNet levels name scenes better
    (benchmarks/results/content_head.md), and a head on them leaves the score untouched."""
    num_categories: int | None = None
    """Outputs of the content head; None = ``len(categories)``. Given, it must equal it (a
    mismatch is an error, never silently corrected)."""
    categories: tuple[str, ...] = IQA_CR_CATEGORIES
    scale: dict = field(default_factory=lambda: {"low": 0.0, "high": 100.0, "higher_is_better": True})
    calibration: list[float] | None = None
    """A monotone map of the normalised score fitted on validation data after training
    (:func:`contentiqa.training.calibration.fit_calibration`); None = the raw regression."""

    def __post_init__(self):
        check_booleans(self, "model argument")  # backbone_pretrained: "false" loaded ImageNet weights
        check_numbers(self, "model argument")  # heads: 2.0 was a TypeError mid-training, after the caching pass
        self.calibration = check_calibration(self.calibration)
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, not {self.variant!r}")
        if self.merge not in MERGES:
            raise ValueError(f"merge must be one of {MERGES}, not {self.merge!r}")
        if self.merge != "sum" and self.variant != "full":
            raise ValueError(f"merge={self.merge!r} needs two branches: only the full variant has them, not {self.variant!r}")
        if self.content_from not in CONTENT_FROM:
            raise ValueError(f"content_from must be one of {CONTENT_FROM}, not {self.content_from!r}")
        if self.content_from == "levels" and self.variant != "full":
            raise ValueError(f"content_from='levels' is for the full variant (score and content), not {self.variant!r}")
        if self.channel_attention not in ("tokens", "axial"):
            raise ValueError("channel_attention must be 'tokens' or 'axial'")
        self.grid = tuple(self.grid)  # type: ignore[assignment]
        small = [f"{k}={getattr(self, k)}" for k in ("dim", "heads", "depth", "mlp_dim", "channel_heads", "axial_dim")
                 if getattr(self, k) < 1] + ([f"grid={self.grid}"] if len(self.grid) != 2 or min(self.grid) < 1 else [])
        if small:  # a zero width is a traceback deep in a layer; depth 0 a model without its Transformer
            raise ValueError(f"{', '.join(small)}: every size of the model must be at least 1 (grid: two sides)")
        if self.feature_stages is not None:
            self.feature_stages = tuple(int(i) for i in self.feature_stages)
        self.categories = tuple(self.categories)
        if self.num_categories is None:
            self.num_categories = len(self.categories)
        elif self.variant != "q" and int(self.num_categories) != len(self.categories):
            raise ValueError(
                f"num_categories={self.num_categories} but {len(self.categories)} categories are given: pass "
                "categories=(...) with that many names (num_categories then follows), or leave num_categories unset"
            )
        self._check_heads()

    def _check_heads(self) -> None:
        """Every attention width must split evenly into its heads (no silent fallback to 1 head)."""
        positions = self.grid[0] * self.grid[1]
        if self.variant != "mtl-pooled" and self.dim % self.heads:
            raise ValueError(f"dim={self.dim} is not divisible by heads={self.heads}")
        if self.variant in ("full", "q", "c") and self.channel_attention == "axial" and self.axial_dim % self.heads:
            raise ValueError(f"axial_dim={self.axial_dim} is not divisible by heads={self.heads}")
        if self.variant in ("full", "q") and self.channel_attention == "tokens" and positions % self.channel_heads:
            raise ValueError(
                f"channel attention embeds the {positions} grid positions {tuple(self.grid)}, which {self.channel_heads} "
                "channel_heads do not divide: choose channel_heads dividing grid[0] * grid[1]"
            )

    @property
    def predicts_score(self) -> bool:
        return self.variant != "c"

    @property
    def predicts_category(self) -> bool:
        return self.variant != "q"

    @property
    def content_from_levels(self) -> bool:
        return self.content_from == "levels"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["grid"] = list(self.grid)
        d["feature_stages"] = list(self.feature_stages) if self.feature_stages is not None else None
        d["categories"] = list(self.categories)
        return d


class ChannelTokenAttention(nn.Module):
    """Eq. 7, 'tokens' reading: attention among the D channels, each channel described by its
    S spatial values."""

    def __init__(self, num_positions: int, heads: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(num_positions)
        self.attn = MultiHeadAttention(num_positions, heads, dropout)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # z: (B, S, D)
        t = z.transpose(1, 2)  # (B, D, S): channel tokens
        return self.attn(self.norm(t)).transpose(1, 2)


class AxialAttention(nn.Module):
    """Eq. 6/7, 'axial' reading: each grid point (s, c) is a token; attend along one axis."""

    def __init__(self, axial_dim: int, heads: int, dropout: float, axis: str):
        super().__init__()
        self.axis = axis
        self.lift = nn.Linear(1, axial_dim)
        self.attn = MultiHeadAttention(axial_dim, heads, dropout)
        self.out = nn.Linear(axial_dim, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # z: (B, S, D), already normalised
        t = z.transpose(1, 2) if self.axis == "spatial" else z  # attend along S for each channel
        e = self.lift(t.unsqueeze(-1))  # (B, rows, n, axial_dim)
        y = self.out(self.attn(e)).squeeze(-1)
        return y.transpose(1, 2) if self.axis == "spatial" else y


class SpatialChannelLayer(nn.Module):
    """One encoder layer of sequential spatial-channel attention (see module docstring)."""

    def __init__(self, cfg: IQACRConfig, num_positions: int):
        super().__init__()
        d = cfg.dim
        self.use_cr = cfg.variant in ("full", "c")
        self.use_qa = cfg.variant in ("full", "q")
        self.merge = cfg.merge if (self.use_cr and self.use_qa) else "sum"  # one branch: nothing to merge
        self.norm_sp = nn.LayerNorm(d)
        if cfg.channel_attention == "axial":
            self.spatial = AxialAttention(cfg.axial_dim, cfg.heads, cfg.dropout, axis="spatial")
        else:
            self.spatial = MultiHeadAttention(d, cfg.heads, cfg.dropout)
        if self.use_cr:
            self.norm_cr = nn.LayerNorm(d)
            self.mlp_cr = Mlp(d, cfg.mlp_dim, cfg.dropout)
        if self.use_qa:
            if cfg.channel_attention == "axial":
                self.norm_ch = nn.LayerNorm(d)
                self.channel = AxialAttention(cfg.axial_dim, cfg.heads, cfg.dropout, axis="channel")
            else:
                self.norm_ch = nn.Identity()  # ChannelTokenAttention normalises its own tokens
                self.channel = ChannelTokenAttention(num_positions, cfg.channel_heads, cfg.dropout)
            self.norm_qa = nn.LayerNorm(d)
            self.mlp_qa = Mlp(d, cfg.mlp_dim, cfg.dropout)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z_sp = z + self.spatial(self.norm_sp(z))
        copies = 0  # how many copies of z_sp the branch outputs below carry
        out = 0
        if self.use_cr:
            out = out + z_sp + self.mlp_cr(self.norm_cr(z_sp))
            copies += 1
        if self.use_qa:
            z_ch = z_sp + self.channel(self.norm_ch(z_sp))
            out = out + z_ch + self.mlp_qa(self.norm_qa(z_ch))
            copies += 1
        if self.merge == "shared-once":
            return out - (copies - 1) * z_sp
        if self.merge == "mean":
            return out / copies
        return out

    def attention_modules(self) -> list[MultiHeadAttention]:
        mods = [self.spatial.attn if isinstance(self.spatial, AxialAttention) else self.spatial]
        return mods


class PlainLayer(nn.Module):
    """A standard pre-norm Transformer layer (for the MTL-modified single-task baseline)."""

    def __init__(self, cfg: IQACRConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.spatial = MultiHeadAttention(cfg.dim, cfg.heads, cfg.dropout)
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.mlp = Mlp(cfg.dim, cfg.mlp_dim, cfg.dropout)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z + self.spatial(self.norm1(z))
        return z + self.mlp(self.norm2(z))

    def attention_modules(self) -> list[MultiHeadAttention]:
        return [self.spatial]


def global_means(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Feature maps (B, C_l, h, w) -> their channels' global means side by side (B, sum C_l): what
    ``mtl-pooled`` regresses from and a levels content head reads, computed alike everywhere
    (the photo, the cache, a cache's live stages)."""
    return torch.cat([m.mean(dim=(2, 3)) for m in maps], dim=1)


VARIANT_MODELS = {"full": "iqa-cr", "q": "iqa-cr-q", "c": "iqa-cr-c", "mtl-transformer": "mtl-transformer",
                  "mtl-pooled": "mtl-pooled"}
"""The registered model each variant is (:mod:`contentiqa.models.zoo`)."""


class IQACR(IQAModel):
    """IQA-CR and its variants. Input: a normalised image batch at native resolution."""

    model_name = "iqa-cr"

    def __init__(self, cfg: IQACRConfig | None = None, backbone: nn.Module | None = None):
        cfg = cfg or IQACRConfig()
        super().__init__(MOSScale(**cfg.scale), cfg.categories if cfg.predicts_category else ())
        # the registered name of its variant: what a checkpoint is rebuilt as (built from this class
        # directly, a variant saved as 'iqa-cr' was rebuilt as the full model, and refused)
        self.model_name = VARIANT_MODELS[cfg.variant]
        self.cfg = cfg
        self.backbone = backbone if backbone is not None else create_backbone(
            cfg.backbone, pretrained=cfg.backbone_pretrained, checkpoint_path=cfg.backbone_checkpoint
        )
        bcfg = self.backbone.contentiqa_cfg
        self.mean, self.std = bcfg.mean, bcfg.std
        self.stages = backbone_stages(self.backbone)
        n_stages = len(self.stages)
        wanted = cfg.feature_stages if cfg.feature_stages is not None else (cfg.feature_stage,)
        self.levels = resolve_levels(wanted, n_stages, "feature stage(s)")
        self.feature_end = self.levels[-1] + 1
        # Drop the classifier and stages after the feature stage: they would get no gradient.
        self.backbone.reset_classifier(0)
        if self.feature_end < n_stages:
            for s in self.stages[self.feature_end:]:
                for p in s.parameters():
                    p.requires_grad_(False)
        level_ch = self._feature_channels()
        self.level_channels = level_ch
        freeze_stages(self.backbone, cfg.frozen_stages)
        s = cfg.grid[0] * cfg.grid[1]
        if cfg.variant == "mtl-pooled":
            self.layers = nn.ModuleList()
            self.pos_embed = None
            self.bottlenecks = None
            self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(sum(level_ch), self._n_out()))
        else:
            # One 1x1 bottleneck per level, summed: the same as one 1x1 conv on the channel
            # concatenation of the levels (pooled to the grid first; both are linear).
            self.bottlenecks = nn.ModuleList(nn.Conv2d(c, cfg.dim, kernel_size=1) for c in level_ch)
            self.pos_embed = nn.Parameter(torch.zeros(1, s, cfg.dim))
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
            if cfg.variant == "mtl-transformer":
                self.layers = nn.ModuleList(PlainLayer(cfg) for _ in range(cfg.depth))
            else:
                self.layers = nn.ModuleList(SpatialChannelLayer(cfg, s) for _ in range(cfg.depth))
            self.norm = nn.LayerNorm(cfg.dim)
            self.head = nn.Linear(cfg.dim, self._n_out())
        self.content_head = nn.Linear(sum(level_ch), cfg.num_categories) if cfg.content_from_levels else None

    # -- construction helpers ----------------------------------------------------------------
    def _n_out(self) -> int:
        """Outputs of the head on the pooled tokens."""
        tokens_name_content = self.cfg.predicts_category and not self.cfg.content_from_levels
        return int(self.cfg.predicts_score) + (self.cfg.num_categories if tokens_name_content else 0)

    def _feature_channels(self) -> list[int]:
        was = self.backbone.training
        self.backbone.eval()
        with torch.no_grad():
            maps = self.features(torch.zeros(1, 3, 64, 64))
        self.backbone.train(was)
        return [int(m.shape[1]) for m in maps]

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            for s in self.stages[: self.cfg.frozen_stages]:
                s.eval()
            if self.cfg.bn_eval:
                set_bn_eval(self.backbone)
        return self

    # -- IQAModel contract ---------------------------------------------------------------------
    supports_stage_cache = True

    @property
    def predicts_score(self) -> bool:
        return self.cfg.predicts_score

    @property
    def token_grid(self) -> tuple[int, int]:
        return (int(self.cfg.grid[0]), int(self.cfg.grid[1]))

    @property
    def backbone_from_seed(self) -> bool:
        return not self.cfg.backbone_pretrained and not self.cfg.backbone_checkpoint

    @property
    def backbone_bn_frozen(self) -> bool:
        return self.cfg.bn_eval

    def backbone_module(self) -> nn.Module:
        return self.backbone

    def freeze_stages(self, k: int) -> None:
        self.cfg.frozen_stages = max(self.cfg.frozen_stages, k)  # train() keeps them in eval mode
        super().freeze_stages(k)

    def preprocess(self, image) -> torch.Tensor:
        return pil_to_tensor(image, self.mean, self.std)

    def features(self, x: torch.Tensor, start_stage: int = 0) -> list[torch.Tensor]:
        """Backbone feature maps (B, C_l, H_l, W_l) of the configured levels; ``start_stage`` > 0
        means ``x`` is already the output of stage ``start_stage - 1`` (cached features)."""
        return run_stages_levels(self.stages, x, self.levels, start_stage)

    def encode(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """Feature maps -> pooled token representation (B, D) (or (B, sum C) for mtl-pooled)."""
        if self.cfg.variant == "mtl-pooled":
            return global_means(maps)
        return self.encode_grid([adaptive_avg_pool2d_matmul(m, self.cfg.grid) for m in maps])

    def encode_grid(self, grids: list[torch.Tensor]) -> torch.Tensor:
        """Grid-pooled feature maps (B, C_l, *grid) -> (B, D). Pooling comes before the 1x1
        bottleneck (both linear), so a frozen backbone's pooled grids can be cached exactly."""
        z = sum(conv(g) for conv, g in zip(self.bottlenecks, grids))
        z = z.flatten(2).transpose(1, 2) + self.pos_embed  # (B, S, D)
        for layer in self.layers:
            z = layer(z)
        return self.norm(z).mean(dim=1)

    def head_outputs(self, pooled: torch.Tensor, level_means: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Score and content logits from the pooled tokens, and (``content_from="levels"``) the
        levels' global means (B, sum C) for the content."""
        out = self.head(pooled)
        result: dict[str, torch.Tensor] = {}
        if self.cfg.predicts_score:
            result["score"] = self.calibrate(out[:, 0])
            out = out[:, 1:]
        if self.content_head is not None:
            if level_means is None:
                raise ValueError("content_from='levels' needs the levels' global means")
            result["logits"] = self.content_head(level_means)
        elif self.cfg.predicts_category:
            result["logits"] = out
        return result

    def _outputs(self, maps: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.head_outputs(self.encode(maps), global_means(maps) if self.content_head is not None else None)

    def forward(self, x: torch.Tensor, start_stage: int = 0) -> dict[str, torch.Tensor]:
        return self._outputs(self.features(x, start_stage))

    shares_stages = True

    def forward_from_stages(self, x: torch.Tensor, outputs: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        return self._outputs(levels_from_outputs(self.stages, self.levels, list(outputs)))

    # -- cached training (contentiqa.training.cache) --------------------------------------------
    def cache_parts(self, start_stage: int) -> list[CachePart]:
        """One part, the frozen backbone stages. With the whole used backbone frozen
        (``start_stage >= feature_end``): the grid-pooled map of every level (``grid``, channels
        of the levels concatenated) and their global means (``gap``), kilobytes per photo instead
        of megabytes, which is what makes 10,000-photo datasets trainable on a CPU. Otherwise
        stage ``start_stage - 1``'s map (``x``) and the grid-pooled maps of the levels computed
        before it (``gridf``, when some are), which is all the head reads of them."""
        pooled = start_stage >= self.feature_end
        frozen, _ = frozen_levels(self.levels, start_stage)
        # (the weights' file is not in it: the folder is keyed by the weights themselves, wherever they were read)
        key = (f"{self.cfg.backbone}|{self.mean}|{self.std}|grid {self.cfg.grid}|"
               + (f"pooled levels {self.levels}" if pooled else f"stages 0-{start_stage - 1}, frozen levels {frozen}"))
        mods = tuple(self.stages[:self.feature_end] if pooled else self.stages[:start_stage])
        return [CachePart("backbone", key, mods, lambda v: self._encode_frozen(v, start_stage))]

    def _encode_frozen(self, views: torch.Tensor, start_stage: int) -> dict[str, torch.Tensor]:
        if start_stage >= self.feature_end:
            maps = self.features(views)
            return {
                "grid": torch.cat([adaptive_avg_pool2d_matmul(m, self.cfg.grid) for m in maps], dim=1),
                "gap": global_means(maps),
            }
        frozen, _ = frozen_levels(self.levels, start_stage)
        maps = run_stages_levels(self.stages, views, frozen + [start_stage - 1]) if start_stage else [views]
        out = {"x": maps[-1]}
        if frozen:
            out["gridf"] = torch.cat([adaptive_avg_pool2d_matmul(m, self.cfg.grid) for m in maps[:-1]], dim=1)
            out["gapf"] = global_means(maps[:-1])
        return out

    def forward_cached(self, inputs: dict[str, torch.Tensor], start_stage: int) -> dict[str, torch.Tensor]:
        frozen, live_levels = frozen_levels(self.levels, start_stage)
        n_frozen = len(frozen)
        if start_stage >= self.feature_end:
            if self.cfg.variant == "mtl-pooled":
                return self.head_outputs(inputs["gap"])
            grids = list(torch.split(inputs["grid"], self.level_channels, dim=1))
            return self.head_outputs(self.encode_grid(grids), inputs["gap"])
        if not n_frozen:
            return self(inputs["x"], start_stage=start_stage)
        live = run_stages_levels(self.stages, inputs["x"], live_levels, start_stage)
        # The levels' means: what mtl-pooled regresses from and a levels content head reads.
        means = (torch.cat([inputs["gapf"], global_means(live)], dim=1)
                 if self.cfg.variant == "mtl-pooled" or self.content_head is not None else None)
        if self.cfg.variant == "mtl-pooled":
            return self.head_outputs(means)
        grids = list(torch.split(inputs["gridf"], self.level_channels[:n_frozen], dim=1))
        grids += [adaptive_avg_pool2d_matmul(m, self.cfg.grid) for m in live]
        return self.head_outputs(self.encode_grid(grids), means)

    def with_level_content(self, weight: torch.Tensor, bias: torch.Tensor) -> "IQACR":
        """A copy of this full model whose content logits come from the levels' global means
        (``content_from="levels"``, head ``weight`` (N, sum C) and ``bias`` (N,)); everything the
        score reads is copied as it is, so the score stays the same (to float rounding: the
        score's row of the head becomes a head of its own)."""
        if self.cfg.variant != "full" or self.cfg.content_from_levels:
            raise ValueError("with_level_content needs a full IQA-CR whose content comes from its tokens")
        new = IQACR(replace(self.cfg, content_from="levels"), backbone=copy.deepcopy(self.backbone))
        state = dict(self.state_dict())
        state["head.weight"], state["head.bias"] = state["head.weight"][:1], state["head.bias"][:1]
        state["content_head.weight"] = torch.as_tensor(weight, dtype=state["head.weight"].dtype)
        state["content_head.bias"] = torch.as_tensor(bias, dtype=state["head.bias"].dtype)
        new.load_state_dict(state)
        return new.train(self.training)

    def attention_layers(self) -> list[MultiHeadAttention]:
        return [m for layer in self.layers for m in layer.attention_modules()]

    def gradcam_modules(self) -> list[nn.Module]:
        """The backbone stages whose maps feed the bottleneck (every level, shallow to deep)."""
        return [self.stages[i] for i in self.levels]
