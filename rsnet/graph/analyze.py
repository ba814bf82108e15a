"""``analyze(model, input_size)``: trace, propagate channels, find macro-layers, build costs."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from fractions import Fraction

import torch
from torch import nn
from torch.fx import Node

from rsnet.errors import RsnetError
from rsnet.graph.channels import ChannelPass
from rsnet.graph.segments import Chan, Segs, simplify
from rsnet.graph.structure import (assign_macros, chain_units, cut_points, data_flow_order,
                                   macro_name, spans, units)
from rsnet.graph.trace import propagate, trace
from rsnet.graph.types import (INPUT_FIXED, Constraint, Form, Group, MacroLayer, MicroLayer,
                               ModelGraph, Polynomial)

__all__ = ["analyze"]

log = logging.getLogger(__name__)


def _size(input_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(input_size, int) and not isinstance(input_size, bool) and input_size > 0:
        return input_size, input_size
    if isinstance(input_size, Sequence) and len(input_size) == 2 \
            and all(isinstance(v, int) and v > 0 for v in input_size):
        return int(input_size[0]), int(input_size[1])
    raise RsnetError(f"input_size must be a positive int (or [height, width]), got {input_size!r}")


def _check_fixed(fixed: Iterable[str], modules: dict[str, nn.Module]) -> set[str]:
    out = set()
    for name in fixed:
        if not isinstance(modules.get(name), (nn.Conv2d, nn.Linear)):
            known = [n for n, m in modules.items() if isinstance(m, (nn.Conv2d, nn.Linear))]
            raise RsnetError(f"fixed: {name!r} is not an nn.Conv2d / nn.Linear of the model "
                             f"(e.g. {', '.join(known[:6])})")
        out.add(name)
    return out


def _check_leaves(leaf_modules: Iterable[str | type],
                  modules: dict[str, nn.Module]) -> tuple[set[str], tuple[type, ...]]:
    names, kinds = set(), []
    for leaf in leaf_modules:
        if isinstance(leaf, type) and issubclass(leaf, nn.Module):
            kinds.append(leaf)
        elif isinstance(leaf, str) and leaf in modules and leaf:
            names.add(leaf)
        else:
            raise RsnetError(f"leaf_modules: {leaf!r} is neither a submodule name of the model "
                             f"nor an nn.Module class")
    return names, tuple(kinds)


def analyze(model: nn.Module, input_size: int | Sequence[int], fixed: Iterable[str] = (),
            tie: Iterable[Sequence[int | str]] = (), leaf_modules: Iterable[str | type] = (),
            in_channels: int = 3, prunable: bool = False) -> ModelGraph:
    """Derive micro-layers, coupled groups, macro-layers, units and the cost model of a CNN.

    Args:
        model: any CNN that torch.fx can trace (traced in eval mode; its mode is restored).
        input_size: image side in pixels (or [height, width]); the cost is for one
            (1, in_channels, H, W) image, MACs as :func:`rsnet.metrics.count_macs`.
        fixed: names of nn.Conv2d / nn.Linear layers whose width must not change (the
            classifier, the last nn.Linear, always is); everything coupled to them is too.
        tie: lists of macro-layer names or indices that must share one scaling factor
            (e.g. MobileNet's five 512-channel blocks).
        leaf_modules: submodule names or nn.Module classes that torch.fx must not trace
            into. Such a module counts as one layer: a channel passthrough if it has no
            parameters and keeps its input's channel count, a per-channel layer if it is a
            norm layer, otherwise a fixed-width layer (inputs fixed, parameters and MACs
            constant).
        in_channels: channels of the input image.
        prunable: the widths will be realised by pruning (rsnet.compress), not by building the
            model from scratch: also fix the widths of constructs the pruner cannot select
            channels through (channel shuffles), which a from-scratch build can scale.

    Every fixed width says why in ``MicroLayer.fixed`` (and ``WidthPlan`` carries it).
    Raises RsnetError for untraceable models (naming the module to pass as a leaf), bad
    settings, and input sizes the model cannot run at.
    """
    h, w = _size(input_size)
    modules = dict(model.named_modules())
    fixed_names = _check_fixed(fixed, modules)
    leaf_names, leaf_types = _check_leaves(leaf_modules, modules)
    linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
    classifier = linears[-1] if linears else None

    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        gm = trace(model, leaf_names, leaf_types)
        p = next(model.parameters(), None)
        x = torch.zeros(1, in_channels, h, w, device=p.device if p is not None else "cpu",
                        dtype=p.dtype if p is not None and p.is_floating_point() else torch.float32)
        node_macs = propagate(gm, x, f"input_size={input_size}")
    finally:
        for m, mode in modes.items():
            m.train(mode)

    cp = ChannelPass(gm, node_macs, fixed_names, classifier, prunable)
    cp.run()
    return _build(model, gm, cp, node_macs, (h, w), classifier, tie)


def _build(model: nn.Module, gm: torch.fx.GraphModule, cp: ChannelPass,
           node_macs: dict[Node, int], size: tuple[int, int], classifier: str | None,
           tie: Iterable[Sequence[int | str]]) -> ModelGraph:
    """Assemble the ModelGraph from a finished channel pass, one phase after another.

    Groups are numbered by the first ``_Builder.gid`` call on their token (execution
    order), so the phases must keep this order: micro-layers, groups, costs, the
    macro-layers' input/output forms, constraints.
    """
    b = _Builder(cp)
    b.fix_unattached_pads()
    b.classify_micro()
    b.find_macros(gm)
    micro = b.micro_layers()
    groups = b.groups(micro)
    unit_list = units(len(b.names), [g.macros for g in groups] + _parse_ties(tie, b.names))
    per_macro, rest = b.costs(model)
    params = sum(per_macro["params"], rest["params"])
    macs = sum(per_macro["macs"], rest["macs"])
    macro_layers = b.macro_layers(groups, unit_list)
    constraints = b.constraints()
    unit_list = _merge_units(type(model).__name__, unit_list, groups, macro_layers,
                             (params, macs), constraints)
    graph = ModelGraph(type(model).__name__, size, micro, groups, macro_layers, unit_list,
                       classifier, constraints, params, macs, per_macro["params"],
                       per_macro["macs"], rest["params"], rest["macs"])
    _self_check(model, graph, node_macs, len(b.gid_of))
    return graph


class _Builder:
    """The state the phases of :func:`_build` share: the channel pass, its tokens, the
    group numbering (``gid_of``) and, once found, the micro-layers' groups and the
    macro-layers."""

    def __init__(self, cp: ChannelPass):
        self.cp = cp
        self.tokens = cp.tokens
        self.gid_of: dict[int, int] = {}  # token root -> group id, numbered in execution order

    def gid(self, token: int) -> int | None:
        r = self.tokens.find(token)
        if self.tokens.fixed[r]:
            return None
        return self.gid_of.setdefault(r, len(self.gid_of))

    def form(self, segs: Segs | None) -> Form:
        const: int | Fraction = 0
        coefs: dict[int, int | Fraction] = {}
        for t, m in segs or ():
            g = None if t is None else self.gid(t)
            if g is None:
                const += m if t is None else m * self.tokens.base[self.tokens.find(t)]
            else:
                coefs[g] = coefs.get(g, 0) + m
        return Form(const, coefs)

    def fix_unattached_pads(self) -> None:
        """A pad width coupled to no layer (its add partner was fixed, or none) is fixed."""
        tokens = self.tokens
        for t in range(len(tokens.parent)):
            r = tokens.find(t)
            if not tokens.has_layer[r]:
                tokens.fix(r, f"{tokens.origin[r]}: a channel pad added to no layer")

    def classify_micro(self) -> None:
        """Micro-layers, their groups and why a width is fixed (``group_of``, ``fixed_why``)."""
        tokens = self.tokens
        self.records = {r.name: r for r in self.cp.micro}
        self.group_of: dict[str, int | None] = {}
        self.fixed_why: dict[str, str | None] = {}
        for r in self.cp.micro:
            out = self.cp.norm(r.out_segs) if r.out_segs is not None else None
            single = out is not None and len(out) == 1 and out[0][0] is not None and out[0][1] == 1
            self.group_of[r.name] = self.gid(out[0][0]) if single else None
            if out is not None:
                self.form(out)  # number the groups in execution order
            roots = [tokens.find(t) for t, _ in out or () if t is not None]
            if out is None:
                self.fixed_why[r.name] = r.fixed_reason or "its width is not modelled"
            elif roots and all(tokens.fixed[t] for t in roots):
                self.fixed_why[r.name] = tokens.reason[roots[0]]
            else:  # free, or a depthwise conv that follows its (partly free) input
                self.fixed_why[r.name] = None if roots else INPUT_FIXED

    def free(self, name: str) -> bool:
        return self.records[name].kind != "depthwise" and self.group_of[name] is not None

    def find_macros(self, gm: torch.fx.GraphModule) -> None:
        """Macro-layers from the cut points of the data-flow graph, with unique names."""
        self.order = data_flow_order(gm.graph)
        micro_of = {r.node: r.name for r in self.cp.micro}
        self.cut = cut_points(self.order)
        self.macro_micro, self.node_macro = assign_macros(spans(self.order, self.cut), micro_of,
                                                          self.free)
        self.macro_of_layer = {name: i for i, names in enumerate(self.macro_micro)
                               for name in names}
        all_names = [r.name for r in self.cp.micro]
        names = [macro_name(ms, all_names) for ms in self.macro_micro]
        for i, n in enumerate(names):
            if names.count(n) > 1:
                names[i] = f"{n}#{i}"
        self.names = names

    def micro_layers(self) -> list[MicroLayer]:
        return [MicroLayer(r.name, r.kind, r.base_width, r.in_width,
                           self.macro_of_layer.get(r.name), self.group_of[r.name],
                           self.form(r.in_segs),
                           self.form(r.out_segs) if r.out_segs is not None else Form(r.base_width),
                           self.fixed_why[r.name])
                for r in self.cp.micro]

    def groups(self, micro: list[MicroLayer]) -> list[Group]:
        groups: list[Group] = []
        roots = sorted(self.gid_of, key=self.gid_of.get)
        for g, r in enumerate(roots):
            members = [m.name for m in micro if m.group == g]
            macros = sorted({m.macro for m in micro
                             if m.group == g and m.free and m.macro is not None})
            groups.append(Group(g, members, self.tokens.base[r], self.tokens.multiple[r], macros))
        return groups

    def costs(self, model: nn.Module) -> tuple[dict[str, list[Polynomial]], dict[str, Polynomial]]:
        """Cost polynomials split by macro-layer: (per macro-layer, outside every macro-layer)."""
        cp = self.cp
        zero = Polynomial()
        per_macro = {"params": [zero] * len(self.names), "macs": [zero] * len(self.names)}
        rest = {"params": zero, "macs": zero}

        def add(measure: str, node: Node | None, poly: Polynomial) -> None:
            i = self.node_macro.get(node) if node is not None else None
            if i is None:
                rest[measure] = rest[measure] + poly
            else:
                per_macro[measure][i] = per_macro[measure][i] + poly

        for term in cp.terms:
            a = self.form(term.a) if term.a is not None else Form(1)
            b = self.form(term.b) if term.b is not None else None
            add(term.measure, term.node, Polynomial.product(term.coef, a, b))
        owner = {}
        for mod_name, mod in model.named_modules():
            for p in mod.parameters(recurse=False):
                owner.setdefault(id(p), mod_name)
        for p in model.parameters():  # parameters not modelled per channel count as constants
            if id(p) not in cp.symbolic_params:
                add("params", cp.first_call.get(owner.get(id(p), "")), Polynomial(p.numel()))
        return per_macro, rest

    def io_form(self, node: Node | None) -> tuple[Form, list[int]]:
        """The channels per spatial position of a tensor, and the groups they depend on."""
        if node is None:
            return Form(0), []
        d = self.cp.desc[node]
        f = self.form(d.segs)  # per spatial position: a flattened tensor counts its channels
        per_position = Form(simplify(Fraction(f.const) / d.spatial),
                            {g: simplify(Fraction(c) / d.spatial) for g, c in f.coefs.items()})
        return per_position, sorted(f.coefs)

    def macro_layers(self, groups: list[Group], unit_list: list[list[int]]) -> list[MacroLayer]:
        """What enters and leaves each macro-layer: the last cut point (a tensor every path
        passes) before its first node, and the last cut point among its own nodes."""
        order, cut, desc = self.order, self.cut, self.cp.desc
        unit_of = {i: u for u, members in enumerate(unit_list) for i in members}
        first_pos: dict[int, int] = {}
        last_cut: dict[int, Node] = {}
        for pos, node in enumerate(order):
            i = self.node_macro.get(node)
            if i is not None:
                first_pos.setdefault(i, pos)
                if cut[pos] and isinstance(desc.get(node), Chan):
                    last_cut[i] = node

        base = [g.base_width for g in groups]
        macro_layers = []
        for i, n in enumerate(self.names):
            before = [node for pos, node in enumerate(order[:first_pos[i]])
                      if cut[pos] and isinstance(desc.get(node), Chan)]
            fin, gin = self.io_form(before[-1] if before else None)
            fout, gout = self.io_form(last_cut.get(i))
            macro_layers.append(MacroLayer(i, n, self.macro_micro[i], gin, gout,
                                           int(fin.value(base)), int(fout.value(base)), fin,
                                           fout, unit_of[i]))
        return macro_layers

    def constraints(self) -> list[Constraint]:
        return [Constraint(self.form(p.inner), self.form(p.outer), p.where) for p in self.cp.pads
                if self.form(p.outer).coefs]


def _parse_ties(tie: Iterable[Sequence[int | str]], names: list[str]) -> list[list[int]]:
    """The user's ``tie`` entries as lists of macro-layer indices."""
    macro_names = {n: i for i, n in enumerate(names)}
    ties = []
    for entry in tie:
        if isinstance(entry, (str, bytes)) or not isinstance(entry, Sequence):
            raise RsnetError(f"tie: each entry must be a list of macro-layer names or indices, "
                             f"got {entry!r}")
        idx = []
        for key in entry:
            if isinstance(key, str) and key in macro_names:
                idx.append(macro_names[key])
            elif isinstance(key, int) and not isinstance(key, bool) and 0 <= key < len(names):
                idx.append(key)
            else:
                raise RsnetError(f"tie: unknown macro-layer {key!r}; valid: 0..{len(names) - 1} "
                                 f"or {', '.join(names)}")
        ties.append(idx)
    return ties


def _merge_units(model_name: str, unit_list: list[list[int]], groups: list[Group],
                 macro_layers: list[MacroLayer], polys: tuple[Polynomial, Polynomial],
                 constraints: list[Constraint]) -> list[list[int]]:
    """The units, merged where a layer reads the widths of non-adjacent ones.

    The solver's pair tables need every cost term and width comparison to read at most
    two consecutive units (DenseNet: a transition reads the stem and every layer of its
    block). Updates ``MacroLayer.unit`` when units merge.
    """
    def macros_of(gids: Iterable[int]) -> set[int]:  # a group's macro-layers share one unit
        return {groups[g].macros[0] for g in gids if groups[g].macros}

    interacting = [macros_of(pair) for poly in polys for pair in poly.bil]
    interacting += [macros_of([*c.small.coefs, *c.big.coefs]) for c in constraints]
    outs = [m.out_form.coefs for m in macro_layers]
    interacting += [macros_of([*outs[i - 1], *outs[i]]) for i in range(1, len(outs))]
    merged = chain_units(unit_list, [m for m in interacting if len(m) > 1])
    if len(merged) == len(unit_list):
        return unit_list
    log.info("%s: layers read the widths of non-adjacent units, so %d units become %d",
             model_name, len(unit_list), len(merged))
    for u, members in enumerate(merged):
        for i in members:
            macro_layers[i].unit = u
    return merged


def _self_check(model: nn.Module, graph: ModelGraph, node_macs: dict[Node, int],
                n_groups: int) -> None:
    """Compare the cost model with the real counts at baseline: a mismatch is a bug here."""
    expected = (sum(p.numel() for p in model.parameters()), sum(node_macs.values()))
    if graph.cost() != expected or n_groups != len(graph.groups):
        raise RuntimeError(f"graph analysis of {type(model).__name__} is inconsistent: "
                           f"cost model {graph.cost()} vs counted {expected} "
                           f"(a bug in rsnet.graph)")
