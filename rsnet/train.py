"""One loop for training from scratch and fine-tuning, and batched evaluation.

``fit`` checkpoints after every epoch, and within an epoch every ``train.checkpoint_every_min``
minutes, into ``ckpt_dir/last.pt`` and resumes from it when called again: the data order and
the augmentation of epoch e depend only on (seed, e), and a mid-epoch checkpoint keeps the
step, the running sums and the global RNG, so a run killed and resumed ends with the same
weights and metrics as an uninterrupted one (on CPU). The best epoch on the validation split is kept in
``ckpt_dir/best.pt``; ``fit`` returns with those weights loaded.

Precision (``train.precision``): ``auto`` (bf16 where the device has it in hardware, else
fp32: emulated bf16 trains slower than fp32 on a CPU without AVX512-BF16 or AMX);
``fp32``; ``bf16`` autocast on the CPU or CUDA; ``fp16``
autocast on CUDA with a ``torch.amp.GradScaler`` (loss scaling against fp16 gradient
underflow), whose state is saved in and restored from ``last.pt``.

``train.compile`` runs the training step through ``torch.compile`` (inductor; evaluation and
checkpoints use the eager module, so a compiled run resumes an eager one and back). Its
default ``auto`` compiles where the model family's measurement says it pays
(``model.compile_pays``, from ``scripts/bench.py compile``); the first compiled step's time,
mostly compilation, is logged and kept as ``train/first_step_s``.

Under torchrun (WORLD_SIZE > 1) ``fit`` trains with DistributedDataParallel: each rank takes
its slice of every global batch of ``train.batch_size`` images (see BatchLoader), gradients
are averaged, BatchNorm statistics are averaged at the end of every epoch (or synchronised
every step with ``train.sync_bn``), validation is split among the ranks and gathered, and
rank 0 alone writes the checkpoints; all ranks end with the same weights and history.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from rsnet import distributed
from rsnet.config import TrainConfig
from rsnet.data import DataBundle
from rsnet.data.loader import BatchLoader, Split
from rsnet.distill import DistillationLoss
from rsnet.distributed import DistInfo
from rsnet.errors import RsnetError
from rsnet.hardware import native_bf16
from rsnet.progress import bar
from rsnet.metrics import scope_metrics, topk_accuracy
from rsnet.fileio import atomic_torch_save, load_checkpoint_file

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Where and how tensors run: device, autocast dtype (None = fp32), memory format, and
    this process's place in a torchrun job (``dist``; one process by default)."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    channels_last: bool
    dist: DistInfo = DistInfo()
    sync_bn: bool = False  # SyncBatchNorm in data-parallel training
    compile: bool = False  # fit runs its training step through torch.compile

    def local(self) -> Runtime:
        """The same device and precision for work one process does alone (no DDP)."""
        return replace(self, dist=DistInfo(), sync_bn=False)

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def prepare(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model


def resolve_runtime(cfg: TrainConfig, compile_pays: bool = False) -> Runtime:
    """Device, precision, memory format and torch.compile from the train settings
    (``compile_pays``: what train.compile=auto follows, the model's ``compile_pays``). Under
    torchrun (WORLD_SIZE > 1) it also joins the job's process group, each rank on
    cuda:LOCAL_RANK."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    info = distributed.from_env()
    try:
        device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available()
                              else "cpu" if cfg.device == "auto" else cfg.device)
    except RuntimeError as e:
        raise RsnetError(f"train.device={cfg.device!r}: use auto, cpu, cuda or cuda:N") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RsnetError(f"train.device={cfg.device} but CUDA is not available; use train.device=cpu")
    if device.type == "cuda" and info.enabled:
        device = _rank_gpu(cfg, info)
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if cfg.precision not in (*dtypes, "auto"):
        raise RsnetError(f"train.precision={cfg.precision!r}: use auto or one of {list(dtypes)}")
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16" if native_bf16(device) else "fp32"
        log.info("train.precision=auto: %s on %s", precision, device)
    if cfg.precision == "fp16" and device.type != "cuda":
        raise RsnetError(f"train.precision=fp16 needs a CUDA device (train.device={cfg.device} "
                         f"resolved to {device}); use train.precision=bf16 or fp32 on the CPU")
    if cfg.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise RsnetError(f"train.precision=bf16: {torch.cuda.get_device_name(device)} has no "
                         f"bfloat16 support; use train.precision=fp16 (or fp32)")
    if info.enabled:
        _check_distributed(cfg, info, device)
        backend = cfg.dist_backend if cfg.dist_backend != "auto" else \
            "nccl" if device.type == "cuda" else "gloo"
        distributed.init(info, backend, device, cfg.dist_timeout_min)
    return Runtime(device, dtypes[precision], cfg.channels_last, info, cfg.sync_bn,
                   _compile(cfg.compile, compile_pays))


def _compile(setting, compile_pays: bool) -> bool:
    """train.compile: true / false as given, auto = where the model family's measurement says
    it pays (model.compile_pays)."""
    value = str(setting).lower()
    if value not in ("auto", "true", "false"):
        raise RsnetError(f"train.compile={setting!r}: use auto, true or false")
    return compile_pays if value == "auto" else value == "true"


def _rank_gpu(cfg: TrainConfig, info: DistInfo) -> torch.device:
    """cuda:LOCAL_RANK, the GPU torchrun gave this process."""
    if cfg.device not in ("auto", "cuda"):
        raise RsnetError(f"train.device={cfg.device}: under torchrun every process uses the GPU "
                         f"of its LOCAL_RANK; use train.device=cuda (or auto)")
    if info.local_rank >= torch.cuda.device_count():
        raise RsnetError(f"LOCAL_RANK={info.local_rank} but {torch.cuda.device_count()} GPUs are "
                         f"visible: start at most that many processes per node "
                         f"(torchrun --nproc_per_node)")
    device = torch.device("cuda", info.local_rank)
    torch.cuda.set_device(device)
    return device


def _check_distributed(cfg: TrainConfig, info: DistInfo, device: torch.device) -> None:
    """Settings that cannot work with WORLD_SIZE processes."""
    if cfg.dist_backend not in ("auto", "nccl", "gloo"):
        raise RsnetError(f"train.dist_backend={cfg.dist_backend!r}: use auto, nccl or gloo")
    if cfg.dist_backend == "nccl" and device.type != "cuda":
        raise RsnetError("train.dist_backend=nccl needs CUDA devices; use train.dist_backend=gloo "
                         "(or auto) on the CPU")
    if cfg.sync_bn and device.type != "cuda":
        raise RsnetError("train.sync_bn=true needs CUDA devices (SyncBatchNorm does not run on "
                         "the CPU); use train.sync_bn=false")
    if cfg.batch_size % info.world_size:
        raise RsnetError(f"train.batch_size={cfg.batch_size} is the global batch, split among "
                         f"WORLD_SIZE={info.world_size} processes: make it a multiple of "
                         f"{info.world_size}")


def main_logits(output: torch.Tensor | tuple) -> torch.Tensor:
    """The main head's logits of a model that may also return auxiliary logits."""
    return output[0] if isinstance(output, (tuple, list)) else output


def _check_finite(loss_sum: torch.Tensor, epoch: int, step: int) -> None:
    if not torch.isfinite(loss_sum):
        raise RsnetError(f"the training loss became non-finite by epoch {epoch + 1} step {step}; "
                         f"lower train.optimizer.lr or use train.precision=fp32")


def make_loader(split: Split, data: DataBundle, batch_size: int, rt: Runtime, train: bool,
                seed: int = 0) -> BatchLoader:
    """Batches of a split; a training loader gives each rank its slice of every global batch."""
    aug = data.augment
    rank, world = (rt.dist.rank, rt.dist.world_size) if train else (0, 1)
    if train and len(split) < world:
        raise RsnetError(f"{len(split)} training images cannot be shared by {world} processes")
    return BatchLoader(split, batch_size, data.mean, data.std, shuffle=train,
                       crop_padding=aug.crop_padding if train else 0, flip=aug.flip and train,
                       drop_last=train and len(split) > batch_size, seed=seed,
                       channels_last=rt.channels_last, device=rt.device, rank=rank,
                       world_size=world)


@torch.no_grad()
def predict(model: nn.Module, split: Split, data: DataBundle, rt: Runtime, batch_size: int,
            desc: str = "eval") -> torch.Tensor:
    """Logits (num_images, classes) float32 on the CPU, in the split's order (eval mode)."""
    was_training = model.training
    model.eval()
    out = []
    loader = make_loader(split, data, batch_size, rt, train=False)
    for x, _ in bar(loader, desc=desc, leave=False):
        with rt.autocast():
            out.append(main_logits(model(x)).float().cpu())
    model.train(was_training)
    return torch.cat(out)


def predict_sharded(model: nn.Module, split: Split, data: DataBundle, rt: Runtime,
                    batch_size: int, desc: str = "eval") -> torch.Tensor:
    """:func:`predict` with the split shared among the ranks of a data-parallel run; every
    rank gets all the logits, in the split's order. One process: :func:`predict` itself."""
    if not rt.dist.enabled:
        return predict(model, split, data, rt, batch_size, desc)
    n, world, rank = len(split), rt.dist.world_size, rt.dist.rank
    part = slice(rank * n // world, (rank + 1) * n // world)
    shard = Split(split.images[part], split.targets[part], split.orig_labels[part])
    logits = predict(model, shard, data, rt, batch_size, desc) if len(shard) else torch.empty(0)
    return distributed.gather_cat(logits)  # torch.cat skips an empty shard's 1-d tensor


# Validation metrics that can select the best epoch, and whether higher is better.
SELECT_ON = {"val/acc": True, "val/acc5": True, "val/loss": False, "val/acc_local": True,
             "val/acc_global": True, "val/acc_raw": True}


def check_select_on(select_on: str) -> None:
    if select_on not in SELECT_ON:
        raise RsnetError(f"train.select_on={select_on!r}: use one of {', '.join(SELECT_ON)} "
                         f"(the local/global/raw ones need a misc class)")


def selection_score(row: dict, select_on: str) -> float:
    """The epoch row's score for best-epoch selection, higher = better (a loss is negated)."""
    if select_on not in row:
        raise RsnetError(f"train.select_on={select_on!r} is not a validation metric of this run; "
                         f"use one of {[k for k in row if k in SELECT_ON]}")
    return row[select_on] if SELECT_ON.get(select_on, True) else -row[select_on]


def split_metrics(logits: torch.Tensor, split: Split, misc_label: int | None) -> dict[str, float]:
    """acc / acc5 / loss of logits on a split, plus local/global/raw when a misc class exists."""
    m = {"acc": topk_accuracy(logits, split.targets, 1),
         "acc5": topk_accuracy(logits, split.targets, 5),
         "loss": nn.functional.cross_entropy(logits, split.targets).item()}
    if misc_label is not None:
        m.update(scope_metrics(logits, split.targets, misc_label))
    return m


def _loss(criterion: nn.Module, output, y: torch.Tensor, aux_weight: float,
          main_loss: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """criterion on the main logits (or ``main_loss``, e.g. distillation) + weighted aux heads."""
    main = main_logits(output)
    loss = main_loss(main) if main_loss is not None else criterion(main, y)
    if isinstance(output, (tuple, list)):  # auxiliary heads (GoogLeNet in train mode)
        loss = loss + aux_weight * sum(criterion(o, y) for o in output[1:])
    return loss


class StepHook(Protocol):
    """Called after every optimizer step (e.g. gradual magnitude pruning keeping its masks)."""

    def step(self, global_step: int) -> bool: ...
    # False while the hook is still changing what the model is (e.g. a sparsity schedule not
    # yet at its final sparsity): an epoch that ends unsettled is never the selected epoch
    def settled(self) -> bool: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


def fit(model: nn.Module, data: DataBundle, optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler, loss: nn.Module, *, epochs: int,
        loader: BatchLoader, rt: Runtime, ckpt_dir: Path, seed: int, aux_weight: float = 0.0,
        select_on: str = "val/acc", eval_batch_size: int = 500,
        on_epoch_end: Callable[[int, dict], None] | None = None,
        distill: DistillationLoss | None = None, hooks: Sequence[StepHook] = (),
        checkpoint_every_s: float = 600.0) -> list[dict]:
    """Train ``model`` for ``epochs`` on ``loader`` (data.train's batches, see
    :func:`make_loader`) with the built ``optimizer`` (over the model's parameters),
    ``scheduler`` (stepped every batch) and ``loss``; select the best epoch on data.val by
    ``select_on`` among the epochs that end with every hook settled; returns the history. An
    auxiliary head's loss weighs ``aux_weight``.

    The model must already be on ``rt.device`` (see ``Runtime.prepare``). ``distill``
    replaces the main head's loss by Hinton's loss against a teacher; ``hooks`` run after
    every optimizer step and are checkpointed with the run. Killed, the same call resumes
    from ``ckpt_dir``: from the last epoch's end, or from the last mid-epoch checkpoint,
    written every ``checkpoint_every_s`` seconds of training (0: at epoch ends only). In a data-parallel run every rank calls ``fit`` with the same
    arguments; only rank 0 reads or writes ``ckpt_dir``.
    """
    check_select_on(select_on)
    restore_bn = distributed.convert_sync_batchnorm(model) if rt.sync_bn and rt.dist.enabled else None
    run = _Fit(loss, optimizer, scheduler, loader, epochs, aux_weight, select_on, eval_batch_size,
               seed, rt, ckpt_dir, distill, tuple(hooks), checkpoint_every_s)
    try:
        return _train_epochs(model, data, run, on_epoch_end)
    finally:
        if restore_bn is not None:
            restore_bn()


@dataclass(frozen=True)
class _Fit:
    """fit's arguments, as the epoch loop reads them."""
    loss: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loader: BatchLoader
    epochs: int
    aux_weight: float
    select_on: str
    eval_batch_size: int
    seed: int
    rt: Runtime
    ckpt_dir: Path
    distill: DistillationLoss | None
    hooks: tuple[StepHook, ...]
    checkpoint_every_s: float


def _load_on_main(path: Path, what: str, rt: Runtime):
    """The checkpoint at ``path`` (None if absent) as rank 0 reads it, on every rank."""
    def load():
        return load_checkpoint_file(path, what) if path.exists() else None
    return distributed.on_main(load, rt.dist)


def _train_epoch(net: nn.Module, run: _Fit, scaler, epoch: int, partial: dict | None,
                 save_partial: Callable[[dict], None] | None) -> tuple[int, float, int, float, float]:
    """One epoch of optimizer steps; returns (images seen, summed loss, correct, seconds,
    seconds of the first step). ``partial`` (from a mid-epoch checkpoint) continues the epoch
    after its last saved step; ``save_partial`` is called with the epoch's state every
    ``run.checkpoint_every_s`` seconds (None: no mid-epoch checkpoints)."""
    rt, loader, distill, optimizer = run.rt, run.loader, run.distill, run.optimizer
    torch.manual_seed(run.seed * 1000 + epoch)  # dropout etc.: same stream whether resumed or not
    loader.set_epoch(epoch)
    net.train()
    start, seen, first_step, elapsed = 0, 0, 0.0, 0.0
    # summed on the device: no host sync per step (a GPU runs ahead of the Python loop)
    loss_sum = torch.zeros((), device=rt.device)
    correct = torch.zeros((), dtype=torch.long, device=rt.device)
    if partial is not None:
        start, seen, first_step, elapsed = (partial[k] for k in ("step", "seen", "first_step", "seconds"))
        loss_sum += partial["loss_sum"]
        correct += partial["correct"]
        torch.set_rng_state(partial["rng"])
        log.info("resuming epoch %d at step %d/%d", epoch + 1, start, len(loader))
    t0 = last_save = time.perf_counter()
    batches = bar(loader.batches(start), desc=f"epoch {epoch + 1}", leave=False,
                  initial=start, total=len(loader))
    for step, (x, y) in enumerate(batches, start):
        with rt.autocast():
            output = net(x)
            kd = (lambda logits: distill(logits, y, x)) if distill is not None else None
            loss = _loss(run.loss, output, y, run.aux_weight, kd)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()  # DDP averages the gradients over the ranks here
        scaler.step(optimizer)
        scaler.update()
        run.scheduler.step()
        for hook in run.hooks:
            hook.step(epoch * len(loader) + step)
        if step == 0:
            first_step = time.perf_counter() - t0
        seen += len(y)
        loss_sum += loss.detach().float() * len(y)
        correct += (main_logits(output).argmax(1) == y).sum()
        if step % 20 == 0 or step == len(loader) - 1:  # a non-finite loss makes the sum so
            _check_finite(loss_sum, epoch, step)
            batches.set_postfix(loss=f"{loss.item():.3f}")
        now = time.perf_counter()
        if save_partial is not None and step < len(loader) - 1 and \
                now - last_save >= run.checkpoint_every_s:
            save_partial({"epoch": epoch, "step": step + 1, "seen": seen,
                          "loss_sum": loss_sum.item(), "correct": correct.item(),
                          "first_step": first_step, "seconds": elapsed + now - t0,
                          "rng": torch.get_rng_state()})
            last_save = time.perf_counter()
    loss_sum, correct = loss_sum.item(), correct.item()  # waits for the epoch's last step
    train_time = elapsed + time.perf_counter() - t0
    return seen, loss_sum, correct, train_time, first_step


def _resume(model: nn.Module, run: _Fit, scaler, last_path: Path
            ) -> tuple[list[dict], dict, int, dict | None]:
    """Model, optimizer, schedule, scaler and hooks restored from ``last_path`` when it exists;
    returns (history, best, first epoch to run, the mid-epoch state of that epoch or None)."""
    state = _load_on_main(last_path, "train checkpoint", run.rt)
    if state is None:
        return [], {"epoch": -1, "score": -math.inf}, 0, None
    model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if state["scaler"]:  # empty when saved without fp16
        scaler.load_state_dict(state["scaler"])
    for hook, hook_state in zip(run.hooks, state.get("hooks", [])):
        hook.load_state_dict(hook_state)
    start, partial = state["epoch"] + 1, state.get("partial")  # partial: saved in mid-epoch
    log.info("resuming training from %s after epoch %d%s", last_path, start,
             f" and step {partial['step']} of epoch {start + 1}" if partial else "")
    return state["history"], state["best"], start, partial


def _train_epochs(model: nn.Module, data: DataBundle, run: _Fit,
                  on_epoch_end: Callable[[int, dict], None] | None) -> list[dict]:
    rt, optimizer, scheduler, hooks = run.rt, run.optimizer, run.scheduler, run.hooks
    main = rt.dist.is_main
    if main:
        run.ckpt_dir.mkdir(parents=True, exist_ok=True)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.autocast_dtype == torch.float16)
    last_path, best_path = run.ckpt_dir / "last.pt", run.ckpt_dir / "best.pt"
    history, best, start, partial = _resume(model, run, scaler, last_path)
    net = distributed.wrap_ddp(model, rt.device) if rt.dist.enabled else model
    if rt.compile:  # the training step only; evaluation and checkpoints use ``model`` itself
        net = torch.compile(net)

    def save_last(epoch_done: int, partial_state: dict | None = None) -> None:
        """last.pt after ``epoch_done`` (0-based; -1 = none) whole epochs and, in mid-epoch,
        the running epoch's state."""
        atomic_torch_save({"epoch": epoch_done, "model": model.state_dict(),
                           "optimizer": optimizer.state_dict(),
                           "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                           "history": history, "best": best,
                           "hooks": [h.state_dict() for h in hooks],
                           "world_size": rt.dist.world_size, "partial": partial_state}, last_path)

    # Mid-epoch checkpoints in one process only: under DDP each rank holds its own running
    # sums and the ranks would have to agree on the step; there last.pt is written per epoch.
    mid_epoch = run.checkpoint_every_s > 0 and not rt.dist.enabled
    for epoch in bar(range(start, run.epochs), desc="epochs", initial=start, total=run.epochs):
        seen, loss_sum, correct, train_time, first_step = _train_epoch(
            net, run, scaler, epoch, partial,
            (lambda p, e=epoch: save_last(e - 1, p)) if mid_epoch else None)
        if rt.dist.enabled:  # the whole job's epoch, and one model on every rank
            seen, loss_sum, correct = distributed.all_reduce_sum([seen, loss_sum, correct], rt.device)
            distributed.average_buffers(model)
        logits = predict_sharded(model, data.val, data, rt, run.eval_batch_size, "val")
        val = split_metrics(logits, data.val, data.misc_label)
        row = {"epoch": epoch + 1, "train/loss": loss_sum / seen, "train/acc": correct / seen,
               "train/images_per_s": seen / train_time, "train/epoch_s": train_time,
               "lr": optimizer.param_groups[0]["lr"], **{f"val/{k}": v for k, v in val.items()}}
        if rt.compile and epoch == start and partial is None:  # this process compiled the step
            row["train/first_step_s"] = first_step
            log.info("torch.compile: the first training step took %.1f s (compilation)", first_step)
        partial = None
        history.append(row)
        log.info("epoch %d/%d  loss %.4f  train acc %.4f  val acc %.4f  %.0f img/s", epoch + 1,
                 run.epochs, row["train/loss"], row["train/acc"], row["val/acc"],
                 row["train/images_per_s"])
        score = selection_score(row, run.select_on)  # higher = better, a loss negated
        # e.g. a less sparse model half-way along a pruning schedule is not a candidate
        settled = all(hook.settled() for hook in hooks)
        if not settled:  # marked for report.history_metrics (other rows stay as they were)
            row["train/selectable"] = 0
        if settled and score > best["score"]:  # the same decision on every rank: same logits
            best = {"epoch": epoch + 1, "score": score}
            if main:
                atomic_torch_save(model.state_dict(), best_path)
        if main:
            save_last(epoch)
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)
    best_state = _load_on_main(best_path, "best checkpoint", rt)
    if best_state is not None:
        model.load_state_dict(best_state)
    elif history:
        log.warning("no epoch ended with every step hook settled (e.g. a sparsity schedule "
                    "at its final sparsity): the last epoch's weights are kept")
    return history
