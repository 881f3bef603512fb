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
    from amint_pl.loggers import mint_label, run_choices
    from amint_pl.record import (
        config_digest,
        finish_run,
        record_failure,
        resolved_config,
        set_up_logging,
        versions,
    )
    from amint_pl.training.module import phases_of

    output_dir = Path(output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    choices = run_choices(cfg)
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    subdir = HydraConfig.get().output_subdir if HydraConfig.initialized() else None
    attempt = output_dir / subdir if subdir else None  # the config Hydra wrote for this attempt
    cfg = resolved_config(cfg, output_dir)
    rank_zero = is_rank_zero()
    set_up_logging(rank_zero)
    results: dict[str, Any] = {
        "status": "running",
        "run_dir": str(output_dir),
        "dataset": cfg.dataset.name,
        "model": cfg.model.name,
        "mint_mode": mint_label(cfg, choices),
        "choices": choices,
        "taps": cfg.mint.taps if isinstance(cfg.mint.taps, str) else list(cfg.mint.taps),
        "seed": cfg.seed,
    }
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
            log.info(
                "run %s: %s, seed %s, up to %s epochs, batch size %s, lr %s",
                output_dir,
                " ".join(f"{g}={o}" for g, o in choices.items()),
                cfg.seed,
                cfg.trainer.max_epochs,
                cfg.batch_size,
                cfg.optim.lr,
            )
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
    from amint_pl.distributed import gather_predictions
    from amint_pl.evaluation.publish import publish_results, summary_metrics
    from amint_pl.evaluation.report import (
        audited_accuracy,
        membership_results,
        scored_samples,
        table_text,
        write_report,
    )
    from amint_pl.loggers import build_loggers, finish_wandb, mint_label
    from amint_pl.record import log_run_directory
    from amint_pl.training.module import AMINTModule
    from amint_pl.training.phases import HEAD_MONITOR, build_trainer, fit_phases, quiet_lightning

    quiet_lightning()
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    rank_zero = stages.rank_zero
    datamodule = RunDataModule(
        cfg.dataset,
        SplitSizes(**OmegaConf.to_container(cfg.dataset.splits)),
        output_dir / "splits.npz",
        int(cfg.batch_size),
        int(cfg.eval_batch_size),
        int(cfg.seed),
        write_splits=rank_zero,
        on_stage=stages.enter,
    )
    datamodule.prepare_data()  # the stages caching and splitting: before the model is built
    benchmark, splits = datamodule.benchmark, datamodule.splits
    log.info(
        "data %s: pools train %d, test %d; splits %s",
        cfg.dataset.name,
        len(benchmark.train),
        len(benchmark.test),
        ", ".join(f"{role} {len(idx)}" for role, idx in splits.indices.items()),
    )
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

    trainer, best_checkpoints = fit_phases(
        module,
        datamodule,
        plan,
        trainer_of,
        output_dir,
        rank_zero,
        on_phase=lambda phase: stages.enter("training", phase=phase),
    )
    stages.results.pop("phase", None)
    stages.enter("evaluating")
    # Under DDP each rank scored its shard: every rank gets them all (and the per-rank counts).
    samples = scored_samples(gather_predictions(trainer.predict(module, datamodule=datamodule)))
    distributed = job.shard_report.report()
    reference_attack = None
    if cfg.attack.reference:  # the opt-in reference-model attack joins the scored methods
        scores, reference_attack = _reference_attack(
            cfg, benchmark, splits, samples, module, output_dir
        )
        samples.scores[reference_attack["method"]] = scores
    membership = membership_results(
        samples, splits, int(cfg.bootstrap.resamples), float(cfg.bootstrap.confidence)
    )
    audited = audited_accuracy(samples)
    evaluation = {
        "audited": audited,
        "membership": membership,
        "split_fingerprint": splits.fingerprint(),
        "split_fingerprints": splits.fingerprints(),
        "split_sizes": {role: len(idx) for role, idx in splits.indices.items()},
        "tap_info": [
            {"index": t.index, "module": t.module, "shape": list(t.shape)}
            for t in module.backbone.tap_info
        ],
        "best_checkpoints": best_checkpoints,
        "epochs_trained": int(trainer.current_epoch),
        "training": datamodule.samples_used(
            module.phases, [p for p in module.phases if p != "audited"]
        ),
        "distributed": distributed,
    }
    if reference_attack is not None:
        evaluation["reference_attack"] = reference_attack
    stages.enter("reporting")
    if rank_zero:
        label = mint_label(cfg, choices)
        taps = evaluation["tap_info"][0]["module"]
        title = f"{cfg.dataset.name} | {cfg.model.name} | mint={label} | taps={taps}"
        write_report(output_dir, samples, splits, membership, title)
        summary = summary_metrics(audited, membership)
        publish_results(loggers, summary, membership, output_dir, trainer.global_step)
        finish_wandb(cfg, exit_code=0)  # its closing summary would otherwise follow the table
        log_run_directory(output_dir)
        record = {"dataset": cfg.dataset.name, "model": cfg.model.name, "mint_mode": label}
        log.info("results:\n%s", table_text({**record, **evaluation}))  # the last thing shown
    return evaluation


def _reference_attack(
    cfg: DictConfig, benchmark: Any, splits: Any, samples: Any, target: Any, output_dir: Path
) -> tuple[Any, dict[str, Any]]:
    """Offline RMIA: the reference models' outputs (trained or reused), scored."""
    from amint_pl.evaluation.reference import rmia_attack
    from amint_pl.training.phases import build_trainer
    from amint_pl.training.reference import reference_model_outputs

    def trainer_of(ref_cfg: DictConfig, root: Path) -> Any:
        return build_trainer(ref_cfg, root, "audited", "val/aud_acc", label="reference")

    outputs = reference_model_outputs(
        cfg, benchmark, splits, samples, target, output_dir, trainer_of
    )
    return rmia_attack(outputs, cfg.attack)


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
