"""Misc as open-set detection: scores, AUROC / FPR@95TPR on hand-made cases, the calibrated
threshold, unseen classes kept out of training, and the threshold in a deployed model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import compose_cfg
from rsnet.data import build_data
from rsnet.deploy import export_onnx
from rsnet.deploy.classify import Classifier, main as classify_main
from rsnet.distill import subset_teacher_logits
from rsnet.data.subsets import ClassSubset
from rsnet.errors import RsnetError
from rsnet.openset import (calibrate_threshold, decide, detection_metrics, misc_score,
                           openset_metrics)


def test_scores_on_hand_made_logits():
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])  # misc = column 0
    p = torch.softmax(logits.double(), 1)
    assert torch.allclose(misc_score(logits, 0, "misc"), p[:, 0])
    assert torch.allclose(misc_score(logits, 0, "msp"), 1 - p[:, 1:].max(1).values)
    energy = -torch.log(torch.exp(torch.tensor([2.0, 0.0])) + torch.exp(torch.tensor([1.0, 0.0])))
    assert torch.allclose(misc_score(logits, 0, "energy"), energy.double())
    # every score ranks the second row (misc logit high) as more out of scope
    for s in ("misc", "msp", "energy"):
        score = misc_score(logits, 0, s)
        assert score[1] > score[0], s
    with pytest.raises(RsnetError, match="openset.score"):
        misc_score(logits, 0, "entropy")


def test_auroc_of_a_perfect_a_reversed_and_a_random_score():
    ins, outs = torch.arange(10.0), torch.arange(10.0) + 100  # out-of-scope score higher
    assert detection_metrics(ins, outs) == {"auroc": 1.0, "fpr95": 0.0}
    assert detection_metrics(outs, ins)["auroc"] == 0.0
    g = torch.Generator().manual_seed(0)
    random = detection_metrics(torch.rand(5000, generator=g), torch.rand(5000, generator=g))
    assert abs(random["auroc"] - 0.5) < 0.02 and abs(random["fpr95"] - 0.95) < 0.02
    assert detection_metrics(torch.zeros(4), torch.zeros(4))["auroc"] == 0.5  # ties count half


def test_fpr_at_95_tpr_on_a_small_known_case():
    ins = torch.arange(20.0)  # keeping 95 % (19 of 20) means accepting scores <= 18
    outs = torch.tensor([5.0, 18.5, 25.0, 30.0])  # only 5 is accepted
    assert detection_metrics(ins, outs)["fpr95"] == 0.25
    # AUROC: pairs (in < out): 5 -> 5 of 20 in-scope scores lower and one tie (half),
    # 18.5 -> 19, 25 and 30 -> 20
    assert detection_metrics(ins, outs)["auroc"] == pytest.approx((5.5 + 19 + 20 + 20) / 80)


def test_the_threshold_keeps_the_asked_share_and_decide_applies_it():
    scores = torch.arange(20.0).flip(0)
    assert calibrate_threshold(scores, 0.95) == 18.0
    assert calibrate_threshold(scores, 1.0) == 19.0
    assert calibrate_threshold(torch.tensor([0.3]), 0.5) == pytest.approx(0.3)
    with pytest.raises(RsnetError, match="openset.tpr"):
        calibrate_threshold(scores, 0.0)
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.5], [1.0, 0.0, 1.2]])
    p_misc = misc_score(logits, 0, "misc")
    # threshold between the rows' misc probabilities: only the rows above it are misc,
    # the others get their best in-scope class even where misc has the largest logit
    t = float((p_misc[0] + p_misc[2]) / 2)
    assert p_misc[0] < t < p_misc[2] < p_misc[1]
    assert decide(logits, 0, "misc", t).tolist() == [1, 0, 0]
    assert decide(logits, 0, "misc", 1.0).tolist() == [1, 2, 2]


def test_openset_metrics_by_hand():
    # val: two in-scope images with misc probabilities 0.1, 0.3 -> tpr 0.5 keeps <= 0.1
    def row(p_misc: float, best: int) -> list[float]:
        p = [p_misc, (1 - p_misc) * 0.2, (1 - p_misc) * 0.2]
        p[best] = (1 - p_misc) * 0.8
        return [math.log(v) for v in p]
    val = torch.tensor([row(0.1, 1), row(0.3, 2), row(0.9, 1)]), torch.tensor([1, 2, 0])
    test = torch.tensor([row(0.05, 1), row(0.2, 2), row(0.05, 2), row(0.5, 1)]), torch.tensor([1, 2, 1, 0])
    unseen = torch.tensor([row(0.08, 1), row(0.6, 2)])
    m = openset_metrics(val, test, unseen, misc_label=0, score="misc", tpr=0.5)
    assert m["openset/threshold"] == pytest.approx(0.1)
    # decisions: [1, misc, 2, misc]: local = 1 of 3 in-scope right, global = 3 of 4, raw = 2 of 4
    assert m["test/cal/acc_local"] == pytest.approx(1 / 3)
    assert m["test/cal/acc_global"] == pytest.approx(0.75)
    assert m["test/cal/acc_raw"] == pytest.approx(0.5)
    assert m["openset/seen/auroc_misc"] == 1.0  # 0.5 is above every in-scope score
    # unseen vs in-scope (0.05, 0.2, 0.05): 0.08 is above two of them, 0.6 above all three
    assert m["openset/unseen/auroc_misc"] == pytest.approx(5 / 6)
    assert {f"openset/{s}/{k}_{c}" for s in ("seen", "unseen") for k in ("auroc", "fpr95")
            for c in ("misc", "msp", "energy")} <= set(m)
    no_unseen = openset_metrics(val, test, None, misc_label=0, score="misc", tpr=0.5)
    assert not any(k.startswith("openset/unseen") for k in no_unseen)


def test_psi_mapped_with_a_calibrated_threshold_recovers_its_in_scope_choice():
    """Psi's C logits mapped onto N outputs: a plain argmax says misc (191-class log-sum-exp
    swamps the rest), the calibrated decision gives Psi's best in-scope class back."""
    g = torch.Generator().manual_seed(0)
    subset = ClassSubset(classes=tuple(range(9)), misc=True, num_base_classes=200)
    y = torch.arange(9).repeat(20)
    logits = torch.randn(len(y), 200, generator=g)
    logits[torch.arange(len(y)), y] += 3.0  # right, but not overconfident
    mapped = subset_teacher_logits(logits, subset)
    assert (mapped.argmax(1) == 0).double().mean() > 0.9  # argmax: mostly misc
    restricted = logits[:, :9].argmax(1) + 1  # Psi restricted to the in-scope classes
    t = calibrate_threshold(misc_score(mapped, 0, "misc"), 1.0)  # keep every in-scope image
    assert torch.equal(decide(mapped, 0, "misc", t), restricted)


UNSEEN = ("dataset=synthetic", "dataset.source.num_classes=20", "dataset.num_classes=4",
          "dataset.unseen_fraction=0.25", "dataset.misc_multiplier=3", "dataset.misc_test=all")


def test_unseen_classes_never_reach_training_or_validation():
    cfg = compose_cfg(*UNSEEN)
    data = build_data(cfg.dataset)
    described = data.describe()
    unseen = {u["original_label"] for u in described["unseen"]}
    in_scope = set(data.subset.classes)
    assert len(unseen) == 4 and not unseen & in_scope  # round(0.25 x 16 out-of-scope classes)
    names = {u["name"] for u in described["unseen"]}
    for split in ("train", "val", "test"):  # the recorded subset: misc drawn from seen classes only
        assert not names & set(described["misc_composition"][split]), split
        assert not set(getattr(data, split).orig_labels.tolist()) & unseen, split
    # the unseen split: every test image of those classes, labelled misc
    assert set(data.unseen.orig_labels.tolist()) == unseen and (data.unseen.targets == 0).all()
    assert len(data.unseen) == 4 * 20  # test_per_class of the synthetic source
    # the same seed draws the same unseen classes; another seed other ones
    again = build_data(cfg.dataset).describe()["unseen"]
    other = build_data(compose_cfg(*UNSEEN, "seed=1").dataset)
    assert again == described["unseen"] and set(other.subset.unseen) != unseen


@pytest.mark.parametrize("overrides, message", [
    (["dataset.num_classes=4", "dataset.unseen_fraction=1.0"], "dataset.unseen_fraction"),
    (["dataset.num_classes=4", "dataset.unseen_fraction=0.99"], "leaves no out-of-scope class"),
    (["dataset.num_classes=4", "dataset.misc=false", "dataset.unseen_fraction=0.2"], "misc class"),
    (["dataset.num_classes=null", "dataset.unseen_fraction=0.2"], "needs a class subset"),
])
def test_bad_unseen_settings_are_one_clear_error(overrides, message):
    with pytest.raises(RsnetError, match=message):
        build_data(compose_cfg("dataset=synthetic", *overrides).dataset)


class Constant(nn.Module):
    """Logits that do not depend on the image: misc 1.0, class a 2.0, class b 0.0."""

    def forward(self, x):
        return torch.tensor([[1.0, 2.0, 0.0]]).expand(x.shape[0], 3) + 0 * x.mean()


def test_the_threshold_round_trips_through_onnx_and_changes_the_answer(tmp_path, capsys):
    p_misc = math.exp(1) / (math.exp(1) + math.exp(2) + 1)  # 0.245: argmax says "a"
    meta = {"class_names": ["misc", "a", "b"], "misc_label": 0, "input_size": 8,
            "mean": [0.5] * 3, "std": [0.25] * 3}
    plain = export_onnx(Constant(), tmp_path / "plain.onnx", 8, metadata=meta)
    strict = export_onnx(Constant(), tmp_path / "strict.onnx", 8,
                         metadata={**meta, "misc_score": "misc", "misc_threshold": p_misc / 2})
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    assert Classifier(strict).misc_threshold == pytest.approx(p_misc / 2)
    assert Classifier(plain).classify([image])[0][0][0] == "a"
    top = Classifier(strict).classify([image], top=3)[0]
    assert [n for n, _ in top] == ["misc", "a", "b"] and top[0][1] == pytest.approx(p_misc, rel=1e-5)
    assert Classifier(strict, use_threshold=False).classify([image])[0][0][0] == "a"
    assert classify_main([str(strict), str(image)]) == 0
    assert capsys.readouterr().out.split("\t")[1].startswith("misc")
    assert classify_main([str(strict), str(image), "--argmax"]) == 0
    assert capsys.readouterr().out.split("\t")[1].startswith("a ")


@pytest.mark.integration
def test_a_run_reports_psi_as_n_way_and_ships_its_threshold(tmp_path):
    """Psi (a C-way checkpoint) mapped to N outputs and Psi' are judged alike; the threshold
    calibrated for Psi' is the one its ONNX file carries."""
    import json

    from conftest import TINY
    from rsnet.models import build_model
    from test_cli import EXPORT, run
    ckpt = tmp_path / "psi.pt"
    torch.save({"state_dict": build_model(compose_cfg(*TINY).model, 10).state_dict()}, ckpt)
    res = run(tmp_path, *TINY, f"model.checkpoint={ckpt}", "dataset.num_classes=4",
              "dataset.unseen_fraction=0.3", "train.epochs=1", "train.threads=1", "export=onnx",
              *EXPORT)
    assert res.returncode == 0, res.stderr[-2000:]
    d = tmp_path / "run"
    m = json.loads((d / "metrics.json").read_text())
    for prefix in ("", "baseline/mapped/"):
        for key in ("test/acc_local", "test/cal/acc_local", "test/cal/acc_global", "openset/threshold",
                    "openset/seen/auroc_misc", "openset/unseen/auroc_misc", "openset/unseen/fpr95_energy"):
            assert prefix + key in m, prefix + key
        assert 0 <= m[prefix + "openset/unseen/auroc_misc"] <= 1
    assert m["data/test_images"] == json.loads((d / "classes.json").read_text())["split_sizes"]["test"]
    assert Classifier(d / "export" / "model.onnx").misc_threshold == m["openset/threshold"]
    assert "## Misc detection" in (d / "summary.md").read_text()
