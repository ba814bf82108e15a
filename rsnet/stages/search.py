"""The search-style compression stages: ``compression=netadapt`` and ``compression=morphnet``.

Both choose the widths themselves (so ``scaling=none``) and take the place of the pipeline's
plan and prune stages: they leave ``groups.json``, ``plan.json`` (policy ``netadapt`` or
``morphnet``), ``checkpoints/pruned.pt`` and their own record (``netadapt.json``,
``morphnet.json``); the training stage then fine-tunes the result (NetAdapt's long-term
fine-tuning; MorphNet's retraining, from scratch with ``compression.init=scratch``).

- NetAdapt (Yang et al., ECCV 2018), :mod:`rsnet.compress.netadapt`: the resource is ONNX
  Runtime latency read from a lookup table of single-layer models measured on this machine
  (:mod:`rsnet.deploy.latency_table`, ``latency_lut.json``), anchored to the measured latency of
  the exported starting model; or exact MACs / params.
- MorphNet (Gordon et al., CVPR 2018), :mod:`rsnet.compress.morphnet`: sparsifying training
  with a MAC-weighted L1 penalty on the BatchNorm scales (``checkpoints/morphnet/``),
  widths read off the scales, expanded uniformly to ``scaling.budget``.

This module is part of the prune stage (:mod:`rsnet.stages.compress`; it reads the Hydra config).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from rsnet.plan.budget import Budget, make_budget
from rsnet.data import DataBundle
from rsnet.data.calibration import calibration_batches
from rsnet.errors import RsnetError
from rsnet.graph import ModelGraph
from rsnet.metrics import count_macs, count_params
from rsnet.models.widths import family_init
from rsnet.plan import WidthPlan, check_plan_cost
from rsnet.compress import (load_pruned, prune_to_widths,
                         reinitialize, save_pruned)
from rsnet.compress.dependency import train_only_layers
from rsnet.deploy.latency_table import LatencyModel, LatencyTable, layer_specs, measure_model_ms
from rsnet.compress.morphnet import (COSTS, GammaPenalty, fit_to_budget, gamma_groups, read_widths)
from rsnet.compress.netadapt import NetAdaptLog, Schedule, netadapt
from rsnet.compress.group_widths import floor_widths
from rsnet.plan.policies import Scaler
from rsnet.train import Runtime, main_logits, make_loader, predict, split_metrics
from rsnet.stages.context import Context
from rsnet.stages.plan import analyze_nway, plan_metrics, width_rule
from rsnet.stages.train import fit_from_config
from rsnet.fileio import atomic_write_json, load_checkpoint_file

__all__ = ["NetAdapt", "MorphNet", "RESOURCES", "stage_search"]

log = logging.getLogger(__name__)

RESOURCES = {"latency": "ms", "macs": "MACs", "params": "params"}


class _Search:
    """A compression method that chooses the widths itself and prunes the baseline to them
    (see :class:`rsnet.stages.compress.Compression`); subclasses find the widths."""
    name: str
    carves_plan = False  # no plan from a scaling policy: the search makes its own

    def check(self, cfg: DictConfig) -> None:
        """Settings that cannot work (before any stage runs)."""
        comp = cfg.compression
        if cfg.scaling.policy is not None:
            raise RsnetError(f"compression={self.name} chooses the widths itself: keep scaling=none "
                             f"(scaling.budget.*, scaling.widths.*, scaling.fixed and "
                             f"scaling.leaf_modules still apply)")
        if comp.init not in ("inherit", "scratch"):
            raise RsnetError(f"compression.init={comp.init!r}: use inherit or scratch")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise RsnetError(f"compression={self.name} runs in one process; start it without torchrun")
        self.check_method(cfg)

    def check_method(self, cfg: DictConfig) -> None:
        raise NotImplementedError

    def find(self, ctx: Context, model: nn.Module, graph: ModelGraph, example: torch.Tensor,
             base_cost: dict) -> tuple[nn.Module, dict[int, int], Budget, dict]:
        """(the model pruned to the found widths, those group widths, the budget, a record)."""
        raise NotImplementedError

    def metrics(self, record: dict) -> dict:
        """Flat metrics (metrics.json) of the method's record (netadapt.json / morphnet.json)."""
        raise NotImplementedError

    def search_cost(self, record: dict, cfg: DictConfig) -> dict:
        """Training the search spent outside ``train.epochs`` (metrics), for comparisons at
        equal compute; none unless a method says so."""
        return {}

    def run(self, ctx: Context) -> None:
        ctx.model, ctx.plan, found = stage_search(ctx, self)
        ctx.metrics.update(found)
        ctx.pruned = True


class NetAdapt(_Search):
    """compression=netadapt (:mod:`rsnet.compress.netadapt`)."""
    name = "netadapt"

    def check_method(self, cfg: DictConfig) -> None:
        na, key = cfg.compression.netadapt, "compression.netadapt"
        if na.resource not in RESOURCES:
            raise RsnetError(f"{key}.resource={na.resource!r}: use one of {', '.join(RESOURCES)}")
        if na.target_ms is not None and (na.resource != "latency" or not na.target_ms > 0):
            raise RsnetError(f"{key}.target_ms={na.target_ms} needs {key}.resource=latency and a "
                             f"positive value (or use {key}.target_ratio)")
        if na.target_ms is None and not 0 < na.target_ratio < 1:
            raise RsnetError(f"{key}.target_ratio={na.target_ratio} must be in (0, 1)")
        if not 0 < na.init_reduction < 1:
            raise RsnetError(f"{key}.init_reduction={na.init_reduction} must be in (0, 1)")
        if not 0 < na.decay <= 1:
            raise RsnetError(f"{key}.decay={na.decay} must be in (0, 1]")
        for name in ("max_steps", "lut_runs", "measure_runs"):
            if na[name] < 1:
                raise RsnetError(f"{key}.{name}={na[name]} must be >= 1")
        if na.short_term_iters < 0 or not na.short_term_lr > 0:
            raise RsnetError(f"{key}.short_term_iters must be >= 0 and {key}.short_term_lr > 0")

    def find(self, ctx, model, graph, example, base_cost):
        return _netadapt(ctx.cfg, model, ctx.data, ctx.rt, ctx.run_dir, graph, example,
                         ctx.nway_arch)

    def metrics(self, record: dict) -> dict:
        steps = record["steps"]
        out = {"prune/steps": len(steps), "netadapt/resource": record["resource"],
               "netadapt/unit": record["unit"], "netadapt/start": record["start"],
               "netadapt/target": record["target"],
               "netadapt/final": steps[-1]["resource"] if steps else record["start"]}
        out.update({f"netadapt/{k}": v for k, v in record.get("extra", {}).items()})
        for s in steps:
            i = s["step"]
            out.update({f"netadapt/step{i}/group": s["group"], f"netadapt/step{i}/width": s["width_to"],
                        f"netadapt/step{i}/resource": s["resource"], f"netadapt/step{i}/score": s["score"]})
        return out

    def search_cost(self, record: dict, cfg: DictConfig) -> dict:
        """Every proposal got ``short_term_iters`` steps of ``train.batch_size`` images (and one
        pass over the validation split to be scored)."""
        proposals = sum(len(s["proposals"]) for s in record["steps"])
        return {"netadapt/proposals": proposals,
                "netadapt/short_term_images": proposals * cfg.compression.netadapt.short_term_iters
                * cfg.train.batch_size}


class MorphNet(_Search):
    """compression=morphnet (:mod:`rsnet.compress.morphnet`)."""
    name = "morphnet"

    def check_method(self, cfg: DictConfig) -> None:
        mn, key = cfg.compression.morphnet, "compression.morphnet"
        if mn.epochs < 1:
            raise RsnetError(f"{key}.epochs={mn.epochs} must be >= 1 (the sparsifying training)")
        if mn.cost not in COSTS:
            raise RsnetError(f"{key}.cost={mn.cost!r}: use one of {', '.join(COSTS)}")
        if not mn.strength >= 0 or not mn.threshold >= 0:
            raise RsnetError(f"{key}.strength and {key}.threshold must be >= 0")
        if cfg.train.precision == "fp16":
            raise RsnetError("compression=morphnet adds its penalty in backward hooks, which fp16 "
                             "loss scaling would distort: use train.precision=bf16 or fp32")

    def find(self, ctx, model, graph, example, base_cost):
        return _morphnet(ctx.cfg, model, ctx.data, ctx.rt, ctx.run_dir, graph, example, base_cost)

    def metrics(self, record: dict) -> dict:
        def widths(w: dict) -> str:
            return " ".join(f"{g}:{v}" for g, v in w.items())
        return {"prune/steps": 1, "morphnet/strength": record["strength"],
                "morphnet/cost": record["cost"], "morphnet/threshold": record["threshold"],
                "morphnet/epochs": record["epochs"], "morphnet/omega": record["omega"],
                "morphnet/shrunk_params": record["shrunk"]["params"],
                "morphnet/shrunk_macs": record["shrunk"]["macs"],
                "morphnet/shrunk_widths": widths(record["shrunk"]["widths"]),
                "morphnet/widths": widths(record["expanded"]["widths"])}


def _short_term(model: nn.Module, data: DataBundle, train_cfg: DictConfig, rt: Runtime, iters: int,
                lr: float, seed: int) -> None:
    """``iters`` optimizer steps of ``train.optimizer`` at learning rate ``lr`` (constant),
    ``train.loss`` on augmented training batches (NetAdapt's short-term fine-tuning)."""
    if iters <= 0:
        return
    criterion = instantiate(train_cfg.loss)
    optimizer = instantiate(train_cfg.optimizer, lr=lr)(model.parameters())
    loader = make_loader(data.train, data, train_cfg.batch_size, rt, train=True, seed=seed)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.autocast_dtype == torch.float16)
    done, epoch = 0, 0
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        while done < iters:
            loader.set_epoch(epoch)
            for x, y in loader:
                with rt.autocast():
                    out = model(x)
                    loss = criterion(main_logits(out), y)
                    if isinstance(out, (tuple, list)):  # auxiliary heads (GoogLeNet)
                        loss = loss + train_cfg.aux_weight * sum(criterion(o, y) for o in out[1:])
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                done += 1
                if done == iters:
                    break
            epoch += 1
    model.eval()


def _netadapt(cfg: DictConfig, model: nn.Module, data: DataBundle, rt: Runtime, run_dir: Path,
              graph: ModelGraph, example: torch.Tensor, fresh: Callable[[], nn.Module]
              ) -> tuple[nn.Module, dict[int, int], None, dict]:
    comp, na, sc = cfg.compression, cfg.compression.netadapt, cfg.scaling
    size, threads = cfg.model.input_size, cfg.export.latency.threads
    if len(data.val) == 0:
        raise RsnetError("compression=netadapt scores its proposals on the validation split, which "
                         "is empty: set dataset.val_fraction > 0")
    score_key = cfg.train.select_on.removeprefix("val/")
    log_path, lut_path = run_dir / "netadapt.json", run_dir / "latency_lut.json"
    record = NetAdaptLog.load(log_path) if log_path.exists() else None
    table = None
    if na.resource == "latency":
        entries = json.loads(lut_path.read_text())["entries"] if lut_path.exists() else {}
        table = LatencyTable(layer_specs(model, graph), threads, na.lut_runs, entries=entries)
        start = record.start if record else measure_model_ms(model, size, threads, na.measure_runs)
        resource: Callable[[list[int]], float] = LatencyModel(table, start, graph.base_widths)
    else:
        poly = graph.macs if na.resource == "macs" else graph.params
        resource = lambda w: float(poly.value(w))  # noqa: E731 - exact cost of the widths
        start = resource(graph.base_widths)
    target = float(na.target_ms) if na.target_ms is not None else na.target_ratio * start
    setting = "compression.netadapt." + ("target_ms" if na.target_ms is not None else "target_ratio")
    min_width, round_to = sc.widths.min_width, sc.widths.round_to
    floor = resource(graph.width_vector(floor_widths(graph, min_width, round_to)))
    unit = RESOURCES[na.resource]
    if floor > target:
        raise RsnetError(f"{setting}: the target of {target:.4g} {unit} cannot be reached: even with "
                         f"every width group at its narrowest the model costs {floor:.4g} {unit} "
                         f"(it starts at {start:.4g}); raise {setting} or lower "
                         f"scaling.widths.min_width")
    if record is None:
        record = NetAdaptLog(na.resource, unit, start, target, na.init_reduction * start, na.decay)
        record.save(log_path)

    criterion = instantiate(comp.criterion)
    calib = calibration_batches(data.train, comp.calib_images, data.mean, data.std,
                                seed=cfg.seed) if criterion.data_driven else None

    def prune(m: nn.Module, widths: dict[str, int], step: int) -> nn.Module:
        return rt.prepare(prune_to_widths(m.cpu().float(), widths, example, criterion, calib,
                                          cfg.seed + step))

    def save_table() -> None:
        if table is not None and table.unsaved:  # new entries: keep them for a resumed run
            atomic_write_json(lut_path, table.to_json())
            table.unsaved = 0

    def finetune(m: nn.Module, step: int, gid: int) -> None:
        save_table()  # the step's proposals are measured: a resumed step sees the same table
        _short_term(m, data, cfg.train, rt, na.short_term_iters, na.short_term_lr,
                    cfg.seed * 100_003 + step * 1009 + gid)

    def evaluate(m: nn.Module) -> float:
        metrics = split_metrics(predict(m, data.val, data, rt, cfg.train.eval_batch_size, "val"),
                                data.val, data.misc_label)
        if score_key not in metrics:
            raise RsnetError(f"train.select_on={cfg.train.select_on!r} is not a validation metric; "
                             f"use one of {['val/' + k for k in metrics]}")
        return metrics[score_key]

    schedule = Schedule(target, na.init_reduction * start, na.decay, na.max_steps)
    base_widths = {g.id: g.base_width for g in graph.groups}  # the model starts at the baseline
    model, widths = netadapt(rt.prepare(model), graph, base_widths, resource, schedule, prune,
                             finetune, evaluate, record, log_path, run_dir / "checkpoints", fresh,
                             example, rt.prepare, min_width, round_to, on_step=save_table)
    save_table()
    if table is not None:
        record.extra.update({"measured_start_ms": start, "threads": threads,
                             "lut_entries": len(table.entries),
                             "measured_final_ms": measure_model_ms(model, size, threads, na.measure_runs)})
    record.done = True
    record.save(log_path)
    return model, widths, None, asdict(record)


def _morphnet(cfg: DictConfig, model: nn.Module, data: DataBundle, rt: Runtime, run_dir: Path,
              graph: ModelGraph, example: torch.Tensor, base_cost: dict
              ) -> tuple[nn.Module, dict[int, int], Budget, dict]:
    comp, mn, sc = cfg.compression, cfg.compression.morphnet, cfg.scaling
    min_width, round_to = sc.widths.min_width, sc.widths.round_to
    model = rt.prepare(model)
    groups = gamma_groups(model, graph, example.to(rt.device))
    if not groups:
        raise RsnetError(f"compression=morphnet: {cfg.model.name} has no BatchNorm scales in its "
                         f"prunable layers; use compression=netadapt or compression=prune")
    penalty = GammaPenalty(groups, graph, mn.strength, mn.threshold, mn.cost)
    ckpt = run_dir / "checkpoints" / "morphnet"
    try:
        fit_from_config(model, data, cfg.train, rt, ckpt, cfg.seed, epochs=mn.epochs,
                        hooks=[penalty])
    finally:
        penalty.remove()
    # the sparsified weights are the last epoch's, not the best validation epoch's
    model.load_state_dict(load_checkpoint_file(ckpt / "last.pt", "MorphNet checkpoint")["model"])
    shrunk = read_widths(groups, graph, mn.threshold, min_width, round_to)
    num_base = sc.budget.num_base_classes or len(data.base_class_names)
    budget = make_budget(sc.budget.rule, sc.budget.unit, base_cost[sc.budget.unit], data.num_outputs,
                         num_base, sc.budget.lam, sc.budget.value)
    omega, widths, next_cost = fit_to_budget(graph, shrunk, budget.value, budget.unit, min_width,
                                             round_to)
    criterion = instantiate(comp.criterion)
    calib = calibration_batches(data.train, comp.calib_images, data.mean, data.std,
                                seed=cfg.seed) if criterion.data_driven else None
    model = prune_to_widths(model.cpu().float(), graph.layer_widths(widths), example,
                            criterion, calib, cfg.seed)
    shrunk_cost, cost = graph.cost(shrunk), graph.cost(widths)
    record = {"strength": mn.strength, "cost": mn.cost, "threshold": mn.threshold,
              "epochs": mn.epochs, "budget": budget.as_dict(), "omega": omega,
              "shrunk": {"widths": {str(g): w for g, w in sorted(shrunk.items())},
                         "layer_widths": graph.layer_widths(shrunk),
                         "params": shrunk_cost[0], "macs": shrunk_cost[1]},
              "expanded": {"widths": {str(g): w for g, w in sorted(widths.items())},
                           "layer_widths": graph.layer_widths(widths),
                           "params": cost[0], "macs": cost[1], "next_cost": next_cost}}
    atomic_write_json(run_dir / "morphnet.json", record)
    return model, widths, budget, record


def found(method: _Search, record: dict, cfg: DictConfig) -> dict:
    comp = cfg.compression
    return {"prune/criterion": comp.criterion.name, "prune/init": comp.init,
            **method.metrics(record), **method.search_cost(record, cfg)}


def stage_search(ctx: Context, method: _Search) -> tuple[nn.Module, WidthPlan, dict]:
    """compression=netadapt / morphnet: find the widths (``method``), prune the baseline to them.

    Returns (the pruned model, ready to train; its WidthPlan; flat metrics, the plan's
    included). Artifacts: groups.json, the method's record, plan.json,
    checkpoints/pruned.pt; a rerun with all of them present only reloads them.
    """
    cfg, rt, run_dir, model = ctx.cfg, ctx.rt, ctx.run_dir, ctx.model
    comp, sc, size = cfg.compression, cfg.scaling, ctx.input_size
    base_cost = {"params": count_params(model), "macs": count_macs(model, size)}
    ctx.to_nway(model)
    example = ctx.example()
    graph = analyze_nway(ctx, prunable=True)  # the result is pruned
    final, plan_path, record_path = (run_dir / "checkpoints" / "pruned.pt", run_dir / "plan.json",
                                     run_dir / f"{method.name}.json")
    if final.exists() and plan_path.exists() and record_path.exists():
        log.info("stage artifact %s exists: skipping %s", final.name, method.name)
        record = json.loads(record_path.read_text())
        plan = WidthPlan.load(plan_path)
        return (rt.prepare(load_pruned(final, ctx.nway_arch, example)), plan,
                {**plan_metrics(plan), **found(method, record, cfg)})
    model, widths, budget, record = method.find(ctx, model, graph, example, base_cost)
    scaler = Scaler(graph, width_rule(sc.widths), bottleneck=False)
    plan = scaler.plan_from_group_widths(widths, method.name, budget, base_cost)
    plan.save(plan_path)
    log.info("%s", plan.table())
    model = model.cpu()
    if comp.init == "scratch":  # the pruned architecture re-initialised (the builder's own init)
        reinitialize(model, cfg.seed, family_init(cfg.model.arch["_target_"]))
    check_plan_cost(model, plan, size, method.name, params=not train_only_layers(model, example))
    save_pruned(final, model, plan.widths(), {"method": method.name, "criterion": comp.criterion.name,
                                              "init": comp.init})
    return (rt.prepare(model), plan,
            {**plan_metrics(plan), **found(method, record, cfg)})
