import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rsnet.data.subsets import ClassSubset
from rsnet.distill import (DistillationLoss, calibrate_misc_bias, kd_loss, misc_calibration,
                           subset_teacher_logits)
from rsnet.errors import RsnetError

STUDENT = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.5, -0.5]])
TEACHER = torch.tensor([[3.0, 0.0, -1.0], [-2.0, 2.5, 1.0]])
TARGETS = torch.tensor([0, 2])


def by_hand(student, teacher, targets, T, alpha):
    """The definition written out with plain Python floats."""
    def softmax(row, t):
        e = [math.exp(v / t) for v in row]
        return [v / sum(e) for v in e]
    kl = ce = 0.0
    for s, t, y in zip(student.tolist(), teacher.tolist(), targets.tolist()):
        p_t, p_s = softmax(t, T), softmax(s, T)
        kl += sum(a * (math.log(a) - math.log(b)) for a, b in zip(p_t, p_s))
        ce += -math.log(softmax(s, 1.0)[y])
    n = len(targets)
    return alpha * T ** 2 * kl / n + (1 - alpha) * ce / n


@pytest.mark.parametrize("T", [1.0, 4.0])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_kd_loss_matches_its_definition(T, alpha):
    got = kd_loss(STUDENT, TEACHER, TARGETS, T, alpha)
    assert got.ndim == 0
    assert got.item() == pytest.approx(by_hand(STUDENT, TEACHER, TARGETS, T, alpha), rel=1e-5)


def test_hand_values_are_what_they_should_be():
    # T = 1, alpha = 0.5, first sample only: KL and CE computed independently of by_hand
    s, t = STUDENT[:1], TEACHER[:1]
    p_t = torch.softmax(t, 1)
    kl = (p_t * (p_t.log() - torch.log_softmax(s, 1))).sum().item()
    ce = -torch.log_softmax(s, 1)[0, 0].item()
    got = kd_loss(s, t, TARGETS[:1], 1.0, 0.5).item()
    assert got == pytest.approx(0.5 * kl + 0.5 * ce, rel=1e-6)


def test_alpha_zero_is_cross_entropy():
    torch.manual_seed(0)
    s, t, y = torch.randn(16, 10), torch.randn(16, 10), torch.randint(0, 10, (16,))
    assert torch.allclose(kd_loss(s, t, y, 4.0, 0.0), F.cross_entropy(s, y))


def test_identical_logits_have_no_kl_part():
    torch.manual_seed(0)
    s, y = torch.randn(16, 10), torch.randint(0, 10, (16,))
    assert kd_loss(s, s.clone(), y, 4.0, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    got = kd_loss(s, s.clone(), y, 4.0, 0.3)
    assert torch.allclose(got, 0.7 * F.cross_entropy(s, y), atol=1e-6)


def test_bad_settings_and_shapes():
    with pytest.raises(RsnetError, match="train.distill.temperature"):
        kd_loss(STUDENT, TEACHER, TARGETS, 0.0, 0.5)
    with pytest.raises(RsnetError, match="train.distill.alpha"):
        kd_loss(STUDENT, TEACHER, TARGETS, 4.0, 1.5)
    with pytest.raises(RsnetError, match="train.distill.alpha"):
        DistillationLoss(nn.Linear(2, 3), alpha=-0.1)
    with pytest.raises(RsnetError, match="shape"):
        kd_loss(STUDENT, torch.randn(2, 5), TARGETS, 4.0, 0.5)


def test_subset_teacher_logits_aggregate_the_probabilities_with_misc():
    torch.manual_seed(0)
    teacher = 3 * torch.randn(32, 10)
    subset = ClassSubset(classes=(7, 2, 4), misc=True, num_base_classes=10)
    mapped = subset_teacher_logits(teacher, subset)
    assert mapped.shape == (32, 4)
    p = torch.softmax(teacher.double(), 1)
    others = [c for c in range(10) if c not in subset.classes]
    expected = torch.stack([p[:, others].sum(1), p[:, 7], p[:, 2], p[:, 4]], 1)
    assert torch.allclose(torch.softmax(mapped.double(), 1), expected, atol=1e-6, rtol=0)
    # the new labels agree with ClassSubset.lookup: original class c -> column lookup[c]
    lookup = subset.lookup()
    for c in range(10):
        if c in subset.classes:
            assert torch.equal(mapped[:, lookup[c]], teacher[:, c])


def test_subset_teacher_logits_without_misc_renormalise_over_the_subset():
    torch.manual_seed(1)
    teacher = torch.randn(8, 6)
    subset = ClassSubset(classes=(5, 1), misc=False, num_base_classes=6)
    mapped = subset_teacher_logits(teacher, subset)
    p = torch.softmax(teacher, 1)[:, [5, 1]]
    assert torch.allclose(torch.softmax(mapped, 1), p / p.sum(1, keepdim=True), atol=1e-6)
    with pytest.raises(RsnetError, match=r"\(batch, 6\)"):
        subset_teacher_logits(torch.randn(8, 4), subset)


def tiny_net(seed: int, classes: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(16, classes))


def test_teacher_is_frozen_and_stays_in_eval_mode():
    teacher = tiny_net(0)
    teacher.train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    crit = DistillationLoss(teacher, temperature=4.0, alpha=0.9)
    crit.train()  # the training loop may put its criterion in train mode
    student = tiny_net(1)
    x, y = torch.randn(12, 6), torch.randint(0, 4, (12,))
    teacher.train()  # even a direct call is undone at the next forward
    loss = crit(student(x), y, x)
    loss.backward()
    assert not teacher.training and all(not m.training for m in teacher.modules())
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    for k, v in teacher.state_dict().items():  # BN running statistics untouched (eval mode)
        assert torch.equal(v, before[k]), k
    # eval mode and no dropout: the teacher's logits are deterministic
    assert torch.equal(crit.teacher_logits(x), crit.teacher_logits(x))


def kl_to_teacher(student, teacher, x) -> float:
    with torch.no_grad():
        p_t = torch.softmax(teacher(x), 1)
        return (p_t * (p_t.log() - torch.log_softmax(student(x), 1))).sum(1).mean().item()


def test_distilled_student_moves_toward_the_teacher():
    teacher = tiny_net(0).eval()
    student = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))
    torch.manual_seed(2)
    crit = DistillationLoss(teacher, temperature=4.0, alpha=1.0)
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
    x_eval = torch.randn(256, 6)
    start = kl_to_teacher(student, teacher, x_eval)
    for _ in range(100):
        x = torch.randn(64, 6)
        y = torch.randint(0, 4, (64,))  # random labels: ignored at alpha = 1
        loss = crit(student(x), y, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = kl_to_teacher(student, teacher, x_eval)
    assert end < 0.3 * start, (start, end)


def test_distillation_loss_with_a_subset_and_under_autocast():
    teacher = tiny_net(0, classes=10)
    subset = ClassSubset(classes=(3, 8), misc=True, num_base_classes=10)
    crit = DistillationLoss(teacher, temperature=2.0, alpha=0.5, subset=subset)
    student = tiny_net(1, classes=3).eval()
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    with torch.no_grad():
        expected = kd_loss(student(x), subset_teacher_logits(teacher(x), subset), y, 2.0, 0.5)
    assert torch.allclose(crit(student(x), y, x), expected, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as fit() runs its loss
        out = student(x)
        assert crit.teacher_logits(x).dtype == torch.float32  # mapped logits are float32
        loss = crit(out, y, x)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert loss.item() == pytest.approx(expected.item(), rel=0.05)


def test_alpha_zero_skips_the_teacher():
    class Exploding(nn.Module):
        def forward(self, x):
            raise AssertionError("the teacher ran")
    crit = DistillationLoss(Exploding(), alpha=0.0)
    s, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    assert torch.allclose(crit(s, y, torch.randn(4, 6)), F.cross_entropy(s, y))


# --- the misc bias: a calibrated subset teacher -------------------------------------------------

def nll_of_bias(teacher: torch.Tensor, y: torch.Tensor, subset: ClassSubset,
                b: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the mapped teacher with b added to its misc column (float64)."""
    mapped = subset_teacher_logits(teacher, subset).double()
    mapped = torch.cat([mapped[:, :1] + b, mapped[:, 1:]], 1)
    return F.cross_entropy(mapped, y)


def test_calibrate_misc_bias_has_the_known_optimum():
    # every row holds the in-scope logits {1, -1} and the out-of-scope ones {2, 0, -3}, each
    # in its own order, so d = logsumexp(out) - logsumexp(in) is the same for all images,
    # p_misc = sigmoid(b + d) everywhere, and the NLL is least where it equals the misc share
    # 1/4: b = logit(1/4) - d
    subset = ClassSubset(classes=(3, 1), misc=True, num_base_classes=5)
    g = torch.Generator().manual_seed(0)
    teacher = torch.empty(8, 5)
    for row in teacher:
        row[[3, 1]] = torch.tensor([1.0, -1.0])[torch.randperm(2, generator=g)]
        row[[0, 2, 4]] = torch.tensor([2.0, 0.0, -3.0])[torch.randperm(3, generator=g)]
    y = torch.tensor([0, 1, 2, 1, 0, 2, 1, 2])  # 2 of 8 misc
    d = math.log(math.exp(2) + 1 + math.exp(-3)) - math.log(math.exp(1) + math.exp(-1))
    b = calibrate_misc_bias(teacher, y, subset)
    assert b == pytest.approx(math.log(1 / 3) - d, abs=1e-9)
    p = torch.softmax(subset_teacher_logits(teacher, subset, b).double(), 1)
    assert p[:, 0].mean().item() == pytest.approx(0.25, abs=1e-6)


@pytest.mark.parametrize("seed, scale", [(0, 3.0), (1, 3.0), (2, 30.0)])
def test_calibrate_misc_bias_minimises_the_nll(seed, scale):
    torch.manual_seed(seed)
    subset = ClassSubset(classes=(7, 2, 4), misc=True, num_base_classes=30)
    teacher = scale * torch.randn(200, 30)  # scale 30: saturated sigmoids, a bias far from 0
    y = torch.randint(0, 4, (200,))
    b = calibrate_misc_bias(teacher, y, subset)
    at = torch.tensor(b, dtype=torch.float64, requires_grad=True)
    nll = nll_of_bias(teacher, y, subset, at)
    nll.backward()
    assert abs(at.grad.item()) < 1e-6  # a stationary point of a convex function: the minimum
    for delta in (-0.5, 0.5, -5.0, 5.0):
        assert nll.item() < nll_of_bias(teacher, y, subset, torch.tensor(b + delta)).item()
    assert calibrate_misc_bias(teacher, y, subset) == b  # deterministic
    assert calibrate_misc_bias(teacher.double(), y, subset) == pytest.approx(b, abs=1e-5)


def test_calibrate_misc_bias_refuses_what_has_no_finite_optimum():
    subset = ClassSubset(classes=(1, 2), misc=True, num_base_classes=6)
    teacher = torch.randn(4, 6)
    with pytest.raises(RsnetError, match="calibrate_misc=false"):  # no misc image: b -> -inf
        calibrate_misc_bias(teacher, torch.tensor([1, 2, 1, 2]), subset)
    with pytest.raises(RsnetError, match="calibrate_misc=false"):  # only misc: b -> +inf
        calibrate_misc_bias(teacher, torch.zeros(4, dtype=torch.long), subset)
    with pytest.raises(RsnetError, match="N-way labels"):
        calibrate_misc_bias(teacher, torch.tensor([0, 1, 2, 3]), subset)
    with pytest.raises(RsnetError, match="misc class"):
        calibrate_misc_bias(teacher, torch.tensor([0, 1, 0, 1]),
                            ClassSubset(classes=(1, 2), misc=False, num_base_classes=6))
    with pytest.raises(RsnetError, match="misc"):  # a bias without a misc column to add it to
        subset_teacher_logits(teacher, ClassSubset((1, 2), False, 6), misc_bias=1.0)
    with pytest.raises(RsnetError, match="misc"):
        DistillationLoss(nn.Linear(2, 6), misc_bias=1.0)


def test_misc_bias_shifts_only_the_misc_column():
    torch.manual_seed(0)
    subset = ClassSubset(classes=(7, 2, 4), misc=True, num_base_classes=10)
    teacher = 3 * torch.randn(16, 10)
    plain, biased = subset_teacher_logits(teacher, subset), subset_teacher_logits(teacher, subset, -2.5)
    assert torch.allclose(biased[:, 0], plain[:, 0] - 2.5)
    assert torch.equal(biased[:, 1:], plain[:, 1:])


# The broken case, kept: a C = 40 teacher that is right but not overconfident (true class +3
# over N(0, 1) noise) and a subset of 3 classes + misc. Summed over 37 out-of-scope classes the
# noise outweighs the true class, so the plain mapping says misc on most in-scope images, and
# a student distilled from it at T = 4, alpha = 0.9 learns to say misc (measured over seeds
# 0-19: teacher local accuracy 0.12-0.16 -> 0.91-0.97 calibrated; student 0.00-0.07 -> 1.0).
C40, IN_SCOPE = 40, (5, 17, 31)
SUBSET40 = ClassSubset(classes=IN_SCOPE, misc=True, num_base_classes=C40)
FEATURES = 64


def synthetic_images(per_class: int, g: torch.Generator, embedding: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs (n, FEATURES + C40), N-way labels (n,)): per_class images of each in-scope class
    and per_class misc images from the other classes (misc_multiplier 1). The inputs hold the
    student's features (the class's embedding + noise: they determine the class) and then the
    teacher's C40 logits for the image."""
    others = torch.tensor([c for c in range(C40) if c not in IN_SCOPE])
    orig = torch.cat([torch.full((per_class,), c) for c in IN_SCOPE] +
                     [others[torch.randint(len(others), (per_class,), generator=g)]])
    teacher = torch.randn(len(orig), C40, generator=g)
    teacher[torch.arange(len(orig)), orig] += 3.0
    features = embedding[orig] + 0.1 * torch.randn(len(orig), FEATURES, generator=g)
    return torch.cat([features, teacher], 1), SUBSET40.lookup()[orig]


class Columns(nn.Module):
    """The inputs' columns [start, stop): the student's features or the teacher's logits."""

    def __init__(self, start: int, stop: int | None = None):
        super().__init__()
        self.start, self.stop = start, stop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.start:self.stop]


def local_accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """N-way accuracy on the in-scope images (label != 0); misc for one is an error."""
    keep = y != 0
    return (logits.argmax(1)[keep] == y[keep]).double().mean().item()


def distilled_student(x: torch.Tensor, y: torch.Tensor, misc_bias: float, seed: int) -> nn.Module:
    """A linear student on the features, distilled at T = 4, alpha = 0.9 (full batch, Adam)."""
    torch.manual_seed(seed)
    student = nn.Sequential(Columns(0, FEATURES), nn.Linear(FEATURES, 4))
    crit = DistillationLoss(Columns(FEATURES), 4.0, 0.9, SUBSET40, misc_bias=misc_bias)
    opt = torch.optim.Adam(student.parameters(), lr=0.05)
    for _ in range(100):
        loss = crit(student(x), y, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return student


@pytest.mark.parametrize("seed", [0, 1])
def test_calibrated_misc_keeps_the_student_from_collapsing_to_misc(seed):
    g = torch.Generator().manual_seed(seed)
    embedding = torch.randn(C40, FEATURES, generator=g)
    (x_val, y_val), (x_train, y_train), (x_test, y_test) = (
        synthetic_images(100, g, embedding) for _ in range(3))
    summary = misc_calibration(x_val[:, FEATURES:], y_val, SUBSET40)
    bias = summary["misc_bias"]
    assert summary["images"] == 400 and summary["misc_share"] == pytest.approx(0.25)
    # the teacher itself: the plain mapping calls most in-scope images misc, calibrated it doesn't
    assert summary["before/acc_local"] < 0.35 and summary["before/misc_on_in_scope"] > 0.6
    assert summary["after/acc_local"] > 0.8 and summary["after/nll"] < summary["before/nll"]
    assert bias < -1.0  # the misc logit comes down
    assert summary["after/acc_local"] == pytest.approx(local_accuracy(
        subset_teacher_logits(x_val[:, FEATURES:], SUBSET40, bias), y_val))
    # students distilled from each teacher, judged on held-out images
    students = [distilled_student(x_train, y_train, b, seed) for b in (0.0, bias)]
    with torch.no_grad():
        plain, calibrated = (local_accuracy(s(x_test), y_test) for s in students)
    assert plain < 0.3, plain  # the bug: the student learned to answer misc
    assert calibrated > 0.9, calibrated
    assert calibrated - plain > 0.6


@pytest.mark.parametrize("bias", [0.0, -2.0, 1.5])
def test_distillation_loss_with_a_misc_bias_matches_kd_loss(bias):
    teacher = tiny_net(0, classes=10)
    subset = ClassSubset(classes=(3, 8), misc=True, num_base_classes=10)
    crit = DistillationLoss(teacher, temperature=4.0, alpha=0.9, subset=subset, misc_bias=bias)
    assert f"misc_bias={bias:.4g}" in repr(crit)
    student = tiny_net(1, classes=3).eval()
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    with torch.no_grad():
        mapped = subset_teacher_logits(teacher(x), subset, bias)
        expected = kd_loss(student(x), mapped, y, 4.0, 0.9)
        assert torch.allclose(crit.teacher_logits(x), mapped)
    assert torch.allclose(crit(student(x), y, x), expected, atol=1e-6)
    if bias != 0:  # the bias changes the soft targets, hence the loss
        plain = DistillationLoss(teacher, temperature=4.0, alpha=0.9, subset=subset)
        assert not torch.allclose(plain(student(x), y, x), expected, atol=1e-4)
