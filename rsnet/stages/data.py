"""Stage data: the dataset and its class subset (classes.json)."""

from __future__ import annotations

from rsnet.data import build_data
from rsnet.stages.context import Context
from rsnet.fileio import atomic_write_json


def run(ctx: Context) -> None:
    data = ctx.data = build_data(ctx.cfg.dataset, ctx.base_names())
    if ctx.main:
        atomic_write_json(ctx.run_dir / "classes.json", data.describe())
    ctx.metrics.update({"data/num_outputs": data.num_outputs,
                        **{f"data/{s}_images": len(getattr(data, s)) for s in ("train", "val", "test")}})
    if data.subset is not None:
        ctx.metrics["data/misc_share_test"] = 0.0 if data.misc_label is None else \
            (data.test.targets == data.misc_label).double().mean().item()
