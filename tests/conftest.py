"""Fixtures every test shares: W&B offline into a temp folder, a run into tmp_path, and the runs
several test modules only read (trained once per session)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests import shared_runs
from tests.helpers import run_into


@pytest.fixture(scope="session", autouse=True)
def wandb_offline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test (and every subprocess it starts) keeps W&B offline, inside a temp folder."""
    root = tmp_path_factory.mktemp("wandb")
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        os.environ[name] = str(root)
    os.environ["WANDB_MODE"] = "offline"
    os.environ["WANDB_SILENT"] = "true"
    return root


@pytest.fixture(scope="session", autouse=True)
def pinned_threads() -> int:
    """In-process runs and the runs tests start in new processes use one torch thread count, as
    a run's numbers depend on it: OMP_NUM_THREADS where set (`make test` sets 1), else 1.
    Lightning's launchers also leave the count alone once OMP_NUM_THREADS is set."""
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    return torch.get_num_threads()


@pytest.fixture
def run_amint(tmp_path: Path):
    """Run `python -m amint_pl.run` with the given overrides into tmp_path/runs (in this process;
    in a new one with process=True)."""

    def run(
        *overrides: str, check: bool = True, process: bool = False
    ) -> tuple[subprocess.CompletedProcess, Path | None]:
        proc, run_dir = run_into(tmp_path / "runs", tmp_path / "data", *overrides, process=process)
        if check:
            assert proc.returncode == 0, proc.stderr[-3000:]
        return proc, run_dir

    return run


@pytest.fixture(scope="session")
def three_epoch_run(tmp_path_factory: pytest.TempPathFactory) -> shared_runs.SharedRun:
    """A 3-epoch deterministic aMINT run on digits, started in an empty working directory."""
    return shared_runs.three_epoch_run(tmp_path_factory.mktemp("three_epochs"))


@pytest.fixture(scope="session")
def notebook_run(
    three_epoch_run: shared_runs.SharedRun, tmp_path_factory: pytest.TempPathFactory
) -> shared_runs.SharedRun:
    """three_epoch_run again, through `amint_pl.run.train` (see shared_runs.notebook_run)."""
    return shared_runs.notebook_run(tmp_path_factory.mktemp("notebook"), three_epoch_run)


@pytest.fixture(scope="session")
def general_run(tmp_path_factory: pytest.TempPathFactory) -> shared_runs.SharedRun:
    """A 2-epoch mint=active_general run on digits (see shared_runs.general_run)."""
    return shared_runs.general_run(tmp_path_factory.mktemp("general"))
