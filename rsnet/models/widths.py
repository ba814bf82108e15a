"""Build a model of the zoo at given per-layer widths (a WidthPlan), from scratch.

Each parametric builder takes its widths in its own shape (GoogLeNet a dict, MobileNet a
block list, ...); the functions here translate {module name: width} into those arguments.
Models without such a builder (torchvision's) are realised by pruning instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from hydra.utils import instantiate
from torch import nn

from rsnet.config import ModelConfig
from rsnet.errors import RsnetError
from rsnet.models.googlenet_rs import BASELINE_WIDTHS, INCEPTION_KEYS
from rsnet.models.layers import init_weights
from rsnet.models.resnet_cifar import init_akamaster

Widths = Mapping[str, int]


def _resnet_cifar(w: Widths, baseline: nn.Module) -> dict:
    stages = [baseline.layer1, baseline.layer2, baseline.layer3]
    return {"stage_widths": [w["conv1"], w["layer2.0.conv2"], w["layer3.0.conv2"]],
            "inner_widths": [w[f"layer{s + 1}.{b}.conv1"] for s, stage in enumerate(stages)
                             for b in range(len(stage))]}


def _googlenet_rs(w: Widths, baseline: nn.Module) -> dict:
    widths = {k: w[f"{k}.conv"] for k in ("conv1", "conv2_reduce", "conv2")}
    for key in BASELINE_WIDTHS:
        if key.startswith("inception"):
            widths[key] = [w[f"{key}.{b}.conv"] for b in INCEPTION_KEYS]
    return {"widths": widths}


def _mobilenet_v1(w: Widths, baseline: nn.Module) -> dict:
    blocks = [[w[f"features.{i}.pw"], baseline.features[i].dw.stride[0]]
              for i in range(1, len(baseline.features))]
    return {"stem_width": w["features.0.conv"], "blocks": blocks}


def _vgg16(w: Widths, baseline: nn.Module) -> dict:
    return {"widths": [w[f"features.conv{i}"] for i in range(1, 14)],
            "fc_width": w["classifier.linear1"]}


def _gunn(w: Widths, baseline: nn.Module) -> dict:
    stages = range(1, baseline.num_stages + 1)
    return {"stem_width": w["stem.conv"], "head_width": w["head.conv"],
            "widths": [w[f"stage{s}.transition.conv"] for s in stages],
            "inner_widths": [[w[f"stage{s}.gunn.updates.{k}.{c}.conv"] for c in "ab"]
                             for s in stages
                             for k in range(getattr(baseline, f"stage{s}").gunn.num_segments)]}


def _wide_resnet(w: Widths, baseline: nn.Module) -> dict:
    stages = [baseline.stage1, baseline.stage2, baseline.stage3]
    return {"stem_width": w["conv1"],
            "stage_widths": [w[f"stage{s + 1}.0.conv2"] for s in range(3)],
            "inner_widths": [w[f"stage{s + 1}.{b}.conv1"] for s, stage in enumerate(stages)
                             for b in range(len(stage))],
            "projections": [stage[0].shortcut is not None for stage in stages]}


def _densenet(w: Widths, baseline: nn.Module) -> dict:
    layers = [(b, i) for b in (1, 2, 3) for i in range(len(getattr(baseline, f"block{b}").layers))]
    bottleneck = baseline.block1.layers[0].conv1 is not None
    return {"stem_width": w["stem"],
            "growth_widths": [w[f"block{b}.layers.{i}.conv2"] for b, i in layers],
            "bottleneck_widths": ([w[f"block{b}.layers.{i}.conv1"] for b, i in layers]
                                  if bottleneck else None),
            "transition_widths": [w["trans1.conv"], w["trans2.conv"]]}


def _mobilenet_v2(w: Widths, baseline: nn.Module) -> dict:
    blocks = range(1, len(baseline.features) - 1)
    return {"stem_width": w["features.0.conv"],
            "hidden_widths": [w[f"features.{i}.expand.conv"] for i in blocks
                              if baseline.features[i].expand is not None],
            "out_widths": [w[f"features.{i}.project.conv"] for i in blocks],
            "last_width": w[f"features.{len(baseline.features) - 1}.conv"]}


def _shufflenet_v2(w: Widths, baseline: nn.Module) -> dict:
    stages = [(s, len(getattr(baseline, f"stage{s}"))) for s in range(2, baseline.num_stages + 2)]
    return {"stem_width": w["stem.conv"], "last_width": w["last.conv"],
            "stage_widths": [2 * w[f"stage{s}.0.branch2.pw2.conv"] for s, _ in stages],
            "inner_widths": [w[f"stage{s}.{i}.branch2.pw1.conv"] for s, n in stages
                             for i in range(n)]}


BUILDERS: dict[str, Callable[[Widths, nn.Module], dict]] = {
    "rsnet.models.resnet_cifar.resnet_cifar": _resnet_cifar,
    "rsnet.models.googlenet_rs.googlenet_rs": _googlenet_rs,
    "rsnet.models.mobilenet_v1.mobilenet_v1": _mobilenet_v1,
    "rsnet.models.vgg.vgg16": _vgg16,
    "rsnet.models.gunn.gunn_cifar": _gunn,
    "rsnet.models.wrn.wide_resnet": _wide_resnet,
    "rsnet.models.densenet.densenet_cifar": _densenet,
    "rsnet.models.mobilenet_v2.mobilenet_v2": _mobilenet_v2,
    "rsnet.models.shufflenet_v2.shufflenet_v2": _shufflenet_v2,
}


# The builders' own initialisation, for re-initialising a pruned network ("from scratch").
INITS: dict[str, Callable[[nn.Module], None]] = {
    "rsnet.models.resnet_cifar.resnet_cifar": init_akamaster,
    "rsnet.models.googlenet_rs.googlenet_rs": init_weights,
    "rsnet.models.mobilenet_v1.mobilenet_v1": init_weights,
    "rsnet.models.vgg.vgg16": init_weights,
    "rsnet.models.gunn.gunn_cifar": init_weights,
    "rsnet.models.wrn.wide_resnet": init_weights,
    "rsnet.models.densenet.densenet_cifar": init_weights,
    "rsnet.models.mobilenet_v2.mobilenet_v2": init_weights,
    "rsnet.models.shufflenet_v2.shufflenet_v2": init_weights,
}


def out_widths(model: nn.Module) -> dict[str, int]:
    """Output width of every conv / linear, by module name."""
    return {n: (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
            for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def build_at_widths(cfg: ModelConfig, num_classes: int, widths: Widths, baseline: nn.Module) -> nn.Module:
    """A freshly initialised ``cfg.arch`` model whose conv / linear widths are ``widths``."""
    target = cfg.arch["_target_"]
    if target not in BUILDERS:
        raise RsnetError(f"model.arch._target_={target} has no width arguments, so a plan cannot "
                         f"be built from scratch; realise it by pruning (compression=...)")
    model = instantiate(cfg.arch, num_classes=num_classes, _convert_="all",
                        **BUILDERS[target](widths, baseline))
    got = out_widths(model)
    wrong = {n: (w, got.get(n)) for n, w in widths.items() if got.get(n) != w}
    if wrong:  # a builder that ignores a width would silently change the experiment
        raise RsnetError(f"building {cfg.name} at the plan's widths gave other widths: "
                         f"{dict(list(wrong.items())[:5])}")
    return model
