"""Learning-rate schedules, stepped once per optimizer step.

Each factory takes the optimizer and the run's length in steps (given by the training
loop) plus its own settings from ``train.scheduler``; configure them with ``_partial_: true``.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR


def cosine(optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int,
           warmup_epochs: float = 0.0, min_lr_ratio: float = 0.0) -> LRScheduler:
    """Linear warm-up for ``warmup_epochs``, then cosine decay to ``min_lr_ratio`` x lr."""
    warmup = int(round(warmup_epochs * steps_per_epoch))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, total_steps - warmup)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    return LambdaLR(optimizer, factor)


def onecycle(optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int,
             pct_start: float = 0.3) -> LRScheduler:
    """torch's one-cycle schedule peaking at the optimizer's configured lr."""
    max_lr = [g["lr"] for g in optimizer.param_groups]
    return OneCycleLR(optimizer, max_lr=max_lr, total_steps=max(total_steps, 2), pct_start=pct_start)


def constant(optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int) -> LRScheduler:
    """No schedule (the thesis's setting)."""
    return LambdaLR(optimizer, lambda step: 1.0)
