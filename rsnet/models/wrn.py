"""Wide residual networks for CIFAR: WRN-d-k (Zagoruyko & Komodakis, "Wide Residual Networks",
BMVC 2016), default WRN-40-2.

Layout (the authors' and xternalz/WideResNet-pytorch's): ``conv1`` 3x3 (3 -> 16), three
stages ``stage1..3`` of n = (d - 4) / 6 pre-activation blocks at widths 16k, 32k, 64k
(strides 1, 2, 2), then ``bn`` -> ReLU -> global average pooling -> ``classifier``. A block is
BN -> ReLU -> conv3x3 -> BN -> ReLU [-> dropout] -> conv3x3, plus the identity, or a 1x1
``shortcut`` conv of the pre-activated input where the width or the stride changes (the
first block of each stage, except stage 1 when 16k = 16). WRN-40-2: 2,243,546 parameters at
10 classes and 327.6 M MACs at 32 px (the paper's "2.2 M"); the seed's Greffe thesis
(references.md section 3) uses this network on CIFAR-10.

Widths: ``stage_widths`` are residual streams (every block of a stage adds into one tensor,
a coupled group); ``inner_widths`` (one per block: its first conv) are free.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rsnet.errors import RsnetError
from rsnet.models.layers import check_width, init_weights

__all__ = ["WideBlock", "WideResNet", "wide_resnet", "widths_kwargs", "INIT"]


class WideBlock(nn.Module):
    """Pre-activation basic block; ``(B, in_planes, H, W)`` -> ``(B, planes, H / s, W / s)``.

    ``shortcut`` is a 1x1 conv (stride s) of relu(bn1(x)) when ``projection``, else None (the
    identity of x: then in_planes must equal planes and the stride be 1).
    """

    def __init__(self, in_planes: int, inner: int, planes: int, stride: int, projection: bool,
                 dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, inner, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(inner)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(inner, planes, 3, padding=1, bias=False)
        self.shortcut = (nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
                         if projection else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.bn1(x))
        out = self.conv2(self.dropout(F.relu(self.bn2(self.conv1(a)))))
        return out + (self.shortcut(a) if self.shortcut is not None else x)


class WideResNet(nn.Module):
    """``conv1`` -> ``stage1..3`` -> ``bn`` -> ReLU -> pool -> ``classifier``."""

    def __init__(self, n: int, num_classes: int, stem_width: int, stage_widths: Sequence[int],
                 inner_widths: Sequence[int], projections: Sequence[bool], dropout: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem_width, 3, padding=1, bias=False)
        in_planes = stem_width
        for s, planes in enumerate(stage_widths):
            blocks = []
            for i in range(n):
                stride = 2 if s > 0 and i == 0 else 1
                projection = projections[s] if i == 0 else False
                blocks.append(WideBlock(in_planes, inner_widths[s * n + i], planes, stride,
                                        projection, dropout))
                in_planes = planes
            setattr(self, f"stage{s + 1}", nn.Sequential(*blocks))
        self.bn = nn.BatchNorm2d(in_planes)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(self.conv1(x))))
        return self.classifier(torch.flatten(self.pool(F.relu(self.bn(x))), 1))


def wide_resnet(
    depth: int = 40,
    widen_factor: int = 2,
    num_classes: int = 10,
    stem_width: int = 16,
    stage_widths: Sequence[int] | None = None,
    inner_widths: Sequence[int] | None = None,
    projections: Sequence[bool] | None = None,
    dropout: float = 0.0,
) -> nn.Module:
    """Build WRN-``depth``-``widen_factor`` for CIFAR.

    Args:
        depth: d = 6n + 4 (10, 16, 22, 28, 40, ...), n blocks per stage.
        widen_factor: k; the stage widths are 16k, 32k, 64k unless ``stage_widths`` says.
        num_classes: outputs of ``classifier``.
        stem_width: output channels of ``conv1`` (16).
        stage_widths: the three residual-stream widths.
        inner_widths: 3n widths of each block's first conv, block by block (default: the
            stage width).
        projections: per stage, whether its first block has a 1x1 conv shortcut (default:
            where the width or the stride changes, i.e. stages 2 and 3, and stage 1 unless
            its width equals ``stem_width``). A block without one adds its input as it is,
            so its stage must then be as wide as its input.
        dropout: dropout rate between a block's convs (0 in WRN-40-2 here; the paper also
            reports 0.3).
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
        raise RsnetError(f"depth must be 6n+4 (10, 16, 22, 28, 40, ...), got {depth!r}")
    n = (depth - 4) // 6
    num_classes = check_width(num_classes, "num_classes")
    widen_factor = check_width(widen_factor, "widen_factor")
    stem_width = check_width(stem_width, "stem_width")
    if stage_widths is None:
        stage_widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
    if len(stage_widths) != 3:
        raise RsnetError(f"stage_widths must have 3 entries, got {len(stage_widths)}")
    stages = [check_width(w, f"stage_widths[{i}]") for i, w in enumerate(stage_widths)]
    if inner_widths is None:
        inner = [w for w in stages for _ in range(n)]
    else:
        if len(inner_widths) != 3 * n:
            raise RsnetError(f"inner_widths must have 3n = {3 * n} entries for depth {depth}, "
                             f"got {len(inner_widths)}")
        inner = [check_width(w, f"inner_widths[{i}]") for i, w in enumerate(inner_widths)]
    if projections is None:
        projections = [stages[0] != stem_width, True, True]
    if len(projections) != 3 or not all(isinstance(p, bool) for p in projections):
        raise RsnetError(f"projections must be 3 booleans (one per stage), got {projections!r}")
    if not projections[1] or not projections[2]:
        raise RsnetError("projections: stages 2 and 3 start with a stride-2 block, which needs "
                         "a conv shortcut")
    if not projections[0] and stages[0] != stem_width:
        raise RsnetError(f"projections[0]=false adds the stem's output to stage 1, so "
                         f"stage_widths[0]={stages[0]} must equal stem_width={stem_width}")
    if not 0 <= dropout < 1:
        raise RsnetError(f"dropout must be in [0, 1), got {dropout!r}")
    model = WideResNet(n, num_classes, stem_width, stages, inner, list(projections), dropout)
    init_weights(model)
    return model


def widths_kwargs(w: Mapping[str, int], baseline: nn.Module) -> dict:
    """The builder's width arguments for ``{layer name: width}`` (a plan's widths) and the
    baseline they scale (rsnet.models.widths.build_at_widths)."""
    stages = [baseline.stage1, baseline.stage2, baseline.stage3]
    return {"stem_width": w["conv1"],
            "stage_widths": [w[f"stage{s + 1}.0.conv2"] for s in range(3)],
            "inner_widths": [w[f"stage{s + 1}.{b}.conv1"] for s, stage in enumerate(stages)
                             for b in range(len(stage))],
            "projections": [stage[0].shortcut is not None for stage in stages]}


# The builder's own initialisation, for re-initialising a pruned network ("from scratch").
INIT = init_weights
