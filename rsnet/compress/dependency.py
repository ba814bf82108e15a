"""torch-pruning dependency graphs for rsnet models, and the groups to prune to given widths.

A *group* is torch-pruning's set of coupled channel slices (a conv, its BN, the next layer's
input channels, every conv added into the same residual stream, a depthwise conv with its
producer, ...). Its *members* are the conv / linear layers whose **output** channels it
holds (depthwise convs included): they must all end with the same width.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.dependency import index_mapping as tp_index_mapping

from rsnet.errors import RsnetError
from rsnet.models.layers import torch_pruning_pruners
from rsnet.compress.shortcut import IndexShortcut, index_shortcut_pruner
from rsnet.compress.shuffle import ShuffleBarrier, shuffle_barrier_model, shuffle_barrier_pruner

__all__ = ["Member", "GroupPlan", "build_graph", "train_only_layers", "plan_groups",
           "layer_width", "preserve_state", "cuda_devices", "output_layer", "frozen_index_mapping"]

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
    blocks: int = 1  # grouped convs / GroupNorm: prune the same positions in each of these
    # equal blocks of the root's channels, so every conv group keeps an equal share

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


def _executed(model: nn.Module, x: torch.Tensor, train: bool) -> list[nn.Module]:
    """Conv / linear layers the forward runs, in the order of their first call."""
    ran: dict[nn.Module, None] = {}  # an ordered set
    hooks = [m.register_forward_hook(lambda mod, i, o: ran.setdefault(mod))
             for m in model.modules() if isinstance(m, LAYERS)]
    try:
        with preserve_state(model), torch.no_grad():
            model.train(train)
            model(_batch2(x) if train else x)
    except RuntimeError as err:
        raise RsnetError(f"{type(model).__name__} does not run in {'training' if train else 'eval'} "
                         f"mode on an input of shape {tuple(x.shape)}: {err}") from err
    finally:
        for h in hooks:
            h.remove()
    return list(ran)


def _batch2(x: torch.Tensor) -> torch.Tensor:
    # Train-mode BN needs more than one value per channel, even on a 1x1 map.
    return torch.cat([x, x]) if x.shape[0] == 1 else x


def train_only_layers(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Conv / linear layers that run in training mode but not in eval mode (aux heads)."""
    names = {m: n for n, m in model.named_modules()}
    extra = set(_executed(model, x, True)) - set(_executed(model, x, False))
    return sorted(names[m] for m in extra)


def output_layer(model: nn.Module, x: torch.Tensor) -> str:
    """Name of the classifier: the layer whose outputs are the model's (kept at full width).

    The last nn.Linear where the model has one (rsnet's convention, as in rsnet.graph);
    otherwise the last conv the eval-mode forward runs, e.g. SqueezeNet's 1x1-conv
    classifier (conv -> ReLU -> global pool -> flatten).
    """
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1]
    names = {m: n for n, m in model.named_modules()}
    ran = _executed(model, x, False)
    if not ran:
        raise RsnetError(f"{type(model).__name__} runs no nn.Conv2d / nn.Linear: nothing to prune")
    return names[ran[-1]]


_TP_RESHAPE_MAPPING = tp_index_mapping.update_reshape_index_mapping


def _reshape_mapping(graph: Any, node: Any) -> None:
    """tp's reshape index mapping, left unset where tp infers 0 channels next to the reshape.

    tp divides by the channel counts it infers on both sides of a view / reshape; around a
    channel shuffle (ShuffleNetV2's view -> transpose -> view) it infers 0 and raises
    ZeroDivisionError while building the graph. rsnet's plans for pruning
    (``analyze(prunable=True)``) keep every shuffled width fixed, so no pruned group passes
    such a reshape; prune_to_widths' width and output-shape checks catch anything else.
    """
    try:
        _TP_RESHAPE_MAPPING(graph, node)
    except ZeroDivisionError:
        pass


@contextlib.contextmanager
def _tp_patches() -> Iterator[None]:
    with mock.patch.object(tp_index_mapping, "update_reshape_index_mapping", _reshape_mapping):
        yield


@contextlib.contextmanager
def frozen_index_mapping(DG: Any) -> Iterator[None]:
    """Compute tp's index mappings (concat offsets, ...) once, not in every get_pruning_group.

    tp recomputes every concat / split / reshape mapping of the whole graph at each
    get_pruning_group call, at a cost quadratic in a concat's dependencies: enumerating
    DenseNet-121's 121 groups took 6 s, nearly all of it there. The mappings change only
    when channels are pruned; inside this context nothing is (see :func:`prune_together`).
    """
    with _tp_patches():
        tp_index_mapping.update_index_mapping(DG)
    with mock.patch.object(tp_index_mapping, "update_index_mapping", lambda graph: None):
        yield


def prune_together(DG: Any, groups: list[Any]) -> None:
    """Prune tp groups that were all computed on the same, still unpruned model, in one pass.

    ``group.prune()`` one group after another renumbers channels, so tp would have to
    recompute every index mapping before building the next group. Here every group's indices
    refer to the unpruned numbering, so each (layer, pruning function) is called once with
    the union of its indices (groups hold disjoint channels, so nothing is removed twice).
    """
    from torch_pruning.dependency.group import Group

    merged: dict[tuple[int, Any], tuple[Any, set[int]]] = {}
    for group in groups:
        for item in group:
            key = (id(item.dep.target.module), item.dep.handler)
            merged.setdefault(key, (item.dep, set()))[1].update(int(i) for i in item.idxs)
    together = Group()
    together._DG = DG
    for dep, idxs in merged.values():
        together.add_dep(dep, sorted(idxs))
    together.prune(record_history=False)


def build_graph(model: nn.Module, x: torch.Tensor, train_mode: bool = False):
    """torch-pruning DependencyGraph of ``model`` with rsnet's custom pruners.

    ``train_mode`` traces a training-mode forward (so train-only branches such as aux heads
    join the graph); BN statistics, modes and the RNG are restored afterwards.
    """
    pruners = dict(torch_pruning_pruners())
    pruners[IndexShortcut] = index_shortcut_pruner()
    with preserve_state(model), torch.enable_grad(), _tp_patches():
        if train_mode:
            # tp's tracer calls model.eval() itself, so switch inside the forward.
            def forward_fn(m: nn.Module, inp: torch.Tensor) -> Any:
                m.train()
                return m(inp)
            return tp.DependencyGraph().build_dependency(
                model, _batch2(x), forward_fn=forward_fn, customized_pruners=pruners,
                verbose=False)
        model.eval()
        # Channel shuffles become opaque layers (rsnet.compress.shuffle); the GraphModule holds
        # the model's own layers, so pruning it prunes the model.
        traced = shuffle_barrier_model(model, x)
        if traced is not None:
            pruners[ShuffleBarrier] = shuffle_barrier_pruner()
        return tp.DependencyGraph().build_dependency(
            model if traced is None else traced, x, customized_pruners=pruners, verbose=False)


def group_members(group: Any, names: Mapping[nn.Module, str],
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


def _channel_groups(module: Any) -> int:
    """Equal blocks a layer splits the pruned dim into: a grouped conv's groups (in and out
    channels), GroupNorm's num_groups; 1 otherwise (depthwise convs prune in = out)."""
    if isinstance(module, nn.Conv2d) and module.groups > 1 \
            and module.groups != module.out_channels:
        return module.groups
    if isinstance(module, nn.GroupNorm):
        return module.num_groups
    return 1


def _blocks(group: Any, names: Mapping[nn.Module, str], DG: Any) -> int:
    """The number of equal blocks of the root's channels that must stay equal when pruning.

    A grouped conv keeps its group count, so each of its ``groups`` input (and output)
    blocks must lose as many channels, and tp's ConvPruner.prune_in_channels even assumes
    the *same* positions in each block. That is only expressible when the layer's channels
    on that side are exactly the root's, in order; rsnet's analysis fixes the widths of a
    grouped conv reading several groups (a concat), so anything else is a bug.
    """
    size, blocks = len(group[0].idxs), 1
    for item in group:
        module = item.dep.target.module
        k = _channel_groups(module)
        if k == 1:
            continue
        identity = list(item.idxs) == list(item.root_idxs) == list(range(size))
        out = DG.is_out_channel_pruning_fn(item.dep.handler)
        n = module.num_channels if isinstance(module, nn.GroupNorm) else \
            module.out_channels if out else module.in_channels
        if not identity or n != size or size % k:
            raise RsnetError(f"{names.get(module, type(module).__name__)} splits channels of "
                             f"several coupled layers into {k} groups; rsnet cannot prune it to "
                             f"equal groups (name the layers feeding it in scaling.fixed)")
        blocks = math.lcm(blocks, k)
    return blocks


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
        layers, norms = group_members(group, names, DG)
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
            blocks = _blocks(group, names, DG)
            if target % blocks:
                raise RsnetError(f"cannot prune {', '.join(asked)} to {target} channels: grouped "
                                 f"convs split them into {blocks} equal groups, so the width must "
                                 f"be a multiple of {blocks}")
            plans.append(GroupPlan(names[root], root, size, target, layers, norms, blocks))
    return plans, covered
