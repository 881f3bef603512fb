"""Membership metrics, the way the field reads them: AUC, TPR at low FPR, calibrated accuracy.

Scores are oriented so that higher means "more likely a member". AUC and the ROC come from
torchmetrics; scores are rank-transformed to (0, 1] first, which keeps their order (and so every
ROC point) while avoiding torchmetrics' sigmoid squashing of unbounded scores into ties.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata
from torchmetrics.functional.classification import binary_auroc, binary_roc

FPR_TARGETS = {"tpr_at_1%_fpr": 0.01, "tpr_at_0.1%_fpr": 0.001}


def _ranked(members: np.ndarray, nonmembers: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    scores = np.concatenate([members, nonmembers]).astype(np.float64)
    ranks = rankdata(scores, method="average") / len(scores)
    target = np.concatenate([np.ones(len(members)), np.zeros(len(nonmembers))])
    return torch.as_tensor(ranks, dtype=torch.float64), torch.as_tensor(target, dtype=torch.long)


def auc(members: np.ndarray, nonmembers: np.ndarray) -> float:
    """Area under the ROC curve of member vs non-member scores."""
    preds, target = _ranked(members, nonmembers)
    return float(binary_auroc(preds, target))


def roc(members: np.ndarray, nonmembers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) points of the ROC curve, FPR ascending."""
    preds, target = _ranked(members, nonmembers)
    fpr, tpr, _ = binary_roc(preds, target)
    return fpr.numpy(), tpr.numpy()


def tpr_at_fpr(members: np.ndarray, nonmembers: np.ndarray, fpr_target: float) -> float:
    """The highest TPR among ROC points with FPR <= fpr_target."""
    fpr, tpr = roc(members, nonmembers)
    ok = fpr <= fpr_target + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def balanced_accuracy(members: np.ndarray, nonmembers: np.ndarray, threshold: float) -> float:
    """(TPR + TNR) / 2 when "member" means score >= threshold."""
    return 0.5 * (float(np.mean(members >= threshold)) + float(np.mean(nonmembers < threshold)))


def calibrate_threshold(members: np.ndarray, nonmembers: np.ndarray) -> float:
    """The threshold that maximises balanced accuracy on calibration scores."""
    candidates = np.unique(np.concatenate([members, nonmembers]))
    members_sorted, nonmembers_sorted = np.sort(members), np.sort(nonmembers)
    # TPR(t) = share of members >= t; TNR(t) = share of non-members < t.
    tpr = 1.0 - np.searchsorted(members_sorted, candidates, side="left") / max(len(members), 1)
    tnr = np.searchsorted(nonmembers_sorted, candidates, side="left") / max(len(nonmembers), 1)
    best = int(np.argmax(tpr + tnr))
    return float(candidates[best])


def membership_metrics(
    members: np.ndarray,
    nonmembers: np.ndarray,
    calib_members: np.ndarray | None = None,
    calib_nonmembers: np.ndarray | None = None,
    probability: bool = False,
) -> dict[str, Any]:
    """Every metric of one method on one protocol.

    Args:
        members, nonmembers: scores of the reported (balanced) sets.
        calib_members, calib_nonmembers: scores of the calibration sets (None: no calibration).
        probability: the scores are P(member), so accuracy at threshold 0.5 means something.

    Returns:
        acc_at_0.5 (None unless `probability`), balanced_acc_calibrated and its threshold (None
        without calibration sets), auc, tpr_at_1%_fpr, tpr_at_0.1%_fpr, and per TPR whether it is
        meaningful (at least 1/FPR non-members), with the set sizes.
    """
    members, nonmembers = np.asarray(members, float), np.asarray(nonmembers, float)
    if len(members) == 0 or len(nonmembers) == 0:
        raise ValueError("membership metrics need members and non-members")
    result: dict[str, Any] = {
        "n_members": len(members),
        "n_nonmembers": len(nonmembers),
        "auc": auc(members, nonmembers),
        "acc_at_0.5": balanced_accuracy(members, nonmembers, 0.5) if probability else None,
        "balanced_acc_calibrated": None,
        "threshold_calibrated": None,
    }
    if (
        calib_members is not None
        and calib_nonmembers is not None
        and len(calib_members)
        and len(calib_nonmembers)
    ):
        threshold = calibrate_threshold(
            np.asarray(calib_members, float), np.asarray(calib_nonmembers, float)
        )
        result["threshold_calibrated"] = threshold
        result["balanced_acc_calibrated"] = balanced_accuracy(members, nonmembers, threshold)
    fpr, tpr = roc(members, nonmembers)
    for key, target in FPR_TARGETS.items():
        ok = fpr <= target + 1e-12
        result[key] = float(tpr[ok].max()) if ok.any() else 0.0
        result[f"{key}_meaningful"] = len(nonmembers) >= 1.0 / target
    return result
