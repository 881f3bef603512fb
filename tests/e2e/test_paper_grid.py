"""The paper's Table 1 grid, end to end: `experiments/paper_table1.sh` on a 2 x 2 corner.

The very script a GPU machine runs for the whole grid (one Hydra multirun of experiment=paper_table1,
W&B logging, then the aggregate with the paper's figures beside ours), here on MNIST and CIFAR-10
fabricated in their own on-disk formats, MobileNet and the paper's ViT, one tap setup, one epoch.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import yaml

from tests.formats import write_cifar, write_mnist_files
from tests.helpers import REPO, read_results, run_dirs

pytestmark = pytest.mark.slow


def test_table1_corner_runs_end_to_end(tmp_path):
    data, out = tmp_path / "data", tmp_path / "sweep"
    write_mnist_files(data / "mnist" / "MNIST" / "raw", 90, 20)
    write_cifar(data / "cifar10", 18)
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(out), WANDB_MODE="offline")
    proc = subprocess.run(
        [
            "bash",
            str(REPO / "experiments" / "paper_table1.sh"),
            "dataset=mnist,cifar10",
            "model=mobilenet,vit",
            "mint.taps=middle",
            f"paths.data_dir={data}",
            "trainer.max_epochs=1",
            "dataset.splits.members=40",
            "dataset.splits.external=40",
            "dataset.splits.nonmembers_calib=8",
            "dataset.splits.nonmembers_eval=10",
            "bootstrap.resamples=0",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = {}
    for run_dir in run_dirs(out):
        result = read_results(run_dir)
        runs[(result["dataset"], result["model"])] = (run_dir, result)
    assert set(runs) == {
        (d, m) for d in ("mnist", "cifar10") for m in ("mobilenetv1_100", "vit_amint")
    }
    for run_dir, result in runs.values():
        assert result["status"] == "completed"
        # The paper's recipe (experiment=paper): its head (1024 then 2048 channels), Adam at 1e-4.
        assert result["mint_mode"] == "active" and result["taps"] == "middle"
        config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
        assert config["optim"]["lr"] == 1.0e-4
        assert config["mint"]["head"]["conv_widths"] == [1024, 2048]
        # W&B wrote an offline run of each job into its run directory, the membership table in it.
        logged = "offline-run-*/files/media/table/test/membership_*.table.json"
        assert list((run_dir / "wandb").glob(logged)), run_dir
    # The aggregate: one row per run, with the paper's Table 1 figures beside ours.
    with open(out / "aggregate.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["method"] == "amint"]
    assert len(rows) == 4
    paper = {(r["dataset"], r["model"]): r["paper_mint_acc"] for r in rows}
    # Table 1, middle tap: MNIST MobileNet 0.88, CIFAR-10 ViT 0.81.
    assert float(paper[("mnist", "mobilenetv1_100")]) == pytest.approx(0.88)
    assert all(value != "" for value in paper.values()), paper
    assert "0.88" in (out / "aggregate.md").read_text()
