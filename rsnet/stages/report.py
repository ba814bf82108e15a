"""Stage report: metrics.json and summary.md (:mod:`rsnet.report`), then the logger's final
record (the metrics and the run's artifacts, :mod:`rsnet.loggers`)."""

from __future__ import annotations

import json

from rsnet import report
from rsnet.stages.context import Context

TRACKING = ("logs", "tensorboard", "mlflow.db")  # the loggers' own files: not artifacts


def run(ctx: Context) -> None:
    report.write(ctx.run_dir, ctx.metrics, ctx.data, ctx.history)
    metrics = json.loads((ctx.run_dir / "metrics.json").read_text())
    artifacts = sorted(str(p.relative_to(ctx.run_dir)) for p in ctx.run_dir.rglob("*")
                       if p.is_file() and p.relative_to(ctx.run_dir).parts[0] not in TRACKING)
    ctx.logger.finish(metrics, artifacts)
