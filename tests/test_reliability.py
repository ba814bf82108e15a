"""Reliability: no silent wrong result, bad settings stopped before any stage runs."""

from __future__ import annotations

import pytest

from conftest import TINY
from rsnet.errors import RsnetError
from rsnet.report import history_metrics
from rsnet.train import check_select_on, selection_score
from test_cli import run


def epoch(n: int, loss: float, acc: float) -> dict:
    return {"epoch": n, "train/loss": 1.0, "train/images_per_s": 100.0, "train/epoch_s": 2.5,
            "val/loss": loss, "val/acc": acc}


def test_a_loss_selects_its_lowest_epoch_and_an_accuracy_its_highest():
    history = [epoch(1, 0.9, 0.50), epoch(2, 0.4, 0.55), epoch(3, 0.7, 0.60)]
    assert history_metrics(history, "val/loss")["val/best_epoch"] == 2
    assert history_metrics(history, "val/acc")["val/best_epoch"] == 3
    assert history_metrics(history, "val/acc")["train/images_seen"] == 3 * 250
    assert selection_score(history[0], "val/loss") == -0.9
    with pytest.raises(RsnetError, match="val/acc_local"):  # a misc metric in a run without misc
        selection_score(history[0], "val/acc_local")
    with pytest.raises(RsnetError, match="train.select_on='val/bogus'"):
        check_select_on("val/bogus")


def test_training_keeps_the_lowest_validation_loss_epoch(tmp_path):
    import json
    res = run(tmp_path, *TINY, "train.epochs=3", "train.select_on=val/loss", "train.threads=1")
    assert res.returncode == 0, res.stderr[-2000:]
    d = tmp_path / "run"
    history = json.loads((d / "history.json").read_text())
    best = min(history, key=lambda r: r["val/loss"])
    metrics = json.loads((d / "metrics.json").read_text())
    assert metrics["val/best_epoch"] == best["epoch"] and metrics["val/loss"] == best["val/loss"]


def test_a_bad_selection_metric_stops_before_training(tmp_path):
    res = run(tmp_path, *TINY, "train.select_on=val/bogus")
    assert res.returncode == 2 and "train.select_on" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
