"""Build a model of the zoo at given per-layer widths (a WidthPlan), from scratch.

Each parametric builder takes its widths in its own shape (GoogLeNet a dict, MobileNet a
block list, ...); its module translates {module name: width} into those arguments
(``widths_kwargs``) and names its initialisation (``INIT``).
Models without such a builder (torchvision's) are realised by pruning instead.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from types import ModuleType

from hydra.utils import instantiate
from torch import nn

from rsnet.config import ModelConfig
from rsnet.errors import RsnetError

Widths = Mapping[str, int]


def family(target: str) -> ModuleType | None:
    """The zoo module of a builder ``_target_`` (e.g. ``rsnet.models.wrn.wide_resnet``) when it
    owns a ``widths_kwargs`` (its widths as builder arguments) and an ``INIT``; else None."""
    module_name, _, _ = target.rpartition(".")
    if not module_name.startswith("rsnet.models."):
        return None
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    return module if hasattr(module, "widths_kwargs") else None


def family_init(target: str) -> Callable[[nn.Module], None] | None:
    """The builder's own initialisation (None: torch's defaults), for re-initialising a pruned
    network ("from scratch")."""
    module = family(target)
    return module.INIT if module is not None else None


def out_widths(model: nn.Module) -> dict[str, int]:
    """Output width of every conv / linear, by module name."""
    return {n: (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
            for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def build_at_widths(cfg: ModelConfig, num_classes: int, widths: Widths, baseline: nn.Module) -> nn.Module:
    """A freshly initialised ``cfg.arch`` model whose conv / linear widths are ``widths``."""
    target = cfg.arch["_target_"]
    module = family(target)
    if module is None:
        raise RsnetError(f"model.arch._target_={target} has no width arguments, so a plan cannot "
                         f"be built from scratch; realise it by pruning (compression=...)")
    model = instantiate(cfg.arch, num_classes=num_classes, _convert_="all",
                        **module.widths_kwargs(widths, baseline))
    got = out_widths(model)
    wrong = {n: (w, got.get(n)) for n, w in widths.items() if got.get(n) != w}
    if wrong:  # a builder that ignores a width would silently change the experiment
        raise RsnetError(f"building {cfg.name} at the plan's widths gave other widths: "
                         f"{dict(list(wrong.items())[:5])}")
    return model
