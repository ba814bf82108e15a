"""Stage model: the C-way baseline (weights from ``model.checkpoint`` or
``model.arch.weights`` when given)."""

from __future__ import annotations

from rsnet.metrics import cost_metrics
from rsnet.models import build_model, checkpoint_sha256
from rsnet.stages.context import Context


def run(ctx: Context) -> None:
    ctx.model = build_model(ctx.cfg.model, len(ctx.data.base_class_names))
    ctx.metrics.update(cost_metrics(ctx.model, ctx.input_size, "baseline"))
    if ctx.cfg.model.checkpoint:  # which weights, not only which path (records=, rsnet.records)
        ctx.metrics["model/checkpoint_sha256"] = checkpoint_sha256(ctx.cfg.model)
