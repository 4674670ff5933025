"""Per-image selection of intelligibility features (IE-IQA §3.3), without any training.

Two ways to rank the ``N_d`` features ``f_j`` of one image, then keep the top
``N_s = int(N_d * k / 100)`` of them **in index order**:

- **contribution** (Algorithm 1), for networks that end in one linear layer
  ``z = W f + b``: ``i_max = argmax_i z_i`` (the top-1 class) and
  ``contrib_j = |W[i_max, j] * f_j|`` (Eq. 4);
- **sensitivity** (Eq. 5-7), for a non-linear head ``s = F(f)``:
  ``grad_j = |ds / df_j|``. For a head with several outputs (class logits), ``s`` is the
  top-1 output ``F(f)[i_max]`` with ``i_max`` fixed at the argmax.

The selected indices differ from image to image, so the selected vector of image ``b`` is
``f[b, idx[b]]`` (one ``torch.gather`` for the batch). The *sparse* variant keeps the
dimension ``N_d`` and sets the unselected entries to zero instead of dropping them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence, runtime_checkable

import torch
from torch import nn

STRATEGIES = ("contribution", "sensitivity", "none")


@dataclass
class Selection:
    """What a selection returns. ``features``: (B, N_s), or (B, N_d) when sparse / no
    selection; ``indices``: (B, N_s) selected feature indices, ascending in each row;
    ``scores``: (B, N_d) the ranking scores (contributions or sensitivities; None for
    'none'); ``top_class``: (B,) the ``i_max`` used (None where not applicable)."""

    features: torch.Tensor
    indices: torch.Tensor
    scores: torch.Tensor | None = None
    top_class: torch.Tensor | None = None


def num_selected(num_features: int, ratio: float) -> int:
    """``N_s = int(N_d * k%)`` (Algorithm 1, line 6), at least 1 and at most ``N_d``."""
    if not 0 < ratio <= 100:
        raise ValueError(f"selection ratio must be a percentage in (0, 100], got {ratio}")
    return max(1, min(num_features, int(num_features * ratio / 100.0)))


def _masked_argmax(z: torch.Tensor, exclude: Sequence[int] = ()) -> torch.Tensor:
    """argmax over the last axis, ignoring the class indices in ``exclude`` (e.g. background)."""
    if exclude:
        z = z.clone()
        z[:, list(exclude)] = float("-inf")
    return z.argmax(dim=1)


def contribution_scores(
    f: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, exclude: Sequence[int] = ()
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 3-4: ``z = f W^T + b``; ``i_max = argmax z``; ``|W[i_max] * f|``.

    ``f``: (B, N_d); ``weight``: (C, N_d); returns (contributions (B, N_d), i_max (B,)).
    """
    z = f @ weight.t()
    if bias is not None:
        z = z + bias
    i_max = _masked_argmax(z, exclude)
    return (weight[i_max] * f).abs(), i_max


def sensitivity_scores(
    f: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor], exclude: Sequence[int] = ()
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Eq. 5-6: ``|ds/df_j|`` with ``s = head(f)`` (a scalar per image, or the top-1 of
    several outputs), by ``torch.autograd.grad``.

    The head must treat the images of a batch independently (no batch statistics: it is
    called in eval mode), so one backward pass of ``sum_b s_b`` gives every image's own
    gradient ``ds_b / df_b``. Works inside ``torch.no_grad`` / ``torch.inference_mode``
    (a local graph is built on a detached copy of ``f``).
    """
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        # torch.autograd.grad traces to aten::*_backward ops that have no ONNX equivalent:
        # use the closed-form gradient of a Linear/ReLU head (the same numbers).
        layers = _head_layers(head)
        if layers is None:
            raise NotImplementedError(
                "sensitivity-based selection cannot be traced (for ONNX export) with this head: its "
                "gradient comes from torch.autograd, which ONNX cannot express, and the head is not a "
                "plain Linear/ReLU chain whose gradient could be written out"
            )
        return mlp_input_gradient(f, layers, exclude)
    with torch.inference_mode(False), torch.enable_grad():
        x = f.clone().detach().requires_grad_(True)  # clone first: f may be an inference tensor
        out = head(x)
        if out.ndim == 1:
            out = out[:, None]
        if out.shape[1] == 1:
            s, i_max = out[:, 0], None
        else:
            i_max = _masked_argmax(out.detach(), exclude)
            s = out.gather(1, i_max[:, None])[:, 0]
        (grad,) = torch.autograd.grad(s.sum(), x)
    return grad.abs().detach(), i_max


@runtime_checkable
class LayeredHead(Protocol):
    """What owns a ``head`` method and can say which layers it is (an intelligibility branch)."""

    def head_layers(self) -> list[nn.Module] | None:
        """The head as a chain of Linear / ReLU (/ Dropout, Identity) modules, else None."""
        ...


def _head_layers(head: Callable) -> list[nn.Module] | None:
    """The Linear/ReLU chain behind ``head``: a module (Sequential / Linear) or the bound
    ``head`` method of a :class:`LayeredHead` (an intelligibility branch)."""
    if isinstance(head, nn.Sequential):
        layers: list[nn.Module] | None = list(head)
    elif isinstance(head, nn.Linear):
        layers = [head]
    else:
        owner = getattr(head, "__self__", None)  # a bound method's object
        layers = owner.head_layers() if isinstance(owner, LayeredHead) else None
    if layers is None or not all(isinstance(m, _CHAIN_TYPES) for m in layers):
        return None
    core = [m for m in layers if isinstance(m, (nn.Linear, nn.ReLU))]
    if not core or not isinstance(core[-1], nn.Linear):
        return None  # the output must come straight from a Linear layer
    return layers


_CHAIN_TYPES = (nn.Linear, nn.ReLU, nn.Dropout, nn.Identity)


def mlp_input_gradient(
    f: torch.Tensor, layers: Sequence[nn.Module], exclude: Sequence[int] = ()
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What :func:`sensitivity_scores` computes, for a head that is a chain of Linear / ReLU
    (Dropout, Identity: eval mode) layers, without autograd: ``|ds/df|`` by the chain rule
    written out (``W_L[i] * relu'(h_{L-1}) @ W_{L-1} ...``), traceable to ONNX
    (Gather / MatMul / Mul only). ``relu'(h) = 1 where h > 0``, as autograd has it."""
    masks: dict[int, torch.Tensor] = {}  # layer index of a ReLU -> relu'(its input)
    h = f
    for k, m in enumerate(layers):
        if isinstance(m, nn.ReLU):
            masks[k] = (h > 0).to(h.dtype)
            h = torch.relu(h)
        elif isinstance(m, nn.Linear):
            h = m(h)
    out = h
    i_max = None
    linears = [k for k, m in enumerate(layers) if isinstance(m, nn.Linear)]
    last = linears[-1]
    w_last = layers[last].weight  # (C, N)
    if out.shape[1] == 1:
        g = w_last[0].expand(f.shape[0], -1)
    else:
        i_max = _masked_argmax(out.detach(), exclude)
        g = w_last.index_select(0, i_max)  # (B, N): d s / d (input of the last Linear)
    for k in range(last - 1, -1, -1):
        m = layers[k]
        if isinstance(m, nn.ReLU):
            g = g * masks[k]  # relu'(input of layer k)
        elif isinstance(m, nn.Linear):
            g = g @ m.weight
    return g.abs(), i_max


def _top_indices(scores: torch.Tensor, n: int) -> torch.Tensor:
    """The indices of each row's ``n`` highest scores, ascending; among equal scores at the cut
    the lowest indices. Ties are common (features a ReLU zeroed score 0 alike), and PyTorch's
    ``topk`` breaks them its own way where ONNX's TopK takes the lowest index: an exported
    model then kept other features than PyTorch on flat frames. So only the n-th highest value
    is taken from ``topk`` (the same in every runtime) and the ties at it are filled in index
    order, with operations that export."""
    b, d = scores.shape
    cut = scores.topk(n, dim=1).values[:, -1:]
    above = scores > cut
    at = scores == cut
    room = n - above.sum(dim=1, keepdim=True)
    keep = above | (at & (at.long().cumsum(dim=1) <= room))
    positions = torch.where(keep, keep.long().cumsum(dim=1) - 1, torch.full_like(scores, n, dtype=torch.long))
    index = torch.arange(d, device=scores.device).expand(b, d)
    # the features not kept all go to one extra column, dropped
    return torch.zeros(b, n + 1, dtype=torch.long, device=scores.device).scatter(1, positions, index)[:, :n]


def select_top(
    f: torch.Tensor, scores: torch.Tensor, n_select: int, sparse: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the ``n_select`` highest-scoring features of each row.

    Returns ``(selected, indices)``: ``indices`` (B, N_s) ascending per row (Algorithm 1,
    line 10: ``sort(ind[1:N_s])``); ``selected`` is ``f.gather(1, indices)`` (B, N_s), or with
    ``sparse`` ``f`` with every other entry set to zero (B, N_d).
    """
    if scores.shape != f.shape:
        raise ValueError(f"scores {tuple(scores.shape)} do not match features {tuple(f.shape)}")
    indices = _top_indices(scores, n_select)
    if sparse:
        mask = torch.zeros_like(f).scatter_(1, indices, 1.0)
        return f * mask, indices
    return f.gather(1, indices), indices


def select_features(
    f: torch.Tensor,
    strategy: str,
    ratio: float = 100.0,
    sparse: bool = False,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    head: Callable[[torch.Tensor], torch.Tensor] | None = None,
    exclude: Sequence[int] = (),
) -> Selection:
    """Rank and select the features ``f`` (B, N_d) of each image.

    ``strategy``: 'contribution' (needs ``weight`` [, ``bias``] of the task's linear head),
    'sensitivity' (needs ``head``) or 'none' (all features, indices ``0..N_d-1``).
    ``exclude``: class indices never taken as ``i_max`` (a detector's background class).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"selection strategy must be one of {STRATEGIES}, not {strategy!r}")
    b, n = f.shape
    if strategy == "none":
        idx = torch.arange(n, device=f.device).expand(b, n)
        return Selection(f, idx)
    if strategy == "contribution":
        if weight is None:
            raise ValueError("contribution-based selection needs the weights of the task's linear head")
        scores, i_max = contribution_scores(f, weight, bias, exclude)
    else:
        if head is None:
            raise ValueError("sensitivity-based selection needs the task's head")
        scores, i_max = sensitivity_scores(f, head, exclude)
    selected, idx = select_top(f, scores, num_selected(n, ratio), sparse)
    return Selection(selected, idx, scores, i_max)
