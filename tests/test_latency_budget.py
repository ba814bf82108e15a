"""A latency budget (scaling.budget.unit=latency): the rs / uniform plan against a layer
latency table, anchored to measured whole models (rsnet/plan/latency.py).

Fake, deterministic latencies stand in for ONNX Runtime: a layer costs its multiply-adds,
a whole model the sum of its layers times ``scale`` plus a fixed overhead."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from conftest import FakeTable, layer_cost
from rsnet.deploy.latency_table import layer_specs
from rsnet.errors import RsnetError
from rsnet.graph import analyze
from rsnet.models.resnet_cifar import resnet_cifar
from rsnet.plan.budget import make_budget
from rsnet.plan.latency import ROUNDS, LatencyCost, interpolated, lattice, secant
from rsnet.plan.policies import ResourceScalable, Scaler, Uniform, WidthRule
from rsnet.plan.solver import brute_force

SIZE = 16


def setup(scale: float = 1.0, overhead: float = 0.5, grid_stop: float = 3.5, power: float = 1.0):
    model = resnet_cifar(depth=8, num_classes=5, stage_widths=(16, 32, 64))
    graph = analyze(model, SIZE)
    table = FakeTable(layer_specs(model, graph))

    def whole_model(group_widths) -> float:  # what a "measured" model at these widths takes
        w = graph.width_vector(group_widths)
        return overhead + scale * sum(layer_cost(s, *s.channels(w)) for s in table.specs) ** power

    scaler = Scaler(graph, WidthRule(), latency=LatencyCost(table, whole_model))
    return scaler, whole_model, ResourceScalable(grid_stop=grid_stop, grid_step=0.5)


def latency_budget(ms: float):
    return make_budget("absolute", "latency", 10.0, 5, 10, value=ms)


def test_the_rs_plan_is_the_best_plan_by_the_measured_latency():
    """With an exact table (the fake whole model is the sum of its layers), the plan is the
    one the solver's rule picks by enumerating every factor vector on the measured cost."""
    scaler, whole_model, policy = setup()
    grid = policy.grid()
    budget = latency_budget(0.5 + 0.4 * whole_model({}) - 0.2)  # about 40 % of full width
    plan = policy.make(scaler, budget, {"params": 1, "macs": 1})

    valid = scaler.chain(grid, "params")  # feasibility does not depend on the unit
    direct = replace(valid)
    direct.cost = lambda f: whole_model(scaler.group_widths([grid[i] for i in f]))
    expected, expected_ms = brute_force(direct, budget.value, policy.fill, policy.max_changes)
    assert [m.factor for m in plan.macro] == \
        [float(grid[expected[scaler.unit_of_macro[m]]]) for m in range(len(plan.macro))]
    assert plan.predicted["latency"] == pytest.approx(expected_ms)
    assert plan.latency["measured_ms"] == pytest.approx(expected_ms)
    assert plan.latency["error"] == pytest.approx(0, abs=1e-9)
    assert len(plan.latency["rounds"]) == 1
    assert plan.predicted["latency"] <= budget.value


def test_uniform_takes_the_widest_factor_within_the_latency_budget():
    scaler, whole_model, _ = setup()
    policy = Uniform(grid_stop=3.5, grid_step=0.25)
    grid = policy.grid()
    budget = latency_budget(0.5 * whole_model({}))
    plan = policy.make(scaler, budget, {"params": 1, "macs": 1})
    U = len(scaler.graph.units)
    fits = [f for f in grid if whole_model(scaler.group_widths([f] * U)) <= budget.value]
    assert {m.factor for m in plan.macro} == {min(fits)}


def test_calibration_and_anchoring_bring_the_prediction_within_ten_percent():
    """The table misses what grows between the layers, and not linearly (here the whole
    model takes 1.5 x its layers' sum to the power 1.2): scaled through the two measured ends
    and re-anchored at its own plan (at most ROUNDS solves), the final prediction is within
    10 % of the measurement, the plan within the budget by measurement."""
    scaler, whole_model, policy = setup(scale=1.5, overhead=0.2, power=1.2)
    budget = latency_budget(0.35 * whole_model({}))
    plan = policy.make(scaler, budget, {"params": 1, "macs": 1})
    lat = plan.latency
    assert lat["widest_ms"] == pytest.approx(whole_model({}))
    assert lat["rounds"][0]["slope"] > 1  # the table alone underestimates what narrowing saves
    assert 1 <= len(lat["rounds"]) <= ROUNDS
    assert abs(lat["error"]) <= 0.10
    assert lat["measured_ms"] == pytest.approx(
        whole_model(scaler.graph.widths_from_layers(plan.widths())))
    assert lat["measured_ms"] <= budget.value * 1.10


def test_a_miss_of_the_first_round_is_corrected_on_the_bracketing_line():
    """A whole model superlinear in its layers' sum: the first round, a line through the two
    measured ends, misses the middle by more than 10 %; the next round's line passes through
    that round's measured plan (regula falsi), and lands within 10 %."""
    scaler, whole_model, policy = setup(scale=1.0, overhead=0.2, power=1.3)
    plan = policy.make(scaler, latency_budget(0.3 * whole_model({})), {"params": 1, "macs": 1})
    rounds = plan.latency["rounds"]
    assert abs(rounds[0]["measured_ms"] / rounds[0]["predicted_ms"] - 1) > 0.10
    assert len(rounds) > 1
    assert rounds[1]["anchor_ms"] == rounds[0]["measured_ms"]  # the plan nearest the budget
    assert abs(plan.latency["error"]) <= 0.10


def test_the_secant_takes_the_tightest_bracket_and_survives_noise():
    points = [(100.0, 10.0), (10.0, 1.0), (60.0, 7.0), (40.0, 4.0)]
    slope, ref = secant(points, 5.0)  # bracketed by (40, 4) and (60, 7)
    assert slope == pytest.approx(3 / 20) and ref == (40.0, 4.0)
    slope, ref = secant([(100.0, 10.0), (10.0, 11.0)], 5.0)  # noise: not increasing
    assert slope == 1.0 and ref == (100.0, 10.0)


def test_a_latency_budget_below_the_narrowest_plan_names_the_setting():
    scaler, whole_model, policy = setup()
    with pytest.raises(RsnetError, match="scaling.budget.value"):
        policy.make(scaler, latency_budget(0.1), {"params": 1, "macs": 1})


def test_interpolation_is_exact_on_the_lattice_and_measures_only_there():
    F = 40
    a = np.arange(F)
    cin = (8 + 2 * a)[:, None] + np.zeros((F, F), dtype=int)
    cout = (4 + 3 * a)[None, :] + np.zeros((F, F), dtype=int)
    calls = []

    def measure(i, o):
        calls.append((i, o))
        return float(i * o)

    table = interpolated(measure, cin, cout)
    at = lattice(F)
    assert len(set(calls)) == len(at) ** 2  # the lattice, not the 1,600 pairs
    assert np.allclose(table[np.ix_(at, at)], (cin * cout)[np.ix_(at, at)])
    # bilinear in the channel counts (linear in the index here): exact everywhere
    assert np.allclose(table, cin * cout)
    few = interpolated(measure, cin[:5, :5], cout[:5, :5])  # few pairs: every one measured
    assert np.array_equal(few, (cin * cout)[:5, :5])


@pytest.mark.parametrize("policy_name", ["factors", "plan"])
def test_given_widths_cannot_take_a_latency_budget(policy_name, tmp_path):
    from conftest import compose_cfg
    from rsnet.stages.plan import solve

    overrides = {"factors": ["scaling=factors", "scaling.policy.factors=[1,1,1]"],
                 "plan": ["scaling=plan", f"scaling.policy.path={tmp_path}/p.json"]}[policy_name]
    sc = compose_cfg(*overrides, "scaling.budget.unit=latency", "scaling.budget.rule=absolute",
                     "scaling.budget.value=1").scaling
    scaler, _, _ = setup()
    with pytest.raises(RsnetError, match="scaling.budget.unit=latency"):
        solve(sc, scaler.graph, {"params": 1, "macs": 1, "latency": 1.0}, 5, 10, scaler.latency)
