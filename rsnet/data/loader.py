"""Batches served from an in-memory uint8 tensor, with batched augmentation.

No per-image Python work happens in the epoch loop: a batch is one index into the
(num_images, 3, H, W) uint8 tensor, one gather for the random crops, one ``where`` for
the flips and one fused affine for ``/255``, mean and std. On a GPU the uint8 images are
copied to it once per loader and the whole batch is made there; the random draws are the
CPU generator's either way, so a batch is the same on every device.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass
class Split:
    """One split of a (possibly subset) dataset.

    images: uint8 (num_images, 3, H, W); targets: int64 training labels (subset labels);
    orig_labels: int64 labels in the dataset's full label space (for the baseline's metrics).
    """

    images: torch.Tensor
    targets: torch.Tensor
    orig_labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.targets)


def draw_crop_flip(n: int, padding: int, flip: bool, g: torch.Generator
                   ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """The random draws of :func:`random_crop_flip` for a batch of n images: crop offsets
    (oy, ox), each (n,) int64 in [0, 2 * padding], and the flip mask (n,) bool; None when off."""
    oy = ox = mask = None
    if padding > 0:
        oy = torch.randint(0, 2 * padding + 1, (n,), generator=g)
        ox = torch.randint(0, 2 * padding + 1, (n,), generator=g)
    if flip:
        mask = torch.rand(n, generator=g) < 0.5
    return oy, ox, mask


def apply_crop_flip(x: torch.Tensor, padding: int, oy: torch.Tensor | None, ox: torch.Tensor | None,
                    mask: torch.Tensor | None) -> torch.Tensor:
    """Crop (with zero padding) and flip a batch (any dtype, NCHW) by given draws."""
    n, _, h, w = x.shape
    dev = x.device
    if oy is not None and ox is not None:
        padded = torch.nn.functional.pad(x, (padding,) * 4)
        rows = (oy.to(dev)[:, None] + torch.arange(h, device=dev))[:, None, :, None]  # (n, 1, h, 1)
        cols = (ox.to(dev)[:, None] + torch.arange(w, device=dev))[:, None, None, :]  # (n, 1, 1, w)
        x = padded[torch.arange(n, device=dev)[:, None, None, None],
                   torch.arange(x.shape[1], device=dev)[None, :, None, None], rows, cols]
    if mask is not None:
        x = torch.where(mask.to(dev)[:, None, None, None], x.flip(3), x)
    return x


def random_crop_flip(x: torch.Tensor, padding: int, flip: bool, g: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip of a batch (any dtype, NCHW)."""
    return apply_crop_flip(x, padding, *draw_crop_flip(len(x), padding, flip, g))


class BatchLoader:
    """Iterate (images float32 normalised, targets) batches of a :class:`Split`.

    The order and the augmentation of epoch e depend only on (seed, e), so a run resumed at
    an epoch boundary (``set_epoch``) or in mid-epoch (``batches(start)``) sees exactly the
    batches an uninterrupted run would.

    Data-parallel training (``world_size`` > 1): ``batch_size`` is the global batch. Every
    rank draws the same order and the same augmentation for each global batch and keeps its
    own contiguous slice of it (rank r: images [r * m // world_size, (r + 1) * m // world_size)
    of a batch of m), so all ranks take the same number of steps and together see exactly the
    images a single process would.
    """

    def __init__(self, split: Split, batch_size: int, mean: list[float], std: list[float],
                 shuffle: bool = False, crop_padding: int = 0, flip: bool = False,
                 drop_last: bool = False, seed: int = 0, channels_last: bool = False,
                 device: str | torch.device = "cpu", rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.split, self.batch_size = split, batch_size
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.crop_padding, self.flip = shuffle, crop_padding, flip
        self.drop_last, self.seed, self.epoch = drop_last, seed, 0
        self.channels_last, self.device = channels_last, torch.device(device)
        # On a GPU, the uint8 images live there (one copy per loader; the CPU keeps its own).
        self.images = split.images.to(self.device) if self.device.type == "cuda" else split.images
        self.targets = split.targets.to(self.device)
        # x / 255 then (x - mean) / std, folded into one multiply-add.
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.scale = (1.0 / (255.0 * std_t)).to(self.device)
        self.shift = (-torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) / std_t).to(self.device)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches()

    def batches(self, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This epoch's batches from batch ``start`` on: the ones an iteration from the first
        batch would yield there (a run resumed in mid-epoch goes on where it stopped)."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        n = len(self.split)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        augment = self.crop_padding > 0 or self.flip
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            m = len(idx)  # this rank's slice of the global batch (all of it in one process)
            if b < start:  # skipped, but its augmentation is drawn: the stream stays in step
                if augment:
                    draw_crop_flip(m, self.crop_padding, self.flip, g)
                continue
            part = slice(self.rank * m // self.world_size, (self.rank + 1) * m // self.world_size)
            rows = idx[part].to(self.images.device)
            x = self.images[rows]
            if augment:  # drawn for the whole batch: the same random stream on every rank
                draws = draw_crop_flip(m, self.crop_padding, self.flip, g)
                oy, ox, mask = (d if d is None else d[part] for d in draws)
                x = apply_crop_flip(x, self.crop_padding, oy, ox, mask)
            x = x.to(self.device, non_blocking=True).float().mul_(self.scale).add_(self.shift)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.targets[idx[part].to(self.device)]
