"""Feature maps of conv / linear layers for the data-driven criteria.

*Which* tensor: the feature map a layer's output becomes where it enters the next layer.
From the layer's node in the torch.fx graph (traced in eval mode with
:func:`rsnet.graph.trace.trace`) we follow the chain of single-user nodes through
channel-preserving ops (BatchNorm, activations, dropout, and a residual ``add`` with an
operand of the same shape) and take the **last activation** on that chain:

- conv -> BN -> ReLU (VGG, MobileNet's ReLU6, GoogLeNet's conv -> ReLU -> BN -> ReLU: the
  second ReLU) -> the activation's output;
- a ResNet block's conv2 -> BN -> add(shortcut) -> ReLU -> the block output, i.e. the
  residual stream channel as the next block sees it.

Where no activation follows (a linear bottleneck), the end of the chain is used with a
ReLU applied here (documented fallback). The chosen nodes are read with an fx
``Interpreter`` (it runs the model's own modules, so gradients reach its parameters).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.fx import GraphModule, Interpreter, Node

from rsnet.graph.trace import trace

__all__ = ["Tap", "find_taps", "TapInterpreter"]

_ACT_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
                nn.Hardswish, nn.Hardtanh, nn.Mish, nn.PReLU, nn.Sigmoid, nn.Tanh)
_ACT_NAMES = {"relu", "relu_", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu",
              "hardswish", "hardtanh", "mish", "sigmoid", "tanh"}
_PASS_MODULES = (nn.modules.batchnorm._BatchNorm, nn.Dropout, nn.Identity)
_ADD_NAMES = {"add", "iadd", "add_"}


@dataclass
class Tap:
    """Where to read a layer's feature map: ``node``'s output, ReLU'd if ``relu``."""

    node: Node
    relu: bool


def _name(node: Node) -> str:
    if node.op == "call_method":
        return str(node.target)
    return getattr(node.target, "__name__", str(node.target))


def _kind(gm: GraphModule, node: Node) -> str | None:
    """'act', 'pass' (channel-preserving), 'add' or None for a node on a feature-map chain."""
    if node.op == "call_module":
        m = gm.get_submodule(str(node.target))
        if isinstance(m, _ACT_MODULES):
            return "act"
        if isinstance(m, _PASS_MODULES):
            return "pass"
        return None
    if node.op in ("call_function", "call_method"):
        name = _name(node)
        if name in _ACT_NAMES:
            return "act"
        if name in ("dropout", "identity"):
            return "pass"
        if name in _ADD_NAMES or node.target is operator.add:
            return "add"
    return None


def find_taps(model: nn.Module, names: Iterable[str]) -> tuple[GraphModule, dict[str, Tap]]:
    """Trace ``model`` (eval mode) and locate the feature map of each conv / linear in ``names``.

    Layers the eval-mode forward never calls (aux heads) get no tap.
    """
    was_training = model.training
    model.eval()
    try:
        gm = trace(model)
    finally:
        model.train(was_training)
    wanted = set(names)
    first: dict[str, Node] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target in wanted:
            first.setdefault(str(node.target), node)
    taps = {}
    for name, node in first.items():
        last_act: Node | None = None
        while len(node.users) == 1:
            user = next(iter(node.users))
            kind = _kind(gm, user)
            if kind is None:
                break
            if kind == "add" and not (len(user.args) >= 2 and all(
                    isinstance(a, Node) for a in user.args[:2])):
                break  # only a tensor + tensor add is a residual join
            node = user
            if kind == "act":
                last_act = node
        taps[name] = Tap(last_act, False) if last_act is not None else Tap(node, True)
    return gm, taps


class TapInterpreter(Interpreter):
    """Runs ``gm`` and hands each tapped node's output to ``sink(node, tensor, relu)``.

    ``tensor`` is the node's output itself (on the autograd path, shape ``(B, C, H, W)`` or
    ``(B, C)``); ``relu`` says whether the feature map is ``F.relu(tensor)`` (the fallback
    of :class:`Tap`) rather than the tensor. Intermediate values are freed as usual.
    """

    def __init__(self, gm: GraphModule, taps: Mapping[str, Tap],
                 sink: Callable[[Node, torch.Tensor, bool], None]) -> None:
        super().__init__(gm)
        self.relu = {}
        for tap in taps.values():
            self.relu[tap.node] = self.relu.get(tap.node, False) or tap.relu
        self.sink = sink

    def run_node(self, n: Node):
        out = super().run_node(n)
        if n in self.relu and isinstance(out, torch.Tensor):
            self.sink(n, out, self.relu[n])
        return out
