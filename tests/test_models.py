"""Tests of the model zoo: shapes, fx tracing, widths, checkpoints, counts and errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from rsnet.errors import RsnetError
from rsnet.models.googlenet_rs import BASELINE_WIDTHS, googlenet_rs
from rsnet.models.layers import ShiftBatchNorm2d, torch_pruning_pruners
from rsnet.models.mobilenet_v1 import DEFAULT_BLOCKS, mobilenet_v1
from rsnet.models.resnet_cifar import PadShortcut, resnet_cifar
from rsnet.models.torchvision_models import torchvision_model
from rsnet.models.vgg import DEFAULT_WIDTHS, vgg16

from conftest import THESIS_WIDTHS



def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def macs(model: nn.Module, size: int, num_classes: int | None = None) -> float:
    """Conv + linear multiply-accumulates for one ``size`` x ``size`` image.

    Also checks the output shape is ``(1, num_classes)`` when ``num_classes`` is given.
    """
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        out = model(torch.randn(1, 3, size, size))
    if num_classes is not None:
        assert out.shape == (1, num_classes)
    return counter.get_total_flops() / 2


def assert_trace_matches(model: nn.Module, size: int, batch: int = 1) -> torch.Tensor:
    """fx-trace ``model`` in eval mode and check traced == eager, bit for bit."""
    model.eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager, graph = model(x), traced(x)
    assert torch.equal(eager, graph)
    return eager


def conv_widths(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def changed(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    assert a.keys() == b.keys()
    return {k: b[k] for k in a if a[k] != b[k]}


# ----------------------------------------------------------------------------- layers


def test_shift_bn_has_shift_only_and_matches_bn() -> None:
    shift = ShiftBatchNorm2d(4)
    assert shift.weight is None
    assert [n for n, _ in shift.named_parameters()] == ["bias"]
    assert list(shift.state_dict()) == ["bias", "running_mean", "running_var", "num_batches_tracked"]
    assert isinstance(shift, nn.BatchNorm2d)
    ref = nn.BatchNorm2d(4)  # scale fixed at 1 == no scale
    with torch.no_grad():
        shift.bias.copy_(torch.arange(4.0))
        ref.bias.copy_(torch.arange(4.0))
    x = torch.randn(3, 4, 5, 5)
    assert torch.allclose(shift(x), ref(x), atol=1e-6)  # train mode, updates stats
    assert torch.allclose(shift.running_mean, ref.running_mean)
    shift.eval(), ref.eval()
    assert torch.allclose(shift(x), ref(x), atol=1e-6)
    assert torch.equal(torch.fx.symbolic_trace(shift)(x), shift(x))


def test_shift_bn_prunes_with_torch_pruning() -> None:
    tp = pytest.importorskip("torch_pruning")
    model = nn.Sequential(nn.Conv2d(3, 8, 3), ShiftBatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(1, 3, 8, 8)
    graph = tp.DependencyGraph().build_dependency(model, x, customized_pruners=torch_pruning_pruners())
    graph.get_pruning_group(model[0], tp.prune_conv_out_channels, idxs=[1, 5]).prune()
    assert model[1].bias.shape == (6,) and model[1].running_mean.shape == (6,)
    assert model(x).shape == (1, 4, 6, 6)


# ----------------------------------------------------------------------------- ResNet


def models_dir() -> Path:
    env = os.environ.get("RSNET_MODELS")
    path = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "models"
    assert path.is_dir(), f"pretrained ResNet folder missing: {path} (set $RSNET_MODELS)"
    return path


@pytest.mark.parametrize("depth,params", [(20, 269_722), (44, 658_586), (56, 853_018)])
def test_resnet_params_shape_trace(depth: int, params: int) -> None:
    model = resnet_cifar(depth)
    assert n_params(model) == params
    assert assert_trace_matches(model, 32).shape == (1, 10)


@pytest.mark.parametrize("depth,stem", [(20, "resnet20-"), (44, "resnet44-"), (56, "resnet56-")])
def test_resnet_loads_akamaster_checkpoint(depth: int, stem: str) -> None:
    files = sorted(models_dir().glob(f"{stem}*.th"))
    assert files, f"no {stem}*.th in {models_dir()}"
    state = torch.load(files[0], map_location="cpu", weights_only=False)["state_dict"]
    model = resnet_cifar(depth)
    model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()}, strict=True)
    assert torch.equal(model.linear.weight, state["module.linear.weight"])
    assert torch.isfinite(assert_trace_matches(model, 32)).all()


def test_resnet_widths() -> None:
    base = resnet_cifar(20)
    inner = [4, 5, 6, 7, 8, 9, 10, 11, 12]
    model = resnet_cifar(20, inner_widths=inner)
    blocks = [b for layer in (model.layer1, model.layer2, model.layer3) for b in layer]
    expected = {f"layer{i // 3 + 1}.{i % 3}.conv1": w for i, w in enumerate(inner)}
    assert changed(conv_widths(base), conv_widths(model)) == expected
    assert [b.conv2.in_channels for b in blocks] == inner
    assert assert_trace_matches(model, 32).shape == (1, 10)

    wide = resnet_cifar(20, num_classes=3, stage_widths=(16, 48, 64))
    assert wide.layer2[0].conv2.out_channels == 48 and wide.layer3[0].conv1.in_channels == 48
    assert (wide.layer2[0].shortcut.pad_left, wide.layer2[0].shortcut.pad_right) == (16, 16)
    assert assert_trace_matches(wide, 32).shape == (1, 3)


def test_pad_shortcut_is_option_a() -> None:
    block = resnet_cifar(20).layer2[0]
    assert isinstance(block.shortcut, PadShortcut)
    assert (block.shortcut.pad_left, block.shortcut.pad_right, block.shortcut.stride) == (8, 8, 2)
    x = torch.randn(2, 16, 32, 32)
    out = block.shortcut(x)
    assert out.shape == (2, 32, 16, 16)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert not out[:, :8].any() and not out[:, 24:].any()


@pytest.mark.parametrize(
    "kwargs,word",
    [
        ({"depth": 21}, "depth"),
        ({"depth": 2}, "depth"),
        ({"depth": 20, "inner_widths": [16] * 8}, "inner_widths"),
        ({"depth": 20, "inner_widths": [16] * 8 + [0]}, "inner_widths[8]"),
        ({"depth": 20, "stage_widths": (16, 32)}, "stage_widths"),
        ({"depth": 20, "stage_widths": (16, 8, 64)}, "stage_widths"),
    ],
)
def test_resnet_errors(kwargs: dict, word: str) -> None:
    with pytest.raises(RsnetError, match=word.replace("[", r"\[")):
        resnet_cifar(**kwargs)


# ----------------------------------------------------------------------------- GoogLeNet


def test_googlenet_thesis_count_and_macs() -> None:
    model = googlenet_rs(num_classes=5, widths=THESIS_WIDTHS, input_size=227, bn_scale=False)
    assert n_params(model) == 331_732
    assert macs(model, 227, num_classes=5) == pytest.approx(92.7e6, rel=2e-3)


@pytest.mark.slow
def test_googlenet_baseline_227() -> None:
    model = googlenet_rs(num_classes=1000, input_size=227)
    assert model.conv1.conv.stride == (2, 2)
    assert n_params(model) == 7_013_112  # with BN scales; 7,005,832 with bn_scale=False
    assert macs(model, 227, num_classes=1000) == pytest.approx(1599.9e6, rel=1e-3)
    assert assert_trace_matches(model, 227).shape == (1, 1000)


@pytest.mark.parametrize("size,stride", [(64, 2), (32, 1)])
def test_googlenet_baseline_small_inputs(size: int, stride: int) -> None:
    # 32 px with stem stride 1 follows the same 32, 16, 16, 7, 4, 2 path as 64 px.
    model = googlenet_rs(num_classes=1000, input_size=size)
    assert model.conv1.conv.stride == (stride, stride)
    assert macs(model, size, num_classes=1000) == pytest.approx(121.87e6, rel=1e-3)
    assert assert_trace_matches(model, size).shape == (1, 1000)


def test_googlenet_thesis_widths_trace_at_227() -> None:
    model = googlenet_rs(num_classes=5, widths=THESIS_WIDTHS, input_size=227, bn_scale=False)
    assert assert_trace_matches(model, 227).shape == (1, 5)


def test_googlenet_layer_structure() -> None:
    thesis = googlenet_rs(widths=THESIS_WIDTHS, bn_scale=False)
    assert isinstance(thesis.inception4a.conv3x3.bn, ShiftBatchNorm2d)
    assert not any(isinstance(m, ShiftBatchNorm2d) for m in googlenet_rs(widths=THESIS_WIDTHS).modules())
    # ReLU before BN only in the stem and in 3a.
    pre = {n.rsplit(".pre_act", 1)[0] for n, _ in thesis.named_modules() if n.endswith("pre_act")}
    stem = {"conv1", "conv2_reduce", "conv2"}
    assert pre == stem | {f"inception3a.{k}" for k in
                          ("conv1x1", "reduce3x3", "conv3x3", "reduce5x5", "conv5x5", "pool_proj")}
    assert all(thesis.get_submodule(n).conv.bias is not None for n in pre)
    assert [m for m in thesis.modules() if isinstance(m, nn.Linear)][-1] is thesis.classifier


def test_googlenet_partial_widths_change_only_their_convs() -> None:
    base = conv_widths(googlenet_rs(num_classes=10, input_size=64))
    model = googlenet_rs(num_classes=10, input_size=64,
                         widths={"conv2": 100, "inception4c": [1, 2, 3, 4, 5, 6]})
    keys = ("conv1x1", "reduce3x3", "reduce5x5", "conv3x3", "conv5x5", "pool_proj")
    expected = {"conv2.conv": 100, **{f"inception4c.{k}.conv": w for k, w in zip(keys, range(1, 7))}}
    assert changed(base, conv_widths(model)) == expected
    assert model.inception4d.conv1x1.conv.in_channels == 1 + 4 + 5 + 6
    assert assert_trace_matches(model, 64).shape == (1, 10)
    assert BASELINE_WIDTHS["inception4c"] == [128, 128, 24, 256, 64, 64]  # not mutated


@pytest.mark.parametrize("size,pool", [(227, nn.AvgPool2d), (64, nn.AdaptiveAvgPool2d)])
def test_googlenet_aux_head_pooling(size: int, pool: type) -> None:
    # 4b map: 14 px at 227 (avgpool 5/3 -> 4x4), 4 px at 64 (adaptive -> 4x4).
    model = googlenet_rs(num_classes=5, widths=THESIS_WIDTHS, input_size=size, aux_head=True)
    assert isinstance(model.aux.pool, pool) and model.aux.fc1.in_features == 128 * 16
    assert [m for m in model.modules() if isinstance(m, nn.Linear)][-1] is model.classifier
    out = model.train()(torch.randn(2, 3, size, size))
    assert isinstance(out, tuple) and [o.shape for o in out] == [(2, 5), (2, 5)]


def test_googlenet_aux_head_train_vs_eval() -> None:
    model = googlenet_rs(num_classes=5, widths=THESIS_WIDTHS, input_size=64, aux_head=True)
    x = torch.randn(2, 3, 64, 64)
    assert isinstance(torch.fx.symbolic_trace(model.train())(x), tuple)
    assert isinstance(model.eval()(x), torch.Tensor)
    assert assert_trace_matches(model, 64).shape == (1, 5)


@pytest.mark.parametrize(
    "kwargs,word",
    [
        ({"widths": {"inception6a": [1] * 6}}, "inception6a"),
        ({"widths": {"inception3a": [1] * 5}}, "inception3a"),
        ({"widths": {"conv1": 0}}, "conv1"),
        ({"widths": {"conv2": 2.5}}, "conv2"),
        ({"stem_stride": 3}, "stem_stride"),
        ({"input_size": 4, "stem_stride": 2}, "input_size"),
    ],
)
def test_googlenet_errors(kwargs: dict, word: str) -> None:
    with pytest.raises(RsnetError, match=word):
        googlenet_rs(**kwargs)


# ----------------------------------------------------------------------------- MobileNet v1


def test_mobilenet_224_counts() -> None:
    model = mobilenet_v1()
    assert n_params(model) == 4_231_976
    assert macs(model, 224, num_classes=1000) == pytest.approx(568.7e6, rel=1e-3)
    assert macs(mobilenet_v1(input_size=64), 64) == pytest.approx(47.37e6, rel=1e-3)


@pytest.mark.slow
def test_mobilenet_224_trace() -> None:
    assert assert_trace_matches(mobilenet_v1(), 224).shape == (1, 1000)


@pytest.mark.parametrize("size,stride", [(64, 2), (32, 1)])
def test_mobilenet_small_inputs(size: int, stride: int) -> None:
    model = mobilenet_v1(num_classes=10, input_size=size)
    assert model.features[0].conv.stride == (stride, stride)
    assert len(model.features) == 14
    assert assert_trace_matches(model, size).shape == (1, 10)


def test_mobilenet_widths() -> None:
    blocks = [list(b) for b in DEFAULT_BLOCKS]
    blocks[6][0] = 100
    base = conv_widths(mobilenet_v1(num_classes=10, input_size=32))
    model = mobilenet_v1(num_classes=10, stem_width=8, blocks=blocks, input_size=32)
    # Depthwise convs follow their input: stem -> features.1.dw, block 6 -> features.7.dw.
    expected = {"features.0.conv": 8, "features.1.dw": 8, "features.7.pw": 100, "features.8.dw": 100}
    assert changed(base, conv_widths(model)) == expected
    assert model.features[8].dw.groups == 100
    assert assert_trace_matches(model, 32).shape == (1, 10)


@pytest.mark.parametrize(
    "kwargs,word",
    [
        ({"blocks": [[64, 3]]}, r"blocks\[0\]\[1\]"),
        ({"blocks": [[64, 1], [128]]}, r"blocks\[1\]"),
        ({"blocks": [[0, 1]]}, r"blocks\[0\]\[0\]"),
        ({"stem_width": 0}, "stem_width"),
    ],
)
def test_mobilenet_errors(kwargs: dict, word: str) -> None:
    with pytest.raises(RsnetError, match=word):
        mobilenet_v1(**kwargs)


# ----------------------------------------------------------------------------- VGG


def test_vgg16_counts_shape_trace() -> None:
    model = vgg16()
    assert n_params(model) == 14_991_946
    assert macs(model, 32, num_classes=10) == pytest.approx(313.46e6, rel=1e-3)
    assert assert_trace_matches(model, 32).shape == (1, 10)
    assert [m for m in model.modules() if isinstance(m, nn.Linear)][-1] is model.classifier.linear2


def test_vgg16_widths() -> None:
    widths = list(DEFAULT_WIDTHS)
    widths[0], widths[12] = 8, 40
    model = vgg16(num_classes=4, widths=widths, fc_width=32)
    assert changed(conv_widths(vgg16()), conv_widths(model)) == {"features.conv1": 8, "features.conv13": 40}
    assert model.classifier.linear1.in_features == 40 and model.classifier.linear2.in_features == 32
    assert assert_trace_matches(model, 32).shape == (1, 4)
    with pytest.raises(RsnetError, match="widths"):
        vgg16(widths=DEFAULT_WIDTHS[:-1])


# ----------------------------------------------------------------------------- torchvision


def test_torchvision_model_builds_and_traces() -> None:
    model = torchvision_model("resnet18", num_classes=7)
    assert assert_trace_matches(model, 64).shape == (1, 7)


def test_torchvision_googlenet_has_no_aux_by_default() -> None:
    model = torchvision_model("googlenet", num_classes=3)
    assert model.aux_logits is False and model.aux1 is None
    assert isinstance(model.train()(torch.randn(2, 3, 32, 32)), torch.Tensor)
    assert torchvision_model("googlenet", num_classes=3, aux_logits=True).aux1 is not None


def test_torchvision_errors() -> None:
    with pytest.raises(RsnetError, match="model.arch.name.*resnet18"):
        torchvision_model("resnet81")
    with pytest.raises(RsnetError, match="model.arch"):
        torchvision_model("resnet18", no_such_argument=1)
