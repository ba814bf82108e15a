"""Result types of the graph analysis: width forms, cost polynomials, layers, groups.

Widths are channel counts (integers). A *width vector* ``w`` lists one width per coupled
group, indexed by group id (0 .. n_groups-1); :meth:`ModelGraph.width_vector` turns a
partial ``{group id: width}`` mapping into one (missing ids keep the baseline width).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Union

import numpy as np

from rsnet.errors import RsnetError

__all__ = ["Form", "Polynomial", "MicroLayer", "Group", "MacroLayer", "Constraint", "ModelGraph"]

Number = Union[int, Fraction]

# MicroLayer.fixed of a layer whose width is fixed only because the layer feeding it is
INPUT_FIXED = "its input has a fixed width"


def exact(x: Number) -> int | float:
    """An integral value as int; a fractional one (widths breaking a multiple_of rule) as float."""
    x = Fraction(x)
    return int(x) if x.denominator == 1 else float(x)


@dataclass(frozen=True)
class Form:
    """A channel count as an affine function of group widths: ``const + sum(coefs[g] * w[g])``.

    Coefficients are exact: ints, or Fractions where a tensor is cut into equal parts
    (``chunk(2)`` of one group's channels has ``w / 2`` channels).
    """

    const: Number = 0
    coefs: Mapping[int, Number] = field(default_factory=dict)

    @property
    def groups(self) -> tuple[int, ...]:
        """Ids of the groups this width depends on."""
        return tuple(sorted(self.coefs))

    def value(self, w: Sequence[int]) -> int | float:
        """Exact channel count for the width vector ``w``."""
        return exact(self.const + sum(c * w[g] for g, c in self.coefs.items()))

    def evaluate(self, widths: np.ndarray) -> np.ndarray:
        """Vectorised: ``widths`` has shape (..., n_groups); returns shape (...)."""
        out = np.full(widths.shape[:-1], float(self.const))
        for g, c in self.coefs.items():
            out = out + float(c) * widths[..., g]
        return out


class Polynomial:
    """Exact polynomial of degree <= 2 in the group widths.

    ``const + sum_g lin[g] * w[g] + sum_{g <= h} bil[(g, h)] * w[g] * w[h]``: conv weights
    give the bilinear terms (in x out), biases, BN and depthwise convs the linear ones.
    """

    def __init__(self, const: Number = 0, lin: Mapping[int, Number] | None = None,
                 bil: Mapping[tuple[int, int], Number] | None = None) -> None:
        self.const: Number = const
        self.lin: dict[int, Number] = {g: c for g, c in (lin or {}).items() if c}
        self.bil: dict[tuple[int, int], Number] = {k: c for k, c in (bil or {}).items() if c}
        self._arrays: tuple[np.ndarray, ...] | None = None

    @classmethod
    def product(cls, coef: Number, a: Form, b: Form | None = None) -> Polynomial:
        """``coef * a * b`` (``coef * a`` when ``b`` is None)."""
        if b is None:
            b = Form(1)
        const = coef * a.const * b.const
        lin: dict[int, Number] = {}
        for g, c in a.coefs.items():
            lin[g] = lin.get(g, 0) + coef * c * b.const
        for g, c in b.coefs.items():
            lin[g] = lin.get(g, 0) + coef * c * a.const
        bil: dict[tuple[int, int], Number] = {}
        for g, ca in a.coefs.items():
            for h, cb in b.coefs.items():
                key = (min(g, h), max(g, h))
                bil[key] = bil.get(key, 0) + coef * ca * cb
        return cls(const, lin, bil)

    def __add__(self, other: Polynomial) -> Polynomial:
        lin = dict(self.lin)
        for g, c in other.lin.items():
            lin[g] = lin.get(g, 0) + c
        bil = dict(self.bil)
        for k, c in other.bil.items():
            bil[k] = bil.get(k, 0) + c
        return Polynomial(self.const + other.const, lin, bil)

    @property
    def groups(self) -> tuple[int, ...]:
        """Ids of the groups the polynomial depends on."""
        return tuple(sorted(set(self.lin) | {g for k in self.bil for g in k}))

    def value(self, w: Sequence[int]) -> int | float:
        """Exact value for the width vector ``w`` (int when integral)."""
        total = self.const
        for g, c in self.lin.items():
            total += c * w[g]
        for (g, h), c in self.bil.items():
            total += c * w[g] * w[h]
        return exact(total)

    def evaluate(self, widths: np.ndarray) -> np.ndarray:
        """Vectorised float64 value: ``widths`` (..., n_groups) -> (...).

        Exact up to float64 rounding (integers below 2**53 are exact).
        """
        if self._arrays is None:
            li = np.array(list(self.lin), dtype=np.intp)
            lc = np.array([float(c) for c in self.lin.values()])
            bi = np.array([k[0] for k in self.bil], dtype=np.intp)
            bj = np.array([k[1] for k in self.bil], dtype=np.intp)
            bc = np.array([float(c) for c in self.bil.values()])
            self._arrays = (li, lc, bi, bj, bc)
        li, lc, bi, bj, bc = self._arrays
        w = np.asarray(widths, dtype=np.float64)
        out = float(self.const) + w[..., li] @ lc
        if len(bc):
            out = out + (w[..., bi] * w[..., bj]) @ bc
        return out

    def __repr__(self) -> str:
        return (f"Polynomial(const={self.const}, {len(self.lin)} linear, "
                f"{len(self.bil)} bilinear terms)")


@dataclass
class MicroLayer:
    """One ``nn.Conv2d`` or ``nn.Linear`` (its first call, in execution order).

    name: module qualified name; kind: "conv", "depthwise" (groups == in_channels: its
    output width follows its input) or "linear"; base_width / in_width: out and in
    channels (features) at baseline; macro: index of its macro-layer, None outside all
    (the classifier); group: id of the coupled group of its output channels, None when the
    width is fixed (the classifier, ``fixed`` layers, anything coupled to a fixed width) or,
    for a depthwise conv, when its input spans several groups (its width then follows
    ``out_form``). in_form / out_form: its in and out channel counts as functions of the
    group widths. fixed: why its width cannot change (e.g. "`split` in stage1.gunn: splits
    the channels into hard-coded or unequal parts"), None when it can (or follows its input).
    """

    name: str
    kind: str
    base_width: int
    in_width: int
    macro: int | None
    group: int | None
    in_form: Form = field(default_factory=Form, repr=False)
    out_form: Form = field(default_factory=Form, repr=False)
    fixed: str | None = None

    @property
    def free(self) -> bool:
        """True when the layer has a width of its own (not depthwise, not fixed)."""
        return self.kind != "depthwise" and self.group is not None


@dataclass
class Group:
    """Micro-layers whose output widths must be equal (residual adds, depthwise convs, ...).

    members: micro-layer names (depthwise convs included); base_width: channels at
    baseline; multiple_of: the width must be a multiple of this (grouped convs, channel
    shuffles, ``chunk``); macros: macro-layers holding free members of the group.
    """

    id: int
    members: list[str]
    base_width: int
    multiple_of: int = 1
    macros: list[int] = field(default_factory=list)


@dataclass
class MacroLayer:
    """A span of the network between two cut points (method.md section 2).

    micro: its micro-layer names in execution order; in_group_ids / out_group_ids: the
    groups whose channels enter / leave it; base_in_width / base_out_width: channels of
    its input / output tensor at baseline (per spatial position: a flattened output counts
    its channels, not channels x positions); in_form / out_form: those widths as functions
    of the group widths; unit: index into ``ModelGraph.units``.
    """

    index: int
    name: str
    micro: list[str]
    in_group_ids: list[int]
    out_group_ids: list[int]
    base_in_width: int
    base_out_width: int
    in_form: Form = field(default_factory=Form, repr=False)
    out_form: Form = field(default_factory=Form, repr=False)
    unit: int = -1


@dataclass
class Constraint:
    """``small <= big`` must hold for the model to be buildable.

    Option-A shortcuts zero-pad a tensor of ``small`` channels up to ``big``: the pad
    amount follows the widths but cannot be negative. ``where`` names the module.
    """

    small: Form
    big: Form
    where: str


def _short(name: str, prefix: str) -> str:
    """A micro-layer's name relative to its macro-layer's (last component if equal)."""
    return name[len(prefix) + 1:] if name.startswith(prefix + ".") else name.rpartition(".")[2]


@dataclass
class ModelGraph:
    """What :func:`rsnet.graph.analyze` derives from a model.

    micro: micro-layers in execution order; groups: coupled groups (id = index);
    macros: macro-layers in order; units: sorted lists of macro indices that must share one
    scaling factor (shared groups and user ties), ordered by first index (runs of adjacent
    macro-layers for every coupling seen so far; a tie may join distant ones); classifier: the
    last nn.Linear (or None); constraints: pad rules (see :class:`Constraint`).
    params / macs: the exact cost polynomials of the whole model (parameters; conv +
    linear MACs for one image at ``input_size``, as :func:`rsnet.metrics.count_macs`);
    macro_params / macro_macs: the share of each macro-layer (its convs, linears and
    norm layers); rest_params / rest_macs: everything else (stem-free ops, classifier,
    parameters of modules the trace never ran, e.g. aux heads in eval mode).
    """

    model_name: str
    input_size: tuple[int, int]
    micro: list[MicroLayer]
    groups: list[Group]
    macros: list[MacroLayer]
    units: list[list[int]]
    classifier: str | None
    constraints: list[Constraint]
    params: Polynomial
    macs: Polynomial
    macro_params: list[Polynomial]
    macro_macs: list[Polynomial]
    rest_params: Polynomial
    rest_macs: Polynomial

    # -- widths -------------------------------------------------------------------------

    @property
    def base_widths(self) -> list[int]:
        """The baseline width vector (one entry per group)."""
        return [g.base_width for g in self.groups]

    def width_vector(self, widths: Mapping[int, int] | None = None) -> list[int]:
        """Full width vector from ``{group id: width}``; missing ids keep their baseline."""
        w = self.base_widths
        for gid, width in (widths or {}).items():
            if isinstance(gid, bool) or not isinstance(gid, (int, np.integer)) \
                    or not 0 <= gid < len(w):
                raise RsnetError(f"widths: unknown group id {gid!r} (the model has "
                                 f"{len(w)} groups, ids 0..{len(w) - 1})")
            w[int(gid)] = int(width)
        return w

    def describe(self) -> dict:
        """The analysis as JSON (a run's groups.json): micro-layers, groups, macro-layers, units."""
        return {"micro": [{"name": m.name, "kind": m.kind, "base_width": m.base_width,
                           "macro": m.macro, "group": m.group} for m in self.micro],
                "groups": [{"id": g.id, "members": g.members, "base_width": g.base_width}
                           for g in self.groups],
                "macro": [{"index": m.index, "name": m.name, "micro": m.micro, "unit": m.unit,
                           "base_out_width": m.base_out_width} for m in self.macros],
                "units": self.units}

    def fixed_causes(self, limit: int = 3) -> str:
        """Why widths are fixed, most frequent construct first (``""`` when none is): e.g.
        "36 layers: a linear layer on a tensor that is not (batch, features) (first:
        features.1.0.block.3)". Layers fixed only because their input is, and the
        classifier, are not causes."""
        causes: dict[str, list[str]] = {}
        for m in self.micro:
            if m.fixed and m.fixed != INPUT_FIXED and m.name != self.classifier:
                where, sep, why = m.fixed.rpartition(": ")
                causes.setdefault(why if sep else m.fixed, []).append(m.name)
        ranked = sorted(causes.items(), key=lambda kv: -len(kv[1]))[:limit]
        return "; ".join(f"{len(names)} layer{'s' * (len(names) > 1)}: {why} (first: {names[0]})"
                         for why, names in ranked)

    def micro_layer(self, name: str) -> MicroLayer:
        for m in self.micro:
            if m.name == name:
                return m
        raise RsnetError(f"no micro-layer (nn.Conv2d / nn.Linear) named {name!r}")

    def group_of(self, name: str) -> int | None:
        """Group id of a micro-layer's output channels (None: fixed width)."""
        return self.micro_layer(name).group

    def layer_widths(self, widths: Mapping[int, int] | None = None) -> dict[str, int | float]:
        """Output width of every micro-layer for the given group widths."""
        w = self.width_vector(widths)
        return {m.name: m.out_form.value(w) for m in self.micro}

    def widths_from_layers(self, layer_widths: Mapping[str, int]) -> dict[int, int]:
        """Group widths from micro-layer output widths (e.g. read off a rebuilt model).

        Every given layer must agree with its group (and fixed layers with their baseline);
        raises RsnetError naming the first conflict.
        """
        known = {m.name: m for m in self.micro}
        out: dict[int, int] = {}
        for name, width in layer_widths.items():
            m = known.get(name)
            if m is None:
                raise RsnetError(f"layer_widths: no micro-layer named {name!r}")
            if m.group is not None and m.out_form.coefs == {m.group: 1} and m.out_form.const == 0:
                if out.setdefault(m.group, int(width)) != width:
                    others = self.groups[m.group].members
                    raise RsnetError(f"layer_widths: {name} has width {width}, but its coupled "
                                     f"group {m.group} ({', '.join(others)}) has {out[m.group]}")
        w = self.width_vector(out)
        for name, width in layer_widths.items():
            expected = known[name].out_form.value(w)
            if expected != width:
                raise RsnetError(f"layer_widths: {name} has width {width}, but its coupling "
                                 f"(fixed width or input width) makes it {expected}")
        return out

    def violations(self, widths: Mapping[int, int] | None = None) -> list[str]:
        """Why a width choice cannot be built (empty list: it can)."""
        w = self.width_vector(widths)
        problems = []
        for g in self.groups:
            if w[g.id] < 1:
                problems.append(f"group {g.id} ({g.members[0]}): width {w[g.id]} < 1")
            elif w[g.id] % g.multiple_of:
                problems.append(f"group {g.id} ({g.members[0]}): width {w[g.id]} is not a "
                                f"multiple of {g.multiple_of}")
        for c in self.constraints:
            if c.small.value(w) > c.big.value(w):
                problems.append(f"{c.where}: pads {c.small.value(w)} channels to "
                                f"{c.big.value(w)} (cannot shrink)")
        return problems

    # -- cost ---------------------------------------------------------------------------

    def cost(self, widths: Mapping[int, int] | None = None) -> tuple[int, int]:
        """Exact (parameters, MACs) of the model at the given group widths."""
        w = self.width_vector(widths)
        return self.params.value(w), self.macs.value(w)

    def cost_array(self, widths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vectorised (parameters, MACs): ``widths`` has shape (..., n_groups)."""
        return self.params.evaluate(widths), self.macs.evaluate(widths)

    def macro_cost(self, index: int, widths: Mapping[int, int] | None = None) -> tuple[int, int]:
        """(parameters, MACs) of one macro-layer (its input width enters its first convs)."""
        w = self.width_vector(widths)
        return self.macro_params[index].value(w), self.macro_macs[index].value(w)

    # -- macro-layers -------------------------------------------------------------------

    def macro_index(self, key: int | str) -> int:
        """Index of a macro-layer given by index or name."""
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            if 0 <= key < len(self.macros):
                return int(key)
        else:
            for m in self.macros:
                if m.name == key:
                    return m.index
        raise RsnetError(f"unknown macro-layer {key!r}; valid: 0..{len(self.macros) - 1} or "
                         f"{', '.join(m.name for m in self.macros)}")

    def macro_io(self, index: int) -> tuple[list[int], list[int]]:
        """(group ids entering, group ids leaving) macro-layer ``index``."""
        m = self.macros[index]
        return list(m.in_group_ids), list(m.out_group_ids)

    def in_width(self, index: int, widths: Mapping[int, int] | None = None) -> int | float:
        """Channels of the tensor entering macro-layer ``index``."""
        return self.macros[index].in_form.value(self.width_vector(widths))

    def out_width(self, index: int, widths: Mapping[int, int] | None = None) -> int | float:
        """Channels of macro-layer ``index``'s output (concatenated groups summed)."""
        return self.macros[index].out_form.value(self.width_vector(widths))

    def summary(self) -> str:
        """A readable table of the macro-layers, their micro-layers and groups."""
        lines = [f"{self.model_name} at {self.input_size[0]}x{self.input_size[1]}: "
                 f"{len(self.micro)} micro-layers, {len(self.groups)} groups, "
                 f"{len(self.macros)} macro-layers, {len(self.units)} units; "
                 f"{self.params.value(self.base_widths):,} params, "
                 f"{self.macs.value(self.base_widths):,} MACs"]
        for m in self.macros:
            layers = ", ".join(f"{_short(x.name, m.name)}"
                               f"[{x.base_width}{'' if x.group is None else f' g{x.group}'}]"
                               for x in self.micro if x.macro == m.index)
            lines.append(f"  {m.index:3d} {m.name:<24} unit {m.unit:<3d} "
                         f"in {m.base_in_width:<5d} out {m.base_out_width:<5d} {layers}")
        rest = [x.name for x in self.micro if x.macro is None]
        if rest:
            lines.append(f"  outside: {', '.join(rest)}")
        return "\n".join(lines)
