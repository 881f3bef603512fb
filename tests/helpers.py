"""What the tests share: the real entry points as processes, the shipped config composed by Hydra,
and the files a run writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from amint_pl import config_dir

REPO = Path(__file__).resolve().parents[1]
CONF = config_dir()
# Tiny, fast runs: the real config with small splits and few epochs.
TINY = ["debug=fast", "logger=csv"]
# Tiny, quiet and deterministic: what the resume and determinism tests compare.
DETERMINISTIC = [*TINY, "trainer.enable_progress_bar=false", "trainer.deterministic=true"]


def compose_config(*overrides: str, hydra: bool = False) -> DictConfig:
    """The shipped run config with the overrides, as Hydra composes it (with hydra: its `hydra`
    node too: launcher, sweeper)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="run", overrides=list(overrides), return_hydra_config=hydra)


def process_env(**extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="0", **extra)


def run_module(
    module: str, *args: str, cwd: Path | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """Run `python -m <module> <args>` for real and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd or REPO,
        env=process_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_run(log: IO[str], *args: str, **env: str) -> subprocess.Popen:
    """Start `python -m amint_pl.run <args>` in the background, its output into log."""
    return subprocess.Popen(
        [sys.executable, "-m", "amint_pl.run", *args],
        cwd=REPO,
        env=process_env(**env),
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def wait_for(proc: subprocess.Popen, log_path: Path, done: Callable[[], bool]) -> None:
    """Wait until done() holds while proc still runs (its log in the failure if it ends first)."""
    deadline = time.monotonic() + 600
    while not done():
        assert proc.poll() is None, log_path.read_text()[-3000:]
        assert time.monotonic() < deadline, log_path.read_text()[-3000:]
        time.sleep(0.2)


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


def config_dict(*overrides: str) -> dict:
    """The composed run config, resolved into a dict, as the LightningModule gets it."""
    cfg = compose_config("paths.output_dir=unused", *overrides)
    return OmegaConf.to_container(cfg, resolve=True)
