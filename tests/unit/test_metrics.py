import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from amint_pl.evaluation import metrics
from amint_pl.evaluation.attacks import classic_attack_scores
from amint_pl.evaluation.metrics import calibrate_threshold, membership_metrics, tpr_at_fpr


def _scores(seed: int, n: int = 2000, shift: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(shift, 1.0, n), rng.normal(0.0, 1.0, n)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_and_tpr_agree_with_scikit_learn(seed):
    members, nonmembers = _scores(seed)
    # Unbounded scores with ties: the case a sigmoid would squash.
    members = np.round(members * 40, 0)
    nonmembers = np.round(nonmembers * 40, 0)
    y = np.r_[np.ones(len(members)), np.zeros(len(nonmembers))]
    s = np.r_[members, nonmembers]
    m = membership_metrics(members, nonmembers)
    assert m["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-6)
    fpr, tpr, _ = roc_curve(y, s)
    for key, target in (("tpr_at_1%_fpr", 0.01), ("tpr_at_0.1%_fpr", 0.001)):
        assert m[key] == pytest.approx(tpr[fpr <= target].max(), abs=1e-6)
        assert m[f"{key}_meaningful"] is True


def test_known_answers():
    members = np.array([0.9, 0.8, 0.7, 0.6])
    nonmembers = np.array([0.1, 0.2, 0.3, 0.65])
    m = membership_metrics(members, nonmembers, members, nonmembers, probability=True)
    assert m["auc"] == pytest.approx(15 / 16)
    assert m["acc_at_0.5"] == pytest.approx(7 / 8)
    # 0.6 and 0.7 both misplace one sample: either is a best threshold.
    assert m["threshold_calibrated"] in (0.6, 0.7)
    assert m["balanced_acc_calibrated"] == pytest.approx(7 / 8)
    assert m["tpr_at_1%_fpr"] == pytest.approx(0.75)
    assert m["tpr_at_1%_fpr_meaningful"] is False  # 4 non-members cannot measure 1% FPR


def test_perfect_and_inverted_scores():
    assert membership_metrics(np.array([2.0, 3.0]), np.array([0.0, 1.0]))["auc"] == 1.0
    assert membership_metrics(np.array([0.0, 1.0]), np.array([2.0, 3.0]))["auc"] == 0.0
    # At a run's sizes (360 CE-only members, 9,000 test non-members, most of them tied at a
    # record's empty answer) too: exactly 1 and 0 (a float32 area read 0.99999994 here, and
    # 1.0000001 in a run).
    rng = np.random.default_rng(0)
    members = rng.uniform(0.52, 0.6, 360)
    nonmembers = np.r_[np.full(4000, 0.5), rng.uniform(0.4, 0.49, 5000)]
    assert metrics.auc(members, nonmembers) == 1.0
    assert metrics.auc(nonmembers, members) == 0.0
    assert tpr_at_fpr(np.array([2.0, 3.0]), np.array([0.0, 1.0]), 0.0) == 1.0


def test_calibrated_threshold_maximises_balanced_accuracy():
    members, nonmembers = _scores(5, 500, shift=2.0)
    t = calibrate_threshold(members, nonmembers)
    best = max(
        0.5 * (np.mean(members >= c) + np.mean(nonmembers < c)) for c in np.r_[members, nonmembers]
    )
    assert 0.5 * (np.mean(members >= t) + np.mean(nonmembers < t)) == pytest.approx(best)


def test_classic_attacks_on_known_outputs():
    # Sample 0: confident and right (member-like); sample 1: uniform (non-member-like).
    logits = torch.tensor([[10.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([0, 0])
    s = classic_attack_scores(logits, labels)
    for name in ("loss", "confidence", "entropy", "modified_entropy"):
        assert s[name][0] > s[name][1], name
    assert s["loss"][1] == pytest.approx(-np.log(3))
    assert s["confidence"][1] == pytest.approx(1 / 3)
    assert s["entropy"][1] == pytest.approx(-np.log(3))
    # Confident but wrong: modified entropy (label-aware) calls it a non-member, entropy does not.
    wrong = classic_attack_scores(torch.tensor([[0.0, 10.0, 0.0]]), torch.tensor([0]))
    assert wrong["entropy"][0] > s["entropy"][1]
    assert wrong["modified_entropy"][0] < s["modified_entropy"][1]


@pytest.mark.parametrize(("n_members", "n_nonmembers"), [(5, 7), (60, 30), (400, 1500)])
def test_a_bootstrap_resample_scores_as_the_resampled_sets_would(n_members, n_nonmembers):
    # Each resample is a weighting of the samples by their draw counts: it must give exactly what
    # the metrics give on the resampled sets written out (ties included: scores are rounded).
    rng = np.random.default_rng(n_members)
    for _ in range(10):
        members = np.round(rng.normal(0.4, 1, n_members), 1)
        nonmembers = np.round(rng.normal(0, 1, n_nonmembers), 1)
        counts_m = metrics._resample_counts(n_members, 1, rng)
        counts_n = metrics._resample_counts(n_nonmembers, 1, rng)
        for w_m, w_n in ((np.ones_like(counts_m), np.ones_like(counts_n)), (counts_m, counts_n)):
            got = metrics._weighted_auc_and_tprs(members, nonmembers, w_m, w_n)
            drawn_m, drawn_n = np.repeat(members, w_m[0]), np.repeat(nonmembers, w_n[0])
            assert got["auc"][0] == pytest.approx(metrics.auc(drawn_m, drawn_n), abs=1e-6)
            for key, fpr in metrics.FPR_TARGETS.items():
                assert got[key][0] == pytest.approx(metrics.tpr_at_fpr(drawn_m, drawn_n, fpr))


def test_confidence_intervals_hold_the_estimate_and_narrow_with_more_samples():
    rng = np.random.default_rng(0)
    widths = []
    for n in (200, 3200):
        members, nonmembers = rng.normal(0.5, 1, n), rng.normal(0, 1, n)
        result = metrics.membership_metrics(members, nonmembers, resamples=400, seed=1)
        low, high = result["auc_ci"]
        assert low < result["auc"] < high and result["resamples"] == 400
        for key in metrics.FPR_TARGETS:
            assert result[f"{key}_ci"][0] <= result[key] <= result[f"{key}_ci"][1]
        widths.append(high - low)
        again = metrics.membership_metrics(members, nonmembers, resamples=400, seed=1)
        assert again["auc_ci"] == result["auc_ci"]  # seeded
    assert widths[1] < widths[0] / 2  # ~1/sqrt(n): 16x the samples, ~1/4 the width
    assert "auc_ci" not in metrics.membership_metrics(members, nonmembers)  # resamples=0
