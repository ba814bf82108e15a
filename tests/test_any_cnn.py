"""Plan half the parameters with ``rs`` and carve the plan with ``prune_to_widths`` on the
constructs torchvision models use: grouped convs (ResNeXt, RegNet), 1x1-conv classifiers
(SqueezeNet), channel shuffles (ShuffleNetV2). Every carved model must cost exactly what the
plan predicted, keep its conv group counts, and (on the tiny models) compute what the
unpruned model computes with the removed channels zeroed."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from rsnet.errors import RsnetError
from rsnet.graph import analyze
from rsnet.metrics import count_macs, count_params
from rsnet.models.torchvision_models import torchvision_model
from rsnet.compress import Magnitude, current_widths, prune_to_widths
from rsnet.zoo import carve_check, plan_params_ratio, torchvision_case, torchvision_cases
from test_prune import trained_looking

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = 5


class GroupedToy(nn.Module):
    """Stem, a ResNeXt-style block (1x1 -> 3x3 with 4 groups -> 1x1, residual add), a second
    grouped conv on the stream (2 groups) and a linear classifier."""

    def __init__(self, num_classes: int = CLASSES) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(16, 24, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(24, 24, 3, padding=1, groups=4, bias=False),
                               nn.BatchNorm2d(24), nn.ReLU())
        self.c = nn.Sequential(nn.Conv2d(24, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.d = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1, groups=2, bias=False),
                               nn.BatchNorm2d(32), nn.ReLU())
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.c(self.b(self.a(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.d(x), 1), 1))


class ConvHeadToy(nn.Module):
    """SqueezeNet-like: convs, then a 1x1-conv classifier -> ReLU -> global pool -> flatten."""

    def __init__(self, num_classes: int = CLASSES) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(16, 24, 3, stride=2, padding=1), nn.ReLU())
        self.classifier = nn.Sequential(nn.Dropout(), nn.Conv2d(24, num_classes, 1), nn.ReLU(),
                                        nn.AdaptiveAvgPool2d(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


def plan_half_params(model: nn.Module, size: int):
    """The rs plan for half the model's parameters, as stage_plan makes it for pruning."""
    graph = analyze(model, size, prunable=True)
    plan = plan_params_ratio(graph, 0.5, CLASSES)
    assert plan.predicted["params"] <= 0.5 * graph.cost()[0]
    assert any(m.width < m.base_width for m in plan.micro)
    return plan


def carve_exactly(model: nn.Module, size: int) -> nn.Module:
    """Plan, prune; assert exact widths, exact cost and kept group counts. Returns the model."""
    groups = {n: m.groups for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    depthwise = {n for n, m in model.named_modules()
                 if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.out_channels}
    plan = plan_half_params(copy.deepcopy(model), size)
    prune_to_widths(model, plan.widths(), torch.zeros(1, 3, size, size), Magnitude())
    assert current_widths(model) == plan.widths()
    assert (count_params(model), count_macs(model, size)) == \
        (plan.predicted["params"], plan.predicted["macs"])
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and name not in depthwise:
            assert m.groups == groups[name], name  # grouped convs keep their group count
    return model


def zeroed(original: nn.Module, pruned: nn.Module) -> nn.Module:
    """``original`` with the channels pruning removed set to zero (found by value: the
    trained-looking weights identify their output rows, whose kept values are a subset of the
    original row's where input channels were removed too)."""
    masked = copy.deepcopy(original)
    after = dict(pruned.named_modules())
    with torch.no_grad():
        for name, m in masked.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
                rows = lambda w: [set(r) for r in w.detach().reshape(w.shape[0], -1).tolist()]  # noqa: E731
                kept = rows(after[name].weight)  # a kept row: a subset of its original values
                drop = [i for i, v in enumerate(rows(m.weight)) if not any(k <= v for k in kept)]
                m.weight[drop] = 0
                if m.bias is not None:
                    m.bias[drop] = 0
    return masked


@pytest.mark.parametrize("toy", [GroupedToy, ConvHeadToy])
def test_toys_carve_exactly_and_soundly(toy):
    model = trained_looking(toy())
    original = copy.deepcopy(model)
    carve_exactly(model, 16)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out, ref = model.eval()(x), zeroed(original, model).eval()(x)
    assert out.shape == (2, CLASSES)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-4), (out - ref).abs().max()


def test_grouped_convs_prune_whole_positions_in_every_group():
    """The 4-group conv loses the same positions of each of its 4 input groups."""
    model = carve_exactly(trained_looking(GroupedToy()), 16)
    assert model.a[0].out_channels % 4 == 0 and model.a[0].out_channels < 24
    assert model.b[0].weight.shape[1] == model.a[0].out_channels // 4


def test_grouped_conv_reading_a_concat_keeps_its_input_widths():
    """A grouped conv reading a concat of two groups: the plan for pruning fixes its input
    widths (with the reason), and the carve is exact."""

    class CatGrouped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.p = nn.Conv2d(3, 16, 3, padding=1)
            self.q = nn.Conv2d(3, 16, 3, padding=1)
            self.g = nn.Conv2d(32, 32, 3, padding=1, groups=4)
            self.h = nn.Conv2d(32, 48, 1)
            self.fc = nn.Linear(48, CLASSES)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.g(torch.relu(torch.cat([self.p(x), self.q(x)], 1)))
            return self.fc(self.h(torch.relu(y)).mean((2, 3)))

    graph = analyze(CatGrouped(), 16, prunable=True)
    assert "grouped conv reading several" in graph.micro_layer("p").fixed
    carve_exactly(trained_looking(CatGrouped()), 16)


@pytest.mark.parametrize("name", ["squeezenet1_0", "regnet_x_400mf", "shufflenet_v2_x0_5"])
def test_torchvision_models_carve_exactly(name):
    """1x1-conv classifier, grouped convs, channel shuffles: torchvision at 32 px."""
    carve_exactly(torchvision_model(name, num_classes=CLASSES), 32)


class DepthwiseMultiplier(nn.Module):
    """A depthwise conv with channel multiplier 2 (groups = in_channels, out = 2 x in)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1, groups=16), nn.BatchNorm2d(32),
                                nn.ReLU())
        self.pw = nn.Sequential(nn.Conv2d(32, 96, 1), nn.BatchNorm2d(96), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(96, 96, 3, padding=1), nn.BatchNorm2d(96), nn.ReLU())
        self.fc = nn.Linear(96, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.b(self.pw(self.dw(self.a(x)))).mean((2, 3)))


def test_depthwise_conv_with_channel_multiplier_keeps_its_groups_and_carves_exactly():
    """The pruner would keep the 16 groups while removing input channels: the analysis for
    pruning fixes that input width (saying why), a from-scratch build scales it."""
    assert "channel multiplier 2" in analyze(DepthwiseMultiplier(), 16, prunable=True) \
        .micro_layer("a.0").fixed
    assert analyze(DepthwiseMultiplier(), 16).micro_layer("a.0").fixed is None
    model = trained_looking(DepthwiseMultiplier())
    original = copy.deepcopy(model)
    carve_exactly(model, 16)
    assert (model.dw[0].groups, model.dw[0].out_channels) == (16, 32)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), zeroed(original, model).eval()(x), atol=1e-5)


def test_squeezenet_head_becomes_an_n_way_1x1_conv():
    """A 1x1-conv classifier is re-headed like a linear one: the subset's rows, misc first."""
    from rsnet.models import classifier_name, subset_head

    model = torchvision_model("squeezenet1_1", num_classes=10).eval()
    assert classifier_name(model) == "classifier.1"
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model.classifier[1](model.classifier[0](model.features(x)))  # pre-ReLU logits
        subset_head(model, (7, 2), 10, misc=True)
        head = model.classifier[1]
        assert isinstance(head, nn.Conv2d) and head.out_channels == 3
        assert model(x).shape == (2, 3)
        # the same weights, equal up to rounding: a 3-filter convolution need not sum in the
        # order a 10-filter one does (oneDNN picks kernels by shape)
        torch.testing.assert_close(head(model.features(x))[:, 1:], full[:, [7, 2]], rtol=1e-5, atol=1e-6)


def test_a_budget_no_plan_meets_names_the_constructs_that_fix_widths():
    """A linear layer applied to (B, H, W, C) tensors (as ConvNeXt and Swin do) fixes its
    widths; the refusal names that construct and its first layer."""

    class ChannelsLastMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 32, 3, padding=1)
            self.mlp = nn.Linear(32, 64)
            self.proj = nn.Linear(64, 32)
            self.fc = nn.Linear(32, CLASSES)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.proj(torch.relu(self.mlp(self.stem(x).permute(0, 2, 3, 1))))
            return self.fc(y.mean((1, 2)))

    with pytest.raises(RsnetError, match=r"no width plan fits.*constructs the width analysis "
                                         r"cannot scale: .*\(first: (stem|mlp)\)"):
        plan_half_params(ChannelsLastMLP(), 16)


@pytest.mark.slow
@pytest.mark.parametrize("name", torchvision_cases())
def test_every_torchvision_model_carves_or_is_refused(name):
    """What ``python scripts/zoo.py carve`` records in docs/any_cnn.md: each torchvision
    classifier carves to exactly its plan or is refused with rsnet's own message."""
    res = carve_check(name, *torchvision_case(name))
    assert res.status in ("carved", "refused"), res.reason


def test_a_cnn_from_outside_rsnet_is_planned_and_carved_by_the_pipeline(tmp_path):
    """Any importable CNN given as ``model.arch._target_`` goes through plan and prune to
    exactly its plan's cost (here a module of the tests, with grouped convs)."""
    from conftest import compose_cfg

    from rsnet import pipeline

    cfg = compose_cfg("dataset=synthetic", "dataset.source.size=16", "dataset.num_classes=4",
                      "model=torchvision", "~model.arch.name",
                      "model.arch._target_=test_any_cnn.GroupedToy", "model.input_size=16",
                      "scaling=rs", "compression=prune", "stop_after=prune", "progress=false")
    metrics = pipeline.run(cfg, tmp_path / "run")  # the prune stage checks the exact cost
    saved = torch.load(tmp_path / "run" / "checkpoints" / "pruned.pt", weights_only=False)
    assert metrics["plan/params"] < 0.6 * metrics["baseline/params"]
    assert saved["widths"]["fc"] == 4  # the classifier: one output per subset class
    assert saved["widths"]["a.0"] < 24 and saved["widths"]["a.0"] % 4 == 0  # grouped: whole groups
