"""Channel shuffles as opaque layers, so torch-pruning can build a graph around them.

torch-pruning reads ShuffleNetV2's shuffle (``view(b, g, c // g, h, w)`` ->
``transpose(1, 2)`` -> ``view(b, c, h, w)``) as two reshapes, infers wrong channel counts
next to them (ZeroDivisionError, or wrong ``chunk`` offsets that crash every later group).
rsnet's plans for pruning keep every shuffled width fixed (``analyze(prunable=True)``), so
torch-pruning never needs to select channels through a shuffle: it only needs the graph.

:func:`shuffle_barrier_model` returns a torch.fx GraphModule of the model in which each
shuffle is one :class:`ShuffleBarrier` call. The GraphModule holds the model's own layer
objects, so pruning it prunes the model. :func:`shuffle_barrier_pruner` is the barrier's
torch-pruning pruner: input and output channels are separate (no coupling through it), and
it refuses to prune (a plan that asked would be a bug in the analysis).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.fx import GraphModule, Node
from torch.fx.passes.shape_prop import ShapeProp

from rsnet.graph.trace import trace

__all__ = ["ShuffleBarrier", "shuffle_barrier_model", "shuffle_barrier_pruner"]

_RESHAPES = {"view", "reshape"}
_TRANSPOSES = {"transpose", "swapaxes", "swapdims"}


class ShuffleBarrier(nn.Module):
    """Channel shuffle of ``groups`` groups: ``(B, C, H, W)`` -> ``(B, C, H, W)``."""

    def __init__(self, groups: int, channels: int) -> None:
        super().__init__()
        self.groups = int(groups)
        self.channels = int(channels)  # fixed: rsnet plans never prune through a shuffle

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        return x.reshape(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)


def _name(node: Node) -> str:
    return str(node.target) if node.op == "call_method" else getattr(node.target, "__name__", "")


def _shape(node: Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if hasattr(meta, "shape") else None


def _only_user(node: Node) -> Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _shuffle_end(start: Node) -> Node | None:
    """The last node of a view -> transpose(1, 2) -> [contiguous] -> view chain at ``start``."""
    if _name(start) not in _RESHAPES or not start.args or not isinstance(start.args[0], Node):
        return None
    i, o = _shape(start.args[0]), _shape(start)
    if i is None or o is None or len(i) != 4 or len(o) != 5 \
            or o[1] * o[2] != i[1] or o[3:] != i[2:]:
        return None
    t = _only_user(start)
    if t is None or _name(t) not in _TRANSPOSES or set(t.args[1:3]) != {1, 2}:
        return None
    end = _only_user(t)
    if end is not None and _name(end) == "contiguous":
        end = _only_user(end)
    if end is None or _name(end) not in _RESHAPES or _shape(end) != i:
        return None
    return end


def shuffle_barrier_model(model: nn.Module, x: torch.Tensor) -> GraphModule | None:
    """``model`` (eval-mode trace) with every channel shuffle one ShuffleBarrier; None if it has none.

    ``x``: one input batch, ``(B, 3, H, W)``, used for the shapes.
    """
    was_training = model.training
    model.eval()
    try:
        gm = trace(model)
        with torch.no_grad():
            ShapeProp(gm).propagate(x)
    finally:
        model.train(was_training)
    found = 0
    for node in list(gm.graph.nodes):
        shuffle = isinstance(node.target, str) and node.op == "call_module" and \
            isinstance(gm.get_submodule(node.target), nn.ChannelShuffle)
        end = node if shuffle else _shuffle_end(node) if node.op in ("call_method", "call_function") \
            else None
        if end is None:
            continue
        groups = gm.get_submodule(node.target).groups if shuffle else _shape(node)[1]
        name = f"rsnet_shuffle_{found}"
        gm.add_submodule(name, ShuffleBarrier(groups, _shape(end)[1]))
        with gm.graph.inserting_after(end):
            barrier = gm.graph.call_module(name, (node.args[0],))
        end.replace_all_uses_with(barrier)
        found += 1
    if not found:
        return None
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


def shuffle_barrier_pruner():
    """torch-pruning pruner for ShuffleBarrier: in and out separate, pruning refused."""
    from torch_pruning.pruner.function import BasePruningFunc

    class ShuffleBarrierPruner(BasePruningFunc):
        def prune_out_channels(self, layer: ShuffleBarrier, idxs: Sequence[int]) -> nn.Module:
            raise RuntimeError("rsnet asked to prune through a channel shuffle: a bug in the "
                               "width analysis (prunable=True fixes shuffled widths)")

        prune_in_channels = prune_out_channels

        def get_out_channels(self, layer: ShuffleBarrier) -> int:
            return layer.channels

        def get_in_channels(self, layer: ShuffleBarrier) -> int:
            return layer.channels

    return ShuffleBarrierPruner()
