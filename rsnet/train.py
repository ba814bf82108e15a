"""One loop for training from scratch and fine-tuning, and batched evaluation.

``fit`` checkpoints after every epoch into ``ckpt_dir/last.pt`` and resumes from it when
called again: the data order, the augmentation and the global RNG of epoch e depend only
on (seed, e), so a run killed and resumed ends with the same weights and metrics as an
uninterrupted one (on CPU). The best epoch on the validation split is kept in
``ckpt_dir/best.pt``; ``fit`` returns with those weights loaded.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from hydra.utils import instantiate
from torch import nn

from rsnet.config import TrainConfig
from rsnet.data import DataBundle
from rsnet.data.loader import BatchLoader, Split
from rsnet.distill import DistillationLoss
from rsnet.errors import RsnetError
from rsnet.progress import bar
from rsnet.metrics import scope_metrics, topk_accuracy
from rsnet.utils import atomic_torch_save, load_checkpoint_file

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Where and how tensors run: device, autocast dtype (None = fp32), memory format."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    channels_last: bool

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def prepare(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model


def resolve_runtime(cfg: TrainConfig) -> Runtime:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available()
                          else "cpu" if cfg.device == "auto" else cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RsnetError(f"train.device={cfg.device} but CUDA is not available; use train.device=cpu")
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if cfg.precision not in dtypes:
        raise RsnetError(f"train.precision={cfg.precision!r}: use one of {list(dtypes)}")
    if cfg.precision == "fp16" and device.type != "cuda":
        raise RsnetError("train.precision=fp16 needs CUDA; use bf16 on the CPU")
    return Runtime(device, dtypes[cfg.precision], cfg.channels_last)


def main_logits(output: torch.Tensor | tuple) -> torch.Tensor:
    """The main head's logits of a model that may also return auxiliary logits."""
    return output[0] if isinstance(output, (tuple, list)) else output


def make_loader(split: Split, data: DataBundle, batch_size: int, rt: Runtime, train: bool,
                seed: int = 0) -> BatchLoader:
    aug = data.augment
    return BatchLoader(split, batch_size, data.mean, data.std, shuffle=train,
                       crop_padding=aug.crop_padding if train else 0, flip=aug.flip and train,
                       drop_last=train and len(split) > batch_size, seed=seed,
                       channels_last=rt.channels_last, device=rt.device)


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
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


def fit(model: nn.Module, data: DataBundle, cfg: TrainConfig, rt: Runtime, ckpt_dir: Path,
        seed: int, on_epoch_end: Callable[[int, dict], None] | None = None,
        distill: DistillationLoss | None = None, hooks: Sequence[StepHook] = ()) -> list[dict]:
    """Train ``model`` on data.train for cfg.epochs, select on data.val; returns the history.

    The model must already be on ``rt.device`` (see ``Runtime.prepare``). ``distill``
    replaces the main head's loss by Hinton's loss against a teacher; ``hooks`` run after
    every optimizer step and are checkpointed with the run.
    """
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    criterion = instantiate(cfg.loss)
    optimizer = instantiate(cfg.optimizer)(model.parameters())
    loader = make_loader(data.train, data, cfg.batch_size, rt, train=True, seed=seed)
    scheduler = instantiate(cfg.scheduler)(optimizer, total_steps=cfg.epochs * len(loader),
                                           steps_per_epoch=len(loader))
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.autocast_dtype == torch.float16)
    history: list[dict] = []
    best = {"epoch": -1, "score": -math.inf}
    start = 0
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    if last_path.exists():
        state = load_checkpoint_file(last_path, "train checkpoint")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        history, best, start = state["history"], state["best"], state["epoch"] + 1
        for hook, hook_state in zip(hooks, state.get("hooks", [])):
            hook.load_state_dict(hook_state)
        log.info("resuming training from %s after epoch %d", last_path, start)

    for epoch in bar(range(start, cfg.epochs), desc="epochs", initial=start, total=cfg.epochs):
        torch.manual_seed(seed * 1000 + epoch)  # dropout etc.: same stream whether resumed or not
        loader.set_epoch(epoch)
        model.train()
        t0, seen, loss_sum, correct = time.perf_counter(), 0, 0.0, 0
        batches = bar(loader, desc=f"epoch {epoch + 1}", leave=False)
        for step, (x, y) in enumerate(batches):
            with rt.autocast():
                output = model(x)
                kd = (lambda logits: distill(logits, y, x)) if distill is not None else None
                loss = _loss(criterion, output, y, cfg.aux_weight, kd)
            if not torch.isfinite(loss):
                raise RsnetError(f"the training loss became {loss.item()} at epoch {epoch + 1} step "
                                 f"{step}; lower train.optimizer.lr or use train.precision=fp32")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            for hook in hooks:
                hook.step(epoch * len(loader) + step)
            seen += len(y)
            loss_sum += loss.item() * len(y)
            correct += (main_logits(output).argmax(1) == y).sum().item()
            if step % 20 == 0:
                batches.set_postfix(loss=f"{loss.item():.3f}")
        train_time = time.perf_counter() - t0
        logits = predict(model, data.val, data, rt, cfg.eval_batch_size, "val")
        val = split_metrics(logits, data.val, data.misc_label)
        row = {"epoch": epoch + 1, "train/loss": loss_sum / seen, "train/acc": correct / seen,
               "train/images_per_s": seen / train_time, "train/epoch_s": train_time,
               "lr": optimizer.param_groups[0]["lr"], **{f"val/{k}": v for k, v in val.items()}}
        history.append(row)
        log.info("epoch %d/%d  loss %.4f  train acc %.4f  val acc %.4f  %.0f img/s", epoch + 1,
                 cfg.epochs, row["train/loss"], row["train/acc"], row["val/acc"],
                 row["train/images_per_s"])
        if cfg.select_on not in row:
            raise RsnetError(f"train.select_on={cfg.select_on!r} is not a validation metric; "
                             f"use one of {[k for k in row if k.startswith('val/')]}")
        if row[cfg.select_on] > best["score"]:
            best = {"epoch": epoch + 1, "score": row[cfg.select_on]}
            atomic_torch_save(model.state_dict(), best_path)
        atomic_torch_save({"epoch": epoch, "model": model.state_dict(),
                           "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                           "scaler": scaler.state_dict(), "history": history, "best": best,
                           "hooks": [h.state_dict() for h in hooks]},
                          last_path)
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)
    if best_path.exists():
        model.load_state_dict(load_checkpoint_file(best_path, "best checkpoint"))
    return history
