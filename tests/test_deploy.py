"""Deployment: ONNX export parity (toy, zoo, pruned and real models), dynamic batch, metadata,
int8 agreement, a fresh process reproducing predictions, and clear errors for bad files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from conftest import REPO, compose_cfg
from rsnet.data import build_data
from rsnet.data.loader import BatchLoader
from rsnet.deploy import export_onnx, onnx_logits, open_session, quantize_int8, read_metadata
from rsnet.deploy.classify import Classifier, main as classify_main
from rsnet.errors import RsnetError
from rsnet.graph import analyze
from rsnet.models import build_model
from rsnet.models.googlenet_rs import googlenet_rs
from rsnet.models.mobilenet_v1 import mobilenet_v1
from rsnet.models.resnet_cifar import resnet_cifar
from rsnet.compress import Magnitude, prune_to_widths
from test_prune import TOYS, half, trained_looking

RTOL = 1e-4  # fp32 ONNX Runtime vs PyTorch (BN folded: float reassociation), relative to max |logit|


pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.integration]


def parity(model: torch.nn.Module, path: Path, size: int, batch_sizes=(1, 5)) -> float:
    """Export, then the max |difference| of logits over several batch sizes (dynamic batch),
    relative to the largest |logit| (random deep nets have huge logits)."""
    model.eval()
    export_onnx(model, path, size)
    session = open_session(path, threads=1)
    worst = 0.0
    for b in batch_sizes:
        x = torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(b))
        with torch.no_grad():
            ref = model(x)
        got = onnx_logits(session, [x])
        assert got.shape == ref.shape
        worst = max(worst, (got - ref).abs().max().item() / max(1.0, ref.abs().max().item()))
    return worst


@pytest.mark.parametrize("toy", sorted(TOYS))
def test_export_parity_on_toys(tmp_path, toy):
    assert parity(trained_looking(TOYS[toy]()), tmp_path / "m.onnx", 16) < RTOL


@pytest.mark.parametrize("build", [lambda: resnet_cifar(20), lambda: mobilenet_v1(10, input_size=32),
                                   lambda: googlenet_rs(10, input_size=32, aux_head=True)],
                         ids=["resnet20", "mobilenet_v1", "googlenet_rs_aux"])
def test_export_parity_on_zoo_models(tmp_path, build):
    """Residual (option-A pad shortcuts), depthwise, concat + an aux head that eval mode drops."""
    assert parity(trained_looking(build()), tmp_path / "m.onnx", 32) < RTOL


def test_export_parity_of_a_pruned_resnet(tmp_path):
    """A pruned ResNet (index shortcuts for option-A after pruning) exports exactly."""
    model = trained_looking(resnet_cifar(20))
    graph = analyze(resnet_cifar(20), 32)
    prune_to_widths(model, graph.layer_widths(half(graph)), torch.zeros(1, 3, 32, 32), Magnitude())
    assert parity(model.eval(), tmp_path / "pruned.onnx", 32) < RTOL


def test_export_parity_of_a_scaled_googlenet(tmp_path):
    """A network built at a plan's (uneven) widths, as the thesis's Psi', exports exactly."""
    import random

    from test_widths import random_args
    args = random_args("googlenet_rs", random.Random(3))
    model = trained_looking(googlenet_rs(6, input_size=32, **args))
    assert parity(model, tmp_path / "scaled.onnx", 32) < RTOL


def test_export_is_one_file_with_dynamic_batch_metadata_and_no_debug_paths(tmp_path):
    path = export_onnx(trained_looking(TOYS["residual"]()), tmp_path / "m.onnx", 16, opset=18,
                       metadata={"class_names": ["misc", "a"], "input_size": 16})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    proto = onnx.load(str(path))
    assert any(o.domain in ("", "ai.onnx") and o.version == 18 for o in proto.opset_import)
    dim0 = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.dim_value  # symbolic batch
    assert [i.name for i in proto.graph.input] == ["input"] and proto.graph.output[0].name == "logits"
    assert str(Path.cwd()) not in proto.SerializeToString().decode("latin-1")  # no stack traces
    meta = read_metadata(open_session(path))
    assert meta == {"class_names": ["misc", "a"], "input_size": 16}


def test_compact_names_shrink_both_files_and_change_no_output(tmp_path):
    """export.compact: shorter internal tensor names, the same graph and the same logits, in
    the fp32 file and (where QDQ nodes repeat each weight's name) the int8 one."""
    model = trained_looking(resnet_cifar(8, num_classes=4, stage_widths=[8, 16, 32])).eval()
    calib = [np.random.default_rng(0).standard_normal((8, 3, 16, 16), dtype=np.float32)]
    x = [torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))]
    sizes, logits, ops = {}, {}, {}
    for compact in (False, True):
        fp32 = export_onnx(model, tmp_path / f"fp32_{compact}.onnx", 16, compact=compact)
        int8 = quantize_int8(fp32, tmp_path / f"int8_{compact}.onnx", calib, compact=compact)
        sizes[compact] = fp32.stat().st_size, int8.stat().st_size
        logits[compact] = [onnx_logits(open_session(p, threads=1), x) for p in (fp32, int8)]
        ops[compact] = [[n.op_type for n in onnx.load(str(p)).graph.node] for p in (fp32, int8)]
    assert ops[True] == ops[False]
    assert sizes[True][0] < sizes[False][0] and sizes[True][1] < sizes[False][1]
    for a, b in zip(logits[True], logits[False]):
        assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))


def test_fixed_batch_export_rejects_other_batch_sizes(tmp_path):
    path = export_onnx(trained_looking(TOYS["residual"]()), tmp_path / "m.onnx", 16, dynamic_batch=False)
    session = open_session(path)
    onnx_logits(session, [torch.zeros(2, 3, 16, 16)])  # the example's batch size
    with pytest.raises(Exception):
        onnx_logits(session, [torch.zeros(3, 3, 16, 16)])


@pytest.fixture(scope="module")
def real(data_dir, models_dir, tmp_path_factory):
    """The pretrained ResNet-20, a seeded slice of CIFAR-10 (JPEG) test / train images, its export."""
    cfg = compose_cfg(f"dataset.root={data_dir}", f"model.checkpoint={models_dir / 'resnet20-12fca82f.th'}",
                      "dataset.num_classes=null")
    data = build_data(cfg.dataset)
    model = build_model(cfg.model, 10).eval()
    g = torch.Generator().manual_seed(0)
    test = data.test.images[torch.randperm(len(data.test), generator=g)[:500]]
    train = data.train.images[torch.randperm(len(data.train), generator=g)[:128]]

    def batches(images, bs):
        split = type(data.test)(images, torch.zeros(len(images), dtype=torch.long),
                                torch.zeros(len(images), dtype=torch.long))
        return [x for x, _ in BatchLoader(split, bs, data.mean, data.std)]

    out = tmp_path_factory.mktemp("real")
    path = export_onnx(model, out / "resnet20.onnx", 32,
                       metadata={"class_names": data.class_names, "input_size": 32,
                                 "mean": data.mean, "std": data.std, "misc_label": None})
    return {"model": model, "test": batches(test, 100), "calib": batches(train, 32), "path": path,
            "dir": out, "test_images": test}


def test_real_model_parity(real):
    session = open_session(real["path"])
    with torch.no_grad():
        ref = torch.cat([real["model"](x) for x in real["test"]])
    got = onnx_logits(session, real["test"])
    assert (got - ref).abs().max().item() < 1e-3
    assert (got.argmax(1) == ref.argmax(1)).all()


def test_int8_agrees_with_fp32_and_is_small(real):
    int8 = quantize_int8(real["path"], real["dir"] / "int8.onnx", [x.numpy() for x in real["calib"]])
    fp32 = onnx_logits(open_session(real["path"]), real["test"])
    q = onnx_logits(open_session(int8), real["test"])
    agreement = (fp32.argmax(1) == q.argmax(1)).double().mean().item()
    assert agreement >= 0.95, agreement
    assert int8.stat().st_size < 0.32 * real["path"].stat().st_size
    types = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= types  # QDQ format
    assert read_metadata(open_session(int8))["class_names"] == read_metadata(open_session(real["path"]))["class_names"]


def test_bad_calibration_method_is_an_rsnet_error(real, tmp_path):
    with pytest.raises(RsnetError, match="export.calib_method"):
        quantize_int8(real["path"], tmp_path / "q.onnx", [x.numpy() for x in real["calib"]], "median")


def write_images(folder: Path, images: torch.Tensor) -> list[Path]:
    folder.mkdir(exist_ok=True)
    files = []
    for i, img in enumerate(images):
        files.append(folder / f"img{i}.png")  # lossless: the test images exactly
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(files[-1])
    return files


def test_a_fresh_process_classifies_like_this_one(real, tmp_path):
    files = write_images(tmp_path / "imgs", real["test_images"][:8])
    clf = Classifier(real["path"])
    probs = clf.probabilities(files)
    with torch.no_grad():  # the same images through PyTorch: same predictions
        ref = real["model"](real["test"][0][:8]).softmax(1).numpy()
    assert np.abs(probs - ref).max() < 1e-4
    code = ("import json, sys; from rsnet.deploy.classify import Classifier; "
            "c = Classifier(sys.argv[1]); print(json.dumps(c.probabilities(sys.argv[2:]).tolist()))")
    res = subprocess.run([sys.executable, "-c", code, str(real["path"]), *map(str, files)],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert res.returncode == 0, res.stderr[-2000:]
    assert np.array_equal(np.asarray(json.loads(res.stdout)), probs.astype(np.float64)) or \
        np.abs(np.asarray(json.loads(res.stdout)) - probs).max() < 1e-6
    top = clf.classify(files, top=2)
    assert [t[0][0] for t in top] == [clf.class_names[i] for i in probs.argmax(1)]


def test_classify_cli_prints_names_and_fails_clearly(real, tmp_path, capsys):
    files = write_images(tmp_path / "imgs", real["test_images"][:2])
    assert classify_main([str(real["path"]), *map(str, files), "--top", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(len(line.split("\t")) == 3 for line in lines)
    assert classify_main([str(tmp_path / "missing.onnx"), str(files[0])]) == 2
    assert "not found" in capsys.readouterr().err
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(real["path"].read_bytes()[:5000])  # truncated
    assert classify_main([str(bad), str(files[0])]) == 2
    assert "not a readable ONNX model" in capsys.readouterr().err


def test_missing_and_corrupt_models_are_rsnet_errors(tmp_path):
    with pytest.raises(RsnetError, match="not found"):
        open_session(tmp_path / "nope.onnx")
    (tmp_path / "junk.onnx").write_text("not a model")
    with pytest.raises(RsnetError, match="not a readable ONNX model"):
        open_session(tmp_path / "junk.onnx")
    plain = tmp_path / "plain.onnx"  # an ONNX file without rsnet's metadata
    export_onnx(trained_looking(TOYS["residual"]()), plain, 16)
    with pytest.raises(RsnetError, match="no rsnet metadata"):
        Classifier(plain)
