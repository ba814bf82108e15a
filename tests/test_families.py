"""The CIFAR model families (GUNN, WRN, DenseNet, MobileNetV2, ShuffleNetV2) through the
pipeline's pieces on tiny instances: fx trace, plan, pruning to the plan's exact widths (and
pruning *soundly*: the pruned model equals the unpruned one with the removed channels zeroed),
ONNX parity, building at a plan's widths; the places a plan cannot prune say why; Gunn2D
against a plain implementation of its definition; full-size parameter counts."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch
import torchvision
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from conftest import compose_cfg
from rsnet.plan.budget import make_budget
from rsnet.deploy import export_onnx, onnx_logits, open_session
from rsnet.errors import RsnetError
from rsnet.graph import analyze
from rsnet.metrics import count_macs, count_params
from rsnet.models import build_model
from rsnet.models.densenet import densenet_cifar
from rsnet.models.gunn import Gunn2D, gunn_cifar
from rsnet.models.mobilenet_v2 import mobilenet_v2
from rsnet.models.shufflenet_v2 import channel_shuffle, shufflenet_v2
from rsnet.models.widths import build_at_widths, out_widths
from rsnet.models.wrn import wide_resnet
from rsnet.compress import Magnitude, current_widths, prune_to_widths
from rsnet.plan.policies import ResourceScalable, Scaler, WidthRule
from test_prune import trained_looking

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE, CLASSES = 16, 5
# name: (builder target, tiny arguments); shallow, few channels, 16 px
TINY = {
    "gunn": ("rsnet.models.gunn.gunn_cifar",
             dict(stem_width=8, widths=[12, 16], segments=[3, 2], head_width=10)),
    "wrn": ("rsnet.models.wrn.wide_resnet", dict(depth=10, widen_factor=1, stem_width=4,
                                                 stage_widths=[8, 12, 16])),
    "densenet": ("rsnet.models.densenet.densenet_cifar", dict(depth=10, growth_rate=4)),
    "densenet_bc": ("rsnet.models.densenet.densenet_cifar",
                    dict(depth=16, growth_rate=4, bottleneck=True, compression=0.5)),
    "mobilenet_v2": ("rsnet.models.mobilenet_v2.mobilenet_v2",
                     dict(stem_width=8, setting=[[1, 8, 1, 1], [2, 8, 2, 2], [2, 16, 2, 2]],
                          last_width=24)),
    "shufflenet_v2": ("rsnet.models.shufflenet_v2.shufflenet_v2",
                      dict(stem_width=8, repeats=[2, 2], stage_widths=[16, 24], last_width=32)),
}


def tiny_cfg(name: str):
    target, args = TINY[name]
    return OmegaConf.create({"name": name, "arch": {"_target_": target, **args},
                             "checkpoint": None, "input_size": SIZE})


def tiny(name: str) -> nn.Module:
    return build_model(tiny_cfg(name), CLASSES)


def plan_for(model: nn.Module, prunable: bool = True, ratio: float = 0.5):
    """The rs plan for ``ratio`` of the model's MACs (as stage_plan makes it)."""
    graph = analyze(model, SIZE, prunable=prunable)
    base = dict(zip(("params", "macs"), graph.cost()))
    budget = make_budget("ratio", "macs", base["macs"], CLASSES, 10, value=ratio)
    return graph, ResourceScalable().make(Scaler(graph, WidthRule()), budget, base), budget


def kept_rows(before: torch.Tensor, after: torch.Tensor) -> list[int]:
    """Which rows (output channels) of ``before`` survive in ``after``, found by value:
    trained_looking weights are random, so every value identifies its row."""
    rows = lambda w: w.detach().reshape(w.shape[0], -1).tolist()  # noqa: E731
    row_of = {v: r for r, row in enumerate(rows(before)) for v in row}
    return [row_of[row[0]] for row in rows(after)]


def zero_pruned(original: nn.Module, pruned: nn.Module) -> nn.Module:
    """``original`` with every channel that pruning removed set to exactly zero (conv / linear
    rows and BN scale and shift): a correct pruning leaves the function unchanged."""
    masked = copy.deepcopy(original)
    after = dict(pruned.named_modules())
    with torch.no_grad():
        for name, m in masked.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
                keep = set(kept_rows(m.weight, after[name].weight))
                drop = [i for i in range(m.weight.shape[0]) if i not in keep]
                m.weight[drop] = 0
                if m.bias is not None:
                    m.bias[drop] = 0
    return masked


def onnx_diff(model: nn.Module, path) -> float:
    export_onnx(model.eval(), path, SIZE)
    x = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x)
    got = onnx_logits(open_session(path, threads=1), [x])
    assert got.shape == ref.shape
    return (got - ref).abs().max().item() / max(1.0, ref.abs().max().item())


# -- the pipeline's pieces, per family --------------------------------------------------------

@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(TINY))
def test_plan_prune_exact_sound_and_onnx(name, tmp_path):
    model = trained_looking(tiny(name))
    original = copy.deepcopy(model)
    graph, plan, budget = plan_for(copy.deepcopy(model))
    assert plan.predicted["macs"] <= budget.value
    assert any(m.width < m.base_width for m in plan.micro)

    # the whole plan, as the pipeline passes it (fixed places included)
    prune_to_widths(model, plan.widths(), torch.zeros(1, 3, SIZE, SIZE), Magnitude())
    assert current_widths(model) == plan.widths()  # every conv / linear, exactly
    assert (count_params(model), count_macs(model, SIZE)) == \
        (plan.predicted["params"], plan.predicted["macs"])
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        out = model.eval()(x)
        ref = zero_pruned(original, model).eval()(x)
    assert out.shape == (2, CLASSES)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-4), (out - ref).abs().max()
    if name != "densenet_bc":  # the export is the slow part; DenseNet-40 covers the concats
        assert onnx_diff(model, tmp_path / "pruned.onnx") < 1e-4


@pytest.mark.parametrize("name", sorted(TINY))
def test_build_at_plan_widths(name):
    """The from-scratch path (scaling without pruning): the builder realises any plan."""
    cfg = tiny_cfg(name)
    baseline = build_model(cfg, CLASSES)
    _, plan, _ = plan_for(baseline, prunable=False, ratio=0.4)
    model = build_at_widths(cfg, CLASSES, plan.widths(), baseline)
    assert out_widths(model) == plan.widths()
    assert (count_params(model), count_macs(model, SIZE)) == \
        (plan.predicted["params"], plan.predicted["macs"])


def test_what_plans_cannot_prune_is_fixed_and_says_why(caplog):
    """Gunn2D stages (segment split + in-place updates) and ShuffleNetV2 streams (channel
    shuffle, when the plan will be pruned) keep their widths, with a reason in the plan."""
    caplog.set_level("INFO", logger="rsnet.plan.policies")
    _, plan, _ = plan_for(tiny("gunn"))
    held = {m.name: m.fixed for m in plan.held()}
    assert "stage1.transition.conv" in held and "split" in held["stage1.transition.conv"]
    for k in range(3):
        assert "add" in held[f"stage1.gunn.updates.{k}.c.conv"]
        assert f"stage1.gunn.shortcuts.{k}.conv" in held
    assert all(m.width == m.base_width for m in plan.held())
    assert plan.widths()["stage1.gunn.updates.0.a.conv"] < 8  # the update bottlenecks prune
    assert "full width" in caplog.text and "stage1.transition.conv" in caplog.text
    assert "full width (cannot be scaled): 12 layers" in plan.table()

    _, plan, _ = plan_for(tiny("shufflenet_v2"))
    held = {m.name: m.fixed for m in plan.held()}
    stream = ["stage2.0.branch1.pw.conv", "stage2.0.branch2.pw2.conv", "stage2.1.branch2.pw2.conv"]
    assert all("channel shuffle" in held[n] for n in stream)
    assert plan.widths()["stage2.1.branch2.pw1.conv"] < 8
    # built from scratch instead, the shuffled streams are one group and do scale
    graph = analyze(tiny("shufflenet_v2"), SIZE)
    assert all(graph.micro_layer(n).fixed is None for n in stream)
    assert len({graph.group_of(n) for n in stream}) == 1

    for name in ("wrn", "densenet", "densenet_bc", "mobilenet_v2"):
        assert plan_for(tiny(name))[1].held() == [], name


def test_densenet_units_make_the_solver_cost_exact():
    """A transition reads the stem and its whole block: those macro-layers share a unit, so
    the solver's chain tables equal the exact cost (they were off before units merged)."""
    graph = analyze(tiny("densenet"), SIZE)
    assert graph.units == [[0, 1], [2, 3], [4], [5]]  # stem+block1, trans1+block2, trans2, block3
    scaler = Scaler(graph, WidthRule())
    grid = np.round(1 + 0.1 * np.arange(41), 6)
    rng = random.Random(0)
    for unit in ("params", "macs"):
        problem = scaler.chain(grid, unit)
        for _ in range(5):
            idx = [rng.randrange(len(grid)) for _ in graph.units]
            exact = graph.cost(scaler.group_widths([grid[i] for i in idx]))
            assert problem.cost(idx) == exact[0 if unit == "params" else 1]


# -- Gunn2D is the paper's layer ----------------------------------------------------------------

def gunn_by_definition(layer: Gunn2D, x: torch.Tensor) -> torch.Tensor:
    """The definition, written plainly: for k = 1..K, z = the current tensor (segments before k
    already updated); segment k becomes x_k + S_k(z) + F_k(z)."""
    c = layer.segment_width
    current = x.clone()
    for k in range(layer.num_segments):
        z = current.clone()
        update = layer.updates[k](z)
        if layer.shortcuts is not None:
            update = layer.shortcuts[k](z) + update
        current[:, k * c:(k + 1) * c] = z[:, k * c:(k + 1) * c] + update
    return current


@pytest.mark.parametrize("shortcut", [True, False])
def test_gunn2d_is_sequential_and_residual(shortcut):
    layer = trained_looking(Gunn2D(12, 4, shortcut=shortcut))
    x = torch.randn(2, 12, 5, 5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = layer(x)
        assert torch.allclose(out, gunn_by_definition(layer, x), atol=1e-6)
        # all segments updated from the *input* instead (a SUNN) is another function
        c, simultaneous = 3, x.clone()
        for k in range(4):
            update = layer.updates[k](x) + (layer.shortcuts[k](x) if shortcut else 0)
            simultaneous[:, k * c:(k + 1) * c] += update
        assert not torch.allclose(out, simultaneous, atol=1e-3)
    # the bottleneck is 1x1 (C -> 2c), 3x3 (2c -> 2c), 1x1 (2c -> c), each with BN
    u = layer.updates[0]
    assert [(m.in_channels, m.out_channels, m.kernel_size[0]) for m in u.modules()
            if isinstance(m, nn.Conv2d)] == [(12, 6, 1), (6, 6, 3), (6, 3, 1)]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in u.modules()) == 3
    # training: gradients reach the input through every step (no in-place write autograd saw)
    layer.train()
    x.requires_grad_(True)
    layer(x).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in layer.parameters())


# -- the builders -----------------------------------------------------------------------------

def test_full_size_parameter_counts():
    """The published networks (10 classes): GUNN-15 1.586 M / 1.618 M at 100 classes
    (references.md), WRN-40-2 2.24 M, DenseNet-40 1.02 M, DenseNet-BC-100 0.77 M; MobileNetV2
    and ShuffleNetV2 1x as torchvision's (only strides differ at 32 px)."""
    assert count_params(gunn_cifar(10)) == 1_585_746
    assert count_params(gunn_cifar(100)) == 1_618_236
    assert count_params(wide_resnet(40, 2, 10)) == 2_243_546
    assert count_params(densenet_cifar(40, 12, 10)) == 1_019_722
    assert count_params(densenet_cifar(100, 12, 10, bottleneck=True, compression=0.5)) == 769_162
    assert count_params(mobilenet_v2(10)) == \
        count_params(torchvision.models.mobilenet_v2(num_classes=10)) == 2_236_682
    assert count_params(shufflenet_v2(10)) == \
        count_params(torchvision.models.shufflenet_v2_x1_0(num_classes=10)) == 1_263_854


def test_cifar_strides_end_at_the_published_map_sizes():
    """32 px: GUNN-15 8x8 before its pool, WRN / DenseNet 8x8, MobileNetV2 and ShuffleNetV2
    4x4 (their stem and, for MobileNetV2, the 24-channel row at stride 1)."""
    def last_map(model: nn.Module, module: nn.Module) -> tuple[int, ...]:
        seen = []
        handle = module.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[2:])))
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, 32, 32))
        handle.remove()
        return seen[0]

    small = dict(num_classes=3)
    m = gunn_cifar(stem_width=4, widths=[4, 4, 4], segments=[2, 2, 2], head_width=4, **small)
    assert last_map(m, m.pool) == (8, 8)
    m = wide_resnet(10, 1, **small)
    assert last_map(m, m.pool) == (8, 8)
    m = densenet_cifar(10, 2, **small)
    assert last_map(m, m.pool) == (8, 8)
    m = mobilenet_v2(stem_width=4, last_width=8, **small)
    assert last_map(m, m.pool) == (4, 4)
    m = shufflenet_v2(stem_width=4, repeats=[1, 1, 1], stage_widths=[4, 4, 4], last_width=8,
                      **small)
    assert last_map(m, m.pool) == (4, 4)


def test_channel_shuffle_interleaves():
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]


@pytest.mark.parametrize("build, setting", [
    (lambda: gunn_cifar(widths=[240, 300, 360], segments=[7, 25, 30]), "segments"),
    (lambda: gunn_cifar(inner_widths=[[4, 4]]), "inner_widths"),
    (lambda: wide_resnet(depth=41), "depth"),
    (lambda: wide_resnet(projections=[False, True, True]), "projections"),
    (lambda: densenet_cifar(depth=41), "depth"),
    (lambda: densenet_cifar(compression=0.0), "compression"),
    (lambda: densenet_cifar(bottleneck_widths=[4] * 36), "bottleneck_widths"),
    (lambda: mobilenet_v2(out_widths=[16, 24, 20] + [32] * 14), "out_widths"),
    (lambda: mobilenet_v2(setting=[[6, 24, 2, 3]]), "setting"),
    (lambda: shufflenet_v2(stage_widths=[116, 231, 464]), "stage_widths"),
    (lambda: shufflenet_v2(inner_widths=[8]), "inner_widths"),
])
def test_bad_settings_name_the_setting(build, setting):
    with pytest.raises(RsnetError, match=setting):
        build()


@pytest.mark.parametrize("name", ["gunn15", "wrn", "densenet40", "mobilenet_v2", "shufflenet_v2"])
def test_model_configs_build_the_default_networks(name):
    cfg = compose_cfg(f"model={name}").model
    assert cfg.checkpoint is None and cfg.input_size == 32
    assert instantiate(cfg.arch, num_classes=10) is not None


def test_gunn15_cifar3_is_the_seed_setting():
    cfg = compose_cfg("experiment=gunn15_cifar3")
    assert cfg.model.name == "gunn15" and cfg.model.checkpoint is None  # from scratch
    assert list(cfg.dataset.classes) == ["airplane", "automobile", "bird"]  # CIFAR-10 0, 1, 2
    assert cfg.dataset.num_classes == 3 and not cfg.dataset.misc
    assert cfg.train.optimizer._target_ == "torch.optim.Adam" and cfg.train.optimizer.lr == 1e-3
    assert cfg.train.batch_size == 50 and cfg.train.epochs == 100
    assert cfg.scaling.name == "none" and cfg.compression.name == "none"
