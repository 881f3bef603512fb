"""The generalizing-aMINT preset in a tiny real run: its memory trains, and the audit rebuilds it."""

import pytest
import torch

from tests.helpers import run_module

pytestmark = pytest.mark.slow


def test_the_general_preset_runs_and_audits_on_a_tiny_budget(general_run, tmp_path):
    run_dir, results = general_run.run_dir, general_run.results
    assert results["status"] == "completed"
    assert {"paper", "strict"} <= set(results["membership"])
    assert 0.0 <= results["membership"]["strict"]["mint"]["auc"] <= 1.0
    checkpoint = run_dir / results["best_checkpoints"]["joint"]
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    assert "memory.table.weight" in state and float(state["memory.table.weight"].abs().sum()) > 0
    # The audit rebuilds the model, memory included, and reproduces the run's numbers.
    proc = run_module(
        "amint_pl.audit",
        f"checkpoint={checkpoint}",
        "inputs=split:all",
        f"output={tmp_path / 'all.csv'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "reproduces results.json: every metric of every method" in proc.stdout
