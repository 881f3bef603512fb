"""Train and evaluate one experiment: compose -> data -> model -> trainer -> fit phases -> evaluate
-> report.

    python -m amint_pl.run                                  # the embedded default (digits)
    python -m amint_pl.run mint=passive trainer.max_epochs=5 seed=3
    python -m amint_pl.run -m model=small_cnn,resnet18 mint=active,passive

From a notebook or another program (no Hydra run needed):

    from hydra import compose, initialize_config_module
    from amint_pl.run import train

    with initialize_config_module("amint_pl.conf", version_base="1.3"):
        cfg = compose("run", overrides=["debug=fast"], return_hydra_config=True)
    results = train(cfg, "runs/notebook")   # results.json's content
"""

from __future__ import annotations

import os
import secrets
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from amint_pl import config_dir
from amint_pl.errors import AmintError, ConfigError
from amint_pl.loggers import build_loggers, in_a_sweep, run_choices
from amint_pl.record import log_start, resolved_config, run_record, set_up_logging
from amint_pl.status import Stages, StopOnSigterm
from amint_pl.training.resume import check_resume, resumed_config_dir
from amint_pl.validation import command_line_overrides, composition_errors, validate_config

# Run directories carry this: the process id and a random suffix, fixed for the whole process.
RUN_UID = f"{os.getpid()}-{secrets.token_hex(2)}"
# Cached: a sweep's workers (joblib, SLURM) get the launching process's value with the config,
# so all jobs of a sweep, and all ranks of a job, share one sweep directory.
OmegaConf.register_new_resolver("amint_uid", lambda: RUN_UID, replace=True, use_cache=True)
# Our conf/hydra/launcher files carry the plugins' names, so Hydra checks them against the
# plugins' schemas, and says so (a deprecation notice) in every process of a sweep.
warnings.filterwarnings("ignore", message=r"(?s).*is validated against ConfigStore schema")


def train(cfg: DictConfig, output_dir: str | Path) -> dict[str, Any]:
    """Train and evaluate the experiment `cfg` (a composed run config) into `output_dir`.

    Returns:
        results.json's content (also written to <output_dir>/results.json).

    Raises:
        AmintError: a setting or file to fix (results.json records it, status failed).
    """
    from amint_pl.distributed import JobProcesses, is_rank_zero

    output_dir = Path(output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    choices = run_choices(cfg)
    cfg = resolved_config(cfg, output_dir)
    rank_zero = is_rank_zero()
    set_up_logging(rank_zero)
    with StopOnSigterm():
        if cfg.ckpt_path is not None:  # a refused resume leaves the run as it was
            validate_config(cfg)
            check_resume(cfg, output_dir, rank_zero)
        with run_record(cfg, output_dir, choices, rank_zero, started) as stages:
            stages.enter("validating")
            validate_config(cfg)  # before any data is decoded: one line that names the fix
            log_start(cfg, output_dir, choices)
            # Correct DDP inside a sweep too: this job's ranks only, nothing left for the next job.
            with JobProcesses(in_a_sweep(), cfg.trainer.get("strategy", "auto")) as job:
                stages.results.update(_experiment(cfg, output_dir, choices, job, stages))
    return stages.results


def _experiment(
    cfg: DictConfig, output_dir: Path, choices: dict[str, str], job: Any, stages: Stages
) -> dict[str, Any]:
    """Every stage after validation: data -> model -> trainers -> fit phases -> evaluate -> report."""
    import lightning as L

    from amint_pl.data.datamodule import RunDataModule
    from amint_pl.evaluation.evaluate import evaluate, report
    from amint_pl.training.module import AMINTModule
    from amint_pl.training.phases import fit_phases, phase_trainers
    from amint_pl.training.reference import check_reference_models

    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    datamodule = RunDataModule.for_run(cfg, output_dir, stages.rank_zero, on_stage=stages.enter)
    datamodule.prepare_data()  # the stages caching and splitting: before the model is built
    splits = datamodule.splits
    if cfg.attack.reference:  # bad settings or a stale cache stop before anything trains
        check_reference_models(cfg, splits, output_dir)
    protocols = splits.calibrated_protocols()
    module = AMINTModule.for_benchmark(cfg, datamodule, protocols, splits.fingerprint())
    loggers = build_loggers(cfg, choices)
    trainer_of = phase_trainers(cfg, output_dir, loggers, [job.shard_report], stages.status)
    trainer, best = fit_phases(
        module, datamodule, cfg.ckpt_path, trainer_of, output_dir, stages.rank_zero, stages.training
    )
    stages.enter("evaluating")
    samples, evaluation = evaluate(
        cfg, trainer, module, datamodule, best, job.shard_report, output_dir
    )
    stages.enter("reporting")
    if stages.rank_zero:
        step = trainer.global_step
        report(cfg, stages.results, output_dir, samples, splits, evaluation, loggers, step)
    return evaluation


@hydra.main(config_path=str(config_dir()), config_name="run", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> dict[str, Any] | None:
    try:
        return train(cfg, HydraConfig.get().runtime.output_dir)
    except AmintError as err:
        print(f"error: {err}", file=sys.stderr)
        if in_a_sweep():
            return None  # this job is recorded as failed in its results.json; the sweep goes on
        sys.exit(2)
    except Exception:
        if in_a_sweep():
            traceback.print_exc()
            return None
        raise


def main() -> None:
    """`python -m amint_pl.run [overrides]`: one experiment, or a sweep with -m."""
    try:
        args = command_line_overrides(sys.argv[1:])
        if args != sys.argv[1:]:
            print(f"overrides: {' '.join(args)}", file=sys.stderr)
        sys.argv[1:] = args + resumed_config_dir(args, RUN_UID)
        with composition_errors():
            _hydra_main()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
