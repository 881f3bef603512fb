"""Resuming a run in its own directory (`hydra.run.dir=<run> ckpt_path=last`) or from a checkpoint.

Before Hydra starts, `with_run_overrides` gives the command line the run's own overrides and
`resumed_config_dir` keeps the run's .hydra/ config apart from the resumed attempt's. Before
anything trains, `check_resume` refuses a config or checkpoint that cannot continue the run, and
`keep_earlier_attempt` moves what the stopped attempt wrote to <run dir>/attempts/<n>/.
`resume_plan` says what each phase continues from.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from amint_pl.checkpoints import (
    check_checkpoint,
    check_resumable,
    check_same_experiment,
    checkpoint_progress,
    read_checkpoint,
)
from amint_pl.errors import AmintError, ConfigError
from amint_pl.status import STATUS_FILE, read_status

# A run directory's own config and overrides, as Hydra wrote them when it started.
RUN_CONFIG = Path(".hydra") / "config.yaml"
RUN_OVERRIDES = Path(".hydra") / "overrides.yaml"
# What a resumed run rewrites: the earlier attempt's are kept in <run dir>/attempts/<n>/ first
# (csv/: Lightning's CSVLogger deletes an existing metrics.csv).
ATTEMPT_FILES = (
    "results.json",
    "scores.csv",
    "roc.png",
    "scores_hist.png",
    "training_curves.png",
    "csv",
    STATUS_FILE,  # its times: how long the attempt ran, even one that was killed
)
# A phase that a resume from a later phase's checkpoint does not train again.
SKIP_PHASE = "skip"
# checkpoints/<phase>/<LAST_CHECKPOINT>.ckpt: the state at the end of the newest finished epoch.
LAST_CHECKPOINT = "last"


def _override_key(arg: str) -> str:
    return arg.lstrip("+~").partition("=")[0]


def resuming(overrides: list[str]) -> bool:
    given = dict(arg.partition("=")[::2] for arg in overrides if "=" in arg)
    return given.get("ckpt_path", "null") not in ("null", "")


def with_run_overrides(args: list[str]) -> list[str]:
    """For a resume in place (hydra.run.dir=<run> ckpt_path=...): the overrides the run was
    composed with (those of its newest attempt, .hydra/[resumed-*/]overrides.yaml), each one given
    now in its place. Other command lines come back as they are."""
    given = dict(arg.partition("=")[::2] for arg in args if "=" in arg)
    run_dir = Path(given.get("hydra.run.dir", "").strip("\"'") or "-")
    if (
        not resuming(args)
        or any(arg in ("-m", "--multirun") for arg in args)
        or not (run_dir / RUN_OVERRIDES).is_file()
    ):
        return args
    attempts = sorted(run_dir.glob(f"{RUN_OVERRIDES.parent}/resumed-*/{RUN_OVERRIDES.name}"))
    saved = [str(o) for o in OmegaConf.load(([run_dir / RUN_OVERRIDES, *attempts])[-1])]
    now = {_override_key(arg): arg for arg in args if "=" in arg}
    kept = [o for o in saved if _override_key(o) not in now]
    for arg in args:  # a key the run added with + is still added
        before = next((o for o in saved if _override_key(o) == _override_key(arg)), "")
        kept.append("+" + arg if before.startswith("+") and not arg.startswith("+") else arg)
    return kept


def resumed_config_dir(overrides: list[str], uid: str) -> list[str]:
    """For a run resumed in place (hydra.run.dir=<dir> ckpt_path=...): the override that makes
    Hydra write the resumed config beside the run's own (.hydra/resumed-<time>_<uid>) instead of
    over it."""
    given = dict(arg.partition("=")[::2] for arg in overrides if "=" in arg)
    if not given.get("hydra.run.dir") or not resuming(overrides) or "hydra.output_subdir" in given:
        return []
    return [f"hydra.output_subdir=.hydra/resumed-{time.strftime('%Y-%m-%d_%H-%M-%S')}_{uid}"]


def run_config(output_dir: Path) -> dict[str, Any]:
    """The resolved config a run was started with (<run dir>/.hydra/config.yaml)."""
    try:
        return OmegaConf.to_container(OmegaConf.load(output_dir / RUN_CONFIG), resolve=True)
    except Exception as err:
        raise ConfigError(
            f"{output_dir / RUN_CONFIG} cannot be read ({type(err).__name__}: {err}): resume a run "
            "directory that amint_pl wrote, as it left it"
        ) from err


def resume_plan(ckpt_path: Any, output_dir: Path, phases: tuple[str, ...]) -> dict[str, str]:
    """What each phase continues from (`ckpt_path`): a checkpoint, SKIP_PHASE, or nothing (absent).

    `last`: each phase's checkpoints/<phase>/last.ckpt in the run directory; each phase goes on to
    its max_epochs (a phase that early-stopped stays stopped); a phase without one (the run
    stopped before that phase finished an epoch) trains from its start. A file: the phase it was
    saved in continues from it; earlier phases are in its weights and are skipped.
    """
    if ckpt_path is None:
        return {}
    if ckpt_path == "last":
        found = {p: output_dir / "checkpoints" / p / f"{LAST_CHECKPOINT}.ckpt" for p in phases}
        return {p: str(f) for p, f in found.items() if f.is_file()}
    progress = checkpoint_progress(ckpt_path)
    phase = progress["phase"]
    if not progress["resumable"]:
        raise ConfigError(
            f"ckpt_path={ckpt_path} holds the weights alone (a best-*.ckpt): resume from "
            "checkpoints/<phase>/last.ckpt, or in the run's directory with ckpt_path=last"
        )
    if phase not in phases:
        raise ConfigError(
            f"ckpt_path={ckpt_path} was saved in phase {phase!r}, not one of {', '.join(phases)}: "
            "give a checkpoint of a run with this mint mode"
        )
    start = phases.index(phase)
    return {**dict.fromkeys(phases[:start], SKIP_PHASE), phase: str(ckpt_path)}


def check_resume(cfg: DictConfig, output_dir: Path, rank_zero: bool) -> None:
    """Before a run is resumed: refuse a config or checkpoint that cannot continue it. Nothing of
    the run is touched then: the config Hydra has just written for this attempt (a
    .hydra/resumed-* folder) is removed."""
    from amint_pl.training.module import phases_of

    phases = phases_of(cfg.mint.mode)
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
        if cfg.ckpt_path == "last":
            check_same_experiment(run_config(output_dir), config, "the run")
        for path in resume_plan(cfg.ckpt_path, output_dir, phases).values():
            if path != SKIP_PHASE:
                checkpoint = read_checkpoint(path)
                check_checkpoint(checkpoint, path)
                check_resumable(checkpoint, config, "")
    except AmintError:
        attempt_config = _attempt_config(output_dir)
        if rank_zero and attempt_config is not None and attempt_config.name.startswith("resumed-"):
            shutil.rmtree(attempt_config, ignore_errors=True)
        raise


def _attempt_config(output_dir: Path) -> Path | None:
    """The folder Hydra wrote this attempt's config in (None outside a Hydra run, or without one)."""
    from hydra.core.hydra_config import HydraConfig

    subdir = HydraConfig.get().output_subdir if HydraConfig.initialized() else None
    return output_dir / subdir if subdir else None


def keep_earlier_attempt(output_dir: Path) -> None:
    """Move what an earlier attempt of a resumed run wrote to <run dir>/attempts/<n>/."""
    if not any((output_dir / n).exists() for n in ATTEMPT_FILES):
        return
    attempts = output_dir / "attempts"
    done = [int(p.name) for p in attempts.glob("[0-9]*") if p.name.isdigit()]
    attempt = attempts / str(max(done, default=0) + 1)
    attempt.mkdir(parents=True)
    for name in ATTEMPT_FILES:
        if (output_dir / name).exists():
            (output_dir / name).rename(attempt / name)


def earlier_attempts_wall_s(output_dir: Path) -> float | None:
    """The wall time of a resumed run's earlier attempts together (None: it has none kept). An
    attempt that ended says its own; one that was killed, from its start to its last status."""
    walls = []
    for path in (output_dir / "attempts").glob(f"*/{STATUS_FILE}"):
        status = read_status(path.parent) or {}
        if isinstance(status.get("wall_time_s"), int | float):
            walls.append(status["wall_time_s"])
        elif isinstance(status.get("started_unix"), int | float):
            walls.append(
                status.get("updated_unix", status["started_unix"]) - status["started_unix"]
            )
    return float(sum(walls)) if walls else None


def set_aside_checkpoints(output_dir: Path, phases: tuple[str, ...]) -> None:
    """Move the checkpoints of phases that must train again to checkpoints/<phase>.superseded-<n>."""
    for phase in phases:
        folder = output_dir / "checkpoints" / phase
        if folder.is_dir():
            n = 1
            while folder.with_name(f"{phase}.superseded-{n}").exists():
                n += 1
            folder.rename(folder.with_name(f"{phase}.superseded-{n}"))
