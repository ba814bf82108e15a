"""Small building blocks shared by the model builders.

Everything here is traceable by ``torch.fx.symbolic_trace`` and reads channel counts only
from module attributes, so a model whose widths are pruned later still runs.
"""

from __future__ import annotations

import numbers
from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rsnet.errors import RsnetError

__all__ = [
    "ShiftBatchNorm2d", "conv_bn_act", "check_width", "init_weights", "torch_pruning_pruners",
]


class ShiftBatchNorm2d(nn.BatchNorm2d):
    """Batch norm with a learnable shift but no scale (Keras ``BatchNormalization(scale=False)``).

    The thesis GoogLeNet used this BN, and its parameter counts include only the shift.
    Built as ``nn.BatchNorm2d(affine=False)`` plus a ``bias`` parameter, so state-dict keys
    are ``bias``, ``running_mean``, ``running_var`` and ``num_batches_tracked`` and
    ``isinstance(m, nn.BatchNorm2d)`` holds. ``weight`` stays ``None``.

    Note for pruning: because ``affine`` is False, torch-pruning's stock BatchNorm pruner
    shrinks the running statistics but not ``bias`` (the model then fails at its next
    forward); pass :func:`torch_pruning_pruners` as ``customized_pruners``.

    Shapes: input and output ``(B, num_features, H, W)``.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__(
            num_features, eps=eps, momentum=momentum, affine=False,
            track_running_stats=track_running_stats,
        )
        # Registered after the parent set ``bias = None``, so it becomes a real Parameter.
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Same logic as nn.BatchNorm2d.forward, minus its input-rank check: that check is a
        # Python ``if`` on ``x.dim()``, which torch.fx cannot trace through. In an fx graph
        # traced in training mode the counter update below runs once, at trace time; it only
        # matters for momentum=None (cumulative average), which such a graph bakes in.
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        keep_stats = not self.training or self.track_running_stats
        return F.batch_norm(
            x,
            self.running_mean if keep_stats else None,
            self.running_var if keep_stats else None,
            None,
            self.bias,
            use_batch_stats,
            factor,
            self.eps,
        )


def check_width(value: Any, name: str, minimum: int = 1) -> int:
    """Return ``value`` as an int, or raise RsnetError naming ``name`` if it is not a valid width.

    Accepts Python and numpy integers (not bools, not floats: a width must be whole).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise RsnetError(f"{name} must be an integer width, got {value!r}")
    if int(value) < minimum:
        raise RsnetError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def conv_bn_act(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    padding: int = 0,
    *,
    groups: int = 1,
    bias: bool = False,
    norm: str = "bn",
    act: type[nn.Module] | None = nn.ReLU,
    pre_act: bool = False,
) -> nn.Sequential:
    """Conv -> [act] -> BN -> act as an ``nn.Sequential`` with children named by role.

    Children: ``conv``, ``pre_act`` (only if ``pre_act``), ``bn``, ``act`` (left out when
    ``act`` is None: conv -> BN, e.g. a linear bottleneck's projection).
    ``norm`` is ``"bn"`` (nn.BatchNorm2d with scale and shift) or ``"shift"``
    (ShiftBatchNorm2d, shift only). Shapes: ``(B, in_channels, H, W)`` ->
    ``(B, out_channels, H', W')`` with the usual conv arithmetic.
    """
    if norm not in ("bn", "shift"):
        raise RsnetError(f"norm must be 'bn' or 'shift', got {norm!r}")
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    layers["conv"] = nn.Conv2d(
        in_channels, out_channels, kernel_size, stride=stride, padding=padding,
        groups=groups, bias=bias,
    )
    if pre_act:
        if act is None:
            raise RsnetError("conv_bn_act: pre_act=True needs an activation (act)")
        layers["pre_act"] = act()
    layers["bn"] = nn.BatchNorm2d(out_channels) if norm == "bn" else ShiftBatchNorm2d(out_channels)
    if act is not None:
        layers["act"] = act()
    return nn.Sequential(layers)


def init_weights(model: nn.Module) -> None:
    """He-normal convs (fan_out), N(0, 0.01) linears, zero biases, BN scale 1 and shift 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def torch_pruning_pruners() -> dict[type[nn.Module], Any]:
    """torch-pruning ``customized_pruners`` for the layers defined here.

    Use as ``tp.DependencyGraph().build_dependency(model, x,
    customized_pruners=torch_pruning_pruners())`` (or the same argument of a tp pruner).
    torch-pruning is imported lazily so that building models does not need it.
    """
    from torch_pruning.pruner.function import BatchnormPruner

    class ShiftBatchNormPruner(BatchnormPruner):
        """BatchnormPruner that also prunes the shift of a ShiftBatchNorm2d."""

        def prune_out_channels(self, layer: nn.Module, idxs: Any) -> nn.Module:
            keep = sorted(set(range(layer.num_features)) - set(idxs))
            super().prune_out_channels(layer, idxs)  # num_features and running stats
            layer.bias = self._prune_parameter_and_grad(layer.bias, keep, 0)
            return layer

        prune_in_channels = prune_out_channels

    return {ShiftBatchNorm2d: ShiftBatchNormPruner()}
