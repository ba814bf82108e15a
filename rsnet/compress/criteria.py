"""Filter-importance criteria: one score per channel of a group; the lowest are pruned.

Every criterion scores each *member* of a group (each conv / linear whose output channels
the group holds; for ``bn_scale`` each BatchNorm), then the group score of root channel j is

    score[j] = sum over members m of  s_m[j] / mean(s_m)

(the sum of mean-normalised member scores; a member whose scores are all 0 adds nothing).
A group with one member (an inner conv, an inception branch) keeps that member's ranking;
a residual stream adds up the evidence of every conv writing into it. All scores are
computed once, on the model before any channel is removed ("one-shot", Li et al.'s
"independent" variant).

Each criterion is a small object with the :class:`Criterion` protocol (``name``,
``data_driven``, ``scores``), built from its YAML file in conf/compression/criterion/
(``compression/criterion=hrank``; a new criterion is one class here and one YAML file):

- ``l1`` / ``l2``: sum |w| / sqrt(sum w^2) over each filter (Li et al. 2017), via
  ``tp.importance.MagnitudeImportance(p=1|2, normalizer=None, group_reduction="first")``
  (torch-pruning's p-norm is sum |w|^p; the square root for l2 keeps the ranking).
- ``bn_scale``: |gamma| of the BatchNorm layers of the group (network slimming), via
  ``tp.importance.BNScaleImportance``; a BN without scale (ShiftBatchNorm2d) is an error.
- ``taylor``: first-order Taylor sum |w * dL/dw| over each filter (Molchanov et al.), via
  ``tp.importance.TaylorImportance``; dL/dw is the gradient of the mean cross-entropy over
  the calibration images (eval mode).
- ``hrank``: average over calibration images of ``torch.linalg.matrix_rank`` of each
  channel's H x W feature map (Lin et al. 2020).
- ``apoz``: 1 - APoZ, APoZ = fraction of zeros of the channel's feature map over images
  and positions (Hu et al. 2016: high APoZ is pruned).
- ``mean_activation``: mean of the channel's feature map over images and positions
  (Molchanov et al. 2017, section 2.2).
- ``fisher``: (1 / 2N) sum_n (sum_hw a * dL_n/da)^2 (Theis et al. 2018), a the feature map,
  L_n the cross-entropy of image n (per-example gradients: eval-mode BN does not mix them).
- ``random``: uniform scores from a generator seeded by (seed, root layer name).

Feature maps (hrank, apoz, mean_activation, fisher) are the activation outputs found by
:mod:`rsnet.compress.activations` (after BN + activation, a ResNet stream after its residual
add and ReLU). Where no activation follows a layer, the end of its BN chain is used, with a
ReLU applied for hrank / apoz / mean_activation and as is for fisher (whose a must be the
tensor the gradient flows through). Statistics are gathered in eval mode (running BN
statistics, no dropout); the model's weights, buffers, grads and mode are left unchanged.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from torch.fx import Node
from torch_pruning.dependency import Dependency, Group
from torch_pruning.pruner import function as tpf

from rsnet.errors import RsnetError
from rsnet.compress.activations import TapInterpreter, find_taps
from rsnet.compress.dependency import GroupPlan, Member, preserve_state

__all__ = ["Criterion", "Magnitude", "BNScale", "Taylor", "HRank", "APoZ", "MeanActivation",
           "Fisher", "Random", "check_calibration", "score_groups", "aggregate"]


class Criterion(Protocol):
    """A filter-importance criterion: one score per root channel of every group."""

    name: str  # as reported (metrics prune/criterion, pruned.pt's meta)
    data_driven: ClassVar[bool]  # needs calibration batches

    def scores(self, model: nn.Module, plans: list[GroupPlan], calib: Iterable | None,
               seed: int) -> dict[str, torch.Tensor]: ...


def check_calibration(criterion: Criterion, calib: Any) -> None:
    """RsnetError for a data-driven criterion without calibration data."""
    if criterion.data_driven and calib is None:
        raise RsnetError(f"compression/criterion={criterion.name} needs calibration images: set "
                         f"compression.calib_images (a positive number of training images)")


def aggregate(parts: Iterable[tuple[torch.Tensor, list[int]]], size: int) -> torch.Tensor:
    """Sum of mean-normalised member scores, placed at their root channels. Shape (size,)."""
    total = torch.zeros(size, dtype=torch.float64)
    for scores, root_idxs in parts:
        if any(r is None for r in root_idxs):
            continue  # tp could not map this member onto the root (as tp's own _reduce)
        s = scores.detach().double().cpu()
        mean = s.mean()
        if mean > 0:
            total.index_add_(0, torch.tensor(root_idxs, dtype=torch.long), s / mean)
    return total


def _sorted(member: Member) -> tuple[list[int], list[int]]:
    """The member's (idxs, root_idxs) sorted by idxs (tp's Taylor sorts idxs in place)."""
    pairs = sorted(zip(member.idxs, member.root_idxs))
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _tp_member_scores(imp: tp.importance.Importance, member: Member, handler: Any
                      ) -> tuple[torch.Tensor, list[int]] | None:
    """Scores of one member from a torch-pruning importance, on a one-item group.

    The item's handler is set to ``handler`` (tp's importances look for the plain conv /
    linear / BN pruning functions; a depthwise conv's own handler is another one), and its
    root indices to 0..k-1, so tp returns the scores in the member's own channel order.
    """
    idxs, root_idxs = _sorted(member)
    node = member.item.dep.target
    sub = Group()
    sub.add_dep(Dependency(handler, handler, node, node), list(idxs))
    sub[0].root_idxs = list(range(len(idxs)))
    scores = imp(sub)
    return None if scores is None else (scores, root_idxs)


def _layer_handler(module: nn.Module) -> Any:
    return tpf.prune_conv_out_channels if isinstance(module, nn.Conv2d) \
        else tpf.prune_linear_out_channels


class _Weights:
    """l1, l2, taylor: filter scores of every conv / linear member."""

    def __init__(self, imp: tp.importance.Importance, root: bool = False) -> None:
        self.imp = imp
        self.root = root  # l2: tp returns sum w^2; take the square root
        self.needs_grad = isinstance(imp, tp.importance.GroupTaylorImportance)

    def __call__(self, plan: GroupPlan) -> torch.Tensor:
        parts = []
        for m in plan.layers:
            if self.needs_grad and m.module.weight.grad is None:
                continue  # not on the eval-mode path of the loss (a train-only layer)
            got = _tp_member_scores(self.imp, m, _layer_handler(m.module))
            if got is not None:
                parts.append((got[0].sqrt() if self.root else got[0], got[1]))
        return aggregate(parts, plan.size)


def _feature_stats(criterion: _FeatureMapCriterion, model: nn.Module, plans: list[GroupPlan],
                   calib: Iterable) -> dict[str, torch.Tensor]:
    """Per-channel statistic of each member's feature map over the calibration set, by layer."""
    names = sorted({m.name for p in plans for m in p.layers})
    gm, taps = find_taps(model, names)
    by_node: dict[Node, list[str]] = {}
    for name, tap in taps.items():
        by_node.setdefault(tap.node, []).append(name)
    sums: dict[Node, torch.Tensor] = {}
    counts: dict[Node, int] = {}
    grad_mode = criterion.uses_gradient
    device = _device(model)
    batch_out: dict[Node, torch.Tensor] = {}

    def sink(node: Node, out: torch.Tensor, use_relu: bool) -> None:
        if grad_mode:
            batch_out[node] = out  # read after the backward pass
            return
        a = (F.relu(out) if use_relu else out).detach()
        if a.dim() == 2:
            a = a[:, :, None, None]  # a linear layer: one 1x1 "map" per channel
        stat, n = criterion.reduce(a)
        sums[node] = sums.get(node, 0) + stat.cpu()
        counts[node] = counts.get(node, 0) + n

    interp = TapInterpreter(gm, taps, sink)
    seen = 0
    with preserve_state(model):
        model.eval()
        for x, y in calib:
            x = x.to(device)
            seen += x.shape[0]
            if not grad_mode:
                with torch.no_grad():
                    interp.run(x)
                continue
            batch_out.clear()
            with torch.enable_grad():
                out = interp.run(x)
                logits = out[0] if isinstance(out, (tuple, list)) else out
                loss = F.cross_entropy(logits, y.to(device), reduction="sum")
                outs = [(n, o) for n, o in batch_out.items() if o.requires_grad]
                grads = torch.autograd.grad(loss, [o for _, o in outs], allow_unused=True)
            for (node, o), g in zip(outs, grads):
                if g is None:
                    g = torch.zeros_like(o)
                a, g = o.detach(), g.detach()
                if a.dim() == 2:
                    a, g = a[:, :, None, None], g[:, :, None, None]
                # Per example: (sum over positions of a * dL_n/da)^2.
                stat = (a * g).double().sum((2, 3)).pow(2).sum(0)
                sums[node] = sums.get(node, 0) + stat.cpu()
                counts[node] = counts.get(node, 0) + a.shape[0]
    if seen == 0:
        raise RsnetError("compression.calib_images: the calibration set is empty")
    stats: dict[str, torch.Tensor] = {}
    for node, layer_names in by_node.items():
        denom = counts[node] * (2 if grad_mode else 1)
        value = sums[node] / denom  # apoz: the non-zero fraction, i.e. 1 - APoZ
        for name in layer_names:
            stats[name] = value
    return stats


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _taylor_grads(model: nn.Module, calib: Iterable) -> dict[nn.Parameter, torch.Tensor | None]:
    """Set every parameter's .grad to d(mean cross-entropy)/dw over ``calib``; returns the old."""
    old = {p: p.grad for p in model.parameters()}
    for p in model.parameters():
        p.grad = None
    device, seen = _device(model), 0
    with preserve_state(model), torch.enable_grad():
        model.eval()
        for x, y in calib:
            x, y = x.to(device), y.to(device)
            out = model(x)
            logits = out[0] if isinstance(out, (tuple, list)) else out
            F.cross_entropy(logits, y, reduction="sum").backward()
            seen += x.shape[0]
    if seen == 0:
        for p, g in old.items():
            p.grad = g
        raise RsnetError("compression.calib_images: the calibration set is empty")
    for p in model.parameters():
        if p.grad is not None:
            p.grad /= seen
    return old


def score_groups(model: nn.Module, plans: list[GroupPlan], criterion: Criterion,
                 calib: Iterable | None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Scores (float64, shape (plan.size,)) of every plan's root channels, by root name.

    Computed on the model as it is (before pruning). Data-driven criteria iterate over
    ``calib`` once (``(x, y)`` batches: normalised float images, int64 targets).
    """
    check_calibration(criterion, calib)
    return criterion.scores(model, plans, calib, seed) if plans else {}


class _PerGroup:
    """A criterion that scores each group on its own, from the weights alone."""
    data_driven: ClassVar[bool] = False

    def score(self, plan: GroupPlan, seed: int) -> torch.Tensor:
        raise NotImplementedError

    def scores(self, model, plans, calib, seed):
        return {plan.root: self.score(plan, seed) for plan in plans}


@dataclass(frozen=True)
class Magnitude(_PerGroup):
    """``l1`` / ``l2``: the p-norm of each filter (Li et al. 2017)."""
    p: int = 1
    name: str = "l1"

    def score(self, plan, seed):
        return _Weights(tp.importance.MagnitudeImportance(
            p=self.p, normalizer=None, group_reduction="first"), root=self.p == 2)(plan)


@dataclass(frozen=True)
class BNScale(_PerGroup):
    """``bn_scale``: |gamma| of the group's BatchNorm layers (network slimming)."""
    name: str = "bn_scale"

    def score(self, plan, seed):
        if not plan.norms:
            raise RsnetError(f"compression/criterion=bn_scale: {', '.join(plan.names)} "
                             f"has no BatchNorm after it; use another criterion (e.g. l1)")
        imp = tp.importance.BNScaleImportance(group_reduction="first", normalizer=None)
        parts = []
        for m in plan.norms:
            if getattr(m.module, "weight", None) is None:
                raise RsnetError(
                    f"compression/criterion=bn_scale: the BatchNorm {m.name} "
                    f"({type(m.module).__name__}) has no scale (gamma), e.g. googlenet_rs "
                    f"built with bn_scale=false; use another criterion (e.g. l1)")
            parts.append(_tp_member_scores(imp, m, tpf.prune_batchnorm_out_channels))
        return aggregate(parts, plan.size)


@dataclass(frozen=True)
class Random(_PerGroup):
    """``random``: uniform scores seeded by (seed, root layer name)."""
    name: str = "random"

    def score(self, plan, seed):
        mixed = (int(seed) * 0x9E3779B1 + zlib.crc32(plan.root.encode())) % (2 ** 63)
        gen = torch.Generator().manual_seed(mixed)
        return torch.rand(plan.size, generator=gen, dtype=torch.float64)


@dataclass(frozen=True)
class Taylor:
    """``taylor``: first-order Taylor sum |w * dL/dw| per filter (Molchanov et al.)."""
    name: str = "taylor"
    data_driven: ClassVar[bool] = True

    def scores(self, model, plans, calib, seed):
        old = _taylor_grads(model, calib)
        try:
            scorer = _Weights(tp.importance.TaylorImportance(
                group_reduction="first", normalizer=None))
            return {plan.root: scorer(plan) for plan in plans}
        finally:
            for p, g in old.items():
                p.grad = g


class _FeatureMapCriterion:
    """A statistic of each member's feature map over the calibration set (see the module
    docstring); subclasses give ``reduce``: a batch of maps (B, C, H, W) -> (per-channel
    sum, count)."""
    data_driven: ClassVar[bool] = True
    uses_gradient: ClassVar[bool] = False  # Fisher: the maps' gradients, not their values

    def reduce(self, a: torch.Tensor) -> tuple[torch.Tensor, int]:
        raise NotImplementedError

    def scores(self, model, plans, calib, seed):
        stats = _feature_stats(self, model, plans, calib)
        return {plan.root: aggregate([(stats[m.name][m.idxs], m.root_idxs)
                                      for m in plan.layers if m.name in stats], plan.size)
                for plan in plans}


@dataclass(frozen=True)
class HRank(_FeatureMapCriterion):
    """``hrank``: the average rank of each channel's H x W map (Lin et al. 2020)."""
    name: str = "hrank"

    def reduce(self, a):
        if a.shape[2:] == (1, 1):
            return (a[:, :, 0, 0] != 0).double().sum(0), a.shape[0]
        return torch.linalg.matrix_rank(a.float()).double().sum(0), a.shape[0]


@dataclass(frozen=True)
class APoZ(_FeatureMapCriterion):
    """``apoz``: 1 - the average percentage of zeros (Hu et al. 2016)."""
    name: str = "apoz"

    def reduce(self, a):
        return (a != 0).double().sum((0, 2, 3)), a.shape[0] * a.shape[2] * a.shape[3]


@dataclass(frozen=True)
class MeanActivation(_FeatureMapCriterion):
    """``mean_activation``: the mean of each channel's map (Molchanov et al. 2017)."""
    name: str = "mean_activation"

    def reduce(self, a):
        return a.double().sum((0, 2, 3)), a.shape[0] * a.shape[2] * a.shape[3]


@dataclass(frozen=True)
class Fisher(_FeatureMapCriterion):
    """``fisher``: (1 / 2N) sum_n (sum_hw a * dL_n/da)^2 (Theis et al. 2018)."""
    name: str = "fisher"
    uses_gradient: ClassVar[bool] = True
