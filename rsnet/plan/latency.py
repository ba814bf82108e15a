"""A latency budget for the width solver (``scaling.budget.unit=latency``, method.md section 3).

The rs and uniform policies plan one-shot against NetAdapt's layer latency table
(:mod:`rsnet.deploy.latency_table`: single-layer ONNX models timed on this machine with
ONNX Runtime at batch 1, ``scaling.budget.threads`` threads), in place of the parameter or
MAC polynomial. A layer's latency depends on its input and output widths, which come from
at most two consecutive units, so the estimate keeps the chain shape the exact solver needs
(rsnet.plan.solver): each layer gives a table over its unit's factor (or the factor pair of
the two units it joins), summed into the chain's ``first`` and ``pair`` tables.

Measuring a cross-unit layer at every factor pair of the grid would take thousands of
single-layer runs, so a layer whose factors give more than ``EXACT_LIMIT`` distinct channel
pairs is measured on a lattice of at most ``LATTICE`` factors per unit (evenly spaced grid
indices, the ends included) and interpolated linearly in between (bilinear for a pair).

Calibration (NetAdapt's anchoring, extended): sums of single-layer runs miss what lies
between the layers (pooling, concatenation, residual adds, each run's fixed overhead), and
part of that grows with the widths, not always in proportion. So the estimate is a line in
the table's sum, ``m_ref + slope x (table(w) - t_ref)``, through measured whole models (fresh
weights, exported, timed): first the widest and the narrowest plan on the grid. The plan it
gives is built and measured too; when its measured latency is more than ``TOLERANCE`` away
from the prediction, it joins the measured points and the solver runs again on the line
through the two points that bracket the budget most tightly (regula falsi on the table's
sum), at most ``ROUNDS`` times. The plan keeps every round: the line, predicted and measured
ms, and the final relative error. A budget the narrowest plan cannot meet (measured) is an
error naming the setting.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from rsnet.deploy.latency_table import LatencyTable
from rsnet.errors import RsnetError
from rsnet.plan.solver import ChainProblem, solve

log = logging.getLogger(__name__)

RUNTIMES = ("onnxruntime",)  # runtimes with a layer latency table
EXACT_LIMIT = 48  # a layer with at most this many distinct (in, out) channel pairs: all measured
LATTICE = 12  # else: at most this many factors per unit, interpolated between
TOLERANCE = 0.05  # solve again when |measured - predicted| > TOLERANCE x measured ...
ROUNDS = 3  # ... at most this many solves
SESSIONS = 3  # a whole model's latency: its fastest run in this many ONNX Runtime sessions


def lattice(F: int, points: int = LATTICE) -> np.ndarray:
    """At most ``points`` evenly spaced indices of a grid of ``F`` factors, both ends included."""
    return np.unique(np.rint(np.linspace(0, F - 1, min(points, F))).astype(int))


def interpolated(measure: Callable[[int, int], float], cin: np.ndarray, cout: np.ndarray
                 ) -> np.ndarray:
    """``measure(cin, cout)`` at every cell of the (F,) or (F, F) channel tables: exactly where
    they hold few distinct pairs, else on the lattice and interpolated linearly (per axis)."""
    pairs = set(zip(cin.ravel().tolist(), cout.ravel().tolist()))
    if len(pairs) <= EXACT_LIMIT:
        ms = {p: measure(*p) for p in pairs}
        return np.vectorize(lambda a, b: ms[(a, b)], otypes=[float])(cin, cout)
    F = cin.shape[0]
    at, full = lattice(F), np.arange(F)
    if cin.ndim == 1:
        return np.interp(full, at, [measure(cin[i], cout[i]) for i in at])
    grid = np.array([[measure(cin[i, j], cout[i, j]) for j in at] for i in at])
    rows = np.array([np.interp(full, at, r) for r in grid])  # (len(at), F): along the unit's own factor
    return np.array([np.interp(full, at, rows[:, j]) for j in range(F)]).T


@dataclass
class LatencyCost:
    """What the solver needs for a latency budget: the layer table and a way to measure a
    whole model at given group widths (``measure_ms``: {group id: width} -> ms)."""

    table: LatencyTable
    measure_ms: Callable[[Mapping[int, int]], float]
    runtime: str = "onnxruntime"
    rounds: list[dict] = field(default_factory=list)  # one per solve: predicted / measured ms
    calibration: dict = field(default_factory=dict)  # the two measured ends of the grid

    def layer_ms(self, spec_index: int, cin: int, cout: int) -> float:
        spec = self.table.specs[spec_index]
        return self.table.layer_ms(spec, max(int(cin), 1), max(int(cout), 1))

    def summary(self) -> dict:
        last = self.rounds[-1]
        return {"runtime": self.runtime, "threads": self.table.threads, "batch_size": 1,
                "predicted_ms": last["predicted_ms"], "measured_ms": last["measured_ms"],
                "error": last["measured_ms"] / last["predicted_ms"] - 1,
                "lut_entries": len(self.table.entries), "rounds": list(self.rounds),
                **self.calibration}


def anchored_factors(problem: ChainProblem, cost: LatencyCost, budget: float, fill: float,
                     max_changes: int, widths_of: Callable[[list[int]], dict[int, int]],
                     start: list[int]) -> tuple[list[int], float]:
    """The solver's factor indices under a latency budget, calibrated on measured models until
    a plan's measured latency is within TOLERANCE of its prediction (or ROUNDS solves).

    ``problem``: the chain's raw table sums; ``widths_of``: factor indices -> group widths;
    ``start``: the widest factor indices (the full-width model). Returns (factor indices,
    predicted ms)."""
    narrowest = [len(problem.first) - 1] * problem.num_units
    points = [(problem.cost(f), cost.measure_ms(widths_of(f))) for f in (start, narrowest)]
    if points[1][1] > budget:
        raise RsnetError(
            f"no width plan fits the latency budget of {budget:.3f} ms: the narrowest plan on the "
            f"grid takes {points[1][1]:.3f} ms ({cost.runtime}, batch 1, {cost.table.threads} "
            f"threads; the widest {points[0][1]:.3f} ms). Raise scaling.budget.value or "
            f"scaling.policy.grid_stop")
    cost.calibration = {"widest_ms": points[0][1], "narrowest_ms": points[1][1]}
    best = None
    for r in range(ROUNDS):
        slope, (t_ref, m_ref) = secant(points, budget)
        anchored = ChainProblem(problem.first * slope + (m_ref - slope * t_ref),
                                [p * slope for p in problem.pair], problem.valid_first,
                                problem.valid_pair)
        try:
            idx, predicted = solve(anchored, budget, fill, max_changes)
        except RsnetError:
            if best is None:
                raise
            log.info("latency plan, round %d: no plan fits this calibration; keeping round %d's",
                     r + 1, r)
            return best
        measured = cost.measure_ms(widths_of(idx))
        cost.rounds.append({"slope": slope, "anchor_ms": m_ref, "predicted_ms": predicted,
                            "measured_ms": measured})
        log.info("latency plan, round %d: predicted %.3f ms, measured %.3f ms (budget %.3f ms)",
                 r + 1, predicted, measured, budget)
        best = idx, predicted
        if abs(measured - predicted) <= TOLERANCE * measured:
            break
        points.append((problem.cost(idx), measured))
    return best


def secant(points: list[tuple[float, float]], budget: float) -> tuple[float, tuple[float, float]]:
    """The line through the measured (table sum, ms) points that bracket ``budget`` most
    tightly (regula falsi): its slope and the point it passes through. Where the budget is not
    bracketed, the two points nearest to it; a slope that is not positive (noise) falls back
    to 1 through the point nearest the budget."""
    below = [p for p in points if p[1] <= budget]
    above = [p for p in points if p[1] > budget]
    if below and above:
        a, b = max(below, key=lambda p: p[1]), min(above, key=lambda p: p[1])
    else:
        a, b = sorted(points, key=lambda p: abs(p[1] - budget))[:2]
    slope = (b[1] - a[1]) / (b[0] - a[0]) if b[0] != a[0] else 0.0
    ref = a if abs(a[1] - budget) <= abs(b[1] - budget) else b
    return (slope, ref) if slope > 0 else (1.0, ref)
