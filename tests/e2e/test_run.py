"""`python -m amint_pl.run` end to end, as a user runs it (real Hydra, Lightning, wandb offline)."""

import csv
import math

import pytest

from tests.conftest import TINY, read_results

# Each test starts the entry points as processes: the full suite only (make test).
pytestmark = pytest.mark.slow

RUN_FILES = (
    "results.json",
    "scores.csv",
    "roc.png",
    "scores_hist.png",
    "splits.npz",
    ".hydra/config.yaml",
)


def _check_run_files(run_dir, mode):
    for name in RUN_FILES:
        assert (run_dir / name).is_file() and (run_dir / name).stat().st_size > 0, name
    assert (run_dir / "roc.png").read_bytes()[:4] == b"\x89PNG"
    results = read_results(run_dir)
    assert results["status"] == "completed" and results["mint_mode"] == mode
    assert len(results["config_digest"]) == 64 and len(results["split_fingerprint"]) == 64
    assert 0.0 <= results["audited"]["test_acc"] <= 1.0
    methods = {"loss", "confidence", "entropy", "modified_entropy"} | (
        {"mint"} if mode != "off" else set()
    )
    sizes = results["split_sizes"]
    for protocol, role in (("paper", "members_seen"), ("strict", "members_unseen")):
        assert set(results["membership"][protocol]) == methods
        for m in results["membership"][protocol].values():
            assert 0.0 <= m["auc"] <= 1.0 and 0.0 <= m["balanced_acc_calibrated"] <= 1.0
            # Every member of the role but its calibration slice, every test non-member.
            assert m["n_members"] == sizes[role] - sizes[f"{role}_calib"]
            assert m["n_nonmembers"] == sizes["nonmembers_eval"]
            low, high = m["auc_ci"]
            assert low <= m["auc"] <= high and m["resamples"] == 1000
    with open(run_dir / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert {f"score_{m}" for m in methods} <= set(rows[0])
    reported = [r for r in rows if r["reported_paper"] == "1"]
    paper = results["membership"]["paper"]["loss"]
    assert len(reported) == paper["n_members"] + paper["n_nonmembers"]
    assert all(math.isfinite(float(r["score_loss"])) for r in rows)
    return results


@pytest.mark.parametrize("mode", ["active", "passive", "off"])
def test_each_mint_mode_writes_every_file(run_amint, mode):
    proc, run_dir = run_amint(*TINY, f"mint={mode}")
    results = _check_run_files(run_dir, mode)
    assert "audited test acc" in proc.stdout  # the Rich table
    expected = {"active": {"joint"}, "passive": {"audited", "mint_head"}, "off": {"audited"}}[mode]
    assert set(results["best_checkpoints"]) == expected
    assert (run_dir / "csv" / "metrics.csv").is_file()


def test_default_config_learns_digits_and_logs_to_wandb_offline(run_amint):
    # The shipped defaults (both loggers) with fewer epochs: the audited model must learn.
    proc, run_dir = run_amint("trainer.max_epochs=8", "early_stopping_patience=100")
    results = _check_run_files(run_dir, "active")
    assert results["audited"]["test_acc"] > 0.8
    assert results["membership"]["paper"]["mint"]["auc"] > 0.6
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert offline and list(offline[0].glob("*.wandb"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("dataset=nope", "unknown dataset 'nope'"),
        ("model=nope", "unknown model 'nope'"),
        ("mint.taps=[99]", "out of range"),
        ("mint.mode=sometimes", "mint.mode='sometimes' is unknown"),
    ],
)
def test_bad_override_is_one_line_and_exit_2(run_amint, override, message):
    proc, _ = run_amint(*TINY, override, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert message in lines[-1] and lines[-1].startswith("error: ")
    assert "Traceback" not in proc.stderr
