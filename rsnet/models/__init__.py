"""Model zoo: parametric builders (widths are arguments) chosen by ``model.arch._target_``.

- ``resnet_cifar``: He et al.'s CIFAR ResNets (option-A shortcuts), loads akamaster's weights;
- ``googlenet_rs``: the thesis's GoogLeNet; ``mobilenet_v1``: MobileNet v1 as the thesis built it;
- ``vgg16``: the CIFAR VGG-16 with BN; ``torchvision_model``: any torchvision classifier by name,
  untrained or with torchvision's pretrained weights (``model.arch.weights``);
- CIFAR families (32 px): ``gunn_cifar`` (GUNN-15, Qiao et al. 2018, with the ``Gunn2D`` layer),
  ``wide_resnet`` (WRN-d-k, default WRN-40-2), ``densenet_cifar`` (DenseNet-40, k = 12; BC as
  an option), ``mobilenet_v2`` and ``shufflenet_v2`` (CIFAR strides).

A model's classifier is its last ``nn.Linear``, or its last 1x1 ``nn.Conv2d`` when it has no
linear layer (SqueezeNet).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict
from torch import nn

from rsnet.config import ModelConfig
from rsnet.errors import RsnetError
from rsnet.fileio import load_checkpoint_file
from rsnet.records import file_sha256

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[2]
TORCHVISION_TARGET = "rsnet.models.torchvision_models.torchvision_model"


def build_model(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """Instantiate ``cfg.arch`` with ``num_classes`` outputs and load ``cfg.checkpoint`` if set
    (over the pretrained weights of ``model.arch.weights``, when both are given)."""
    arch = cfg.arch
    if "weights" in arch and arch.weights is None:
        # model=torchvision's default, left out: any model.arch._target_ given with
        # model=torchvision (a CNN from outside rsnet) still builds
        arch = {k: v for k, v in OmegaConf.to_container(arch, resolve=True).items() if k != "weights"}
    try:
        model = instantiate(arch, num_classes=num_classes)
    except InstantiationException as e:
        cause = e.__cause__ if isinstance(e.__cause__, RsnetError) else None
        if cause is not None:
            raise cause from e
        raise RsnetError(f"cannot build model={cfg.name} from model.arch: {e}") from e
    if cfg.checkpoint:
        load_weights(model, resolve_checkpoint(cfg.checkpoint))
    return model


def pretrained_weights(cfg: ModelConfig) -> WeightsEnum | None:
    """The torchvision weights ``model.arch.weights`` names, or None; reads no file."""
    weights = cfg.arch.get("weights")
    if not weights:
        return None
    if cfg.arch.get("_target_") != TORCHVISION_TARGET:
        raise RsnetError(f"model.arch.weights={weights}: torchvision's pretrained weights need "
                         f"model=torchvision; give other weights with model.checkpoint")
    from rsnet.models.torchvision_models import resolve_weights  # torchvision loads slowly
    return resolve_weights(cfg.arch.name, weights)


def has_trained_weights(cfg: ModelConfig) -> bool:
    """Whether the baseline is trained (``model.checkpoint`` or ``model.arch.weights``), so its
    classifier rows are worth keeping and it can be evaluated and distilled."""
    return bool(cfg.checkpoint or cfg.arch.get("weights"))


def untrained_config(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` building the same network freshly initialised: no checkpoint, no pretrained
    weights (any width of classifier can then be asked for)."""
    out = OmegaConf.merge(cfg, {"checkpoint": None})
    if out.arch.get("weights"):
        from rsnet.models.torchvision_models import untrained_twin
        twin = untrained_twin(OmegaConf.to_container(out.arch))
        with open_dict(out):
            out.arch = twin
    return out


def checkpoint_sha256(cfg: ModelConfig) -> str:
    """The SHA-256 of ``cfg.checkpoint``'s file: which weights a run started from (the same
    name can hold other weights on another machine or after a new release)."""
    return file_sha256(resolve_checkpoint(cfg.checkpoint))


def resolve_checkpoint(name: str) -> Path:
    """An existing path as given, else ``name`` under $RSNET_MODELS, ./models, the repository's
    checkpoints/ (rsnet's released fp16 weights) and ../shared/models."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    places = [Path(p) for p in (os.environ.get("RSNET_MODELS"),) if p]
    places += [Path("models"), REPO_ROOT / "checkpoints", REPO_ROOT.parent / "shared" / "models"]
    for folder in places:
        if (folder / name).is_file():
            return folder / name
    raise RsnetError(f"model.checkpoint={name!r} not found (looked in ., "
                     f"{', '.join(str(p) for p in places)}); give a path or set $RSNET_MODELS")


def load_weights(model: nn.Module, path: Path) -> None:
    """Load a state dict (plain, or under 'state_dict'/'model'; 'module.' prefixes removed)."""
    state = load_checkpoint_file(path, "model.checkpoint")
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RsnetError(f"model.checkpoint {path} holds no state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise RsnetError(f"model.checkpoint {path} does not fit model.arch "
                         f"({str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else e})"
                         ) from e
    log.info("loaded weights from %s", path)


def classifier_name(model: nn.Module) -> str:
    """Qualified name of the classifier: the last nn.Linear, or the last 1x1 nn.Conv2d of a
    model without one (SqueezeNet's conv -> ReLU -> global pool head)."""
    modules = list(model.named_modules())
    names = [n for n, m in modules if isinstance(m, nn.Linear)] or \
        [n for n, m in modules if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    if not names:
        raise RsnetError(f"{type(model).__name__} has no classifier (no nn.Linear, no 1x1 "
                         f"nn.Conv2d)")
    return names[-1]


def _with_outputs(old: nn.Linear | nn.Conv2d, outputs: int) -> nn.Linear | nn.Conv2d:
    """A freshly initialised layer like ``old`` with ``outputs`` outputs."""
    bias = old.bias is not None
    if isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, outputs, bias=bias)
    else:
        new = nn.Conv2d(old.in_channels, outputs, old.kernel_size, old.stride, old.padding,
                        old.dilation, bias=bias)
    return new.to(old.weight.device, old.weight.dtype)


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


@torch.no_grad()
def subset_head(model: nn.Module, classes: Sequence[int], num_base_classes: int, misc: bool,
                mode: str = "subset") -> nn.Module:
    """Replace the C-way classifier (``num_base_classes`` outputs) by an N-way one for the
    original class indices ``classes`` (new labels: misc = 0 first when ``misc``, then the
    classes in order); in place, returns the model.

    mode "subset": in-scope rows are the baseline's rows for those classes; the misc row is
    the mean of the out-of-scope rows with log(K) added to its bias (K out-of-scope classes),
    a first-order stand-in for the log-sum-exp of their logits. mode "reset": fresh init.
    """
    name = classifier_name(model)
    old = model.get_submodule(name)
    if old.weight.shape[0] != num_base_classes:
        raise RsnetError(f"classifier {name} has {old.weight.shape[0]} outputs, the dataset "
                         f"{num_base_classes} classes")
    rows = list(classes)
    offset = int(misc)
    new = _with_outputs(old, len(rows) + offset)
    if mode == "subset":
        new.weight[offset:] = old.weight[rows]
        if old.bias is not None:
            new.bias[offset:] = old.bias[rows]
        if misc:
            others = [c for c in range(num_base_classes) if c not in set(rows)]
            new.weight[0] = old.weight[others].mean(0)
            if old.bias is not None:
                new.bias[0] = old.bias[others].mean() + math.log(len(others))
    elif mode != "reset":
        raise RsnetError(f"model.head={mode!r}: use 'subset' or 'reset'")
    set_module(model, name, new)
    return model
