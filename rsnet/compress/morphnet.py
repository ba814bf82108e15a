"""MorphNet (Gordon et al., "MorphNet: Fast & Simple Resource-Constrained Structure Learning
of Deep Networks", CVPR 2018): shrink with a sparsifying regulariser, then expand uniformly.

1. **Shrink.** Train with ``L = L_task + strength * sum_g a_g * sum_c max_m |gamma_{m,c}|``:
   for every width group g (:mod:`rsnet.graph`), channel c, the largest |gamma| of the
   BatchNorms m whose channels the group holds (google-research/morph-net's
   ``MaxGroupingRegularizer``: a residual stream's channel is free only when every BN
   adding into it has let it go). ``a_g`` is the cost of one more channel of group g,
   d cost / d w_g of the graph's exact MACs (``cost="macs"``, the paper's FLOP regulariser)
   or parameter (``"params"``) polynomial at the *alive* widths (channels whose grouped
   |gamma| exceeds ``threshold``; recomputed after every optimizer step), divided by its
   mean over all channels at the start so that ``strength`` has network slimming's scale;
   ``cost="none"`` is the plain L1 of network slimming (a_g = 1). Its gradient is added in
   backward hooks on the gammas (:class:`GammaPenalty`, a :class:`rsnet.train.StepHook`).
2. **Read the widths** (:func:`read_widths`): a group keeps its alive channels (at least
   ``min_width``, rounded up to its multiple); groups without BN keep their width.
3. **Expand** (:func:`fit_to_budget`): all shrunk widths times one factor omega (rounded,
   capped at the baseline widths: the model is carved out of the baseline), the largest
   omega whose exact cost fits the budget (bisection; the cost is monotone in omega). The
   paper then retrains from scratch (``compression.init=scratch``) or fine-tunes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from rsnet.errors import RsnetError
from rsnet.graph import ModelGraph, Polynomial
from rsnet.models import classifier_name
from rsnet.compress.dependency import group_members, build_graph, train_only_layers
from rsnet.compress.shortcut import convert_pad_shortcuts
from rsnet.compress.group_widths import floor_width, repair, width_step

__all__ = ["COSTS", "GammaGroup", "gamma_groups", "channel_scales", "marginal_costs",
           "GammaPenalty", "read_widths", "expand_widths", "fit_to_budget"]

log = logging.getLogger(__name__)

COSTS = ("macs", "params", "none")


@dataclass
class GammaGroup:
    """The BatchNorms of width group ``gid`` (``size`` channels): for each, the module, its
    channel indices ``idxs`` and where they sit among the group's channels, ``root``."""

    gid: int
    size: int
    norms: list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]]


def gamma_groups(model: nn.Module, graph: ModelGraph, example: torch.Tensor) -> list[GammaGroup]:
    """The BatchNorm scales of every width group of ``graph``, found with torch-pruning.

    ``model`` is the (unpruned) network ``graph`` was traced from; option-A shortcuts are
    converted to :class:`rsnet.compress.IndexShortcut` in place, as pruning would. Groups whose
    layers have no BatchNorm are left out (their width is not read off scales).
    RsnetError for a BatchNorm without scale.
    """
    convert_pad_shortcuts(model)
    train_only = train_only_layers(model, example)
    DG = build_graph(model, example, train_mode=bool(train_only))
    names = {m: n for n, m in model.named_modules()}
    ignored = [model.get_submodule(classifier_name(model))] + [model.get_submodule(n) for n in train_only]
    known = {m.name: m.group for m in graph.micro}
    out = []
    for group in DG.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d, nn.Linear]):
        layers, norms = group_members(group, names, DG)
        gids = {known.get(m.name) for m in layers} - {None}
        if len(gids) != 1 or not norms:
            if len(gids) > 1 and norms:  # torch-pruning couples what rsnet.graph keeps apart
                log.warning("MorphNet: %s span width groups %s; their widths are not read off "
                            "the scales", ", ".join(m.name for m in layers), sorted(gids))
            continue
        entries = []
        for m in norms:
            if getattr(m.module, "weight", None) is None:
                raise RsnetError(f"compression=morphnet reads widths off BatchNorm scales, but "
                                 f"{m.name} ({type(m.module).__name__}) has none (e.g. googlenet_rs "
                                 f"needs model.arch.bn_scale=true)")
            if any(r is None for r in m.root_idxs):
                continue
            entries.append((m.name, m.module, torch.tensor(m.idxs, dtype=torch.long),
                            torch.tensor(m.root_idxs, dtype=torch.long)))
        if entries:
            out.append(GammaGroup(gids.pop(), len(group[0].idxs), entries))
    return sorted(out, key=lambda g: g.gid)


def _stack(group: GammaGroup) -> torch.Tensor:
    """(members, size): |gamma| of each member at the group's channels (0 where it has none)."""
    rows = []
    for _, bn, idxs, root in group.norms:
        g = bn.weight.abs()
        rows.append(torch.zeros(group.size, dtype=g.dtype, device=g.device)
                    .index_put((root.to(g.device),), g[idxs.to(g.device)]))
    return torch.stack(rows)


def channel_scales(group: GammaGroup) -> torch.Tensor:
    """(size,) the largest |gamma| of each channel over the group's BatchNorms (differentiable)."""
    return _stack(group).amax(0)


def marginal_costs(poly: Polynomial, w: list[int]) -> dict[int, float]:
    """d poly / d w_g for every group g at the width vector ``w``."""
    d = {g: float(c) for g, c in poly.lin.items()}
    for (a, b), c in poly.bil.items():
        d[a] = d.get(a, 0.0) + float(c) * w[b]
        d[b] = d.get(b, 0.0) + float(c) * w[a]  # a == b: 2 c w_a, as it should
    return d


class GammaPenalty:
    """``strength * sum_g a_g * sum_c max_m |gamma_{m,c}|`` through backward hooks on the gammas.

    Registering it adds the penalty's (sub)gradient to every gamma's gradient during each
    backward pass, as if the penalty were part of the loss (ties of the max share the
    gradient equally, as autograd's ``amax``). As a StepHook (``fit(hooks=[...])``) it
    re-reads the alive widths and the weights ``a_g`` after every optimizer step. Call
    :meth:`remove` when done. ``value()`` is the penalty as a differentiable tensor.
    """

    def __init__(self, groups: list[GammaGroup], graph: ModelGraph, strength: float,
                 threshold: float, cost: str = "macs") -> None:
        if cost not in COSTS:
            raise RsnetError(f"compression.morphnet.cost={cost!r}: use one of {', '.join(COSTS)}")
        if not strength >= 0:
            raise RsnetError(f"compression.morphnet.strength={strength} must be >= 0")
        self.groups, self.graph = groups, graph
        self.strength, self.threshold, self.cost = float(strength), float(threshold), cost
        self.poly = {"macs": graph.macs, "params": graph.params}.get(cost)
        self.norm = 1.0
        if self.poly is not None:  # mean weight over all regularised channels at the start = 1
            d = marginal_costs(self.poly, graph.base_widths)
            total = sum(g.size for g in groups)
            mean = sum(g.size * d.get(g.gid, 0.0) for g in groups) / max(total, 1)
            self.norm = mean if mean > 0 else 1.0
        self.weights: dict[int, float] = {}
        self.update()
        self._handles = [bn.weight.register_hook(self._hook(group, k))
                         for group in groups for k, (_, bn, _, _) in enumerate(group.norms)]

    def alive_widths(self) -> dict[int, int]:
        """Channels per group whose grouped |gamma| exceeds the threshold."""
        with torch.no_grad():
            return {g.gid: int((channel_scales(g) > self.threshold).sum()) for g in self.groups}

    def update(self) -> None:
        """Recompute a_g at the current alive widths."""
        if self.poly is None:
            self.weights = {g.gid: 1.0 for g in self.groups}
            return
        d = marginal_costs(self.poly, self.graph.width_vector(self.alive_widths()))
        self.weights = {g.gid: d.get(g.gid, 0.0) / self.norm for g in self.groups}

    def _hook(self, group: GammaGroup, k: int):
        _, bn, idxs, root = group.norms[k]

        def add_penalty(grad: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                stack = _stack(group)
                top = stack == stack.amax(0, keepdim=True)
                share = top[k].to(grad.dtype) / top.sum(0).to(grad.dtype)  # (size,)
                r, i = root.to(grad.device), idxs.to(grad.device)
                extra = torch.zeros_like(grad)
                extra[i] = self.strength * self.weights[group.gid] * share[r] * torch.sign(bn.weight[i])
            return grad + extra
        return add_penalty

    def value(self) -> torch.Tensor:
        """The penalty at the current gammas (a scalar tensor with autograd)."""
        terms = [self.weights[g.gid] * channel_scales(g).sum() for g in self.groups]
        return self.strength * torch.stack(terms).sum() if terms else torch.zeros(())

    # -- StepHook
    def step(self, global_step: int) -> bool:
        self.update()
        return False

    def settled(self) -> bool:
        return True  # a constant penalty: every epoch may be selected

    def state_dict(self) -> dict:
        return {}  # everything is read off the gammas

    def load_state_dict(self, state: dict) -> None:
        self.update()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def read_widths(groups: list[GammaGroup], graph: ModelGraph, threshold: float, min_width: int = 1,
                round_to: int | None = None) -> dict[int, int]:
    """Group widths read off the scales: the channels with grouped |gamma| > ``threshold``.

    At least the group's floor (``min_width`` rounded up to its step), rounded up to a
    multiple of its step, pad constraints repaired; groups without BatchNorm keep their
    baseline width.
    """
    widths = {g.id: g.base_width for g in graph.groups}
    with torch.no_grad():
        for g in groups:
            alive = int((channel_scales(g) > threshold).sum())
            step = width_step(graph, g.gid, round_to)
            widths[g.gid] = min(graph.groups[g.gid].base_width,
                                max(floor_width(graph, g.gid, min_width, round_to),
                                    -(-alive // step) * step))
    return repair(graph, widths, round_to)


def expand_widths(graph: ModelGraph, shrunk: Mapping[int, int], omega: float, min_width: int = 1,
                  round_to: int | None = None) -> dict[int, int]:
    """Every shrunk width times ``omega``, rounded to its step (half to even), between its
    floor and its baseline width; pad constraints repaired."""
    out = {}
    for g in graph.groups:
        step = width_step(graph, g.id, round_to)
        w = int(np.rint(shrunk[g.id] * omega / step)) * step
        out[g.id] = min(g.base_width, max(floor_width(graph, g.id, min_width, round_to), w))
    return repair(graph, out, round_to)


def fit_to_budget(graph: ModelGraph, shrunk: Mapping[int, int], budget: float, unit: str,
                  min_width: int = 1, round_to: int | None = None, iters: int = 60
                  ) -> tuple[float, dict[int, int], float]:
    """The largest omega whose :func:`expand_widths` costs at most ``budget`` ``unit``.

    Returns (omega, widths, next_cost): next_cost is the cost just above omega (the first
    wider plan), so next_cost > budget unless every group is at its baseline width.
    RsnetError when even the narrowest plan is over the budget.
    """
    def cost(omega: float) -> float:
        params, macs = graph.cost(expand_widths(graph, shrunk, omega, min_width, round_to))
        return float(params if unit == "params" else macs)

    lo = 1e-9
    hi = 2.0 * max(g.base_width / max(shrunk[g.id], 1) for g in graph.groups)
    if cost(lo) > budget:
        raise RsnetError(f"the narrowest plan costs {cost(lo):,.0f} {unit}, over the budget of "
                         f"{budget:,.0f}: raise the budget (scaling.budget.*) or lower "
                         f"scaling.widths.min_width")
    if cost(hi) <= budget:  # the baseline widths fit: nothing to expand into
        return hi, expand_widths(graph, shrunk, hi, min_width, round_to), cost(hi)
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cost(mid) <= budget else (lo, mid)
    return lo, expand_widths(graph, shrunk, lo, min_width, round_to), cost(hi)
