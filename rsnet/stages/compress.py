"""Stage prune: carve the N-way model out of the trained baseline.

The compression method is the object ``compression.method`` builds (``_target_``, one per
conf/compression/*.yaml) with the :class:`Compression` protocol: ``compression=prune``
realises the plan by filter pruning (:class:`Carve`); ``compression=netadapt`` / ``morphnet``
choose the widths themselves and prune to them (:mod:`rsnet.stages.search`);
``compression=none`` and ``magnitude`` (whose masks act during training) leave the model as it
is (:class:`Unchanged`). Artifact: checkpoints/pruned.pt. Also keeps a copy of the trained
baseline (the distillation teacher; measured beside the model in the export).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Protocol

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from rsnet import distributed
from rsnet.data.calibration import calibration_batches
from rsnet.errors import RsnetError
from rsnet.metrics import count_params
from rsnet.models import has_trained_weights
from rsnet.models.widths import family_init
from rsnet.plan import check_plan_cost
from rsnet.report import history_metrics
from rsnet.compress import (current_widths, load_pruned, pruned_meta,
                         prune_to_widths, reinitialize, save_pruned, width_schedule)
from rsnet.compress.dependency import train_only_layers
from rsnet.stages.context import Context
from rsnet.stages.train import fit_from_config
from rsnet.train import Runtime

log = logging.getLogger(__name__)


class Compression(Protocol):
    """A compression method: conf/compression/<name>.yaml names it by ``method._target_``
    (a new method is one class and one YAML file)."""

    carves_plan: bool  # realises the scaling policy's plan by pruning (the plan stage then
    # analyses the graph as prunable)

    def check(self, cfg: DictConfig) -> None:
        """RsnetError for settings that cannot work, before any stage runs."""

    def run(self, ctx: Context) -> None:
        """Make ``ctx.model`` the compressed N-way model (setting ``ctx.pruned``, and
        ``ctx.plan`` where the method plans) and add its metrics."""


def method(cfg: DictConfig) -> Compression:
    """The run's compression method, built from ``compression.method``."""
    if cfg.compression.method is None:
        raise RsnetError(f"compression={cfg.compression.name} names no method: its YAML file needs "
                         f"method: {{_target_: ...}} (e.g. rsnet.stages.compress.Unchanged)")
    return instantiate(cfg.compression.method)


class Unchanged:
    """compression=none, and magnitude (its masks act in the training stage)."""
    carves_plan = False

    def check(self, cfg: DictConfig) -> None:
        pass

    def run(self, ctx: Context) -> None:
        pass


class Carve:
    """compression=prune: carve the plan out of the trained baseline (:func:`carve`)."""
    carves_plan = True

    def check(self, cfg: DictConfig) -> None:
        comp = cfg.compression
        if cfg.scaling.policy is None:
            raise RsnetError("compression=prune realises a width plan: set scaling=rs (or uniform, "
                             "factors, plan)")
        if comp.init not in ("inherit", "scratch"):
            raise RsnetError(f"compression.init={comp.init!r}: use inherit or scratch")
        if comp.steps < 1:
            raise RsnetError(f"compression.steps={comp.steps} must be >= 1")

    def run(self, ctx: Context) -> None:
        comp = ctx.cfg.compression
        ctx.model = _from_rank0(lambda: carve(ctx), ctx.rt)
        ctx.pruned = True
        # the iterative run's fine-tuning between its steps (a comparison at equal compute
        # counts it with train/images_seen); None from a file written before it was recorded
        between = pruned_meta(ctx.run_dir / "checkpoints" / "pruned.pt").get("step_images_seen")
        ctx.metrics.update({"prune/criterion": comp.criterion.name, "prune/init": comp.init,
                            "prune/steps": comp.steps, "prune/step_images_seen": between})


def run(ctx: Context) -> None:
    cfg = ctx.cfg
    if has_trained_weights(cfg.model):  # kept unchanged: the teacher, and Psi beside Psi' in the export
        ctx.baseline = copy.deepcopy(ctx.model)
        d = cfg.train.distill  # a teacher run (train.distill.teacher) replaces the baseline
        ctx.teacher = ctx.baseline if d.enabled and d.teacher is None else None
    method(cfg).run(ctx)


def _from_rank0(make: Callable[[], torch.nn.Module], rt: Runtime) -> torch.nn.Module:
    """A model that rank 0 of a torchrun job makes alone (e.g. pruning, fine-tuning steps
    included, in one process); the other ranks wait and receive a copy. One process: make()."""
    if not rt.dist.enabled:
        return make()
    return distributed.on_main(lambda: make().cpu(), rt.dist)  # pickled: CPU tensors


def carve(ctx: Context) -> torch.nn.Module:
    """Carve the plan out of the trained baseline (compression=prune): keep the most important
    filters by ``compression.criterion`` (a :class:`~rsnet.compress.criteria.Criterion`), in
    ``compression.steps`` steps with fine-tuning between them; ``compression.init=scratch``
    re-initialises the pruned network instead.

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
    criterion = instantiate(comp.criterion)
    calib = calibration_batches(data.train, comp.calib_images, data.mean, data.std,
                                seed=cfg.seed) if criterion.data_driven else None
    schedule = width_schedule(current_widths(model), plan.widths(), comp.steps)
    seen = 0  # training images of the fine-tuning between steps so far (None: not recorded)
    for i, widths in enumerate(schedule, start=1):
        step_path = ctx.run_dir / "checkpoints" / f"prune_step{i}.pt"
        if step_path.exists():  # resume an iterative run after its last finished step
            model = load_pruned(step_path, ctx.nway_arch, example)
            seen = pruned_meta(step_path).get("images_seen")
            continue
        model = rt.prepare(prune_to_widths(model.cpu().float(), widths, example, criterion,
                                           calib, cfg.seed))
        log.info("pruning step %d/%d (%s): %s params", i, comp.steps, criterion.name,
                 f"{count_params(model):,}")
        if i < comp.steps and comp.init == "inherit" and comp.step_epochs > 0:
            history = fit_from_config(model, data, cfg.train, rt,
                                      ctx.run_dir / "checkpoints" / f"prune_step{i}", cfg.seed,
                                      epochs=comp.step_epochs)
            if seen is not None:
                seen += history_metrics(history, cfg.train.select_on)["train/images_seen"]
        save_pruned(step_path, model.cpu(), widths, {"step": i, "images_seen": seen})
    if comp.init == "scratch":  # the builder's own init where it has one (else torch's defaults)
        reinitialize(model, cfg.seed, family_init(cfg.model.arch["_target_"]))
    # layers that run only in training (aux heads) are outside the traced plan: check MACs only
    check_plan_cost(model, plan, ctx.input_size, "pruned",
                    params=not train_only_layers(model.cpu(), example))
    save_pruned(path, model.cpu(), plan.widths(), {"criterion": criterion.name, "init": comp.init,
                                                   "steps": comp.steps, "step_images_seen": seen})
    return model
