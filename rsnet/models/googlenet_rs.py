"""GoogLeNet as the resource-scalable-CNN thesis built it (method.md sections 4 and 9).

Layout (spatial sizes for a 227 px input; for 64 px: 32, 16, 16, 7, 4, 2)::

    conv1 7x7/2 'same'            114    -> maxpool 3x3/2 'same'   57
    conv2_reduce 1x1, conv2 3x3    57    -> maxpool 3x3/2 'valid'  28
    inception 3a, 3b               28    -> maxpool 3x3/2 'same'   14
    inception 4a .. 4e             14    -> maxpool 3x3/2 'same'    7
    inception 5a, 5b                7    -> global avg pool -> ``classifier`` linear

Every conv is conv (with bias) -> BN -> ReLU; in the stem and in module 3a it is
conv -> ReLU -> BN -> ReLU, as in the thesis code. ``bn_scale=False`` uses
:class:`ShiftBatchNorm2d` (shift only, the thesis's Keras ``scale=False`` and its parameter
counts); ``bn_scale=True`` uses a standard ``nn.BatchNorm2d``. No LRN, no dropout.

Keras 'same' pooling pads asymmetrically (right/bottom only) for even inputs; here the
pools use PyTorch's symmetric ``padding=1`` (floor mode), which gives the same output
sizes (ceil(H / 2)) but can shift windows by one pixel. Irrelevant unless Keras weights
are imported.

Small inputs: the default stem (stride 2) handles 64 px (about 121 M MACs at the baseline
widths). For inputs of 32 px or less, ``stem_stride`` defaults to 1: conv1 then keeps the
full resolution, so a 32 px input follows the same 32, 16, 16, 7, 4, 2 path as a 64 px one.

An optional auxiliary head after 4b (``aux_head=True``; avgpool 5/3, 1x1 conv 128, FC 1024,
dropout 0.4, FC num_classes) makes training-mode forward return ``(logits, aux_logits)``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from rsnet.errors import RsnetError
from rsnet.models.layers import check_width, conv_bn_act, init_weights

__all__ = ["BASELINE_WIDTHS", "INCEPTION_KEYS", "Inception", "AuxHead", "GoogLeNetRS", "googlenet_rs", "widths_kwargs", "INIT"]

#: Order of the six widths of an inception module (the thesis's order).
INCEPTION_KEYS = ("conv1x1", "reduce3x3", "reduce5x5", "conv3x3", "conv5x5", "pool_proj")

#: Baseline (ImageNet) widths, method.md section 4.
BASELINE_WIDTHS: dict[str, int | list[int]] = {
    "conv1": 64, "conv2_reduce": 64, "conv2": 192,
    "inception3a": [64, 96, 16, 128, 32, 32],
    "inception3b": [128, 128, 32, 192, 96, 64],
    "inception4a": [192, 96, 16, 208, 48, 64],
    "inception4b": [160, 112, 24, 224, 64, 64],
    "inception4c": [128, 128, 24, 256, 64, 64],
    "inception4d": [112, 144, 32, 288, 64, 64],
    "inception4e": [256, 160, 32, 320, 128, 128],
    "inception5a": [256, 160, 32, 320, 128, 128],
    "inception5b": [384, 192, 48, 384, 128, 128],
}

_STAGES = (("3a", "3b"), ("4a", "4b", "4c", "4d", "4e"), ("5a", "5b"))


class Inception(nn.Module):
    """Four parallel branches concatenated along channels.

    ``(B, in_channels, H, W)`` -> ``(B, conv1x1 + conv3x3 + conv5x5 + pool_proj, H, W)``,
    branches in that order: 1x1; 1x1 reduce -> 3x3; 1x1 reduce -> 5x5; maxpool 3x3/1 -> 1x1.
    ``widths`` follows :data:`INCEPTION_KEYS`.
    """

    def __init__(self, in_channels: int, widths: list[int], norm: str, pre_act: bool) -> None:
        super().__init__()
        w = dict(zip(INCEPTION_KEYS, widths))
        kw = dict(bias=True, norm=norm, pre_act=pre_act)
        self.conv1x1 = conv_bn_act(in_channels, w["conv1x1"], 1, **kw)
        self.reduce3x3 = conv_bn_act(in_channels, w["reduce3x3"], 1, **kw)
        self.conv3x3 = conv_bn_act(w["reduce3x3"], w["conv3x3"], 3, padding=1, **kw)
        self.reduce5x5 = conv_bn_act(in_channels, w["reduce5x5"], 1, **kw)
        self.conv5x5 = conv_bn_act(w["reduce5x5"], w["conv5x5"], 5, padding=2, **kw)
        self.pool = nn.MaxPool2d(3, stride=1, padding=1)
        self.pool_proj = conv_bn_act(in_channels, w["pool_proj"], 1, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.conv1x1(x),
                self.conv3x3(self.reduce3x3(x)),
                self.conv5x5(self.reduce5x5(x)),
                self.pool_proj(self.pool(x)),
            ],
            dim=1,
        )


class AuxHead(nn.Module):
    """Auxiliary classifier: ``(B, C, H, W)`` -> ``(B, num_classes)``.

    avgpool 5/3 (or adaptive to 4x4 when H < 5) -> 1x1 conv 128 + ReLU -> FC 1024 + ReLU ->
    dropout 0.4 -> FC. Either pool gives a 4x4 map for the thesis input sizes.
    """

    def __init__(self, in_channels: int, num_classes: int, map_size: int) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(5, stride=3) if map_size >= 5 else nn.AdaptiveAvgPool2d(4)
        pooled = (map_size - 5) // 3 + 1 if map_size >= 5 else 4
        self.conv = nn.Conv2d(in_channels, 128, 1)
        self.relu = nn.ReLU()
        self.fc1 = nn.Linear(128 * pooled * pooled, 1024)
        self.relu_fc = nn.ReLU()
        self.dropout = nn.Dropout(0.4)
        self.fc2 = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv(self.pool(x)))
        x = self.relu_fc(self.fc1(torch.flatten(x, 1)))
        return self.fc2(self.dropout(x))


class GoogLeNetRS(nn.Module):
    """The thesis GoogLeNet; ``(B, 3, H, W)`` -> logits ``(B, num_classes)``.

    In training mode with an aux head, returns ``(logits, aux_logits)`` instead.
    """

    def __init__(
        self, num_classes: int, widths: Mapping[str, int | list[int]], stem_stride: int,
        norm: str, aux_map_size: int | None,
    ) -> None:
        super().__init__()
        stem = dict(bias=True, norm=norm, pre_act=True)
        self.conv1 = conv_bn_act(3, widths["conv1"], 7, stride=stem_stride, padding=3, **stem)
        self.pool1 = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv2_reduce = conv_bn_act(widths["conv1"], widths["conv2_reduce"], 1, **stem)
        self.conv2 = conv_bn_act(widths["conv2_reduce"], widths["conv2"], 3, padding=1, **stem)
        self.pool2 = nn.MaxPool2d(3, stride=2)  # 'valid'
        channels = widths["conv2"]
        for i, stage in enumerate(_STAGES):
            if i > 0:
                self.add_module(f"pool{i + 2}", nn.MaxPool2d(3, stride=2, padding=1))
            for name in stage:
                w = list(widths[f"inception{name}"])
                self.add_module(f"inception{name}", Inception(channels, w, norm, name == "3a"))
                channels = w[0] + w[3] + w[4] + w[5]
                if name == "4b" and aux_map_size is not None:
                    self.aux = AuxHead(channels, num_classes, aux_map_size)
        self.has_aux = aux_map_size is not None
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = self.pool2(self.conv2(self.conv2_reduce(self.pool1(self.conv1(x)))))
        x = self.inception3b(self.inception3a(x))
        x = self.inception4b(self.inception4a(self.pool3(x)))
        # The aux head only matters for training; ``self.training`` is a Python bool, so
        # fx bakes the mode in at trace time.
        aux = self.aux(x) if self.has_aux and self.training else None
        x = self.inception4e(self.inception4d(self.inception4c(x)))
        x = self.inception5b(self.inception5a(self.pool4(x)))
        logits = self.classifier(torch.flatten(self.avgpool(x), 1))
        if aux is not None:
            return logits, aux
        return logits


def _stem_sizes(input_size: int, stem_stride: int) -> tuple[int, int]:
    """Spatial size after pool2 (input of 3a) and after pool3 (the 4b map)."""
    s = (input_size - 1) // stem_stride + 1  # conv1, 'same'
    s = (s - 1) // 2 + 1  # pool1, 'same'
    s = (s - 3) // 2 + 1 if s >= 3 else 0  # pool2, 'valid'
    return s, (s - 1) // 2 + 1 if s >= 1 else 0


def _merge_widths(widths: Mapping[str, object] | None) -> dict[str, int | list[int]]:
    merged: dict[str, int | list[int]] = {
        k: (list(v) if isinstance(v, list) else v) for k, v in BASELINE_WIDTHS.items()
    }
    for key, value in (widths or {}).items():
        if key not in BASELINE_WIDTHS:
            raise RsnetError(
                f"widths has unknown key {key!r}; valid keys: {', '.join(BASELINE_WIDTHS)}"
            )
        if key.startswith("inception"):
            if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 6:
                raise RsnetError(
                    f"widths[{key!r}] must list 6 widths ({', '.join(INCEPTION_KEYS)}), "
                    f"got {value!r}"
                )
            merged[key] = [check_width(v, f"widths[{key!r}][{j}]") for j, v in enumerate(value)]
        else:
            merged[key] = check_width(value, f"widths[{key!r}]")
    return merged


def googlenet_rs(
    num_classes: int = 1000,
    widths: Mapping[str, int | list[int]] | None = None,
    input_size: int = 227,
    stem_stride: int | None = None,
    bn_scale: bool = True,
    aux_head: bool = False,
) -> nn.Module:
    """Build the thesis GoogLeNet.

    Args:
        num_classes: outputs of ``classifier`` (and of the aux head).
        widths: overrides of :data:`BASELINE_WIDTHS`: ``conv1``, ``conv2_reduce``, ``conv2``
            (ints) and ``inception3a`` .. ``inception5b`` (six ints, order
            :data:`INCEPTION_KEYS`). Keys not given keep the baseline width.
        input_size: expected input side in pixels; picks the default ``stem_stride`` and
            the aux head's pooling. The model itself accepts any size that is large enough.
        stem_stride: conv1 stride; default 2, or 1 when ``input_size <= 32``.
        bn_scale: True: nn.BatchNorm2d; False: ShiftBatchNorm2d (the thesis's BN).
        aux_head: add the auxiliary classifier after 4b (training-mode output becomes a tuple).

    The thesis's N = 5 example (method.md section 4, ``bn_scale=False``) has 331,732
    parameters and about 92.7 M conv+linear MACs at 227 px.
    """
    num_classes = check_width(num_classes, "num_classes")
    merged = _merge_widths(widths)
    input_size = check_width(input_size, "input_size")
    if stem_stride is None:
        stem_stride = 1 if input_size <= 32 else 2
    if stem_stride not in (1, 2):
        raise RsnetError(f"stem_stride must be 1 or 2, got {stem_stride!r}")
    after_pool2, map_4b = _stem_sizes(input_size, stem_stride)
    if after_pool2 < 1:
        raise RsnetError(f"input_size {input_size} is too small for stem_stride {stem_stride}")
    model = GoogLeNetRS(
        num_classes, merged, stem_stride, "bn" if bn_scale else "shift",
        map_4b if aux_head else None,
    )
    init_weights(model)
    return model


def widths_kwargs(w: Mapping[str, int], baseline: nn.Module) -> dict:
    """The builder's width arguments for ``{layer name: width}`` (a plan's widths) and the
    baseline they scale (rsnet.models.widths.build_at_widths)."""
    widths = {k: w[f"{k}.conv"] for k in ("conv1", "conv2_reduce", "conv2")}
    for key in BASELINE_WIDTHS:
        if key.startswith("inception"):
            widths[key] = [w[f"{key}.{b}.conv"] for b in INCEPTION_KEYS]
    return {"widths": widths}


# The builder's own initialisation, for re-initialising a pruned network ("from scratch").
INIT = init_weights
