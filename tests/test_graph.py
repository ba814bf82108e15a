"""Tests of rsnet.graph: decompositions, coupled groups, the exact cost model, errors."""

from __future__ import annotations

import random
from collections import OrderedDict
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from torchvision.models import mobilenetv3, resnet
from torchvision.models.shufflenetv2 import ShuffleNetV2

from rsnet.errors import RsnetError
from rsnet.graph import ModelGraph, analyze
from rsnet.metrics import count_macs, count_params
from rsnet.models.googlenet_rs import BASELINE_WIDTHS, INCEPTION_KEYS, googlenet_rs
from rsnet.models.layers import torch_pruning_pruners
from rsnet.models.mobilenet_v1 import DEFAULT_BLOCKS, mobilenet_v1
from rsnet.models.resnet_cifar import resnet_cifar
from rsnet.models.torchvision_models import torchvision_model
from rsnet.models.vgg import DEFAULT_WIDTHS, vgg16

from conftest import THESIS_WIDTHS

INCEPTIONS = ["3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b"]


pytestmark = pytest.mark.usefixtures("one_thread")


def layer_widths(graph: ModelGraph, model: nn.Module) -> dict[str, int]:
    """Output width of each of the graph's micro-layers in another build of the model."""
    mods = dict(model.named_modules())
    return {m.name: (mods[m.name].out_channels if isinstance(mods[m.name], nn.Conv2d)
                     else mods[m.name].out_features) for m in graph.micro}


def assert_cost_matches(graph: ModelGraph, model: nn.Module, size: int) -> None:
    """graph.cost at the widths read off ``model`` == the model's real counts, exactly."""
    widths = graph.widths_from_layers(layer_widths(graph, model))  # also checks couplings
    assert graph.violations(widths) == []
    assert graph.cost(widths) == (count_params(model), count_macs(model, size))
    vec = np.array(graph.width_vector(widths), dtype=float)
    params, macs = graph.cost_array(vec)
    assert (params, macs) == graph.cost(widths)


# -- decompositions ------------------------------------------------------------------------

def test_googlenet_rs_decomposition():
    g = analyze(googlenet_rs(input_size=64), 64)
    names = [m.name for m in g.macros]
    assert names == ["conv1", "conv2_reduce", "conv2"] + [f"inception{i}" for i in INCEPTIONS]
    for m in g.macros[3:]:
        assert len(m.micro) == 6
        assert all(g.micro_layer(x).free for x in m.micro)  # every branch its own group
        assert len(g.macro_io(m.index)[1]) == 4  # cat of four groups
    assert g.units == [[i] for i in range(12)]
    assert g.classifier == "classifier" and g.micro_layer("classifier").macro is None
    assert g.micro_layer("classifier").group is None
    assert [m.base_out_width for m in g.macros] == [64, 64, 192, 256, 480, 512, 512, 512, 528,
                                                    832, 832, 1024]
    # Output width of a module = sum of its concatenated branch groups.
    m = g.macros[3]
    w = {gid: 10 + gid for gid in m.out_group_ids}
    assert g.out_width(3, w) == sum(w.values())
    assert g.in_width(4, w) == sum(w.values())


def test_mobilenet_v1_decomposition_and_ties():
    g = analyze(mobilenet_v1(input_size=64), 64)
    assert [m.name for m in g.macros] == [f"features.{i}" for i in range(14)]
    for i in range(1, 14):  # dw + pw, the dw in its producer's group
        dw, pw = g.macros[i].micro
        assert g.micro_layer(dw).kind == "depthwise" and not g.micro_layer(dw).free
        assert g.micro_layer(dw).group == g.micro_layer(g.macros[i - 1].micro[-1]).group
        assert g.micro_layer(pw).free
    assert len(g.units) == 14
    # The thesis's five shared 512-channel blocks, by name and by index.
    five = [f"features.{i}" for i in range(7, 12)]
    tied = analyze(mobilenet_v1(input_size=64), 64, tie=[five])
    assert len(tied.units) == 10 and [7, 8, 9, 10, 11] in tied.units
    assert tied.macros[9].unit == tied.macros[7].unit
    assert analyze(mobilenet_v1(input_size=64), 64, tie=[[7, 8, 9, 10, 11]]).units == tied.units
    with pytest.raises(RsnetError, match="tie"):
        analyze(mobilenet_v1(input_size=64), 64, tie=[["features.7", "nope"]])


def test_resnet_cifar_decomposition():
    g = analyze(resnet_cifar(20), 32)
    assert [m.name for m in g.macros] == ["conv1"] + [f"layer{s}.{b}" for s in (1, 2, 3)
                                                      for b in range(3)]
    assert g.macros[1].micro == ["layer1.0.conv1", "layer1.0.conv2"]
    # Each stage's residual stream is one group, so its blocks form one unit.
    assert g.units == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    stream = g.groups[g.group_of("layer2.0.conv2")]
    assert stream.members == ["layer2.0.conv2", "layer2.1.conv2", "layer2.2.conv2"]
    assert g.group_of("conv1") == g.group_of("layer1.2.conv2")
    # The option-A pads: the padded stream must not be narrower than its input.
    assert [c.where for c in g.constraints] == ["layer2.0.shortcut", "layer3.0.shortcut"]
    s1, s2 = g.group_of("conv1"), g.group_of("layer2.0.conv2")
    assert g.violations({s1: 16, s2: 20}) == []
    assert "layer2.0.shortcut" in g.violations({s1: 24, s2: 20})[0]


def test_vgg16_decomposition():
    g = analyze(vgg16(), 32)
    assert [m.name for m in g.macros] == [f"features.conv{i}" for i in range(1, 14)] \
        + ["classifier.linear1"]
    assert g.micro_layer("classifier.linear2").macro is None
    assert len(g.units) == 14


def test_fixed_layers():
    g = analyze(resnet_cifar(20), 32, fixed=["layer3.2.conv2"])
    # The whole stage-3 stream is fixed with it; its inner convs stay free.
    assert all(g.group_of(f"layer3.{b}.conv2") is None for b in range(3))
    assert g.group_of("layer3.1.conv1") is not None
    assert g.units[-3:] == [[7], [8], [9]]
    with pytest.raises(RsnetError, match="fixed"):
        analyze(resnet_cifar(20), 32, fixed=["layer3.2.bn2"])


TORCHVISION = {  # name: (input size, macro-layers, units)
    "resnet18": (64, 9, 4),
    "mobilenet_v2": (64, 25, 15),
    "googlenet": (64, 12, 12),
    "shufflenet_v2_x0_5": (64, 18, 5),
}


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_torchvision_models(name):
    size, n_macros, n_units = TORCHVISION[name]
    model = torchvision_model(name, num_classes=10)
    g = analyze(model, size)
    assert (len(g.macros), len(g.units)) == (n_macros, n_units)
    assert g.micro_layer(g.classifier).macro is None
    assert all(any(g.micro_layer(x).free for x in m.micro) for m in g.macros)
    for m in g.macros[1:]:  # consecutive macro-layers connect
        assert m.base_in_width == g.macros[m.index - 1].base_out_width


def test_torchvision_resnet18_groups():
    g = analyze(torchvision_model("resnet18"), 64)
    assert [m.name for m in g.macros] == ["conv1"] + [f"layer{s}.{b}" for s in range(1, 5)
                                                      for b in range(2)]
    assert g.group_of("layer2.0.downsample.0") == g.group_of("layer2.1.conv2")
    assert g.units == [[0, 1, 2], [3, 4], [5, 6], [7, 8]]


@pytest.mark.slow  # builds 133 M parameters: about 2.5 s
def test_torchvision_vgg11_bn():
    g = analyze(torchvision_model("vgg11_bn", num_classes=10), 32)
    assert len(g.macros) == 10 and g.macros[-1].name == "classifier.3"
    # The first FC reads 7x7 positions of 512 channels: its in-width is per position.
    assert g.macros[8].base_in_width == 512
    assert g.micro_layer("classifier.0").in_form.value(g.base_widths) == 512 * 49


def test_shufflenet_channel_shuffle_is_sound():
    """Channel shuffle + chunk: the stage stream is one group, costs stay exact."""
    base = ShuffleNetV2([2, 2, 2], [24, 48, 96, 192, 256], num_classes=10)
    g = analyze(base, 32)
    stream = g.groups[g.group_of("stage3.0.branch2.5")]
    assert {"stage3.0.branch1.2", "stage3.1.branch2.5"} <= set(stream.members)
    assert g.units[1] == [1, 2]
    for outs in ([16, 40, 88, 200, 128], [8, 20, 30, 34, 64]):
        assert_cost_matches(g, ShuffleNetV2([2, 2, 2], outs, num_classes=10), 32)


def test_grouped_convs_and_squeeze_excitation_costs_are_exact():
    """ResNeXt (grouped convs: widths stay multiples of the group count) and MobileNetV3
    (squeeze-excitation: x * scale couples the SE output conv with the block's width)."""
    base = resnet.ResNet(resnet.Bottleneck, [1, 1, 1, 1], groups=8, width_per_group=4,
                         num_classes=10)
    g = analyze(base, 32)
    assert g.groups[g.group_of("layer1.0.conv2")].multiple_of == 8
    variant = resnet.ResNet(resnet.Bottleneck, [1, 1, 1, 1], groups=8, width_per_group=2,
                            num_classes=10)
    assert_cost_matches(g, variant, 32)

    conf, last = mobilenetv3._mobilenet_v3_conf("mobilenet_v3_small")
    g = analyze(mobilenetv3.MobileNetV3(conf, last, num_classes=10), 64)
    se = "features.4.block.2.fc2"  # the SE output of the first block with SE and expansion
    assert g.group_of(se) == g.group_of("features.4.block.0.0")
    conf, _ = mobilenetv3._mobilenet_v3_conf("mobilenet_v3_small", width_mult=0.5)
    assert_cost_matches(g, mobilenetv3.MobileNetV3(conf, last, num_classes=10), 64)


# -- the cost model ------------------------------------------------------------------------

def _rand(rng: random.Random, base: int) -> int:
    return rng.randint(1, max(2, base * 5 // 4))


@pytest.mark.parametrize("bn_scale", [True, False])
@pytest.mark.parametrize("size", [64, 227])
def test_cost_googlenet_rs(bn_scale, size):
    g = analyze(googlenet_rs(num_classes=7, input_size=size, bn_scale=bn_scale), size)
    rng = random.Random(size + bn_scale)
    widths = {k: [_rand(rng, v) for v in base] if isinstance(base, list) else _rand(rng, base)
              for k, base in BASELINE_WIDTHS.items()}
    model = googlenet_rs(num_classes=7, input_size=size, bn_scale=bn_scale, widths=widths)
    assert_cost_matches(g, model, size)


def test_cost_googlenet_thesis_widths():
    g = analyze(googlenet_rs(num_classes=5, bn_scale=False, input_size=227), 227)
    model = googlenet_rs(num_classes=5, bn_scale=False, input_size=227, widths=THESIS_WIDTHS)
    widths = g.widths_from_layers(layer_widths(g, model))
    params, macs = g.cost(widths)
    assert params == 331_732
    assert abs(macs - 92.7e6) < 0.1e6
    # The same widths straight from the thesis's list, one macro-layer at a time.
    direct = {g.group_of(f"{k}.conv"): v for k, v in THESIS_WIDTHS.items() if isinstance(v, int)}
    for k, v in THESIS_WIDTHS.items():
        if isinstance(v, list):
            direct.update({g.group_of(f"{k}.{key}.conv"): w for key, w in zip(INCEPTION_KEYS, v)})
    assert g.cost(direct) == (params, macs)


def test_cost_mobilenet_v1():
    g = analyze(mobilenet_v1(num_classes=5, input_size=64), 64)
    rng = random.Random(1)
    blocks = [[_rand(rng, w), s] for w, s in DEFAULT_BLOCKS]
    model = mobilenet_v1(num_classes=5, input_size=64, stem_width=_rand(rng, 32), blocks=blocks)
    assert_cost_matches(g, model, 64)


def test_cost_resnet_cifar():
    g = analyze(resnet_cifar(20), 32)
    rng = random.Random(2)
    stages = sorted(_rand(rng, w) for w in (16, 32, 64))
    inner = [_rand(rng, w) for w in (16, 32, 64) for _ in range(3)]
    model = resnet_cifar(20, stage_widths=stages, inner_widths=inner)
    assert_cost_matches(g, model, 32)


def test_cost_vgg16():
    g = analyze(vgg16(), 32)
    rng = random.Random(3)
    model = vgg16(widths=[_rand(rng, w) for w in DEFAULT_WIDTHS], fc_width=_rand(rng, 512))
    assert_cost_matches(g, model, 32)


def test_cost_array_and_macro_split():
    g = analyze(googlenet_rs(input_size=64), 64)
    rng = np.random.default_rng(0)
    W = rng.integers(1, 300, size=(5, len(g.groups)))
    params, macs = g.cost_array(W)
    for k in range(len(W)):
        widths = dict(enumerate(W[k].tolist()))
        assert (params[k], macs[k]) == g.cost(widths)
        # The per-macro shares and the rest add up to the total.
        shares = [g.macro_cost(i, widths) for i in range(len(g.macros))]
        w = g.width_vector(widths)
        assert sum(p for p, _ in shares) + g.rest_params.value(w) == g.cost(widths)[0]
        assert sum(m for _, m in shares) + g.rest_macs.value(w) == g.cost(widths)[1]


# -- cross-check with torch-pruning ---------------------------------------------------------

class ResidualToy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = nn.Sequential(nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                                nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.b2 = nn.Sequential(nn.Conv2d(8, 5, 3, padding=1), nn.ReLU(), nn.Conv2d(5, 8, 1))
        self.head = nn.Conv2d(8, 12, 1)
        self.fc = nn.Linear(12, 4)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = F.relu(x + self.b1(x))
        x = x + self.b2(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(F.relu(self.head(x)), 1), 1))


class InceptionToy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = nn.Conv2d(8, 4, 1)
        self.b2 = nn.Sequential(nn.Conv2d(8, 3, 1), nn.ReLU(), nn.Conv2d(3, 6, 3, padding=1))
        self.b3 = nn.Sequential(nn.Conv2d(8, 2, 1), nn.ReLU(), nn.Conv2d(2, 5, 3, padding=1))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(8, 3, 1))
        self.post = nn.Conv2d(18, 10, 1)
        self.fc = nn.Linear(10, 4)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], dim=1)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.post(F.relu(x)), 1), 1))


class DepthwiseToy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.expand = nn.Conv2d(8, 16, 1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.project = nn.Conv2d(16, 8, 1)
        self.dw2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)
        self.pw2 = nn.Conv2d(8, 12, 1)
        self.fc = nn.Linear(12, 4)

    def forward(self, x):
        x = F.relu6(self.stem(x))
        x = x + self.project(F.relu6(self.dw(F.relu6(self.expand(x)))))
        x = F.relu6(self.pw2(F.relu6(self.dw2(x))))
        return self.fc(x.mean([2, 3]))


def tp_partition(model: nn.Module, size: int) -> set[frozenset[str]]:
    """Conv/linear layers whose out-channels torch-pruning prunes together."""
    names = {id(m): n for n, m in model.named_modules()}
    dg = tp.DependencyGraph().build_dependency(model.eval(), torch.zeros(1, 3, size, size),
                                               customized_pruners=torch_pruning_pruners())
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    parts = set()
    for group in dg.get_all_groups(ignored_layers=[linears[-1]],
                                   root_module_types=[nn.Conv2d, nn.Linear]):
        members = {names[id(item.dep.target.module)] for item in group
                   if isinstance(item.dep.target.module, (nn.Conv2d, nn.Linear))
                   and item.dep.handler.__name__ == "prune_out_channels"}
        parts.add(frozenset(members))
    return parts


def rsnet_partition(graph: ModelGraph) -> set[frozenset[str]]:
    return {frozenset(g.members) for g in graph.groups}


@pytest.mark.parametrize("toy", [ResidualToy, InceptionToy, DepthwiseToy])
def test_groups_match_torch_pruning(toy):
    model = toy()
    g = analyze(model, 16)
    assert rsnet_partition(g) == tp_partition(model, 16)


def test_groups_match_torch_pruning_on_googlenet_rs():
    model = googlenet_rs(num_classes=10, input_size=64, bn_scale=False)
    assert rsnet_partition(analyze(model, 64)) == tp_partition(model, 64)


def test_option_a_resnet_differs_from_torch_pruning():
    """A known, intended disagreement: torch-pruning reads the option-A channel pad as an
    elementwise op, so it couples every stage's stream into one group (a width it cannot
    realise, since the pad amount is baked into PadShortcut). rsnet keeps one group per
    stage and records the pad as a constraint (padded stream >= its input)."""
    model = resnet_cifar(8, stage_widths=(4, 8, 16))
    ours = rsnet_partition(analyze(model, 16))
    theirs = tp_partition(model, 16)
    assert frozenset({"conv1", "layer1.0.conv2", "layer2.0.conv2", "layer3.0.conv2"}) in theirs
    assert {frozenset({"conv1", "layer1.0.conv2"}), frozenset({"layer2.0.conv2"}),
            frozenset({"layer3.0.conv2"})} <= ours
    inner = {frozenset({f"layer{s}.0.conv1"}) for s in (1, 2, 3)}  # these agree
    assert inner <= ours and inner <= theirs


# -- constructs that must not produce wrong widths -----------------------------------------

class GatedToy(nn.Module):
    """GLU-style chunk of one conv's output, and a hard-coded channel slice."""

    def __init__(self, width: int = 8, sliced: bool = False) -> None:
        super().__init__()
        self.sliced = sliced
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.mix = nn.Conv2d(width // 2, 6, 1)
        self.fc = nn.Linear(6 if not sliced else 4, 3)

    def forward(self, x):
        a, b = self.conv(x).chunk(2, dim=1)
        y = self.mix(a * torch.sigmoid(b))
        if self.sliced:
            y = y[:, :4]
        return self.fc(y.mean([2, 3]))


def test_chunk_makes_width_even_and_cost_exact():
    g = analyze(GatedToy(8), 8)
    group = g.groups[g.group_of("conv")]
    assert group.multiple_of == 2
    assert g.micro_layer("mix").in_form.coefs == {group.id: Fraction(1, 2)}
    assert "multiple of 2" in g.violations({group.id: 7})[0]
    assert_cost_matches(g, GatedToy(12), 8)


def test_hard_coded_slice_fixes_width():
    g = analyze(GatedToy(8, sliced=True), 8)
    assert g.group_of("mix") is None and g.group_of("conv") is not None


class Gate(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace this
            return x
        return -x


class GatedConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        return self.conv(x) if x.mean() > 0 else x


class Untraceable(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(OrderedDict(gate=body))
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16, 2)

    def forward(self, x):
        x = self.conv(self.body(F.relu(self.stem(x))))
        return self.fc(x.mean([2, 3]))


def test_untraceable_model_names_module_and_option():
    with pytest.raises(RsnetError, match=r"body\.gate.*leaf_modules=\['body\.gate'\]"):
        analyze(Untraceable(Gate()), 8)
    # As a parameter-free leaf it is a channel passthrough: the stem keeps a free width.
    g = analyze(Untraceable(Gate()), 8, leaf_modules=["body.gate"])
    assert g.group_of("stem") is not None and len(g.macros) == 2
    # A leaf with parameters is a fixed-width layer: its input width is fixed, its
    # parameters and MACs are constants (and still counted).
    model = Untraceable(GatedConv())
    g = analyze(model, 8, leaf_modules=[GatedConv])
    assert g.group_of("stem") is None
    assert g.cost() == (count_params(model), count_macs(model, 8))
    with pytest.raises(RsnetError, match="leaf_modules"):
        analyze(model, 8, leaf_modules=["nope"])


def test_bad_input_size():
    with pytest.raises(RsnetError, match="input_size"):
        analyze(vgg16(), 0)
    with pytest.raises(RsnetError, match="input_size"):
        analyze(googlenet_rs(input_size=64), 3)


def test_mode_is_restored():
    model = resnet_cifar(8).train()
    analyze(model, 16)
    assert model.training and all(m.training for m in model.modules())
