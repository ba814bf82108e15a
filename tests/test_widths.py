"""Building a zoo model at given widths reproduces exactly those widths (the plan -> model path)."""

import random

import pytest

from conftest import compose_cfg
from rsnet.errors import RsnetError
from rsnet.models import build_model
from rsnet.models.googlenet_rs import BASELINE_WIDTHS
from rsnet.models.widths import build_at_widths, out_widths


def random_args(name: str, rng: random.Random) -> dict:
    r = lambda: rng.randint(1, 24)  # noqa: E731
    if name == "resnet_cifar":
        s = sorted(r() for _ in range(3))
        return {"stage_widths": s, "inner_widths": [r() for _ in range(9)]}
    if name == "googlenet_rs":
        return {"widths": {k: (r() if isinstance(v, int) else [r() for _ in v]) for k, v in BASELINE_WIDTHS.items()}}
    if name == "mobilenet_v1":
        return {"stem_width": r(), "blocks": [[r(), s] for s in (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1)]}
    return {"widths": [r() for _ in range(13)], "fc_width": r()}


@pytest.mark.parametrize("name", ["resnet_cifar", "googlenet_rs", "mobilenet_v1", "vgg16"])
def test_build_at_widths_round_trips(name):
    cfg = compose_cfg(f"model={name}", "model.input_size=32").model
    baseline = build_model(cfg, 7)
    from hydra.utils import instantiate
    target = instantiate(cfg.arch, num_classes=7, _convert_="all", **random_args(name, random.Random(1)))
    widths = out_widths(target)
    rebuilt = build_at_widths(cfg, 7, widths, baseline)
    assert out_widths(rebuilt) == widths


def test_models_without_width_arguments_point_to_pruning():
    cfg = compose_cfg("model=torchvision", "model.arch.name=resnet18").model
    with pytest.raises(RsnetError, match="compression"):
        build_at_widths(cfg, 10, {}, build_model(cfg, 10))
