"""Misc as open-set detection: out-of-scope scores, AUROC / FPR@95TPR, a calibrated threshold.

An N-way model with a misc output (method.md section 7) is an out-of-scope detector, judged
as the open-set literature judges one (OpenOOD's conventions): in-scope images are the
positives, and a score that is higher for out-of-scope images is summarised by

- AUROC: the probability that a random in-scope image scores lower than a random
  out-of-scope one (0.5 = chance, 1 = perfect separation);
- FPR@95TPR: the share of out-of-scope images accepted as in scope when the threshold keeps
  95 % of the in-scope images.

Three scores, each higher = more out of scope:
- ``misc``: the softmax probability of the misc output (the thesis's detector);
- ``msp``: 1 - the largest in-scope softmax probability (Hendrycks & Gimpel 2017);
- ``energy``: -logsumexp of the in-scope logits (Liu et al. 2020, T = 1).

The deployed decision (:func:`decide`): misc when the chosen score exceeds a threshold
calibrated on the validation split so that ``tpr`` of the in-scope validation images are
kept; otherwise the most likely in-scope class.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from rsnet.errors import RsnetError
from rsnet.metrics import scope_metrics_of_predictions

SCORES = ("misc", "msp", "energy")


def _in_scope_columns(num_outputs: int, misc_label: int) -> torch.Tensor:
    return torch.tensor([c for c in range(num_outputs) if c != misc_label])


def misc_score(logits: torch.Tensor, misc_label: int, score: str) -> torch.Tensor:
    """(n,) float64 out-of-scope score of each row of ``logits`` (n, N); higher = more misc."""
    if score not in SCORES:
        raise RsnetError(f"openset.score={score!r}: use one of {', '.join(SCORES)}")
    logits = logits.double()
    cols = _in_scope_columns(logits.shape[1], misc_label)
    if score == "misc":
        return torch.softmax(logits, 1)[:, misc_label]
    if score == "msp":
        return 1.0 - torch.softmax(logits, 1)[:, cols].max(1).values
    return -torch.logsumexp(logits[:, cols], 1)


def detection_metrics(in_scores: torch.Tensor, out_scores: torch.Tensor) -> dict[str, float]:
    """AUROC and FPR at 95 % TPR of separating in-scope (positive) from out-of-scope images.

    in_scores, out_scores: (n_in,), (n_out,) scores, higher = more out of scope.
    """
    if len(in_scores) == 0 or len(out_scores) == 0:
        raise RsnetError("misc detection needs both in-scope and out-of-scope test images")
    y = np.r_[np.ones(len(in_scores)), np.zeros(len(out_scores))]
    s = -np.r_[in_scores.numpy(), out_scores.numpy()]  # higher = more in scope
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return {"auroc": float(roc_auc_score(y, s)),
            "fpr95": float(fpr[np.searchsorted(tpr, 0.95, side="left")])}


def calibrate_threshold(in_scope_scores: torch.Tensor, tpr: float = 0.95) -> float:
    """The smallest threshold that keeps at least ``tpr`` of the in-scope images (score <= it)."""
    if not 0 < tpr <= 1:
        raise RsnetError(f"openset.tpr={tpr} must be in (0, 1]")
    if len(in_scope_scores) == 0:
        raise RsnetError("the validation split has no in-scope image to calibrate the misc threshold on")
    k = math.ceil(tpr * len(in_scope_scores))
    return float(in_scope_scores.double().sort().values[k - 1])


def decide(logits: torch.Tensor, misc_label: int, score: str, threshold: float) -> torch.Tensor:
    """(n,) int64 labels: misc where the score exceeds ``threshold``, else the best in-scope class."""
    cols = _in_scope_columns(logits.shape[1], misc_label)
    best = cols[logits[:, cols].argmax(1)]
    return torch.where(misc_score(logits, misc_label, score) > threshold, misc_label, best)


def openset_metrics(val: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                    unseen_logits: torch.Tensor | None, misc_label: int, score: str = "misc",
                    tpr: float = 0.95) -> dict[str, float | str]:
    """The misc detector of an N-way model, from its logits.

    val, test: (logits (n, N), targets (n,)) of the validation and test splits; unseen_logits:
    (n_u, N) on the test images of unseen classes, or None. Returns the calibrated threshold
    (``openset/score``, ``openset/threshold``), the local / global / raw accuracies of the
    thresholded decision on the test split (``test/cal/...``) and AUROC / FPR@95TPR of every
    score on seen misc (``openset/seen/...``: the test split's misc images) and on unseen
    classes (``openset/unseen/...``).
    """
    (val_logits, val_y), (test_logits, test_y) = val, test
    threshold = calibrate_threshold(misc_score(val_logits[val_y != misc_label], misc_label, score), tpr)
    pred = decide(test_logits, misc_label, score, threshold)
    out: dict[str, float | str] = {"openset/score": score, "openset/tpr": tpr,
                                   "openset/threshold": threshold}
    out.update({f"test/cal/{k}": v for k, v in scope_metrics_of_predictions(pred, test_y, misc_label).items()
                if k.startswith("acc")})
    in_scope = test_y != misc_label
    for s in SCORES:
        test_s = misc_score(test_logits, misc_label, s)
        sets = {"seen": test_s[~in_scope]}
        if unseen_logits is not None and len(unseen_logits):
            sets["unseen"] = misc_score(unseen_logits, misc_label, s)
        for name, out_s in sets.items():
            if len(out_s):
                out.update({f"openset/{name}/{k}_{s}": v
                            for k, v in detection_metrics(test_s[in_scope], out_s).items()})
    return out
