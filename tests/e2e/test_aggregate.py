"""`python -m amint_pl.aggregate`: the table of a real sweep matches its runs' results.json files,
failed and unfinished runs are listed, and the paper's numbers sit beside ours."""

import csv
import json
import shutil

import pytest

from amint_pl.aggregate import aggregate, paper_model
from tests.conftest import TINY, read_results, run_module


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A real sweep of four tiny jobs: mint=active and mint=off, each once with splits that fit
    and once with more members than the data set has (those two fail); plus an unfinished run."""
    tmp = tmp_path_factory.mktemp("aggregate")
    sweep_dir = tmp / "sweep"
    proc = run_module(
        "amint_pl.run",
        "-m",
        *TINY,
        f"paths.data_dir={tmp / 'data'}",
        f"hydra.sweep.dir={sweep_dir}",
        "mint=active,off",
        "dataset.splits.members=120,100000",
    )
    assert proc.returncode == 1, proc.stderr[-3000:]  # two jobs failed, after all four ran
    assert "error: 2 of 4 jobs of the sweep failed" in proc.stderr
    completed = [
        p.parent
        for p in sweep_dir.glob("*/results.json")
        if read_results(p.parent)["status"] == "completed"
    ]
    assert len(completed) == 2
    # A run killed before it wrote results.json: its composed config is all there is.
    shutil.copytree(completed[0] / ".hydra", sweep_dir / "killed" / ".hydra")
    out = run_module("amint_pl.aggregate", str(sweep_dir))
    assert out.returncode == 0, out.stderr[-3000:]
    return sweep_dir, completed, out


def _table(sweep_dir):
    with open(sweep_dir / "aggregate.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
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


@pytest.mark.slow
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


def _results(dataset, model, taps, mode, methods):
    metrics = {
        "auc": 0.9,
        "balanced_acc_calibrated": 0.8,
        "acc_at_0.5": 0.7,
        "tpr_at_1%_fpr": 0.2,
        "tpr_at_1%_fpr_meaningful": True,
    }
    return {
        "status": "completed",
        "dataset": dataset,
        "model": model,
        "mint_mode": mode,
        "taps": taps,
        "seed": 0,
        "audited": {"test_acc": 0.95},
        "membership": {p: {m: metrics for m in methods} for p in ("paper", "strict")},
    }


def test_paper_numbers_sit_beside_ours(tmp_path):
    for name, results in {
        "a": _results("mnist", "mobilenetv1_100", "entry", "active", ["mint", "loss"]),
        "b": _results("mnist", "mobilenetv1_100", "entry", "passive", ["mint"]),
        "c": _results("cifar10", "resnet50", "middle", "active", ["mint", "loss", "confidence"]),
        "d": _results("gtsrb", "resnet50", [1, 2], "active", ["mint"]),
    }.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(results))
    rows = {(r["dataset"], r["taps"], r["method"]): r for r in aggregate([tmp_path])}
    # Table 1 (mnist, entry, mobilenet) and the baselines (passive MINT; the attacks on cifar10).
    assert rows["mnist", "entry", "amint"]["paper_mint_acc"] == 0.86
    assert rows["mnist", "entry", "amint"]["paper_aud_acc"] == 0.96
    assert rows["mnist", "entry", "passive_mint"]["paper_mint_acc"] == 0.52
    assert rows["cifar10", "middle", "amint"]["paper_mint_acc"] == 0.89
    assert rows["cifar10", "middle", "loss"]["paper_mint_acc"] == 0.64  # Yeom et al.
    assert rows["cifar10", "middle", "confidence"]["paper_mint_acc"] == 0.61  # Salem et al.
    assert rows["mnist", "entry", "loss"]["paper_mint_acc"] is None  # not in the paper
    assert rows["gtsrb", "[1,2]", "amint"]["paper_mint_acc"] is None  # not a paper tap setup
    names = ("legacy_xception", "vit_amint", "vit_tiny_patch16_224", "resnet18")
    # Only the paper's own ViT configuration stands beside the paper's ViT numbers.
    assert [paper_model(m) for m in names] == ["xception", "vit", None, None]


def test_nothing_to_aggregate_is_one_line_and_exit_2(tmp_path):
    proc = run_module("amint_pl.aggregate", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: no runs below {tmp_path}: give a sweep directory (multirun/...) or run "
        "directories (each holds results.json or .hydra/)"
    ]
    missing = run_module("amint_pl.aggregate", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_runs_that_differ_only_by_seed_reduce_to_mean_and_std(tmp_path):
    aucs = {0: 0.80, 1: 0.90, 2: 0.85}
    for seed, value in aucs.items():
        for lr, name in ((1e-3, f"s{seed}"), (1e-4, f"slow{seed}")):
            results = _results("mnist", "resnet50", "middle", "active", ["mint"])
            results["seed"] = seed
            results["membership"]["paper"]["mint"] = {
                **results["membership"]["paper"]["mint"],
                "auc": value if lr == 1e-3 else 0.6,
                "auc_ci": [value - 0.05, value + 0.05],
            }
            run = tmp_path / name
            (run / ".hydra").mkdir(parents=True)
            (run / "results.json").write_text(json.dumps(results))
            config = f"seed: {seed}\noptim:\n  lr: {lr}\npaths:\n  output_dir: {run}\n"
            (run / ".hydra" / "config.yaml").write_text(config)
    proc = run_module("amint_pl.aggregate", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / "aggregate_seeds.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["method"] == "amint"]
    assert len(rows) == 2  # two learning rates: two recipes, three seeds each
    fast = next(r for r in rows if float(r["auc_mean"]) > 0.7)
    assert fast["n_seeds"] == "3" and fast["seeds"] == "0 1 2"
    assert float(fast["auc_mean"]) == pytest.approx(0.85)
    assert float(fast["auc_std"]) == pytest.approx(0.05)
    assert "0.850 ± 0.050" in proc.stdout and "[0.750, 0.850]" in proc.stdout
