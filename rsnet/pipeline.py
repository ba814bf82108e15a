"""The pipeline: data -> model -> baseline -> train -> evaluate -> export -> report.

Only this module reads the Hydra config. Each stage leaves an artifact in the run directory
and is skipped when that artifact is already there, so rerunning a killed command resumes it
(training itself resumes from its last epoch checkpoint). A run directory remembers the
fingerprint of the config that made it; reusing it with a different config is an error
unless ``overwrite=true``.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rsnet import distributed, progress, report
from rsnet.config import NON_RESULT_KEYS, STAGES
from rsnet.data import DataBundle, build_data
from rsnet.distill import DistillationLoss, misc_calibration, subset_teacher_logits
from rsnet.errors import RsnetError
from rsnet.data.loader import BatchLoader
from rsnet.deploy import CALIB_METHODS, export_onnx, onnx_logits, open_session, quantize_int8
from rsnet.deploy.onnx_io import MainLogits
from rsnet.metrics import (baseline_scope_metrics, count_macs, count_params, measure_latency,
                           session_latency)
from rsnet.budget import make_budget
from rsnet.graph import analyze
from rsnet.models import build_model, subset_head
from rsnet.models.widths import INITS, build_at_widths
from rsnet.openset import openset_metrics
from rsnet.plan import WidthPlan
from rsnet.prune import (DATA_DRIVEN, calibration_batches, current_widths, load_pruned,
                         prune_to_widths, reinitialize, save_pruned, width_schedule)
from rsnet.prune.groups import train_only_layers
from rsnet.scaling import Scaler, WidthRule
from rsnet.search import SEARCH_METHODS, check_search_settings, stage_search
from rsnet.sparsity import MagnitudePruner, sparsity_report
from rsnet.train import Runtime, check_select_on, fit, predict, resolve_runtime, split_metrics
from rsnet.validate import validate
from rsnet.utils import atomic_torch_save, atomic_write_json, atomic_write_text, load_checkpoint_file

log = logging.getLogger(__name__)


def fingerprint(cfg: DictConfig) -> str:
    """Hash of the resolved config without the keys that do not change results."""
    container = OmegaConf.to_container(cfg, resolve=True)
    for dotted in NON_RESULT_KEYS:
        *parents, leaf = dotted.split(".")
        node = container
        for p in parents:
            node = node.get(p) or {}
        node.pop(leaf, None)
    return hashlib.sha1(json.dumps(container, sort_keys=True).encode()).hexdigest()[:16]


_LOCKS: dict[Path, int] = {}  # run directory -> the open lock file held until the process ends


def lock_run_dir(run_dir: Path) -> None:
    """Hold an exclusive lock on ``run_dir`` while this process runs in it: a second run into
    the same directory stops at once instead of training alongside and interleaving files.
    The operating system releases the lock when the process ends, however it ends."""
    if run_dir in _LOCKS:
        return
    path = run_dir / ".lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise RsnetError(f"cannot write in the run directory {run_dir} ({e.strerror}); pick a "
                         f"writable one with hydra.run.dir=...") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RsnetError(f"{run_dir} is in use by another rsnet run (pid {holder}); wait for it "
                         f"to end or pick another directory with hydra.run.dir=...") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _LOCKS[run_dir] = fd


def prepare_run_dir(cfg: DictConfig, run_dir: Path) -> None:
    """Claim ``run_dir`` for this config: new, same config (resume) or ``overwrite=true``."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RsnetError(f"cannot create the run directory {run_dir} ({e.strerror}); pick another "
                         f"with hydra.run.dir=...") from e
    lock_run_dir(run_dir)
    marker = run_dir / "run.json"
    fp = fingerprint(cfg)
    if marker.exists():
        old = json.loads(marker.read_text()).get("fingerprint")
        if old != fp and not cfg.overwrite:
            raise RsnetError(f"{run_dir} holds a run with a different config; pick another "
                             f"directory (hydra.run.dir=...) or pass overwrite=true to replace it")
        if old != fp:
            log.warning("overwrite=true: clearing %s", run_dir)
            for p in run_dir.iterdir():
                if p.name not in (".hydra", ".lock"):
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    atomic_write_json(marker, {"fingerprint": fp})


def _cost(model: torch.nn.Module, input_size: int, prefix: str) -> dict:
    return {f"{prefix}/params": count_params(model), f"{prefix}/macs": count_macs(model, input_size)}


def _cached_json(path: Path, compute) -> dict:
    if path.exists():
        log.info("stage artifact %s exists: skipping", path.name)
        return json.loads(path.read_text())
    result = compute()
    atomic_write_json(path, result)
    return result


def stage_baseline(cfg: DictConfig, model, data: DataBundle, rt: Runtime, run_dir: Path) -> dict:
    """The trained baseline (C-way) on the full test set and on the subset's test images."""
    def compute() -> dict:
        full = data if data.subset is None else build_data(
            OmegaConf.merge(cfg.dataset, {"num_classes": None, "classes": None, "unseen_fraction": 0.0}))
        m = rt.prepare(model)
        logits = predict(m, full.test, full, rt, cfg.train.eval_batch_size, "baseline test")
        out = {f"baseline/test/{k}": v for k, v in split_metrics(logits, full.test, None).items()}
        if data.subset is not None:
            sub = predict(m, data.test, data, rt, cfg.train.eval_batch_size, "baseline subset")
            scope = baseline_scope_metrics(sub, data.test.orig_labels, data.subset)
            out.update({f"baseline/test/{k}": v for k, v in scope.items()})
        if data.misc_label is not None:  # Psi as an N-way model: the honest reference for Psi'
            def mapped(split):
                logits = predict(m, split, data, rt, cfg.train.eval_batch_size, "baseline mapped")
                return subset_teacher_logits(logits, data.subset)
            test = subset_teacher_logits(sub, data.subset)  # the subset's test logits, once
            out.update({f"baseline/mapped/{k}": v
                        for k, v in nway_metrics(cfg, mapped, data, test).items()})
        return out
    return _cached_json(run_dir / "baseline_metrics.json", compute)


def nway_metrics(cfg: DictConfig, logits_of: Callable, data: DataBundle,
                 test_logits: torch.Tensor | None = None) -> dict:
    """The test metrics of an N-way model with a misc output: argmax local / global / raw
    (``test/...``), and its misc detector with a threshold calibrated on validation
    (``test/cal/...``, ``openset/...``). ``logits_of(split)`` gives (n, N) logits."""
    test = logits_of(data.test) if test_logits is None else test_logits
    out = {f"test/{k}": v for k, v in split_metrics(test, data.test, data.misc_label).items()}
    unseen = logits_of(data.unseen) if data.unseen is not None else None
    out.update(openset_metrics((logits_of(data.val), data.val.targets), (test, data.test.targets),
                               unseen, data.misc_label, cfg.openset.score, cfg.openset.tpr))
    return out


def stage_plan(cfg: DictConfig, baseline: torch.nn.Module, data: DataBundle, run_dir: Path
               ) -> WidthPlan | None:
    """Trace the N-way architecture, set the budget and solve for the widths (plan.json)."""
    if cfg.scaling.name == "none":
        return None
    path = run_dir / "plan.json"
    if path.exists():
        log.info("stage artifact %s exists: skipping planning", path.name)
        return WidthPlan.load(path)
    t0 = time.perf_counter()
    sc = cfg.scaling
    arch = build_model(OmegaConf.merge(cfg.model, {"checkpoint": None}), data.num_outputs)
    # a plan realised by pruning keeps what the pruner cannot select channels through (shuffles)
    graph = analyze(arch, cfg.model.input_size, fixed=list(sc.fixed), tie=[list(t) for t in sc.tie],
                    leaf_modules=list(sc.leaf_modules), prunable=cfg.compression.name == "prune")
    atomic_write_json(run_dir / "groups.json", describe_graph(graph))
    base_cost = {"params": count_params(baseline), "macs": count_macs(baseline, cfg.model.input_size)}
    num_base = sc.budget.num_base_classes or len(data.base_class_names)
    budget = make_budget(sc.budget.rule, sc.budget.unit, base_cost[sc.budget.unit],
                         data.num_outputs, num_base, sc.budget.lam, sc.budget.value)
    try:
        policy = instantiate(sc.policy, _convert_="all")
    except InstantiationException as e:
        raise RsnetError(f"scaling.policy of scaling={sc.name} is invalid: {e}") from e
    scaler = Scaler(graph, WidthRule(sc.widths.min_width, sc.widths.round_to), sc.bottleneck)
    plan = policy.make(scaler, budget, base_cost)
    plan.solve_time_s = time.perf_counter() - t0
    plan.save(path)
    log.info("%s", plan.table())
    return plan


def describe_graph(graph) -> dict:
    """The graph analysis as JSON (groups.json): micro-layers, groups, macro-layers, units."""
    return {"micro": [{"name": m.name, "kind": m.kind, "base_width": m.base_width, "macro": m.macro,
                       "group": m.group} for m in graph.micro],
            "groups": [{"id": g.id, "members": g.members, "base_width": g.base_width}
                       for g in graph.groups],
            "macro": [{"index": m.index, "name": m.name, "micro": m.micro, "unit": m.unit,
                       "base_out_width": m.base_out_width} for m in graph.macros],
            "units": graph.units}


def plan_metrics(plan: WidthPlan) -> dict:
    out = {"plan/policy": plan.policy, "plan/params": plan.predicted["params"],
           "plan/macs": plan.predicted["macs"],
           "plan/factors": " ".join(f"{m.factor:g}" for m in plan.macro),
           "plan/time_s": plan.solve_time_s}
    if plan.budget:
        out.update({"plan/budget": plan.budget["value"], "plan/budget_unit": plan.budget["unit"],
                    "plan/budget_used": plan.predicted[plan.budget["unit"]] / plan.budget["value"]})
    return out


def stage_prune(cfg: DictConfig, model: torch.nn.Module, data: DataBundle, rt: Runtime,
                run_dir: Path, plan: WidthPlan) -> torch.nn.Module:
    """Carve the plan out of the trained baseline (compression=prune): keep the most important
    filters by ``compression.criterion``, in ``compression.steps`` steps with fine-tuning
    between them; ``compression.init=scratch`` re-initialises the pruned network instead.

    Artifact: checkpoints/pruned.pt (state dict + widths, reloadable in a fresh process).
    """
    comp = cfg.compression
    path = run_dir / "checkpoints" / "pruned.pt"
    if data.subset is not None:
        subset_head(model, data.subset, cfg.model.head if cfg.model.checkpoint else "reset")
    example = torch.zeros(2, 3, cfg.model.input_size, cfg.model.input_size)

    def fresh() -> torch.nn.Module:  # the unpruned N-way architecture, for reloading
        net = build_model(OmegaConf.merge(cfg.model, {"checkpoint": None}), len(data.base_class_names))
        return subset_head(net, data.subset, "reset") if data.subset is not None else net

    if path.exists():
        log.info("stage artifact %s exists: skipping pruning", path.name)
        return load_pruned(path, fresh, example)
    if comp.init not in ("inherit", "scratch"):
        raise RsnetError(f"compression.init={comp.init!r}: use inherit or scratch")
    if comp.steps < 1:
        raise RsnetError(f"compression.steps={comp.steps} must be >= 1")
    calib = calibration_batches(data.train, comp.calib_images, data.mean, data.std,
                                seed=cfg.seed) if comp.criterion in DATA_DRIVEN else None
    schedule = width_schedule(current_widths(model), plan.widths(), comp.steps)
    for i, widths in enumerate(schedule, start=1):
        step_path = run_dir / "checkpoints" / f"prune_step{i}.pt"
        if step_path.exists():  # resume an iterative run after its last finished step
            model = load_pruned(step_path, fresh, example)
            continue
        model = rt.prepare(prune_to_widths(model.cpu().float(), widths, example, comp.criterion,
                                           calib, cfg.seed))
        log.info("pruning step %d/%d (%s): %s params", i, comp.steps, comp.criterion,
                 f"{count_params(model):,}")
        if i < comp.steps and comp.init == "inherit" and comp.step_epochs > 0:
            step_cfg = OmegaConf.merge(cfg.train, {"epochs": comp.step_epochs})
            fit(model, data, step_cfg, rt, run_dir / "checkpoints" / f"prune_step{i}", cfg.seed)
        save_pruned(step_path, model.cpu(), widths, {"step": i})
    if comp.init == "scratch":  # the builder's own init where it has one (else torch's defaults)
        reinitialize(model, cfg.seed, INITS.get(cfg.model.arch["_target_"]))
    # layers that run only in training (aux heads) are outside the traced plan: check MACs only
    check_plan_cost(model, plan, cfg.model.input_size, "pruned",
                    params=not train_only_layers(model.cpu(), example))
    save_pruned(path, model.cpu(), plan.widths(), {"criterion": comp.criterion, "init": comp.init,
                                                   "steps": comp.steps})
    return model


def check_plan_cost(model: torch.nn.Module, plan: WidthPlan, input_size: int, what: str,
                    params: bool = True) -> None:
    """The model realising a plan must cost exactly what the plan predicted."""
    cost = _cost(model, input_size, "m")
    if cost["m/macs"] != plan.predicted["macs"] or (params and cost["m/params"] != plan.predicted["params"]):
        raise RsnetError(f"the model {what} costs {cost} but the plan predicted {plan.predicted}: "
                         f"a bug in rsnet's graph analysis or pruning, please report it")


def magnitude_pruner(cfg: DictConfig, model: torch.nn.Module, data: DataBundle) -> MagnitudePruner:
    """Gradual magnitude pruning on the training stage's step counter (epochs -> steps)."""
    sp = cfg.compression.sparsity
    steps_per_epoch = max(1, len(data.train) // cfg.train.batch_size)
    return MagnitudePruner(model, sp.initial_sparsity, sp.final_sparsity,
                           int(sp.begin_epoch * steps_per_epoch), int(sp.end_epoch * steps_per_epoch),
                           sp.frequency, sp.power, sp.scope, sp.prune_classifier)


def stage_train(cfg: DictConfig, model, data: DataBundle, rt: Runtime, run_dir: Path,
                plan: WidthPlan | None = None, teacher: torch.nn.Module | None = None,
                pruned: bool = False):
    """Fit the (N-way) model; the selected weights go to checkpoints/model.pt.

    With a plan, the model is the network pruned to it (``pruned``), or else the scaled
    network built at the plan's widths from scratch (the thesis's way); its cost must equal
    the plan's prediction.
    """
    final = run_dir / "checkpoints" / "model.pt"
    if plan is not None and not pruned:
        torch.manual_seed(cfg.seed)
        model = build_at_widths(cfg.model, data.num_outputs, plan.widths(), model)
        check_plan_cost(model, plan, cfg.model.input_size, "built at the plan")
    elif plan is None and data.subset is not None:  # an untrained baseline has no rows worth keeping
        subset_head(model, data.subset, cfg.model.head if cfg.model.checkpoint else "reset")
    model = rt.prepare(model)
    if distributed.on_main(final.exists, rt.dist):  # under torchrun rank 0 decides for all ranks
        log.info("stage artifact %s exists: skipping training", final)
        if not rt.dist.is_main:
            return model, []
        model.load_state_dict(load_checkpoint_file(final, "trained model")["state_dict"])
        return model, json.loads((run_dir / "history.json").read_text())
    if cfg.train.epochs == 0:  # evaluate / export the model as it is (e.g. a pretrained one)
        history: list[dict] = []
    else:
        history = _fit(cfg, model, data, rt, run_dir, teacher)
    if rt.dist.is_main:
        atomic_write_json(run_dir / "history.json", history)
        atomic_torch_save({"state_dict": model.state_dict(), "class_names": data.class_names,
                           "model": OmegaConf.to_container(cfg.model, resolve=True)}, final)
    return model, history


def _fit(cfg: DictConfig, model, data: DataBundle, rt: Runtime, run_dir: Path,
         teacher: torch.nn.Module | None) -> list[dict]:
    hooks = [magnitude_pruner(cfg, model, data)] if cfg.compression.sparsity.enabled else []
    distill = None
    if cfg.train.distill.enabled:
        d = cfg.train.distill  # a teacher exists: see check_settings
        teacher, bias = rt.prepare(teacher), 0.0
        path = run_dir / "distill.json"

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
        distill = DistillationLoss(teacher, d.temperature, d.alpha, data.subset, misc_bias=bias)
    return fit(model, data, cfg.train, rt, run_dir / "checkpoints", cfg.seed, distill=distill,
               hooks=hooks)


def stage_evaluate(cfg: DictConfig, model, data: DataBundle, rt: Runtime, run_dir: Path) -> dict:
    def compute() -> dict:
        def logits_of(split, desc="eval"):
            return predict(model, split, data, rt, cfg.train.eval_batch_size, desc)
        logits = logits_of(data.test, "test")
        if data.misc_label is None:
            out = {f"test/{k}": v for k, v in split_metrics(logits, data.test, None).items()}
        else:
            out = nway_metrics(cfg, logits_of, data, logits)
        out.update(_cost(model, cfg.model.input_size, "model"))
        if cfg.compression.sparsity.enabled:
            report_ = sparsity_report(model)
            out.update({k: v for k, v in report_.items() if "/layer/" not in k})
            atomic_write_json(run_dir / "sparsity.json", report_)
        if cfg.train.latency_runs > 0 and cfg.export.name == "none":  # else: the export stage
            out["latency/torch_fp32_b1_ms"] = measure_latency(
                model, cfg.model.input_size, runs=cfg.train.latency_runs)
        return out
    return _cached_json(run_dir / "test_metrics.json", compute)


def _split_batches(data: DataBundle, split: str, batch_size: int):
    """Normalised fp32 CPU batches of a split, in order, without augmentation."""
    return (x for x, _ in BatchLoader(getattr(data, split), batch_size, data.mean, data.std))


def stage_export(cfg: DictConfig, model, data: DataBundle, run_dir: Path,
                 threshold: float | None = None) -> dict:
    """ONNX export (export/model.onnx), verified against PyTorch fp32 on seeded test images;
    test accuracy with ONNX Runtime; with ``export.int8`` the calibrated int8 model
    (export/model_int8.onnx) and its accuracy and agreement; latency of PyTorch eager fp32 and
    ONNX Runtime fp32 / int8 at ``export.latency.batch_sizes`` with a fixed thread count.
    The misc threshold calibrated on validation (``threshold``) travels in the files' metadata,
    so a deployed model says misc as the evaluation did.
    """
    ex = cfg.export
    out_dir = run_dir / "export"

    def compute() -> dict:
        net = MainLogits(copy.deepcopy(model)).float().cpu().eval().to(memory_format=torch.contiguous_format)
        size, lat = cfg.model.input_size, ex.latency
        # PyTorch first: ONNX Runtime's idle thread pools would compete with it
        torch_latency = {"latency/threads": lat.threads, **{
            f"latency/torch_fp32_b{b}_ms": measure_latency(net, size, b, lat.runs, lat.warmup,
                                                           threads=lat.threads)
            for b in lat.batch_sizes}}
        meta = {"class_names": data.class_names, "misc_label": data.misc_label, "input_size": size,
                "mean": list(data.mean), "std": list(data.std), "model": cfg.model.name,
                "dataset": cfg.dataset.name, "run": cfg.name}
        if threshold is not None:
            meta.update({"misc_score": cfg.openset.score, "misc_threshold": threshold})
        fp32 = export_onnx(net, out_dir / "model.onnx", size, ex.opset, ex.dynamic_batch, meta,
                           compact=ex.compact)
        session = open_session(fp32, ex.latency.threads)
        # verification: PyTorch fp32 and ONNX Runtime on the same seeded test images
        batches = calibration_batches(data.test, ex.verify_images, data.mean, data.std,
                                      batch_size=ex.eval_batch_size, seed=cfg.seed,
                                      setting="export.verify_images")
        with torch.no_grad():
            ref = torch.cat([net(x) for x, _ in batches])
        got = onnx_logits(session, (x for x, _ in batches))
        diff = (ref - got).abs().max().item()
        agree = (ref.argmax(1) == got.argmax(1)).double().mean().item()
        out = {"export/format": "onnx", "export/opset": ex.opset, "export/verify_images": len(ref),
               "export/max_abs_diff": diff, "export/top1_agreement": agree,
               "export/onnx_bytes": fp32.stat().st_size}
        if diff > ex.atol or agree < ex.min_agreement:
            fp32.unlink()
            raise RsnetError(f"the ONNX export disagrees with PyTorch on {len(ref)} test images: max "
                             f"|logit diff| {diff:.3g} (export.atol={ex.atol}), top-1 agreement "
                             f"{agree:.4f} (export.min_agreement={ex.min_agreement}); the file was "
                             f"removed. Loosen those settings only if you trust the difference")
        fp32_test = onnx_logits(session, _split_batches(data, "test", ex.eval_batch_size))
        out.update({f"onnx/test/{k}": v for k, v in
                    split_metrics(fp32_test, data.test, data.misc_label).items()})
        sessions = {"fp32": session}
        if ex.int8:
            calib = calibration_batches(data.train, ex.calib_images, data.mean, data.std,
                                        batch_size=32, seed=cfg.seed, setting="export.calib_images")
            int8 = quantize_int8(fp32, out_dir / "model_int8.onnx", [x.numpy() for x, _ in calib],
                                 ex.calib_method, ex.per_channel, ex.compact)
            sessions["int8"] = open_session(int8, ex.latency.threads)
            int8_test = onnx_logits(sessions["int8"], _split_batches(data, "test", ex.eval_batch_size))
            out.update({f"int8/test/{k}": v for k, v in
                        split_metrics(int8_test, data.test, data.misc_label).items()})
            out.update({"int8/top1_agreement": (int8_test.argmax(1) == fp32_test.argmax(1)).double().mean().item(),
                        "int8/bytes": int8.stat().st_size,
                        "int8/size_ratio": int8.stat().st_size / fp32.stat().st_size,
                        "int8/calib_method": ex.calib_method, "int8/calib_images": ex.calib_images,
                        "int8/per_channel": ex.per_channel})
        for b in lat.batch_sizes:
            for kind, sess in sessions.items():
                out[f"latency/ort_{kind}_b{b}_ms"] = session_latency(sess, size, b, lat.runs, lat.warmup)
        return {**out, **torch_latency}

    return _cached_json(run_dir / "export_metrics.json", compute)


def check_settings(cfg: DictConfig) -> None:
    """Combinations that cannot work, reported before any expensive stage runs."""
    if cfg.compression.name not in ("none", "prune", "magnitude", *SEARCH_METHODS):
        raise RsnetError(f"compression.name={cfg.compression.name!r}: use none, prune, magnitude, "
                         f"netadapt or morphnet")
    check_search_settings(cfg)
    check_select_on(cfg.train.select_on)
    if cfg.compression.name == "prune" and cfg.scaling.name == "none":
        raise RsnetError("compression=prune realises a width plan: set scaling=rs (or uniform, "
                         "factors, plan)")
    if cfg.export.name not in ("none", "onnx", "int8"):
        raise RsnetError(f"export.name={cfg.export.name!r}: use export=none, export=onnx or export=int8")
    if cfg.export.int8 and cfg.export.calib_method not in CALIB_METHODS:
        raise RsnetError(f"export.calib_method={cfg.export.calib_method!r}: use one of "
                         f"{', '.join(CALIB_METHODS)}")
    if cfg.export.name != "none" and not cfg.export.latency.batch_sizes:
        raise RsnetError("export.latency.batch_sizes is empty: give at least one batch size, e.g. [1]")
    if cfg.train.distill.enabled and not cfg.model.checkpoint:
        raise RsnetError("train.distill.enabled=true needs a trained baseline as teacher: "
                         "set model.checkpoint")


def _from_rank0(make: Callable[[], torch.nn.Module], rt: Runtime) -> torch.nn.Module:
    """A model that rank 0 of a torchrun job makes alone (e.g. pruning, fine-tuning steps
    included, in one process); the other ranks wait and receive a copy. One process: make()."""
    if not rt.dist.enabled:
        return make()
    return distributed.on_main(lambda: make().cpu(), rt.dist)  # pickled: CPU tensors


def run(cfg: DictConfig, run_dir: Path | None = None) -> dict:
    """Run the pipeline up to ``cfg.stop_after``; returns the metrics gathered so far."""
    if run_dir is None:
        from hydra.core.hydra_config import HydraConfig
        run_dir = Path(HydraConfig.get().runtime.output_dir)
    if cfg.stop_after not in STAGES:
        raise RsnetError(f"stop_after={cfg.stop_after!r}: use one of {', '.join(STAGES)}")
    last = STAGES.index(cfg.stop_after)
    validate(cfg)
    check_settings(cfg)
    torch.manual_seed(cfg.seed)
    rt = resolve_runtime(cfg.train)  # under torchrun: joins the job's process group
    main = rt.dist.is_main  # in a torchrun job only rank 0 reads and writes the run directory
    progress.set_enabled(cfg.progress and main)
    if main:
        prepare_run_dir(cfg, run_dir)
    metrics: dict = {"run/name": cfg.name, "model/name": cfg.model.name, "dataset/name": cfg.dataset.name}

    data = build_data(cfg.dataset)
    if main:
        atomic_write_json(run_dir / "classes.json", data.describe())
    metrics.update({"data/num_outputs": data.num_outputs,
                    **{f"data/{s}_images": len(getattr(data, s)) for s in ("train", "val", "test")}})
    if data.subset is not None:
        metrics["data/misc_share_test"] = 0.0 if data.misc_label is None else \
            (data.test.targets == data.misc_label).double().mean().item()
    if last == STAGES.index("data"):
        return metrics

    model = build_model(cfg.model, len(data.base_class_names))
    metrics.update(_cost(model, cfg.model.input_size, "baseline"))
    if last == STAGES.index("model"):
        return metrics

    if cfg.model.checkpoint and main:
        metrics.update(stage_baseline(cfg, model, data, rt.local(), run_dir))
    if last == STAGES.index("baseline"):
        return metrics

    plan = distributed.on_main(lambda: stage_plan(cfg, model, data, run_dir), rt.dist)
    if plan is not None:
        metrics.update(plan_metrics(plan))
    if last == STAGES.index("plan"):
        return metrics

    teacher = copy.deepcopy(model) if cfg.train.distill.enabled and cfg.model.checkpoint else None
    pruned = cfg.compression.name == "prune"
    if pruned:
        model = _from_rank0(lambda: stage_prune(cfg, model, data, rt.local(), run_dir, plan), rt)
        metrics.update({"prune/criterion": cfg.compression.criterion, "prune/init": cfg.compression.init,
                        "prune/steps": cfg.compression.steps})
    elif cfg.compression.name in SEARCH_METHODS:  # netadapt / morphnet: plan and prune in one
        model, plan, found = stage_search(cfg, model, data, rt, run_dir)
        metrics.update({**plan_metrics(plan), **found})
        pruned = True
    if last == STAGES.index("prune"):
        return metrics

    model, history = stage_train(cfg, model, data, rt, run_dir, plan, teacher, pruned)
    if not main:  # evaluation, export and the report are rank 0's alone
        return metrics
    metrics.update(report.history_metrics(history, cfg.train.select_on))
    if last == STAGES.index("train"):
        return metrics

    metrics.update(stage_evaluate(cfg, model, data, rt, run_dir))
    if last == STAGES.index("evaluate"):
        return metrics

    if cfg.export.name != "none":
        metrics.update(stage_export(cfg, model, data, run_dir, metrics.get("openset/threshold")))
    if last == STAGES.index("export"):
        return metrics

    report.write(run_dir, metrics, data, history)
    return metrics
