"""A study outlives its machine: finished runs kept as records (runs.jsonl) are not run again
(``records=``), which weights a run started from is kept by content, and every run says
which machine and precision made it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import REPO, TINY, compose_cfg
from rsnet import pipeline
from rsnet.errors import RsnetError
from rsnet.records import Record, file_sha256, run_label


def record_file(path: Path, *records: Record) -> Path:
    path.write_text("".join(json.dumps(r._asdict()) + "\n" for r in records))
    return path


def test_a_record_is_this_run_only_with_its_label_config_and_checkpoint_contents(tmp_path):
    weights = tmp_path / "baseline.pt"
    weights.write_bytes(b"weights, first release")
    rec_path = tmp_path / "runs.jsonl"
    cfg = compose_cfg(*TINY, f"model.checkpoint={weights}", f"records={rec_path}")
    run_dir = tmp_path / "machine2" / "seed=0"
    config = OmegaConf.to_container(cfg, resolve=True)
    mine = Record(run_label(cfg.name, run_dir), {"test/acc": 0.5, "model/checkpoint_sha256":
                                                 file_sha256(weights)}, config)
    record_file(rec_path, mine)
    assert pipeline.recorded_run(cfg, run_dir) == mine
    # settings that do not change results (threads, progress bars) do not make another run
    assert pipeline.recorded_run(OmegaConf.merge(cfg, {"train": {"threads": 1}, "progress": True}),
                                 run_dir) == mine
    assert pipeline.recorded_run(cfg, tmp_path / "machine2" / "seed=1") is None  # another job
    record_file(rec_path, mine._replace(config={**config, "seed": 1}))  # another config
    assert pipeline.recorded_run(cfg, run_dir) is None
    record_file(rec_path, mine)
    weights.write_bytes(b"weights, second release")  # the same path, other weights
    assert pipeline.recorded_run(cfg, run_dir) is None
    # a record from before the hash was kept: the config decides
    old = mine._replace(metrics={"test/acc": 0.5})
    record_file(rec_path, old)
    assert pipeline.recorded_run(cfg, run_dir) == old


def test_a_missing_records_file_is_one_error_naming_the_setting(tmp_path):
    cfg = compose_cfg(*TINY, f"records={tmp_path / 'runs.jsonl'}")
    with pytest.raises(RsnetError, match=r"records=.*runs.jsonl: no such file"):
        pipeline.run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_recorded_run_is_not_run_again_on_a_new_machine(tmp_path):
    """The run finishes on one machine, its record is written (tables.py records) and its run
    directory is lost; the same command with records= on another machine runs nothing."""
    first = tmp_path / "machine1" / "job"
    metrics = pipeline.run(compose_cfg(*TINY), first)
    assert metrics["train/precision"] in ("bf16", "fp32") and "machine/cpu" in metrics
    assert "machine/isa" in metrics
    rec_path = tmp_path / "runs.jsonl"
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "tables.py"), "records", str(first),
                          "--out", str(rec_path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    again = tmp_path / "machine2" / "job"
    got = pipeline.run(compose_cfg(*TINY, f"records={rec_path}"), again)
    assert got == json.loads((first / "metrics.json").read_text())
    assert not again.exists()  # nothing written: no run directory that could pass for a result
    other = tmp_path / "machine2" / "other"  # a job the records do not hold runs
    assert pipeline.run(compose_cfg(*TINY, f"records={rec_path}"), other)["test/acc"] >= 0
    assert (other / "metrics.json").exists()


def test_records_prefer_a_run_directory_to_the_record_of_the_same_run(tmp_path):
    run = tmp_path / "sweep" / "seed=0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("name: study\nseed: 0\n")
    (run / "metrics.json").write_text(json.dumps({"test/acc": 0.9}))
    old = record_file(tmp_path / "old.jsonl", Record("study/seed=0", {"test/acc": 0.1}, {"name": "study"}),
                      Record("study/seed=1", {"test/acc": 0.2}, {"name": "study"}))
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "tables.py"), "records", str(old),
                          str(tmp_path / "sweep")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    got = {r["label"]: r["metrics"]["test/acc"] for r in map(json.loads, res.stdout.splitlines())}
    assert got == {"study/seed=0": 0.9, "study/seed=1": 0.2}
