import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rsnet.data.subsets import ClassSubset
from rsnet.distill import DistillationLoss, kd_loss, subset_teacher_logits
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
