"""Tests of rsnet.compress: exact widths for every criterion, the criteria themselves, option-A
shortcuts, depthwise and concat groups, aux heads, schedules, re-init, save / load."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf
import torch
import torch.nn.functional as F
from torch import nn

from rsnet.errors import RsnetError
from rsnet.graph import analyze
from rsnet.metrics import count_macs, count_params
from rsnet.models import load_weights
from rsnet.models.googlenet_rs import googlenet_rs
from rsnet.models.layers import conv_bn_act, init_weights
from rsnet.models.mobilenet_v1 import mobilenet_v1
from rsnet.models.resnet_cifar import resnet_cifar
from rsnet.compress import (IndexShortcut, convert_pad_shortcuts,
                         current_widths, index_shortcut_pruner, prune_to_widths, reinitialize,
                         save_pruned, width_schedule)
from rsnet.compress.criteria import aggregate
from rsnet.compress.dependency import build_graph

REPO = Path(__file__).resolve().parents[1]
# every criterion of the config group conf/compression/criterion/, built as a run builds it
CRITERIA = {p.stem: instantiate(OmegaConf.load(p))
            for p in sorted((REPO / "conf" / "compression" / "criterion").glob("*.yaml"))}
DATA_DRIVEN = {name for name, c in CRITERIA.items() if c.data_driven}


pytestmark = pytest.mark.usefixtures("one_thread")


# -- toy models (BN + ReLU after every conv) -----------------------------------------------

class ResidualToy(nn.Module):
    """Stem, one residual block (stream = stem + block conv2), a strided conv, classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn_act(3, 8, 3, padding=1)
        self.conv_a = conv_bn_act(8, 6, 3, padding=1)
        self.conv_b = nn.Conv2d(6, 8, 3, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(8)
        self.down = conv_bn_act(8, 12, 3, stride=2, padding=1)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(self.bn_b(self.conv_b(self.conv_a(x))) + x)
        return self.fc(F.adaptive_avg_pool2d(self.down(x), 1).flatten(1))


class InceptionToy(nn.Module):
    """Three concatenated branches (1x1; reduce -> 3x3; pool -> proj) and a 1x1 after."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn_act(3, 8, 3, padding=1)
        self.b1 = conv_bn_act(8, 4, 1)
        self.b2_reduce = conv_bn_act(8, 5, 1)
        self.b2 = conv_bn_act(5, 6, 3, padding=1)
        self.b3 = conv_bn_act(8, 3, 1)
        self.mix = conv_bn_act(13, 10, 1)
        self.fc = nn.Linear(10, 5)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([self.b1(x), self.b2(self.b2_reduce(x)),
                       self.b3(F.max_pool2d(x, 3, 1, 1))], 1)
        return self.fc(F.adaptive_avg_pool2d(self.mix(x), 1).flatten(1))


class DepthwiseToy(nn.Module):
    """stem -> dw -> pw -> dw -> pw (MobileNet blocks, ReLU6), classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn_act(3, 8, 3, padding=1, act=nn.ReLU6)
        self.dw1 = conv_bn_act(8, 8, 3, padding=1, groups=8, act=nn.ReLU6)
        self.pw1 = conv_bn_act(8, 12, 1, act=nn.ReLU6)
        self.dw2 = conv_bn_act(12, 12, 3, stride=2, padding=1, groups=12, act=nn.ReLU6)
        self.pw2 = conv_bn_act(12, 16, 1, act=nn.ReLU6)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.pw2(self.dw2(self.pw1(self.dw1(self.stem(x)))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


TOYS = {"residual": ResidualToy, "inception": InceptionToy, "depthwise": DepthwiseToy}


def trained_looking(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random, uneven weights and BN parameters / statistics, as after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.3)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                if m.weight is not None:
                    m.weight.copy_(torch.rand(n, generator=g) * 1.5 + 0.1)
                m.bias.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model.eval()


def make_calib(n_batches: int = 2, batch: int = 4, size: int = 16, classes: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, size, size, generator=g),
             torch.randint(0, classes, (batch,), generator=g)) for _ in range(n_batches)]


def half(graph) -> dict[int, int]:
    """Plan-like group widths: half the baseline, rounded, at least 1."""
    return {g.id: max(1, round(g.base_width / 2)) for g in graph.groups}


def assert_pruned(model: nn.Module, graph, group_widths: dict[int, int], size: int,
                  out_shape: tuple[int, ...]) -> None:
    """Exact widths of every micro-layer, unchanged output shape, exact cost."""
    want = graph.layer_widths(group_widths)
    got = current_widths(model)
    assert {n: got[n] for n in want} == want
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert tuple(model.eval()(x).shape) == out_shape
    cost = graph.cost(group_widths)
    assert cost == (count_params(model), count_macs(model, size))
    assert analyze(model, size).cost() == cost


# -- exact widths, every criterion, toys -----------------------------------------------------

@pytest.mark.parametrize("criterion", list(CRITERIA))
@pytest.mark.parametrize("toy", list(TOYS))
def test_exact_widths_every_criterion_on_toys(toy, criterion):
    model = trained_looking(TOYS[toy]())
    graph = analyze(model, 16)
    widths = half(graph)
    calib = make_calib() if criterion in DATA_DRIVEN else None
    prune_to_widths(model, graph.layer_widths(widths), torch.zeros(1, 3, 16, 16),
                    CRITERIA[criterion], calib=calib)
    assert_pruned(model, graph, widths, 16, (2, 5))


@pytest.mark.parametrize("toy", list(TOYS))
def test_random_valid_widths_on_toys(toy):
    rng = random.Random(toy)
    for _ in range(3):
        model = trained_looking(TOYS[toy]())
        graph = analyze(model, 16)
        widths = {g.id: rng.randint(1, g.base_width) for g in graph.groups}
        prune_to_widths(model, graph.layer_widths(widths), torch.zeros(1, 3, 16, 16), CRITERIA["l2"])
        assert_pruned(model, graph, widths, 16, (2, 5))


# -- the criteria compute what they claim ------------------------------------------------------

class SingleToy(nn.Module):
    """conv 3 -> 6 -> BN -> ReLU -> pool -> fc: one group whose kept filters are easy to read."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 4)

    def features(self, x):
        return F.relu(self.bn(self.conv(x)))

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def single_toy() -> SingleToy:
    model = trained_looking(SingleToy(), seed=3)
    with torch.no_grad():
        # Filter norms chosen so that L1 and L2 disagree: filter 0 has many small weights
        # (L1 5.4, L2 1.0), filter 1 one large weight (L1 = L2 = 3), filter 4 three
        # (L1 3.6, L2 2.1); the others are dense random (L1 / L2 about 2.2 / 0.5 .. 6.5 / 1.6).
        g = torch.Generator().manual_seed(4)
        w = model.conv.weight
        w[0] = 0.2
        w[1] = 0.0
        w[1, 0, 1, 1] = 3.0
        w[4] = 0.0
        w[4, :, 1, 1] = 1.2
        for i, std in ((2, 0.15), (3, 0.3), (5, 0.1)):
            w[i] = torch.randn(w[i].shape, generator=g) * std
        # Uneven shifts: some channels mostly dead (high APoZ, low rank), some always on.
        model.bn.bias.copy_(torch.tensor([-0.8, 0.3, 1.2, -1.5, 0.6, 0.0]))
        model.bn.weight.copy_(torch.tensor([0.2, 1.4, 0.5, 1.1, 0.3, 0.9]))
    return model


def reference_scores(model: SingleToy, criterion: str, calib) -> torch.Tensor:
    """Each criterion's per-filter score computed directly from its definition."""
    w = model.conv.weight.detach()
    x = torch.cat([b[0] for b in calib])
    y = torch.cat([b[1] for b in calib])
    if criterion == "l1":
        return w.abs().sum((1, 2, 3))
    if criterion == "l2":
        return w.pow(2).sum((1, 2, 3)).sqrt()
    if criterion == "bn_scale":
        return model.bn.weight.detach().abs()
    if criterion == "taylor":
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        score = (w * model.conv.weight.grad).abs().sum((1, 2, 3))
        model.zero_grad(set_to_none=True)
        return score
    if criterion == "fisher":
        total = torch.zeros(6, dtype=torch.float64)
        for n in range(len(x)):  # per example, literally
            a = model.features(x[n:n + 1])
            loss = F.cross_entropy(model.fc(a.mean((2, 3))), y[n:n + 1])
            (g,) = torch.autograd.grad(loss, a)
            total += (a * g).sum((2, 3))[0].double().pow(2)
        return total / (2 * len(x))
    with torch.no_grad():
        a = model.features(x)
    if criterion == "mean_activation":
        return a.mean((0, 2, 3))
    if criterion == "apoz":
        return 1 - (a == 0).float().mean((0, 2, 3))
    if criterion == "hrank":
        return torch.linalg.matrix_rank(a).float().mean(0)
    raise AssertionError(criterion)


def kept_filters(original: torch.Tensor, pruned: torch.Tensor) -> list[int]:
    """Original indices of the pruned conv's filters (in-channels untouched here)."""
    return [next(i for i in range(len(original)) if torch.equal(original[i], row))
            for row in pruned]


@pytest.mark.parametrize("criterion", sorted(set(CRITERIA) - {"random"}))
def test_criteria_keep_the_highest_reference_scores(criterion):
    calib = make_calib(2, 6, 8, 4, seed=1)
    model = single_toy()
    expected_scores = reference_scores(single_toy(), criterion, calib)
    before = model.conv.weight.detach().clone()
    prune_to_widths(model.eval(), {"conv": 3}, torch.zeros(1, 3, 8, 8), CRITERIA[criterion],
                    calib=calib)
    # The 3 lowest go (stable order: the lower index goes first on a tie).
    expected = sorted(torch.argsort(expected_scores.double(), stable=True)[3:].tolist())
    assert kept_filters(before, model.conv.weight.detach()) == expected


def test_criteria_differ_on_a_trained_looking_model():
    calib = make_calib(2, 6, 8, 4, seed=1)
    kept = {}
    for criterion in CRITERIA:
        model = single_toy()
        before = model.conv.weight.detach().clone()
        prune_to_widths(model, {"conv": 3}, torch.zeros(1, 3, 8, 8), CRITERIA[criterion],
                        calib=calib)
        kept[criterion] = tuple(kept_filters(before, model.conv.weight.detach()))
    assert 0 in kept["l1"] and 1 not in kept["l1"]  # many small weights beat one large
    assert 1 in kept["l2"] and 0 not in kept["l2"]
    assert kept["bn_scale"] == (1, 3, 5)
    assert len(set(kept.values())) >= 5, kept


def test_group_score_is_the_sum_of_mean_normalised_member_scores():
    """Residual stream = stem conv + block conv_b: l1 sums their normalised filter norms."""
    model = trained_looking(ResidualToy(), seed=5)
    stem = model.stem.conv.weight.detach().abs().sum((1, 2, 3))
    conv_b = model.conv_b.weight.detach().abs().sum((1, 2, 3))
    score = stem / stem.mean() + conv_b / conv_b.mean()
    expected = sorted(torch.argsort(score, stable=True)[3:].tolist())
    tags = model.bn_b.running_mean.detach().clone()  # channel identity, read back below
    graph = analyze(model, 16)
    widths = graph.layer_widths({graph.group_of("stem.conv"): 5})
    prune_to_widths(model, widths, torch.zeros(1, 3, 16, 16), CRITERIA["l1"])
    kept = [int((tags == v).nonzero()) for v in model.bn_b.running_mean]
    assert kept == expected
    agg = aggregate([(stem, list(range(8))), (conv_b, list(range(8)))], 8)
    assert torch.allclose(agg, score.double())


def test_random_is_seeded():
    def kept(seed: int) -> list[torch.Tensor]:
        model = trained_looking(InceptionToy())
        graph = analyze(model, 16)
        prune_to_widths(model, graph.layer_widths(half(graph)), torch.zeros(1, 3, 16, 16),
                        CRITERIA["random"], seed=seed)
        return [p.detach().clone() for p in model.parameters()]
    a, b, c = kept(0), kept(0), kept(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


@pytest.mark.parametrize("criterion", sorted(DATA_DRIVEN))
def test_data_driven_criteria_need_calibration_images(criterion):
    model = ResidualToy()
    with pytest.raises(RsnetError, match="compression.calib_images"):
        prune_to_widths(model, {"conv_a.conv": 3}, torch.zeros(1, 3, 16, 16), CRITERIA[criterion])


def test_every_criterion_file_names_its_criterion():
    """conf/compression/criterion/<name>.yaml builds the criterion reported as <name>."""
    assert len(CRITERIA) == 9
    assert all(c.name == name for name, c in CRITERIA.items())
    assert DATA_DRIVEN == {"taylor", "hrank", "apoz", "mean_activation", "fisher"}


def test_bad_settings_are_rsnet_errors():
    x = torch.zeros(1, 3, 16, 16)
    with pytest.raises(RsnetError, match="coupled layers must have equal widths"):
        prune_to_widths(ResidualToy(), {"stem.conv": 4, "conv_b": 6}, x)
    with pytest.raises(RsnetError, match="only"):
        prune_to_widths(ResidualToy(), {"conv_a.conv": 7}, x)
    with pytest.raises(RsnetError, match="classifier"):
        prune_to_widths(ResidualToy(), {"fc": 3}, x)
    with pytest.raises(RsnetError, match="not a conv / linear"):
        prune_to_widths(ResidualToy(), {"nope": 3}, x)
    with pytest.raises(RsnetError, match="widths"):
        prune_to_widths(ResidualToy(), {"conv_a.conv": 0}, x)


def test_bn_scale_needs_a_bn_scale():
    model = nn.Sequential(conv_bn_act(3, 6, 3, norm="shift"), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(6, 2))
    with pytest.raises(RsnetError, match="no scale"):
        prune_to_widths(model, {"0.conv": 3}, torch.zeros(1, 3, 8, 8), CRITERIA["bn_scale"])
    prune_to_widths(model, {"0.conv": 3}, torch.zeros(1, 3, 8, 8), CRITERIA["l1"])  # other criteria work
    assert model[0].bn.bias.shape == (3,)


# -- option-A ResNets --------------------------------------------------------------------------

def test_index_shortcut_pruner_matches_masking():
    """Pruning the shortcut's inputs / outputs = zeroing those inputs, dropping those outputs."""
    sc = IndexShortcut(6, 10, 2)  # channels 0..5 -> 2..7
    x = torch.randn(2, 6, 5, 5)
    full = sc(x)
    assert torch.equal(full[:, 2:8], x[:, :, ::2, ::2]) and full[:, [0, 1, 8, 9]].abs().sum() == 0
    pruner = index_shortcut_pruner()
    drop_in, drop_out = [1, 4], [0, 3, 9]
    pruner.prune_in_channels(sc, drop_in)
    pruner.prune_out_channels(sc, drop_out)
    assert (sc.in_channels, sc.out_channels, sc.pad) == (4, 7, None)
    masked = x.clone()
    masked[:, drop_in] = 0
    keep_in = [i for i in range(6) if i not in drop_in]
    keep_out = [o for o in range(10) if o not in drop_out]
    assert torch.equal(sc(x[:, keep_in]), IndexShortcut(6, 10, 2)(masked)[:, keep_out])


def test_option_a_groups_match_rsnet_graph():
    """With IndexShortcuts, torch-pruning's groups are rsnet.graph's: one per stage stream."""
    model = resnet_cifar(20)
    ours = {frozenset(g.members) for g in analyze(model, 32).groups}
    convert_pad_shortcuts(model)
    dg = build_graph(model, torch.zeros(1, 3, 32, 32))
    names = {m: n for n, m in model.named_modules()}
    theirs = set()
    for group in dg.get_all_groups(ignored_layers=[model.linear]):
        theirs.add(frozenset(names[it.dep.target.module] for it in group
                             if isinstance(it.dep.target.module, nn.Conv2d)
                             and dg.is_out_channel_pruning_fn(it.dep.handler)))
    assert theirs == ours
    assert frozenset({"layer2.0.conv2", "layer2.1.conv2", "layer2.2.conv2"}) in theirs


def test_resnet20_exact_widths_and_cost_incl_stage_widths():
    rng = random.Random(20)
    base = resnet_cifar(20)
    graph = analyze(base, 32)
    plans = [half(graph)] + [{g.id: rng.randint(1, g.base_width) for g in graph.groups}
                             for _ in range(2)]
    for widths in plans:
        model = trained_looking(resnet_cifar(20))
        prune_to_widths(model, graph.layer_widths(widths), torch.zeros(1, 3, 32, 32), CRITERIA["l1"])
        assert_pruned(model, graph, widths, 32, (2, 10))
        for stage in (2, 3):  # stage widths really changed, through the index shortcut
            sc = model.get_submodule(f"layer{stage}.0.shortcut")
            assert isinstance(sc, IndexShortcut)
            assert sc.out_channels == widths[graph.group_of(f"layer{stage}.0.conv2")]


def test_resnet20_zero_pruning_is_identity_with_real_weights(models_dir):
    model = resnet_cifar(20)
    load_weights(model, models_dir / "resnet20-12fca82f.th")
    model.eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(x)
    prune_to_widths(model, current_widths(model), torch.zeros(1, 3, 32, 32), CRITERIA["l1"])
    shortcuts = [m for m in model.modules() if isinstance(m, IndexShortcut)]
    assert len(shortcuts) == 2
    with torch.no_grad():
        assert (model(x) - before).abs().max() <= 1e-6
        for sc in shortcuts:  # the general gather path computes the same function
            sc.pad = None
        assert (model(x) - before).abs().max() <= 1e-6


# -- depthwise and concat models of the zoo ------------------------------------------------------

def test_mobilenet_v1_half_widths():
    base = mobilenet_v1(10, input_size=32)
    graph = analyze(base, 32)
    widths = half(graph)
    model = trained_looking(mobilenet_v1(10, input_size=32))
    prune_to_widths(model, graph.layer_widths(widths), torch.zeros(1, 3, 32, 32), CRITERIA["l1"])
    assert_pruned(model, graph, widths, 32, (2, 10))
    dw = model.features[3].dw
    assert dw.groups == dw.in_channels == dw.out_channels == widths[graph.group_of("features.2.pw")]


@pytest.mark.parametrize("bn_scale", [True, False])
def test_googlenet_rs_half_widths(bn_scale):
    base = googlenet_rs(10, input_size=32, bn_scale=bn_scale)
    graph = analyze(base, 32)
    widths = half(graph)
    model = trained_looking(googlenet_rs(10, input_size=32, bn_scale=bn_scale))
    calib = make_calib(1, 2, 32, 10)
    prune_to_widths(model, graph.layer_widths(widths), torch.zeros(1, 3, 32, 32),
                    CRITERIA["mean_activation"],
                    calib=calib)
    assert_pruned(model, graph, widths, 32, (2, 10))


def test_googlenet_aux_head_follows_inception4b():
    model = trained_looking(googlenet_rs(10, input_size=32, aux_head=True))
    graph = analyze(model, 32)  # traced in eval mode: the aux head is no micro-layer
    assert not any(m.name.startswith("aux") for m in graph.micro)
    widths = half(graph)
    # Tag each 4b branch output channel (BN running mean) to read back which survive.
    branches = ["conv1x1", "conv3x3", "conv5x5", "pool_proj"]
    tags = {}
    with torch.no_grad():
        for i, b in enumerate(branches):
            bn = model.get_submodule(f"inception4b.{b}.bn")
            bn.running_mean.copy_(torch.arange(bn.num_features) + 1000.0 * i)
            tags[b] = bn.running_mean.clone()
    aux_before = model.aux.conv.weight.detach().clone()
    prune_to_widths(model, graph.layer_widths(widths), torch.zeros(1, 3, 32, 32), CRITERIA["l1"])

    positions, offset = [], 0
    for b in branches:
        now = model.get_submodule(f"inception4b.{b}.bn").running_mean
        positions += [offset + int((tags[b] == v).nonzero()) for v in now]
        offset += len(tags[b])
    assert torch.equal(model.aux.conv.weight, aux_before[:, positions])
    assert model.aux.conv.in_channels == sum(widths[graph.group_of(f"inception4b.{b}.conv")]
                                             for b in branches)
    model.train()
    logits, aux = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == aux.shape == (2, 10)
    # rsnet.graph counts the untraced aux head as constant parameters (at its 512 inputs);
    # the pruned model's aux conv lost the pruned 4b channels' weights.
    lost = (512 - model.aux.conv.in_channels) * 128
    assert graph.cost(widths) == (count_params(model) + lost, count_macs(model.eval(), 32))


# -- iterative schedule, re-init, save / load ---------------------------------------------------

def test_width_schedule():
    base = {"a": 64, "b": 64, "c": 10, "d": 7}
    target = {"a": 16, "b": 16, "c": 9, "d": 7}
    steps = width_schedule(base, target, 3)
    assert steps == [{"a": 48, "b": 48, "c": 10, "d": 7}, {"a": 32, "b": 32, "c": 9, "d": 7},
                     {"a": 16, "b": 16, "c": 9, "d": 7}]
    assert width_schedule(base, target, 1) == [{**base, **target}]
    for k in (1, 2, 5, 50):
        seq = width_schedule(base, target, k)
        assert seq[-1] == target and len(seq) == k
        prev = base
        for w in seq:
            assert all(target[n] <= w[n] <= prev[n] for n in base)
            assert w["a"] == w["b"]
            prev = w
    with pytest.raises(RsnetError, match="compression.steps"):
        width_schedule(base, target, 0)
    with pytest.raises(RsnetError, match="exceeds"):
        width_schedule(base, {"a": 65}, 2)


def test_iterative_pruning_reaches_the_target():
    base_model = resnet_cifar(8, 10, (4, 8, 16))
    graph = analyze(base_model, 16)
    widths = {g.id: max(1, g.base_width // 3) for g in graph.groups}
    target = graph.layer_widths(widths)
    model = trained_looking(resnet_cifar(8, 10, (4, 8, 16)))
    calib = make_calib(1, 4, 16, 10)
    for step in width_schedule(current_widths(model), target, 3):
        prune_to_widths(model, step, torch.zeros(1, 3, 16, 16), CRITERIA["taylor"], calib=calib)
        assert {n: current_widths(model)[n] for n in step} == step
    assert_pruned(model, graph, widths, 16, (2, 10))


def test_reinitialize_is_seeded_and_complete():
    model = trained_looking(resnet_cifar(8, 10, (4, 8, 16)))
    graph = analyze(model, 16)
    prune_to_widths(model, graph.layer_widths({g.id: 3 for g in graph.groups}),
                    torch.zeros(1, 3, 16, 16), CRITERIA["l1"])
    maps = [m.source.clone() for m in model.modules() if isinstance(m, IndexShortcut)]
    before = [p.detach().clone() for p in model.parameters()]
    state = torch.random.get_rng_state()
    reinitialize(model, 7)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    first = [p.detach().clone() for p in model.parameters()]
    assert all(not torch.equal(a, b) for a, b in zip(before, first)
               if a.numel() > 1 and a.abs().sum())
    reinitialize(model, 7)
    assert all(torch.equal(a, p) for a, p in zip(first, model.parameters()))
    assert torch.equal(model.bn1.running_mean, torch.zeros_like(model.bn1.running_mean))
    assert all(torch.equal(a, m.source) for a, m in
               zip(maps, [m for m in model.modules() if isinstance(m, IndexShortcut)]))
    reinitialize(model, 8, init_fn=init_weights)
    assert not torch.equal(first[0], model.conv1.weight)


def test_save_load_in_a_fresh_process(tmp_path):
    rng = random.Random(3)
    graph = analyze(resnet_cifar(8, 10, (4, 8, 16)), 16)
    widths = graph.layer_widths({g.id: rng.randint(1, g.base_width) for g in graph.groups})
    model = trained_looking(resnet_cifar(8, 10, (4, 8, 16)))
    prune_to_widths(model, widths, torch.zeros(1, 3, 16, 16), CRITERIA["fisher"],
                    calib=make_calib(1, 4, 16, 10))
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        y = model.eval()(x)
    save_pruned(tmp_path / "pruned.pt", model, widths, {"criterion": "fisher", "step": 1})
    torch.save({"x": x, "y": y}, tmp_path / "io.pt")
    script = f"""
import torch
from rsnet.models.resnet_cifar import resnet_cifar
from rsnet.compress import load_pruned
model = load_pruned({str(tmp_path / 'pruned.pt')!r}, lambda: resnet_cifar(8, 10, (4, 8, 16)))
io = torch.load({str(tmp_path / 'io.pt')!r})
with torch.no_grad():
    print("MAXDIFF", (model.eval()(io["x"]) - io["y"]).abs().max().item())
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    diff = float(run.stdout.split("MAXDIFF")[1])
    assert diff <= 1e-6
    saved = torch.load(tmp_path / "pruned.pt", weights_only=True)
    assert set(saved) == {"state_dict", "widths", "meta"}
    assert saved["meta"] == {"criterion": "fisher", "step": 1, "input_shape": [1, 3, 16, 16]}


def test_save_rejects_widths_of_another_model(tmp_path):
    model = ResidualToy()
    with pytest.raises(RsnetError, match="do not describe"):
        save_pruned(tmp_path / "p.pt", model, {"conv_a.conv": 3}, {})


# -- timing (run with -m slow) ------------------------------------------------------------------

@pytest.mark.slow
def test_resnet56_half_widths_every_criterion_timing(capsys):
    graph = analyze(resnet_cifar(56), 32)
    widths = half(graph)
    g = torch.Generator().manual_seed(0)
    calib = [(torch.randn(64, 3, 32, 32, generator=g), torch.randint(0, 10, (64,), generator=g))
             for _ in range(4)]  # 256 images
    times = {}
    for criterion in CRITERIA:
        model = trained_looking(resnet_cifar(56))
        start = time.perf_counter()
        prune_to_widths(model, graph.layer_widths(widths), torch.zeros(1, 3, 32, 32),
                        CRITERIA[criterion], calib=calib if criterion in DATA_DRIVEN else None)
        times[criterion] = time.perf_counter() - start
        assert_pruned(model, graph, widths, 32, (2, 10))
    with capsys.disabled():
        print("\nresnet56 -> half widths, 256 calibration images, seconds:",
              {k: round(v, 2) for k, v in times.items()})
