"""DenseNet for CIFAR (Huang, Liu, van der Maaten & Weinberger, "Densely Connected
Convolutional Networks", CVPR 2017), default DenseNet-40 with growth rate k = 12.

Layout (paper section 3, "Implementation details" for CIFAR): ``stem`` 3x3 conv (16 channels,
2k for DenseNet-BC), three dense blocks ``block1..3`` separated by transitions ``trans1``,
``trans2`` (BN -> ReLU -> conv1x1 to floor(theta x m) channels -> 2x2 average pool), then
``bn`` -> ReLU -> global average pooling -> ``classifier``. A dense layer reads the
concatenation of every earlier output of its block and adds its own k channels:
BN -> ReLU -> conv3x3(k); with ``bottleneck=True`` (DenseNet-B) it is first
BN -> ReLU -> conv1x1(4k). DenseNet-BC is ``bottleneck=True, compression=0.5`` (theta).
Each block has (depth - 4) / 3 layers, or (depth - 4) / 6 with bottlenecks. No dropout
(the paper drops out only without data augmentation).

DenseNet-40 (k = 12): 1,019,722 parameters at 10 classes and 264.8 M MACs at 32 px (the
paper's "1.0 M"); DenseNet-BC-40: 176,122 and 72.4 M; DenseNet-BC-100: 769,162 (paper 0.8 M).

Widths: every conv output is a free width of its own: a concatenation does not couple its
inputs, and the pre-activation BN after it follows each input at its offset. The growth
widths of one block all reach its transition, so planning ties a block with the
transition before it (rsnet.graph merges such units).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rsnet.errors import RsnetError
from rsnet.models.layers import check_width, init_weights

__all__ = ["DenseLayer", "DenseBlock", "Transition", "DenseNetCifar", "densenet_cifar", "widths_kwargs", "INIT"]


class DenseLayer(nn.Module):
    """[BN -> ReLU -> ``conv1`` 1x1 (bottleneck)] -> BN -> ReLU -> ``conv2`` 3x3.

    ``(B, in_channels, H, W)`` -> ``(B, growth, H, W)``.
    """

    def __init__(self, in_channels: int, growth: int, bottleneck: int | None) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        if bottleneck is not None:
            self.conv1: nn.Module | None = nn.Conv2d(in_channels, bottleneck, 1, bias=False)
            self.bn2: nn.Module | None = nn.BatchNorm2d(bottleneck)
            in_channels = bottleneck
        else:
            self.conv1 = self.bn2 = None
        self.conv2 = nn.Conv2d(in_channels, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(x))
        if self.conv1 is not None:
            x = F.relu(self.bn2(self.conv1(x)))
        return self.conv2(x)


class DenseBlock(nn.Module):
    """``layers``; each reads cat(input, all earlier outputs). Output: that concatenation
    with the last layer's output, ``in_channels + sum(growths)`` channels."""

    def __init__(self, in_channels: int, growths: Sequence[int],
                 bottlenecks: Sequence[int | None]) -> None:
        super().__init__()
        layers = []
        for growth, bottleneck in zip(growths, bottlenecks):
            layers.append(DenseLayer(in_channels, growth, bottleneck))
            in_channels += growth
        self.layers = nn.ModuleList(layers)
        self.out_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, dim=1)))
        return torch.cat(features, dim=1)


class Transition(nn.Sequential):
    """BN -> ReLU -> ``conv`` 1x1 -> 2x2 average pool."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(OrderedDict([
            ("bn", nn.BatchNorm2d(in_channels)),
            ("act", nn.ReLU()),
            ("conv", nn.Conv2d(in_channels, out_channels, 1, bias=False)),
            ("pool", nn.AvgPool2d(2)),
        ]))


class DenseNetCifar(nn.Module):
    """``stem`` -> ``block1``, ``trans1``, ``block2``, ``trans2``, ``block3`` -> ``bn`` ->
    ReLU -> pool -> ``classifier``; ``(B, 3, H, W)`` -> ``(B, num_classes)``."""

    def __init__(self, num_classes: int, stem_width: int, growths: Sequence[Sequence[int]],
                 bottlenecks: Sequence[Sequence[int | None]],
                 transition_widths: Sequence[int]) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, stem_width, 3, padding=1, bias=False)
        channels = stem_width
        for b, (g, bn) in enumerate(zip(growths, bottlenecks)):
            block = DenseBlock(channels, g, bn)
            setattr(self, f"block{b + 1}", block)
            channels = block.out_channels
            if b < len(growths) - 1:
                setattr(self, f"trans{b + 1}", Transition(channels, transition_widths[b]))
                channels = transition_widths[b]
        self.bn = nn.BatchNorm2d(channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block1(self.stem(x))
        x = self.block2(self.trans1(x))
        x = self.block3(self.trans2(x))
        return self.classifier(torch.flatten(self.pool(F.relu(self.bn(x))), 1))


def densenet_cifar(
    depth: int = 40,
    growth_rate: int = 12,
    num_classes: int = 10,
    bottleneck: bool = False,
    compression: float = 1.0,
    stem_width: int | None = None,
    growth_widths: Sequence[int] | None = None,
    bottleneck_widths: Sequence[int] | None = None,
    transition_widths: Sequence[int] | None = None,
) -> nn.Module:
    """Build a CIFAR DenseNet; the defaults are DenseNet-40 (k = 12).

    Args:
        depth: L; (L - 4) must be divisible by 3 (by 6 with ``bottleneck``).
        growth_rate: k, each dense layer's output width unless ``growth_widths`` says.
        num_classes: outputs of ``classifier``.
        bottleneck: DenseNet-B layers (a 1x1 conv to 4k first).
        compression: theta in (0, 1]; a transition keeps floor(theta x m) of m channels.
        stem_width: output channels of ``stem`` (default 16, or 2k with ``bottleneck``).
        growth_widths: output width of every dense layer's 3x3 conv, block by block.
        bottleneck_widths: with ``bottleneck``, every dense layer's 1x1 conv width (4k).
        transition_widths: the two transitions' widths (default floor(theta x m)).
    """
    per_block = 6 if bottleneck else 3
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 4 + per_block \
            or (depth - 4) % per_block:
        raise RsnetError(f"depth must be {per_block}n + 4 (e.g. 40{', 100' if bottleneck else ''})"
                         f"{' with bottleneck=true' if bottleneck else ''}, got {depth!r}")
    n = (depth - 4) // per_block
    num_classes = check_width(num_classes, "num_classes")
    growth_rate = check_width(growth_rate, "growth_rate")
    if not 0 < compression <= 1:
        raise RsnetError(f"compression (theta) must be in (0, 1], got {compression!r}")
    stem = check_width(stem_width if stem_width is not None
                       else (2 * growth_rate if bottleneck else 16), "stem_width")

    def per_layer(values: Sequence[int] | None, default: int, name: str) -> list[int]:
        if values is None:
            return [default] * (3 * n)
        if len(values) != 3 * n:
            raise RsnetError(f"{name} must list {3 * n} widths (3 blocks x {n} layers), "
                             f"got {len(values)}")
        return [check_width(v, f"{name}[{i}]") for i, v in enumerate(values)]

    growth = per_layer(growth_widths, growth_rate, "growth_widths")
    if bottleneck:
        inner: list[int | None] = list(per_layer(bottleneck_widths, 4 * growth_rate,
                                                 "bottleneck_widths"))
    elif bottleneck_widths is not None:
        raise RsnetError("bottleneck_widths needs bottleneck=true")
    else:
        inner = [None] * (3 * n)
    growths = [growth[b * n:(b + 1) * n] for b in range(3)]
    inners = [inner[b * n:(b + 1) * n] for b in range(3)]
    if transition_widths is None:
        channels, trans = stem, []
        for b in range(2):
            channels += sum(growths[b])
            channels = max(1, math.floor(compression * channels))
            trans.append(channels)
    else:
        if len(transition_widths) != 2:
            raise RsnetError(f"transition_widths must have 2 entries, got {len(transition_widths)}")
        trans = [check_width(w, f"transition_widths[{i}]") for i, w in enumerate(transition_widths)]
    model = DenseNetCifar(num_classes, stem, growths, inners, trans)
    init_weights(model)
    return model


def widths_kwargs(w: Mapping[str, int], baseline: nn.Module) -> dict:
    """The builder's width arguments for ``{layer name: width}`` (a plan's widths) and the
    baseline they scale (rsnet.models.widths.build_at_widths)."""
    layers = [(b, i) for b in (1, 2, 3) for i in range(len(getattr(baseline, f"block{b}").layers))]
    bottleneck = baseline.block1.layers[0].conv1 is not None
    return {"stem_width": w["stem"],
            "growth_widths": [w[f"block{b}.layers.{i}.conv2"] for b, i in layers],
            "bottleneck_widths": ([w[f"block{b}.layers.{i}.conv1"] for b, i in layers]
                                  if bottleneck else None),
            "transition_widths": [w["trans1.conv"], w["trans2.conv"]]}


# The builder's own initialisation, for re-initialising a pruned network ("from scratch").
INIT = init_weights
