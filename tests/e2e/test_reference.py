"""The reference-model attack (offline RMIA): the score on outputs with a known answer, the data its
reference models see, and a tiny real run that trains, caches and reuses them."""

import csv
import json

import numpy as np
import pytest
from omegaconf import OmegaConf

from amint_pl.data.splits import SplitSizes, build_splits
from amint_pl.errors import ConfigError
from amint_pl.evaluation.metrics import membership_metrics
from amint_pl.evaluation.reference import (
    reference_config,
    reference_data,
    reference_roles,
    rmia_scores,
)
from tests.conftest import TINY, read_results, run_into


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


# ---------------------------------------------------------------------------- a tiny real run
# A small over-fitted target (150 members, 25 epochs): where RMIA's reference models pay off.
REFERENCE = [
    *TINY,
    "attack.reference=true",
    "attack.reference_models=2",
    "dataset.splits.members=150",
    "dataset.splits.external=50",
    "trainer.max_epochs=25",
    "early_stopping_patience=100",
]


def _run(tmp_path, name, *overrides):
    return run_into(tmp_path / name, tmp_path / "data", *overrides)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("reference")
    proc, run_dir = _run(tmp_path, "first", *REFERENCE, "mint=active")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp_path, proc, run_dir


@pytest.mark.slow
def test_tiny_run_scores_rmia_in_every_report_and_beats_the_loss_attack(first_run):
    _, proc, run_dir = first_run
    results = read_results(run_dir)
    for protocol in ("paper", "strict"):
        rmia = results["membership"][protocol]["rmia"]
        assert 0.0 <= rmia["auc"] <= 1.0 and rmia["n_nonmembers"] == 120
        assert rmia["acc_at_0.5"] is None  # a share of population samples, not a probability
    paper = results["membership"]["paper"]
    assert paper["rmia"]["auc"] > paper["loss"]["auc"] + 0.02  # measured: 0.818 vs 0.752
    summary = results["reference_attack"]
    assert summary["method"] == "rmia" and summary["reference_models"] == 2
    # Digits' 1,258 train-pool samples leave 1,058 outside D and E: 212 z, sets of |D| = 150.
    assert summary["population_source"] == "population" and summary["population"] == 212
    assert summary["training_size"] == summary["target_members"] == 150
    assert summary["epochs"] == 25 and summary["reused"] == 0
    assert len(summary["reference_test_acc"]) == 2
    cached = sorted(p.name for p in (run_dir / "reference_models").iterdir())
    assert cached == ["ref0.ckpt", "ref1.ckpt"]  # the training folders are cleaned up
    assert proc.stdout.count("reference model ") == 2
    assert "training on 150 population samples for 25 epochs" in proc.stdout
    with open(run_dir / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert not {r["role"] for r in rows} & {"population"}  # z are scored, not reported
    scores = np.array([float(r["score_rmia"]) for r in rows])
    assert ((scores >= 0) & (scores <= 1)).all()
    assert "RMIA (Zarifzadeh)" in proc.stdout  # the printed table
    # Each reference model's epochs are progress lines too, in the output and in run.log.
    for text in (proc.stdout, (run_dir / "run.log").read_text()):
        lines = [line for line in text.splitlines() if "val/aud_acc" in line]
        assert sum(" - reference epoch " in line for line in lines) == 2 * 25


@pytest.mark.slow
def test_without_room_for_a_population_e_stands_in_and_says_so(tmp_path):
    proc, run_dir = _run(
        tmp_path,
        "cramped",
        *TINY,
        "attack.reference=true",
        "attack.reference_models=1",
        "dataset.splits.external=1000",
        "trainer.max_epochs=1",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = read_results(run_dir)["reference_attack"]
    assert summary["population_source"] == "external" and summary["population"] == 200
    # 800 external samples after z: sets of |D| = 120, one epoch like the target.
    assert summary["training_size"] == 120 and summary["epochs"] == 1
    warning = [line for line in proc.stdout.splitlines() if "RMIA: the train pool leaves" in line]
    assert len(warning) == 1 and "MINT negatives" in warning[0]


@pytest.mark.slow
def test_cached_reference_models_are_reused(first_run):
    tmp_path, _, first_dir = first_run
    cache = first_dir / "reference_models"
    stamps = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    proc, run_dir = _run(
        tmp_path, "second", *REFERENCE, "mint=off", f"attack.reference_dir={cache}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = read_results(run_dir)["reference_attack"]
    assert summary["reused"] == 2 and proc.stdout.count("reusing") == 2
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == stamps
    assert not (run_dir / "reference_models").exists()


@pytest.mark.slow
def test_reference_models_of_other_data_are_refused(first_run):
    tmp_path, _, first_dir = first_run
    cache = first_dir / "reference_models"
    proc, run_dir = _run(
        tmp_path, "third", *REFERENCE, "mint=off", "seed=1", f"attack.reference_dir={cache}"
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "ref0.ckpt was trained on other data" in last
    assert "delete it" in last and "Traceback" not in proc.stderr
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "failed" and "CheckpointError" in results["error"]


@pytest.mark.slow
def test_bad_attack_setting_stops_before_training(tmp_path):
    proc, run_dir = _run(tmp_path, "bad", *REFERENCE, "attack.gamma=0")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "error: attack.gamma=0.0 must be positive"
    assert not list((run_dir / "checkpoints").rglob("*.ckpt"))  # nothing trained
