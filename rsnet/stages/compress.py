"""Stage prune: carve the N-way model out of the trained baseline.

``compression=prune`` realises the plan by filter pruning (:func:`carve`);
``compression=netadapt`` / ``morphnet`` choose the widths themselves and prune to them
(:mod:`rsnet.stages.search`). Artifact: checkpoints/pruned.pt. Also keeps a copy of the
trained baseline (the distillation teacher; measured beside the model in the export).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable

import torch
from omegaconf import OmegaConf

from rsnet import distributed
from rsnet.data.calibration import calibration_batches
from rsnet.errors import RsnetError
from rsnet.metrics import count_params
from rsnet.models.widths import family_init
from rsnet.plan import check_plan_cost
from rsnet.compress import (DATA_DRIVEN, current_widths, load_pruned,
                         prune_to_widths, reinitialize, save_pruned, width_schedule)
from rsnet.compress.dependency import train_only_layers
from rsnet.stages.context import Context
from rsnet.stages.search import SEARCH_METHODS, stage_search
from rsnet.train import Runtime, fit

log = logging.getLogger(__name__)


def run(ctx: Context) -> None:
    cfg = ctx.cfg
    if cfg.model.checkpoint:  # kept unchanged: the teacher, and Psi beside Psi' in the export
        ctx.baseline = copy.deepcopy(ctx.model)
        ctx.teacher = ctx.baseline if cfg.train.distill.enabled else None
    if cfg.compression.name == "prune":
        ctx.model = _from_rank0(lambda: carve(ctx), ctx.rt)
        ctx.pruned = True
        ctx.metrics.update({"prune/criterion": cfg.compression.criterion,
                            "prune/init": cfg.compression.init, "prune/steps": cfg.compression.steps})
    elif cfg.compression.name in SEARCH_METHODS:  # netadapt / morphnet: plan and prune in one
        ctx.model, ctx.plan, found = stage_search(ctx)
        ctx.metrics.update(found)
        ctx.pruned = True


def _from_rank0(make: Callable[[], torch.nn.Module], rt: Runtime) -> torch.nn.Module:
    """A model that rank 0 of a torchrun job makes alone (e.g. pruning, fine-tuning steps
    included, in one process); the other ranks wait and receive a copy. One process: make()."""
    if not rt.dist.enabled:
        return make()
    return distributed.on_main(lambda: make().cpu(), rt.dist)  # pickled: CPU tensors


def carve(ctx: Context) -> torch.nn.Module:
    """Carve the plan out of the trained baseline (compression=prune): keep the most important
    filters by ``compression.criterion``, in ``compression.steps`` steps with fine-tuning
    between them; ``compression.init=scratch`` re-initialises the pruned network instead.

    Artifact: checkpoints/pruned.pt (state dict + widths, reloadable in a fresh process).
    """
    cfg, data, plan, rt = ctx.cfg, ctx.data, ctx.plan, ctx.rt.local()
    comp = cfg.compression
    path = ctx.run_dir / "checkpoints" / "pruned.pt"
    model = ctx.to_nway(ctx.model)
    example = ctx.example()
    if path.exists():
        log.info("stage artifact %s exists: skipping pruning", path.name)
        return load_pruned(path, ctx.nway_arch, example)
    if comp.init not in ("inherit", "scratch"):
        raise RsnetError(f"compression.init={comp.init!r}: use inherit or scratch")
    if comp.steps < 1:
        raise RsnetError(f"compression.steps={comp.steps} must be >= 1")
    calib = calibration_batches(data.train, comp.calib_images, data.mean, data.std,
                                seed=cfg.seed) if comp.criterion in DATA_DRIVEN else None
    schedule = width_schedule(current_widths(model), plan.widths(), comp.steps)
    for i, widths in enumerate(schedule, start=1):
        step_path = ctx.run_dir / "checkpoints" / f"prune_step{i}.pt"
        if step_path.exists():  # resume an iterative run after its last finished step
            model = load_pruned(step_path, ctx.nway_arch, example)
            continue
        model = rt.prepare(prune_to_widths(model.cpu().float(), widths, example, comp.criterion,
                                           calib, cfg.seed))
        log.info("pruning step %d/%d (%s): %s params", i, comp.steps, comp.criterion,
                 f"{count_params(model):,}")
        if i < comp.steps and comp.init == "inherit" and comp.step_epochs > 0:
            step_cfg = OmegaConf.merge(cfg.train, {"epochs": comp.step_epochs})
            fit(model, data, step_cfg, rt, ctx.run_dir / "checkpoints" / f"prune_step{i}", cfg.seed)
        save_pruned(step_path, model.cpu(), widths, {"step": i})
    if comp.init == "scratch":  # the builder's own init where it has one (else torch's defaults)
        reinitialize(model, cfg.seed, family_init(cfg.model.arch["_target_"]))
    # layers that run only in training (aux heads) are outside the traced plan: check MACs only
    check_plan_cost(model, plan, ctx.input_size, "pruned",
                    params=not train_only_layers(model.cpu(), example))
    save_pruned(path, model.cpu(), plan.widths(), {"criterion": comp.criterion, "init": comp.init,
                                                   "steps": comp.steps})
    return model
