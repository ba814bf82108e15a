"""``prune_to_widths``: physically prune a model so every conv / linear has a given width."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from rsnet.errors import RsnetError
from rsnet.models.layers import check_width
from rsnet.compress.criteria import Criterion, Magnitude, check_calibration, score_groups
from rsnet.compress.dependency import (LAYERS, GroupPlan, build_graph, frozen_index_mapping,
                                layer_width, output_layer, plan_groups, preserve_state,
                                prune_together, train_only_layers)
from rsnet.compress.shortcut import convert_pad_shortcuts

__all__ = ["prune_to_widths", "current_widths", "EXAMPLE_SHAPE_ATTR"]

#: Attribute set on a pruned model: the example-input shape it was pruned with (used by
#: :func:`rsnet.compress.save_pruned` to rebuild the structure later).
EXAMPLE_SHAPE_ATTR = "rsnet_prune_input_shape"


def current_widths(model: nn.Module) -> dict[str, int]:
    """Output width of every conv / linear of ``model``, by module name."""
    return {n: layer_width(m) for n, m in model.named_modules() if isinstance(m, LAYERS)}


def _check_widths(model: nn.Module, widths: Mapping[str, int]) -> dict[str, int]:
    if not isinstance(widths, Mapping):
        raise RsnetError(f"widths must map conv / linear names to widths, got "
                         f"{type(widths).__name__}")
    layers = current_widths(model)
    out = {}
    for name, w in widths.items():
        if name not in layers:
            known = ", ".join(list(layers)[:5])
            raise RsnetError(f"widths names {name!r}, which is not a conv / linear layer of "
                             f"{type(model).__name__} (layers are e.g. {known}); does the plan "
                             f"belong to this model?")
        out[name] = check_width(w, f"widths[{name!r}]")
    return out


def _output_shapes(model: nn.Module, x: torch.Tensor) -> list[tuple[int, ...]]:
    with preserve_state(model), torch.no_grad():
        model.eval()
        out = model(x)
    outs = out if isinstance(out, (tuple, list)) else [out]
    return [tuple(o.shape) for o in outs]


def _lowest(scores: torch.Tensor, plan: GroupPlan) -> list[int]:
    """The ``size - target`` root channels to remove: the lowest scores, ties by index.

    With ``plan.blocks`` > 1 (grouped convs) the same positions of every block go, ranked
    by the score averaged over the blocks (as torch-pruning's own pruners do), so each conv
    group keeps an equal share and the group count stays.
    """
    per = plan.size // plan.blocks
    drop = (plan.size - plan.target) // plan.blocks
    mean = scores.reshape(plan.blocks, per).mean(0)
    order = torch.argsort(mean, stable=True)[:drop].tolist()  # ascending: lowest first
    return sorted(b * per + i for b in range(plan.blocks) for i in order)


def prune_to_widths(model: nn.Module, widths: Mapping[str, int], example_input: torch.Tensor,
                    criterion: Criterion = Magnitude(), calib: Iterable | None = None,
                    seed: int = 0) -> nn.Module:
    """Prune ``model`` in place so that each layer named in ``widths`` has that many outputs.

    Args:
        model: the network (a trained baseline, or an already pruned one: pruning again to
            smaller widths is the iterative schedule). Option-A ``PadShortcut`` modules are
            first replaced by equivalent :class:`rsnet.compress.IndexShortcut` modules.
        widths: ``{conv / linear module name: target output width}``, e.g.
            ``WidthPlan.widths()``; layers not named keep their width. Coupled layers (one
            torch-pruning group: a residual stream, a depthwise conv and its producer) must
            be given equal widths; the classifier and train-only layers (aux heads) can
            only be given their current width.
        example_input: a batch shaped like the model's input, e.g. ``(1, 3, 32, 32)``
            (used to trace the dependency graph; its values do not matter).
        criterion: channel-importance criterion (:mod:`rsnet.compress.criteria`; L1 norm
            by default).
        calib: iterable of ``(x, y)`` batches (normalised float images, int64 targets),
            required by the data-driven criteria; iterated once.
        seed: seed of the ``random`` criterion.

    Per group (torch-pruning.md section 4): score its root channels once on the unpruned
    model, take the ``n - target`` lowest (the same positions of every conv group where
    grouped convs split the channels) and get ``DG.get_pruning_group(root,
    prune_out_channels, idxs)``; all groups are then pruned in one pass. The classifier is
    the last nn.Linear, or the last conv run when there is none (SqueezeNet). Train-only layers (GoogLeNet's
    aux head) are traced with a training-mode forward (BN statistics restored), so their
    input channels follow the pruning of the layer feeding them.

    Returns ``model``. Raises RsnetError for widths that cannot be met.
    """
    check_calibration(criterion, calib)
    targets = _check_widths(model, widths)
    if not isinstance(example_input, torch.Tensor):
        raise RsnetError("example_input must be a tensor shaped like one input batch")
    p = next(model.parameters(), None)
    x = example_input.to(p.device if p is not None else "cpu")
    convert_pad_shortcuts(model)
    shapes = _output_shapes(model, x)

    train_only = train_only_layers(model, x)
    DG = build_graph(model, x, train_mode=bool(train_only))
    classifier = output_layer(model, x)
    ignored = [model.get_submodule(classifier)] + [model.get_submodule(n) for n in train_only]
    with frozen_index_mapping(DG):  # nothing is pruned until prune_together
        plans, covered = plan_groups(model, DG, targets, ignored)
        now = current_widths(model)
        for name, w in targets.items():
            if name not in covered and w != now[name]:
                why = ("the classifier" if name == classifier else
                       "a train-only layer" if name in train_only else "a fixed-width layer")
                raise RsnetError(f"widths[{name!r}]={w}, but {name} is {why} and keeps its "
                                 f"{now[name]} outputs; give it {now[name]} or leave it out")
        scores = score_groups(model, plans, criterion, calib, seed)
        groups = []
        for plan in plans:
            idxs = _lowest(scores[plan.root], plan)
            pruner = DG.get_pruner_of_module(plan.module)
            group = DG.get_pruning_group(plan.module, pruner.prune_out_channels, idxs)
            if not DG.check_pruning_group(group):
                raise RsnetError(f"cannot prune {', '.join(plan.names)} to {plan.target} "
                                 f"channels (a coupled layer would be left with none)")
            groups.append(group)
    prune_together(DG, groups)

    got = current_widths(model)
    wrong = {n: (w, got[n]) for n, w in targets.items() if got[n] != w}
    if wrong:  # torch-pruning and the plan disagree: a bug, not a user error
        raise RuntimeError(f"pruning missed the target widths (target, got): {wrong}")
    if _output_shapes(model, x) != shapes:
        raise RuntimeError(f"pruning changed the output shape {shapes} -> "
                           f"{_output_shapes(model, x)}")
    setattr(model, EXAMPLE_SHAPE_ATTR, tuple(x.shape))
    return model
