"""Stage baseline: the trained C-way baseline Psi on the full test set, on the subset's test
images, and mapped to an N-way model with a misc output (the honest reference for Psi')
(baseline_metrics.json). Runs only with a trained baseline (``model.checkpoint`` or
``model.arch.weights``), on rank 0."""

from __future__ import annotations

from omegaconf import OmegaConf

from rsnet.data import build_data
from rsnet.distill import subset_teacher_logits
from rsnet.metrics import baseline_scope_metrics
from rsnet.models import has_trained_weights
from rsnet.stages.context import Context, cached_json
from rsnet.stages.evaluate import nway_metrics
from rsnet.train import predict, split_metrics


def run(ctx: Context) -> None:
    if has_trained_weights(ctx.cfg.model) and ctx.main:
        ctx.metrics.update(cached_json(ctx.run_dir / "baseline_metrics.json", lambda: measure(ctx)))


def measure(ctx: Context) -> dict:
    cfg, data, rt = ctx.cfg, ctx.data, ctx.rt.local()
    full = data if data.subset is None else build_data(
        OmegaConf.merge(cfg.dataset, {"num_classes": None, "classes": None, "unseen_fraction": 0.0}),
        ctx.base_names())
    m = rt.prepare(ctx.model)
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
