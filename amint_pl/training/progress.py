"""Progress as plain lines, for output that is not a terminal (a file, SLURM, nohup, CI), and the
run's status file.

`ProgressReport` logs, on the global rank 0, one line at the end of every training epoch and one
every `interval_s` seconds within an epoch: phase, epoch n/N, step, samples/s, elapsed time and
ETA of the phase, the training loss, and (at the epoch's end) the calibration metrics. While the
trainer scores every role for the evaluation (`predict`) it logs a line every `interval_s` seconds
and one at the end: batches done, samples/s, elapsed time and ETA. The lines go
to the `amint_pl.progress` logger (Hydra sends it to run.log and to the console; on a terminal
amint_pl.run keeps it off the console, where Rich draws its bar). Each line also rewrites
status.json when a `RunStatus` is given.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from amint_pl.status import PROGRESS_LOGGER, RunStatus, batch_progress, duration

log = logging.getLogger(PROGRESS_LOGGER)


def _shown_metrics(metrics: Mapping[str, Any], epoch_end: bool) -> dict[str, float]:
    """The training loss, and at an epoch's end the audited accuracy and MINT AUCs."""
    shown = {}
    for key, value in metrics.items():
        train = key.endswith("train/loss")
        calibration = key == "val/aud_acc" or (key.startswith("val/") and key.endswith("mint_auc"))
        if train or (epoch_end and calibration):
            shown[key] = float(value)
    return shown


def _batch_size(batch: Any) -> int:
    labels = batch.get("labels") if isinstance(batch, Mapping) else None
    return len(labels) if labels is not None else 0


class ProgressReport(Callback):
    """Plain progress lines (and status.json) while a trainer fits and while it scores.

    Args:
        label: what is training (the phase: audited, mint_head; `reference` for RMIA's models).
        interval_s: seconds between lines within an epoch.
        status: the run's status file, rewritten with each line; None: none.
    """

    def __init__(self, label: str, interval_s: float, status: RunStatus | None = None) -> None:
        self.label = label
        self.interval_s = float(interval_s)
        self.status = status

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = self.last_line = time.monotonic()
        self.first_epoch = int(trainer.current_epoch)
        self.samples = 0

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self.samples += _batch_size(batch) * trainer.world_size
        if time.monotonic() - self.last_line >= self.interval_s:
            self._report(trainer, batch_idx + 1, epoch_end=False)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, int(trainer.num_training_batches), epoch_end=True)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = self.last_line = time.monotonic()
        self.samples = self.batches = self.reported = 0

    def on_predict_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, *_: int
    ) -> None:
        self.batches += 1
        self.samples += _batch_size(batch) * trainer.world_size
        if time.monotonic() - self.last_line >= self.interval_s:
            self._report_scoring(trainer)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.reported != self.batches:  # the last batch has its line
            self._report_scoring(trainer)

    def _report_scoring(self, trainer: L.Trainer) -> None:
        now = time.monotonic()
        self.last_line, self.reported = now, self.batches
        if not trainer.is_global_zero:
            return
        total = int(sum(trainer.num_predict_batches))
        line, eta = batch_progress(self.batches, total, self.samples, now - self.started)
        log.info(f"scoring every role: {line}")
        if self.status is not None:  # keeps a long evaluation from looking stale
            self.status.update(eta_s=None if eta is None else round(eta, 1))

    def _report(self, trainer: L.Trainer, batches_done: int, epoch_end: bool) -> None:
        now = time.monotonic()
        self.last_line = now
        if not trainer.is_global_zero:
            return
        epoch, max_epochs = int(trainer.current_epoch), int(trainer.max_epochs or 0)
        per_epoch = max(int(trainer.num_training_batches), 1)
        fraction = min(batches_done / per_epoch, 1.0)
        elapsed = now - self.started
        done = epoch - self.first_epoch + fraction  # epochs trained by this process
        remaining = max(max_epochs - epoch - fraction, 0.0)
        eta = elapsed / done * remaining if done > 0 and max_epochs > 0 else None
        metrics = _shown_metrics(trainer.callback_metrics, epoch_end)
        line = (
            f"{self.label} epoch {epoch + 1}/{max_epochs or '?'} step {batches_done}/{per_epoch} "
            f"| {self.samples / elapsed if elapsed > 0 else 0:.0f} samples/s "
            f"| elapsed {duration(elapsed)} ETA {duration(eta)}"
        )
        if metrics:
            line += " | " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        log.info(line)
        if self.status is not None:
            self.status.update(
                phase=self.label,
                epoch=epoch + 1,
                max_epochs=max_epochs,
                step=int(trainer.global_step),
                eta_s=None if eta is None else round(eta, 1),
                metrics=metrics,
            )
