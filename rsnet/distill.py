"""Knowledge distillation (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural
Network").

The student is trained on

    L = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(z_s, y)

where z_t are the logits of a frozen teacher (the trained C-way baseline) on the same batch.
T^2 keeps the soft term's gradients on the scale of the hard term's as T grows. When the
student has the N outputs of a class subset (misc at label 0, see ``rsnet.data.subsets``),
the teacher's C logits are first mapped onto those N outputs by :func:`subset_teacher_logits`.

With a misc class that mapping sums the probabilities of every out-of-scope class into misc:
with C = 200 and N = 10 that is 191 classes' worth of tail mass, which on in-scope images
often outweighs the true class (more so at T = 4), so the mapped teacher mostly says "misc"
and a student distilled from it learns to say misc too. :func:`calibrate_misc_bias` fits one
scalar b added to the misc logit on labelled validation images so the mapped teacher becomes a
calibrated N-way model again (:func:`misc_calibration` also reports its accuracy before/after).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rsnet.data.subsets import ClassSubset
from rsnet.errors import RsnetError

__all__ = ["kd_loss", "subset_teacher_logits", "calibrate_misc_bias", "misc_calibration",
           "DistillationLoss"]


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


def _check_teacher_logits(teacher_logits: torch.Tensor, subset: ClassSubset) -> None:
    if teacher_logits.ndim != 2 or teacher_logits.shape[1] != subset.num_base_classes:
        raise RsnetError(f"the teacher gives logits of shape {tuple(teacher_logits.shape)}; the "
                         f"class subset needs (batch, {subset.num_base_classes}): use the "
                         f"full-label-space baseline as the teacher (train.distill.*)")


def _scope_columns(subset: ClassSubset, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(in-scope column indices in new-label order, boolean mask of the out-of-scope columns)."""
    in_scope = torch.tensor(subset.classes, dtype=torch.long, device=device)
    out_of_scope = torch.ones(subset.num_base_classes, dtype=torch.bool, device=device)
    out_of_scope[in_scope] = False
    if subset.misc and not out_of_scope.any():  # logsumexp over nothing: -inf, then NaN KL
        raise RsnetError("a misc class needs at least one class outside dataset.classes")
    return in_scope, out_of_scope


def subset_teacher_logits(teacher_logits: torch.Tensor, subset: ClassSubset,
                          misc_bias: float = 0.0) -> torch.Tensor:
    """Map the teacher's (batch, C) logits onto the student's (batch, N) outputs; float32.

    With a misc class: column k + 1 is the teacher logit of ``subset.classes[k]`` and column 0
    is logsumexp of the out-of-scope classes' logits + ``misc_bias``. With ``misc_bias`` = 0
    softmax of the result equals the teacher's C-way probabilities with the out-of-scope ones
    summed into misc, exactly; that over-weights misc when many classes are out of scope, and
    the bias fitted by :func:`calibrate_misc_bias` corrects it.
    Without misc: the in-scope columns only, so their softmax is the teacher's probabilities
    renormalised over the subset (the out-of-scope mass is dropped); ``misc_bias`` must be 0.
    """
    _check_teacher_logits(teacher_logits, subset)
    if not math.isfinite(misc_bias) or (misc_bias != 0 and not subset.misc):
        raise RsnetError(f"misc_bias={misc_bias} needs to be finite and a subset with a misc class")
    logits = teacher_logits.float()
    in_scope, out_of_scope = _scope_columns(subset, logits.device)
    selected = logits.index_select(1, in_scope)
    if not subset.misc:
        return selected
    misc = torch.logsumexp(logits[:, out_of_scope], dim=1, keepdim=True) + misc_bias
    return torch.cat([misc, selected], dim=1)


def _misc_gaps(teacher_logits: torch.Tensor, targets: torch.Tensor, subset: ClassSubset
               ) -> tuple[torch.Tensor, float]:
    """(n,) float64 d_i = logsumexp(out-of-scope) - logsumexp(in-scope), and the misc share."""
    _check_teacher_logits(teacher_logits, subset)
    if not subset.misc:
        raise RsnetError("the misc bias needs a class subset with a misc class (dataset.misc)")
    if targets.shape != (len(teacher_logits),) or len(targets) == 0:
        raise RsnetError(f"{len(teacher_logits)} teacher logits rows but targets of shape "
                         f"{tuple(targets.shape)}; give one N-way label per image (at least one)")
    if targets.min() < 0 or targets.max() >= subset.num_outputs:
        raise RsnetError(f"targets must be N-way labels in [0, {subset.num_outputs})")
    logits = teacher_logits.detach().double()
    in_scope, out_of_scope = _scope_columns(subset, logits.device)
    d = torch.logsumexp(logits[:, out_of_scope], 1) - torch.logsumexp(logits[:, in_scope], 1)
    return d.cpu(), (targets == subset.misc_label).double().mean().item()


def calibrate_misc_bias(teacher_logits: torch.Tensor, targets: torch.Tensor,
                        subset: ClassSubset) -> float:
    """The misc bias b that makes the mapped teacher a calibrated N-way model on labelled images.

    Why: the plain mapping puts the summed probability of all C - (N - 1) out-of-scope classes
    into misc. A C-way teacher spreads some tail mass over every class, and summed over
    hundreds of classes it often beats the true class's probability, so the mapped teacher
    (and a student distilled from it) calls most in-scope images misc. Adding b to the misc
    logit minimises the mean cross-entropy (NLL) of
    ``subset_teacher_logits(teacher_logits, subset, b)`` against ``targets``.

    The NLL is strictly convex in b and its derivative is mean_i p_misc,i(b) - (misc share of
    ``targets``): at the optimum the teacher's mean misc probability equals the share of misc
    images. p_misc,i(b) = sigmoid(b + d_i), d_i = logsumexp(out-of-scope) - logsumexp(in-scope),
    so the root lies in [logit(share) - max d, logit(share) - min d]; scipy's ``brentq``
    finds it there, in float64 (deterministic).

    Args:
        teacher_logits: (n, C) the C-way teacher's logits on the images, any float dtype.
        targets: (n,) int64 N-way labels (0 = misc, k + 1 = ``subset.classes[k]``).
        subset: the class subset; it must have a misc class.
    Returns: b in logit units (nats), a Python float.
    """
    d, share = _misc_gaps(teacher_logits, targets, subset)
    if not 0.0 < share < 1.0:  # the optimum is at -inf (no misc image) or +inf (only misc)
        raise RsnetError(f"calibrating the misc logit needs both misc and in-scope labelled "
                         f"images (misc share {share:.3g} of {len(d)}); set "
                         f"train.distill.calibrate_misc=false")
    from scipy.optimize import brentq

    base = math.log(share) - math.log1p(-share)  # logit(share)
    lo, hi = base - d.max().item(), base - d.min().item()
    if hi - lo < 1e-12:  # every image has the same gap d: the root is exact
        return float(lo)
    return float(brentq(lambda b: torch.sigmoid(b + d).mean().item() - share, lo, hi,
                        xtol=1e-12, rtol=1e-12))


def misc_calibration(teacher_logits: torch.Tensor, targets: torch.Tensor,
                     subset: ClassSubset) -> dict[str, float]:
    """:func:`calibrate_misc_bias` and what it does to the mapped teacher on those images.

    Returns ``misc_bias``, the number of images and their misc share, and for the mapped
    teacher before (b = 0) and after calibration: ``acc_local`` (N-way argmax accuracy on the
    in-scope images; misc for one is an error), ``misc_on_in_scope`` (share of in-scope images
    it calls misc) and ``nll`` (mean cross-entropy over all images, nats).
    """
    bias = calibrate_misc_bias(teacher_logits, targets, subset)
    in_scope = targets != subset.misc_label
    out: dict[str, float] = {"misc_bias": bias, "images": len(targets),
                             "misc_share": 1.0 - in_scope.double().mean().item()}
    for name, b in (("before", 0.0), ("after", bias)):
        mapped = subset_teacher_logits(teacher_logits.detach().double(), subset, b).double()
        pred = mapped.argmax(1)
        out[f"{name}/acc_local"] = (pred[in_scope] == targets[in_scope]).double().mean().item()
        out[f"{name}/misc_on_in_scope"] = (pred[in_scope] == subset.misc_label).double().mean().item()
        out[f"{name}/nll"] = F.cross_entropy(mapped, targets).item()
    return out


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
        misc_bias: added to the mapped misc logit (nats), e.g. from :func:`calibrate_misc_bias`;
            non-zero only with a subset that has a misc class.
    """

    def __init__(self, teacher: nn.Module, temperature: float = 4.0, alpha: float = 0.9,
                 subset: ClassSubset | None = None, misc_bias: float = 0.0):
        super().__init__()
        _check_kd_settings(temperature, alpha)
        if misc_bias != 0 and (subset is None or not subset.misc):
            raise RsnetError(f"misc_bias={misc_bias} needs a class subset with a misc class")
        self.teacher = teacher.eval()
        self.teacher.requires_grad_(False)
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.subset = subset
        self.misc_bias = float(misc_bias)
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
        if self.subset is None:
            return logits
        return subset_teacher_logits(logits, self.subset, self.misc_bias)

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
                f"subset={self.subset is not None}, misc_bias={self.misc_bias:.4g}")
