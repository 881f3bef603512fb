"""Membership metrics, the way the field reads them: AUC, TPR at low FPR, calibrated accuracy.

Scores are oriented so that higher means "more likely a member". The AUC comes from the scores'
ranks; the ROC from torchmetrics, the scores rank-transformed to (0, 1] first, which keeps their
order (and so every ROC point) while avoiding torchmetrics' sigmoid squashing of unbounded scores
into ties.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata
from torchmetrics.functional.classification import binary_roc

FPR_TARGETS = {"tpr_at_1%_fpr": 0.01, "tpr_at_0.1%_fpr": 0.001}
# The metrics of a method that a run reports (its summary on every logger, the per-method table).
REPORTED_METRICS = ("auc", "acc_at_0.5", "balanced_acc_calibrated", *FPR_TARGETS)


def _ranked(members: np.ndarray, nonmembers: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    scores = np.concatenate([members, nonmembers]).astype(np.float64)
    ranks = rankdata(scores, method="average") / len(scores)
    target = np.concatenate([np.ones(len(members)), np.zeros(len(nonmembers))])
    return torch.as_tensor(ranks, dtype=torch.float64), torch.as_tensor(target, dtype=torch.long)


def auc(members: np.ndarray, nonmembers: np.ndarray) -> float:
    """Area under the ROC curve of member vs non-member scores: the share of (member,
    non-member) pairs in the right order, ties counting one half, from the scores' ranks in
    double precision (exactly 1.0 for scores apart, at any number of samples)."""
    scores = np.concatenate([members, nonmembers]).astype(np.float64)
    ranks = rankdata(scores, method="average")
    m = len(members)
    return float((ranks[:m].sum() - m * (m + 1) / 2) / (m * len(nonmembers)))


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


def _resample_counts(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples, n) how often each of n samples is drawn in each bootstrap resample."""
    draws = rng.integers(0, n, size=(resamples, n)) + n * np.arange(resamples)[:, None]
    return np.bincount(draws.ravel(), minlength=resamples * n).reshape(resamples, n)


def _prefix(weights: np.ndarray) -> np.ndarray:
    """(B, n + 1) running sums of weights (B, n), starting at 0."""
    return np.concatenate([np.zeros((len(weights), 1)), np.cumsum(weights, axis=1)], axis=1)


def _weighted_auc_and_tprs(
    members: np.ndarray, nonmembers: np.ndarray, w_members: np.ndarray, w_nonmembers: np.ndarray
) -> dict[str, np.ndarray]:
    """AUC and TPR at each FPR target for each row of sample weights (resample counts), with
    the exact definitions of `auc` and `tpr_at_fpr` (all weights 1 gives their values)."""
    n_m, n_n = len(members), len(nonmembers)
    m_order, n_order = np.argsort(members, kind="stable"), np.argsort(nonmembers, kind="stable")
    ms, ns = members[m_order], nonmembers[n_order]
    cm, cn = _prefix(w_members[:, m_order]), _prefix(w_nonmembers[:, n_order])
    # AUC: P(member > non-member) + P(tie) / 2, each pair weighted by its draw counts.
    below, upto = np.searchsorted(ns, ms, "left"), np.searchsorted(ns, ms, "right")
    pairs = cn[:, below] + 0.5 * (cn[:, upto] - cn[:, below])
    out = {"auc": (w_members[:, m_order] * pairs).sum(1) / (n_m * n_n)}
    # TPR at FPR f: every threshold above v*, the largest non-member score with more than f * n
    # non-members at or above it, keeps FPR <= f; the best of them counts members above v*.
    values = np.unique(ns)
    at_or_above = n_n - cn[:, np.searchsorted(ns, values, "left")]  # (B, unique values)
    for key, target in FPR_TARGETS.items():
        n_over = (at_or_above > (target + 1e-12) * n_n).sum(1)
        v_star = values[np.maximum(n_over - 1, 0)]
        above = n_m - cm[np.arange(len(cm)), np.searchsorted(ms, v_star, "right")]
        out[key] = np.where(n_over > 0, above / n_m, 1.0)
    return out


def bootstrap_intervals(
    members: np.ndarray,
    nonmembers: np.ndarray,
    resamples: int,
    seed: int,
    confidence: float = 0.95,
) -> dict[str, list[float]]:
    """Percentile bootstrap confidence intervals of AUC and TPR at 1% and 0.1% FPR.

    Members and non-members are resampled with replacement, each set at its own size; the same
    seed draws the same resamples for every method scored on the same sets (paired intervals).

    Returns:
        {"auc_ci": [low, high], "tpr_at_1%_fpr_ci": [...], "tpr_at_0.1%_fpr_ci": [...]}.
    """
    members, nonmembers = np.asarray(members, float), np.asarray(nonmembers, float)
    rng = np.random.default_rng([seed, 0x424F4F54])  # "BOOT"
    # Blocks of resamples bound the memory: (block, n) counts for the larger set.
    block = max(1, min(resamples, 4_000_000 // max(len(members), len(nonmembers), 1)))
    values: dict[str, list[np.ndarray]] = {}
    for start in range(0, resamples, block):
        b = min(block, resamples - start)
        w_m = _resample_counts(len(members), b, rng)
        w_n = _resample_counts(len(nonmembers), b, rng)
        for key, v in _weighted_auc_and_tprs(members, nonmembers, w_m, w_n).items():
            values.setdefault(key, []).append(v)
    tail = 100 * (1 - confidence) / 2
    return {
        f"{key}_ci": [float(x) for x in np.percentile(np.concatenate(v), [tail, 100 - tail])]
        for key, v in values.items()
    }


def membership_metrics(
    members: np.ndarray,
    nonmembers: np.ndarray,
    calib_members: np.ndarray | None = None,
    calib_nonmembers: np.ndarray | None = None,
    probability: bool = False,
    resamples: int = 0,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Every metric of one method on one protocol.

    Args:
        members, nonmembers: scores of the reported sets (of any sizes: the accuracies are
            balanced, the mean of TPR and TNR).
        calib_members, calib_nonmembers: scores of the calibration sets (None: no calibration).
        probability: the scores are P(member), so accuracy at threshold 0.5 means something.
        resamples, seed, confidence: the bootstrap of the confidence intervals (0: none).

    Returns:
        acc_at_0.5 (None unless `probability`), balanced_acc_calibrated and its threshold (None
        without calibration sets), auc, tpr_at_1%_fpr, tpr_at_0.1%_fpr, and per TPR whether it is
        meaningful (at least 1/FPR non-members), with the set sizes; with `resamples`, the
        confidence intervals auc_ci, tpr_at_1%_fpr_ci, tpr_at_0.1%_fpr_ci, `resamples` and
        `confidence`.
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
    if resamples:
        result.update(bootstrap_intervals(members, nonmembers, resamples, seed, confidence))
        result["resamples"], result["confidence"] = resamples, confidence
    return result
