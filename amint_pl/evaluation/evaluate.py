"""After training: every sample of every role scored with the run's best weights, and reported.

`evaluate` scores them (under DDP each rank its shard, then all of them on every rank), adds the
opt-in reference-model attack, and measures membership and the audited model's accuracy: the
evaluation part of results.json. `report` writes scores.csv, the plots and the loggers' summary,
then tells what the run directory holds and shows the results table, the last thing a run prints.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from amint_pl.evaluation.report import ScoredSamples
from amint_pl.training.resume import ATTEMPT_FILES

log = logging.getLogger("amint_pl.run")
# What the run directory listing names (besides what a resumed attempt rewrites).
RUN_FILES = (*ATTEMPT_FILES, "splits.npz", "checkpoints", "wandb")


def evaluate(
    cfg: DictConfig,
    trainer: Any,
    module: Any,
    datamodule: Any,
    best_checkpoints: dict[str, str],
    shard_report: Any,
    output_dir: Path,
) -> tuple[ScoredSamples, dict[str, Any]]:
    """Score, attack and measure: (the scored samples, results.json's evaluation keys)."""
    from amint_pl.distributed import gather_predictions
    from amint_pl.evaluation.report import audited_accuracy, membership_results, scored_samples

    splits = datamodule.splits
    samples = scored_samples(gather_predictions(trainer.predict(module, datamodule=datamodule)))
    distributed = shard_report.report()  # each rank's share, read after the scores were gathered
    reference_attack = None
    if cfg.attack.reference:  # the opt-in reference-model attack joins the scored methods
        scores, reference_attack = _reference_attack(cfg, datamodule, samples, module, output_dir)
        samples.scores[reference_attack["method"]] = scores
    resamples, confidence = int(cfg.bootstrap.resamples), float(cfg.bootstrap.confidence)
    evaluation = {
        "audited": audited_accuracy(samples),
        "membership": membership_results(samples, splits, resamples, confidence),
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
    return samples, evaluation


def _reference_attack(
    cfg: DictConfig, datamodule: Any, samples: ScoredSamples, target: Any, output_dir: Path
) -> tuple[Any, dict[str, Any]]:
    """Offline RMIA: the reference models' outputs (trained or reused), scored."""
    from amint_pl.evaluation.reference import rmia_attack
    from amint_pl.training.phases import build_trainer
    from amint_pl.training.reference import reference_model_outputs

    def trainer_of(ref_cfg: DictConfig, root: Path) -> Any:
        return build_trainer(ref_cfg, root, "audited", "val/aud_acc", label="reference")

    outputs = reference_model_outputs(
        cfg, datamodule.benchmark, datamodule.splits, samples, target, output_dir, trainer_of
    )
    return rmia_attack(outputs, cfg.attack)


def report(
    cfg: DictConfig,
    record: dict[str, Any],
    output_dir: Path,
    samples: ScoredSamples,
    splits: Any,
    evaluation: dict[str, Any],
    loggers: list[Any],
    global_step: int,
) -> None:
    """scores.csv, the ROC and score plots, and the summary every logger gets; W&B's run closes.
    Then what the run directory holds, and the results table. `record`: the run's results.json
    content so far (its dataset, model and mint mode)."""
    from amint_pl.evaluation.publish import publish_results, summary_metrics
    from amint_pl.evaluation.report import table_text, write_report
    from amint_pl.loggers import finish_wandb

    run = {key: record[key] for key in ("dataset", "model", "mint_mode")}
    taps = evaluation["tap_info"][0]["module"]
    title = f"{run['dataset']} | {run['model']} | mint={run['mint_mode']} | taps={taps}"
    membership = evaluation["membership"]
    write_report(output_dir, samples, splits, membership, title)
    summary = summary_metrics(evaluation["audited"], membership)
    publish_results(loggers, summary, membership, output_dir, global_step)
    finish_wandb(cfg, exit_code=0)  # its closing summary would otherwise follow the table
    log_run_directory(output_dir)
    log.info("results:\n%s", table_text({**run, **evaluation}))  # the last thing shown


def log_run_directory(output_dir: Path) -> None:
    """Say what the run directory holds, and how to upload an offline W&B run."""
    written = [name for name in RUN_FILES if (output_dir / name).exists()]
    log.info("run directory: %s (%s)", output_dir, ", ".join(written))
    if (output_dir / "wandb").is_dir() and any((output_dir / "wandb").glob("offline-run-*")):
        log.info("W&B offline: wandb sync %s uploads it", output_dir / "wandb" / "offline-run-*")
