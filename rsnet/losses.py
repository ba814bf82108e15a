"""Losses beyond torch's own (cross-entropy with label smoothing is torch.nn.CrossEntropyLoss)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FocalLoss(nn.Module):
    """The thesis's focal-style loss: mean over the batch of -(1 - p_y)^gamma * log p_y.

    logits: (batch, classes) float; target: (batch,) int64 class indices.
    """

    def __init__(self, gamma: float = 1.0):
        super().__init__()
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
        return (-(1 - log_p.exp()).pow(self.gamma) * log_p).mean()
