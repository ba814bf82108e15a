"""Stage plan: trace the N-way architecture, set the budget, solve for the widths
(groups.json, plan.json). ``scaling=none`` plans nothing."""

from __future__ import annotations

import logging
import time

from hydra.errors import InstantiationException
from hydra.utils import instantiate

from rsnet import distributed
from rsnet.plan.budget import make_budget
from rsnet.errors import RsnetError
from rsnet.graph import analyze
from rsnet.metrics import count_macs, count_params
from rsnet.plan import WidthPlan
from rsnet.plan.policies import Scaler, WidthRule
from rsnet.stages.context import Context
from rsnet.fileio import atomic_write_json

log = logging.getLogger(__name__)


def run(ctx: Context) -> None:
    ctx.plan = distributed.on_main(lambda: make_plan(ctx), ctx.rt.dist)
    if ctx.plan is not None:
        ctx.metrics.update(plan_metrics(ctx.plan))


def analyze_nway(ctx: Context, prunable: bool):
    """The graph analysis of the N-way architecture with the ``scaling`` settings, written
    to groups.json. ``prunable``: the widths will be carved (fix what the pruner cannot
    select channels through, e.g. shuffles)."""
    sc = ctx.cfg.scaling
    graph = analyze(ctx.untrained(ctx.data.num_outputs), ctx.input_size, fixed=list(sc.fixed),
                    tie=[list(t) for t in sc.tie], leaf_modules=list(sc.leaf_modules),
                    prunable=prunable)
    atomic_write_json(ctx.run_dir / "groups.json", graph.describe())
    return graph


def make_plan(ctx: Context) -> WidthPlan | None:
    cfg, data = ctx.cfg, ctx.data
    if cfg.scaling.policy is None:  # scaling=none: no plan
        return None
    path = ctx.run_dir / "plan.json"
    if path.exists():
        log.info("stage artifact %s exists: skipping planning", path.name)
        return WidthPlan.load(path)
    t0 = time.perf_counter()
    sc = cfg.scaling
    graph = analyze_nway(ctx, prunable=instantiate(cfg.compression.method).carves_plan)
    base_cost = {"params": count_params(ctx.model), "macs": count_macs(ctx.model, ctx.input_size)}
    num_base = sc.budget.num_base_classes or len(data.base_class_names)
    plan = solve(sc, graph, base_cost, data.num_outputs, num_base)
    plan.solve_time_s = time.perf_counter() - t0
    plan.save(path)
    log.info("%s", plan.table())
    return plan


def solve(sc, graph, base_cost: dict, num_outputs: int, num_base: int) -> WidthPlan:
    """The ``scaling`` settings' plan for the traced N-way ``graph``: its budget from the
    baseline's cost, its policy, its width rule (the target's multiple included)."""
    budget = make_budget(sc.budget.rule, sc.budget.unit, base_cost[sc.budget.unit],
                         num_outputs, num_base, sc.budget.lam, sc.budget.value)
    try:
        policy = instantiate(sc.policy, _convert_="all")
    except InstantiationException as e:
        raise RsnetError(f"scaling.policy of scaling={sc.name} is invalid: {e}") from e
    scaler = Scaler(graph, WidthRule(sc.widths.min_width, sc.widths.round_to), sc.bottleneck)
    return policy.make(scaler, budget, base_cost)


def plan_metrics(plan: WidthPlan) -> dict:
    out = {"plan/policy": plan.policy, "plan/params": plan.predicted["params"],
           "plan/macs": plan.predicted["macs"],
           "plan/factors": " ".join(f"{m.factor:g}" for m in plan.macro),
           "plan/time_s": plan.solve_time_s}
    if plan.budget:
        out.update({"plan/budget": plan.budget["value"], "plan/budget_unit": plan.budget["unit"],
                    "plan/budget_used": plan.predicted[plan.budget["unit"]] / plan.budget["value"]})
    return out
