"""Re-initialise a (pruned) model: the "train the pruned architecture from scratch" baseline."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from rsnet.errors import RsnetError
from rsnet.models.layers import ShiftBatchNorm2d
from rsnet.compress.dependency import cuda_devices

__all__ = ["reinitialize"]


def reinitialize(model: nn.Module, seed: int,
                 init_fn: Callable[[nn.Module], None] | None = None) -> nn.Module:
    """Re-initialise every parameter of ``model`` in place (seeded); returns ``model``.

    Each module with parameters of its own is reset with its ``reset_parameters()``
    (PyTorch's default init for conv / linear; BN scale 1, shift 0 and fresh running
    statistics); a ShiftBatchNorm2d's shift is zeroed too (its parent reset skips it).
    ``init_fn`` (e.g. :func:`rsnet.models.layers.init_weights`, the builders' He init) is
    applied afterwards, under the same seed. Non-parameter buffers that are not statistics
    (an IndexShortcut's channel map) are kept: they are architecture, not weights.

    The global RNG state is left as it was. Raises RsnetError if a module holds parameters
    but has no ``reset_parameters`` (its weights would silently survive).
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise RsnetError(f"seed must be an integer, got {seed!r}")
    with torch.random.fork_rng(devices=cuda_devices(model)):
        torch.manual_seed(seed)
        for name, m in model.named_modules():
            if not any(True for _ in m.parameters(recurse=False)):
                if hasattr(m, "reset_running_stats"):  # a BN without affine parameters
                    m.reset_running_stats()
                continue
            reset = getattr(m, "reset_parameters", None)
            if reset is None:
                raise RsnetError(f"cannot re-initialise {name or 'the model'} "
                                 f"({type(m).__name__}): it has parameters but no "
                                 f"reset_parameters()")
            reset()
            if isinstance(m, ShiftBatchNorm2d):
                nn.init.zeros_(m.bias)
        if init_fn is not None:
            init_fn(model)
    return model
