"""TensorFlow "same" convolutions exported as one ONNX ``Conv`` with ``auto_pad=SAME_UPPER``.

Why: the EfficientNet-Lite backbones pad their stride-2 convolutions the TensorFlow way
(timm's ``Conv2dSame``: half the padding before, the odd pixel after), computed in Python
from the input's shape. Traced for ONNX, that is a chain of Shape / Ceil / Sub / ... ops and a
``Pad`` before each such convolution, which ONNX Runtime can neither fuse into the Conv nor keep
in its blocked (NCHWc) layout. On IE-IQA (a one-off ONNX Runtime profile, 2 CPU threads; the speed-up it gave is in
benchmarks/results/int8.md's fp32 rows): the
Pads took 17 % of the time and the layout reorders around them 16 %. ONNX's own
``auto_pad=SAME_UPPER`` is the same padding for any input size, so one Conv node replaces the
chain, for fixed-size and native-resolution graphs alike (the exporter checks the outputs
against PyTorch before it returns).

Used only while exporting (:func:`same_padding_as_onnx_conv`); training and PyTorch inference
keep timm's module as it is.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import torch
from torch import nn

OP_NAME = "contentiqa::conv2d_same"


def _timm_conv2d_same(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: list[int],
                      groups: int) -> torch.Tensor:
    from timm.layers.conv2d_same import conv2d_same as timm_conv2d_same

    return timm_conv2d_same(x, weight, bias, tuple(stride), (0, 0), (1, 1), groups)


conv2d_same = torch.library.custom_op(OP_NAME, _timm_conv2d_same, mutates_args=())
"""timm's ``conv2d_same`` (dilation 1) as one opaque op, so the tracer records one node."""
conv2d_same.register_fake(_timm_conv2d_same)  # shapes: the same arithmetic on fake tensors


def _symbolic(g, x, weight, bias, stride, groups):
    from torch.onnx import symbolic_helper as sh

    stride = sh._maybe_get_const(stride, "is")
    groups = sh._maybe_get_const(groups, "i")
    inputs = [x, weight] if sh._is_none(bias) else [x, weight, bias]
    kernel = weight.type().sizes()[2:] if weight.type().sizes() else None
    attrs = {"auto_pad_s": "SAME_UPPER", "strides_i": list(stride), "group_i": int(groups)}
    if kernel:
        attrs["kernel_shape_i"] = list(kernel)
    return g.op("Conv", *inputs, **attrs)


def _is_same_conv(module: nn.Module) -> bool:
    from timm.layers.conv2d_same import Conv2dSame

    return isinstance(module, Conv2dSame) and tuple(module.dilation) == (1, 1) and module.padding_mode == "zeros"


def _forward(module: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return conv2d_same(x, module.weight, module.bias, list(module.stride), module.groups)


@contextmanager
def same_padding_as_onnx_conv(module: nn.Module, opset: int) -> Iterator[int]:
    """Within the block, ``module``'s TensorFlow-"same" convolutions trace as single
    ``Conv(auto_pad=SAME_UPPER)`` nodes (for :func:`torch.onnx.export` with ``dynamo=False``
    at ``opset``); yields how many were switched. Everything is restored on exit."""
    torch.onnx.register_custom_op_symbolic(OP_NAME, _symbolic, int(opset))
    swapped = [m for m in module.modules() if _is_same_conv(m)]
    for m in swapped:
        m.forward = _forward.__get__(m)  # an instance attribute shadows the class's forward
    try:
        yield len(swapped)
    finally:
        for m in swapped:
            del m.forward
