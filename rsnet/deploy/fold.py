"""Exact rewrites of a trained model for deployment, applied by :func:`export_onnx`.

A BatchNorm after the activation (``conv -> ReLU -> BN [-> ReLU]``, what
:func:`rsnet.models.layers.conv_bn_act` builds with ``pre_act=True``: the thesis GoogLeNet's
stem and inception 3a) cannot be folded into its convolution by ONNX Runtime. In an int8
graph it stays a float op with dequantize / quantize nodes and layout transposes around it;
GoogLeNet-rs's int8 graph kept 9 BatchNormalization, 29 DequantizeLinear and 19 Transpose
nodes and ran no faster than fp32 (docs/deployment.md).

Where every channel's BN scale ``a = gamma / sqrt(var + eps)`` is positive,
``a * relu(z) = relu(a * z)``, so with ``b = beta - a * mean``::

    relu(a * relu(z) + b) = relu(a * z + min(b, 0)) + max(b, 0)     (BN -> ReLU)
    a * relu(z) + b      = relu(a * z) + b                          (BN last)

The BN goes into the convolution's weights and bias, and at most a per-channel constant add
is left (:class:`ChannelShift`; none where that constant is 0 in every channel), which ORT
runs in int8 (QLinearAdd).

A block with any scale <= 0 cannot be folded; its BN becomes the same per-channel affine map
as elementwise ops, ``x * a + b`` (:class:`ChannelAffine`: Mul, Add). ORT runs those in int8
and in its NHWC layout (QLinearMul, QLinearAdd), where a float BatchNormalization breaks the
int8 graph into NCHW islands: the max-pools after it then ran as ORT's generic uint8 NCHW
kernel, most of the time of GoogLeNet-rs's trained int8 Psi on a 2-core AMD EPYC, whose int8
was slower than its fp32 (docs/deployment.md).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["ChannelAffine", "ChannelShift", "fold_post_activation_bn", "post_activation_bn_blocks"]


class ChannelShift(nn.Module):
    """``x + shift`` per channel: ``(B, C, H, W)`` -> ``(B, C, H, W)``."""

    def __init__(self, shift: torch.Tensor):
        super().__init__()
        self.register_buffer("shift", shift.detach().reshape(1, -1, 1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.shift


class ChannelAffine(nn.Module):
    """``x * scale + shift`` per channel (an eval-mode BatchNorm as Mul and Add)."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor):
        super().__init__()
        self.register_buffer("scale", scale.detach().reshape(1, -1, 1, 1).clone())
        self.register_buffer("shift", shift.detach().reshape(1, -1, 1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) of the eval-mode BN ``a * x + b``, per channel."""
    a = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        a = a * bn.weight
    b = -a * bn.running_mean
    if bn.bias is not None:  # ShiftBatchNorm2d: a shift without a scale
        b = b + bn.bias
    return a.detach(), b.detach()


def post_activation_bn_blocks(model: nn.Module, foldable: bool = True) -> list[nn.Sequential]:
    """The ``conv -> ReLU -> BN [-> ReLU]`` blocks of ``model`` (children named as conv_bn_act
    names them, a BN with running statistics) whose BN scales are all positive (``foldable``)
    or not all positive (``foldable=False``)."""
    found = []
    for block in model.modules():
        if not isinstance(block, nn.Sequential):
            continue
        kids = dict(block.named_children())
        if list(kids) not in (["conv", "pre_act", "bn"], ["conv", "pre_act", "bn", "act"]):
            continue
        conv, act, bn, post = kids["conv"], kids["pre_act"], kids["bn"], kids.get("act")
        if not (isinstance(conv, nn.Conv2d) and type(act) is nn.ReLU and
                isinstance(bn, nn.BatchNorm2d) and bn.running_var is not None and
                (post is None or type(post) is nn.ReLU)):
            continue
        if bool((_bn_affine(bn)[0] > 0).all()) == foldable:
            found.append(block)
    return found


@torch.no_grad()
def fold_post_activation_bn(model: nn.Module) -> nn.Module:
    """``model`` with every foldable post-activation BN folded and every other one made a
    :class:`ChannelAffine` (a copy; ``model`` itself is returned unchanged when it has no
    post-activation BN). Exact up to float rounding, in eval mode."""
    if not (post_activation_bn_blocks(model) or post_activation_bn_blocks(model, foldable=False)):
        return model
    model = copy.deepcopy(model).eval()
    for block in post_activation_bn_blocks(model, foldable=False):
        block.bn = ChannelAffine(*_bn_affine(block.bn))
    for block in post_activation_bn_blocks(model):
        conv, bn = block.conv, block.bn
        a, b = _bn_affine(bn)
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(a)
        has_post = hasattr(block, "act")
        inside, shift = (b.clamp(max=0), b.clamp(min=0)) if has_post else (torch.zeros_like(b), b)
        conv.weight.mul_(a.reshape(-1, 1, 1, 1))
        conv.bias = nn.Parameter(a * bias + inside)
        act = block.pre_act
        for name in ("conv", "pre_act", "bn", "act"):
            if hasattr(block, name):
                delattr(block, name)
        block.add_module("conv", conv)
        block.add_module("pre_act", act)
        if bool((shift != 0).any()):
            block.add_module("shift", ChannelShift(shift))
    return model
