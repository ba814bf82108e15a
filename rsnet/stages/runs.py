"""A finished run directory read back: its trained model, rebuilt with the stages' own builders
(:class:`rsnet.stages.context.Context`) from its config.yaml, plan or pruned structure and
checkpoints/model.pt. Used to distil a finished run into a new one (``train.distill.teacher``)
and by ``scripts/bench.py int8`` (ExecuTorch programs are made from a torch model)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from rsnet.data import DataBundle
from rsnet.errors import RsnetError
from rsnet.fileio import load_checkpoint_file

__all__ = ["run_architecture", "trained_run_model", "teacher_run_model", "check_teacher_run"]

# what a teacher run must share with the student: its outputs and the classes held out unseen
SAME_CLASSES = ("num_outputs", "num_base_classes", "class_names", "in_scope", "misc_label", "unseen")


def run_architecture(run_dir: Path, cfg: DictConfig, data: DataBundle) -> tuple[nn.Module, str]:
    """(the untrained structure of a run's trained model, what it was rebuilt from), as the
    pipeline made it: a carved model (compression=prune, netadapt, morphnet) from
    checkpoints/pruned.pt, else one built at plan.json's widths, else the full-width model
    with the N-way head."""
    from rsnet.compress import load_pruned
    from rsnet.models.widths import build_at_widths
    from rsnet.plan.widthplan import WidthPlan
    from rsnet.stages.context import Context
    from rsnet.train import Runtime

    ctx = Context(cfg, run_dir, Runtime(torch.device("cpu"), None, False), data=data)
    pruned, plan = run_dir / "checkpoints" / "pruned.pt", run_dir / "plan.json"
    if pruned.is_file():
        return load_pruned(pruned, ctx.nway_arch, ctx.example()), "checkpoints/pruned.pt"
    if plan.is_file():
        return build_at_widths(cfg.model, data.num_outputs, WidthPlan.load(plan).widths(),
                               ctx.untrained(len(data.base_class_names))), "plan.json"
    return ctx.nway_arch(), "full widths (no plan.json, no checkpoints/pruned.pt)"


def trained_run_model(run_dir: Path, cfg: DictConfig, data: DataBundle, who: str) -> nn.Module:
    """The run's trained model (eval mode): checkpoints/model.pt's weights in the structure
    :func:`run_architecture` rebuilds; ``who`` names the caller in the errors."""
    net, source = run_architecture(run_dir, cfg, data)
    state = load_checkpoint_file(run_dir / "checkpoints" / "model.pt", "trained model")["state_dict"]
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise RsnetError(f"{who}: {run_dir}/checkpoints/model.pt does not fit the model "
                         f"rebuilt from its config.yaml and {source} "
                         f"({str(e).strip().splitlines()[-1].strip()[:200]})") from e
    return net.eval()


def check_teacher_run(path: str | Path) -> Path:
    """The run directory ``train.distill.teacher`` names, if it holds a finished run (its
    config.yaml, classes.json and checkpoints/model.pt); else one clear error."""
    run_dir = Path(path).expanduser()
    missing = [f for f in ("config.yaml", "classes.json", "checkpoints/model.pt")
               if not (run_dir / f).is_file()]
    if missing:
        raise RsnetError(f"train.distill.teacher={path}: not a finished run directory (no "
                         f"{', '.join(missing)}); give the directory of a finished run trained "
                         f"on the same classes, e.g. recipe=finetune with the same dataset "
                         f"settings and seed")
    return run_dir


def teacher_run_model(path: str | Path, data: DataBundle) -> nn.Module:
    """The trained model of the finished run at ``path`` as a distillation teacher for a run on
    ``data``: refused unless it gives the same outputs and held the same classes out as unseen
    (its classes.json), so its logits are the student's targets one for one and it never saw
    the classes the open-set test calls unseen."""
    run_dir = check_teacher_run(path)
    theirs = json.loads((run_dir / "classes.json").read_text())
    ours = json.loads(json.dumps(data.describe()))
    differ = [k for k in SAME_CLASSES if theirs.get(k) != ours.get(k)]
    if differ:
        raise RsnetError(f"train.distill.teacher={path}: its classes differ from this run's "
                         f"({', '.join(differ)} in classes.json); the teacher must be trained on "
                         f"the same class subset (same dataset.* settings and seed)")
    return trained_run_model(run_dir, OmegaConf.load(run_dir / "config.yaml"), data,
                             "train.distill.teacher")
