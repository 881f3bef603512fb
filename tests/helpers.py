"""What the tests share: the real entry points (their main(), in the test's process or as a new
process), the shipped config composed by Hydra, and the files a run writes."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from amint_pl import config_dir

REPO = Path(__file__).resolve().parents[1]
CONF = config_dir()
# Tiny, fast runs: the real config with small splits and few epochs.
TINY = ["debug=fast", "logger=csv"]
# Tinier: one epoch on roles that fit >= 80 train and >= 18 test images (every file and metric a
# run writes, at the least cost).
ONE_EPOCH = [
    *TINY,
    "trainer.max_epochs=1",
    "dataset.splits.members=40",
    "dataset.splits.external=40",
    "dataset.splits.nonmembers_calib=8",
    "dataset.splits.nonmembers_eval=10",
]
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


@contextlib.contextmanager
def _as_if_started(module: str, args: list[str], cwd: Path, env: dict[str, str]) -> Iterator[None]:
    """sys.argv, the working directory and the environment of `python -m <module> <args>`; on the
    way out the process's own come back, with its logging and Hydra as they were."""
    from hydra.core.global_hydra import GlobalHydra

    root = logging.getLogger()
    saved = sys.argv, Path.cwd(), dict(os.environ), root.handlers[:], root.level
    sys.argv = [module, *args]
    os.chdir(cwd)
    os.environ.update(env)
    try:
        yield
    finally:
        sys.argv = saved[0]
        os.chdir(saved[1])
        os.environ.clear()
        os.environ.update(saved[2])
        GlobalHydra.instance().clear()
        for handler in root.handlers:
            if handler not in saved[3]:
                handler.close()  # Hydra's run.log handler: the file is closed, as at a process's end
        root.handlers[:] = saved[3]
        root.setLevel(saved[4])


def run_main(
    module: str,
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    err: io.StringIO | None = None,
) -> subprocess.CompletedProcess:
    """`python -m <module> <args>` inside this process: the same main() (Hydra, Lightning, W&B
    offline) without a new interpreter's ~12 s of CPU importing. What it prints and its exit status
    come back as a process's would: SystemExit's code, 1 and the traceback for an uncaught error. `env`
    adds to the environment while it runs; `err` receives its stderr as it is written."""
    entry = importlib.import_module(module).main
    out, err = io.StringIO(), err or io.StringIO()
    code = 0
    with (
        _as_if_started(module, list(args), cwd or REPO, {"HYDRA_FULL_ERROR": "0", **(env or {})}),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        try:
            entry()
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
            if exit_.code is not None and not isinstance(exit_.code, int):
                print(exit_.code, file=sys.stderr)  # as the interpreter prints it on exit
        except Exception:
            traceback.print_exc()
            code = 1
    return subprocess.CompletedProcess([module, *args], code, out.getvalue(), err.getvalue())


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
    log_dir: Path, data_dir: Path, *overrides: str, multirun: bool = False, process: bool = False
) -> tuple[subprocess.CompletedProcess, Path | None]:
    """Run `python -m amint_pl.run` into log_dir with its own data dir, in this process (in a new
    one with process=True): (its outcome, newest run dir)."""
    proc = (run_module if process else run_main)(
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
