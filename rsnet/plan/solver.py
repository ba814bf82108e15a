"""The exact width solver: one scaling factor per unit (a run of macro-layers), chain costs.

The network's cost is a sum of terms that each involve one unit or two consecutive units
(a layer's input widths come from the previous unit), so for factor indices f_0..f_{U-1}

    cost(f) = first[f_0] + sum_{j >= 1} pair[j][f_{j-1}, f_j]

and feasibility (bottleneck avoidance, minimum widths) has the same shape (``valid``).

The rule (method.md section 6, rsnet's decision), in order:
1. never over budget: cost <= budget, and feasible;
2. use the budget nearly fully: cost >= (1 - fill) x budget (when no plan reaches that
   window, the window is dropped and rule 5 decides first);
3. smoothest: fewest factor changes between consecutive units, then least total variation
   (sum of |factor_j - factor_{j-1}| in grid steps);
4. larger widths deeper: compare factor vectors from the deepest unit backward, smaller first;
5. the larger cost.
The search space is every factor vector on the grid with at most ``max_changes`` changes
(default 2: three constant runs; the thesis's plans have one). Over that space the result
is exact: every candidate is scored (vectorised with numpy), nothing is approximated.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from rsnet.errors import RsnetError


@dataclass
class ChainProblem:
    """first: (F,) cost of unit 0; pair: U-1 arrays (F, F) of unit j's cost given f_{j-1}, f_j.

    valid_first (F,) and valid_pair (U-1 arrays (F, F)) are the feasibility of the same terms.
    """

    first: np.ndarray
    pair: list[np.ndarray]
    valid_first: np.ndarray
    valid_pair: list[np.ndarray]

    @property
    def num_units(self) -> int:
        return 1 + len(self.pair)

    def cost(self, f: list[int]) -> float:
        return float(self.first[f[0]] + sum(p[a, b] for p, a, b in zip(self.pair, f, f[1:])))

    def valid(self, f: list[int]) -> bool:
        return bool(self.valid_first[f[0]] and all(v[a, b] for v, a, b in zip(self.valid_pair, f, f[1:])))


def _runs(problem: ChainProblem, breaks: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cost, validity and index grid of every vector constant between ``breaks``.

    breaks: sorted unit indices where a new constant run starts (1..U-1). Returns arrays of
    shape (F,) * (len(breaks) + 1) and the factor index of each run per cell.
    """
    F, U = len(problem.first), problem.num_units
    starts = (0, *breaks)
    ends = (*breaks, U)
    k = len(starts)
    cost = np.zeros((F,) * k)
    valid = np.ones((F,) * k, dtype=bool)
    diag = [np.diagonal(p) for p in problem.pair]
    vdiag = [np.diagonal(v) for v in problem.valid_pair]

    def along(axis: int, arr: np.ndarray) -> np.ndarray:
        shape = [1] * k
        shape[axis] = F
        return arr.reshape(shape)

    def between(axis: int, arr: np.ndarray) -> np.ndarray:  # arr (F, F) over axes axis-1, axis
        shape = [1] * k
        shape[axis - 1] = shape[axis] = F
        return arr.reshape(shape)

    for r, (s, e) in enumerate(zip(starts, ends)):
        if r == 0:
            cost = cost + along(0, problem.first)
            valid = valid & along(0, problem.valid_first)
        else:  # the change from run r-1 to run r happens at unit s
            cost = cost + between(r, problem.pair[s - 1])
            valid = valid & between(r, problem.valid_pair[s - 1])
        for j in range(s + 1, e):  # units inside the run: same factor on both sides
            cost = cost + along(r, diag[j - 1])
            valid = valid & along(r, vdiag[j - 1])
    return cost, valid, np.indices((F,) * k)


def solve(problem: ChainProblem, budget: float, fill: float = 0.01, max_changes: int = 2
          ) -> tuple[list[int], float]:
    """The best factor-index vector by the module's rule, and its cost."""
    U = problem.num_units
    best_key, best = None, None
    for changes in range(min(max_changes, U - 1) + 1):
        for breaks in itertools.combinations(range(1, U), changes):
            cost, valid, idx = _runs(problem, breaks)
            ok = valid & (cost <= budget)
            if changes:  # consecutive runs must differ, else it is a vector with fewer changes
                for r in range(1, changes + 1):
                    ok &= idx[r] != idx[r - 1]
            if not ok.any():
                continue
            cells = np.flatnonzero(ok)
            c = cost.reshape(-1)[cells]
            runs = idx.reshape(changes + 1, -1)[:, cells]  # (runs, candidates)
            tv = np.abs(np.diff(runs, axis=0)).sum(axis=0) if changes else np.zeros(len(cells))
            in_window = c >= (1 - fill) * budget
            lengths = np.diff((0, *breaks, U))
            units = np.repeat(runs, lengths, axis=0)  # (U, candidates): per-unit factor indices
            deeper = [units[j] for j in range(U)]  # lexsort: the last key is the primary one
            if in_window.any():  # rule 3, 4, 5 among the candidates inside the window
                order = np.lexsort([-c, *deeper, tv] + [~in_window])
            else:  # rule 5 first, then 3 and 4
                order = np.lexsort([*deeper, tv, -c])
            i = order[0]
            window = bool(in_window[i])
            key = (-int(window), *(() if window else (-c[i],)), changes, int(tv[i]),
                   *(int(units[j, i]) for j in reversed(range(U))), -c[i])
            if best_key is None or key < best_key:
                best_key, best = key, (units[:, i].tolist(), float(c[i]))
        if best_key is not None and best_key[0] == -1:
            break  # a plan in the window with this few changes beats any with more
    if best is None:
        raise RsnetError("no width plan fits the budget")  # callers check the minimum first
    return best


def brute_force(problem: ChainProblem, budget: float, fill: float = 0.01, max_changes: int = 2
                ) -> tuple[list[int], float]:
    """The same rule by enumerating every vector (tests only: F ** U vectors)."""
    F, U = len(problem.first), problem.num_units
    scored = []
    for f in itertools.product(range(F), repeat=U):
        changes = sum(a != b for a, b in zip(f, f[1:]))
        cost = problem.cost(list(f))
        if changes > max_changes or not problem.valid(list(f)) or cost > budget:
            continue
        tv = sum(abs(a - b) for a, b in zip(f, f[1:]))
        window = cost >= (1 - fill) * budget
        scored.append(((-int(window), *(() if window else (-cost,)), changes, tv,
                        *reversed(f), -cost), (list(f), cost)))
    if not scored:
        raise RsnetError("no width plan fits the budget")
    return min(scored)[1]
