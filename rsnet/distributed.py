"""Data-parallel training in processes started by torchrun (DistributedDataParallel).

torchrun starts one process per GPU (or per CPU slot) and tells each its place through the
environment: RANK (0 .. WORLD_SIZE-1 over all nodes), LOCAL_RANK (its GPU on its node) and
WORLD_SIZE. Without them, or with WORLD_SIZE=1, rsnet runs as one process and every function
here is a no-op, so the single-process path has no overhead.

The rules rsnet follows in a distributed run (rsnet.pipeline.run, rsnet.train.fit):

- rank 0 alone reads and writes the run directory (logs, checkpoints, metrics, reports,
  exports); what the other ranks need from it (the width plan, the pruned model, a checkpoint
  to resume from, whether training is already done) rank 0 sends them (:func:`on_main`), so
  the run directory need not be on a filesystem the other nodes see;
- rank 0 alone runs the stages before training (baseline, plan, pruning with its fine-tuning
  steps) while the others wait; all ranks train together; then rank 0 alone evaluates,
  exports and reports, and the other ranks leave the process group and exit.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from rsnet.errors import RsnetError

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a torchrun job (rank 0 of 1 when not started by torchrun)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> DistInfo:
    """Read RANK, LOCAL_RANK and WORLD_SIZE as torchrun sets them."""
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as e:
        raise RsnetError(f"RANK / LOCAL_RANK / WORLD_SIZE must be integers ({e}); start "
                         f"distributed runs with torchrun") from e
    if world_size < 1 or not 0 <= rank < world_size:
        raise RsnetError(f"RANK={rank} and WORLD_SIZE={world_size} do not fit together; start "
                         f"distributed runs with torchrun")
    return DistInfo(rank, local_rank, world_size)


def init(info: DistInfo, backend: str, device: torch.device, timeout_min: float) -> None:
    """Join the job's process group (once per process; torchrun provides the rendezvous)."""
    if not info.enabled or dist.is_initialized():
        return
    dist.init_process_group(backend, timeout=timedelta(minutes=timeout_min),
                            device_id=device if device.type == "cuda" else None)


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def shutdown() -> None:
    """Leave the process group (the end of a torchrun job's process); a no-op otherwise."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (pickled; CPU tensors stay on the CPU)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(compute: Callable[[], T], info: DistInfo) -> T:
    """Run ``compute`` on rank 0 alone; every rank returns rank 0's result. Without a
    distributed ``info`` it simply returns ``compute()``.

    The other ranks wait meanwhile (up to train.dist_timeout_min)."""
    if not info.enabled:
        return compute()
    return broadcast_object(compute() if info.is_main else None)


def gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """The ranks' CPU tensors (sizes may differ along dim 0) concatenated in rank order, on
    every rank."""
    if not active():
        return tensor
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, tensor.cpu())
    return torch.cat(parts)


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sums of ``values`` over all ranks."""
    if not active():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def average_buffers(model: nn.Module) -> None:
    """Average the floating-point buffers (BatchNorm running statistics) over all ranks.

    Each rank's BatchNorm tracks the statistics of its own shard of the batches; averaging
    them at the end of every epoch leaves every rank with the same model (as timm does)."""
    if not active():
        return
    world = dist.get_world_size()
    for buf in model.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf)
            buf.div_(world)


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel when distributed, else ``model`` itself.

    DDP sends rank 0's weights and buffers to all ranks when it is built and averages the
    gradients in backward. It does not broadcast the buffers before every step: BatchNorm
    statistics stay per rank during an epoch and are averaged at its end
    (:func:`average_buffers`)."""
    if not active():
        return model
    ddp = nn.parallel.DistributedDataParallel
    # newer torch names the per-step buffer broadcast forward_sync_buffers (the weights and
    # buffers are still sent once when DDP is built)
    no_buffer_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in \
        inspect.signature(ddp.__init__).parameters else {"broadcast_buffers": False}
    device_ids = [device.index] if device.type == "cuda" else None
    return ddp(model, device_ids=device_ids, **no_buffer_sync)


def convert_sync_batchnorm(model: nn.Module) -> Callable[[], None]:
    """Replace the BatchNorm layers of ``model`` in place by SyncBatchNorm layers that share
    their parameters and buffers; returns the function that puts the original layers back
    (their tensors hold the trained values), so evaluation and export see plain BatchNorm."""
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and \
                    not isinstance(child, nn.SyncBatchNorm):
                setattr(parent, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
                swapped.append((parent, name, child))

    def restore() -> None:
        for parent, name, child in swapped:
            synced = getattr(parent, name)
            child.train(synced.training)
            setattr(parent, name, child)

    return restore
