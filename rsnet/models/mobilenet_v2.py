"""MobileNetV2 for CIFAR (Sandler, Howard, Zhu, Zhmoginov & Chen, "MobileNetV2: Inverted
Residuals and Linear Bottlenecks", CVPR 2018).

Layout as the paper's Table 2 and torchvision: ``features.0`` stem 3x3 conv (32) -> BN ->
ReLU6; one inverted-residual block per row repeat of the setting [t, c, n, s] (expansion t,
output width c, n blocks, the first with stride s); ``features.{last}`` 1x1 conv (1280) ->
BN -> ReLU6; global average pooling; ``classifier``. A block is [``expand`` 1x1 -> BN ->
ReLU6 when t > 1] -> ``dw`` 3x3 depthwise (stride s) -> BN -> ReLU6 -> ``project`` 1x1 ->
BN (linear bottleneck), plus its input when stride 1 and as wide (every block after the
first of a row).

CIFAR (32 px), as is standard (e.g. kuangliu/pytorch-cifar): the stem and the second row
(24 channels) run at stride 1 instead of 2, so a 32 px input ends at 4x4. Dropout before the
classifier and kuangliu's 1x1 conv shortcuts are left out (the paper has neither on CIFAR).
2,236,682 parameters at 10 classes (as torchvision's) and 88.0 M MACs at 32 px.

Widths: each block's ``expand`` width is free (its depthwise conv follows it); the output
widths of a row's blocks form one residual stream (a coupled group) from the second block on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from rsnet.errors import RsnetError
from rsnet.models.layers import check_width, conv_bn_act, init_weights

__all__ = ["CIFAR_SETTING", "InvertedResidual", "MobileNetV2", "mobilenet_v2", "widths_kwargs", "INIT"]

#: [expansion t, width c, blocks n, first stride s] per row; rows 1 and 2 at stride 1 for 32 px.
CIFAR_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """``(B, in_channels, H, W)`` -> ``(B, out_channels, H / stride, W / stride)``.

    ``hidden`` is the expand width (None: no expand conv, the depthwise conv reads the input).
    ``residual`` adds the input (stride 1, equal widths).
    """

    def __init__(self, in_channels: int, hidden: int | None, out_channels: int, stride: int,
                 residual: bool) -> None:
        super().__init__()
        self.expand = conv_bn_act(in_channels, hidden, 1, act=nn.ReLU6) if hidden else None
        width = hidden or in_channels
        self.dw = conv_bn_act(width, width, 3, stride=stride, padding=1, groups=width,
                              act=nn.ReLU6)
        self.project = conv_bn_act(width, out_channels, 1, act=None)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.expand(x) if self.expand is not None else x
        out = self.project(self.dw(out))
        return x + out if self.residual else out


class MobileNetV2(nn.Module):
    """``features`` -> global average pool -> ``classifier``."""

    def __init__(self, num_classes: int, stem_width: int, blocks: Sequence[tuple],
                 last_width: int, stem_stride: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn_act(3, stem_width, 3, stride=stem_stride, padding=1,
                                               act=nn.ReLU6)]
        channels = stem_width
        for hidden, width, stride, residual in blocks:
            layers.append(InvertedResidual(channels, hidden, width, stride, residual))
            channels = width
        layers.append(conv_bn_act(channels, last_width, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last_width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def mobilenet_v2(
    num_classes: int = 10,
    stem_width: int = 32,
    setting: Sequence[Sequence[int]] | None = None,
    hidden_widths: Sequence[int] | None = None,
    out_widths: Sequence[int] | None = None,
    last_width: int = 1280,
    stem_stride: int = 1,
) -> nn.Module:
    """Build MobileNetV2 (CIFAR strides by default).

    Args:
        num_classes: outputs of ``classifier``.
        stem_width: output channels of the stem conv.
        setting: rows [t, c, n, s] (default :data:`CIFAR_SETTING`; the ImageNet setting has
            s = 2 in the second row and ``stem_stride=2``).
        hidden_widths: expand widths of the blocks with t > 1, in order (default: t x the
            block's input width).
        out_widths: output width of every block (default: its row's c). Blocks after the
            first of a row add their input, so they must equal the previous block's width.
        last_width: output channels of the last 1x1 conv.
        stem_stride: 1 for CIFAR, 2 for ImageNet-size inputs.
    """
    num_classes = check_width(num_classes, "num_classes")
    stem_width = check_width(stem_width, "stem_width")
    last_width = check_width(last_width, "last_width")
    if stem_stride not in (1, 2) or isinstance(stem_stride, bool):
        raise RsnetError(f"stem_stride must be 1 or 2, got {stem_stride!r}")
    rows = CIFAR_SETTING if setting is None else setting
    layout = []  # (expands, default width, stride, residual) per block
    for r, row in enumerate(rows):
        if isinstance(row, (str, bytes)) or not hasattr(row, "__len__") or len(row) != 4:
            raise RsnetError(f"setting[{r}] must be [t, c, n, s], got {row!r}")
        t = check_width(row[0], f"setting[{r}][0] (expansion t)")
        c = check_width(row[1], f"setting[{r}][1] (width c)")
        n = check_width(row[2], f"setting[{r}][2] (blocks n)")
        if row[3] not in (1, 2) or isinstance(row[3], bool):
            raise RsnetError(f"setting[{r}][3] (stride s) must be 1 or 2, got {row[3]!r}")
        layout += [(t, c, int(row[3]) if i == 0 else 1, i > 0) for i in range(n)]
    if not layout:
        raise RsnetError("setting must list at least one row [t, c, n, s]")
    if out_widths is None:
        outs = [c for _, c, _, _ in layout]
    else:
        if len(out_widths) != len(layout):
            raise RsnetError(f"out_widths must list one width per block ({len(layout)}), "
                             f"got {len(out_widths)}")
        outs = [check_width(w, f"out_widths[{i}]") for i, w in enumerate(out_widths)]
    n_expand = sum(t > 1 for t, _, _, _ in layout)
    if hidden_widths is not None and len(hidden_widths) != n_expand:
        raise RsnetError(f"hidden_widths must list one width per block with t > 1 ({n_expand}), "
                         f"got {len(hidden_widths)}")
    blocks, channels, e = [], stem_width, 0
    for i, ((t, _, stride, residual), width) in enumerate(zip(layout, outs)):
        hidden = None
        if t > 1:
            hidden = t * channels if hidden_widths is None else \
                check_width(hidden_widths[e], f"hidden_widths[{e}]")
            e += 1
        if residual and width != channels:
            raise RsnetError(f"out_widths[{i}]={width}: the block adds its input "
                             f"({channels} channels), so both widths must be equal")
        blocks.append((hidden, width, stride, residual))
        channels = width
    model = MobileNetV2(num_classes, stem_width, blocks, last_width, stem_stride)
    init_weights(model)
    return model


def widths_kwargs(w: Mapping[str, int], baseline: nn.Module) -> dict:
    """The builder's width arguments for ``{layer name: width}`` (a plan's widths) and the
    baseline they scale (rsnet.models.widths.build_at_widths)."""
    blocks = range(1, len(baseline.features) - 1)
    return {"stem_width": w["features.0.conv"],
            "hidden_widths": [w[f"features.{i}.expand.conv"] for i in blocks
                              if baseline.features[i].expand is not None],
            "out_widths": [w[f"features.{i}.project.conv"] for i in blocks],
            "last_width": w[f"features.{len(baseline.features) - 1}.conv"]}


# The builder's own initialisation, for re-initialising a pruned network ("from scratch").
INIT = init_weights
