"""A seeded calibration set for the data-driven pruning criteria."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rsnet.data.loader import BatchLoader, Split
from rsnet.errors import RsnetError

__all__ = ["calibration_batches"]


def calibration_batches(split: Split, num_images: int, mean: Sequence[float],
                        std: Sequence[float], batch_size: int = 64, seed: int = 0,
                        device: str | torch.device = "cpu", setting: str = "compression.calib_images"
                        ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``num_images`` images drawn from ``split`` without replacement (seeded), as batches.

    Returns a list of ``(x, y)``: ``x`` float32 ``(B, 3, H, W)`` normalised with
    ``mean`` / ``std`` (no augmentation), ``y`` int64 ``(B,)`` training labels; the last
    batch may be smaller. The same (split, num_images, seed) always gives the same images,
    in index order. A list, so several criteria can reuse it. ``num_images`` is capped at
    the split's size. ``setting`` names the config key in error messages.
    """
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
        raise RsnetError(f"{setting} must be a positive integer, got "
                         f"{num_images!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise RsnetError(f"the calibration batch size must be a positive integer, got "
                         f"{batch_size!r}")
    if len(split) == 0:
        raise RsnetError(f"{setting}: the split to sample from is empty")
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(len(split), generator=g)[:min(num_images, len(split))].sort().values
    subset = Split(split.images[idx], split.targets[idx], split.orig_labels[idx])
    return list(BatchLoader(subset, batch_size, list(mean), list(std), device=device))
