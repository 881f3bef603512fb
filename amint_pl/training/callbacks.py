"""Membership during training, drawn: `MembershipCurves` keeps the validation metrics that the
module logs each epoch (`val/aud_acc`, `val/<protocol>/{mint,loss}_auc`: see
`training/module.py`) and, at the end of each fit, draws the whole history (every phase so far)
into `training_curves.png` in the trainer's root directory (the run directory).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import Callback


class MembershipCurves(Callback):
    """The history of the validation metrics over every phase so far, plotted at the end of each
    fit. The module computes and logs them (`AMINTModule.on_validation_epoch_end`, which leaves
    the epoch's values in `validation_values`).

    Args:
        plot_name: file name of the curves plot in the trainer's root directory; None: no plot.
    """

    def __init__(self, plot_name: str | None = "training_curves.png") -> None:
        self.plot_name = plot_name
        self.history: list[dict[str, Any]] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        values = getattr(pl_module, "validation_values", None)
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
    # Fixed margins: tight_layout would measure every tick label first.
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.9, wspace=0.2)
    fig.savefig(path, dpi=120)
    plt.close(fig)
