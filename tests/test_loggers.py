"""The logger group (rsnet/loggers.py): each logger's record read back with its own reader."""

from __future__ import annotations

import csv
import sys

import pytest

from rsnet.errors import RsnetError
from rsnet.loggers import CsvLogger, MLflowLogger, TensorBoardLogger

CONFIG = {"name": "tiny", "train": {"epochs": 2, "optimizer": {"lr": 0.1}}, "seed": 0}
ROWS = [{"epoch": 1, "train/loss": 1.5, "val/acc": 0.4, "lr": 0.1},
        {"epoch": 2, "train/loss": 1.1, "val/acc": 0.6, "lr": 0.05}]
FINAL = {"test/acc": 0.62, "model/params": 1234, "run/name": "tiny"}
ARTIFACTS = ["checkpoints/model.pt", "metrics.json"]


def log_run(logger, run_dir, rows=ROWS):
    logger.start(run_dir, CONFIG)
    for row in rows:
        logger.epoch(row)
    logger.finish(FINAL, ARTIFACTS)


def test_csv_keeps_one_row_per_epoch_across_a_resume(tmp_path):
    first = CsvLogger()
    first.start(tmp_path, CONFIG)
    first.epoch({**ROWS[0], "val/acc": 0.1})  # killed after epoch 1 (a worse value) ...
    log_run(CsvLogger(), tmp_path)  # ... the resumed run logs epoch 1 again, then 2
    rows = list(csv.DictReader((tmp_path / "logs" / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert [float(r["val/acc"]) for r in rows] == [0.4, 0.6]
    final = {r["key"]: r["value"] for r in csv.DictReader((tmp_path / "logs" / "metrics.csv").open())
             if r["key"] != "artifact"}
    assert final == {"test/acc": "0.62", "model/params": "1234", "run/name": "tiny"}


def test_tensorboard_writes_the_config_epoch_and_final_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log_run(TensorBoardLogger(), tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    loss = events.Scalars("train/loss")
    assert [(e.step, round(e.value, 6)) for e in loss] == [(1, 1.5), (2, 1.1)]
    assert events.Scalars("final/test/acc")[0].value == pytest.approx(0.62)
    assert "epoch" not in events.Tags()["scalars"]  # the step, not a scalar


def test_mlflow_records_params_metrics_and_artifacts_and_resumes_its_run(tmp_path):
    import mlflow  # the dev extra installs every logger's package
    first = MLflowLogger()
    first.start(tmp_path, CONFIG)
    first.epoch(ROWS[0])  # killed here: the run stays open
    resumed = MLflowLogger()
    log_run(resumed, tmp_path, ROWS[1:])
    client = mlflow.tracking.MlflowClient("sqlite:///" + str((tmp_path / "mlflow.db").resolve()))
    run = client.get_run((tmp_path / "logs" / "mlflow_run_id").read_text().strip())
    assert run.data.params["train.optimizer.lr"] == "0.1" and run.data.params["seed"] == "0"
    history = client.get_metric_history(run.info.run_id, "val/acc")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.4), (2, 0.6)]
    assert run.data.metrics["final/test/acc"] == pytest.approx(0.62)
    assert run.data.tags["artifacts"].splitlines() == ARTIFACTS
    assert run.info.status == "FINISHED"
    assert len(client.search_runs([run.info.experiment_id])) == 1  # resumed, not a second run


@pytest.mark.parametrize("logger, module, extra", [(MLflowLogger, "mlflow", "mlflow"),
                                                   (TensorBoardLogger, "torch.utils.tensorboard",
                                                    "tensorboard")])
def test_a_missing_logger_package_names_the_extra(logger, module, extra, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(RsnetError, match=rf"\.\[{extra}\]"):
        logger().start(tmp_path, CONFIG)
