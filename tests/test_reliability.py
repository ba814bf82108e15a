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


@pytest.mark.integration
def test_training_keeps_the_lowest_validation_loss_epoch(tmp_path):
    import json
    res = run(tmp_path, *TINY, "train.epochs=3", "train.select_on=val/loss", "train.threads=1")
    assert res.returncode == 0, res.stderr[-2000:]
    d = tmp_path / "run"
    history = json.loads((d / "history.json").read_text())
    best = min(history, key=lambda r: r["val/loss"])
    metrics = json.loads((d / "metrics.json").read_text())
    assert metrics["val/best_epoch"] == best["epoch"] and metrics["val/loss"] == best["val/loss"]


@pytest.mark.integration
def test_a_bad_selection_metric_stops_before_training(tmp_path):
    res = run(tmp_path, *TINY, "train.select_on=val/bogus")
    assert res.returncode == 2 and "train.select_on" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


# ------------------------------------------------------------------ fuzzing the settings

# Each key with (valid values, invalid values: wrong types, negatives, zeros, huge values);
# groups whose choice brings required keys. A case draws three keys, each value valid with
# probability 0.75, seeded: some cases run through, the others stop at one bad value.
FUZZ = {
    "train.epochs": (["1", "0"], ["-1", "abc", "2.5"]),
    "train.batch_size": (["16", "1000000"], ["0", "-5"]),
    "train.eval_batch_size": (["7"], ["0", "-1"]),
    "train.optimizer.lr": (["0.05"], ["-1", "abc", "0"]),
    "train.select_on": (["val/loss", "val/acc_local"], ["val/bogus"]),
    "dataset.num_classes": (["3", "null"], ["0", "-2", "11"]),
    "dataset.misc_multiplier": (["0.5", "2"], ["-1", "1e6"]),
    "dataset.val_fraction": (["0.2"], ["-0.1", "1.0"]),
    "dataset.unseen_fraction": (["0.3"], ["-0.5", "1.0"]),
    "dataset.image_size": (["16", "24"], ["0", "100000"]),
    "openset.tpr": (["0.9"], ["0", "2"]),
    "openset.score": (["energy", "msp"], ["entropy"]),
    "scaling": (["scaling=rs", "scaling=uniform",
                 "scaling=rs scaling.budget.rule=ratio scaling.budget.value=0.5"],
                ["scaling=plan", "scaling=factors",
                 "scaling=rs scaling.budget.rule=ratio scaling.budget.value=1.5",
                 "scaling=rs scaling.budget.unit=flops", "scaling=rs scaling.budget.lam=-1"]),
    "compression": (["compression=prune scaling=rs"],
                    ["compression=prune scaling=rs compression/criterion=bogus", "compression=prune"]),
    "model.checkpoint": (["null"], ["missing.th"]),
}
RESULTS = ("metrics.json", "summary.md", "test_metrics.json", "checkpoints/model.pt")


def fuzz_case(seed: int) -> list[str]:
    import random
    rng = random.Random(seed)
    overrides = []
    for key in rng.sample(sorted(FUZZ), 3):
        valid, invalid = FUZZ[key]
        value = rng.choice(valid if rng.random() < 0.75 else invalid)
        overrides += value.split() if "=" in value else [f"{key}={value}"]
    return overrides


@pytest.mark.integration
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("seed", range(24))
def test_fuzzed_settings_run_completely_or_stop_with_one_clear_message(seed, tmp_path):
    """Either a complete run directory, or one rsnet message and nothing that passes for a
    result; never an exception from inside torch, omegaconf or rsnet."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from conftest import compose_cfg
    from rsnet import pipeline
    overrides = [*TINY, "train.epochs=1", "train.latency_runs=0", *fuzz_case(seed)]
    try:
        cfg = compose_cfg(*overrides)
    except (HydraException, OmegaConfBaseException) as e:  # a wrong type, caught when composing
        assert any(o.split("=")[0] in str(e) for o in overrides), str(e)
        return
    run_dir = tmp_path / "run"
    try:
        pipeline.run(cfg, run_dir)
    except RsnetError as e:
        assert "\n" not in str(e).strip() and len(str(e)) < 600, str(e)
        left = [r for r in RESULTS if (run_dir / r).exists()] + [p.name for p in run_dir.rglob("*.onnx")]
        assert not left, (overrides, left)
        return
    assert all((run_dir / r).exists() for r in RESULTS), overrides


# ------------------------------------------------------------------ one test per defect

@pytest.mark.integration
def test_a_run_directory_is_locked_while_a_run_writes_into_it(tmp_path):
    import subprocess
    import sys
    from rsnet.pipeline import lock_run_dir
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    code = ("import sys, time; from pathlib import Path; from rsnet.pipeline import lock_run_dir; "
            "lock_run_dir(Path(sys.argv[1])); print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RsnetError, match=rf"in use by another rsnet run \(pid {holder.pid}\)"):
            lock_run_dir(run_dir)
        res = run(tmp_path, *TINY)  # the command line: one message, exit 2, nothing written
        assert res.returncode == 2 and "in use by another rsnet run" in res.stderr
        assert not (run_dir / "checkpoints").exists() and not (run_dir / "run.json").exists()
    finally:
        holder.kill()
        holder.wait()
    lock_run_dir(run_dir)  # free again once the holder is gone (however it ended)


@pytest.mark.integration
def test_an_unwritable_run_directory_or_cache_is_one_message(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    res = run(tmp_path, *TINY, run_dir=blocker / "run")
    assert res.returncode != 0 and "Traceback" not in res.stderr
    from rsnet.data.sources import _check_writable
    with pytest.raises(RsnetError, match="dataset.cache_dir"):
        _check_writable(blocker / "cache")


def test_int8_temporary_files_stay_in_the_run_directory(tmp_path, monkeypatch):
    import tempfile
    from pathlib import Path
    seen = []
    real = tempfile.TemporaryDirectory

    def spy(*args, **kwargs):
        seen.append(Path(kwargs.get("dir") or tempfile.gettempdir()))
        return real(*args, **kwargs)
    monkeypatch.setattr(tempfile, "TemporaryDirectory", spy)
    out = tmp_path / "export"
    out.mkdir()
    (out / ".rsnet-quant-stale").mkdir()  # left by a killed run
    from rsnet.deploy import export_onnx, quantize_int8
    from test_openset import Constant
    fp32 = export_onnx(Constant(), out / "m.onnx", 8)
    import numpy as np
    quantize_int8(fp32, out / "m_int8.onnx", [np.zeros((2, 3, 8, 8), np.float32)])
    assert seen and all(p == out or out in p.parents for p in seen), seen  # ORT's own too
    assert not list(out.glob(".rsnet-quant-*"))


def test_image_folder_errors_name_every_bad_file_and_empty_class(tmp_path):
    import numpy as np
    from PIL import Image
    from rsnet.data.sources import ImageFolderSource as ImageFolder, ImageSize
    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / split / c / "0.png")
    (tmp_path / "train" / "a" / "bad1.jpg").write_text("junk")
    (tmp_path / "train" / "b" / "bad2.jpg").write_text("junk")
    with pytest.raises(RsnetError, match=r"2 image\(s\).*bad1\.jpg.*bad2\.jpg"):
        ImageFolder(str(tmp_path)).load(tmp_path, tmp_path / "cache", ImageSize())
    for f in ("bad1.jpg", "bad2.jpg", "0.png"):
        (tmp_path / "train" / ("a" if f != "bad2.jpg" else "b") / f).unlink()
    with pytest.raises(RsnetError, match="without images.*: a;"):
        ImageFolder(str(tmp_path)).load(tmp_path, tmp_path / "cache2", ImageSize())


def test_duplicate_classes_are_named_and_classify_top_zero_is_refused(capsys):
    from rsnet.data.subsets import choose_classes
    from rsnet.deploy.classify import main
    with pytest.raises(RsnetError, match="lists cat more than once"):
        choose_classes(["cat", "dog", "emu"], None, True, 0, ["cat", "dog", "cat"])
    with pytest.raises(SystemExit) as e:
        main(["model.onnx", "x.jpg", "--top", "0"])
    assert e.value.code == 2 and "--top 0" in capsys.readouterr().err



@pytest.mark.integration
def test_int8_quantization_survives_constants_the_exporter_shares(tmp_path):
    """A fresh GoogLeNet-rs exported without folding: its BatchNorms (after the ReLUs) have
    equal weights and variances, so the exporter stores one constant for many inputs, on
    which ORT's quantizer failed (export_onnx folds those BNs by default: fold=False keeps
    the case)."""
    import numpy as np
    import onnx
    import torch
    from rsnet.deploy import export_onnx, quantize_int8
    from rsnet.deploy.onnx_io import open_session
    from rsnet.deploy.quant import unshare_initializers
    from rsnet.models.googlenet_rs import googlenet_rs

    def inputs_from_constants(model):
        inits = {i.name for i in model.graph.initializer}
        return [n for node in model.graph.node for n in node.input if n in inits]

    torch.manual_seed(0)
    fp32 = export_onnx(googlenet_rs(4, input_size=32, bn_scale=True).eval(), tmp_path / "m.onnx", 32,
                       fold=False)
    used = inputs_from_constants(onnx.load(str(fp32)))
    assert len(used) > len(set(used))  # the exporter did share constants ...
    used = inputs_from_constants(unshare_initializers(onnx.load(str(fp32))))
    assert len(used) == len(set(used))  # ... the copy the quantizer gets does not
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32), np.float32)
    int8 = quantize_int8(fp32, tmp_path / "m_int8.onnx", [x])
    a = open_session(fp32).run(None, {"input": x})[0]
    b = open_session(int8).run(None, {"input": x})[0]
    assert np.abs(a - b).max() < 0.2 * np.abs(a).max()  # int8 near fp32 on its calibration


def test_a_runtime_that_cannot_run_the_int8_file_keeps_its_fp32_results(tmp_path):
    """ExecuTorch's XNNPACK could not load the int8 program of a pruned ResNet-56 (a quantized
    channel pad): the fp32 results stand, the int8 file goes, and the metrics say why."""
    import torch
    from omegaconf import OmegaConf
    from rsnet.config import ExportConfig
    from rsnet.data import build_data
    from rsnet.deploy.runtimes import Predictor
    from rsnet.stages.export import runtime_metrics
    from test_data import synthetic_cfg

    weight = torch.randn(3, 3, generator=torch.Generator().manual_seed(0))

    def net(x):
        return x.mean((2, 3)) @ weight

    class NoInt8:
        name = "noint8"

        def open(self, path, threads, batch_size=None):
            if "int8" in path.name:
                raise RsnetError(f"cannot load {path.name}: no int8 kernel for a channel pad")
            return Predictor(lambda x: net(torch.from_numpy(x)).numpy(), {"precision": "f32"})

    data = build_data(synthetic_cfg(num_classes=3))
    files = {"fp32": tmp_path / "model.pte", "int8": tmp_path / "model_int8.pte"}
    for f in files.values():
        f.write_bytes(b"program")
    ex = OmegaConf.merge(OmegaConf.structured(ExportConfig()),
                         {"latency": {"batch_sizes": [1], "runs": 2, "warmup": 0, "threads": 1}})
    x = [data.test.images[:4].float()]
    m = runtime_metrics(NoInt8(), files, net(x[0]), x, data, 8, ex)
    assert m["noint8/top1_agreement"] == 1.0 and "noint8/test/acc" in m
    assert "latency/noint8_fp32_b1_ms" in m and "latency/noint8_int8_b1_ms" not in m
    assert "channel pad" in m["noint8_int8/unsupported"] and "noint8_int8/test/acc" not in m
    assert files["fp32"].exists() and not files["int8"].exists()
