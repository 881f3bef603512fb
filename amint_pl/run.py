"""Hydra entry point: compose -> data, model, trainer -> fit -> evaluate -> report.

python -m amint_pl.run                                  # the embedded default (digits)
python -m amint_pl.run mint=passive trainer.max_epochs=5 seed=3
python -m amint_pl.run -m model=small_cnn,resnet18 mint=active,passive
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import secrets
import sys
import time
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from amint_pl.errors import AmintError, ConfigError

# Run directories carry this: the process id and a random suffix, fixed for the whole process.
RUN_UID = f"{os.getpid()}-{secrets.token_hex(2)}"
OmegaConf.register_new_resolver("amint_uid", lambda: RUN_UID, replace=True)

CONFIG_GROUPS = ("dataset", "model", "mint", "trainer", "logger", "paths", "experiment", "debug")


def config_dir() -> Path:
    return Path(str(resources.files("amint_pl") / "conf"))


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def check_overrides(overrides: list[str]) -> None:
    """Refuse, before Hydra composes anything, a group option that does not exist or a run
    directory that already holds a run (nothing a user has is overwritten)."""
    given = dict(
        arg.lstrip("+~").partition("=")[::2]
        for arg in overrides
        if "=" in arg and not arg.startswith("-")
    )
    for group in CONFIG_GROUPS:
        if group not in given:
            continue
        for option in given[group].split(","):
            if option in ("", "null") or (config_dir() / group / f"{option}.yaml").is_file():
                continue
            hint = " (or model.name=<any timm model name>)" if group == "model" else ""
            raise ConfigError(
                f"unknown {group} '{option}': choose one of {', '.join(group_options(group))}{hint}"
            )
    run_dir = given.get("hydra.run.dir")
    if (
        run_dir
        and (Path(run_dir) / "results.json").exists()
        and given.get("ckpt_path", "null") == "null"
    ):
        raise ConfigError(
            f"{run_dir} already holds a run: pick a new hydra.run.dir, or resume it with ckpt_path=last"
        )


def config_digest(cfg: DictConfig) -> str:
    """SHA-256 of the resolved experiment config, without paths and resume settings."""
    data = OmegaConf.to_container(cfg, resolve=True)
    for key in ("paths", "ckpt_path", "logger"):
        data.pop(key, None)
    return hashlib.sha256(
        OmegaConf.to_yaml(OmegaConf.create(data), sort_keys=True).encode()
    ).hexdigest()


def versions() -> dict[str, str]:
    import lightning
    import timm
    import torch
    import torchmetrics

    from amint_pl import __version__

    return {
        "amint_pl": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "timm": timm.__version__,
        "torchmetrics": torchmetrics.__version__,
        "hydra": hydra.__version__,
    }


def run_experiment(cfg: DictConfig) -> dict[str, Any]:
    """Train and evaluate one experiment in the Hydra run directory; return results.json's content."""
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    started = time.time()
    results: dict[str, Any] = {
        "status": "running",
        "run_dir": str(output_dir),
        "dataset": cfg.dataset.name,
        "model": cfg.model.name,
        "mint_mode": cfg.mint.mode,
        "taps": cfg.mint.taps if isinstance(cfg.mint.taps, str) else list(cfg.mint.taps),
        "seed": int(cfg.seed),
        "config_digest": config_digest(cfg),
        "versions": versions(),
    }
    try:
        results.update(_train_and_evaluate(cfg, output_dir))
        results["status"] = "completed"
    except BaseException as err:
        results.update(status="failed", error=f"{type(err).__name__}: {err}")
        raise
    finally:
        results["wall_time_s"] = round(time.time() - started, 2)
        _finish(cfg, output_dir, results)
    return results


def _is_rank_zero() -> bool:
    from lightning.pytorch.utilities import rank_zero_only

    return rank_zero_only.rank == 0


def _finish(cfg: DictConfig, output_dir: Path, results: dict[str, Any]) -> None:
    from amint_pl.evaluation.report import write_json

    if _is_rank_zero():
        write_json(output_dir / "results.json", results)
    if "wandb" in (cfg.get("logger") or {}):
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=0 if results["status"] == "completed" else 1)


def _load_splits(cfg: DictConfig, output_dir: Path, n_train: int, n_test: int):
    from amint_pl.data.splits import MembershipSplits, SplitSizes, build_splits
    from amint_pl.errors import SplitError

    path = output_dir / "splits.npz"
    if path.exists():
        splits = MembershipSplits.load(path)
        if splits.pool_sizes and splits.pool_sizes != {"train": n_train, "test": n_test}:
            raise SplitError(
                f"{path} was built for pools {splits.pool_sizes}, the data set now has {n_train}/{n_test}"
            )
        return splits
    splits = build_splits(
        n_train, n_test, SplitSizes(**OmegaConf.to_container(cfg.dataset.splits)), int(cfg.seed)
    )
    if _is_rank_zero():
        tmp = output_dir / "splits.tmp.npz"
        splits.save(tmp)
        tmp.replace(path)
    return splits


def _loggers(cfg: DictConfig) -> list[Any]:
    loggers = []
    for name, node in (cfg.get("logger") or {}).items():
        if node is not None and "_target_" in node:
            loggers.append(hydra.utils.instantiate(node))
        elif node is not None:
            raise ConfigError(
                f"logger '{name}' has no _target_: use logger=csv, logger=wandb or logger=none"
            )
    return loggers


def _trainer(cfg: DictConfig, output_dir: Path, phase: str, monitor: str, loggers: list[Any]):
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    if phase == "mint_head":
        kwargs["max_epochs"] = int(cfg.mint.head_max_epochs)
    mode = str(cfg.mint.monitor_mode)
    checkpoint = ModelCheckpoint(
        dirpath=output_dir / "checkpoints" / phase,
        filename="best-{epoch:03d}",
        monitor=monitor,
        mode=mode,
        save_top_k=1,
        save_last=True,
    )
    callbacks = [
        checkpoint,
        EarlyStopping(monitor=monitor, mode=mode, patience=int(cfg.early_stopping_patience)),
    ]
    return L.Trainer(
        **kwargs,
        logger=loggers or False,
        callbacks=callbacks,
        default_root_dir=output_dir,
        use_distributed_sampler=False,  # our samplers shard by rank themselves
    )


def _quiet_lightning() -> None:
    """Lightning prints through its own handler; stop it printing each line twice under Hydra,
    and drop warnings that our deliberate choices trigger."""
    logging.getLogger("lightning.pytorch").propagate = False
    logging.getLogger("lightning.fabric").propagate = False
    for message in (
        ".*overridden `on_after_batch_transfer`.*",
        ".*custom batch sampler.*",
        ".*does not have many workers.*",
        ".*isinstance\\(treespec, LeafSpec\\).*",
        ".*litlogger.*",
    ):
        warnings.filterwarnings("ignore", message=message)


def _train_and_evaluate(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    import lightning as L
    import torch

    from amint_pl.data.benchmarks import benchmark_from_config
    from amint_pl.data.datamodule import MembershipDataModule
    from amint_pl.data.splits import PROTOCOLS
    from amint_pl.evaluation.report import (
        audited_accuracy,
        membership_results,
        plot_roc,
        plot_score_hist,
        print_table,
        scored_samples,
        write_scores_csv,
    )
    from amint_pl.training.module import AMINTModule

    _quiet_lightning()
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    benchmark = benchmark_from_config(cfg.dataset)
    splits = _load_splits(cfg, output_dir, len(benchmark.train), len(benchmark.test))
    datamodule = MembershipDataModule(
        benchmark, splits, int(cfg.batch_size), int(cfg.eval_batch_size), int(cfg.seed)
    )
    protocols = [p for p, role in PROTOCOLS.items() if len(splits[f"{role}_calib"])]
    module = AMINTModule(
        OmegaConf.to_container(cfg, resolve=True),
        num_classes=benchmark.num_classes,
        native_channels=benchmark.channels,
        mean=benchmark.mean,
        std=benchmark.std,
        protocols=protocols,
        split_fingerprint=splits.fingerprint(),
    )
    loggers = _loggers(cfg)
    best_checkpoints: dict[str, str] = {}
    trainer = None
    for phase in module.phases:
        module.set_phase(phase)
        monitor = "val/paper/mint_auc" if phase == "mint_head" else str(cfg.mint.monitor)
        trainer = _trainer(cfg, output_dir, phase, monitor, loggers)
        trainer.fit(module, datamodule=datamodule)
        best = (
            trainer.checkpoint_callback.best_model_path
            or trainer.checkpoint_callback.last_model_path
        )
        if best:
            module.load_state_dict(
                torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
            )
            best_checkpoints[phase] = str(Path(best).relative_to(output_dir))
    predictions = trainer.predict(module, datamodule=datamodule)
    samples = scored_samples(predictions)
    membership = membership_results(samples, splits)
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
    }
    if _is_rank_zero():
        title = f"{cfg.dataset.name} | {cfg.model.name} | mint={cfg.mint.mode} | taps={evaluation['tap_info'][0]['module']}"
        write_scores_csv(output_dir / "scores.csv", samples, splits)
        plot_roc(output_dir / "roc.png", samples, splits, membership, title)
        plot_score_hist(output_dir / "scores_hist.png", samples, title)
        summary = {f"test/aud_{k}": v for k, v in audited.items() if k.endswith("acc")}
        for protocol, methods in membership.items():
            for method, m in methods.items():
                for key in (
                    "auc",
                    "balanced_acc_calibrated",
                    "tpr_at_1%_fpr",
                    "tpr_at_0.1%_fpr",
                    "acc_at_0.5",
                ):
                    if m[key] is not None:
                        summary[f"test/{protocol}/{method}/{key}"] = m[key]
        for logger in loggers:
            logger.log_metrics(summary, step=trainer.global_step)
            logger.save()
        print_table(
            {
                "dataset": cfg.dataset.name,
                "model": cfg.model.name,
                "mint_mode": cfg.mint.mode,
                **evaluation,
            }
        )
        print(f"run directory: {output_dir}")
    return evaluation


@hydra.main(config_path="conf", config_name="run", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> dict[str, Any] | None:
    try:
        return run_experiment(cfg)
    except AmintError as err:
        print(f"error: {err}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            return None  # this job is recorded as failed in its results.json; the sweep goes on
        sys.exit(2)
    except Exception:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            import traceback

            traceback.print_exc()
            return None
        raise


def main() -> None:
    """`python -m amint_pl.run [overrides]`: one experiment, or a sweep with -m."""
    try:
        check_overrides(sys.argv[1:])
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    _hydra_main()


if __name__ == "__main__":
    main()
