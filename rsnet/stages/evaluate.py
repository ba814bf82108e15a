"""Stage evaluate: the trained N-way model on the test set: accuracy (local / global / raw),
misc detection, cost, sparsity, latency when nothing is exported (test_metrics.json)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from omegaconf import DictConfig

from rsnet.data import DataBundle
from rsnet.metrics import cost_metrics, measure_latency
from rsnet.openset import openset_metrics
from rsnet.compress.sparsity import sparsity_report
from rsnet.stages.context import Context, cached_json
from rsnet.train import predict, split_metrics
from rsnet.fileio import atomic_write_json


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


def run(ctx: Context) -> None:
    ctx.metrics.update(cached_json(ctx.run_dir / "test_metrics.json", lambda: measure(ctx)))


def measure(ctx: Context) -> dict:
    cfg, model, data, rt = ctx.cfg, ctx.model, ctx.data, ctx.rt

    def logits_of(split, desc="eval"):
        return predict(model, split, data, rt, cfg.train.eval_batch_size, desc)
    logits = logits_of(data.test, "test")
    if data.misc_label is None:
        out = {f"test/{k}": v for k, v in split_metrics(logits, data.test, None).items()}
    else:
        out = nway_metrics(cfg, logits_of, data, logits)
    out.update(cost_metrics(model, ctx.input_size, "model"))
    if cfg.compression.sparsity.enabled:
        report_ = sparsity_report(model)
        out.update({k: v for k, v in report_.items() if "/layer/" not in k})
        atomic_write_json(ctx.run_dir / "sparsity.json", report_)
    if cfg.train.latency_runs > 0 and cfg.export.exporter is None:  # else: the export stage
        out["latency/torch_fp32_b1_ms"] = measure_latency(model, ctx.input_size,
                                                          runs=cfg.train.latency_runs)
    return out
