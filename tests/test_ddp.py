"""Data-parallel training: real two-process torchrun jobs on the CPU (gloo) running the command
line, and the pieces they rest on (batch sharding, settings, SyncBatchNorm swapping)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY, compose_cfg
from rsnet import distributed
from rsnet.data.loader import BatchLoader, Split
from rsnet.errors import RsnetError
from rsnet.train import resolve_runtime

pytestmark = pytest.mark.integration

WORKER = Path(__file__).with_name("ddp_worker.py")


def torchrun(tmp_path: Path, name: str, *overrides: str, stop_after_epoch: int | None = None
             ) -> tuple[subprocess.CompletedProcess, Path, Path]:
    """Two CPU processes of tests/ddp_worker.py (scripts/run.py) on the TINY config."""
    run_dir, out = tmp_path / name, tmp_path / f"{name}_records"
    out.mkdir(exist_ok=True)
    env = {**os.environ, "RSNET_TEST_OUT": str(out), "RSNET_TEST_RUN_DIR": str(run_dir),
           "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    env.pop("RSNET_TEST_STOP_AFTER_EPOCH", None)
    if stop_after_epoch is not None:
        env["RSNET_TEST_STOP_AFTER_EPOCH"] = str(stop_after_epoch)
    # --standalone: a local rendezvous on a free port
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(WORKER), *TINY, "dataset.num_classes=4", "train.precision=fp32", *overrides,
           f"hydra.run.dir={run_dir}"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    return res, run_dir, out


def load_records(out: Path) -> list[dict]:
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    res, run_dir, out = torchrun(tmp, "run")
    assert res.returncode == 0, res.stderr[-3000:]
    return run_dir, load_records(out)


def test_two_ranks_train_one_model(ddp_run):
    run_dir, (rank0, rank1) = ddp_run
    assert len(rank0["states"]) == len(rank1["states"]) == 3  # start + 2 epochs
    for s0, s1 in zip(rank0["states"], rank1["states"]):  # weights and BN statistics alike
        assert_same_state(s0, s1)
    start, end = rank0["states"][0], rank0["states"][-1]
    assert any(not torch.equal(start[k], end[k]) for k in start if k.endswith("weight"))
    drop = ("train/epoch_s", "train/images_per_s")  # each rank times itself
    assert [{k: v for k, v in r.items() if k not in drop} for r in rank0["history"]] == \
           [{k: v for k, v in r.items() if k not in drop} for r in rank1["history"]]
    history = json.loads((run_dir / "history.json").read_text())
    assert [r["val/acc"] for r in history] == [r["val/acc"] for r in rank0["history"]]


def test_only_rank_0_writes_the_run_directory(ddp_run):
    run_dir, (rank0, rank1) = ddp_run
    assert rank1["writes"] == []
    assert any(w.endswith("metrics.json") for w in rank0["writes"])  # the hook does see writes
    for name in ("metrics.json", "summary.md", "run.log", ".hydra/config.yaml",
                 "checkpoints/model.pt", "checkpoints/last.pt"):
        assert (run_dir / name).exists(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train/epochs"] == 2 and metrics["data/num_outputs"] == 4
    # the model written is the one both ranks trained (the best epoch's weights)
    saved = torch.load(run_dir / "checkpoints" / "model.pt", weights_only=False)["state_dict"]
    best = max(range(2), key=lambda e: rank0["history"][e]["val/acc"])  # first best wins
    assert_same_state(saved, rank0["states"][best + 1])


def test_a_killed_ddp_run_resumes_to_the_same_weights(ddp_run, tmp_path):
    _, (uninterrupted, _) = ddp_run
    res, run_dir, out = torchrun(tmp_path, "run", stop_after_epoch=0)
    assert res.returncode != 0 and (run_dir / "checkpoints" / "last.pt").exists()
    assert not (run_dir / "metrics.json").exists()
    res, run_dir, out = torchrun(tmp_path, "run")
    assert res.returncode == 0, res.stderr[-3000:]
    resumed = load_records(out)
    assert len(resumed[0]["states"]) == 2  # start (restored) + the second epoch only
    for rank in resumed:
        assert_same_state(rank["states"][-1], uninterrupted["states"][-1])


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_share_each_global_batch_exactly(world):
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 255, (50, 3, 6, 6), dtype=torch.uint8, generator=g),
                  torch.arange(50), torch.arange(50))
    kw = dict(mean=[0.5] * 3, std=[0.25] * 3, shuffle=True, crop_padding=2, flip=True,
              drop_last=True, seed=3)
    single = BatchLoader(split, 12, **kw)
    ranks = [BatchLoader(split, 12, rank=r, world_size=world, **kw) for r in range(world)]
    for loader in (single, *ranks):
        loader.set_epoch(2)
    assert all(len(r) == len(single) == 4 for r in ranks)  # equal step counts: nobody waits
    for (x, y), *parts in zip(single, *ranks):
        assert torch.equal(torch.cat([p[1] for p in parts]), y)
        assert torch.equal(torch.cat([p[0] for p in parts]), x)  # same crops and flips


@pytest.mark.parametrize("overrides, message", [
    (["train.batch_size=33"], "train.batch_size"),
    (["train.sync_bn=true"], "train.sync_bn"),
    (["train.dist_backend=nccl"], "train.dist_backend"),
    (["train.dist_backend=mpi"], "train.dist_backend"),
    (["train.device=cuda:1"], "train.device"),
])
def test_bad_distributed_settings_name_the_setting(monkeypatch, overrides, message):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    cfg = compose_cfg(*TINY, "train.device=cpu", *overrides).train
    with pytest.raises(RsnetError, match=message):
        resolve_runtime(cfg)
    assert not torch.distributed.is_initialized()


def test_one_process_is_not_distributed(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    rt = resolve_runtime(compose_cfg(*TINY).train)
    assert not rt.dist.enabled and rt.dist.is_main
    assert not torch.distributed.is_initialized()


def test_sync_batchnorm_is_swapped_back_with_its_values():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                                torch.nn.Sequential(torch.nn.BatchNorm2d(4)))
    bn = model[1]
    restore = distributed.convert_sync_batchnorm(model)
    assert isinstance(model[1], torch.nn.SyncBatchNorm) and isinstance(model[2][0], torch.nn.SyncBatchNorm)
    assert model[1].weight is bn.weight and model[1].running_mean is bn.running_mean
    with torch.no_grad():  # "training" changes the shared tensors
        model[1].weight.add_(1.0)
        model[1].running_mean.add_(2.0)
    restore()
    assert model[1] is bn and type(model[2][0]) is torch.nn.BatchNorm2d
    assert torch.equal(bn.weight, torch.full((4,), 2.0))
    assert torch.equal(bn.running_mean, torch.full((4,), 2.0))
