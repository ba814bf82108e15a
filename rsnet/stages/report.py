"""Stage report: metrics.json and summary.md (:mod:`rsnet.report`)."""

from __future__ import annotations

from rsnet import report
from rsnet.stages.context import Context


def run(ctx: Context) -> None:
    report.write(ctx.run_dir, ctx.metrics, ctx.data, ctx.history)
