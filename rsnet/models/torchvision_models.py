"""Any torchvision classification model, untrained, as an rsnet baseline.

No weights are downloaded (``weights=None``): pretrained checkpoints must be loaded
separately. The last ``nn.Linear`` of each of these models is its classifier.
"""

from __future__ import annotations

import difflib
from typing import Any

import torchvision
from torch import nn

from rsnet.errors import RsnetError

__all__ = ["torchvision_model", "available_models"]

# Shown when a name matches nothing closely.
_EXAMPLES = ("resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "googlenet", "vgg16_bn")

# Aux heads are off by default: they only run in training mode, so a pruning graph traced in
# eval mode misses them and the pruned model then crashes in training.
_AUX_DEFAULTS = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


def available_models() -> list[str]:
    """Names of torchvision's image-classification models."""
    return list(torchvision.models.list_models(module=torchvision.models))


def torchvision_model(name: str, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    """``torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)``.

    For ``googlenet`` and ``inception_v3``, ``aux_logits=False`` and ``init_weights=True``
    unless given. Input shapes are those of the torchvision model (e.g. ``(B, 3, 224, 224)``);
    output ``(B, num_classes)``.

    Raises RsnetError (naming ``model.arch.name``) for an unknown name, and for arguments the
    model rejects.
    """
    valid = available_models()
    if name not in valid:
        close = difflib.get_close_matches(str(name), valid, n=5, cutoff=0.5)
        hint = ", ".join(close or _EXAMPLES)
        raise RsnetError(
            f"model.arch.name: unknown torchvision model {name!r}; did you mean one of: {hint}? "
            f"({len(valid)} names in torchvision.models.list_models(module=torchvision.models))"
        )
    config = {**_AUX_DEFAULTS.get(name, {}), **kwargs}
    try:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **config)
    except (TypeError, ValueError) as err:
        raise RsnetError(f"model.arch: torchvision model {name!r} rejected its arguments: {err}") from err
