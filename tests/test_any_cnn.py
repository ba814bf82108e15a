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

from rsnet.budget import make_budget
from rsnet.graph import analyze
from rsnet.metrics import count_macs, count_params
from rsnet.models.torchvision_models import torchvision_model
from rsnet.prune import current_widths, prune_to_widths
from rsnet.scaling import ResourceScalable, Scaler, WidthRule
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
    base = dict(zip(("params", "macs"), graph.cost()))
    budget = make_budget("ratio", "params", base["params"], CLASSES, CLASSES, value=0.5)
    plan = ResourceScalable().make(Scaler(graph, WidthRule()), budget, base)
    assert plan.predicted["params"] <= budget.value
    assert any(m.width < m.base_width for m in plan.micro)
    return plan


def carve_exactly(model: nn.Module, size: int) -> nn.Module:
    """Plan, prune; assert exact widths, exact cost and kept group counts. Returns the model."""
    groups = {n: m.groups for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    depthwise = {n for n, m in model.named_modules()
                 if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.out_channels}
    plan = plan_half_params(copy.deepcopy(model), size)
    prune_to_widths(model, plan.widths(), torch.zeros(1, 3, size, size), "l1")
    assert current_widths(model) == plan.widths()
    assert (count_params(model), count_macs(model, size)) == \
        (plan.predicted["params"], plan.predicted["macs"])
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and name not in depthwise:
            assert m.groups == groups[name], name  # grouped convs keep their group count
    return model


def zeroed(original: nn.Module, pruned: nn.Module) -> nn.Module:
    """``original`` with the channels pruning removed set to zero (found by value: the
    trained-looking weights identify their output rows)."""
    masked = copy.deepcopy(original)
    after = dict(pruned.named_modules())
    with torch.no_grad():
        for name, m in masked.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
                rows = lambda w: w.detach().reshape(w.shape[0], -1)[:, 0].tolist()  # noqa: E731
                kept = set(rows(after[name].weight))
                drop = [i for i, v in enumerate(rows(m.weight)) if v not in kept]
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
