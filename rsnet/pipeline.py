"""The pipeline: data -> model -> baseline -> plan -> prune -> train -> evaluate -> export ->
report, one module per stage in :mod:`rsnet.stages` (which lists their artifacts).

:func:`run` claims the run directory, checks the settings and walks the stages. Only the
stages read the Hydra config. Each stage leaves an artifact in the run directory and is
skipped when that artifact is already there, so rerunning a killed command resumes it
(training itself resumes from its last epoch checkpoint). A run directory remembers the
fingerprint of the config that made it; reusing it with a different config is an error
unless ``overwrite=true``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rsnet import progress
from rsnet.config import ADDED_KEYS, IMAGENET_MEAN, IMAGENET_STD, NON_RESULT_KEYS, STAGES
from rsnet.deploy import CALIB_METHODS
from rsnet.errors import RsnetError
from rsnet.hardware import machine_metrics
from rsnet.models import checkpoint_sha256, has_trained_weights, pretrained_weights
from rsnet.records import Record, read_records, run_label
from rsnet.stages.runs import check_teacher_run
from rsnet.stages import PIPELINE, Context
from rsnet.stages.compress import method as compression_method
from rsnet.train import check_select_on, resolve_runtime
from rsnet.fileio import atomic_write_json, atomic_write_text
from rsnet.validate import validate

log = logging.getLogger(__name__)


# Settings that act only through other keys of the resolved config (target sets
# scaling.widths.round_to): left out of the fingerprint, which holds their effect already, so
# a run directory made before they existed still resumes.
DERIVED_KEYS = ("target",)


def fingerprint(cfg: DictConfig) -> str:
    """Hash of the resolved config without the keys that do not change results."""
    container = OmegaConf.to_container(cfg, resolve=True)
    for key in DERIVED_KEYS:
        container.pop(key, None)
    for dotted in (*NON_RESULT_KEYS, *ADDED_KEYS):
        *parents, leaf = dotted.split(".")
        node = container
        for p in parents:
            node = node.get(p) or {}
        if dotted in NON_RESULT_KEYS or node.get(leaf) == ADDED_KEYS[dotted]:
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


def recorded_run(cfg: DictConfig, run_dir: Path) -> Record | None:
    """This run's record in ``cfg.records`` (a runs.jsonl of finished runs), or None.

    A record is this run when it has the run's label (experiment name / run directory name),
    the fingerprint of its config and, where ``model.checkpoint`` is set, that file's SHA-256
    (other weights at the same path make another run; a record written before the hash was
    kept, without ``model/checkpoint_sha256``, is matched by its config alone). A study moved
    to a new machine, its run directories lost, so goes on from the records it committed
    instead of training again.
    """
    path = Path(cfg.records)
    if not path.is_file():
        raise RsnetError(f"records={cfg.records}: no such file (a runs.jsonl written by "
                         f"scripts/tables.py records)")
    label, fp = run_label(cfg.name, run_dir), fingerprint(cfg)
    sha = checkpoint_sha256(cfg.model) if cfg.model.checkpoint else None
    for record in read_records(path):
        if (record.label == label and fingerprint(OmegaConf.create(record.config)) == fp
                and record.metrics.get("model/checkpoint_sha256", sha) == sha):
            return record
    return None


def check_group_names(cfg: DictConfig) -> None:
    """``scaling.name``, ``compression.name`` and ``export.name`` are labels that the chosen
    file of the group sets: given on their own (``export.name=tflite``) they would change
    nothing, so they must match the group's choice (known when Hydra's command line runs)."""
    from hydra.core.hydra_config import HydraConfig
    if not HydraConfig.initialized():
        return
    choices = HydraConfig.get().runtime.choices
    for group in ("scaling", "compression", "export", "target"):
        chosen = choices.get(group)
        if chosen is not None and cfg[group].name != chosen:
            raise RsnetError(f"{group}.name={cfg[group].name!r} does not choose the {group}: "
                             f"use {group}=<name> (the files in conf/{group}/; this run has "
                             f"{group}={chosen})")


def check_settings(cfg: DictConfig) -> None:
    """Combinations that cannot work, reported before any expensive stage runs."""
    check_group_names(cfg)
    compression_method(cfg).check(cfg)
    check_select_on(cfg.train.select_on)
    if not cfg.train.checkpoint_every_min >= 0:  # also NaN
        raise RsnetError(f"train.checkpoint_every_min={cfg.train.checkpoint_every_min}: use "
                         f"minutes >= 0 (0 writes the training checkpoint at epoch ends only)")
    if cfg.export.int8 and cfg.export.calib_method not in CALIB_METHODS:
        raise RsnetError(f"export.calib_method={cfg.export.calib_method!r}: use one of "
                         f"{', '.join(CALIB_METHODS)}")
    if cfg.export.exporter is not None and not cfg.export.latency.batch_sizes:
        raise RsnetError("export.latency.batch_sizes is empty: give at least one batch size, e.g. [1]")
    check_distill(cfg)


def check_distill(cfg: DictConfig) -> None:
    """A teacher exists for train.distill.enabled=true: the run of train.distill.teacher, or the
    trained baseline; a teacher run given without distillation is an error, not ignored."""
    d = cfg.train.distill
    if d.teacher is not None:
        if not d.enabled:
            raise RsnetError(f"train.distill.teacher={d.teacher} is set but "
                             f"train.distill.enabled=false: enable distillation or drop the teacher")
        check_teacher_run(d.teacher)
    elif d.enabled and not has_trained_weights(cfg.model):
        raise RsnetError("train.distill.enabled=true needs a trained baseline as teacher: "
                         "set model.checkpoint (or model.arch.weights), or train.distill.teacher")


def use_weights_preprocessing(cfg: DictConfig) -> None:
    """With ``model.arch.weights``: the weights' evaluation preprocessing (torchvision's
    ``weights.transforms()``) fills the data and input settings, in place.

    Settings left unset take the weights' values: ``dataset.image_size`` (the crop),
    ``dataset.resize_size`` (scaled with image_size when only that is given: 160 -> 166 for
    232 -> 224), ``dataset.interpolation`` where null, ``dataset.mean`` / ``std`` where at
    ImageNet's defaults. Values given are kept, with a warning where they differ from the
    weights'. ``model.input_size`` is always ``dataset.image_size``: the images are that size.
    """
    from rsnet.models.torchvision_models import weights_preprocessing
    weights = pretrained_weights(cfg.model)
    if weights is None:
        return
    pre, ds = weights_preprocessing(weights), cfg.dataset
    size = ds.image_size or pre.crop_size
    ds.resize_size = ds.resize_size or round(size * pre.resize_size / pre.crop_size)
    ds.image_size, ds.interpolation = size, ds.interpolation or pre.interpolation
    for key, default in (("mean", IMAGENET_MEAN), ("std", IMAGENET_STD)):
        if list(ds[key]) == default:
            ds[key] = getattr(pre, key)
    weights_own = {"image_size": pre.crop_size, "resize_size": pre.resize_size,
                   "interpolation": pre.interpolation, "mean": pre.mean, "std": pre.std}
    have = {k: list(ds[k]) if k in ("mean", "std") else ds[k] for k in weights_own}
    kept = [f"dataset.{k}={have[k]} (the weights': {v})" for k, v in weights_own.items()
            if have[k] != v]
    if kept:
        log.warning("model.arch.weights=%r: the config's preprocessing differs from the "
                    "weights': %s", weights, "; ".join(kept))
    if cfg.model.input_size != size:
        log.info("model.input_size=%d -> %d: the size of the images (dataset.image_size)",
                 cfg.model.input_size, size)
    cfg.model.input_size = size
    log.info("model.arch.weights=%r: shorter side to %d px (%s), centre crop %d px, mean %s, std %s",
             weights, ds.resize_size, ds.interpolation, size, list(ds.mean), list(ds.std))


def run(cfg: DictConfig, run_dir: Path | None = None) -> dict:
    """Run the stages up to ``cfg.stop_after``; returns the metrics gathered so far."""
    if run_dir is None:
        from hydra.core.hydra_config import HydraConfig
        run_dir = Path(HydraConfig.get().runtime.output_dir)
    if cfg.stop_after not in STAGES:
        raise RsnetError(f"stop_after={cfg.stop_after!r}: use one of {', '.join(STAGES)}")
    use_weights_preprocessing(cfg)  # before the checks and the fingerprint, which see its values
    validate(cfg)
    check_settings(cfg)
    if cfg.records and (record := recorded_run(cfg, run_dir)):
        log.info("%s is finished: recorded in %s (records=...); not run again", record.label, cfg.records)
        return dict(record.metrics)
    torch.manual_seed(cfg.seed)
    rt = resolve_runtime(cfg.train, cfg.model.compile_pays)  # under torchrun: joins its group
    main = rt.dist.is_main  # in a torchrun job only rank 0 reads and writes the run directory
    progress.set_enabled(cfg.progress and main)
    if main:
        prepare_run_dir(cfg, run_dir)
    ctx = Context(cfg, run_dir, rt, {"run/name": cfg.name, "model/name": cfg.model.name,
                                     "dataset/name": cfg.dataset.name,
                                     **machine_metrics(rt.device, rt.autocast_dtype)})
    if main and cfg.get("logger"):
        try:
            ctx.logger = instantiate(cfg.logger)
        except InstantiationException as e:
            raise RsnetError(f"logger: cannot build {cfg.logger.get('_target_')}: {e}") from e
        ctx.logger.start(run_dir, OmegaConf.to_container(cfg, resolve=True))
    for name, stage in PIPELINE:
        stage(ctx)
        if ctx.finished or name == cfg.stop_after:
            break
    return ctx.metrics
