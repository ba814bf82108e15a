"""ShuffleNetV2 for CIFAR (Ma, Zhang, Zheng & Sun, "ShuffleNet V2: Practical Guidelines for
Efficient CNN Architecture Design", ECCV 2018).

Layout as the paper's Table 5 and torchvision: ``stem`` 3x3 conv (24) -> BN -> ReLU, three
stages ``stage2..4`` of 4 / 8 / 4 units at widths 116 / 232 / 464 (1x), ``last`` 1x1 conv
(1024) -> BN -> ReLU, global average pooling, ``classifier``. A unit of stride 1 splits its
input channels in two halves, keeps the first and sends the second through ``branch2``
(1x1 -> BN -> ReLU -> 3x3 depthwise -> BN -> 1x1 -> BN -> ReLU); a unit of stride 2 (the
first of a stage) sends the whole input through ``branch1`` (3x3 depthwise stride 2 -> BN ->
1x1 -> BN -> ReLU) and ``branch2`` (its depthwise conv at stride 2). The two halves are
concatenated and channel-shuffled (2 groups).

CIFAR (32 px), as is standard (e.g. kuangliu/pytorch-cifar): the stem runs at stride 1 and
there is no max-pool, so the stages run at 16, 8 and 4 px. 1,263,854 parameters at 10 classes
(0.5x: 352,042) and 45.0 M MACs at 32 px.

Widths: a stage's stream (every unit's two halves, through the shuffles) is one coupled
group, of even width; each ``branch2``'s first 1x1 (``inner_widths``) is free. Whether a
plan may prune the stream depends on what the graph analysis and the pruner can both
express: see rsnet.graph's treatment of channel shuffles.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from rsnet.errors import RsnetError
from rsnet.models.layers import check_width, conv_bn_act, init_weights

__all__ = ["channel_shuffle", "ShuffleUnit", "ShuffleNetV2", "shufflenet_v2", "widths_kwargs", "INIT"]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave ``groups`` equal channel groups: ``(B, C, H, W)`` -> same shape.

    Channel g * (C / groups) + i moves to i * groups + g.
    """
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous()
    return x.view(b, c, h, w)


class ShuffleUnit(nn.Module):
    """``(B, in_channels, H, W)`` -> ``(B, 2 * branch, H / stride, W / stride)``.

    Stride 1 needs in_channels = 2 * branch (the kept half has ``branch`` channels).
    """

    def __init__(self, in_channels: int, inner: int, branch: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        if stride > 1:
            self.branch1: nn.Module | None = nn.Sequential(OrderedDict([
                ("dw", conv_bn_act(in_channels, in_channels, 3, stride=stride, padding=1,
                                   groups=in_channels, act=None)),
                ("pw", conv_bn_act(in_channels, branch, 1)),
            ]))
            reads = in_channels
        else:
            self.branch1 = None
            reads = in_channels // 2
        self.branch2 = nn.Sequential(OrderedDict([
            ("pw1", conv_bn_act(reads, inner, 1)),
            ("dw", conv_bn_act(inner, inner, 3, stride=stride, padding=1, groups=inner, act=None)),
            ("pw2", conv_bn_act(inner, branch, 1)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.branch1 is None:
            kept, x2 = x.chunk(2, dim=1)
            out = torch.cat([kept, self.branch2(x2)], dim=1)
        else:
            out = torch.cat([self.branch1(x), self.branch2(x)], dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """``stem`` -> ``stage2..4`` -> ``last`` -> pool -> ``classifier``."""

    def __init__(self, num_classes: int, stem_width: int, repeats: Sequence[int],
                 stage_widths: Sequence[int], inner_widths: Sequence[int], last_width: int,
                 stem_stride: int) -> None:
        super().__init__()
        self.stem = conv_bn_act(3, stem_width, 3, stride=stem_stride, padding=1)
        channels, u = stem_width, 0
        for s, (n, width) in enumerate(zip(repeats, stage_widths)):
            units = []
            for i in range(n):
                units.append(ShuffleUnit(channels, inner_widths[u], width // 2, 2 if i == 0 else 1))
                channels, u = width, u + 1
            setattr(self, f"stage{s + 2}", nn.Sequential(*units))
        self.num_stages = len(repeats)
        self.last = conv_bn_act(channels, last_width, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last_width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for s in range(self.num_stages):
            x = getattr(self, f"stage{s + 2}")(x)
        return self.classifier(torch.flatten(self.pool(self.last(x)), 1))


def shufflenet_v2(
    num_classes: int = 10,
    stem_width: int = 24,
    repeats: Sequence[int] = (4, 8, 4),
    stage_widths: Sequence[int] = (116, 232, 464),
    inner_widths: Sequence[int] | None = None,
    last_width: int = 1024,
    stem_stride: int = 1,
) -> nn.Module:
    """Build ShuffleNetV2 (1x, CIFAR stem by default; 0.5x: ``stage_widths=[48, 96, 192]``).

    Args:
        num_classes: outputs of ``classifier``.
        stem_width: output channels of the stem conv.
        repeats: units per stage (the first of each has stride 2).
        stage_widths: output width of each stage (even: two concatenated halves).
        inner_widths: width of every unit's ``branch2.pw1`` (default: half the stage width).
        last_width: output channels of the last 1x1 conv.
        stem_stride: 1 for CIFAR; 2 (plus the paper's max-pool, not built here) for ImageNet.
    """
    num_classes = check_width(num_classes, "num_classes")
    stem_width = check_width(stem_width, "stem_width")
    last_width = check_width(last_width, "last_width")
    if stem_stride not in (1, 2) or isinstance(stem_stride, bool):
        raise RsnetError(f"stem_stride must be 1 or 2, got {stem_stride!r}")
    if len(repeats) == 0 or len(repeats) != len(stage_widths):
        raise RsnetError(f"repeats ({len(repeats)}) and stage_widths ({len(stage_widths)}) must "
                         f"list one value per stage")
    reps = [check_width(n, f"repeats[{i}]") for i, n in enumerate(repeats)]
    widths = [check_width(w, f"stage_widths[{i}]", minimum=2) for i, w in enumerate(stage_widths)]
    for i, w in enumerate(widths):
        if w % 2:
            raise RsnetError(f"stage_widths[{i}]={w} must be even (a unit concatenates two "
                             f"halves of equal width)")
    if inner_widths is None:
        inner = [w // 2 for w, n in zip(widths, reps) for _ in range(n)]
    else:
        if len(inner_widths) != sum(reps):
            raise RsnetError(f"inner_widths must list one width per unit ({sum(reps)}), "
                             f"got {len(inner_widths)}")
        inner = [check_width(w, f"inner_widths[{i}]") for i, w in enumerate(inner_widths)]
    model = ShuffleNetV2(num_classes, stem_width, reps, widths, inner, last_width, stem_stride)
    init_weights(model)
    return model


def widths_kwargs(w: Mapping[str, int], baseline: nn.Module) -> dict:
    """The builder's width arguments for ``{layer name: width}`` (a plan's widths) and the
    baseline they scale (rsnet.models.widths.build_at_widths)."""
    stages = [(s, len(getattr(baseline, f"stage{s}"))) for s in range(2, baseline.num_stages + 2)]
    return {"stem_width": w["stem.conv"], "last_width": w["last.conv"],
            "stage_widths": [2 * w[f"stage{s}.0.branch2.pw2.conv"] for s, _ in stages],
            "inner_widths": [w[f"stage{s}.{i}.branch2.pw1.conv"] for s, n in stages
                             for i in range(n)]}


# The builder's own initialisation, for re-initialising a pruned network ("from scratch").
INIT = init_weights
