import pytest
import torch
from torch import nn

from rsnet.data.subsets import ClassSubset
from rsnet.losses import FocalLoss
from rsnet.metrics import baseline_scope_metrics, count_macs, count_params, scope_metrics, topk_accuracy


def onehot(pred, n):
    return torch.nn.functional.one_hot(torch.tensor(pred), n).float()


def test_scope_metrics_on_hand_made_predictions():
    # labels: misc = 0; 3 in-scope images (1, 2, 2) and 2 misc images
    targets = torch.tensor([1, 2, 2, 0, 0])
    logits = onehot([1, 0, 1, 0, 2], 3)  # right, misc-for-in-scope, wrong class, right, in-scope-for-misc
    m = scope_metrics(logits, targets, misc_label=0)
    assert m["acc_local"] == pytest.approx(1 / 3)
    # global: predicted in-scope? [T, F, T, F, T] vs truly in-scope [T, T, T, F, F]
    assert m["acc_global"] == pytest.approx(3 / 5)
    assert m["acc_raw"] == pytest.approx(2 / 5)
    assert m["misc_share"] == pytest.approx(2 / 5) and m["const_misc_global"] == pytest.approx(2 / 5)


def test_baseline_scope_metrics_use_the_full_label_space():
    subset = ClassSubset(classes=(2, 5), misc=True, num_base_classes=6)
    orig = torch.tensor([2, 5, 5, 0, 3])
    logits = onehot([2, 3, 5, 0, 5], 6)
    m = baseline_scope_metrics(logits, orig, subset)
    assert m["acc_local"] == pytest.approx(2 / 3)  # 2 right, 5 predicted as 3
    # predicted in-scope [T, F, T, F, T] vs in-scope [T, T, T, F, F]
    assert m["acc_global"] == pytest.approx(3 / 5)
    assert m["acc_raw"] == pytest.approx(3 / 5)  # misc image of class 0 predicted 0 counts as right


def test_topk():
    logits = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05]])
    assert topk_accuracy(logits, torch.tensor([2, 0]), 1) == 0.5
    assert topk_accuracy(logits, torch.tensor([2, 0]), 2) == 1.0


def test_params_and_macs_of_a_hand_counted_net():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    assert count_params(net) == 3 * 8 * 9 + 8 + 16 + 8 * 4 + 4
    # conv: 8 out channels x 10x10 positions x 27 MACs; linear 8 x 4; BN/ReLU/pool not counted
    assert count_macs(net, 10) == 8 * 100 * 27 + 32


def test_focal_loss_matches_its_definition():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    target = torch.tensor([0, 2])
    p = logits.softmax(1)[torch.arange(2), target]
    expected = (-(1 - p) ** 2.0 * p.log()).mean()
    assert FocalLoss(gamma=2.0)(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)
    assert FocalLoss(gamma=0.0)(logits, target).item() == pytest.approx(
        nn.functional.cross_entropy(logits, target).item(), rel=1e-6)


def test_top1_and_raw_accuracy_agree_on_tied_logits():
    from rsnet.data.loader import Split
    from rsnet.train import split_metrics

    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(500, 5, generator=g) * 0.02).bfloat16().float()  # bf16 rounding -> ties
    targets = torch.randint(0, 5, (500,), generator=g)
    m = split_metrics(logits, Split(torch.zeros(500, 3, 1, 1, dtype=torch.uint8), targets, targets), 0)
    assert m["acc"] == m["acc_raw"]
