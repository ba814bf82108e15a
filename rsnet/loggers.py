"""Experiment tracking: the ``logger`` config group (conf/logger/), as the lightning-hydra
template has it.

A logger receives the resolved config when a run starts, every training epoch's row (the
rows history.json holds: train/loss, val/acc, lr, ...) as it finishes, and the final metrics
(metrics.json) with the paths of the run's artifacts at the end. Every run directory keeps
its own record, so a rerun that resumes a run keeps writing to the same one:

- ``csv`` (the default): ``logs/history.csv`` (one row per epoch, an epoch logged again on a
  resumed run replaces its row) and ``logs/metrics.csv`` (key, value);
- ``tensorboard``: event files under ``tensorboard/`` (``tensorboard --logdir RUN_DIR``): the
  config as text, epoch scalars by epoch, final scalars, the artifacts as text;
- ``mlflow``: a local SQLite store ``mlflow.db`` in the run directory by default
  (``logger.tracking_uri`` for a server): the config as params, epoch metrics by step, the
  final metrics, the artifacts' paths as a tag; one MLflow run per run directory, resumed.

Only rank 0 of a torchrun job logs. A logger whose package is missing is an error naming the
extra to install.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import numbers
from collections.abc import Mapping
from pathlib import Path

from rsnet.errors import RsnetError
from rsnet.fileio import atomic_write_text

log = logging.getLogger(__name__)

__all__ = ["Logger", "CsvLogger", "TensorBoardLogger", "MLflowLogger", "flatten"]


def flatten(tree: Mapping, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists kept as JSON text)."""
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else v
    return out


def scalars(row: Mapping) -> dict[str, float]:
    """The finite numbers of a metrics row (strings, lists and NaNs are not scalars)."""
    return {k: float(v) for k, v in row.items() if isinstance(v, numbers.Real)
            and not isinstance(v, bool) and math.isfinite(float(v))}


class Logger:
    """The interface; the base class logs nothing."""

    def start(self, run_dir: Path, config: Mapping) -> None:
        self.run_dir = Path(run_dir)

    def epoch(self, row: Mapping) -> None:
        pass

    def finish(self, metrics: Mapping, artifacts: list[str]) -> None:
        pass


class CsvLogger(Logger):
    def epoch(self, row: Mapping) -> None:
        path = self.run_dir / "logs" / "history.csv"
        rows = list(csv.DictReader(io.StringIO(path.read_text()))) if path.exists() else []
        rows = [r for r in rows if int(r["epoch"]) != int(row["epoch"])] + [dict(row)]
        rows.sort(key=lambda r: int(r["epoch"]))
        keys = list(dict.fromkeys(k for r in rows for k in r))
        atomic_write_text(path, _csv_text(keys, rows))

    def finish(self, metrics: Mapping, artifacts: list[str]) -> None:
        rows = [{"key": k, "value": v} for k, v in metrics.items()] + \
            [{"key": "artifact", "value": a} for a in artifacts]
        atomic_write_text(self.run_dir / "logs" / "metrics.csv", _csv_text(["key", "value"], rows))


def _csv_text(keys: list[str], rows: list[Mapping]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


class TensorBoardLogger(Logger):
    def start(self, run_dir: Path, config: Mapping) -> None:
        super().start(run_dir, config)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise RsnetError("logger=tensorboard needs the tensorboard package: "
                             "pip install -e '.[tensorboard]'") from e
        self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```")

    def epoch(self, row: Mapping) -> None:
        for k, v in scalars(row).items():
            if k != "epoch":
                self.writer.add_scalar(k, v, int(row["epoch"]))
        self.writer.flush()

    def finish(self, metrics: Mapping, artifacts: list[str]) -> None:
        for k, v in scalars(metrics).items():
            self.writer.add_scalar(f"final/{k}", v, 0)
        self.writer.add_text("artifacts", "\n".join(f"- {a}" for a in artifacts))
        self.writer.close()


class MLflowLogger(Logger):
    """tracking_uri: None = ``sqlite:///RUN_DIR/mlflow.db``; experiment: the MLflow experiment
    name (None = the config's ``name``)."""

    def __init__(self, tracking_uri: str | None = None, experiment: str | None = None) -> None:
        self.tracking_uri, self.experiment = tracking_uri, experiment

    def start(self, run_dir: Path, config: Mapping) -> None:
        super().start(run_dir, config)
        try:
            import mlflow
        except ImportError as e:
            raise RsnetError("logger=mlflow needs the mlflow package: pip install -e '.[mlflow]'") from e
        self.mlflow = mlflow
        uri = self.tracking_uri or "sqlite:///" + str((self.run_dir / "mlflow.db").resolve())
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(self.experiment or str(config.get("name", "rsnet")))
        if mlflow.active_run() is not None:  # a failed earlier job of the same sweep process
            mlflow.end_run(status="FAILED")
        id_file = self.run_dir / "logs" / "mlflow_run_id"
        run_id = id_file.read_text().strip() if id_file.exists() else None
        self.run = mlflow.start_run(run_id=run_id, run_name=self.run_dir.name)
        if run_id is None:  # params are written once per MLflow run
            atomic_write_text(id_file, self.run.info.run_id)
            params = {k: str(v)[:6000] for k, v in flatten(config).items()}
            mlflow.log_params(params)

    def epoch(self, row: Mapping) -> None:
        values = {k: v for k, v in scalars(row).items() if k != "epoch"}
        self.mlflow.log_metrics(values, step=int(row["epoch"]))

    def finish(self, metrics: Mapping, artifacts: list[str]) -> None:
        self.mlflow.log_metrics({f"final/{k}": v for k, v in scalars(metrics).items()})
        self.mlflow.set_tag("artifacts", "\n".join(artifacts))
        self.mlflow.end_run()
