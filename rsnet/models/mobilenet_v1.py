"""MobileNet v1 (Howard et al. 2017) laid out as Keras ``applications.MobileNet`` builds it.

``features.0`` is the stem (3x3 conv stride 2, no bias -> BN -> ReLU6); ``features.1`` ..
``features.13`` are depthwise-separable blocks (``dw`` 3x3 depthwise -> ``dw_bn`` ->
``dw_act`` -> ``pw`` 1x1 -> ``pw_bn`` -> ``pw_act``, convs without bias); then global
average pooling and ``classifier`` (linear). At 1000 classes: 4,231,976 parameters and
about 569 M conv+linear MACs at 224 px (as in the paper).

Keras pads stride-2 convs on the right/bottom only; here every 3x3 conv uses PyTorch's
symmetric ``padding=1``, which gives the same output sizes (ceil(H / stride)). Keras's
dropout before the classifier is left out.

Small inputs: at 64 px the default stem works (maps 32, 16, 8, 4, 2). For inputs of 32 px
or less, ``stem_stride`` defaults to 1, so a 32 px input also ends at 2x2 instead of 1x1.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from rsnet.errors import RsnetError
from rsnet.models.layers import check_width, conv_bn_act, init_weights

__all__ = ["DEFAULT_BLOCKS", "DepthwiseSeparable", "MobileNetV1", "mobilenet_v1", "widths_kwargs", "INIT"]

#: [pointwise width, depthwise stride] for the 13 blocks of the standard MobileNet v1.
DEFAULT_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1),
    (1024, 2), (1024, 1),
)


class DepthwiseSeparable(nn.Sequential):
    """Depthwise 3x3 (stride s) + BN + ReLU6, then pointwise 1x1 + BN + ReLU6.

    ``(B, in_channels, H, W)`` -> ``(B, out_channels, ceil(H / s), ceil(W / s))``. The
    depthwise conv has no free width: it has as many channels as its input.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__(OrderedDict([
            ("dw", nn.Conv2d(in_channels, in_channels, 3, stride=stride, padding=1,
                             groups=in_channels, bias=False)),
            ("dw_bn", nn.BatchNorm2d(in_channels)),
            ("dw_act", nn.ReLU6()),
            ("pw", nn.Conv2d(in_channels, out_channels, 1, bias=False)),
            ("pw_bn", nn.BatchNorm2d(out_channels)),
            ("pw_act", nn.ReLU6()),
        ]))


class MobileNetV1(nn.Module):
    """``features`` -> global avg pool -> ``classifier``; ``(B, 3, H, W)`` -> ``(B, num_classes)``."""

    def __init__(
        self, num_classes: int, stem_width: int, blocks: Sequence[tuple[int, int]], stem_stride: int
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            conv_bn_act(3, stem_width, 3, stride=stem_stride, padding=1, act=nn.ReLU6)
        ]
        channels = stem_width
        for width, stride in blocks:
            layers.append(DepthwiseSeparable(channels, width, stride))
            channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def mobilenet_v1(
    num_classes: int = 1000,
    stem_width: int = 32,
    blocks: Sequence[Sequence[int]] | None = None,
    input_size: int = 224,
    stem_stride: int | None = None,
) -> nn.Module:
    """Build MobileNet v1.

    Args:
        num_classes: outputs of ``classifier``.
        stem_width: output channels of the stem conv.
        blocks: ``[pointwise_width, stride]`` per depthwise-separable block (any number of
            blocks, stride 1 or 2); default :data:`DEFAULT_BLOCKS` (13 blocks).
        input_size: expected input side in pixels; only picks the default ``stem_stride``.
        stem_stride: stem conv stride; default 2, or 1 when ``input_size <= 32``.
    """
    num_classes = check_width(num_classes, "num_classes")
    stem_width = check_width(stem_width, "stem_width")
    input_size = check_width(input_size, "input_size")
    spec = DEFAULT_BLOCKS if blocks is None else blocks
    if len(spec) == 0:
        raise RsnetError("blocks must list at least one [pointwise_width, stride] pair")
    parsed: list[tuple[int, int]] = []
    for i, entry in enumerate(spec):
        if isinstance(entry, (str, bytes)) or not hasattr(entry, "__len__") or len(entry) != 2:
            raise RsnetError(f"blocks[{i}] must be [pointwise_width, stride], got {entry!r}")
        width = check_width(entry[0], f"blocks[{i}][0] (pointwise width)")
        if entry[1] not in (1, 2) or isinstance(entry[1], bool):
            raise RsnetError(f"blocks[{i}][1] (stride) must be 1 or 2, got {entry[1]!r}")
        parsed.append((width, int(entry[1])))
    if stem_stride is None:
        stem_stride = 1 if input_size <= 32 else 2
    if stem_stride not in (1, 2):
        raise RsnetError(f"stem_stride must be 1 or 2, got {stem_stride!r}")
    model = MobileNetV1(num_classes, stem_width, parsed, stem_stride)
    init_weights(model)
    return model


def widths_kwargs(w: Mapping[str, int], baseline: nn.Module) -> dict:
    """The builder's width arguments for ``{layer name: width}`` (a plan's widths) and the
    baseline they scale (rsnet.models.widths.build_at_widths)."""
    blocks = [[w[f"features.{i}.pw"], baseline.features[i].dw.stride[0]]
              for i in range(1, len(baseline.features))]
    return {"stem_width": w["features.0.conv"], "blocks": blocks}


# The builder's own initialisation, for re-initialising a pruned network ("from scratch").
INIT = init_weights
