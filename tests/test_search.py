"""Search-style compression: NetAdapt (latency lookup table, steps, resume) and MorphNet
(gamma penalty, widths off the scales, expansion to the budget), on the tiny ResNet-8."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf
import torch
import torch.nn.functional as F

from conftest import REPO, TINY, FakeTable, compose_cfg, layer_cost
from rsnet import pipeline
from rsnet.stages import search
from rsnet.errors import RsnetError
from rsnet.deploy.latency_table import LatencyTable, layer_specs, measure_model_ms
from rsnet.graph import analyze
from rsnet.models.resnet_cifar import resnet_cifar
from rsnet.plan import WidthPlan
from rsnet.compress.morphnet import (GammaPenalty, channel_scales, expand_widths, fit_to_budget,
                                  gamma_groups, marginal_costs, read_widths)

pytestmark = pytest.mark.usefixtures("one_thread")

TASK = [*TINY, "dataset.num_classes=4", "stop_after=prune"]
NETADAPT = ["compression=netadapt", "compression.netadapt.short_term_iters=2"]


def run_in_process(run_dir: Path, *overrides: str) -> dict:
    return pipeline.run(compose_cfg(*TASK, *overrides), run_dir)


def best_of(proposals: list[dict]) -> dict:
    """The most accurate proposal (ties: the smaller resource, then the lower group id)."""
    return max(proposals, key=lambda p: (p["score"], -p["resource"], -p["group"]))


# -- NetAdapt ---------------------------------------------------------------------------------

OVERHEAD_MS = 20.0  # a tiny model's latency is mostly fixed cost, as on ONNX Runtime


def fake_measure_model_ms(model, input_size, threads, runs=100, warmup=10, sessions=0) -> float:
    """A deterministic "measured" whole model: a fixed overhead plus its layers' fake costs."""
    graph = analyze(model, input_size)
    w = graph.base_widths
    return OVERHEAD_MS + sum(layer_cost(s, *s.channels(w)) for s in layer_specs(model, graph))


@pytest.mark.integration
def test_netadapt_cuts_latency_and_stops_at_the_target(tmp_path, monkeypatch):
    """The search on a latency table; deterministic latencies (tests/conftest.py) stand in for
    ONNX Runtime's, whose microsecond-scale entries drift with the machine's load."""
    monkeypatch.setattr(search, "LatencyTable", FakeTable)
    monkeypatch.setattr(search, "measure_model_ms", fake_measure_model_ms)
    d = tmp_path / "run"
    metrics = run_in_process(d, *NETADAPT, "compression.netadapt.target_ratio=0.85",
                             "compression.netadapt.init_reduction=0.05",
                             "compression.netadapt.lut_runs=10", "compression.netadapt.measure_runs=20",
                             "export.latency.threads=1")
    record = json.loads((d / "netadapt.json").read_text())
    steps = record["steps"]
    assert record["done"] and record["unit"] == "ms" and len(steps) >= 2
    assert record["target"] == pytest.approx(0.85 * record["start"])
    resources = [record["start"]] + [s["resource"] for s in steps]
    assert all(a > b for a, b in zip(resources, resources[1:]))  # every step cuts latency
    assert all(s["resource"] <= s["step_target"] for s in steps)
    assert steps[-1]["resource"] <= record["target"] < resources[-2]  # stops once it is met
    for s in steps:  # the chosen proposal is the most accurate one of its step
        chosen = best_of(s["proposals"])
        assert (chosen["group"], chosen["width_to"]) == (s["group"], s["width_to"])
        assert all(p["resource"] <= s["step_target"] for p in s["proposals"])
        assert (d / "checkpoints" / f"netadapt_step{s['step']}.pt").exists()
    # an exact table: the pruned model, measured, costs what the table's estimate said
    assert record["extra"]["measured_final_ms"] == pytest.approx(steps[-1]["resource"])
    lut = json.loads((d / "latency_lut.json").read_text())
    assert record["extra"]["lut_entries"] > 0
    assert len(lut["entries"]) == record["extra"]["lut_entries"] and lut["threads"] == 1
    # the plan is the last step's widths, and the pruned model costs what it predicts
    plan = WidthPlan.load(d / "plan.json")
    graph = analyze(resnet_cifar(8, num_classes=4, stage_widths=[4, 8, 16]), 16)
    last = {int(g): w for g, w in steps[-1]["widths"].items()}
    assert plan.widths() == graph.layer_widths(last) and plan.policy == "netadapt"
    assert metrics["netadapt/final"] == steps[-1]["resource"]
    assert metrics[f"netadapt/step{len(steps)}/group"] == steps[-1]["group"]
    assert metrics["prune/steps"] == len(steps) and metrics["plan/macs"] == plan.predicted["macs"]
    # the search's own training, for comparisons at equal compute: 2 steps of a batch per proposal
    proposals = sum(len(s["proposals"]) for s in steps)
    assert metrics["netadapt/proposals"] == proposals >= len(steps)
    batch = OmegaConf.load(d / "config.yaml").train.batch_size
    assert metrics["netadapt/short_term_images"] == proposals * 2 * batch


def test_the_latency_table_measures_each_layer_once_on_onnx_runtime():
    """The real measurement behind NetAdapt's table: one positive entry per (layer, widths),
    measured on first use and then read back; the whole model measured on ONNX Runtime."""
    model = resnet_cifar(8, num_classes=4, stage_widths=[4, 8, 16])
    graph = analyze(model, 16)
    table = LatencyTable(layer_specs(model, graph), threads=1, runs=3, warmup=1)
    w = graph.base_widths
    total = table.total_ms(w)
    keys = {table.key(s, *s.channels(w)) for s in table.specs}
    assert set(table.entries) == keys and table.unsaved == len(keys)
    assert total == pytest.approx(sum(table.entries.values())) and min(table.entries.values()) > 0
    assert table.total_ms(w) == total and table.unsaved == len(keys)  # read back, not re-measured
    narrower = list(w)
    narrower[0] = max(1, w[0] // 2)
    table.total_ms(narrower)
    assert len(table.entries) > len(keys)  # new widths: new entries
    restored = LatencyTable(table.specs, 1, entries=table.to_json()["entries"])
    assert restored.total_ms(w) == total and restored.unsaved == 0
    assert measure_model_ms(model, 16, 1, runs=3, warmup=1) > 0
    assert measure_model_ms(model, 16, 1, runs=3, warmup=1, sessions=2) > 0


@pytest.mark.integration
def test_netadapt_resumes_from_its_step_checkpoints(tmp_path, monkeypatch):
    d = tmp_path / "run"
    args = (*NETADAPT, "compression.netadapt.resource=macs", "compression.netadapt.target_ratio=0.6",
            "compression.netadapt.init_reduction=0.12")
    run_in_process(d, *args)
    first = json.loads((d / "netadapt.json").read_text())
    steps = first["steps"]
    assert len(steps) >= 3 and steps[-1]["resource"] <= first["target"]  # step by step
    resources = [first["start"]] + [s["resource"] for s in steps]
    assert all(a > b for a, b in zip(resources, resources[1:]))
    assert all(s["resource"] <= s["step_target"] for s in steps)
    # as if killed during step 2: only step 1 is on record
    for name in ("plan.json", "checkpoints/pruned.pt",
                 *(f"checkpoints/netadapt_step{s['step']}.pt" for s in steps[1:])):
        (d / name).unlink()
    (d / "netadapt.json").write_text(json.dumps({**first, "steps": steps[:1], "done": False}))
    calls = []
    short_term = search._short_term
    monkeypatch.setattr(search, "_short_term", lambda *a, **k: (calls.append(a[-1]), short_term(*a, **k)))
    run_in_process(d, *args)
    again = json.loads((d / "netadapt.json").read_text())["steps"]
    assert len(calls) == sum(len(s["proposals"]) for s in steps[1:])  # step 1 was not redone
    key = [(s["group"], s["width_to"], s["resource"]) for s in steps]
    assert [(s["group"], s["width_to"], s["resource"]) for s in again] == key
    assert [s["score"] for s in again] == pytest.approx([s["score"] for s in steps])
    calls.clear()
    run_in_process(d, *args)  # finished: everything is reloaded, nothing is searched
    assert not calls


@pytest.mark.integration
def test_an_unreachable_netadapt_target_exits_2_naming_the_setting(tmp_path):
    run_dir = tmp_path / "run"
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "run.py"), *TASK, *NETADAPT,
                          "compression.netadapt.resource=macs", "compression.netadapt.target_ratio=0.01",
                          f"hydra.run.dir={run_dir}"], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "HYDRA_FULL_ERROR": "0"}, timeout=600)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "compression.netadapt.target_ratio" in res.stderr and "Traceback" not in res.stderr
    assert not (run_dir / "plan.json").exists()


@pytest.mark.parametrize("overrides, message", [
    (["compression=netadapt", "scaling=rs"], "scaling=none"),
    (["compression=netadapt", "compression.netadapt.resource=flops"], "compression.netadapt.resource"),
    (["compression=netadapt", "compression.netadapt.resource=macs",
      "compression.netadapt.target_ms=1"], "compression.netadapt.target_ms"),
    (["compression=netadapt", "compression.netadapt.decay=1.5"], "compression.netadapt.decay"),
    (["compression=morphnet", "compression.morphnet.cost=flops"], "compression.morphnet.cost"),
])
def test_bad_search_settings_name_the_setting(tmp_path, overrides, message):
    with pytest.raises(RsnetError, match=message.replace(".", r"\.")):
        run_in_process(tmp_path / "run", *overrides)


def test_an_unknown_criterion_is_refused_naming_the_group():
    with pytest.raises(MissingConfigException, match="compression/criterion/magic"):
        compose_cfg(*TASK, "compression=morphnet", "compression/criterion=magic")


# -- MorphNet ---------------------------------------------------------------------------------

def tiny_net(seed: int = 0):
    torch.manual_seed(seed)
    model = resnet_cifar(8, num_classes=4, stage_widths=[4, 8, 16])
    graph = analyze(model, 16)
    groups = gamma_groups(model, graph, torch.zeros(2, 3, 16, 16))
    with torch.no_grad():  # scales of both signs, no ties
        for g in groups:
            for _, bn, _, _ in g.norms:
                bn.weight.copy_(torch.randn(bn.weight.shape) * 0.5)
    return model, graph, groups


def test_morphnet_penalty_gradient_matches_autograd_and_the_cost_derivative():
    model, graph, groups = tiny_net()
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    penalty = GammaPenalty(groups, graph, strength=0.1, threshold=0.3, cost="macs")
    F.cross_entropy(model(x), y).backward()
    hooked = {n: bn.weight.grad.clone() for g in groups for n, bn, _, _ in g.norms}
    penalty.remove()
    model.zero_grad()
    (F.cross_entropy(model(x), y) + penalty.value()).backward()
    for g in groups:
        for n, bn, _, _ in g.norms:
            torch.testing.assert_close(hooked[n], bn.weight.grad, rtol=1e-5, atol=1e-7)
    # by hand: layer1.0.conv1 (group 1, 3x3 at 16x16) sits between two convs of the stem
    # stream (group 0): d MACs / d w_1 = 2 * 9 * 256 * alive(w_0)
    alive = penalty.alive_widths()
    assert alive[0] == int((channel_scales(groups[0]) > 0.3).sum())
    d = marginal_costs(graph.macs, graph.base_widths)
    assert d[1] == 2 * 9 * 256 * 4
    assert penalty.weights[1] == pytest.approx(2 * 9 * 256 * alive[0] / penalty.norm)
    # the stem stream's gradient goes to the larger |gamma| of its two BatchNorms
    (_, bn_a, _, _), (_, bn_b, _, _) = groups[0].norms
    penalty = GammaPenalty(groups, graph, strength=0.1, threshold=0.3, cost="macs")
    model.zero_grad()
    (bn_a.weight.sum() * 0).backward()  # a zero loss: the gradient is the penalty's alone
    penalty.remove()
    with torch.no_grad():
        expect = 0.1 * penalty.weights[0] * torch.sign(bn_a.weight) * (bn_a.weight.abs() > bn_b.weight.abs())
    torch.testing.assert_close(bn_a.weight.grad, expect, rtol=1e-5, atol=1e-7)


def test_morphnet_penalty_drives_the_gammas_down():
    x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 4, (16,))
    totals = {}
    for strength in (0.0, 0.5):
        model, graph, groups = tiny_net(seed=1)
        penalty = GammaPenalty(groups, graph, strength=strength, threshold=0.05, cost="macs")
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        before = penalty.alive_widths()
        for step in range(30):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            penalty.step(step)
        totals[strength] = sum(float(channel_scales(g).detach().sum()) for g in groups)
        after = penalty.alive_widths()
        penalty.remove()
    assert totals[0.5] < 0.5 * totals[0.0]
    assert sum(after.values()) < sum(before.values())  # channels fell below the threshold


def test_widths_read_off_the_scales_follow_the_threshold_rule():
    model, graph, groups = tiny_net()
    by_gid = {g.gid: g for g in groups}
    with torch.no_grad():
        for g in groups:
            for _, bn, _, _ in g.norms:
                bn.weight.fill_(0.001)
        by_gid[4].norms[0][1].weight[[1, 5, 9]] = torch.tensor([0.5, -0.2, 0.02])  # 2 above 0.05
        stem_a, stem_b = by_gid[0].norms[0][1], by_gid[0].norms[1][1]
        stem_a.weight[0], stem_b.weight[2] = 0.3, -0.4  # a stream channel lives if any BN keeps it
        by_gid[3].norms[0][1].weight[:] = 0.9  # stage 2 stream: all 8 alive
    widths = read_widths(groups, graph, threshold=0.05)
    assert widths == {0: 2, 1: 1, 2: 1, 3: 8, 4: 2, 5: 8}  # group 5 >= group 3: the pad rule
    assert read_widths(groups, graph, threshold=0.05, min_width=3)[4] == 3
    assert read_widths(groups, graph, threshold=0.05, round_to=4)[4] == 4


def test_the_expanded_plan_is_within_the_budget_and_uses_it():
    graph = analyze(resnet_cifar(20, num_classes=5), 32)
    shrunk = {g.id: max(1, g.base_width // (2 + g.id % 3)) for g in graph.groups}
    base_macs = graph.macs.value(graph.base_widths)
    for budget in (0.3 * base_macs, 0.6 * base_macs):
        omega, widths, next_cost = fit_to_budget(graph, shrunk, budget, "macs")
        params, macs = graph.cost(widths)
        assert macs <= budget < next_cost  # in budget, and no larger factor fits
        assert widths == expand_widths(graph, shrunk, omega) and not graph.violations(widths)
        assert all(widths[g.id] <= g.base_width for g in graph.groups)
    with pytest.raises(RsnetError, match="scaling.budget"):
        fit_to_budget(graph, shrunk, 100.0, "macs")


def test_morphnet_run_records_shrunk_and_expanded_widths_and_trains_from_scratch(tmp_path):
    d = tmp_path / "run"
    metrics = run_in_process(d, "compression=morphnet", "compression.morphnet.epochs=1",
                             "compression.morphnet.strength=0.05", "compression/criterion=random",
                             "compression.init=scratch", "scaling.budget.rule=ratio",
                             "scaling.budget.unit=params", "scaling.budget.value=0.5")
    record = json.loads((d / "morphnet.json").read_text())
    plan = json.loads((d / "plan.json").read_text())
    assert plan["policy"] == "morphnet" and plan["predicted"]["params"] <= plan["budget"]["value"]
    assert record["expanded"]["params"] == plan["predicted"]["params"] < record["expanded"]["next_cost"]
    assert set(record["shrunk"]["widths"]) == set(record["expanded"]["widths"])
    assert {m["name"]: m["width"] for m in plan["micro"]} == record["expanded"]["layer_widths"]
    assert metrics["prune/init"] == "scratch" and metrics["prune/criterion"] == "random"
    assert (d / "checkpoints" / "morphnet" / "last.pt").exists()
    assert metrics["morphnet/omega"] == record["omega"]
    pruned = torch.load(d / "checkpoints" / "pruned.pt", weights_only=True)
    assert pruned["meta"]["init"] == "scratch" and pruned["meta"]["method"] == "morphnet"
