"""The trainer of each phase, and the phase loop: fit every phase of the mint mode in turn, each
from where a resume says it continues, and carry the phase's best weights into the next.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from amint_pl.checkpoints import checkpoint_progress, load_checkpoint
from amint_pl.status import PROGRESS_INTERVAL_S, RunStatus
from amint_pl.training.progress import ProgressReport
from amint_pl.training.resume import (
    LAST_CHECKPOINT,
    SKIP_PHASE,
    resume_plan,
    set_aside_checkpoints,
)

# What the MINT head phase watches: the head alone trains, on the paper protocol's calibration sets.
HEAD_MONITOR = "val/paper/mint_auc"


def quiet_lightning() -> None:
    """Lightning prints through its own handler; stop it printing each line twice under Hydra,
    and drop warnings that our deliberate choices trigger."""
    logging.getLogger("lightning.pytorch").propagate = False
    logging.getLogger("lightning.fabric").propagate = False
    for message in (
        ".*overridden `on_(before|after)_batch_transfer`.*",
        ".*custom batch sampler.*",
        ".*does not have many workers.*",
        ".*isinstance\\(treespec, LeafSpec\\).*",
        ".*litlogger.*",
        # Validation values are torchmetrics computed over all ranks: there is nothing to sync.
        ".*when logging on epoch level in distributed setting.*",
    ):
        warnings.filterwarnings("ignore", message=message)


def build_trainer(
    cfg: DictConfig,
    output_dir: Path,
    phase: str,
    monitor: str,
    loggers: Sequence[Any] = (),
    extra_callbacks: Sequence[Any] = (),
    label: str | None = None,
    status: RunStatus | None = None,
) -> L.Trainer:
    """The trainer of one phase: its checkpoints in <output_dir>/checkpoints/<phase>/, early
    stopping on `monitor`, progress lines named `label` (default: the phase)."""
    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    if not sys.stdout.isatty():  # Rich's bar draws only on a terminal: plain lines instead
        kwargs["enable_progress_bar"] = False
    if phase == "mint_head":
        kwargs["max_epochs"] = int(cfg.mint.head_max_epochs)
    mode = str(cfg.mint.monitor_mode)
    folder = output_dir / "checkpoints" / phase
    # A resumed run retrains the epoch it was stopped in and writes that epoch's files again under
    # the same names (no -v1 copies): e.g. a best checkpoint saved just before the stop. The best
    # epoch's checkpoint is what the run evaluates and audit reads: its weights suffice (a third
    # of a checkpoint with Adam's state); last.ckpt keeps the whole state a resume needs.
    best = ModelCheckpoint(
        dirpath=folder,
        filename="best-{epoch:03d}",
        monitor=monitor,
        mode=mode,
        save_top_k=1,
        save_weights_only=True,
        enable_version_counter=False,
    )
    # last.ckpt at the end of every epoch (Lightning's save_last rewrites it only when the best
    # improves): a second callback that keeps the newest checkpoint, under one name. Lightning
    # runs checkpoint callbacks last and in this order, so it holds the epoch's early stopping and
    # best-checkpoint state too.
    last = ModelCheckpoint(
        dirpath=folder, filename=LAST_CHECKPOINT, save_top_k=1, enable_version_counter=False
    )
    interval = float(OmegaConf.select(cfg, "progress.interval_s", default=PROGRESS_INTERVAL_S))
    callbacks = [
        best,
        last,
        EarlyStopping(monitor=monitor, mode=mode, patience=int(cfg.early_stopping_patience)),
        ProgressReport(label or phase, interval, status),
        *extra_callbacks,
    ]
    return L.Trainer(
        **kwargs,
        logger=list(loggers) or False,
        callbacks=callbacks,
        default_root_dir=output_dir,
        use_distributed_sampler=False,  # our samplers shard by rank themselves
    )


def phase_trainers(
    cfg: DictConfig,
    output_dir: Path,
    loggers: Sequence[Any],
    extra_callbacks: Sequence[Any],
    status: RunStatus | None,
) -> Callable[[str], L.Trainer]:
    """phase -> its trainer (`build_trainer`): the MINT head phase watches HEAD_MONITOR, the others
    the run's `mint.monitor`."""

    def trainer_of(phase: str) -> L.Trainer:
        monitor = HEAD_MONITOR if phase == "mint_head" else str(cfg.mint.monitor)
        return build_trainer(
            cfg, output_dir, phase, monitor, loggers, extra_callbacks, status=status
        )

    return trainer_of


def best_path(trainer: L.Trainer) -> str:
    """The checkpoint of a fit's best epoch (its last one when nothing was monitored)."""
    callback = trainer.checkpoint_callback
    return callback.best_model_path or callback.last_model_path


def fit_phases(
    module: Any,
    datamodule: L.LightningDataModule,
    ckpt_path: Any,
    make_trainer: Callable[[str], L.Trainer],
    output_dir: Path,
    rank_zero: bool,
    on_phase: Callable[[str], None] = lambda phase: None,
) -> tuple[L.Trainer, dict[str, str]]:
    """Fit each phase of `module` in turn, each from where `ckpt_path` says it continues
    (`resume.resume_plan`), and load its best weights before the next.

    Args:
        module: the AMINTModule.
        ckpt_path: the run config's `ckpt_path` (None: every phase from its start).
        make_trainer: phase -> its trainer.
        output_dir: the run directory.
        rank_zero: whether this process may move files.
        on_phase: called with each phase as it starts.

    Returns:
        (the last phase's trainer, {phase: its best checkpoint, relative to output_dir}).
    """
    plan = resume_plan(ckpt_path, output_dir, module.phases)
    best_checkpoints: dict[str, str] = {}
    trainer = None
    for i, phase in enumerate(module.phases):
        on_phase(phase)
        module.set_phase(phase)
        trainer = make_trainer(phase)
        resume_from = plan.get(phase)
        if resume_from == SKIP_PHASE:
            continue
        progress = checkpoint_progress(resume_from) if resume_from else None
        if progress and progress["stopped_early"]:
            trainer.fit_loop.max_epochs = progress["epoch"] + 1  # restore it, train no further
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
        if progress and trainer.global_step > progress["global_step"]:
            # This phase trained on: later phases start again from its new weights.
            later = module.phases[i + 1 :]
            plan = {p: c for p, c in plan.items() if p not in later}
            if rank_zero:
                set_aside_checkpoints(output_dir, later)
        best = best_path(trainer)
        if best:
            module.load_state_dict(load_checkpoint(best)["state_dict"])
            best_checkpoints[phase] = str(Path(best).relative_to(output_dir))
    return trainer, best_checkpoints
