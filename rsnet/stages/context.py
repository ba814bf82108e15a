"""What the stages of one run share: the config, the run directory, the runtime, the metrics
so far, and what the earlier stages made (the data, the model, the plan, the teacher)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from rsnet.data import DataBundle
from rsnet.loggers import Logger
from rsnet.models import (build_model, has_trained_weights, pretrained_weights, subset_head,
                          untrained_config)
from rsnet.plan import WidthPlan
from rsnet.train import Runtime
from rsnet.fileio import atomic_write_json

log = logging.getLogger(__name__)


@dataclass
class Context:
    cfg: DictConfig
    run_dir: Path
    rt: Runtime
    metrics: dict = field(default_factory=dict)
    data: DataBundle | None = None
    model: nn.Module | None = None  # the baseline, then the N-way model being made
    plan: WidthPlan | None = None
    baseline: nn.Module | None = None  # a copy of the trained C-way baseline (checkpoint, weights)
    teacher: nn.Module | None = None  # the baseline, when it is distilled into the model
    pruned: bool = False  # the model was carved from the baseline (prune, netadapt, morphnet)
    history: list[dict] = field(default_factory=list)
    finished: bool = False  # set by a stage after which no later stage runs (other ranks)
    logger: Logger = field(default_factory=Logger)  # experiment tracking (rank 0's; rsnet.loggers)

    @property
    def main(self) -> bool:
        """Rank 0 (or the only process): it alone reads and writes the run directory."""
        return self.rt.dist.is_main

    @property
    def input_size(self) -> int:
        return self.cfg.model.input_size

    def example(self) -> torch.Tensor:
        """An input batch of the model's shape (zeros), for tracing and pruning."""
        return torch.zeros(2, 3, self.input_size, self.input_size)

    def base_names(self) -> list[str] | None:
        """Names of the dataset's labels given by the model: the pretrained weights'
        categories (``model.arch.weights``); None: the dataset's own."""
        weights = pretrained_weights(self.cfg.model)
        return None if weights is None else list(weights.meta["categories"])

    def untrained(self, num_classes: int) -> nn.Module:
        """The model config's architecture, freshly initialised, ``num_classes`` outputs."""
        return build_model(untrained_config(self.cfg.model), num_classes)

    def nway_arch(self) -> nn.Module:
        """The unpruned N-way architecture as the stages make it (the C-way build, re-headed),
        to load pruned weights into."""
        net = self.untrained(len(self.data.base_class_names))
        return self._head(net, "reset") if self.data.subset is not None else net

    def to_nway(self, model: nn.Module) -> nn.Module:
        """The C-way model re-headed for the subset (in place): the trained baseline's rows
        (``model.head``), or a fresh head for an untrained one."""
        if self.data.subset is not None:
            self._head(model, self.cfg.model.head if has_trained_weights(self.cfg.model) else "reset")
        return model

    def _head(self, model: nn.Module, mode: str) -> nn.Module:
        s = self.data.subset
        return subset_head(model, s.classes, s.num_base_classes, s.misc, mode)


def cached_json(path: Path, compute: Callable[[], dict]) -> dict:
    """The JSON artifact at ``path``, computed and written (atomically) when missing."""
    if path.exists():
        log.info("stage artifact %s exists: skipping", path.name)
        return json.loads(path.read_text())
    result = compute()
    atomic_write_json(path, result)
    return result
