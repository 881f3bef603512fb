"""The reference-model attack (offline RMIA) in a tiny real run: it trains, caches and reuses its
reference models, and refuses those of other data."""

import csv
import json

import numpy as np
import pytest

from tests.helpers import TINY, read_results, run_into

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------------------- a tiny real run
# A small over-fitted target (150 members, 15 epochs): where RMIA's reference models pay off.
EPOCHS = 15
REFERENCE = [
    *TINY,
    "attack.reference=true",
    "attack.reference_models=2",
    "dataset.splits.members=150",
    "dataset.splits.external=50",
    f"trainer.max_epochs={EPOCHS}",
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


def test_tiny_run_scores_rmia_in_every_report_and_beats_the_loss_attack(first_run):
    _, proc, run_dir = first_run
    results = read_results(run_dir)
    for protocol in ("paper", "strict"):
        rmia = results["membership"][protocol]["rmia"]
        assert 0.0 <= rmia["auc"] <= 1.0 and rmia["n_nonmembers"] == 120
        assert rmia["acc_at_0.5"] is None  # a share of population samples, not a probability
    paper = results["membership"]["paper"]
    assert paper["rmia"]["auc"] > paper["loss"]["auc"] + 0.02  # measured: 0.818 vs 0.752 (seed 0)
    summary = results["reference_attack"]
    assert summary["method"] == "rmia" and summary["reference_models"] == 2
    # Digits' 1,258 train-pool samples leave 1,058 outside D and E: 212 z, sets of |D| = 150.
    assert summary["population_source"] == "population" and summary["population"] == 212
    assert summary["training_size"] == summary["target_members"] == 150
    assert summary["epochs"] == EPOCHS and summary["reused"] == 0
    assert len(summary["reference_test_acc"]) == 2
    cached = sorted(p.name for p in (run_dir / "reference_models").iterdir())
    assert cached == ["ref0.ckpt", "ref1.ckpt"]  # the training folders are cleaned up
    assert proc.stdout.count("reference model ") == 2
    assert f"training on 150 population samples for {EPOCHS} epochs" in proc.stdout
    with open(run_dir / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert not {r["role"] for r in rows} & {"population"}  # z are scored, not reported
    scores = np.array([float(r["score_rmia"]) for r in rows])
    assert ((scores >= 0) & (scores <= 1)).all()
    assert "RMIA (Zarifzadeh)" in proc.stdout  # the printed table
    # Each reference model's epochs are progress lines too, in the output and in run.log.
    for text in (proc.stdout, (run_dir / "run.log").read_text()):
        lines = [line for line in text.splitlines() if "val/aud_acc" in line]
        assert sum(" - reference epoch " in line for line in lines) == 2 * EPOCHS


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


def test_bad_attack_setting_stops_before_training(tmp_path):
    proc, run_dir = _run(tmp_path, "bad", *REFERENCE, "attack.gamma=0")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "error: attack.gamma=0.0 must be positive"
    assert not list((run_dir / "checkpoints").rglob("*.ckpt"))  # nothing trained
