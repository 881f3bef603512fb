"""Membership during training: per epoch, how well the MINT head and the LOSS attack separate the
calibration members from the calibration non-members, beside the audited model's accuracy.

`MembershipCurves` is the one place that computes and logs the validation metrics (model selection
and early stopping watch them):

- `val/aud_acc`: the audited model's accuracy on `nonmembers_calib`;
- `val/<protocol>/mint_auc`: the MINT head's AUC, calibration members of the protocol
  (`members_seen_calib` for paper, `members_unseen_calib` for strict) vs `nonmembers_calib`;
- `val/<protocol>/loss_auc`: the same for the LOSS attack (Yeom et al.).

They go to every logger (CSV, W&B); at the end of each fit the whole history (every phase so far)
is drawn into `training_curves.png` in the trainer's root directory (the run directory).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryAUROC, MulticlassAccuracy

from amint_pl.data.splits import ROLE_CODES
from amint_pl.models.outputs import member_probability, true_label_log_probability

# Calibration members of each protocol, and the calibration non-members.
CALIB_MEMBERS = {
    "paper": ROLE_CODES["members_seen_calib"],
    "strict": ROLE_CODES["members_unseen_calib"],
}
CALIB_NONMEMBERS = ROLE_CODES["nonmembers_calib"]
# Shown in the progress bar.
PROGRESS_BAR_KEYS = ("val/aud_acc", "val/paper/mint_auc")


def metric_key(name: str) -> str:
    """The logged name of a metric of the collection: aud_acc -> val/aud_acc,
    paper_mint_auc -> val/paper/mint_auc."""
    if name == "aud_acc":
        return "val/aud_acc"
    protocol, _, what = name.partition("_")
    return f"val/{protocol}/{what}"


class MembershipCurves(Callback):
    """Per-epoch membership metrics on the calibration sets, logged and plotted.

    The module's `validation_step` returns `{"logits", "mint_logits"}` (mint_logits None when the
    MINT head is not being scored); the batch carries `role` and `labels`.

    Args:
        num_classes: classes of the audited task.
        protocols: the protocols with calibration members (`paper`, `strict`).
        plot_name: file name of the curves plot in the trainer's root directory; None: no plot.
    """

    def __init__(
        self,
        num_classes: int,
        protocols: Sequence[str] = ("paper", "strict"),
        plot_name: str | None = "training_curves.png",
    ) -> None:
        self.protocols = tuple(protocols)
        self.plot_name = plot_name
        # torchmetrics states sum across processes: every rank computes the same value.
        self.metrics = MetricCollection(
            {"aud_acc": MulticlassAccuracy(num_classes, average="micro")}
            | {f"{p}_{m}": BinaryAUROC() for p in self.protocols for m in ("mint_auc", "loss_auc")}
        )
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------------------ hooks
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.metrics.to(pl_module.device)
        self.metrics.reset()

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Mapping[str, Any] | None,
        batch: Mapping[str, torch.Tensor],
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not outputs:
            return
        logits, mint_logits = outputs["logits"], outputs.get("mint_logits")
        role, labels = batch["role"], batch["labels"]
        nonmember = role == CALIB_NONMEMBERS
        if nonmember.any():
            self.metrics["aud_acc"].update(logits[nonmember], labels[nonmember])
        # Scores mapped into [0, 1] in double precision, order kept: torchmetrics would otherwise
        # squash unbounded scores with a float32 sigmoid (ties), and only in some batches.
        p_true = true_label_log_probability(logits.detach(), labels).exp()
        p_member = member_probability(mint_logits) if mint_logits is not None else None
        for protocol in self.protocols:
            member = role == CALIB_MEMBERS[protocol]
            keep = member | nonmember
            if not keep.any():
                continue
            target = member[keep].long()
            self.metrics[f"{protocol}_loss_auc"].update(p_true[keep], target)
            if p_member is not None:
                self.metrics[f"{protocol}_mint_auc"].update(p_member[keep], target)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        values: dict[str, float] = {}
        for name, metric in self.metrics.items():
            if metric.update_called:
                key = metric_key(name)
                value = metric.compute()
                # Already synchronised by torchmetrics: no second reduction.
                pl_module.log(key, value, prog_bar=key in PROGRESS_BAR_KEYS, sync_dist=False)
                values[key] = float(value)
            metric.reset()
        if not trainer.sanity_checking and values:
            phase = getattr(pl_module, "phase", "")
            self.history.append({"phase": phase, "epoch": int(trainer.current_epoch), **values})

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.plot_name and self.history and trainer.is_global_zero:
            plot_curves(Path(trainer.default_root_dir) / self.plot_name, self.history)

    # Resuming a run keeps the curves drawn so far.
    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))


def plot_curves(path: Path, history: Sequence[Mapping[str, Any]], title: str = "") -> None:
    """Draw membership AUCs (left) and the audited accuracy (right) against the validation epoch
    counted over all phases; a dotted line marks each change of phase."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    x = np.arange(1, len(history) + 1)
    fig, (ax_auc, ax_acc) = plt.subplots(1, 2, figsize=(10.4, 4.2))
    keys = sorted({k for row in history for k in row if k.endswith("_auc")})
    colours = {"paper": "C0", "strict": "C1"}
    for key in keys:
        y = np.array([row.get(key, np.nan) for row in history], dtype=float)
        protocol, what = key.split("/")[1:]
        ax_auc.plot(
            x,
            y,
            marker="o",
            ms=3,
            color=colours.get(protocol),
            ls="-" if what == "mint_auc" else "--",
            label=f"{'MINT head' if what == 'mint_auc' else 'LOSS attack'} ({protocol})",
        )
    acc = np.array([row.get("val/aud_acc", np.nan) for row in history], dtype=float)
    ax_acc.plot(x, acc, marker="o", ms=3, color="k", label="audited accuracy")
    for i in range(1, len(history)):
        if history[i]["phase"] != history[i - 1]["phase"]:
            for ax in (ax_auc, ax_acc):
                ax.axvline(i + 0.5, color="grey", ls=":", lw=1)
    phases = " -> ".join(dict.fromkeys(row["phase"] for row in history))
    ax_auc.axhline(0.5, color="grey", lw=0.8)
    ax_auc.set_ylabel("AUC on the calibration sets")
    ax_acc.set_ylabel("accuracy on nonmembers_calib")
    for ax in (ax_auc, ax_acc):
        ax.set_xlabel(f"validation epoch ({phases})")
        ax.set_ylim(0, 1.02)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title or "membership during training", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
