"""Gradually Updated Neural Networks (GUNN): the ``Gunn2D`` layer and GUNN-15 for CIFAR.

Qiao, Zhang, Shen, Wang and Yuille, "Gradually Updated Neural Networks for Large-Scale Image
Recognition", ICML 2018 (official code: joe-siyuan-qiao/GUNN, Lua Torch, ``GunnLayer`` and
``models/gunn-15.lua``; ../shared/docs/references.md section 4).

**Gunn2D.** The C input channels form K segments of c = C / K channels, x_1 .. x_K. They are
updated one after another, k = 1 .. K: the update of segment k reads the *current* tensor
z_k = cat(y_1 .. y_{k-1}, x_k .. x_K), in which the segments before k are already updated,
and adds to its own segment (a residual form)::

    y_k = x_k + S_k(z_k) + F_k(z_k)
    F_k = conv1x1(C -> e c) - BN - ReLU - conv3x3(e c -> e c) - BN - ReLU - conv1x1(e c -> c) - BN
    S_k = conv1x1(C -> c) - BN                    (the CIFAR models; ``shortcut=False`` drops it)

with the expansion e = 2, separate weights per segment, no conv bias and no ReLU after the
add; the output has the input's shape. The segments are kept in a Python list and the
concatenation is rebuilt at every step: no in-place write into a tensor autograd saved.

**GUNN-15 (CIFAR)**, as ``gunn-15.lua``: conv3x3(3 -> 64)-BN-ReLU, then three stages of
conv1x1 -> BN -> ReLU [-> avg-pool 2] -> Gunn2D at widths 240 / 300 / 360 with 20 / 25 / 30
segments (12 channels each), conv1x1(360 -> 360)-BN-ReLU, global average pooling (the
paper's 8x8 pool at 32 px) and the classifier: 1,585,746 parameters at 10 classes and
1,618,236 at 100 (references.md counts 1.586 M / 1.618 M; the official README says 1.6 M) and
555.7 M MACs at 32 px. Convs are He-normal (fan-out), as ResNet.

The Keras ``Gunn2D`` of the project's seed (../shared/docs/seeds/002) is not this layer: it
shares three convs across all steps, has no BN, reads ``Gunn2D(240, 20)`` as 20 *channels* per
step and ends in softmax hidden layers. rsnet follows the paper and its official code.

Widths: the stage widths cannot be pruned (the segment split and the in-place segment
updates couple C = K x c in a way width groups cannot express; ``rsnet.graph`` fixes them
and says why); the two inner widths of every F_k (``inner_widths``), the stem and the head
are free.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from rsnet.errors import RsnetError
from rsnet.models.layers import check_width, conv_bn_act, init_weights

__all__ = ["Gunn2D", "GunnCifar", "gunn_cifar", "widths_kwargs", "INIT"]


class Gunn2D(nn.Module):
    """Sequential, residual update of ``segments`` channel segments (module docstring).

    Args:
        channels: C, input and output channels.
        segments: K; must divide ``channels``.
        expansion: e, the bottleneck's widths are e x (C / K) unless ``inner_widths`` says.
        shortcut: add S_k = conv1x1 -> BN of z_k (the paper's CIFAR models).
        inner_widths: one ``[a, b]`` pair per segment, the output widths of F_k's 1x1 and
            3x3 convs (default ``[e c, e c]``).

    Children: ``updates.{k}`` (``a``, ``b``: conv-BN-ReLU; ``c``: conv-BN), ``shortcuts.{k}``
    (conv-BN). Shapes: ``(B, C, H, W)`` -> ``(B, C, H, W)``.
    """

    def __init__(self, channels: int, segments: int, expansion: int = 2, shortcut: bool = True,
                 inner_widths: Sequence[Sequence[int]] | None = None) -> None:
        super().__init__()
        channels = check_width(channels, "Gunn2D channels")
        segments = check_width(segments, "Gunn2D segments")
        expansion = check_width(expansion, "expansion")
        if channels % segments:
            raise RsnetError(f"Gunn2D: {channels} channels cannot form {segments} equal segments "
                             f"(segments must divide the stage width)")
        c = channels // segments
        if inner_widths is None:
            inner_widths = [[expansion * c, expansion * c]] * segments
        if len(inner_widths) != segments:
            raise RsnetError(f"Gunn2D: inner_widths has {len(inner_widths)} pairs for "
                             f"{segments} segments")
        self.channels, self.num_segments, self.segment_width = channels, segments, c
        updates, shortcuts = [], []
        for k, pair in enumerate(inner_widths):
            if isinstance(pair, (str, bytes)) or not hasattr(pair, "__len__") or len(pair) != 2:
                raise RsnetError(f"inner_widths[{k}] must be [a, b] (the widths of F_k's 1x1 "
                                 f"and 3x3 convs), got {pair!r}")
            a = check_width(pair[0], f"inner_widths[{k}][0]")
            b = check_width(pair[1], f"inner_widths[{k}][1]")
            updates.append(nn.Sequential(OrderedDict([
                ("a", conv_bn_act(channels, a, 1)),
                ("b", conv_bn_act(a, b, 3, padding=1)),
                ("c", conv_bn_act(b, c, 1, act=None)),
            ])))
            if shortcut:
                shortcuts.append(conv_bn_act(channels, c, 1, act=None))
        self.updates = nn.ModuleList(updates)
        self.shortcuts = nn.ModuleList(shortcuts) if shortcut else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, self.segment_width, dim=1)
        segments = [parts[k] for k in range(self.num_segments)]  # indexed: torch.fx traces it
        for k in range(self.num_segments):
            z = torch.cat(segments, dim=1)  # segments < k are already updated
            update = self.updates[k](z)
            if self.shortcuts is not None:
                update = self.shortcuts[k](z) + update
            segments[k] = segments[k] + update
        return torch.cat(segments, dim=1)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, segments={self.num_segments}"


class GunnCifar(nn.Module):
    """``stem`` -> ``stage1..3`` (``transition`` [, ``pool``], ``gunn``) -> ``head`` -> pool ->
    ``classifier``; ``(B, 3, H, W)`` -> ``(B, num_classes)``."""

    def __init__(self, num_classes: int, stem_width: int, widths: Sequence[int],
                 segments: Sequence[int], head_width: int, expansion: int, shortcut: bool,
                 inner_widths: Sequence[Sequence[Sequence[int]] | None]) -> None:
        super().__init__()
        self.stem = conv_bn_act(3, stem_width, 3, padding=1)
        channels = stem_width
        for i, (width, k) in enumerate(zip(widths, segments)):
            layers: OrderedDict[str, nn.Module] = OrderedDict()
            layers["transition"] = conv_bn_act(channels, width, 1)
            if i > 0:
                layers["pool"] = nn.AvgPool2d(2)
            layers["gunn"] = Gunn2D(width, k, expansion, shortcut, inner_widths[i])
            setattr(self, f"stage{i + 1}", nn.Sequential(layers))
            channels = width
        self.num_stages = len(widths)
        self.head = conv_bn_act(channels, head_width, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(head_width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for i in range(self.num_stages):
            x = getattr(self, f"stage{i + 1}")(x)
        return self.classifier(torch.flatten(self.pool(self.head(x)), 1))


def gunn_cifar(
    num_classes: int = 10,
    stem_width: int = 64,
    widths: Sequence[int] = (240, 300, 360),
    segments: Sequence[int] = (20, 25, 30),
    head_width: int = 360,
    expansion: int = 2,
    shortcut: bool = True,
    inner_widths: Sequence[Sequence[int]] | None = None,
) -> nn.Module:
    """Build a CIFAR GUNN; the defaults are GUNN-15 (Qiao et al. 2018, ``gunn-15.lua``).

    Args:
        num_classes: outputs of ``classifier``.
        stem_width: output channels of the 3x3 stem conv.
        widths: channels of each stage's Gunn2D layer (any number of stages; stages after
            the first start with a 2x2 average pool).
        segments: segments K per stage; each must divide its width.
        head_width: output channels of the last 1x1 conv.
        expansion: e of the update bottlenecks (2 in the paper).
        shortcut: the S_k conv shortcut of the CIFAR models.
        inner_widths: ``[a, b]`` per segment over all stages in order (sum(segments) pairs),
            the widths of each update's 1x1 and 3x3 convs; default ``[e c, e c]``.

    Returns a model mapping ``(B, 3, 32, 32)`` to logits ``(B, num_classes)``.
    """
    num_classes = check_width(num_classes, "num_classes")
    stem_width = check_width(stem_width, "stem_width")
    head_width = check_width(head_width, "head_width")
    if len(widths) == 0 or len(widths) != len(segments):
        raise RsnetError(f"widths ({len(widths)} entries) and segments ({len(segments)}) must "
                         f"list one value per stage")
    ws = [check_width(w, f"widths[{i}]") for i, w in enumerate(widths)]
    ks = [check_width(k, f"segments[{i}]") for i, k in enumerate(segments)]
    for i, (w, k) in enumerate(zip(ws, ks)):
        if w % k:
            raise RsnetError(f"widths[{i}]={w} is not divisible by segments[{i}]={k}: a Gunn2D "
                             f"layer splits its channels into equal segments")
    per_stage: list[Sequence[Sequence[int]] | None] = [None] * len(ws)
    if inner_widths is not None:
        if len(inner_widths) != sum(ks):
            raise RsnetError(f"inner_widths must list one [a, b] pair per segment "
                             f"({sum(ks)} for segments={ks}), got {len(inner_widths)}")
        start = 0
        for i, k in enumerate(ks):
            per_stage[i] = list(inner_widths[start:start + k])
            start += k
    model = GunnCifar(num_classes, stem_width, ws, ks, head_width, expansion, bool(shortcut),
                      per_stage)
    init_weights(model)
    return model


def widths_kwargs(w: Mapping[str, int], baseline: nn.Module) -> dict:
    """The builder's width arguments for ``{layer name: width}`` (a plan's widths) and the
    baseline they scale (rsnet.models.widths.build_at_widths)."""
    stages = range(1, baseline.num_stages + 1)
    return {"stem_width": w["stem.conv"], "head_width": w["head.conv"],
            "widths": [w[f"stage{s}.transition.conv"] for s in stages],
            "inner_widths": [[w[f"stage{s}.gunn.updates.{k}.{c}.conv"] for c in "ab"]
                             for s in stages
                             for k in range(getattr(baseline, f"stage{s}").gunn.num_segments)]}


# The builder's own initialisation, for re-initialising a pruned network ("from scratch").
INIT = init_weights
