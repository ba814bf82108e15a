"""The command line end to end (subprocesses, tiny synthetic runs): artifacts, resume, bad input."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, TINY

pytestmark = pytest.mark.integration

REQUIRED_KEYS = {"model/params", "model/macs", "test/acc", "test/acc_local", "test/acc_global",
                 "test/acc_raw", "test/misc_share", "train/images_per_s", "latency/torch_fp32_b1_ms"}


def run(tmp_path: Path, *overrides: str, run_dir: Path | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    run_dir = run_dir or tmp_path / "run"
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", **(env or {})}
    return subprocess.run([sys.executable, str(REPO / "scripts" / "run.py"), *overrides,
                           f"hydra.run.dir={run_dir}"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)


def test_a_run_writes_its_artifacts_and_a_rerun_resumes(tmp_path):
    res = run(tmp_path, *TINY, "dataset.num_classes=4")
    assert res.returncode == 0, res.stderr[-2000:]
    d = tmp_path / "run"
    metrics = json.loads((d / "metrics.json").read_text())
    assert REQUIRED_KEYS <= set(metrics)
    assert all(isinstance(v, (int, float, str)) for v in metrics.values())  # flat
    assert metrics["data/num_outputs"] == 4 and metrics["train/epochs"] == 2
    classes = json.loads((d / "classes.json").read_text())
    assert classes["class_names"][0] == "misc" and len(classes["in_scope"]) == 3
    assert "num_classes: 4" in (d / "config.yaml").read_text()
    assert "| local acc |" in (d / "summary.md").read_text()
    logged = list(csv.DictReader((d / "logs" / "history.csv").open()))  # logger=csv, the default
    history = json.loads((d / "history.json").read_text())
    assert [float(r["train/loss"]) for r in logged] == pytest.approx([r["train/loss"] for r in history])
    assert "metrics.json" in (d / "logs" / "metrics.csv").read_text()  # the artifacts' paths
    before = (d / "checkpoints" / "model.pt").stat().st_mtime_ns
    again = run(tmp_path, *TINY, "dataset.num_classes=4")
    assert again.returncode == 0, again.stderr[-2000:]
    assert (d / "checkpoints" / "model.pt").stat().st_mtime_ns == before  # training skipped
    assert json.loads((d / "metrics.json").read_text())["test/acc"] == metrics["test/acc"]


def test_stop_after_data_writes_no_result(tmp_path):
    res = run(tmp_path, *TINY, "stop_after=data")
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "run" / "classes.json").exists()
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_a_run_dir_with_another_config_is_refused(tmp_path):
    assert run(tmp_path, *TINY, "stop_after=data").returncode == 0
    res = run(tmp_path, *TINY, "stop_after=data", "seed=5")
    assert res.returncode == 2 and "overwrite=true" in res.stderr
    assert run(tmp_path, *TINY, "stop_after=data", "seed=5", "overwrite=true").returncode == 0


@pytest.mark.parametrize("overrides, message", [
    (["model=nosuchnet"], "model/nosuchnet"),
    (["dataset=nosuchdata"], "dataset/nosuchdata"),
    (["dataset.num_clases=5"], "num_clases"),
    (["dataset.num_classes=11"], "dataset.num_classes=11"),
    (["stop_after=everything"], "stop_after"),
    (["model.arch.depth=9"], "depth"),
])
def test_bad_settings_fail_with_one_clear_message(tmp_path, overrides, message):
    res = run(tmp_path, *TINY, *overrides)
    assert res.returncode != 0
    assert message in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_missing_data_root_names_the_setting(tmp_path):
    res = run(tmp_path, "dataset=cifar10_jpeg", f"dataset.root={tmp_path / 'nothing'}",
              "progress=false")
    assert res.returncode == 2
    assert "dataset.root" in res.stderr and "Traceback" not in res.stderr


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.th"
    bad.write_bytes(b"not a checkpoint at all")
    res = run(tmp_path, *TINY, f"model.checkpoint={bad}")
    assert res.returncode == 2 and "corrupt" in res.stderr and "Traceback" not in res.stderr
    res = run(tmp_path, *TINY, "model.checkpoint=missing.th", run_dir=tmp_path / "run2")
    assert res.returncode == 2 and "model.checkpoint" in res.stderr


# ImageNet-1k's label space as tiny synthetic images, two classes picked by the weights' names
PRETRAINED = ["~experiment", "model=torchvision", "model.arch.name=squeezenet1_1",
              "dataset=synthetic", "dataset.source.num_classes=1000", "dataset.source.size=8",
              "dataset.source.train_per_class=2", "dataset.source.test_per_class=1",
              "dataset.val_fraction=0.5", "dataset.image_size=32", "dataset.num_classes=3",
              "dataset.classes=[tabby,tiger cat]", "progress=false"]


def test_unknown_pretrained_weights_name_the_valid_ones(tmp_path):
    res = run(tmp_path, *PRETRAINED, "model.arch.weights=IMAGENET1K_V9")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "model.arch.weights=IMAGENET1K_V9: unknown for squeezenet1_1; use one of " \
           "IMAGENET1K_V1, DEFAULT" in res.stderr


def test_pretrained_weights_that_cannot_be_downloaded_are_one_clear_error(tmp_path):
    """Offline whether or not a network exists: the download goes through a proxy on a port
    nothing listens on (urllib honours https_proxy), so it fails at once and never downloads."""
    home = tmp_path / "torch_home"
    dead_proxy = "http://127.0.0.1:9"
    res = run(tmp_path, *PRETRAINED, "model.arch.weights=DEFAULT",
              env={"TORCH_HOME": str(home), "https_proxy": dead_proxy, "HTTPS_PROXY": dead_proxy})
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "model.arch.weights=SqueezeNet1_1_Weights.IMAGENET1K_V1: cannot download " \
           "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth" in res.stderr
    assert f"place that file at {home / 'hub' / 'checkpoints' / 'squeezenet1_1-b8a52dc0.pth'}" \
        in res.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_stop_after_plan_writes_the_plan_and_a_full_run_builds_it(tmp_path):
    res = run(tmp_path, *TINY, "dataset.num_classes=4", "scaling=rs", "stop_after=plan")
    assert res.returncode == 0, res.stderr[-2000:]
    d = tmp_path / "run"
    plan = json.loads((d / "plan.json").read_text())
    assert {"micro", "macro", "predicted", "budget", "units"} <= set(plan)
    assert plan["predicted"]["params"] <= plan["budget"]["value"]
    assert json.loads((d / "groups.json").read_text())["macro"]
    assert "WidthPlan" in res.stdout + res.stderr  # the table is shown
    res = run(tmp_path, *TINY, "dataset.num_classes=4", "scaling=rs")  # resumes after the plan
    assert res.returncode == 0, res.stderr[-2000:]
    metrics = json.loads((d / "metrics.json").read_text())
    assert metrics["model/params"] == plan["predicted"]["params"]
    assert metrics["model/macs"] == plan["predicted"]["macs"]
    assert "## Width plan" in (d / "summary.md").read_text()


def test_an_impossible_budget_is_a_clear_error(tmp_path):
    res = run(tmp_path, *TINY, "dataset.num_classes=4", "scaling=rs", "scaling.budget.rule=absolute",
              "scaling.budget.value=10", "stop_after=plan")
    assert res.returncode == 2 and "smallest plan" in res.stderr and "Traceback" not in res.stderr


def test_a_latency_budget_plans_on_measured_latency_and_names_its_setting(tmp_path):
    """scaling.budget.unit=latency end to end on ONNX Runtime: the plan records its prediction
    and the built plan's measured latency, its layer table is kept for a rerun; a budget below
    the narrowest plan, and a runtime without a layer table, are one clear error each."""
    lat = ["dataset.num_classes=4", "model.arch.stage_widths=[32,64,128]", "scaling=uniform",
           "scaling.budget.unit=latency", "scaling.budget.rule=ratio", "scaling.budget.value=0.8",
           "stop_after=plan"]  # wide enough that its latency is not all fixed overhead
    res = run(tmp_path, *TINY, *lat)
    assert res.returncode == 0, res.stderr[-2000:]
    d = tmp_path / "run"
    plan = json.loads((d / "plan.json").read_text())
    latency = plan["latency"]
    assert latency["runtime"] == "onnxruntime" and latency["threads"] == 1
    assert latency["predicted_ms"] == pytest.approx(plan["predicted"]["latency"])
    assert latency["predicted_ms"] <= plan["budget"]["value"]
    assert latency["measured_ms"] > 0 and latency["rounds"]
    assert json.loads((d / "latency_lut.json").read_text())["entries"]
    from rsnet.plan import WidthPlan
    from rsnet.stages.plan import plan_metrics
    metrics = plan_metrics(WidthPlan.load(d / "plan.json"))  # what metrics.json gets
    assert metrics["plan/budget_unit"] == "latency"
    assert metrics["plan/latency_measured_ms"] == pytest.approx(latency["measured_ms"])
    assert metrics["plan/budget_used"] == pytest.approx(latency["predicted_ms"] / plan["budget"]["value"])
    res = run(tmp_path, *TINY, *lat[:-2], "scaling.budget.value=0.001", "stop_after=plan",
              run_dir=tmp_path / "tiny_budget")
    assert res.returncode == 2 and "scaling.budget.value" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "tiny_budget" / "plan.json").exists()
    res = run(tmp_path, *TINY, *lat, "scaling.budget.runtime=openvino", run_dir=tmp_path / "ov")
    assert res.returncode == 2 and "scaling.budget.runtime" in res.stderr


def test_logger_mlflow_records_the_run_in_its_directory(tmp_path):
    import mlflow

    res = run(tmp_path, *TINY, "dataset.num_classes=4", "logger=mlflow")
    assert res.returncode == 0, res.stderr[-2000:]
    d = tmp_path / "run"
    client = mlflow.tracking.MlflowClient("sqlite:///" + str((d / "mlflow.db").resolve()))
    run_ = client.get_run((d / "logs" / "mlflow_run_id").read_text().strip())
    metrics = json.loads((d / "metrics.json").read_text())
    assert run_.data.metrics["final/test/acc"] == pytest.approx(metrics["test/acc"])
    assert len(client.get_metric_history(run_.info.run_id, "train/loss")) == 2  # two epochs
    assert run_.data.params["dataset.num_classes"] == "4"


def test_magnitude_pruning_keeps_its_sparsity_to_the_end(tmp_path):
    res = run(tmp_path, *TINY, "dataset.num_classes=4", "compression=magnitude",
              "compression.sparsity.final_sparsity=0.6", "compression.sparsity.end_epoch=1",
              "compression.sparsity.frequency=1")
    assert res.returncode == 0, res.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["sparsity/overall"] == pytest.approx(0.6, abs=0.01)  # after a further epoch
    layers = json.loads((tmp_path / "run" / "sparsity.json").read_text())
    assert all(v == pytest.approx(0.6, abs=0.05) for k, v in layers.items() if "/layer/" in k)


def test_distillation_without_a_teacher_names_the_setting(tmp_path):
    res = run(tmp_path, *TINY, "train.distill.enabled=true")
    assert res.returncode == 2 and "model.checkpoint" in res.stderr


def test_distillation_from_a_finished_run(tmp_path):
    """train.distill.teacher: the model of a finished run on the same classes (here a full-width
    one) teaches a scaled student as it is; a teacher on other classes, a directory that holds
    no finished run, and a teacher without distillation each end with an error naming it."""
    teacher = tmp_path / "teacher"
    res = run(tmp_path, *TINY, "dataset.num_classes=4", "train.epochs=1", run_dir=teacher)
    assert res.returncode == 0, res.stderr[-2000:]
    student = (*TINY, "dataset.num_classes=4", "scaling=rs", "train.epochs=1",
               "train.distill.enabled=true")
    res = run(tmp_path, *student, f"train.distill.teacher={teacher}")
    assert res.returncode == 0, res.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    teacher_metrics = json.loads((teacher / "metrics.json").read_text())
    assert metrics["distill/teacher_params"] == teacher_metrics["model/params"] > metrics["model/params"]
    assert f"distillation: teacher {teacher}" in (tmp_path / "run" / "run.log").read_text()
    other = run(tmp_path, *TINY, "dataset.num_classes=3", "scaling=rs", "train.epochs=1",
                "train.distill.enabled=true", f"train.distill.teacher={teacher}",
                run_dir=tmp_path / "other")
    assert other.returncode == 2 and "train.distill.teacher" in other.stderr
    assert "classes differ" in other.stderr and not (tmp_path / "other" / "metrics.json").exists()
    empty = run(tmp_path, *student, f"train.distill.teacher={tmp_path / 'nothing'}",
                run_dir=tmp_path / "empty")
    assert empty.returncode == 2 and "not a finished run directory" in empty.stderr
    off = run(tmp_path, *TINY, f"train.distill.teacher={teacher}", run_dir=tmp_path / "off")
    assert off.returncode == 2 and "train.distill.enabled=false" in off.stderr


def test_pruning_to_the_plan_realises_it_and_resumes(tmp_path):
    args = (*TINY, "dataset.num_classes=4", "scaling=rs", "compression=prune",
            "compression/criterion=l1", "compression.steps=2", "train.epochs=1")
    res = run(tmp_path, *args)
    assert res.returncode == 0, res.stderr[-2000:]
    d = tmp_path / "run"
    metrics = json.loads((d / "metrics.json").read_text())
    plan = json.loads((d / "plan.json").read_text())
    assert (metrics["model/params"], metrics["model/macs"]) == \
        (plan["predicted"]["params"], plan["predicted"]["macs"])
    assert metrics["prune/criterion"] == "l1" and (d / "checkpoints" / "pruned.pt").exists()
    # the epoch between the two steps is counted: as many images as the final epoch's
    assert metrics["prune/step_images_seen"] == metrics["train/images_seen"] > 0
    # as if killed after the first pruning step and its fine-tuning: resumes from prune_step1.pt
    for f in ("model.pt", "last.pt", "best.pt", "pruned.pt", "prune_step2.pt"):
        (d / "checkpoints" / f).unlink()
    (d / "metrics.json").unlink()
    again = run(tmp_path, *args)  # reloads prune_step1.pt in a fresh process, prunes, trains again
    assert again.returncode == 0, again.stderr[-2000:]
    assert "pruning step 1/2" not in again.stdout and "pruning step 2/2" in again.stdout
    resumed = json.loads((d / "metrics.json").read_text())
    assert resumed["model/params"] == metrics["model/params"]
    assert resumed["prune/step_images_seen"] == metrics["prune/step_images_seen"]
    # a pruned.pt written before the between-step training was recorded: unknown, not 0
    import torch
    pruned = torch.load(d / "checkpoints" / "pruned.pt", weights_only=True)
    del pruned["meta"]["step_images_seen"]
    torch.save(pruned, d / "checkpoints" / "pruned.pt")
    (d / "metrics.json").unlink()
    old = run(tmp_path, *args)
    assert old.returncode == 0, old.stderr[-2000:]
    assert json.loads((d / "metrics.json").read_text())["prune/step_images_seen"] is None


def test_prune_without_a_plan_names_the_setting(tmp_path):
    res = run(tmp_path, *TINY, "compression=prune")
    assert res.returncode == 2 and "scaling=rs" in res.stderr


EXPORT = ("export.verify_images=40", "export.calib_images=32", "export.latency.runs=3",
          "export.latency.warmup=1", "export.latency.batch_sizes=[1,4]", "export.eval_batch_size=50")


def test_export_int8_of_a_pruned_model_is_verified_measured_and_reported(tmp_path):
    res = run(tmp_path, *TINY, "dataset.num_classes=4", "scaling=rs", "compression=prune",
              "train.epochs=1", "train.precision=fp32", "export=int8", *EXPORT)
    assert res.returncode == 0, res.stderr[-2000:]
    d = tmp_path / "run"
    m = json.loads((d / "metrics.json").read_text())
    assert m["export/verify_images"] == 40 and m["export/top1_agreement"] == 1.0
    assert m["export/max_abs_diff"] < 1e-3
    assert m["export/onnx_bytes"] == (d / "export" / "model.onnx").stat().st_size
    assert m["int8/bytes"] == (d / "export" / "model_int8.onnx").stat().st_size
    # ONNX Runtime fp32 scores what PyTorch scored (the evaluate stage ran fp32 here)
    assert abs(m["onnx/test/acc"] - m["test/acc"]) <= 1 / m["data/test_images"] + 1e-9
    for kind in ("torch_fp32", "ort_fp32", "ort_int8"):
        assert m[f"latency/{kind}_b1_ms"] > 0 and m[f"latency/{kind}_b4_ms"] > 0
    assert {"int8/test/acc", "int8/test/acc_local", "int8/top1_agreement"} <= set(m)
    summary = (d / "summary.md").read_text()
    assert "## Deployment" in summary and "ONNX Runtime int8 (minmax)" in summary
    from rsnet.deploy.classify import Classifier
    clf = Classifier(d / "export" / "model_int8.onnx")
    assert clf.class_names == json.loads((d / "classes.json").read_text())["class_names"]
    assert clf.misc_label == 0 and clf.class_names[0] == "misc"


def test_every_chosen_runtime_is_verified_evaluated_timed_and_reported(tmp_path):
    res = run(tmp_path, *TINY, "train.epochs=1", "train.precision=fp32", "export=int8",
              "export/runtimes=[openvino,executorch]", *EXPORT)
    assert res.returncode == 0, res.stderr[-2000:]
    d = tmp_path / "run"
    m = json.loads((d / "metrics.json").read_text())
    assert m["openvino/precision"] == "f32" and m["openvino/top1_agreement"] == 1.0
    assert m["openvino/max_abs_diff"] < 1e-3
    # the same fp32 file on both runtimes scores the same on the test set
    assert abs(m["openvino/test/acc"] - m["onnx/test/acc"]) <= 1 / m["data/test_images"] + 1e-9
    assert m["openvino_int8/top1_agreement"] >= 0.9 and "openvino_int8/test/acc_local" in m
    for kind in ("openvino_fp32", "openvino_int8"):
        assert m[f"latency/{kind}_b1_ms"] > 0 and m[f"latency/{kind}_b4_ms"] > 0
    # ExecuTorch: its own .pte programs, verified, evaluated and timed the same way
    assert m["executorch/top1_agreement"] == 1.0 and m["executorch/max_abs_diff"] < 1e-3
    assert abs(m["executorch/test/acc"] - m["onnx/test/acc"]) <= 1 / m["data/test_images"] + 1e-9
    assert m["executorch/bytes"] == (d / "export" / "model.pte").stat().st_size
    assert m["executorch_int8/bytes"] == (d / "export" / "model_int8.pte").stat().st_size
    assert m["executorch_int8/top1_agreement"] >= 0.9
    assert m["latency/executorch_int8_b4_ms"] > 0
    summary = (d / "summary.md").read_text()
    assert "| OpenVINO fp32 (runs f32) |" in summary and "| OpenVINO int8 (minmax) |" in summary
    assert "OpenVINO: int8 speed-up over its own fp32:" in summary
    assert "| ExecuTorch int8 (PT2E) |" in summary


def test_an_export_that_disagrees_fails_and_leaves_no_result(tmp_path):
    res = run(tmp_path, *TINY, "export=onnx", "export.atol=-1", *EXPORT)
    assert res.returncode == 2 and "export.atol" in res.stderr and "Traceback" not in res.stderr
    d = tmp_path / "run"
    assert not (d / "metrics.json").exists() and not (d / "export" / "model.onnx").exists()
    assert not (d / "export_metrics.json").exists()


@pytest.mark.parametrize("overrides, message", [
    (["export.name=tflite"], "export.name"),
    (["export=int8", "export.calib_method=median"], "export.calib_method"),
])
def test_bad_export_settings_fail_before_training(tmp_path, overrides, message):
    res = run(tmp_path, *TINY, *overrides)
    assert res.returncode == 2 and message in res.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_zero_epochs_evaluates_the_model_as_it_is(tmp_path):
    """train.epochs=0: the (subset-headed) model is evaluated and kept untrained."""
    res = run(tmp_path, *TINY, "train.epochs=0", "train.precision=fp32")
    assert res.returncode == 0, res.stderr[-2000:]
    d = tmp_path / "run"
    m = json.loads((d / "metrics.json").read_text())
    assert m["train/epochs"] == 0 and "train/images_per_s" not in m
    assert not (d / "checkpoints" / "last.pt").exists() and (d / "checkpoints" / "model.pt").exists()


# experiment=cifar_gmp at a tiny scale: synthetic 16 px images (10 classes), a ResNet-8 at the
# CIFAR widths (16 / 32 / 64: its weights, not the graph, fill the ONNX file), 3 epochs of
# 16 steps with the sparsity ramp ending at the first step of epoch 3 (step 32)
GMP_TINY = ("experiment=cifar_gmp", "progress=false", "dataset=synthetic", "dataset.source.size=16",
            "model=resnet_cifar", "model.arch.depth=8", "model.input_size=16", "train.batch_size=32",
            "train.epochs=3", "train.precision=fp32", "train.latency_runs=3",
            "compression.sparsity.final_sparsity=0.7", "compression.sparsity.frequency=4", *EXPORT)


def test_gmp_experiment_end_to_end_sparse_files_compress_better_than_dense(tmp_path):
    runs = {"polynomial": ("compression.sparsity.end_epoch=2",),
            "constant": ("compression.sparsity.end_epoch=0",), "dense": ("compression=none",)}
    m = {}
    for name, extra in runs.items():
        res = run(tmp_path, *GMP_TINY, *extra, run_dir=tmp_path / name)
        assert res.returncode == 0, res.stderr[-2000:]
        m[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    for name, metrics in m.items():
        d = tmp_path / name / "export"
        assert metrics["export/onnx_bytes"] == (d / "model.onnx").stat().st_size
        assert metrics["int8/bytes"] == (d / "model_int8.onnx").stat().st_size
        assert 0 < metrics["export/onnx_gzip_bytes"] < metrics["export/onnx_bytes"]
        assert 0 < metrics["int8/gzip_bytes"] < metrics["int8/bytes"]
    ratio = {n: x["export/onnx_gzip_bytes"] / x["export/onnx_bytes"] for n, x in m.items()}
    assert ratio["dense"] > 0.8  # trained floats barely compress
    assert ratio["polynomial"] < 0.6 * ratio["dense"] and ratio["constant"] < 0.6 * ratio["dense"]
    assert m["polynomial"]["export/onnx_bytes"] == pytest.approx(m["dense"]["export/onnx_bytes"], rel=0.01)
    int8 = {n: x["int8/gzip_bytes"] / x["int8/bytes"] for n, x in m.items()}
    assert int8["polynomial"] < 0.8 * int8["dense"]
    # both schedules end at 70 %; the polynomial run's epochs 1-2 (less sparse) are not selectable
    assert m["polynomial"]["sparsity/overall"] == pytest.approx(0.7, abs=0.01)
    assert m["constant"]["sparsity/overall"] == pytest.approx(0.7, abs=0.01)
    assert "sparsity/overall" not in m["dense"]
    assert m["polynomial"]["val/best_epoch"] == 3
    history = json.loads((tmp_path / "polynomial" / "history.json").read_text())
    assert [r.get("train/selectable", 1) for r in history] == [0, 0, 1]
    summary = (tmp_path / "polynomial" / "summary.md").read_text()
    assert "| gzip -9 bytes |" in summary and "gzip -9 compresses the fp32 file to" in summary
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "tables.py"), "gmp", str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout
    rows = [r.split(" | ") for r in out.splitlines() if r.startswith("| resnet_cifar")]
    assert [r[1:4] for r in rows] == [["0", "dense", "on"], ["0.7000", "polynomial", "on"],
                                      ["0.7000", "constant", "on"]]
    assert rows[1][10] == f"{m['polynomial']['export/onnx_gzip_bytes']:,}"
