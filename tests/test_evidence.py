"""The seed projects' study scripts (scripts/evidence/, issue 17) end to end on tiny synthetic
runs: every run of the design is made and recorded, the tables and pairs the write-ups cite
are written, and a rerun resumes instead of training again."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import REPO
from rsnet.records import file_sha256

pytestmark = pytest.mark.integration

# settings that shrink a run without changing what the script does with it
SMALL = ("dataset=synthetic train.batch_size=32 train.threads=1 train.latency_runs=3 "
         "export.verify_images=40 export.calib_images=32 export.latency.runs=3 "
         "export.latency.warmup=1 export.latency.batch_sizes=[1] export.eval_batch_size=50")
TINY_VGG = SMALL + (" model.arch.widths=[8,8,16,16,16,16,16,32,32,32,32,32,32]"
                    " model.arch.fc_width=32 compression.calib_images=32")
TINY_RESNET = SMALL + (" dataset.source.size=16 model.arch.depth=8 model.input_size=16 train.epochs=6"
                       " train.precision=fp32 compression.sparsity.frequency=4")


def evidence(script: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RUNS": str(tmp_path / "runs"), "OUT": str(tmp_path / "out"), **env}
    return subprocess.run(["bash", str(REPO / "scripts" / "evidence" / script)], env=env,
                          capture_output=True, text=True, timeout=900)


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]


def pairs(out: Path) -> set[tuple[str, str]]:
    with (out / "stats_pairs.csv").open() as f:
        return {(r["comparison"], r["metric"]) for r in csv.DictReader(f)}


def test_the_vgg16_featuremap_study_runs_every_recipe_records_it_and_resumes(tmp_path):
    ckpt = tmp_path / "released" / "vgg16_cifar10.pt"
    env = dict(BASE_EPOCHS="2", FT_EPOCHS="1", ITER_STEPS="2", SEEDS="0", CRITERIA="hrank,l1",
               MIN_ACC="0", BENCH="0", EXTRA=TINY_VGG, CKPT=str(ckpt))
    res = evidence("vgg_featuremap.sh", tmp_path, **env)
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "out"
    runs = {r["label"].rsplit("/", 1)[-1]: r for r in records(out)}
    base, ref = runs.pop("baseline"), runs.pop("reference")
    assert base["config"]["train"]["epochs"] == 2 and ref["config"]["train"]["epochs"] == 0
    # the reference and the pruned runs start from the released (fp16) baseline, by content
    released = torch.load(ckpt, weights_only=True)
    assert released["meta"]["test/acc"] == base["metrics"]["test/acc"]
    assert {r["metrics"]["model/checkpoint_sha256"] for r in [ref, *runs.values()]} == {file_sha256(ckpt)}
    assert ref["metrics"]["test/acc"] == pytest.approx(base["metrics"]["test/acc"], abs=0.02)
    assert "int8/test/acc" in ref["metrics"]
    # 2 criteria x (one-shot, 2-step iterative), each at about half the baseline's MACs; one-shot
    # trains FT_EPOCHS + (ITER_STEPS - 1) x STEP_EPOCHS = 2 epochs, as many as iterative in all
    recipes = {(r["config"]["compression"]["criterion"]["name"], r["config"]["compression"]["steps"],
                r["config"]["train"]["epochs"], r["metrics"]["prune/step_images_seen"])
               for r in runs.values()}
    assert recipes == {("hrank", 1, 2, 0), ("l1", 1, 2, 0), ("hrank", 2, 1, 512), ("l1", 2, 1, 512)}
    for r in runs.values():
        assert r["metrics"]["model/macs"] <= 0.5 * base["metrics"]["model/macs"]
        assert "int8/test/acc" in r["metrics"] and r["config"]["seed"] == 0
    table = (out / "prune.md").read_text()
    assert table.count("| hrank | inherit |") == 2 and "\nNo run has: latency target b1 (ms)" in table
    stats = (out / "stats.md").read_text()
    assert "carved (hrank) + fine-tuned, 2 steps, 2 epochs" in stats and "trained weights as given" in stats
    assert {("hrank vs l1", "test/acc"), ("iterative vs one-shot", "int8/test/acc")} <= pairs(out)
    assert (out / "pairs.png").read_bytes()[:4] == b"\x89PNG"  # one seed: it says no interval yet
    written = (out / "runs.jsonl").read_text()
    checkpoints = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("model.pt")}
    assert len(checkpoints) == 6

    assert not (out / "deploy.md").exists()  # nothing timed yet (BENCH=0)
    # once bench.py int8 has timed runs (runtimes.json), the tables step joins its times in
    (out / "runtimes.json").write_text(json.dumps({"section": "int8", "args": {"latency_batch": "1"}, "rows": [
        {"model": "vgg16_cifar_baseline full width (reference)", "ort_fp32_b1_ms": 1.5, "ort_int8_b1_ms": 0.5}]}))

    timed = (out / "runtimes.json").read_text()
    rerun = {k: v for k, v in env.items() if k != "BENCH"}  # BENCH unset: time only the untimed
    res = evidence("vgg_featuremap.sh", tmp_path, **rerun)  # a rerun: every run is finished
    assert res.returncode == 0, res.stderr[-3000:]
    assert "epoch 1/" not in res.stdout + res.stderr
    assert (out / "runtimes.json").read_text() == timed  # the committed timing kept, not re-timed
    deploy = (out / "deploy.md").read_text()
    reference = next(line for line in deploy.splitlines() if "trained weights as given" in line)
    assert reference.endswith("| 0 | 1.50 | 0.50 |")  # timed seed, ONNX Runtime fp32 and int8 ms
    assert deploy.count("| 1.50 |") == 1 and "carved (hrank) + fine-tuned, 2 steps" in deploy
    assert {p: p.stat().st_mtime_ns for p in checkpoints} == checkpoints
    assert (out / "runs.jsonl").read_text() == written

    shutil.rmtree(tmp_path / "runs")  # a new machine: the committed records and release only
    res = evidence("vgg_featuremap.sh", tmp_path, **env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert not list((tmp_path / "runs").rglob("model.pt")) and (out / "runs.jsonl").read_text() == written

    res = evidence("vgg_featuremap.sh", tmp_path, **{**env, "BENCH": "yes"})
    assert res.returncode == 2 and "BENCH=yes" in res.stderr
    res = evidence("vgg_featuremap.sh", tmp_path, **{**env, "MIN_ACC": "1.01"})
    assert res.returncode == 1 and "below the bar 1.01 (MIN_ACC" in res.stderr
    assert (out / "runs.jsonl").read_text() == written


def test_the_gmp_study_runs_dense_polynomial_and_constant_with_and_without_augmentation(tmp_path):
    res = evidence("gmp.sh", tmp_path, MODELS="resnet_cifar", SEEDS="0", EXTRA=TINY_RESNET)
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "out"
    with (out / "gmp.csv").open() as f:
        rows = list(csv.DictReader(f))
    got = sorted((r["target sparsity"], r["schedule"], r["augmentation"], r["unfinished"]) for r in rows)
    want = sorted((s, sched, aug, "0") for aug in ("on", "off")
                  for s, sched in (("0", "dense"), ("0.6000", "polynomial"), ("0.6000", "constant"),
                                   ("0.7000", "polynomial"), ("0.7000", "constant")))
    assert got == want
    for r in rows:  # the zeros compress: the gzipped file of a sparse model is far smaller
        ratio = float(r["fp32 gzip / fp32"])
        assert ratio < 0.6 if r["schedule"] != "dense" else ratio > 0.8
    assert (out / "gmp.png").stat().st_size > 0 and (out / "gmp.md").read_text().startswith("| model |")
    assert (out / "pairs.png").read_bytes()[:4] == b"\x89PNG"
    assert {("polynomial vs constant", "test/acc"), ("magnitude-pruned vs dense", "int8/test/acc"),
            ("augmentation on vs off", "test/acc")} <= pairs(out)
    tables = {f: (out / f).read_text() for f in ("runs.jsonl", "gmp.csv", "stats.md")}
    shutil.rmtree(tmp_path / "runs")  # a new machine: the study goes on from its records
    res = evidence("gmp.sh", tmp_path, MODELS="resnet_cifar", SEEDS="0", EXTRA=TINY_RESNET)
    assert res.returncode == 0, res.stderr[-3000:]
    assert not list((tmp_path / "runs").rglob("model.pt"))
    assert {f: (out / f).read_text() for f in tables} == tables

    # the machine study: the runs with augmentation rerun under their labels, against records
    # whose test accuracy is marked (0.123), so the tables show which record each value is from
    marked = []
    for r in records(out):
        if "augment" not in r["label"]:
            r["metrics"]["test/acc"] = 0.123
        marked.append(json.dumps(r))
    (tmp_path / "first.jsonl").write_text("\n".join(marked) + "\n")
    machine = tmp_path / "machine"
    res = evidence("gmp_machine.sh", tmp_path, MODELS="resnet_cifar", SEEDS="0", EXTRA=TINY_RESNET,
                   FIRST=str(tmp_path / "first.jsonl"), OUT=str(machine))
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(records(machine)) == 5 and all("augment" not in r["label"] for r in records(machine))
    with (machine / "rerun.csv").open() as f:
        reruns = list(csv.DictReader(f))
    assert sorted(r["metric"] for r in reruns) == ["int8/test/acc"] * 5 + ["test/acc"] * 5
    assert {r["first"] for r in reruns if r["metric"] == "test/acc"} == {"0.1230"}
    assert "0.1230" not in {r["rerun"] for r in reruns}
    assert {("augmentation on vs off", "test/acc"), ("polynomial vs constant", "test/acc")} <= pairs(machine)
    # stats over the records with the reruns in their place: no marked value is left
    assert "0.1230" not in (machine / "stats.md").read_text()
    assert (machine / "pairs.png").read_bytes()[:4] == b"\x89PNG"


def test_the_distillation_study_pairs_each_network_with_and_without_its_teacher_run(tmp_path):
    res = evidence("kd_cifar.sh", tmp_path, EPOCHS="1", NETWORKS="kd_mobilenet_cifar", SEEDS="0",
                   EXTRA=SMALL)
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "out"
    runs = records(out)
    teacher = tmp_path / "runs" / "kd_cifar" / "teacher"
    assert [r["config"]["model"]["name"] for r in runs].count("resnet56") == 1
    students = [r["config"] for r in runs if r["config"]["model"]["name"] == "mobilenet_v1"]
    assert sorted(c["train"]["distill"]["enabled"] for c in students) == [False, True]
    taught = next(c for c in students if c["train"]["distill"]["enabled"])
    assert Path(taught["train"]["distill"]["teacher"]) == teacher
    assert all(c["train"]["epochs"] == 1 and c["dataset"]["name"] == "synthetic" for c in students)
    assert {("distilled from a run vs not", "test/acc"), ("distilled from a run vs not", "int8/test/acc")} <= pairs(out)
