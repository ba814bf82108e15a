"""Scaling policies: turn a traced model (rsnet.graph) and a budget into a WidthPlan.

Affine scaling (method.md section 4): a unit (a macro-layer, or macro-layers that must share
a width) with factor s gives every free micro-layer width c' = rint(c / s) (round half to
even), at least ``min_width`` and, with ``round_to``, the nearest multiple of it. Policies:

- ``ResourceScalable`` (``scaling=rs``): the exact chain solver of rsnet.plan.solver under the budget;
- ``Uniform`` (``scaling=uniform``): one factor for all units, the largest widths in budget;
- ``GivenFactors`` (``scaling=factors``): one factor per macro-layer, applied as given;
- ``FromPlan`` (``scaling=plan``): the widths of a plan.json file.
"""

from __future__ import annotations

import logging
import math
from functools import partial
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from rsnet.plan.budget import Budget
from rsnet.errors import RsnetError
from rsnet.graph import ModelGraph
from rsnet.plan import MacroWidth, MicroWidth, WidthPlan
from rsnet.plan.latency import LatencyCost, anchored_factors, interpolated
from rsnet.plan.solver import ChainProblem, solve

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WidthRule:
    """c' = max(min_width, rint(c / s)), rounded to a multiple of ``round_to`` when set (at
    least one multiple); with ``keep_narrow`` a width below one multiple keeps its value instead
    of being lifted to the multiple (the rule then does not move parameters into the narrowest
    layers, e.g. GoogLeNet's 5x5 branches; those layers run outside the blocked kernels)."""

    min_width: int = 1
    round_to: int | None = None
    keep_narrow: bool = False

    def __call__(self, base: np.ndarray | int, factor: np.ndarray | float) -> np.ndarray:
        w = np.rint(np.asarray(base, dtype=float) / factor)
        if self.round_to:
            rounded = np.maximum(np.rint(w / self.round_to) * self.round_to, self.round_to)
            w = np.where(w < self.round_to, w, rounded) if self.keep_narrow else rounded
        return np.maximum(w, self.min_width).astype(np.int64)


class Scaler:
    """The arithmetic shared by the policies: factors per unit -> widths per group -> cost."""

    def __init__(self, graph: ModelGraph, rule: WidthRule, bottleneck: bool = True,
                 latency: LatencyCost | None = None):
        self.graph, self.rule, self.bottleneck = graph, rule, bottleneck
        self.latency = latency  # the layer table of a latency budget (rsnet.plan.latency)
        self.unit_of_macro = {m: u for u, macros in enumerate(graph.units) for m in macros}
        # a group scales with the unit of its macro-layers; groups outside every macro-layer
        # (e.g. a hidden layer of a torchvision head) keep their baseline width
        self.unit_of_group = {g.id: self.unit_of_macro[g.macros[0]] for g in graph.groups if g.macros}
        self.base = {g.id: g.base_width for g in graph.groups}
        self.multiple = {g.id: g.multiple_of for g in graph.groups}
        # the classifier: the last nn.Linear, else the last layer run (a 1x1-conv classifier)
        cls = graph.micro_layer(graph.classifier) if graph.classifier else \
            (graph.micro[-1] if graph.micro else None)
        self.num_outputs = cls.base_width if cls else 0

    def width(self, gid: int, factor: np.ndarray | float) -> np.ndarray:
        """The rule's width for group ``gid`` (a multiple of what its coupling demands)."""
        w, m = self.rule(self.base[gid], factor), self.multiple[gid]
        return w if m == 1 else np.maximum(np.rint(w / m), 1).astype(np.int64) * m

    # -- factors -> widths -> plan
    def group_widths(self, unit_factors: Sequence[float]) -> dict[int, int]:
        return {g: int(self.width(g, unit_factors[u])) for g, u in self.unit_of_group.items()}

    def plan(self, unit_factors: Sequence[float], policy: str, budget: Budget | None,
             baseline: Mapping[str, int]) -> WidthPlan:
        macro_factors = [unit_factors[self.unit_of_macro[m]] for m in range(len(self.graph.macros))]
        return self.plan_from_group_widths(self.group_widths(unit_factors), policy, budget, baseline,
                                           macro_factors)

    def plan_from_group_widths(self, widths: Mapping[int, int], policy: str, budget: Budget | None,
                               baseline: Mapping[str, int], macro_factors: Sequence[float] | None = None
                               ) -> WidthPlan:
        g = self.graph
        problems = g.violations(widths)
        if problems:
            raise RsnetError(f"the widths cannot be built: {'; '.join(problems[:3])}")
        params, macs = g.cost(widths)
        layer = g.layer_widths(widths)
        micro = [MicroWidth(m.name, m.macro, m.base_width, int(layer[m.name]), m.fixed)
                 for m in g.micro]
        held = [m for m in micro if m.fixed and m.macro is not None]
        if held:
            log.info("the plan leaves %d layers at full width (MicroWidth.fixed in plan.json "
                     "says why), e.g. %s", len(held),
                     "; ".join(f"{m.name}: {m.fixed}" for m in held[:3]))
        macro = []
        for i, m in enumerate(g.macros):
            out = int(g.out_width(i, widths))
            factor = macro_factors[i] if macro_factors else round(m.base_out_width / out, 3)
            macro.append(MacroWidth(m.name, float(factor), m.base_out_width, out))
        return WidthPlan(g.model_name, g.input_size[0], self.num_outputs, policy, micro, macro,
                         {"params": int(params), "macs": int(macs)}, dict(baseline),
                         budget.as_dict() if budget else None, [list(u) for u in g.units])

    # -- the chain problem for the solver
    def chain(self, grid: np.ndarray, unit: str) -> ChainProblem:
        """Cost (in params, macs, or latency from ``self.latency``) and feasibility tables of
        every unit factor pair on the grid.

        A term of the cost polynomial (a layer, for latency) belongs to the deeper of the (at
        most two, adjacent) units its groups scale with; the pair table of unit j is indexed
        [f_{j-1}, f_j]. Latency tables hold the layers' sum only (rsnet.plan.latency anchors it).
        """
        g, U, F = self.graph, len(self.graph.units), len(grid)
        width = {gid: self.width(gid, grid).astype(float) for gid in self.unit_of_group}  # (F,)
        tables = [np.zeros(F)] + [np.zeros((F, F)) for _ in range(U - 1)]
        if unit == "latency":
            self._add_latency(tables, width, F)
        else:
            self._add_polynomial(tables, g.params if unit == "params" else g.macs, width, F)
        valid = [np.ones(F, dtype=bool)] + [np.ones((F, F), dtype=bool) for _ in range(U - 1)]
        rules = [(c.small, c.big) for c in g.constraints]  # option-A shortcuts pad, never shrink
        if self.bottleneck:  # keep the baseline's order of consecutive outputs (method.md 5)
            rules += [(g.macros[m - 1].out_form, g.macros[m].out_form) for m in range(1, len(g.macros))
                      if g.macros[m].base_out_width >= g.macros[m - 1].base_out_width]
        for small, big in rules:
            fs, fb = self._form(small.coefs, width, small.const), self._form(big.coefs, width, big.const)
            u = max(fs[0], fb[0])
            valid[u] &= self._lift(fs, u, F) <= self._lift(fb, u, F)
        return ChainProblem(tables[0], tables[1:], valid[0], valid[1:])

    def _add_polynomial(self, tables: list[np.ndarray], poly, width, F: int) -> None:
        tables[0] += float(poly.const)
        for gid, coef in poly.lin.items():
            self._add(tables, self._form({gid: coef}, width), F)
        for (a, b), coef in poly.bil.items():
            fa, fb = self._form({a: 1}, width), self._form({b: 1}, width)
            u = max(fa[0], fb[0])
            self._add(tables, (u, float(coef) * self._lift(fa, u, F) * self._lift(fb, u, F)), F)

    def _add_latency(self, tables: list[np.ndarray], width, F: int) -> None:
        if self.latency is None:
            raise RsnetError("scaling.budget.unit=latency needs a measured layer table (the plan "
                             "stage makes one)")
        for i, spec in enumerate(self.latency.table.specs):
            fi = self._form(spec.in_form.coefs, width, spec.in_form.const)
            fo = self._form(spec.out_form.coefs, width, spec.out_form.const)
            u = max(fi[0], fo[0])
            cin, cout = (np.rint(self._lift(f, u, F)).astype(np.int64) for f in (fi, fo))
            self._add(tables, (u, interpolated(partial(self.latency.layer_ms, i), cin, cout)), F)

    def _form(self, coefs: Mapping[int, object], width: Mapping[int, np.ndarray], const=0
              ) -> tuple[int, np.ndarray]:
        """const + sum(coef x width) as (deepest unit u, table): (F,) over unit u's factor, or
        (F, F) over the factors of units (u - 1, u). Groups outside every unit are constants."""
        units = sorted({self.unit_of_group[g] for g in coefs if g in self.unit_of_group})
        if len(units) == 2 and units[1] - units[0] > 1 or len(units) > 2:
            raise RsnetError("layers of non-adjacent units interact directly (a long skip "
                             "connection): merge those units with scaling.tie, or use scaling=uniform")
        u = units[-1] if units else 0
        F = len(next(iter(width.values())))
        table = np.full((F, F) if len(units) == 2 else (F,), float(const))
        for gid, c in coefs.items():
            unit = self.unit_of_group.get(gid)
            if unit is None:
                table = table + float(c) * self.base[gid]
            elif len(units) == 2:
                table = table + float(c) * (width[gid][:, None] if unit < u else width[gid][None, :])
            else:
                table = table + float(c) * width[gid]
        return u, table

    @staticmethod
    def _lift(form: tuple[int, np.ndarray], u: int, F: int) -> np.ndarray:
        """A form's table over the factors of units (u - 1, u): shape (F, F), or (F,) for u = 0."""
        fu, table = form
        if u == 0 or table.ndim == 2:
            return table
        return np.broadcast_to(table[None, :] if fu == u else table[:, None], (F, F))

    @staticmethod
    def _add(tables: list[np.ndarray], form: tuple[int, np.ndarray], F: int) -> None:
        u, table = form
        tables[u] += table if u == 0 else Scaler._lift(form, u, F)


def fixed_note(graph: ModelGraph) -> str:
    """The constructs that fix widths, for a message about a budget no plan meets."""
    causes = graph.fixed_causes()
    if not causes:
        return ""
    fixed = sum(1 for m in graph.micro if m.fixed)
    return (f". {fixed} of the {len(graph.micro)} conv / linear layers keep their width "
            f"because of constructs the width analysis cannot scale: {causes}")


@dataclass
class ResourceScalable:
    """The thesis method, solved exactly (rsnet.plan.solver states the rule)."""

    grid_start: float = 1.0
    grid_stop: float = 8.0
    grid_step: float = 0.1
    fill: float = 0.01
    max_changes: int = 2
    name: str = "rs"

    def grid(self) -> np.ndarray:
        n = int(round((self.grid_stop - self.grid_start) / self.grid_step)) + 1
        if n < 1 or self.grid_start < 1:
            raise RsnetError("scaling.policy.grid_start must be >= 1 and <= grid_stop")
        return np.round(self.grid_start + self.grid_step * np.arange(n), 6)

    def factors(self, scaler: Scaler, budget: Budget) -> list[float]:
        grid = self.grid()
        problem = scaler.chain(grid, budget.unit)
        if budget.unit == "latency":
            idx, _ = anchored_factors(problem, scaler.latency, budget.value, self.fill,
                                      self.max_changes,
                                      lambda f: scaler.group_widths([grid[i] for i in f]),
                                      [0] * problem.num_units)
            return [float(grid[i]) for i in idx]
        smallest = problem.cost([len(grid) - 1] * problem.num_units)
        if smallest > budget.value:
            raise RsnetError(
                f"no width plan fits the budget of {budget.value:,.0f} {budget.unit}: the smallest "
                f"plan on the grid (every factor {grid[-1]:g}, minimum width {scaler.rule.min_width}) "
                f"costs {smallest:,.0f}. Raise the budget (scaling.budget.*), raise "
                f"scaling.policy.grid_stop or lower scaling.widths.min_width"
                + fixed_note(scaler.graph))
        idx, _ = solve(problem, budget.value, self.fill, self.max_changes)
        return [float(grid[i]) for i in idx]

    def make(self, scaler: Scaler, budget: Budget, baseline: Mapping[str, int]) -> WidthPlan:
        plan = scaler.plan(self.factors(scaler, budget), self.name, budget, baseline)
        if budget.unit == "latency":
            plan.latency = scaler.latency.summary()
            plan.predicted["latency"] = plan.latency["predicted_ms"]
        return plan


@dataclass
class Uniform(ResourceScalable):
    """One factor for every unit (the classic width multiplier; the thesis's "linear")."""

    name: str = "uniform"
    grid_step: float = 0.01
    max_changes: int = 0
    fill: float = 1.0  # any cost in budget is "in the window": the smallest fitting factor wins


@dataclass
class GivenFactors:
    """One factor per macro-layer, applied exactly (e.g. a published configuration)."""

    factors: Sequence[float] = ()
    name: str = "factors"

    def unit_factors(self, scaler: Scaler) -> list[float]:
        g = scaler.graph
        if len(self.factors) != len(g.macros):
            raise RsnetError(f"scaling.policy.factors has {len(self.factors)} entries; the model has "
                             f"{len(g.macros)} macro-layers: {[m.name for m in g.macros]}")
        out = []
        for unit in g.units:
            values = {float(self.factors[m]) for m in unit}
            if len(values) > 1:
                raise RsnetError(f"macro-layers {[g.macros[m].name for m in unit]} share one width "
                                 f"group and need one factor, got {sorted(values)}")
            if min(values) < 1 or math.isnan(min(values)):
                raise RsnetError(f"scaling.policy.factors must be >= 1, got {sorted(values)}")
            out.append(values.pop())
        return out

    def make(self, scaler: Scaler, budget: Budget | None, baseline: Mapping[str, int]) -> WidthPlan:
        return scaler.plan(self.unit_factors(scaler), self.name, budget, baseline)


@dataclass
class FromPlan:
    """The widths of a WidthPlan file (e.g. another run's plan.json), applied exactly."""

    path: str = ""
    name: str = "plan"

    def group_widths(self, scaler: Scaler) -> dict[int, int]:
        plan = WidthPlan.load(self.path)
        given = plan.widths()
        g = scaler.graph
        missing = [m.name for m in g.micro if m.group is not None and m.name not in given]
        if missing:
            raise RsnetError(f"plan file {self.path} does not fit this model: no width for "
                             f"{missing[:5]} (scaling.policy.path)")
        widths: dict[int, int] = {}
        for m in g.micro:
            if m.group is None:
                continue
            if widths.setdefault(m.group, given[m.name]) != given[m.name]:
                raise RsnetError(f"plan file {self.path} gives coupled layers different widths "
                                 f"({m.name}: {given[m.name]} vs {widths[m.group]})")
        return widths

    def make(self, scaler: Scaler, budget: Budget | None, baseline: Mapping[str, int]) -> WidthPlan:
        return scaler.plan_from_group_widths(self.group_widths(scaler), self.name, budget, baseline)
