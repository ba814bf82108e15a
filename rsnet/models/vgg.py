"""CIFAR VGG-16 with batch norm, as used by Li et al. (2017) and HRank (Lin et al. 2020).

``features``: 13 convs 3x3 pad 1 (with bias) each followed by BN and ReLU, named
``conv1`` .. ``conv13`` / ``bn1`` .. / ``relu1`` ..; 2x2 max-pools ``pool1`` .. ``pool5``
after convs 2, 4, 7, 10 and 13, so a 32 px input ends at 1x1. ``classifier``:
``linear1`` (last width -> fc_width) -> ``norm1`` (BatchNorm1d) -> ``relu1`` ->
``linear2`` (fc_width -> num_classes, the last nn.Linear). About 14.99 M parameters and
313 M conv+linear MACs at 10 classes and 32 px.

A global average pool sits before the classifier (the identity at 32 px) so larger inputs
also work.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from rsnet.errors import RsnetError
from rsnet.models.layers import check_width, init_weights

__all__ = ["DEFAULT_WIDTHS", "VGG", "vgg16", "widths_kwargs", "INIT"]

DEFAULT_WIDTHS: tuple[int, ...] = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
_POOL_AFTER = (2, 4, 7, 10, 13)  # 1-based conv indices followed by a max-pool


class VGG(nn.Module):
    """``(B, 3, 32, 32)`` -> logits ``(B, num_classes)``."""

    def __init__(self, widths: Sequence[int], fc_width: int, num_classes: int) -> None:
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels = 3
        for i, width in enumerate(widths, start=1):
            layers[f"conv{i}"] = nn.Conv2d(channels, width, 3, padding=1)
            layers[f"bn{i}"] = nn.BatchNorm2d(width)
            layers[f"relu{i}"] = nn.ReLU()
            if i in _POOL_AFTER:
                layers[f"pool{_POOL_AFTER.index(i) + 1}"] = nn.MaxPool2d(2, 2)
            channels = width
        self.features = nn.Sequential(layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(channels, fc_width)),
            ("norm1", nn.BatchNorm1d(fc_width)),
            ("relu1", nn.ReLU()),
            ("linear2", nn.Linear(fc_width, num_classes)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def vgg16(
    num_classes: int = 10, widths: Sequence[int] | None = None, fc_width: int = 512
) -> nn.Module:
    """Build the CIFAR VGG-16-BN.

    Args:
        num_classes: outputs of ``classifier.linear2``.
        widths: the 13 conv widths; default :data:`DEFAULT_WIDTHS`.
        fc_width: width of the hidden linear layer.
    """
    num_classes = check_width(num_classes, "num_classes")
    fc_width = check_width(fc_width, "fc_width")
    if widths is None:
        widths = DEFAULT_WIDTHS
    if len(widths) != len(DEFAULT_WIDTHS):
        raise RsnetError(f"widths must list {len(DEFAULT_WIDTHS)} conv widths, got {len(widths)}")
    ws = [check_width(w, f"widths[{i}]") for i, w in enumerate(widths)]
    model = VGG(ws, fc_width, num_classes)
    init_weights(model)
    return model


def widths_kwargs(w: Mapping[str, int], baseline: nn.Module) -> dict:
    """The builder's width arguments for ``{layer name: width}`` (a plan's widths) and the
    baseline they scale (rsnet.models.widths.build_at_widths)."""
    return {"widths": [w[f"features.conv{i}"] for i in range(1, 14)],
            "fc_width": w["classifier.linear1"]}


# The builder's own initialisation, for re-initialising a pruned network ("from scratch").
INIT = init_weights
