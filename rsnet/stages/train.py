"""Stage train: fit the N-way model (from the plan's widths, the carved model or the
re-headed baseline); the selected weights go to checkpoints/model.pt, the epochs to
history.json. Distillation from the baseline and gradual magnitude pruning hook in here."""

from __future__ import annotations

import json
import logging

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rsnet import distributed, report
from rsnet.distill import DistillationLoss, misc_calibration
from rsnet.models.widths import build_at_widths
from rsnet.plan import check_plan_cost
from rsnet.compress.sparsity import MagnitudePruner
from rsnet.data import DataBundle
from rsnet.errors import RsnetError
from rsnet.stages.runs import teacher_run_model
from rsnet.stages.context import Context
from rsnet.train import Runtime, fit, make_loader, predict
from rsnet.fileio import atomic_torch_save, atomic_write_json, load_checkpoint_file

log = logging.getLogger(__name__)


def run(ctx: Context) -> None:
    ctx.model, ctx.history = train(ctx)
    if not ctx.main:  # evaluation, export and the report are rank 0's alone
        ctx.finished = True
        return
    ctx.metrics.update(report.history_metrics(ctx.history, ctx.cfg.train.select_on))


def train(ctx: Context) -> tuple[torch.nn.Module, list[dict]]:
    """Fit the (N-way) model; the selected weights go to checkpoints/model.pt.

    With a plan, the model is the network pruned to it (``ctx.pruned``), or else the scaled
    network built at the plan's widths from scratch (the thesis's way); its cost must equal
    the plan's prediction.
    """
    cfg, data, plan, model, rt = ctx.cfg, ctx.data, ctx.plan, ctx.model, ctx.rt
    final = ctx.run_dir / "checkpoints" / "model.pt"
    if plan is not None and not ctx.pruned:
        torch.manual_seed(cfg.seed)
        model = build_at_widths(cfg.model, data.num_outputs, plan.widths(), model)
        check_plan_cost(model, plan, ctx.input_size, "built at the plan")
    elif plan is None:  # an untrained baseline has no rows worth keeping
        ctx.to_nway(model)
    model = rt.prepare(model)
    if distributed.on_main(final.exists, rt.dist):  # under torchrun rank 0 decides for all ranks
        log.info("stage artifact %s exists: skipping training", final)
        if not rt.dist.is_main:
            return model, []
        model.load_state_dict(load_checkpoint_file(final, "trained model")["state_dict"])
        return model, json.loads((ctx.run_dir / "history.json").read_text())
    if cfg.train.epochs == 0:  # evaluate / export the model as it is (e.g. a pretrained one)
        history: list[dict] = []
    else:
        history = fit_n_way(ctx, model)
    if rt.dist.is_main:
        atomic_write_json(ctx.run_dir / "history.json", history)
        atomic_torch_save({"state_dict": model.state_dict(), "class_names": data.class_names,
                           "model": OmegaConf.to_container(cfg.model, resolve=True)}, final)
    return model, history


def magnitude_pruner(ctx: Context, model: torch.nn.Module) -> MagnitudePruner:
    """Gradual magnitude pruning on the training stage's step counter (epochs -> steps).

    The schedule must reach its final sparsity before training ends: only the epochs that end
    with the final masks can be selected (a model from half-way along the ramp would be less
    sparse than asked for), so a schedule that ends later is refused before training."""
    sp, epochs = ctx.cfg.compression.sparsity, ctx.cfg.train.epochs
    steps_per_epoch = max(1, len(ctx.data.train) // ctx.cfg.train.batch_size)
    end_step = int(sp.end_epoch * steps_per_epoch)
    if end_step > epochs * steps_per_epoch - 1:  # global steps 0 .. epochs * steps - 1
        raise RsnetError(f"compression.sparsity.end_epoch={sp.end_epoch} reaches the final sparsity "
                         f"at step {end_step}, after the last of train.epochs={epochs} "
                         f"({steps_per_epoch} steps each); end the schedule earlier (the last "
                         f"epochs fine-tune with the final masks) or train longer")
    return MagnitudePruner(model, sp.initial_sparsity, sp.final_sparsity,
                           int(sp.begin_epoch * steps_per_epoch), end_step,
                           sp.frequency, sp.power, sp.scope, sp.prune_classifier)


def distillation(ctx: Context) -> DistillationLoss:
    """The loss that distils the baseline (``ctx.teacher``) into the model; with a misc
    class, the teacher's misc logit is first calibrated on validation (distill.json). With
    ``train.distill.teacher``, the model of that finished run, whose N outputs are the
    student's, as it is."""
    cfg, data, rt = ctx.cfg, ctx.data, ctx.rt
    d = cfg.train.distill  # a teacher exists: see pipeline.check_settings
    if d.teacher is not None:
        teacher = teacher_run_model(d.teacher, data)
        params = ctx.metrics["distill/teacher_params"] = sum(p.numel() for p in teacher.parameters())
        log.info("distillation: teacher %s (%s parameters)", d.teacher, f"{params:,}")
        return DistillationLoss(rt.prepare(teacher), d.temperature, d.alpha)
    teacher, bias = rt.prepare(ctx.teacher), 0.0
    path = ctx.run_dir / "distill.json"

    def calibrate() -> float:  # rank 0 alone: it reads and writes the run directory
        if path.exists():  # a resumed run keeps the bias its earlier epochs trained with
            bias_ = float(json.loads(path.read_text())["misc_bias"])
            log.info("distillation: teacher misc logit bias %.4f from %s", bias_, path.name)
            return bias_
        # the C-way teacher on the subset's validation images (labels: 0 = misc)
        logits = predict(teacher, data.val, data, rt.local(), cfg.train.eval_batch_size,
                         "teacher val")
        summary = misc_calibration(logits, data.val.targets, data.subset)
        atomic_write_json(path, summary)
        log.info("distillation: teacher misc logit bias %.4f; the mapped teacher's val local "
                 "accuracy %.4f -> %.4f (%s)", summary["misc_bias"],
                 summary["before/acc_local"], summary["after/acc_local"], path.name)
        return summary["misc_bias"]

    if d.calibrate_misc and data.subset is not None and data.subset.misc:
        # the plain mapping sums every out-of-scope class into misc and teaches "misc"
        bias = distributed.on_main(calibrate, rt.dist)
    return DistillationLoss(teacher, d.temperature, d.alpha, data.subset, misc_bias=bias)


def fit_n_way(ctx: Context, model: torch.nn.Module) -> list[dict]:
    cfg = ctx.cfg
    hooks = [magnitude_pruner(ctx, model)] if cfg.compression.sparsity.enabled else []
    distill = distillation(ctx) if cfg.train.distill.enabled else None
    return fit_from_config(model, ctx.data, cfg.train, ctx.rt, ctx.run_dir / "checkpoints",
                           cfg.seed, distill=distill, hooks=hooks,
                           on_epoch_end=lambda epoch, row: ctx.logger.epoch(row))


def fit_from_config(model: torch.nn.Module, data: DataBundle, train: DictConfig, rt: Runtime,
                    ckpt_dir, seed: int, *, epochs: int | None = None, **kwargs) -> list[dict]:
    """:func:`rsnet.train.fit` with the loss, optimizer and schedule that ``train.*``
    configures (conf/train/), built here: the one place a training config becomes objects.
    ``epochs`` replaces train.epochs (e.g. the fine-tuning between pruning steps)."""
    epochs = train.epochs if epochs is None else epochs
    loss = instantiate(train.loss)
    optimizer = instantiate(train.optimizer)(model.parameters())
    loader = make_loader(data.train, data, train.batch_size, rt, train=True, seed=seed)
    scheduler = instantiate(train.scheduler)(optimizer, total_steps=epochs * len(loader),
                                             steps_per_epoch=len(loader))
    return fit(model, data, optimizer, scheduler, loss, epochs=epochs, loader=loader, rt=rt,
               ckpt_dir=ckpt_dir, seed=seed, aux_weight=train.aux_weight,
               select_on=train.select_on, eval_batch_size=train.eval_batch_size,
               checkpoint_every_s=60.0 * train.checkpoint_every_min, **kwargs)
