"""torch-pruning dependency graphs for rsnet models, and the groups to prune to given widths.

A *group* is torch-pruning's set of coupled channel slices (a conv, its BN, the next layer's
input channels, every conv added into the same residual stream, a depthwise conv with its
producer, ...). Its *members* are the conv / linear layers whose **output** channels it
holds (depthwise convs included): they must all end with the same width.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from rsnet.errors import RsnetError
from rsnet.models.layers import torch_pruning_pruners
from rsnet.prune.shortcut import IndexShortcut, index_shortcut_pruner

__all__ = ["Member", "GroupPlan", "build_graph", "train_only_layers", "plan_groups",
           "layer_width", "preserve_state", "cuda_devices"]

LAYERS = (nn.Conv2d, nn.Linear)


def layer_width(module: nn.Module) -> int:
    """Output width of a conv (out_channels) or linear (out_features)."""
    return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features


@dataclass
class Member:
    """One layer of a group: its channels ``idxs`` sit at ``root_idxs`` of the group's root."""

    name: str
    module: nn.Module
    idxs: list[int]
    root_idxs: list[int]
    item: Any = field(repr=False)  # the torch-pruning GroupItem


@dataclass
class GroupPlan:
    """A group to prune: root layer, current width ``size`` and target width ``target``.

    layers: conv / linear members (output channels in the group, depthwise convs included);
    norms: the BatchNorm layers of the group (one per member that has one).
    """

    root: str
    module: nn.Module
    size: int
    target: int
    layers: list[Member]
    norms: list[Member]

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.layers]


def cuda_devices(model: nn.Module) -> list[int]:
    """Indices of the CUDA devices holding ``model``'s parameters (for ``fork_rng``)."""
    return sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})


@contextlib.contextmanager
def preserve_state(model: nn.Module) -> Iterator[None]:
    """Restore every buffer (BN running statistics), the modes and the RNG state on exit."""
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    modes = [(m, m.training) for m in model.modules()]
    with torch.random.fork_rng(devices=cuda_devices(model)):
        try:
            yield
        finally:
            with torch.no_grad():
                for b, saved in buffers:
                    if b.shape == saved.shape:  # pruned buffers are new tensors anyway
                        b.copy_(saved)
            for m, mode in modes:
                m.train(mode)


def _executed(model: nn.Module, x: torch.Tensor, train: bool) -> set[nn.Module]:
    ran: set[nn.Module] = set()
    hooks = [m.register_forward_hook(lambda mod, i, o: ran.add(mod))
             for m in model.modules() if isinstance(m, LAYERS)]
    try:
        with preserve_state(model), torch.no_grad():
            model.train(train)
            model(_batch2(x) if train else x)
    finally:
        for h in hooks:
            h.remove()
    return ran


def _batch2(x: torch.Tensor) -> torch.Tensor:
    # Train-mode BN needs more than one value per channel, even on a 1x1 map.
    return torch.cat([x, x]) if x.shape[0] == 1 else x


def train_only_layers(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Conv / linear layers that run in training mode but not in eval mode (aux heads)."""
    names = {m: n for n, m in model.named_modules()}
    extra = _executed(model, x, True) - _executed(model, x, False)
    return sorted(names[m] for m in extra)


def build_graph(model: nn.Module, x: torch.Tensor, train_mode: bool = False):
    """torch-pruning DependencyGraph of ``model`` with rsnet's custom pruners.

    ``train_mode`` traces a training-mode forward (so train-only branches such as aux heads
    join the graph); BN statistics, modes and the RNG are restored afterwards.
    """
    pruners = dict(torch_pruning_pruners())
    pruners[IndexShortcut] = index_shortcut_pruner()
    with preserve_state(model), torch.enable_grad():
        if train_mode:
            # tp's tracer calls model.eval() itself, so switch inside the forward.
            def forward_fn(m: nn.Module, inp: torch.Tensor) -> Any:
                m.train()
                return m(inp)
            return tp.DependencyGraph().build_dependency(
                model, _batch2(x), forward_fn=forward_fn, customized_pruners=pruners,
                verbose=False)
        model.eval()
        return tp.DependencyGraph().build_dependency(model, x, customized_pruners=pruners,
                                                     verbose=False)


def _members(group: Any, names: Mapping[nn.Module, str],
             DG: Any) -> tuple[list[Member], list[Member]]:
    """(conv / linear members, BatchNorm members) of a torch-pruning group."""
    layers, norms = [], []
    for item in group:
        dep, idxs = item.dep, list(item.idxs)
        module = dep.target.module
        if not isinstance(module, nn.Module) or module not in names:
            continue
        out = DG.is_out_channel_pruning_fn(dep.handler)
        member = Member(names[module], module, idxs, list(item.root_idxs), item)
        if isinstance(module, LAYERS) and out:  # depthwise convs: in and out prune together
            layers.append(member)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            norms.append(member)
    return _dedupe(layers), _dedupe(norms)


def _dedupe(members: list[Member]) -> list[Member]:
    seen, out = set(), []
    for m in members:
        if m.name not in seen:
            seen.add(m.name)
            out.append(m)
    return out


def plan_groups(model: nn.Module, DG: Any, widths: Mapping[str, int],
                ignored: list[nn.Module]) -> tuple[list[GroupPlan], set[str]]:
    """One GroupPlan per torch-pruning group whose members are given a smaller width.

    Returns (plans, names of every layer covered by some group). Raises RsnetError when
    coupled layers are given different widths or a width exceeds the current one.
    """
    names = {m: n for n, m in model.named_modules()}
    plans: list[GroupPlan] = []
    covered: set[str] = set()
    groups = list(DG.get_all_groups(ignored_layers=ignored,
                                    root_module_types=[nn.Conv2d, nn.Linear]))
    for group in groups:
        layers, norms = _members(group, names, DG)
        root = group[0].dep.target.module
        size = len(group[0].idxs)
        covered.update(m.name for m in layers)
        asked = {m.name: widths[m.name] for m in layers if m.name in widths}
        if not asked:
            continue
        if all(w == layer_width(m.module) for m in layers for w in [asked.get(m.name)] if w is not None):
            continue  # nothing to prune here; members may hold different channel counts (a
            # Gunn2D stage and its segments, a shuffled stream and the next depthwise conv)
        targets = set(asked.values())
        if len(targets) > 1:
            raise RsnetError(
                "coupled layers must have equal widths (they share channels through a residual "
                f"add or a depthwise conv), but the widths give {asked}; fix the plan "
                "(scaling.*) so that every layer of this group has one width")
        target = targets.pop()
        if target > size:
            raise RsnetError(f"cannot prune {', '.join(asked)} to {target} channels: it has only "
                             f"{size} (pruning can only remove channels)")
        if target < size:
            plans.append(GroupPlan(names[root], root, size, target, layers, norms))
    return plans, covered
