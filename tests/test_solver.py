"""The chain solver equals brute force on small random instances and respects the budget."""

import numpy as np
import pytest

from rsnet.errors import RsnetError
from rsnet.plan.solver import ChainProblem, brute_force, solve


def random_problem(rng, F, U, invalid=0.1) -> ChainProblem:
    # costs that shrink with the factor index (larger factor -> narrower layers), plus noise
    shrink = np.linspace(1.0, 0.1, F)
    first = rng.integers(50, 100) * shrink + rng.random(F)
    pair = [rng.integers(20, 100) * np.outer(shrink, shrink) + rng.integers(5, 50) * shrink[None, :]
            + rng.random((F, F)) for _ in range(U - 1)]
    return ChainProblem(np.round(first, 1), [np.round(p, 1) for p in pair], rng.random(F) > invalid / 3,
                        [rng.random((F, F)) > invalid for _ in range(U - 1)])


@pytest.mark.parametrize("seed", range(40))
def test_solver_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    U, F = int(rng.integers(1, 6)), int(rng.integers(2, 6))
    problem = random_problem(rng, F, U)
    lo = problem.cost([F - 1] * U)
    hi = problem.cost([0] * U)
    budget = float(rng.uniform(lo, hi * 1.05))
    fill = float(rng.choice([0.0, 0.01, 0.05, 0.2]))
    max_changes = int(rng.integers(0, 3))
    try:
        expected = brute_force(problem, budget, fill, max_changes)
    except RsnetError:
        with pytest.raises(RsnetError):
            solve(problem, budget, fill, max_changes)
        return
    got = solve(problem, budget, fill, max_changes)
    assert got[0] == expected[0] and got[1] == pytest.approx(expected[1])
    assert got[1] <= budget and problem.valid(got[0])


def test_smoothest_plan_in_the_window_wins_over_a_fuller_erratic_one():
    # two units, three factors; cost = sum of per-unit costs
    c = np.array([10.0, 6.0, 3.0])
    problem = ChainProblem(c, [np.tile(c, (3, 1))], np.ones(3, bool), [np.ones((3, 3), bool)])
    # budget 12.5: (1, 1) costs 12 (in a 10 % window, no change); (0, 2) costs 13 > budget;
    # (1, 2) / (2, 1) cost 9; nothing erratic beats the constant plan
    assert solve(problem, 12.5, fill=0.1) == ([1, 1], 12.0)
    # with a 1 % window nothing reaches 12.375..12.5: the largest cost wins, then smoothness
    assert solve(problem, 12.5, fill=0.01) == ([1, 1], 12.0)
    # budget 13: (0, 2) and (2, 0) cost 13; larger widths deeper -> smaller factor deeper
    assert solve(problem, 13.0, fill=0.01) == ([2, 0], 13.0)
