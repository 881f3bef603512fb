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

import logging
import os
import secrets
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from amint_pl import config_dir
from amint_pl.errors import AmintError, ConfigError
from amint_pl.loggers import build_loggers, run_choices
from amint_pl.record import (
    config_digest,
    finish_run,
    log_run_directory,
    log_start,
    new_record,
    record_failure,
    resolved_config,
    set_up_logging,
    versions,
)
from amint_pl.status import RunStatus, Stages, StopOnSigterm
from amint_pl.training.resume import (
    check_resume,
    keep_earlier_attempt,
    resume_plan,
    resumed_config_dir,
    with_run_overrides,
)
from amint_pl.validation import (
    check_command_line,
    validate_config,
    with_optim_group,
    with_timm_config,
)

# The run's story: Hydra's job logging sends it to the console and to <run dir>/run.log.
log = logging.getLogger("amint_pl.run")
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
    from amint_pl.training.module import phases_of

    output_dir = Path(output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    choices = run_choices(cfg)
    hydra_run = HydraConfig.get() if HydraConfig.initialized() else None
    multirun = hydra_run is not None and hydra_run.mode == RunMode.MULTIRUN
    subdir = hydra_run.output_subdir if hydra_run is not None else None
    attempt = output_dir / subdir if subdir else None  # the config Hydra wrote for this attempt
    cfg = resolved_config(cfg, output_dir)
    rank_zero = is_rank_zero()
    set_up_logging(rank_zero)
    results = new_record(cfg, output_dir, choices)
    status = RunStatus(output_dir, enabled=rank_zero)
    stages = Stages(results, status, rank_zero)
    with StopOnSigterm():
        if cfg.ckpt_path is not None:  # a refused resume leaves the run as it was
            validate_config(cfg)
            check_resume(cfg, output_dir, phases_of(cfg.mint.mode), attempt, rank_zero)
        try:
            stages.enter("starting")
            if cfg.ckpt_path is not None and rank_zero:
                keep_earlier_attempt(output_dir)
            results.update(config_digest=config_digest(cfg), versions=versions())
            stages.enter("validating")
            validate_config(cfg)  # before any data is decoded: one line that names the fix
            log_start(cfg, output_dir, choices)
            # Correct DDP inside a sweep too: this job's ranks only, nothing left for the next job.
            with JobProcesses(multirun, cfg.trainer.get("strategy", "auto")) as job:
                plan = resume_plan(cfg.ckpt_path, output_dir, phases_of(cfg.mint.mode))
                results.update(_experiment(cfg, output_dir, choices, plan, job, stages))
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
            finish_run(cfg, output_dir, results, status, rank_zero)
    return results


def _experiment(
    cfg: DictConfig,
    output_dir: Path,
    choices: dict[str, str],
    plan: dict[str, str],
    job: Any,
    stages: Stages,
) -> dict[str, Any]:
    """Every stage after validation: data -> model -> trainers -> fit phases -> evaluate -> report."""
    import lightning as L

    from amint_pl.data.datamodule import RunDataModule
    from amint_pl.data.splits import PROTOCOLS, SplitSizes
    from amint_pl.evaluation.evaluate import evaluate, report
    from amint_pl.evaluation.report import table_text
    from amint_pl.training.module import AMINTModule
    from amint_pl.training.phases import HEAD_MONITOR, build_trainer, fit_phases, quiet_lightning

    quiet_lightning()
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    sizes = SplitSizes(**OmegaConf.to_container(cfg.dataset.splits))
    datamodule = RunDataModule(
        cfg.dataset,
        sizes,
        output_dir / "splits.npz",
        int(cfg.batch_size),
        int(cfg.eval_batch_size),
        int(cfg.seed),
        write_splits=stages.rank_zero,
        on_stage=stages.enter,
    )
    datamodule.prepare_data()  # the stages caching and splitting: before the model is built
    splits = datamodule.splits
    if cfg.attack.reference:  # bad settings or a stale cache stop before anything trains
        from amint_pl.training.reference import check_reference_models

        check_reference_models(cfg, splits, output_dir)
    protocols = [p for p, role in PROTOCOLS.items() if len(splits[f"{role}_calib"])]
    module = AMINTModule.for_benchmark(cfg, datamodule, protocols, splits.fingerprint())
    loggers = build_loggers(cfg, choices)

    def trainer_of(phase: str) -> L.Trainer:
        monitor = HEAD_MONITOR if phase == "mint_head" else str(cfg.mint.monitor)
        extra = [job.shard_report]
        return build_trainer(cfg, output_dir, phase, monitor, loggers, extra, status=stages.status)

    def on_phase(phase: str) -> None:
        stages.enter("training", phase=phase)

    trainer, best = fit_phases(
        module, datamodule, plan, trainer_of, output_dir, stages.rank_zero, on_phase=on_phase
    )
    stages.results.pop("phase", None)
    stages.enter("evaluating")
    samples, evaluation = evaluate(
        cfg, trainer, module, datamodule, best, job.shard_report, output_dir
    )
    stages.enter("reporting")
    if stages.rank_zero:
        record = {key: stages.results[key] for key in ("dataset", "model", "mint_mode")}
        taps = evaluation["tap_info"][0]["module"]
        title = f"{cfg.dataset.name} | {cfg.model.name} | mint={record['mint_mode']} | taps={taps}"
        report(cfg, title, output_dir, samples, splits, evaluation, loggers, trainer.global_step)
        log_run_directory(output_dir)
        log.info("results:\n%s", table_text({**record, **evaluation}))  # the last thing shown
    return evaluation


@hydra.main(config_path=str(config_dir()), config_name="run", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> dict[str, Any] | None:
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        return train(cfg, HydraConfig.get().runtime.output_dir)
    except AmintError as err:
        print(f"error: {err}", file=sys.stderr)
        if multirun:
            return None  # this job is recorded as failed in its results.json; the sweep goes on
        sys.exit(2)
    except Exception:
        if multirun:
            import traceback

            traceback.print_exc()
            return None
        raise


def main() -> None:
    """`python -m amint_pl.run [overrides]`: one experiment, or a sweep with -m."""
    try:
        args = with_optim_group(with_timm_config(with_run_overrides(sys.argv[1:])))
        check_command_line(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if args != sys.argv[1:]:
        print(f"overrides: {' '.join(args)}", file=sys.stderr)
    sys.argv[1:] = args + resumed_config_dir(args, RUN_UID)
    _hydra_main()


if __name__ == "__main__":
    main()
