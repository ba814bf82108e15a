"""Budget rules, scaling policies and the WidthPlan, on the real model builders."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import THESIS_WIDTHS
from rsnet.plan.budget import make_budget
from rsnet.errors import RsnetError
from rsnet.graph import analyze
from rsnet.metrics import count_macs, count_params
from rsnet.models.googlenet_rs import googlenet_rs
from rsnet.models.resnet_cifar import resnet_cifar
from rsnet.plan import WidthPlan
from rsnet.plan.policies import FromPlan, GivenFactors, ResourceScalable, Scaler, Uniform, WidthRule
from rsnet.models import googlenet_rs as googlenet_family
from rsnet.models import resnet_cifar as resnet_family

# method.md section 4: GoogLeNet, N = 5, lambda = 0.045
THESIS_FACTORS_N5 = [5] * 8 + [4] * 4


def googlenet_setup(num_outputs=5, input_size=227, bn_scale=False):
    model = googlenet_rs(num_outputs, input_size=input_size, bn_scale=bn_scale)
    baseline = googlenet_rs(1000, input_size=input_size, bn_scale=bn_scale)
    graph = analyze(model, input_size)
    base = {"params": count_params(baseline), "macs": count_macs(baseline, input_size)}
    return model, graph, base


def built(plan: WidthPlan, num_outputs: int, input_size: int, bn_scale: bool):
    kwargs = googlenet_family.widths_kwargs(plan.widths(), None)
    return googlenet_rs(num_outputs, input_size=input_size, bn_scale=bn_scale, **kwargs)


def test_budget_rules():
    b = make_budget("thesis", "params", 1000.0, 5, 1000, lam=0.045)
    assert b.value == pytest.approx(1000 * (0.045 + 5 / 1000))
    assert make_budget("thesis_alt", "params", 1000.0, 5, 1000, lam=0.25).value == \
        pytest.approx(1000 * (0.25 + 0.75 * 5 / 1000))
    assert make_budget("ratio", "macs", 1000.0, 5, 10, value=0.5).value == 500
    assert make_budget("absolute", "macs", 1000.0, 5, 10, value=123).value == 123
    with pytest.raises(RsnetError, match="scaling.budget.rule"):
        make_budget("magic", "params", 1.0, 5, 10)
    with pytest.raises(RsnetError, match="num_classes"):
        make_budget("thesis", "params", 1.0, 11, 10)


def test_affine_width_rule_rounds_half_to_even_with_minimum_and_multiple():
    rule = WidthRule(min_width=1)
    assert rule(np.array([64, 96, 16, 5, 25]), 5.0).tolist() == [13, 19, 3, 1, 5]  # 12.8, 19.2, 3.2, 1, 5
    assert WidthRule()(np.array([5, 15]), 2.0).tolist() == [2, 8]  # 2.5 -> 2, 7.5 -> 8 (half to even)
    assert WidthRule(min_width=8, round_to=8)(np.array([64, 100, 3]), 3.0).tolist() == [24, 32, 8]
    # keep_narrow: a width below one multiple stays as planned (5, 15), the others round (25 -> 32)
    kept = WidthRule(round_to=16, keep_narrow=True)(np.array([64, 20, 60, 100, 120]), 4.0)
    assert kept.tolist() == [16, 5, 15, 32, 32]


def test_thesis_factors_give_the_thesis_widths_and_parameter_count():
    model, graph, base = googlenet_setup()
    scaler = Scaler(graph, WidthRule())
    plan = GivenFactors(THESIS_FACTORS_N5).make(scaler, None, base)
    kwargs = googlenet_family.widths_kwargs(plan.widths(), model)["widths"]
    assert kwargs == THESIS_WIDTHS
    assert plan.predicted["params"] == 331_732  # as counted by the thesis (BN without scale)
    net = built(plan, 5, 227, False)
    assert count_params(net) == plan.predicted["params"]
    assert count_macs(net, 227) == plan.predicted["macs"]
    assert plan.predicted["macs"] == 92_664_531  # the figure docs/results.md gives


def test_standard_bn_adds_exactly_the_bn_widths():
    _, graph, base = googlenet_setup(bn_scale=True)
    plan = GivenFactors(THESIS_FACTORS_N5).make(Scaler(graph, WidthRule()), None, base)
    bn_widths = sum(m.width for m in plan.micro if m.macro is not None)  # one BN per conv
    assert plan.predicted["params"] == 331_732 + bn_widths


@pytest.mark.parametrize("n", [5, 10, 15, 20])
def test_rs_plans_fill_the_thesis_budget_smoothly(n):
    model, graph, base = googlenet_setup(n)
    budget = make_budget("thesis", "params", base["params"], n, 1000, lam=0.045)
    plan = ResourceScalable().make(Scaler(graph, WidthRule()), budget, base)
    used = plan.predicted["params"] / budget.value
    assert 0.99 <= used <= 1.0
    factors = [m.factor for m in plan.macro]
    assert sum(a != b for a, b in zip(factors, factors[1:])) <= 2
    outs = [m.out_width for m in plan.macro]
    bases = [m.base_out_width for m in plan.macro]
    for i in range(1, len(outs)):  # bottleneck avoidance where the baseline grows or stays
        if bases[i] >= bases[i - 1]:
            assert outs[i] >= outs[i - 1]
    net = built(plan, n, 227, False)
    assert count_params(net) == plan.predicted["params"]


@pytest.mark.parametrize("policy", [ResourceScalable(), Uniform()])
@pytest.mark.parametrize("n, multiple, keep_narrow", [(5, 16, False), (10, 16, False), (20, 8, False),
                                                      (10, 16, True)])
def test_a_hardware_multiple_holds_in_every_planned_width_within_the_budget(policy, n, multiple,
                                                                           keep_narrow):
    """target=x86_avx512 (16) / x86_avx2 (8): the 64 px GoogLeNet of the thesis experiments;
    with keep_narrow, widths below the multiple are the only ones off it, and there are some
    (the 5x5 branches' reduce layers plan 5 to 15 channels at N = 10)."""
    model, graph, base = googlenet_setup(n, input_size=64, bn_scale=True)
    budget = make_budget("thesis", "params", base["params"], n, 200, lam=0.045)
    plan = policy.make(Scaler(graph, WidthRule(round_to=multiple, keep_narrow=keep_narrow)), budget, base)
    widths = plan.widths()
    assert widths.pop("classifier") == n  # the head keeps its N outputs
    off = [w for w in widths.values() if w % multiple]
    assert len(widths) > 50 and all(w < multiple for w in off) and bool(off) == keep_narrow
    assert plan.predicted["params"] <= budget.value
    net = googlenet_rs(n, input_size=64, bn_scale=True,
                       **googlenet_family.widths_kwargs(widths, None))
    assert count_params(net) == plan.predicted["params"]  # the built model is the plan


def test_uniform_takes_the_smallest_fitting_factor():
    _, graph, base = googlenet_setup(10, input_size=64, bn_scale=True)
    budget = make_budget("ratio", "macs", base["macs"], 10, 200, value=0.2)
    scaler = Scaler(graph, WidthRule(), bottleneck=False)  # as conf/scaling/uniform.yaml
    plan = Uniform().make(scaler, budget, base)
    f = {m.factor for m in plan.macro}
    assert len(f) == 1 and plan.predicted["macs"] <= budget.value
    finer = GivenFactors([f.pop() - 0.01] * len(plan.macro)).make(scaler, budget, base)
    assert finer.predicted["macs"] > budget.value


def test_an_impossible_budget_names_the_smallest_feasible_one():
    _, graph, base = googlenet_setup(5, input_size=64, bn_scale=True)
    budget = make_budget("absolute", "params", base["params"], 5, 200, value=100)
    with pytest.raises(RsnetError, match=r"smallest plan .* costs"):
        ResourceScalable().make(Scaler(graph, WidthRule()), budget, base)


def test_plan_json_round_trips_and_from_plan_reproduces_it(tmp_path):
    _, graph, base = googlenet_setup(5, input_size=64, bn_scale=True)
    scaler = Scaler(graph, WidthRule())
    budget = make_budget("thesis", "params", base["params"], 5, 200, lam=0.045)
    plan = ResourceScalable().make(scaler, budget, base)
    plan.save(tmp_path / "plan.json")
    again = WidthPlan.load(tmp_path / "plan.json")
    assert again == plan
    copy = FromPlan(str(tmp_path / "plan.json")).make(scaler, budget, base)
    assert copy.widths() == plan.widths() and copy.predicted == plan.predicted


def test_resnet_units_follow_the_residual_streams():
    model = resnet_cifar(20, num_classes=5)
    graph = analyze(model, 32)
    scaler = Scaler(graph, WidthRule())
    base = {"params": count_params(resnet_cifar(20)), "macs": count_macs(resnet_cifar(20), 32)}
    budget = make_budget("ratio", "params", base["params"], 5, 10, value=0.5)
    plan = ResourceScalable().make(scaler, budget, base)
    assert plan.predicted["params"] <= budget.value
    kwargs = resnet_family.widths_kwargs(plan.widths(), model)
    net = resnet_cifar(20, num_classes=5, **kwargs)
    assert (count_params(net), count_macs(net, 32)) == (plan.predicted["params"], plan.predicted["macs"])
