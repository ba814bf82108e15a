"""The pipeline's stages, one module each, in the order :func:`rsnet.pipeline.run` walks them.

Each stage is ``run(ctx: Context) -> None``: it reads what the earlier stages left in the
:class:`~rsnet.stages.context.Context` (the data, the model, the plan), writes its artifact
into the run directory (skipping the work when the artifact is already there, so a killed
command resumes), and adds its metrics to ``ctx.metrics``. Only the stage modules read the
Hydra config.

========  =================================  ==========================================
stage     module                             artifacts in the run directory
========  =================================  ==========================================
data      :mod:`rsnet.stages.data`           classes.json
model     :mod:`rsnet.stages.model`          (the baseline's cost, in the metrics)
baseline  :mod:`rsnet.stages.baseline`       baseline_metrics.json
plan      :mod:`rsnet.stages.plan`           groups.json, plan.json
prune     :mod:`rsnet.stages.compress`       checkpoints/pruned.pt (+ netadapt/morphnet.json)
train     :mod:`rsnet.stages.train`          checkpoints/model.pt, history.json
evaluate  :mod:`rsnet.stages.evaluate`       test_metrics.json
export    :mod:`rsnet.stages.export`         export/model.onnx, model_int8.onnx, export_metrics.json
report    :mod:`rsnet.stages.report`         metrics.json, summary.md
========  =================================  ==========================================
"""

from rsnet.stages import baseline, compress, data, evaluate, export, model, plan, report, train
from rsnet.stages.context import Context

#: (name, stage) in order; the names are ``rsnet.config.STAGES`` (``stop_after``)
PIPELINE = (("data", data.run), ("model", model.run), ("baseline", baseline.run),
            ("plan", plan.run), ("prune", compress.run), ("train", train.run),
            ("evaluate", evaluate.run), ("export", export.run), ("report", report.run))

__all__ = ["PIPELINE", "Context"]
