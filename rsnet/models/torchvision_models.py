"""Any torchvision classification model as an rsnet baseline: untrained, or with torchvision's
pretrained weights (``model.arch.weights``).

Pretrained weights go through torchvision's weights API: ``get_model(name, weights=...)``
downloads the file into torch's cache (``$TORCH_HOME/hub/checkpoints``) when a network exists
and reads it from there when not. The weights also carry the class names (``meta
["categories"]``) and the evaluation preprocessing (``transforms()``) the pipeline uses. The
last ``nn.Linear`` of each of these models is its classifier.
"""

from __future__ import annotations

import difflib
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum

from rsnet.errors import RsnetError

__all__ = ["torchvision_model", "available_models", "resolve_weights", "weights_file",
           "weights_preprocessing", "Preprocessing", "untrained_twin"]

# Shown when a name matches nothing closely.
_EXAMPLES = ("resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "googlenet", "vgg16_bn")

# Aux heads are off by default: they only run in training mode, so a pruning graph traced in
# eval mode misses them and the pruned model then crashes in training.
_AUX_DEFAULTS = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}
# What torchvision's builders set with pretrained weights that changes the computation, not
# only the parameters: Google's weights expect their own input normalisation.
_PRETRAINED_SETTINGS = {"googlenet": {"transform_input": True},
                        "inception_v3": {"transform_input": True}}


def available_models() -> list[str]:
    """Names of torchvision's image-classification models."""
    return list(torchvision.models.list_models(module=torchvision.models))


def _check_name(name: str) -> None:
    valid = available_models()
    if name not in valid:
        close = difflib.get_close_matches(str(name), valid, n=5, cutoff=0.5)
        hint = ", ".join(close or _EXAMPLES)
        raise RsnetError(
            f"model.arch.name: unknown torchvision model {name!r}; did you mean one of: {hint}? "
            f"({len(valid)} names in torchvision.models.list_models(module=torchvision.models))"
        )


def resolve_weights(name: str, weights: str) -> WeightsEnum:
    """The pretrained weights ``weights`` of torchvision model ``name``: an entry of its
    weights enum (``IMAGENET1K_V2``, ``DEFAULT``, or in full ``ResNet50_Weights.IMAGENET1K_V2``).
    Reads no file. Raises RsnetError listing the valid names for an unknown one."""
    _check_name(name)
    try:
        enum = torchvision.models.get_model_weights(name)
    except ValueError as err:
        raise RsnetError(f"model.arch.weights={weights}: torchvision model {name!r} has no "
                         f"pretrained weights") from err
    key = str(weights).removeprefix(f"{enum.__name__}.")
    usable = [k for k, w in enum.__members__.items() if w.meta.get("categories")]
    if key not in usable:
        why = "holds no classifier" if key in enum.__members__ else "unknown"
        raise RsnetError(f"model.arch.weights={weights}: {why} for {name}; use one of "
                         f"{', '.join(usable)} ({enum.__name__})")
    return enum[key]


def weights_file(weights: WeightsEnum) -> Path:
    """Where torchvision reads (and downloads) ``weights``: torch's hub cache,
    ``$TORCH_HOME/hub/checkpoints/<file name of weights.url>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name


@dataclass(frozen=True)
class Preprocessing:
    """The evaluation preprocessing of pretrained weights (torchvision's ``weights.transforms()``):
    shorter side resized to ``resize_size`` px with ``interpolation``, centre crop of
    ``crop_size`` px, then ``(x / 255 - mean) / std`` per channel."""

    resize_size: int
    crop_size: int
    interpolation: str  # "bilinear" | "bicubic"
    mean: list[float]
    std: list[float]


def weights_preprocessing(weights: WeightsEnum) -> Preprocessing:
    t = weights.transforms()
    return Preprocessing(int(t.resize_size[0]), int(t.crop_size[0]), t.interpolation.value,
                         [float(v) for v in t.mean], [float(v) for v in t.std])


def untrained_twin(arch: Mapping[str, Any]) -> dict[str, Any]:
    """A ``model.arch`` block that builds the same network untrained: its ``weights`` dropped,
    and what torchvision sets with weights kept (GoogLeNet's ``transform_input``), e.g. to
    load pruned pretrained weights into."""
    extra = _PRETRAINED_SETTINGS.get(arch.get("name"), {}) if arch.get("weights") else {}
    return {**extra, **arch, "weights": None}


def torchvision_model(name: str, num_classes: int = 1000, weights: str | None = None,
                      **kwargs: Any) -> nn.Module:
    """``torchvision.models.get_model(name, weights=..., num_classes=num_classes, **kwargs)``.

    ``weights``: None (untrained) or the name of pretrained weights (``IMAGENET1K_V2``,
    ``DEFAULT``; see :func:`resolve_weights`), read from torch's cache or downloaded there; the
    model then has ``len(weights.meta["categories"])`` outputs, which ``num_classes`` must
    equal. For ``googlenet`` and ``inception_v3``, ``aux_logits=False`` unless given (and
    ``init_weights=True`` when untrained). Input shapes are those of the torchvision model
    (e.g. ``(B, 3, 224, 224)``); output ``(B, num_classes)``.

    Raises RsnetError (naming the setting) for an unknown name or weights, arguments the model
    rejects, a label space the weights do not have, and weights that cannot be downloaded.
    """
    _check_name(name)
    if weights is None:
        config = {**_AUX_DEFAULTS.get(name, {}), **kwargs}
        return _build(name, None, num_classes=num_classes, **config)
    member = resolve_weights(name, weights)
    classes = len(member.meta["categories"])
    if num_classes != classes:
        raise RsnetError(
            f"model.arch.weights={weights}: the pretrained {name} has {classes} outputs but the "
            f"dataset has {num_classes} classes; use the dataset the weights were trained on "
            f"(ImageNet-1k: dataset=imagefolder on its {classes} class folders) and pick your "
            f"classes with dataset.classes=[...], or leave model.arch.weights unset")
    # torchvision loads Google's weights with their aux heads, then drops them unless asked
    aux = bool(kwargs.pop("aux_logits", False)) if name in _AUX_DEFAULTS else None
    model = _build(name, member, **kwargs, **({"aux_logits": True} if aux else {}))
    if aux is False:
        _drop_aux_heads(model)
    return model


def _build(name: str, weights: WeightsEnum | None, **config: Any) -> nn.Module:
    try:
        return torchvision.models.get_model(name, weights=weights, **config)
    except (TypeError, ValueError) as err:
        raise RsnetError(f"model.arch: torchvision model {name!r} rejected its arguments: {err}") from err
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError) as err:
        if weights is None:
            raise
        raise _weights_error(name, weights, err) from err


def _weights_error(name: str, weights: WeightsEnum, err: Exception) -> RsnetError:
    """One message for weights that cannot be had: no download (no network, an HTTP error, an
    unwritable TORCH_HOME: OSError), or a cached file that is not these weights."""
    path = weights_file(weights)
    if isinstance(err, OSError):
        return RsnetError(
            f"model.arch.weights={weights!r}: cannot download {weights.url} "
            f"({getattr(err, 'reason', None) or err}); without a network, place that file at "
            f"{path} (torch's cache: $TORCH_HOME/hub/checkpoints)")
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return RsnetError(f"model.arch.weights={weights!r}: the cached file {path} is not "
                      f"{name}'s weights ({first}); delete it to download it again, or replace it")


def _drop_aux_heads(model: nn.Module) -> None:
    """GoogLeNet's and Inception-v3's aux heads removed, as torchvision does without aux_logits."""
    model.aux_logits = False
    for attr in ("aux1", "aux2", "AuxLogits"):
        if hasattr(model, attr):
            setattr(model, attr, None)
