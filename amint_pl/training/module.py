"""AMINTModule: the Enhanced Audited Model M+ (audited network + MINT head) as a LightningModule.

Phases (what `mint.mode` runs, in order):
- active: `joint` — one forward over the mixed member/external batch; L = w_aud * CE(members)
  + w_mint * BCE(MINT logits, is_member); the MINT loss reaches the shared layers.
- passive: `audited` (CE alone), then `mint_head` (backbone frozen in eval mode, head trained on
  detached taps).
- off: `audited` only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryAUROC, MulticlassAccuracy

from amint_pl.data.datamodule import ROLE_CODES
from amint_pl.data.transforms import BatchTransform
from amint_pl.errors import ConfigError
from amint_pl.models.backbones import backbone_from_config
from amint_pl.models.mint_head import mint_head_from_config
from amint_pl.training.losses import LossWeighting

MODES = {"active": ("joint",), "passive": ("audited", "mint_head"), "off": ("audited",)}
SEEN, UNSEEN, EXTERNAL = (
    ROLE_CODES["members_seen"],
    ROLE_CODES["members_unseen"],
    ROLE_CODES["external"],
)
# Calibration members of each protocol (validation) and the calibration non-members.
CALIB_MEMBERS = {
    "paper": ROLE_CODES["members_seen_calib"],
    "strict": ROLE_CODES["members_unseen_calib"],
}
CALIB_NONMEMBERS = ROLE_CODES["nonmembers_calib"]


def phases_of(mode: str) -> tuple[str, ...]:
    if mode not in MODES:
        raise ConfigError(
            f"mint.mode='{mode}' is unknown: use mint=active, mint=passive or mint=off"
        )
    return MODES[mode]


class AMINTModule(L.LightningModule):
    """The audited model and its MINT head.

    Args:
        config: the whole resolved run config (saved in every checkpoint; `audit` rebuilds from it).
        num_classes: classes of the audited task.
        native_channels: channels the data set stores (the model reads `dataset.channels`).
        mean, std: normalisation per native channel, [0, 1] units.
        protocols: the protocols with calibration members (`paper`, `strict`), for validation.
        split_fingerprint: the digest of the membership splits this model trains on.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        num_classes: int,
        native_channels: int,
        mean: Sequence[float],
        std: Sequence[float],
        protocols: Sequence[str] = ("paper", "strict"),
        split_fingerprint: str = "",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        dataset, mint = config["dataset"], config["mint"]
        self.mode = str(mint["mode"])
        self.phases = phases_of(self.mode)
        self.phase = self.phases[0]
        channels = int(dataset.get("channels") or native_channels)
        img_size = int(dataset["image_size"])
        self.preprocess = BatchTransform(
            mean, std, native_channels, channels, dataset.get("augment", "none")
        )
        self.backbone = backbone_from_config(
            config["model"], mint["taps"], num_classes, channels, img_size
        )
        self.mint_head = (
            mint_head_from_config(mint["head"], [t.shape for t in self.backbone.tap_info])
            if self.mode != "off"
            else None
        )
        self.loss_weighting = LossWeighting(
            str(mint["weighting"]), float(mint["w_aud"]), float(mint["w_mint"])
        )
        self.optim_cfg = dict(config["optim"])
        self.protocols = tuple(protocols)
        self.val_metrics = MetricCollection(
            {"aud_acc": MulticlassAccuracy(num_classes, average="micro")}
            | {f"{p}_{m}": BinaryAUROC() for p in self.protocols for m in ("mint_auc", "loss_auc")}
        )

    # ----------------------------------------------------------------------------------- phases
    def set_phase(self, phase: str) -> None:
        """Switch to a phase of this mode; `mint_head` freezes the backbone."""
        if phase not in self.phases:
            raise ValueError(f"phase {phase!r} is not one of {self.phases}")
        self.phase = phase
        self.backbone.requires_grad_(phase != "mint_head")

    def on_train_epoch_start(self) -> None:
        if self.phase == "mint_head":
            self.backbone.eval()  # frozen: BatchNorm statistics stay those of the audited model

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["amint_phase"] = self.phase
        checkpoint["amint_split_fingerprint"] = self.hparams.split_fingerprint

    # ------------------------------------------------------------------------------ forward
    def on_after_batch_transfer(
        self, batch: dict[str, torch.Tensor], dataloader_idx: int
    ) -> dict[str, torch.Tensor]:
        batch["inputs"] = self.preprocess(
            batch["images"], train=self.training and self.phase != "mint_head"
        )
        return batch

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Class logits and membership logits (None without a MINT head) of preprocessed inputs."""
        logits, taps = self.backbone(inputs)
        return logits, (self.mint_head(taps) if self.mint_head is not None else None)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        role, labels, inputs = batch["role"], batch["labels"], batch["inputs"]
        is_member = role != EXTERNAL
        ce = bce = None
        if self.phase == "joint":
            # ONE forward over members and external samples together: BatchNorm sees both.
            logits, taps = self.backbone(inputs)
            ce = F.cross_entropy(logits[is_member], labels[is_member])
            mint_mask = role != UNSEEN  # unseen members are never MINT positives
            mint_logits = self.mint_head(taps)
            bce = F.binary_cross_entropy_with_logits(
                mint_logits[mint_mask], is_member[mint_mask].float()
            )
        elif self.phase == "audited":
            logits, _ = self.backbone(inputs[is_member])
            ce = F.cross_entropy(logits, labels[is_member])
        else:  # mint_head: the frozen backbone's detached taps
            with torch.no_grad():
                _, taps = self.backbone(inputs)
            mint_mask = role != UNSEEN
            mint_logits = self.mint_head([t.detach() for t in taps])
            bce = F.binary_cross_entropy_with_logits(
                mint_logits[mint_mask], is_member[mint_mask].float()
            )
        loss = self.loss_weighting(ce, bce)
        prefix = "head/" if self.phase == "mint_head" else ""
        self.log(f"{prefix}train/loss", loss, prog_bar=True)
        if ce is not None:
            self.log("train/ce", ce)
        if bce is not None:
            self.log(f"{prefix}train/bce", bce)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits, mint_logits = self(batch["inputs"])
        role, labels = batch["role"], batch["labels"]
        loss_score = -F.cross_entropy(
            logits, labels, reduction="none"
        )  # LOSS attack: low loss = member
        nonmember = role == CALIB_NONMEMBERS
        if nonmember.any():
            self.val_metrics["aud_acc"].update(logits[nonmember], labels[nonmember])
        score_mint = mint_logits is not None and self.phase != "audited"
        for protocol in self.protocols:
            member = role == CALIB_MEMBERS[protocol]
            keep = member | nonmember
            if not keep.any():
                continue
            target = member[keep].long()
            self.val_metrics[f"{protocol}_loss_auc"].update(loss_score[keep], target)
            if score_mint:
                self.val_metrics[f"{protocol}_mint_auc"].update(mint_logits[keep], target)

    def on_validation_epoch_end(self) -> None:
        for name, metric in self.val_metrics.items():
            if metric.update_called:
                value = metric.compute()
                protocol, _, what = name.partition("_")
                key = "val/aud_acc" if name == "aud_acc" else f"val/{protocol}/{what}"
                self.log(
                    key,
                    value,
                    prog_bar=key in ("val/aud_acc", "val/paper/mint_auc"),
                    sync_dist=False,
                )
            metric.reset()

    def predict_step(
        self, batch: dict[str, torch.Tensor], batch_idx: int
    ) -> dict[str, torch.Tensor]:
        logits, mint_logits = self(batch["inputs"])
        out = {k: batch[k] for k in ("index", "pool", "role", "labels")}
        out["logits"] = logits.float()
        if mint_logits is not None:
            out["mint_logits"] = mint_logits.float()
        return out

    # ---------------------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.phase == "mint_head":
            params = list(self.mint_head.parameters())
        elif self.phase == "audited":
            params = list(self.backbone.parameters())
        else:
            params = list(self.backbone.parameters()) + list(self.mint_head.parameters())
        name, lr, wd = (
            self.optim_cfg["name"],
            float(self.optim_cfg["lr"]),
            float(self.optim_cfg.get("weight_decay", 0.0)),
        )
        if name == "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=wd)
        if name == "adamw":
            return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
        if name == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd, nesterov=True)
        raise ConfigError(f"optim.name='{name}' is unknown: use adam, adamw or sgd")
