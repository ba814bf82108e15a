"""Stage plan: trace the N-way architecture, set the budget, solve for the widths
(groups.json, plan.json). ``scaling=none`` plans nothing."""

from __future__ import annotations

import copy
import json
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
from rsnet.plan.latency import RUNTIMES as LATENCY_RUNTIMES, SESSIONS as LATENCY_SESSIONS, LatencyCost
from rsnet.plan.policies import ResourceScalable, Scaler, WidthRule
from rsnet.compress import prune_to_widths
from rsnet.deploy.latency_table import LatencyTable, layer_specs, measure_model_ms
from rsnet.models.widths import build_at_widths, family
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
    latency = None
    if sc.budget.unit == "latency":
        latency, base_cost["latency"] = latency_cost(ctx, graph)
    num_base = sc.budget.num_base_classes or len(data.base_class_names)
    try:
        plan = solve(sc, graph, base_cost, data.num_outputs, num_base, latency)
    finally:
        if latency is not None:  # measured entries: a rerun of the stage reads the same table
            atomic_write_json(ctx.run_dir / "latency_lut.json", latency.table.to_json())
    plan.solve_time_s = time.perf_counter() - t0
    plan.save(path)
    log.info("%s", plan.table())
    return plan


def solve(sc, graph, base_cost: dict, num_outputs: int, num_base: int,
          latency: LatencyCost | None = None) -> WidthPlan:
    """The ``scaling`` settings' plan for the traced N-way ``graph``: its budget from the
    baseline's cost, its policy, its width rule (the target's multiple included); a latency
    budget plans against ``latency`` (its layer table and whole-model measurement)."""
    budget = make_budget(sc.budget.rule, sc.budget.unit, base_cost[sc.budget.unit],
                         num_outputs, num_base, sc.budget.lam, sc.budget.value)
    try:
        policy = instantiate(sc.policy, _convert_="all")
    except InstantiationException as e:
        raise RsnetError(f"scaling.policy of scaling={sc.name} is invalid: {e}") from e
    if budget.unit == "latency" and not isinstance(policy, ResourceScalable):
        raise RsnetError(f"scaling.budget.unit=latency plans with scaling=rs or uniform, not "
                         f"scaling={sc.name} (its widths are given, not solved for)")
    scaler = Scaler(graph, width_rule(sc.widths), sc.bottleneck, latency)
    return policy.make(scaler, budget, base_cost)


def width_rule(widths) -> WidthRule:
    """The width rule of ``scaling.widths`` (min_width, round_to, keep_narrow)."""
    return WidthRule(widths.min_width, widths.round_to, widths.keep_narrow)


def latency_cost(ctx: Context, graph) -> tuple[LatencyCost, float]:
    """The layer table and whole-model measurement of a latency budget
    (``scaling.budget.unit=latency``), and Phi: the C-way baseline's measured ms (batch 1 on
    scaling.budget.runtime with scaling.budget.threads threads; every whole model timed as
    its fastest run in LATENCY_SESSIONS sessions of export.latency.runs runs)."""
    cfg = ctx.cfg
    runtime, threads, runs = cfg.scaling.budget.runtime, cfg.scaling.budget.threads, cfg.export.latency.runs
    if runtime not in LATENCY_RUNTIMES:
        raise RsnetError(f"scaling.budget.runtime={runtime!r}: a latency budget is measured on "
                         f"{', '.join(LATENCY_RUNTIMES)} (the runtime with a layer latency table)")
    num_outputs, size = ctx.data.num_outputs, ctx.input_size
    full = ctx.untrained(num_outputs).eval()  # the N-way architecture the table prices
    lut = ctx.run_dir / "latency_lut.json"
    saved = json.loads(lut.read_text()) if lut.exists() else {}
    entries = saved["entries"] if saved.get("threads") == threads else {}  # same thread count only
    table = LatencyTable(layer_specs(full, graph), threads, entries=entries)

    def measure(group_widths) -> float:
        widths = {k: int(v) for k, v in graph.layer_widths(group_widths).items()}
        if family(cfg.model.arch["_target_"]) is not None:
            model = build_at_widths(cfg.model, num_outputs, widths, full)
        else:  # no width builder (torchvision): prune a copy (weights do not change latency)
            model = prune_to_widths(copy.deepcopy(full), widths, ctx.example())
        return measure_model_ms(model.eval(), size, threads, runs, sessions=LATENCY_SESSIONS)

    phi = measure_model_ms(ctx.model, size, threads, runs, sessions=LATENCY_SESSIONS)
    log.info("latency budget: the %d-way baseline takes %.3f ms (%s, batch 1, %d threads)",
             len(ctx.data.base_class_names), phi, runtime, threads)
    return LatencyCost(table, measure, runtime), phi


def plan_metrics(plan: WidthPlan) -> dict:
    out = {"plan/policy": plan.policy, "plan/params": plan.predicted["params"],
           "plan/macs": plan.predicted["macs"],
           "plan/factors": " ".join(f"{m.factor:g}" for m in plan.macro),
           "plan/time_s": plan.solve_time_s}
    if plan.latency:
        out.update({"plan/latency_predicted_ms": plan.latency["predicted_ms"],
                    "plan/latency_measured_ms": plan.latency["measured_ms"],
                    "plan/latency_error": plan.latency["error"]})
    if plan.budget:
        out.update({"plan/budget": plan.budget["value"], "plan/budget_unit": plan.budget["unit"],
                    "plan/budget_used": plan.predicted[plan.budget["unit"]] / plan.budget["value"]})
    return out
