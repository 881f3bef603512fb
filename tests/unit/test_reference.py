"""The reference-model attack (offline RMIA): the score on outputs with a known answer, and the data
and steps its reference models get (tests/e2e/test_reference.py: a tiny real run that trains,
caches and reuses them)."""

import numpy as np
import pytest
from omegaconf import OmegaConf

from amint_pl.data.splits import SplitSizes, build_splits
from amint_pl.errors import ConfigError
from amint_pl.evaluation.metrics import membership_metrics
from amint_pl.evaluation.reference import rmia_scores
from amint_pl.training.reference import reference_config, reference_data, reference_roles


# ------------------------------------------------------------------------------- the score
def test_rmia_known_answer():
    # a = 0: Pr(.) = (mean reference probability + 1) / 2.
    # z: reference probability 0 -> Pr(z) = 0.5 -> ratios 2 * (0.25, 0.5, 1.0) = (0.5, 1, 2).
    target_z, reference_z = np.array([0.25, 0.5, 1.0]), np.zeros((3, 2))
    # x0: 0.9 / 0.5 = 1.8; x1: 0.9 / ((0.8 + 1) / 2) = 1.0; x2: 0.
    target_x = np.array([0.9, 0.9, 0.0])
    reference_x = np.array([[0.0, 0.0], [0.8, 0.8], [0.5, 0.5]])
    gamma1 = rmia_scores(target_x, reference_x, target_z, reference_z, offline_a=0.0, gamma=1.0)
    assert gamma1 == pytest.approx([2 / 3, 1 / 3, 0.0])  # LR > gamma is strict: 1.0 / 1.0 fails
    gamma2 = rmia_scores(target_x, reference_x, target_z, reference_z, offline_a=0.0, gamma=2.0)
    assert gamma2 == pytest.approx([1 / 3, 0.0, 0.0])
    # a = 0.5: Pr(x) = (1.5 * 0.6 + 0.5) / 2 = 0.7, so x's ratio is 0.7 / 0.7 = 1; z's ratio is
    # 0.35 / 0.7 = 0.5 (counted) and 0.7 / 0.7 = 1 (not).
    scaled = rmia_scores(
        np.array([0.7]),
        np.array([[0.6]]),
        np.array([0.35, 0.7]),
        np.array([[0.6], [0.6]]),
        offline_a=0.5,
        gamma=1.0,
    )
    assert scaled == pytest.approx([0.5])


def test_rmia_calibrates_for_difficulty_where_the_loss_attack_cannot():
    """Samples differ in difficulty d, the reference models' (OUT) probability of the true label.
    The target gives non-members d and members a * d + (1 - a), RMIA's offline model of an IN
    probability. The target's probability alone (LOSS) drowns in the spread of d; RMIA divides it
    out."""
    rng = np.random.default_rng(0)
    n, k, a = 2000, 4, 0.8

    def outputs(difficulty, member):
        reference = difficulty[:, None] + rng.normal(0, 0.01, (len(difficulty), k))
        target = np.where(member, a * difficulty + 1 - a, difficulty)
        target = target + rng.normal(0, 0.01, len(difficulty))
        return np.clip(target, 1e-3, 1), np.clip(reference, 1e-3, 1)

    is_member = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    target, reference = outputs(rng.uniform(0.05, 0.95, 2 * n), is_member)
    z_target, z_reference = outputs(rng.uniform(0.05, 0.95, 500), np.zeros(500, bool))
    score = rmia_scores(target, reference, z_target, z_reference, offline_a=a, gamma=2.0)
    rmia_auc = membership_metrics(score[is_member], score[~is_member])["auc"]
    loss_auc = membership_metrics(target[is_member], target[~is_member])["auc"]
    assert rmia_auc > 0.99 and loss_auc < 0.65


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"offline_a": 1.0}, "attack.offline_a=1.0 must lie in [0, 1)"), ({"gamma": 0}, "gamma=0")],
)
def test_rmia_refuses_bad_settings(kwargs, message):
    args = {"offline_a": 0.33, "gamma": 2.0} | kwargs
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(")", r"\)")):
        rmia_scores(np.ones(2), np.ones((2, 1)), np.ones(2), np.ones((2, 1)), **args)


def test_reference_models_train_on_sets_as_large_as_the_targets_d():
    data = np.arange(1000, 1500)
    population, sets = reference_roles(data, 4, 0.2, seed=0, train_size=150)
    assert len(population) == 100
    for train, rest in sets:
        assert len(train) == 150 and len(rest) == 250
        assert not set(train) & set(rest) and not (set(train) | set(rest)) & set(population)
        assert set(train) | set(rest) | set(population) == set(data)
    # 0/1 and 2/3: disjoint pairs of one permutation; the two pairs draw different sets.
    assert not set(sets[0][0]) & set(sets[1][0]) and not set(sets[2][0]) & set(sets[3][0])
    assert set(sets[0][0]) != set(sets[2][0])
    again, sets_again = reference_roles(data, 4, 0.2, seed=0, train_size=150)
    assert (again == population).all() and (sets_again[3][0] == sets[3][0]).all()
    # Data for fewer than |D|: all but one sample each, overlapping.
    _, small = reference_roles(data[:100], 2, 0.2, seed=0, train_size=150)
    assert [len(train) for train, _ in small] == [79, 79]
    with pytest.raises(ConfigError, match="attack.reference_models=0"):
        reference_roles(data, 0, 0.2, seed=0, train_size=150)


def test_the_population_role_feeds_the_reference_models_when_it_has_room():
    sizes = SplitSizes(400, 0.25, 300, 100)
    roomy = build_splits(2000, 500, sizes, seed=0)  # 1,300 untouched samples
    data, source = reference_data(roomy, 0.2)
    assert source == "population" and np.array_equal(data, roomy["population"])
    cramped = build_splits(1000, 500, sizes, seed=0)  # 300 untouched: too few for |D| = 400
    data, source = reference_data(cramped, 0.2)
    assert source == "external" and np.array_equal(data, cramped["external"])


def test_reference_models_take_as_many_optimiser_steps_as_the_target():
    cfg = OmegaConf.create(
        {"mint": {"mode": "active"}, "batch_size": 32, "trainer": {"max_epochs": 10}}
    )
    # The target: 10 epochs of ceil(600 / 16) = 38 steps. Sets of 600: 10 epochs; of 150: 38.
    assert reference_config(cfg, 600, 600).trainer.max_epochs == 10
    assert reference_config(cfg, 600, 150).trainer.max_epochs == 38
    assert reference_config(cfg, 600, 150).mint.mode == "off"
