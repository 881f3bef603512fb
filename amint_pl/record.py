"""A run's record: the resolved config it runs with, results.json and status.json over its life
(`run_record`), the versions and config digest it is known by, and where its story is told
(logging).
"""

from __future__ import annotations

import hashlib
import logging
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from amint_pl.errors import AmintError, ConfigError
from amint_pl.status import PROGRESS_LOGGER, RunStatus, Stages
from amint_pl.training.resume import earlier_attempts_wall_s, keep_earlier_attempt

log = logging.getLogger("amint_pl.run")


def resolved_config(cfg: DictConfig, output_dir: Path) -> DictConfig:
    """The run config with every interpolation resolved, without Hydra's own node. Outside a Hydra
    run, paths.output_dir (Hydra's run directory) is `output_dir`."""
    from hydra.core.hydra_config import HydraConfig

    config = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    config.pop("hydra", None)
    if not HydraConfig.initialized():
        config.paths.output_dir = str(output_dir)
    try:
        resolved = OmegaConf.create(OmegaConf.to_container(config, resolve=True))
    except InterpolationResolutionError as err:
        raise ConfigError(
            f"{' '.join(str(err).split())[:200]}: this setting needs Hydra's run directory; start "
            "the run with python -m amint_pl.run, or set it to a path"
        ) from err
    OmegaConf.set_struct(resolved, True)
    return resolved


def config_digest(cfg: DictConfig) -> str:
    """SHA-256 of the resolved experiment config, without paths and resume settings."""
    data = OmegaConf.to_container(cfg, resolve=True)
    for key in ("paths", "ckpt_path", "logger", "progress"):
        data.pop(key, None)
    return hashlib.sha256(
        OmegaConf.to_yaml(OmegaConf.create(data), sort_keys=True).encode()
    ).hexdigest()


def versions() -> dict[str, str]:
    """The versions the run ran with, read from the installed packages' metadata (importing timm
    only for its version would cost a run that does not use it seconds)."""
    from importlib.metadata import version

    import torch

    from amint_pl import __version__

    packages = {"lightning": "lightning", "timm": "timm", "torchmetrics": "torchmetrics"}
    return {
        "amint_pl": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,  # with its build (+cpu, +cu130), which metadata leaves out
        **{name: version(dist) for name, dist in packages.items()},
        "hydra": version("hydra-core"),
    }


class _NotProgress(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith(PROGRESS_LOGGER)


def set_up_logging(rank_zero: bool) -> None:
    """Warnings join the run's story (run.log); DDP ranks > 0 (Hydra logs them into the same
    run.log) tell only problems; on a terminal, where Rich draws the progress bar, progress lines
    go to run.log alone; Lightning's lines print once (`quiet_lightning`)."""
    from amint_pl.training.phases import quiet_lightning

    quiet_lightning()
    logging.captureWarnings(True)
    logging.getLogger("amint_pl").setLevel(logging.INFO if rank_zero else logging.WARNING)
    for handler in logging.getLogger().handlers:
        stream = getattr(handler, "stream", None)
        on_terminal = not isinstance(handler, logging.FileHandler) and stream is not None
        if (
            on_terminal
            and hasattr(stream, "isatty")
            and stream.isatty()
            and not any(isinstance(f, _NotProgress) for f in handler.filters)
        ):
            handler.addFilter(_NotProgress())


@contextmanager
def run_record(
    cfg: DictConfig, output_dir: Path, choices: dict[str, str], rank_zero: bool, started: float
) -> Iterator[Stages]:
    """The record of a run while it runs: yields its `Stages` (its results.json content being
    built, its status.json), from stage `starting` on. A resumed run's earlier attempt is kept in
    attempts/<n>/ first. At the end, however the run ends, results.json and status.json say how
    (completed, or failed with the cause and the resume command) and its wall time since `started`
    (results.json: also that of every attempt together, for a resumed run), and W&B closes. A
    SIGTERM that Lightning turned into exit code 0 leaves with code 1."""
    results = new_record(cfg, output_dir, choices)
    status = RunStatus(output_dir, enabled=rank_zero)
    stages = Stages(results, status, rank_zero)
    try:
        if cfg.ckpt_path is not None and rank_zero:
            keep_earlier_attempt(output_dir)  # before this attempt's status.json replaces its own
        stages.enter("starting")
        results.update(config_digest=config_digest(cfg), versions=versions())
        yield stages
        results["status"] = "completed"
        for key in ("stage", "phase"):
            results.pop(key, None)
    except BaseException as err:
        record_failure(results, err, output_dir)
        if isinstance(err, SystemExit) and not err.code:
            raise SystemExit(1) from err  # SIGTERM (Lightning's SIGTERMException): not 0
        raise
    finally:
        results["wall_time_s"] = round(time.time() - started, 2)
        earlier = earlier_attempts_wall_s(output_dir)
        if earlier is not None:
            results["wall_time_all_attempts_s"] = round(results["wall_time_s"] + earlier, 2)
        finish_run(cfg, output_dir, results, status, rank_zero)


def new_record(cfg: DictConfig, output_dir: Path, choices: dict[str, str]) -> dict[str, Any]:
    """results.json as a run starts: what it is (stages, metrics and the outcome join later)."""
    from amint_pl.loggers import mint_label

    return {
        "status": "running",
        "run_dir": str(output_dir),
        "dataset": cfg.dataset.name,
        "model": cfg.model.name,
        "mint_mode": mint_label(cfg, choices),
        "choices": choices,
        "taps": cfg.mint.taps if isinstance(cfg.mint.taps, str) else list(cfg.mint.taps),
        "seed": cfg.seed,
    }


def log_start(cfg: DictConfig, output_dir: Path, choices: dict[str, str]) -> None:
    log.info(
        "run %s: %s, seed %s, up to %s epochs, batch size %s, lr %s",
        output_dir,
        " ".join(f"{group}={option}" for group, option in choices.items()),
        cfg.seed,
        cfg.trainer.max_epochs,
        cfg.batch_size,
        cfg.optim.lr,
    )


def record_failure(results: dict[str, Any], err: BaseException, output_dir: Path) -> None:
    """Record in results why the run stopped, and (unless a setting must change) how to resume."""
    # Lightning turns Ctrl+C into sys.exit(1): record the interrupt itself.
    plain_exit = type(err) is SystemExit and err.__context__ is not None
    cause = err.__context__ if plain_exit else err
    results.update(status="failed", error=f"{type(cause).__name__}: {str(cause) or 'interrupted'}")
    if not isinstance(err, AmintError):  # a user's error: fix it and start a new run
        results["resume_with"] = f"hydra.run.dir={output_dir} ckpt_path=last"
    log.error(
        "failed at stage %s: %s%s",
        results.get("stage"),
        results["error"],
        f"; resume with {results['resume_with']}" if "resume_with" in results else "",
    )


def finish_run(
    cfg: DictConfig, output_dir: Path, results: dict[str, Any], status: RunStatus, rank_zero: bool
) -> None:
    """Write results.json and the final status.json; close W&B."""
    from amint_pl.evaluation.report import write_json
    from amint_pl.loggers import finish_wandb

    if rank_zero:
        write_json(output_dir / "results.json", results)
    status.update(
        state=results["status"],
        stage=results.get("stage"),  # where a failed run stopped
        error=results.get("error"),
        wall_time_s=results["wall_time_s"],
    )
    finish_wandb(cfg, exit_code=0 if results["status"] == "completed" else 1)
