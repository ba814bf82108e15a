"""He et al. (2016) CIFAR ResNets with option-A shortcuts, named like akamaster's checkpoints.

``resnet_cifar(depth)`` builds ResNet-``depth`` (depth = 6n + 2): a 3x3 conv stem, three
stages of n BasicBlocks (the first block of stages 2 and 3 has stride 2), global average
pooling and ``linear``. Module names match akamaster/pytorch_resnet_cifar10
(``conv1``, ``bn1``, ``layer1.0.conv1``, ..., ``linear``), so its checkpoints load with
``strict=True`` once the ``module.`` prefix is stripped. Option-A shortcuts have no
parameters. Inputs are ``(B, 3, 32, 32)`` CIFAR images; other sizes work as well.

Widths: ``stage_widths`` are the three residual-coupled widths (every block in a stage adds
into the same tensor); ``inner_widths`` (one per block) are the conv1 output widths inside
each block, the only widths free of that coupling. torch-pruning does not see the channel
offsets of the option-A pad; ``rsnet.compress`` swaps ``PadShortcut`` for a prunable index
shortcut, so stage widths prune too, and ``resnet_cifar(stage_widths=...)`` builds them directly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rsnet.errors import RsnetError
from rsnet.models.layers import check_width

__all__ = ["PadShortcut", "BasicBlock", "ResNetCifar", "resnet_cifar", "widths_kwargs", "INIT"]


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample spatially, then zero-pad the channel dimension.

    ``(B, C, H, W)`` -> ``(B, pad_left + C + pad_right, ceil(H / stride), ceil(W / stride))``.
    The pads are plain int attributes, so the module traces with torch.fx.
    """

    def __init__(self, pad_left: int, pad_right: int, stride: int) -> None:
        super().__init__()
        self.pad_left = pad_left
        self.pad_right = pad_right
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        # F.pad lists pads from the last dim backwards: (W_l, W_r, H_l, H_r, C_l, C_r).
        return F.pad(x[:, :, ::s, ::s], (0, 0, 0, 0, self.pad_left, self.pad_right))

    def extra_repr(self) -> str:
        return f"pad_left={self.pad_left}, pad_right={self.pad_right}, stride={self.stride}"


class BasicBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus shortcut, then ReLU.

    ``(B, in_planes, H, W)`` -> ``(B, planes, H / stride, W / stride)``; ``inner`` is the
    width of the first conv's output.
    """

    def __init__(self, in_planes: int, inner: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, inner, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module
        if stride != 1 or in_planes != planes:
            # Centre the input channels, as akamaster does (planes // 4 each side for 16->32).
            left = (planes - in_planes) // 2
            self.shortcut = PadShortcut(left, planes - in_planes - left, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """Stem, ``layer1..3`` and ``linear``; ``(B, 3, H, W)`` -> logits ``(B, num_classes)``."""

    def __init__(
        self, n: int, num_classes: int, stage_widths: Sequence[int], inner_widths: Sequence[int]
    ) -> None:
        super().__init__()
        w0 = stage_widths[0]
        self.conv1 = nn.Conv2d(3, w0, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w0)
        in_planes = w0
        for stage, planes in enumerate(stage_widths):
            blocks = []
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(in_planes, inner_widths[stage * n + i], planes, stride))
                in_planes = planes
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(torch.flatten(self.pool(x), 1))


def init_akamaster(model: nn.Module) -> None:
    # akamaster's init: He-normal (fan_in) for convs and the linear layer.
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)


def resnet_cifar(
    depth: int = 20,
    num_classes: int = 10,
    stage_widths: Sequence[int] = (16, 32, 64),
    inner_widths: Sequence[int] | None = None,
) -> nn.Module:
    """Build a CIFAR ResNet of ``depth`` = 6n + 2 layers (20, 32, 44, 56, 110, ...).

    Args:
        depth: total weighted layers; must be 6n + 2 with n >= 1.
        num_classes: outputs of ``linear``.
        stage_widths: channel widths of the three stages (stem uses the first). Option-A
            shortcuts can only pad, so each stage must be at least as wide as the previous.
        inner_widths: 3n conv1 output widths, block by block; default = the stage width.

    Returns a model mapping ``(B, 3, 32, 32)`` to logits ``(B, num_classes)``.
    ResNet-20: 269,722 parameters; ResNet-56: 853,018 (10 classes).
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise RsnetError(f"depth must be 6n+2 (20, 32, 44, 56, 110, ...), got {depth!r}")
    n = (depth - 2) // 6
    num_classes = check_width(num_classes, "num_classes")
    if len(stage_widths) != 3:
        raise RsnetError(f"stage_widths must have 3 entries, got {len(stage_widths)}")
    stages = [check_width(w, f"stage_widths[{i}]") for i, w in enumerate(stage_widths)]
    for i in (1, 2):
        if stages[i] < stages[i - 1]:
            raise RsnetError(
                f"stage_widths must not decrease (option-A shortcuts only zero-pad), got {stages}"
            )
    if inner_widths is None:
        inner = [w for w in stages for _ in range(n)]
    else:
        if len(inner_widths) != 3 * n:
            raise RsnetError(
                f"inner_widths must have 3n = {3 * n} entries for depth {depth}, "
                f"got {len(inner_widths)}"
            )
        inner = [check_width(w, f"inner_widths[{i}]") for i, w in enumerate(inner_widths)]
    model = ResNetCifar(n, num_classes, stages, inner)
    init_akamaster(model)
    return model


def widths_kwargs(w: Mapping[str, int], baseline: nn.Module) -> dict:
    """The builder's width arguments for ``{layer name: width}`` (a plan's widths) and the
    baseline they scale (rsnet.models.widths.build_at_widths)."""
    stages = [baseline.layer1, baseline.layer2, baseline.layer3]
    return {"stage_widths": [w["conv1"], w["layer2.0.conv2"], w["layer3.0.conv2"]],
            "inner_widths": [w[f"layer{s + 1}.{b}.conv1"] for s, stage in enumerate(stages)
                             for b in range(len(stage))]}


# The builder's own initialisation, for re-initialising a pruned network ("from scratch").
INIT = init_akamaster
