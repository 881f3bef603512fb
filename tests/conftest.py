"""Shared test set-up: W&B offline into a temp folder, and the real entry points as subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Tiny, fast runs: the real config with small splits and few epochs.
TINY = ["debug=fast", "logger=csv"]


@pytest.fixture(scope="session", autouse=True)
def wandb_offline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test (and every subprocess it starts) keeps W&B offline, inside a temp folder."""
    root = tmp_path_factory.mktemp("wandb")
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        os.environ[name] = str(root)
    os.environ["WANDB_MODE"] = "offline"
    os.environ["WANDB_SILENT"] = "true"
    return root


def run_module(
    module: str, *args: str, cwd: Path | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """Run `python -m <module> <args>` for real and capture its output."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="0")
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd or REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_dirs(log_dir: Path) -> list[Path]:
    """Every run directory under a log dir (those holding .hydra), oldest first."""
    return sorted((p.parent for p in log_dir.rglob(".hydra")), key=lambda p: p.stat().st_mtime)


def run_into(
    log_dir: Path, data_dir: Path, *overrides: str, multirun: bool = False
) -> tuple[subprocess.CompletedProcess, Path | None]:
    """Run `python -m amint_pl.run` into log_dir with its own data dir: (process, newest run dir)."""
    proc = run_module(
        "amint_pl.run",
        *(["-m"] if multirun else []),
        f"paths.log_dir={log_dir}",
        f"paths.data_dir={data_dir}",
        *overrides,
    )
    dirs = run_dirs(log_dir) if log_dir.exists() else []
    return proc, (dirs[-1] if dirs else None)


def read_results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


@pytest.fixture
def run_amint(tmp_path: Path):
    """Run `python -m amint_pl.run` with the given overrides into tmp_path/runs."""

    def run(*overrides: str, check: bool = True) -> tuple[subprocess.CompletedProcess, Path | None]:
        log_dir = tmp_path / "runs"
        proc = run_module(
            "amint_pl.run",
            f"paths.log_dir={log_dir}",
            f"paths.data_dir={tmp_path / 'data'}",
            *overrides,
        )
        if check:
            assert proc.returncode == 0, proc.stderr[-3000:]
        dirs = run_dirs(log_dir) if log_dir.exists() else []
        return proc, (dirs[-1] if dirs else None)

    return run
