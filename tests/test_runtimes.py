"""Deployment runtimes beside ONNX Runtime (rsnet.deploy.runtimes): OpenVINO on the exported
ONNX files, ExecuTorch on the .pte programs it builds; parity with PyTorch / ONNX Runtime,
clear errors for a corrupt file and a missing runtime package, the Classifier on any runtime,
and the report comparing int8 with the same runtime's fp32 (scripts/bench.py int8, with a run
directory's model rebuilt for ExecuTorch)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from rsnet.deploy import export_onnx, onnx_logits, open_session, quantize_int8
from rsnet.deploy.classify import Classifier, main as classify_main
from rsnet.deploy.runtimes import ExecuTorch, OpenVINO, predict_logits, predictor_latency
from rsnet.errors import RsnetError
from rsnet.report import deployment_lines
from conftest import REPO
from test_prune import TOYS, trained_looking

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.integration]  # exports, like test_deploy
SIZE = 16


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A toy exported as fp32 and static int8 with rsnet's metadata, and test batches."""
    d = tmp_path_factory.mktemp("rt")
    model = trained_looking(TOYS["inception"]()).eval()
    meta = {"class_names": [f"c{i}" for i in range(5)], "misc_label": None, "input_size": SIZE,
            "mean": [0.5] * 3, "std": [0.25] * 3}
    fp32 = export_onnx(model, d / "m.onnx", SIZE, metadata=meta)
    g = torch.Generator().manual_seed(0)
    calib = [torch.randn(8, 3, SIZE, SIZE, generator=g).numpy() for _ in range(4)]
    int8 = quantize_int8(fp32, d / "m_int8.onnx", calib)
    x = [torch.randn(b, 3, SIZE, SIZE, generator=g) for b in (1, 7, 16)]
    with torch.no_grad():
        ref = torch.cat([model(b) for b in x])
    calib = [torch.from_numpy(c) for c in calib]
    pte = ExecuTorch(max_batch=8).files({"fp32": fp32, "int8": int8}, model, SIZE, 4, calib)
    return {"fp32": fp32, "int8": int8, "x": x, "ref": ref, "dir": d, "pte": pte, "model": model,
            "calib": calib}


def test_openvino_runs_the_fp32_file_as_pytorch_does(files):
    pred = OpenVINO().open(files["fp32"], threads=1)
    got = predict_logits(pred, files["x"])  # batches of 1, 7 and 16: the dynamic batch
    assert got.shape == files["ref"].shape
    assert (got - files["ref"]).abs().max().item() < 1e-4 * max(1.0, files["ref"].abs().max().item())
    assert pred.info["precision"] == "f32"  # the hint is honoured and reported


def test_openvino_runs_the_int8_file_as_onnx_runtime_does(files):
    ort = onnx_logits(open_session(files["int8"], 1), files["x"])
    ov = predict_logits(OpenVINO().open(files["int8"], threads=1), files["x"])
    ref = files["ref"]
    # both run the same quantized graph: close to each other, and to fp32 within int8's error
    assert (ov.argmax(1) == ort.argmax(1)).double().mean() >= 0.9
    scale = ref.abs().max().item()
    assert (ov - ort).abs().max().item() < 0.1 * scale
    assert (ov - ref).abs().max().item() < 0.2 * scale


def test_executorch_builds_xnnpack_programs_that_run_as_pytorch_does(files):
    pte = files["pte"]
    assert pte == {"fp32": files["dir"] / "m.pte", "int8": files["dir"] / "m_int8.pte"}
    ref, scale = files["ref"], max(1.0, files["ref"].abs().max().item())
    # batches of 1, 7 and 16 on a program planned for 8 at most: run in chunks of 8
    fp32 = predict_logits(ExecuTorch(max_batch=8).open(pte["fp32"], threads=1), files["x"])
    assert (fp32 - ref).abs().max().item() < 1e-4 * scale
    int8 = predict_logits(ExecuTorch(max_batch=8).open(pte["int8"], threads=1), files["x"])
    assert (int8.argmax(1) == ref.argmax(1)).double().mean() >= 0.9
    assert 0 < (int8 - ref).abs().max().item() < 0.2 * scale  # quantized, and close


def test_a_static_batch_times_that_batch(files):
    pred = OpenVINO().open(files["fp32"], threads=1, batch_size=4)
    assert pred(np.zeros((4, 3, SIZE, SIZE), np.float32)).shape == (4, 5)
    assert predictor_latency(pred, SIZE, 4, runs=3, warmup=1) > 0


def test_a_corrupt_or_missing_file_is_a_clear_error(files, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(files["fp32"].read_bytes()[:3000])
    with pytest.raises(RsnetError, match="OpenVINO cannot run .*bad.onnx.*re-export"):
        OpenVINO().open(bad, threads=1)
    with pytest.raises(RsnetError, match="not found"):
        OpenVINO().open(tmp_path / "missing.onnx", threads=1)
    bad_pte = tmp_path / "bad.pte"
    bad_pte.write_bytes(files["pte"]["fp32"].read_bytes()[:200])
    with pytest.raises(RsnetError, match="ExecuTorch cannot load .*bad.pte.*re-export"):
        ExecuTorch().open(bad_pte, threads=1)
    with pytest.raises(RsnetError, match="not found"):
        ExecuTorch().open(tmp_path / "missing.pte", threads=1)


def test_a_missing_runtime_package_names_the_extra(files, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed: import fails
    with pytest.raises(RsnetError, match=r'pip install -e "\.\[openvino\]"'):
        OpenVINO().open(files["fp32"], threads=1)
    monkeypatch.setitem(sys.modules, "executorch", None)
    with pytest.raises(RsnetError, match=r'pip install -e "\.\[executorch\]"'):
        ExecuTorch().open(files["pte"]["fp32"], threads=1)


def test_the_classifier_answers_the_same_on_every_runtime(files, tmp_path, capsys):
    from PIL import Image
    rng = np.random.default_rng(0)
    images = []
    for i in range(3):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(path)
        images.append(path)
    ort = Classifier(files["fp32"], threads=1).logits(images)
    ov = Classifier(files["fp32"], threads=1, runtime=OpenVINO()).logits(images)
    assert np.abs(ort - ov).max() < 1e-4 * max(1.0, np.abs(ort).max())
    et = Classifier(files["fp32"], threads=1, runtime=ExecuTorch(max_batch=8))  # runs m.pte
    assert np.abs(ort - et.logits(images)).max() < 1e-4 * max(1.0, np.abs(ort).max())
    assert classify_main(["--runtime", "openvino", str(files["fp32"]), *map(str, images)]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3


def test_the_report_compares_int8_with_the_same_runtime():
    m = {"export/onnx_bytes": 400, "export/opset": 18, "export/verify_images": 64,
         "export/max_abs_diff": 1e-6, "export/top1_agreement": 1.0, "latency/threads": 2,
         "int8/bytes": 100, "int8/size_ratio": 0.25, "int8/calib_method": "minmax",
         "int8/top1_agreement": 0.99, "openvino/precision": "f32",
         "latency/torch_fp32_b1_ms": 9.0, "latency/ort_fp32_b1_ms": 2.0,
         "latency/ort_int8_b1_ms": 4.0, "latency/openvino_fp32_b1_ms": 1.0,
         "latency/openvino_int8_b1_ms": 0.5, "openvino/test/acc": 0.8,
         "openvino_int8/test/acc": 0.79}
    old = "\n".join(deployment_lines(m))  # a run from before the gzip sizes: "-", no ratios
    assert "| OpenVINO fp32 (runs f32) | 400 | - | 0.8000 | 1.00 |" in old and "compresses" not in old
    text = "\n".join(deployment_lines({**m, "export/onnx_gzip_bytes": 120, "int8/gzip_bytes": 80}))
    assert "| OpenVINO fp32 (runs f32) | 400 | 120 | 0.8000 | 1.00 |" in text
    assert "| OpenVINO int8 (minmax) | 100 | 80 | 0.7900 | 0.50 |" in text
    assert "gzip -9 compresses the fp32 file to 0.300 of its bytes and the int8 file to 0.800" in text
    assert "ONNX Runtime: int8 speed-up over its own fp32: 0.50x at batch 1" in text
    assert "OpenVINO: int8 speed-up over its own fp32: 2.00x at batch 1" in text
    assert "PyTorch eager fp32 at batch" not in text  # no cross-runtime speed-up


def test_bench_int8_reports_each_runtime_against_its_own_fp32(files, tmp_path):
    """scripts/bench.py int8: the accuracy of each file on each runtime is the file's own
    (checked against ONNX Runtime's and ExecuTorch's logits here), the int8 change and
    speed-up compare with the same runtime's fp32, ExecuTorch runs its own programs made from
    the model, and a sweep directory's name is shortened readably."""
    import argparse

    from omegaconf import OmegaConf

    from rsnet.config import DatasetConfig
    from rsnet.data import build_data
    from rsnet.data.loader import BatchLoader
    from test_tables import load_benchmark

    bench = load_benchmark("int8")
    data = build_data(OmegaConf.merge(OmegaConf.structured(DatasetConfig(name="synthetic", source={
        "_target_": "rsnet.data.sources.Synthetic", "num_classes": 5, "train_per_class": 10,
        "test_per_class": 12, "size": SIZE})), {"mean": [0.5] * 3, "std": [0.25] * 3}))
    args = argparse.Namespace(latency_batch=4, repeats=2, runtimes=list(bench.INT8_RUNTIMES))
    onnx = {"fp32": files["fp32"], "int8": files["int8"]}
    rt_files = bench._runtime_files(onnx, files["model"], SIZE, files["calib"], args, tmp_path)
    assert rt_files == {"ort": onnx, "openvino": onnx,
                        "executorch": {"fp32": tmp_path / "m.pte", "int8": tmp_path / "m_int8.pte"}}
    [row] = bench._int8_rows([("toy", rt_files, data, SIZE)], args)
    batches = [x for x, _ in BatchLoader(data.test, 250, data.mean, data.std)]
    own_logits = {"ort": lambda path: onnx_logits(open_session(path, 1), batches),
                  "executorch": lambda path: predict_logits(ExecuTorch().open(path, threads=2), batches)}
    for rt, logits_of in own_logits.items():
        for precision, path in rt_files[rt].items():
            acc = (logits_of(path).argmax(1) == data.test.targets).double().mean().item()
            assert row[f"{rt}_{precision}_acc"] == pytest.approx(acc), (rt, precision)
    assert row["test_images"] == 60 and "ort_fp32_acc_local" not in row  # no misc class
    for rt in ("ort", "openvino", "executorch"):
        assert row[f"{rt}_int8_speedup"] == pytest.approx(row[f"{rt}_fp32_b4_ms"] / row[f"{rt}_int8_b4_ms"])
        assert row[f"{rt}_int8_acc_change"] == pytest.approx(row[f"{rt}_int8_acc"] - row[f"{rt}_fp32_acc"])
    table = bench.int8_markdown({"rows": [row]})
    assert all(f"| toy | 60 | {name} |" in table for name in ("ONNX Runtime", "OpenVINO", "ExecuTorch"))
    ort_only = bench.int8_markdown({"rows": [{k: v for k, v in row.items() if not k.startswith(
        ("openvino", "executorch"))}]})  # a run with --runtimes ort
    assert "| toy | 60 | ONNX Runtime |" in ort_only and "ExecuTorch" not in ort_only
    # a file its runtime cannot run (e.g. an int8 op its backend lacks): recorded, the rest runs
    bad = tmp_path / "bad_int8.pte"
    bad.write_bytes(rt_files["executorch"]["int8"].read_bytes()[:200])
    args.runtimes, args.repeats = ["executorch"], 1
    [row] = bench._int8_rows([("toy", {"executorch": {**rt_files["executorch"], "int8": bad}},
                               data, SIZE)], args)
    assert "ExecuTorch cannot load" in row["executorch_int8_unsupported"]
    assert row["executorch_fp32_b4_ms"] > 0 and row["executorch_fp32_acc"] is not None
    assert row["executorch_int8_acc"] is row["executorch_int8_speedup"] is row["executorch_int8_b4_ms"] is None
    table = bench.int8_markdown({"rows": [row]})
    assert (f"| toy | 60 | ExecuTorch | {100 * row['executorch_fp32_acc']:.2f} % | - | - | "
            f"{row['executorch_fp32_b4_ms']:.2f} | - | - |") in table
    assert "- toy: ExecuTorch cannot run its int8 file: ExecuTorch cannot load" in table
    # ONNX Runtime ran every file at export: one it cannot run is a fault, not a table note
    bad_onnx = tmp_path / "bad_int8.onnx"
    bad_onnx.write_bytes(files["int8"].read_bytes()[:200])
    args.runtimes = ["ort"]
    with pytest.raises(RsnetError):
        bench._int8_rows([("toy", {"ort": {"fp32": files["fp32"], "int8": bad_onnx}}, data, SIZE)], args)
    assert bench.run_label("dataset.num_classes=10,model.checkpoint=m.pt,recipe=carve,seed=2,"
                           "train.distill.enabled=True") == "num_classes=10,recipe=carve,seed=2,distill=True"


def test_bench_int8_refuses_an_unknown_runtime(monkeypatch, capsys):
    from test_tables import load_script

    bench = load_script("bench")
    monkeypatch.setattr(sys, "argv", ["bench.py", "int8", "--runtimes", "ort", "tflite"])
    with pytest.raises(SystemExit) as e:
        bench.main()
    assert e.value.code == 2
    assert "--runtimes: invalid choice: 'tflite'" in capsys.readouterr().err


def test_bench_int8_of_run_directories_only_names_a_run_without_its_export(tmp_path):
    """``--experiments`` with no name benchmarks only --run-dirs (e.g. the VGG-16 study's
    runs); a directory without its exported files is one error naming it, and no JSON; with
    neither experiments nor run directories there is nothing to measure: an error too."""
    out = tmp_path / "int8.json"
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "bench.py"), "int8", "--experiments",
                          "--runtimes", "ort", "--run-dirs", str(tmp_path / "unfinished"),
                          "--out", str(out)], capture_output=True, text=True)
    assert res.returncode == 1, res.stderr
    assert f"bench int8: {tmp_path / 'unfinished'} has no" in res.stderr and not out.exists()
    nothing = subprocess.run([sys.executable, str(REPO / "scripts" / "bench.py"), "int8", "--experiments",
                              "--out", str(out)], capture_output=True, text=True)
    assert nothing.returncode == 1 and "nothing to measure" in nothing.stderr and not out.exists()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three finished tiny runs (N = 4, export=int8): one built at the rs plan's widths
    (plan.json), one carved to them from the baseline (checkpoints/pruned.pt), one at full
    width with the 4-way head (no plan)."""
    from conftest import TINY, compose_cfg
    from rsnet import pipeline

    d = tmp_path_factory.mktemp("runs")
    for name, extra in (("plan", ["scaling=rs"]), ("carve", ["scaling=rs", "compression=prune"]),
                        ("full", [])):
        pipeline.run(compose_cfg(*TINY, "dataset.num_classes=4", "train.epochs=1",
                                 "train.precision=fp32", "export=int8", "export.calib_images=32",
                                 "export.verify_images=40", "export.latency.runs=3",
                                 "export.latency.warmup=1", "export.latency.batch_sizes=[1]",
                                 *extra), d / name)
    return d


def test_bench_int8_rebuilds_a_run_s_model_as_it_was_exported(runs):
    """A run directory's model for ExecuTorch, rebuilt from config.yaml, its structure (the
    plan's widths, the carved model's, or full widths with the N-way head) and
    checkpoints/model.pt, gives its exported ONNX file's logits; its programs are made outside
    the run directory and score what ONNX Runtime scores."""
    import argparse

    from omegaconf import OmegaConf

    from rsnet.data import build_data
    from rsnet.data.loader import BatchLoader
    from test_tables import load_benchmark

    bench = load_benchmark("int8")
    assert (runs / "plan" / "plan.json").is_file() and not (runs / "full" / "plan.json").exists()
    assert (runs / "carve" / "checkpoints" / "pruned.pt").is_file()
    for name in ("plan", "carve", "full"):
        cfg = OmegaConf.load(runs / name / "config.yaml")
        data = build_data(cfg.dataset)
        net = bench.rebuilt_run_model(runs / name, cfg, data)
        batches = [x for x, _ in BatchLoader(data.test, 50, data.mean, data.std)]
        with torch.no_grad():
            got = torch.cat([net(x) for x in batches])
        ref = onnx_logits(open_session(runs / name / "export" / "model.onnx", 1), batches)
        assert got.shape == (len(data.test), 4) and (got - ref).abs().max().item() < 1e-4, name
    args = argparse.Namespace(experiments=[], latency_batch=4, repeats=1, runtimes=["ort", "executorch"],
                              run_dirs=[str(runs / name) for name in ("plan", "carve", "full")])
    rows = bench.bench_int8(args)["rows"]
    # a run's row names its experiment (the family), whether it was scaled (a plan, a carved
    # structure) and its directory's overrides
    cfg_name = OmegaConf.load(runs / "plan" / "config.yaml").name
    assert [r["model"] for r in rows] == [f"{cfg_name} Psi' (plan)", f"{cfg_name} Psi' (carve)",
                                          f"{cfg_name} full width (full)"]
    for row in rows:
        assert abs(row["executorch_fp32_acc"] - row["ort_fp32_acc"]) <= 1 / row["test_images"] + 1e-9
        assert row["executorch_fp32_b4_ms"] > 0 and "openvino_fp32_acc" not in row
        # XNNPACK cannot compile the carved ResNet's int8 zero-padded shortcut (a StaticConstantPad
        # node, at the time of writing): then recorded as unsupported, and the fp32 row stands
        assert row["executorch_int8_b4_ms"] or "executorch_int8_unsupported" in row
    assert not list(runs.rglob("*.pte"))  # nothing written into the run directories


def test_a_rebuild_that_does_not_match_the_export_is_a_clear_error(runs, tmp_path):
    import shutil

    from omegaconf import OmegaConf

    from rsnet.data import build_data
    from test_tables import load_benchmark

    bench = load_benchmark("int8")
    d = tmp_path / "run"
    shutil.copytree(runs / "plan", d)
    cfg = OmegaConf.load(d / "config.yaml")
    data = build_data(cfg.dataset)
    ckpt = d / "checkpoints" / "model.pt"
    saved = torch.load(ckpt, weights_only=False)
    state = dict(saved["state_dict"])
    key = next(k for k, v in state.items() if v.ndim == 4)  # the first conv: same shape, other values
    torch.save({**saved, "state_dict": {**state, key: state[key] * 2 + 0.1}}, ckpt)
    with pytest.raises(RsnetError, match=r"rebuilt from .*run .*does not reproduce its "
                                         r"export/model.onnx: max \|logit diff\|"):
        bench.rebuilt_run_model(d, cfg, data)
    torch.save(saved, ckpt)
    (d / "plan.json").unlink()  # the plan's widths lost: the full-width model does not fit
    with pytest.raises(RsnetError, match=r"run/checkpoints/model.pt does not fit the model rebuilt "
                                         r"from its config.yaml and full widths \(no plan.json"):
        bench.rebuilt_run_model(d, cfg, data)

