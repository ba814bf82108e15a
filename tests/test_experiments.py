"""The thesis's experiment files, multirun sweeps (failures, resuming, launchers) and the thesis
tables made from a real sweep (tiny synthetic runs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from conftest import CONF, REPO, TINY, compose_cfg
from test_cli import EXPORT, run

pytestmark = pytest.mark.integration

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
THESIS = [f"{m}_{n}cls" for m in ("googlenet", "mobilenet") for n in (5, 10, 15, 20)]
# TINY, one epoch, one thread (two threads crawl when another process keeps the cores busy)
FAST = [o for o in TINY if o != "train.epochs=2"] + ["train.epochs=1", "train.threads=1"]


def sweep(tmp_path: Path, sweep_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, str(REPO / "scripts" / "run.py"), "-m", *overrides,
                           f"hydra.sweep.dir={sweep_dir}"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)


def tables(*args: str) -> str:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "tables.py"), *map(str, args)],
                          capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes(name):
    extra = ["dataset.source.path=/data/imagenet"] if name.endswith("imagenet") else []
    cfg = compose_cfg(f"experiment={name}", *extra)
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert cfg.name == name


@pytest.mark.parametrize("name", THESIS)
def test_the_thesis_experiments_are_the_thesis_setting(name):
    cfg = compose_cfg(f"experiment={name}")
    family, n = name.split("_")
    assert cfg.model.name == {"googlenet": "googlenet_rs", "mobilenet": "mobilenet_v1"}[family]
    assert cfg.dataset.name == "tiny_imagenet" and cfg.model.input_size == 64
    assert cfg.dataset.num_classes == int(n.removesuffix("cls")) and cfg.dataset.misc
    assert cfg.dataset.unseen_fraction == 0.2  # misc detection judged on unseen classes too
    assert cfg.scaling.name == "rs" and cfg.scaling.budget.rule == "thesis"
    assert cfg.scaling.budget.lam == 0.045 and cfg.scaling.budget.unit == "params"
    # the best recipe by default: Psi' carved out of the released Psi, fine-tuned with distillation
    assert cfg.model.checkpoint == f"{cfg.model.name}_tiny200.pt"
    assert (REPO / "checkpoints" / cfg.model.checkpoint).is_file()
    assert cfg.compression.name == "prune" and cfg.train.distill.enabled and cfg.train.epochs == 10
    assert cfg.export.int8
    # the thesis's way, one override away: Psi' from scratch (Psi still evaluated beside it)
    scratch = compose_cfg(f"experiment={name}", "recipe=scratch")
    assert scratch.compression.name == "none" and scratch.scaling.name == "rs"
    assert scratch.train.optimizer.lr == 0.1 and scratch.train.epochs == 30
    assert not scratch.train.distill.enabled and scratch.model.checkpoint == cfg.model.checkpoint
    # the ceiling: Psi fine-tuned at full width
    ceiling = compose_cfg(f"experiment={name}", "recipe=finetune")
    assert ceiling.scaling.name == "none" and ceiling.compression.name == "none"
    # the documented overrides
    assert compose_cfg(f"experiment={name}", "scaling.budget.lam=0.25").scaling.budget.lam == 0.25
    uniform = compose_cfg(f"experiment={name}", "scaling=uniform")
    assert uniform.scaling.budget.lam == 0.045 and uniform.compression.name == "prune"


@pytest.mark.parametrize("name, size", [("googlenet_imagenet", 227), ("mobilenet_imagenet", 224)])
def test_the_imagenet_experiments_are_at_the_thesis_scale(name, size):
    cfg = compose_cfg(f"experiment={name}", "dataset.source.path=/data/imagenet")
    assert cfg.dataset.name == "imagefolder" and cfg.dataset.source.path == "/data/imagenet"
    assert cfg.model.input_size == size and cfg.dataset.image_size == size
    assert cfg.scaling.name == "rs" and cfg.scaling.budget.lam == 0.045 and cfg.export.int8
    assert cfg.train.optimizer._target_ == "torch.optim.Adam" and cfg.train.batch_size == 64


@pytest.mark.parametrize("name", ["googlenet_tiny_baseline", "mobilenet_tiny_baseline"])
def test_the_baseline_experiments_train_all_200_classes_from_scratch(name):
    cfg = compose_cfg(f"experiment={name}")
    assert cfg.dataset.name == "tiny_imagenet" and cfg.dataset.num_classes is None
    assert cfg.scaling.name == "none" and cfg.model.checkpoint is None
    # the strong-baseline recipe (scripts/evidence/baselines.sh)
    assert cfg.train.epochs == 16 and cfg.train.loss.label_smoothing == 0.1


def _image_folder(root: Path) -> Path:
    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", 10), ("val", 4)):
        for c in range(4):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(n):
                img = (torch.randint(0, 60, (40, 48, 3), generator=gen) + 60 * c).to(torch.uint8)
                Image.fromarray(img.numpy()).save(root / split / f"c{c}" / f"{i}.jpg")
    return root


def test_the_imagenet_experiment_runs_on_a_tiny_image_folder(tmp_path):
    """At 32 px to stay fast; at 224 / 227 px the same runs take about 30 s each."""
    res = run(tmp_path, "experiment=mobilenet_imagenet",
              f"dataset.source.path={_image_folder(tmp_path / 'folder')}", "dataset.image_size=32",
              "model.input_size=32", "dataset.num_classes=3", "train.epochs=1", "train.threads=1",
              "progress=false", "train.latency_runs=0", *EXPORT, "export.latency.threads=1")
    assert res.returncode == 0, res.stderr[-2000:]
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["dataset/name"] == "imagefolder" and m["data/num_outputs"] == 3
    assert m["plan/policy"] == "rs" and "int8/test/acc" in m


@pytest.fixture(scope="module")
def psi_sweep(tmp_path_factory):
    """A two-job sweep over N of Psi' (rs) from scratch, with a (random-weight) C-way baseline
    checkpoint so that Psi is evaluated on each subset."""
    tmp = tmp_path_factory.mktemp("sweep")
    from rsnet.models import build_model
    ckpt = tmp / "psi.pt"
    torch.save({"state_dict": build_model(compose_cfg(*TINY).model, 10).state_dict()}, ckpt)
    args = (*FAST, "scaling=rs", f"model.checkpoint={ckpt}", "dataset.num_classes=3,4")
    res = sweep(tmp, tmp / "sweep", *args)
    assert res.returncode == 0, res.stderr[-2000:]
    return tmp, args


def test_a_sweep_over_two_class_counts_gives_a_complete_thesis_table(psi_sweep):
    tmp, _ = psi_sweep
    jobs = sorted(p.name for p in (tmp / "sweep").iterdir() if p.is_dir())
    assert len(jobs) == 2 and jobs[0].startswith("dataset.num_classes=3,")  # readable job folders
    out = tables("thesis", tmp / "sweep", "--out", tmp / "tables")
    synthesis = out.split("## Compression")[0]
    rows = [r for r in synthesis.splitlines() if r.startswith("| resnet_cifar")]
    assert len(rows) == 6  # Psi (C-way and mapped N-way) and Psi' (rs) for N = 3 and 4
    scratch = "Psi' (rs), from scratch, 1 epoch"  # not the scratch recipe's 30: named
    assert [r.split(" | ")[2:4] for r in rows] == [
        ["3", "Psi (C-way baseline)"], ["3", "Psi (mapped N-way)"], ["3", scratch],
        ["4", "Psi (C-way baseline)"], ["4", "Psi (mapped N-way)"], ["4", scratch]]
    assert "missing" not in synthesis
    assert [r.split(" | ")[4] for r in rows] == ["-", "-", "0.0450"] * 2  # lambda
    # the mapped Psi has the calibrated and open-set columns the C-way one cannot have
    assert rows[1].split(" | ")[12] != "-" and rows[0].split(" | ")[12] == "-"
    for name in ("thesis.md", "thesis.tex", "thesis_synthesis.csv", "thesis_compression.csv",
                 "acc_vs_params.png", "acc_vs_macs.png"):
        assert (tmp / "tables" / name).stat().st_size > 0
    assert (tmp / "tables" / "thesis_synthesis.csv").read_text().count("\n") == 7
    assert r"\toprule" in (tmp / "tables" / "thesis.tex").read_text()
    summary = json.loads((tmp / "sweep" / "sweep.json").read_text())
    assert [j["status"] for j in summary["jobs"]] == ["done", "done"]


def test_rerunning_a_finished_sweep_does_not_retrain(psi_sweep):
    tmp, args = psi_sweep
    models = sorted((tmp / "sweep").glob("*/checkpoints/model.pt"))
    assert len(models) == 2
    before = [p.stat().st_mtime_ns for p in models]
    res = sweep(tmp, tmp / "sweep", *args)
    assert res.returncode == 0, res.stderr[-2000:]
    assert [p.stat().st_mtime_ns for p in models] == before
    assert "skipping training" in (models[0].parent.parent / "run.log").read_text()


def test_a_failed_job_does_not_stop_the_sweep(tmp_path):
    res = sweep(tmp_path, tmp_path / "sweep", *FAST, "dataset.num_classes=11,3")  # 11: impossible
    assert res.returncode == 1
    assert "1 failed" in res.stderr and "dataset.num_classes=11" in res.stderr
    assert "Traceback" not in res.stderr
    done = next((tmp_path / "sweep").glob("dataset.num_classes=3,*"))
    failed = next((tmp_path / "sweep").glob("dataset.num_classes=11,*"))
    assert (done / "metrics.json").exists()  # the job after the failure ran
    assert "impossible" in (failed / "run.log").read_text()
    jobs = json.loads((tmp_path / "sweep" / "sweep.json").read_text())["jobs"]
    assert [j["status"] for j in jobs] == ["failed", "done"] and "use 2..10" in jobs[0]["error"]
    rows = [r for r in tables("thesis", tmp_path / "sweep").splitlines() if r.startswith("| resnet")]
    by_n = {r.split(" | ")[2]: r for r in rows}
    assert by_n["11"].count("missing") == 13 and "missing" not in by_n["3"]  # every metric column


def test_the_submitit_local_launcher_runs_a_sweep(tmp_path):
    """submitit's local executor stands in for SLURM (hydra/launcher=submitit_slurm)."""
    res = sweep(tmp_path, tmp_path / "sweep", "hydra/launcher=submitit_local", *FAST,
                "dataset.num_classes=3")
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(list((tmp_path / "sweep").glob("dataset.num_classes=3,*/metrics.json"))) == 1
    jobs = json.loads((tmp_path / "sweep" / "sweep.json").read_text())["jobs"]
    assert [j["status"] for j in jobs] == ["done"]


def test_a_released_fp16_checkpoint_reloads_as_the_baseline(tmp_path):
    """scripts/release_checkpoint.py halves a finished run's weights; loading the file back as
    model.checkpoint evaluates the same model (fp16 rounding aside) on the same test set."""
    res = run(tmp_path, *FAST, "dataset.num_classes=null", run_dir=tmp_path / "run")
    assert res.returncode == 0, res.stderr[-2000:]
    out = tmp_path / "ckpts"
    subprocess.run([sys.executable, str(REPO / "scripts" / "release_checkpoint.py"), tmp_path / "run",
                    "tiny.pt", "--command", "python scripts/run.py tiny", "--out-dir", out], check=True,
                   capture_output=True)
    saved = torch.load(out / "tiny.pt")
    floats = [v for v in saved["state_dict"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    trained = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["meta"]["test/acc"] == trained["test/acc"]
    assert "| `tiny.pt` | resnet_cifar |" in (out / "README.md").read_text()
    res = run(tmp_path, *FAST, "dataset.num_classes=null", f"model.checkpoint={out / 'tiny.pt'}",
              "stop_after=baseline", run_dir=tmp_path / "reload")
    assert res.returncode == 0, res.stderr[-2000:]
    reloaded = json.loads((tmp_path / "reload" / "baseline_metrics.json").read_text())
    assert abs(reloaded["baseline/test/acc"] - trained["test/acc"]) <= 0.02
