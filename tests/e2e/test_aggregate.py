"""A real parallel (joblib) sweep in which jobs fail, and `python -m amint_pl.aggregate` on it: the
failed jobs do not stop the sweep, the table matches the runs' results.json files, failed and
unfinished runs are listed."""

import csv
import shutil

import pytest

from tests.helpers import ONE_EPOCH, read_results, run_main, run_module

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A real parallel sweep of four tiny jobs: mint=active and mint=off, each once with more
    members than the data set has (those two fail, the first job among them) and once with splits
    that fit; plus an unfinished run."""
    tmp = tmp_path_factory.mktemp("aggregate")
    sweep_dir = tmp / "sweep"
    proc = run_module(
        "amint_pl.run",
        "-m",
        *ONE_EPOCH,
        f"paths.data_dir={tmp / 'data'}",
        f"hydra.sweep.dir={sweep_dir}",
        "hydra/launcher=joblib",
        "mint=active,off",
        "dataset.splits.members=100000,40",
    )
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    # The failed jobs (the first one among them) did not stop the sweep; it says so, and exits 1.
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 2 of 4 jobs of the sweep failed")
    assert read_results(sweep_dir / "0")["status"] == "failed"
    completed = [
        p.parent
        for p in sweep_dir.glob("*/results.json")
        if read_results(p.parent)["status"] == "completed"
    ]
    assert len(completed) == 2
    # A run killed before it wrote results.json: its composed config is all there is.
    shutil.copytree(completed[0] / ".hydra", sweep_dir / "killed" / ".hydra")
    out = run_main("amint_pl.aggregate", str(sweep_dir))
    assert out.returncode == 0, out.stderr[-3000:]
    return sweep_dir, completed, out


def _table(sweep_dir):
    with open(sweep_dir / "aggregate.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_table_matches_each_runs_results(sweep):
    sweep_dir, completed, _ = sweep
    rows = _table(sweep_dir)
    for run_dir in completed:
        results = read_results(run_dir)
        mine = [r for r in rows if r["run_dir"] == str(run_dir.resolve())]
        paper, strict = results["membership"]["paper"], results["membership"]["strict"]
        expected_methods = {"amint" if m == "mint" else m for m in paper}
        assert {r["method"] for r in mine} == expected_methods
        for row in mine:
            method = "mint" if row["method"] == "amint" else row["method"]
            m = paper[method]
            assert row["dataset"] == "digits" and row["model"] == "small_cnn"
            assert row["taps"] == "entry" and row["mint_mode"] == results["mint_mode"]
            assert row["status"] == "completed" and row["seed"] == "0"
            assert float(row["auc"]) == pytest.approx(m["auc"])
            assert float(row["mint_acc"]) == pytest.approx(m["balanced_acc_calibrated"])
            assert float(row["tpr_at_1%_fpr"]) == pytest.approx(m["tpr_at_1%_fpr"])
            assert float(row["strict_auc"]) == pytest.approx(strict[method]["auc"])
            assert float(row["aud_acc"]) == pytest.approx(results["audited"]["test_acc"])
            assert row["paper_mint_acc"] == ""  # the paper has no digits
            if method == "mint":
                assert float(row["acc_at_0.5"]) == pytest.approx(m["acc_at_0.5"])


def test_failed_and_unfinished_runs_are_listed(sweep):
    sweep_dir, _, out = sweep
    rows = _table(sweep_dir)
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 2 and {r["mint_mode"] for r in failed} == {"active", "off"}
    assert all("exceeds the train pool" in r["error"] for r in failed)
    unfinished = [r for r in rows if r["status"] == "unfinished"]
    assert len(unfinished) == 1 and unfinished[0]["run_dir"].endswith("killed")
    assert unfinished[0]["dataset"] == "digits"  # read from its .hydra/config.yaml
    text = (sweep_dir / "aggregate.md").read_text()
    assert "## Failed, unfinished or running runs: 3" in text and "exceeds the train pool" in text
    assert "## Membership inference: 2 completed runs" in out.stdout  # printed too
    assert "| digits | small_cnn | entry | active | amint |" in text
    assert "## Over seeds" not in text  # one seed per recipe: nothing to reduce
    png = sweep_dir / "aggregate_heatmap.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
