"""Knowledge distillation (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural
Network").

The student is trained on

    L = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(z_s, y)

where z_t are the logits of a frozen teacher (the trained C-way baseline) on the same batch.
T^2 keeps the soft term's gradients on the scale of the hard term's as T grows. When the
student has the N outputs of a class subset (misc at label 0, see ``rsnet.data.subsets``),
the teacher's C logits are first mapped onto those N outputs by :func:`subset_teacher_logits`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rsnet.data.subsets import ClassSubset
from rsnet.errors import RsnetError

__all__ = ["kd_loss", "subset_teacher_logits", "DistillationLoss"]


def _check_kd_settings(temperature: float, alpha: float) -> None:
    if not temperature > 0:
        raise RsnetError(f"train.distill.temperature={temperature} must be > 0 (typically 2-5)")
    if not 0.0 <= alpha <= 1.0:
        raise RsnetError(f"train.distill.alpha={alpha} must be in [0, 1] (the weight of the "
                         f"teacher's soft targets; 1 - alpha weighs the labels)")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
            temperature: float, alpha: float) -> torch.Tensor:
    """Hinton's distillation loss, a scalar averaged over the batch.

    alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * CE(student, targets),
    KL summed over classes and averaged over the batch (``batchmean``, not torch's default
    ``mean``, which would also divide by the number of classes), CE averaged over the batch.

    Args:
        student_logits, teacher_logits: (batch, classes), any float dtype; computed in float32.
        targets: (batch,) int64 class indices (the hard labels).
        temperature: T > 0. alpha: in [0, 1]; 0 is plain cross-entropy, 1 pure distillation.
    """
    _check_kd_settings(temperature, alpha)
    if student_logits.shape != teacher_logits.shape:
        raise RsnetError(f"the teacher gives logits of shape {tuple(teacher_logits.shape)} but the "
                         f"student {tuple(student_logits.shape)}; a teacher for a class subset "
                         f"needs the subset (train.distill.*) to map its outputs")
    student = student_logits.float()
    loss = student.new_zeros(())
    if alpha > 0:
        log_p_student = F.log_softmax(student / temperature, dim=1)
        log_p_teacher = F.log_softmax(teacher_logits.detach().float() / temperature, dim=1)
        kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
        loss = loss + alpha * temperature ** 2 * kl
    if alpha < 1:
        loss = loss + (1 - alpha) * F.cross_entropy(student, targets)
    return loss


def subset_teacher_logits(teacher_logits: torch.Tensor, subset: ClassSubset) -> torch.Tensor:
    """Map the teacher's (batch, C) logits onto the student's (batch, N) outputs; float32.

    With a misc class: column k + 1 is the teacher logit of ``subset.classes[k]`` and column 0
    is logsumexp of the out-of-scope classes' logits, so that softmax of the result equals the
    teacher's C-way probabilities with the out-of-scope ones summed into misc, exactly.
    Without misc: the in-scope columns only, so their softmax is the teacher's probabilities
    renormalised over the subset (the out-of-scope mass is dropped).
    """
    if teacher_logits.ndim != 2 or teacher_logits.shape[1] != subset.num_base_classes:
        raise RsnetError(f"the teacher gives logits of shape {tuple(teacher_logits.shape)}; the "
                         f"class subset needs (batch, {subset.num_base_classes}): use the "
                         f"full-label-space baseline as the teacher (train.distill.*)")
    logits = teacher_logits.float()
    in_scope = torch.tensor(subset.classes, dtype=torch.long, device=logits.device)
    selected = logits.index_select(1, in_scope)
    if not subset.misc:
        return selected
    out_of_scope = torch.ones(subset.num_base_classes, dtype=torch.bool, device=logits.device)
    out_of_scope[in_scope] = False
    if not out_of_scope.any():  # logsumexp over nothing is -inf and the KL would be NaN
        raise RsnetError("a misc class needs at least one class outside dataset.classes")
    misc = torch.logsumexp(logits[:, out_of_scope], dim=1, keepdim=True)
    return torch.cat([misc, selected], dim=1)


class DistillationLoss(nn.Module):
    """Criterion with a frozen teacher: ``loss = crit(student_logits, targets, inputs)``.

    The teacher runs on ``inputs`` (the student's batch, already on its device) in eval mode
    under ``torch.no_grad()``; inside the training loop's ``torch.autocast`` it runs under
    the same autocast, like the student. Its parameters get ``requires_grad=False`` here (the
    teacher module is modified in place) and it stays in eval mode even when this module is
    put in train mode. It is moved to the inputs' device (and to channels_last when the inputs
    are) on first use, so building it on the CPU is fine.

    Args:
        teacher: the trained model; returns (batch, C) logits (or a tuple whose first item is).
        temperature, alpha: see :func:`kd_loss` (``train.distill.temperature`` / ``alpha``).
        subset: the student's class subset when the teacher has the full label space; the
            teacher's logits are then mapped with :func:`subset_teacher_logits`.
    """

    def __init__(self, teacher: nn.Module, temperature: float = 4.0, alpha: float = 0.9,
                 subset: ClassSubset | None = None):
        super().__init__()
        _check_kd_settings(temperature, alpha)
        self.teacher = teacher.eval()
        self.teacher.requires_grad_(False)
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.subset = subset
        self._placed = False

    def train(self, mode: bool = True) -> DistillationLoss:
        """Switch this module's mode; the teacher stays in eval mode (BN statistics, dropout)."""
        super().train(mode)
        self.teacher.eval()
        return self

    @torch.no_grad()
    def teacher_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for ``inputs``, mapped to the student's outputs: (batch, N)."""
        if self.teacher.training:  # someone called teacher.train() directly
            self.teacher.eval()
        param = next(self.teacher.parameters(), None)
        if param is not None and param.device != inputs.device:
            self.teacher.to(inputs.device)
        if not self._placed:  # match the student's memory format once (a speed matter only)
            if inputs.ndim == 4 and not inputs.is_contiguous() and \
                    inputs.is_contiguous(memory_format=torch.channels_last):
                self.teacher.to(memory_format=torch.channels_last)
            self._placed = True
        output = self.teacher(inputs)
        logits = output[0] if isinstance(output, (tuple, list)) else output
        return subset_teacher_logits(logits, self.subset) if self.subset is not None else logits

    def forward(self, student_logits: torch.Tensor, targets: torch.Tensor,
                inputs: torch.Tensor) -> torch.Tensor:
        """student_logits: (batch, N); targets: (batch,) int64; inputs: the batch (batch, ...)."""
        if self.alpha == 0:  # plain cross-entropy: skip the teacher's forward pass
            return kd_loss(student_logits, student_logits.detach(), targets,
                           self.temperature, self.alpha)
        return kd_loss(student_logits, self.teacher_logits(inputs), targets,
                       self.temperature, self.alpha)

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, alpha={self.alpha}, "
                f"subset={self.subset is not None}")
