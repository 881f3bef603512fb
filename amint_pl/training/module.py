"""AMINTModule: the Enhanced Audited Model M+ (audited network + MINT head) as a LightningModule.

Phases (what `mint.mode` runs, in order):
- active: `joint` — one forward over the mixed member/external batch; L = w_aud * CE(members)
  + w_mint * BCE(MINT logits, is_member); the MINT loss reaches the shared layers. With a head
  that reads only detached outputs (`head_reads_detached`) the MINT loss reaches no layer: the
  members forward with the graph, the external samples without it (`batch_statistics`), or, for
  a head that reads the membership memory alone, through the memory alone, in one read of the
  whole batch.
- passive: `audited` (CE alone), then `mint_head` (backbone frozen in eval mode, head trained on
  detached taps).
- off: `audited` only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import hydra
import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryAUROC, MulticlassAccuracy

from amint_pl.checkpoints import check_checkpoint, check_resumable, seal_checkpoint
from amint_pl.data.datamodule import BalancedBatchSampler
from amint_pl.data.splits import PROTOCOLS, ROLE_CODES
from amint_pl.data.transforms import BatchTransform
from amint_pl.errors import ConfigError
from amint_pl.models.backbones import backbone_from_config
from amint_pl.models.fingerprints import FingerprintMemory
from amint_pl.models.memory import memory_from_config
from amint_pl.models.mint_head import MINTHead, mint_head_from_config
from amint_pl.models.outputs import member_probability, true_label_log_probability
from amint_pl.training.batch_statistics import batch_norms, recorded, replayable, replayed
from amint_pl.training.callbacks import MembershipCurves
from amint_pl.training.losses import LossWeighting

MODES = {"active": ("joint",), "passive": ("audited", "mint_head"), "off": ("audited",)}
SEEN, UNSEEN, EXTERNAL = (
    ROLE_CODES["members_seen"],
    ROLE_CODES["members_unseen"],
    ROLE_CODES["external"],
)
# Validation on the calibration sets: each protocol's calibration members against the calibration
# non-members (on whom the audited accuracy is measured too).
CALIB_MEMBERS = {p: ROLE_CODES[f"{role}_calib"] for p, role in PROTOCOLS.items()}
CALIB_NONMEMBERS = ROLE_CODES["nonmembers_calib"]
# Shown in the progress bar.
PROGRESS_BAR_KEYS = ("val/aud_acc", "val/paper/mint_auc")

# torch.compile modes `model.compile` may name (true = "default").
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def positive_draw(index: torch.Tensor, salt: int) -> torch.Tensor:
    """A uniform number in [0, 1) per sample index, fixed for a given salt (a Weyl hash)."""
    mixed = (index.long() * 0x9E3779B1 + (salt + 1) * 0x85EBCA77) & 0xFFFFFFFF
    return mixed.double() / float(1 << 32)


def role_positions(
    role: torch.Tensor,
    index: torch.Tensor | None = None,
    positive_fraction: float = 1.0,
    salt: int = 0,
) -> dict[str, torch.Tensor]:
    """Positions in a training batch of its members (the audited CE) and of its MINT targets
    (seen members and external samples: unseen members are never MINT positives).

    With `positive_fraction` < 1 only that share of the seen members (drawn per sample index and
    `salt`: the epoch, when the subset rotates) are MINT positives in this step.

    Computed on the host where the roles are made (`on_before_batch_transfer`): rows selected on
    the device by these positions need no device->host sync, which a boolean mask costs every step.
    """
    mint = role != UNSEEN
    if positive_fraction < 1.0 and index is not None:
        mint &= (role == EXTERNAL) | (positive_draw(index, salt) < positive_fraction)
    return {
        "member_index": torch.nonzero(role != EXTERNAL).flatten(),
        "external_index": torch.nonzero(role == EXTERNAL).flatten(),
        "mint_index": torch.nonzero(mint).flatten(),
    }


def batch_rows(size: int, *parts: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The rows of a batch from its parts, each (positions, rows), detached: (size, ...)."""
    first = parts[0][1]
    out = first.new_empty((size, *first.shape[1:]))
    for positions, rows in parts:
        out.index_copy_(0, positions, rows.detach().to(out.dtype))
    return out


def mint_loss(
    mint_logits: torch.Tensor, role: torch.Tensor, mint_targets: torch.Tensor
) -> torch.Tensor:
    """BCE of the MINT logits at the MINT targets (members 1, external samples 0), each class
    weighted one half, as the paper's separate member and external batches were."""
    is_member = (role.index_select(0, mint_targets) != EXTERNAL).float()
    losses = F.binary_cross_entropy_with_logits(
        mint_logits.index_select(0, mint_targets), is_member, reduction="none"
    )
    positives = (losses * is_member).sum() / is_member.sum().clamp_min(1.0)
    negatives = (losses * (1 - is_member)).sum() / (1 - is_member).sum().clamp_min(1.0)
    return 0.5 * (positives + negatives)


def compile_mode(value: Any) -> str | None:
    """`model.compile`: false -> None, true -> "default", or one of COMPILE_MODES."""
    if value is None or value is False:
        return None
    if value is True:
        return "default"
    if value in COMPILE_MODES:
        return str(value)
    raise ConfigError(
        f"model.compile={value!r} is unknown: use false, true or a mode ({', '.join(COMPILE_MODES)})"
    )


def step_seed(
    seed: int, split_fingerprint: str, phase: str, epoch: int, step: int, rank: int = 0
) -> int:
    """The torch seed of one training step: the run seed and splits, and where the step is."""
    splits = int(split_fingerprint[:15] or "0", 16)
    phase_id = ("joint", "audited", "mint_head").index(phase)
    where = [seed % (1 << 63), splits, phase_id, epoch, step, rank]
    return int(np.random.SeedSequence(where).generate_state(1, np.uint64)[0] >> 1)


def metric_key(name: str) -> str:
    """The logged name of a validation metric: aud_acc -> val/aud_acc,
    paper_mint_auc -> val/paper/mint_auc."""
    if name == "aud_acc":
        return "val/aud_acc"
    protocol, _, what = name.partition("_")
    return f"val/{protocol}/{what}"


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
        class_names: the name of each class as the data set names it (`Benchmark.class_names`;
            `audit` reads labels of class folders by them).
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
        class_names: Sequence[str] = (),
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
        # The membership memory (mint.memory.bands > 0 or record: fingerprint; models/memory.py,
        # models/fingerprints.py): a part of the audited model written by the cross-entropy
        # gradient alone; what it adds to the backbone's logits, it says (`logit_share`).
        self.memory = memory_from_config(
            mint.get("memory"),
            (channels, img_size, img_size),
            num_classes,
            int(dataset["splits"]["members"]),
        )
        self.mint_head = (
            mint_head_from_config(
                mint["head"], [t.shape for t in self.backbone.tap_info], num_classes
            )
            if self.mode != "off"
            else None
        )
        self.loss_weighting = LossWeighting(
            str(mint["weighting"]), float(mint["w_aud"]), float(mint["w_mint"])
        )
        self.optim_cfg = dict(config["optim"])
        self.lr_schedule = str(self.optim_cfg.pop("schedule", "constant"))
        head_lr = mint["head"].get("lr") if self.mode != "off" else None
        self.head_lr = None if head_lr is None else float(head_lr)
        # The share of seen members used as MINT positives, and whether it rotates per epoch.
        self.positive_fraction = float(mint.get("positive_fraction", 1.0))
        self.rotate_positives = bool(mint.get("rotate_positives", False))
        # Under augmentation: the MINT head reads every row of the batch clean (as an audit shows
        # it) while the cross-entropy trains on the augmented members.
        self.clean_views = bool(mint.get("clean_views", False))
        # Fast paths (README "Speed"): NHWC activations, torch.compile in `configure_model`.
        self.channels_last = bool(config["model"].get("channels_last", False))
        self.compile_mode = compile_mode(config["model"].get("compile", False))
        self._compiled = False
        if self.channels_last:
            for part in (self.backbone, self.mint_head):
                if part is not None:
                    part.to(memory_format=torch.channels_last)
        self.protocols = tuple(protocols)
        # The validation metrics, what model selection and early stopping watch: val/aud_acc (the
        # audited accuracy on nonmembers_calib) and val/<protocol>/{mint,loss}_auc (the MINT
        # head's and the LOSS attack's AUC, the protocol's calibration members against
        # nonmembers_calib). torchmetrics states sum across processes: every rank computes the
        # same value.
        self.validation_metrics = MetricCollection(
            {"aud_acc": MulticlassAccuracy(num_classes, average="micro")}
            | {f"{p}_{m}": BinaryAUROC() for p in self.protocols for m in ("mint_auc", "loss_auc")}
        )
        self.validation_values: dict[str, float] = {}
        # Their history over every phase, drawn (attached to every trainer: configure_callbacks).
        self.membership_curves = MembershipCurves()

    @classmethod
    def for_benchmark(
        cls,
        config: Mapping[str, Any],
        benchmark: Any,
        protocols: Sequence[str],
        split_fingerprint: str,
    ) -> AMINTModule:
        """The module for a run config (resolved to plain containers) on a `Benchmark`'s pools, or
        a `MembershipDataModule`'s (either says num_classes, channels, mean, std, class_names)."""
        from omegaconf import OmegaConf

        if not isinstance(config, dict):
            config = OmegaConf.to_container(config, resolve=True)
        return cls(
            config,
            num_classes=benchmark.num_classes,
            native_channels=benchmark.channels,
            mean=benchmark.mean,
            std=benchmark.std,
            protocols=protocols,
            split_fingerprint=split_fingerprint,
            class_names=list(benchmark.class_names),
        )

    # ----------------------------------------------------------------------------------- phases
    def set_phase(self, phase: str) -> None:
        """Switch to a phase of this mode; `mint_head` freezes the backbone, `audited` the head."""
        if phase not in self.phases:
            raise ValueError(f"phase {phase!r} is not one of {self.phases}")
        self.phase = phase
        self.backbone.requires_grad_(phase != "mint_head")
        if self.memory is not None:
            self.memory.requires_grad_(phase != "mint_head")
        if self.mint_head is not None:
            # Unused in `audited`: DDP must not wait for gradients that never come.
            self.mint_head.requires_grad_(phase != "audited")

    def on_train_epoch_start(self) -> None:
        if self.phase == "mint_head":
            self.backbone.eval()  # frozen: BatchNorm statistics stay those of the audited model
        if self.phase == "joint" and isinstance(self.memory, FingerprintMemory):
            self.read_external_ahead()

    def read_external_ahead(self, chunk: int = 1024) -> None:
        """The fingerprint record reads this epoch's external samples (this process's share)
        before the epoch, many at a time (`FingerprintMemory.read_ahead`): each step then finds
        their reads kept. Skipped for a loader whose batches do not say their external samples."""
        loader = self.trainer.train_dataloader
        sampler = getattr(loader, "batch_sampler", None)
        if not isinstance(sampler, BalancedBatchSampler):
            return
        positions = sampler.external_order(sampler.epoch, sampler.sampler.rank)
        for start in range(0, len(positions), chunk):
            batch = loader.dataset.__getitems__(positions[start : start + chunk].tolist())
            inputs = self.preprocess(batch["images"].to(self.device), train=False)
            self.memory.read_ahead(inputs)

    def configure_model(self) -> None:
        """Compile the backbone and the MINT head in place, once (`model.compile`): their
        state_dict keys do not change, so checkpoints load into compiled and plain models alike."""
        if self.compile_mode is None or self._compiled:
            return
        for part in (self.backbone, self.mint_head):
            if part is not None:
                part.compile(mode=self.compile_mode)
        self._compiled = True

    def on_train_batch_start(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        # Each step's randomness (augmentation, dropout) depends on (seed, splits, phase, epoch,
        # step, rank) alone: a run resumed at an epoch boundary draws what an uninterrupted one
        # draws (and reference models, trained on other splits, draw their own).
        torch.manual_seed(
            step_seed(
                int(self.hparams.config["seed"]),
                self.hparams.split_fingerprint,
                self.phase,
                self.current_epoch,
                batch_idx,
                self.global_rank,
            )
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["amint_phase"] = self.phase
        checkpoint["amint_split_fingerprint"] = self.hparams.split_fingerprint
        seal_checkpoint(checkpoint)  # amint_pl's version and a digest: audit and resume check it

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Resuming (ckpt_path): refuse a foreign or changed file, other splits, another config.
        check_checkpoint(checkpoint, "ckpt_path")
        check_resumable(checkpoint, self.hparams.config, self.hparams.split_fingerprint)

    # ------------------------------------------------------------------------------ forward
    def on_before_batch_transfer(
        self, batch: dict[str, torch.Tensor], dataloader_idx: int
    ) -> dict[str, torch.Tensor]:
        if "role" in batch:
            salt = self.current_epoch if self.rotate_positives else 0
            batch.update(
                role_positions(batch["role"], batch.get("index"), self.positive_fraction, salt)
            )
        return batch

    def on_after_batch_transfer(
        self, batch: dict[str, torch.Tensor], dataloader_idx: int
    ) -> dict[str, torch.Tensor]:
        train = self.training and self.phase != "mint_head"
        inputs = self.preprocess(batch["images"], train=train)
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        batch["inputs"] = inputs
        if (
            (self.memory is not None or self.clean_views)
            and train
            and self.preprocess.augment != "none"
        ):
            # The images as the data set holds them (as an audit shows them), not the augmented
            # views the network trains on: what the memory records, and with `clean_views` what
            # the MINT head reads.
            clean = self.preprocess(batch["images"], train=False)
            if self.channels_last:
                clean = clean.contiguous(memory_format=torch.channels_last)
            batch["clean_inputs"] = clean
        return batch

    def forward(
        self, inputs: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Class logits and membership logits (None without a MINT head) of preprocessed inputs.

        `labels` matter only to a head that reads the loss (None: the predicted class)."""
        logits, taps, memory = self.audited(inputs)
        if self.mint_head is None:
            return logits, None
        return logits, self.mint_head(taps, logits, labels, memory)

    def audited(
        self, inputs: torch.Tensor, memory_inputs: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
        """The audited model on preprocessed inputs: (class logits, taps, the membership memory's
        logits, None without one); the class logits include the memory's share of them
        (`logit_share`: all of the hashed record's, a zero-valued probe of the fingerprints').
        `memory_inputs`: the un-augmented inputs the memory reads instead (training with
        augmentation)."""
        logits, taps = self.backbone(inputs)
        if self.memory is None:
            return logits, taps, None
        memory = self.memory(inputs if memory_inputs is None else memory_inputs)
        return self.with_memory_share(logits, memory), taps, memory

    def with_memory_share(self, logits: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """The network's class logits plus the memory's share of them (`logit_share`)."""
        return logits + self.memory.logit_share(memory).to(logits.dtype)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        role, labels, inputs = batch["role"], batch["labels"], batch["inputs"]
        # Row selections by position, made on the host (no device sync); recomputed here only for
        # a batch that skipped `on_before_batch_transfer`.
        where = batch if "member_index" in batch else role_positions(role)
        members, mint_targets = where["member_index"], where["mint_index"]
        ce = bce = None
        clean = batch.get("clean_inputs")
        if self.phase == "joint" and self.clean_views and clean is not None:
            # ONE forward over the augmented members (the cross-entropy's) and the whole batch
            # clean (the MINT head's): BatchNorm sees them all.
            n = len(members)
            memory_inputs = (
                None if self.memory is None else torch.cat([clean.index_select(0, members), clean])
            )
            logits, taps, memory = self.audited(
                torch.cat([inputs.index_select(0, members), clean]), memory_inputs
            )
            member_logits = logits[:n]
            ce = F.cross_entropy(member_logits, labels.index_select(0, members))
            mint_logits = self.mint_head(
                [t[n:] for t in taps], logits[n:], labels, None if memory is None else memory[n:]
            )
            bce = mint_loss(mint_logits, role, mint_targets)
        elif self.phase == "joint" and self.head_reads_detached(
            norms := batch_norms(self.backbone)
        ):
            # The MINT loss reaches no layer of the audited model: only the members need its
            # graph. They forward with it, on their own BatchNorm statistics (as without aMINT);
            # the external samples forward without it, normalised by the members' statistics,
            # or, for a head that reads the membership memory alone, only the memory reads them:
            # the whole batch in one read (one product of its rows with the bank), of which the
            # members' share reaches their class logits and the external rows' reaches no loss.
            external = where["external_index"]
            if self.mint_head.reads_network or self.memory is None:
                with recorded(norms) as statistics:
                    member_logits, _, member_memory = self.audited(
                        inputs.index_select(0, members),
                        None if clean is None else clean.index_select(0, members),
                    )
                with torch.no_grad(), replayed(statistics):
                    external_logits, _, external_memory = self.audited(
                        inputs.index_select(0, external),
                        None if clean is None else clean.index_select(0, external),
                    )
                logits = batch_rows(
                    len(role), (members, member_logits), (external, external_logits)
                )
                memory = (
                    None
                    if member_memory is None
                    else batch_rows(
                        len(role), (members, member_memory), (external, external_memory)
                    )
                )
            else:
                memory = self.memory(inputs if clean is None else clean)
                member_logits, _ = self.backbone(inputs.index_select(0, members))
                member_logits = self.with_memory_share(
                    member_logits, memory.index_select(0, members)
                )
                logits = None
            ce = F.cross_entropy(member_logits, labels.index_select(0, members))
            mint_logits = self.mint_head([], logits, labels, memory)
            bce = mint_loss(mint_logits, role, mint_targets)
        elif self.phase == "joint":
            # ONE forward over members and external samples together: BatchNorm sees both.
            logits, taps, memory = self.audited(inputs, clean)
            member_logits = logits.index_select(0, members)
            ce = F.cross_entropy(member_logits, labels.index_select(0, members))
            mint_logits = self.mint_head(taps, logits, labels, memory)
            bce = mint_loss(mint_logits, role, mint_targets)
        elif self.phase == "audited":
            memory_inputs = clean
            if memory_inputs is not None:
                memory_inputs = memory_inputs.index_select(0, members)
            member_logits, _, _ = self.audited(inputs.index_select(0, members), memory_inputs)
            ce = F.cross_entropy(member_logits, labels.index_select(0, members))
        else:  # mint_head: the frozen backbone's detached taps
            with torch.no_grad():
                logits, taps, memory = self.audited(inputs)
            mint_logits = self.mint_head(
                [t.detach() for t in taps], logits.detach(), labels, memory
            )
            bce = mint_loss(mint_logits, role, mint_targets)
        loss = self.loss_weighting(ce, bce)
        prefix = "head/" if self.phase == "mint_head" else ""
        self.log(f"{prefix}train/loss", loss, prog_bar=True)
        if ce is not None:
            self.log("train/ce", ce)
            # The members' accuracy as training sees them (BatchNorm on batch statistics), beside
            # the evaluated one (running statistics): apart, they flag a recipe that does not train.
            hits = member_logits.detach().argmax(1) == labels.index_select(0, members)
            self.log(
                "train/aud_acc",
                hits.float().mean(),
                on_step=False,
                on_epoch=True,
                batch_size=len(hits),
            )
        if bce is not None:
            self.log(f"{prefix}train/bce", bce)
        return loss

    def head_reads_detached(self, norms: list | None = None) -> bool:
        """Whether the MINT head reads only detached outputs of the audited model (no tap), so
        that the external samples of a joint step need no graph and can forward apart: not for
        a compiled model (hooks) nor BatchNorm statistics that span processes. `norms`: the
        backbone's BatchNorm layers, if the caller has them."""
        head = self.mint_head
        return (
            isinstance(head, MINTHead)
            and head.detach_outputs
            and not head.use_taps
            and self.compile_mode is None
            and replayable(batch_norms(self.backbone) if norms is None else norms)
        )

    def on_validation_epoch_start(self) -> None:
        self.validation_metrics.reset()
        if isinstance(self.memory, FingerprintMemory):
            # The fit's validation scores untouched calibration images: the record reads them as
            # training does, not in every audited view (~50x the products at the defaults).
            self.memory.audit_reads = self.trainer.state.fn != "fit"

    def full_precision(self) -> torch.autocast:
        """Scoring in float32 under a mixed precision (`trainer.precision=bf16-mixed`): bf16's 8 bits
        of mantissa round the class and MINT logits into ties that move every AUC and TPR at low
        FPR. Training keeps the mixed precision."""
        return torch.autocast(self.device.type, enabled=False)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """The validation metrics on a batch of the calibration sets (the MINT head is not scored
        while only the audited model trains)."""
        with self.full_precision():
            logits, mint_logits = self(batch["inputs"], batch["labels"])
        if self.phase == "audited":
            mint_logits = None
        role, labels, metrics = batch["role"], batch["labels"], self.validation_metrics
        nonmember = role == CALIB_NONMEMBERS
        if nonmember.any():
            metrics["aud_acc"].update(logits[nonmember], labels[nonmember])
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
            metrics[f"{protocol}_loss_auc"].update(p_true[keep], target)
            if p_member is not None:
                metrics[f"{protocol}_mint_auc"].update(p_member[keep], target)

    def on_validation_epoch_end(self) -> None:
        values: dict[str, float] = {}
        for name, metric in self.validation_metrics.items():
            if metric.update_called:
                key = metric_key(name)
                value = metric.compute()
                # Already synchronised by torchmetrics: no second reduction.
                self.log(key, value, prog_bar=key in PROGRESS_BAR_KEYS, sync_dist=False)
                values[key] = float(value)
            metric.reset()
        self.validation_values = values
        if isinstance(self.memory, FingerprintMemory):
            self.memory.audit_reads = True

    def configure_callbacks(self) -> list[L.Callback]:
        return [self.membership_curves]

    def predict_step(
        self, batch: dict[str, torch.Tensor], batch_idx: int
    ) -> dict[str, torch.Tensor]:
        with self.full_precision():
            logits, mint_logits = self(batch["inputs"], batch["labels"])
        out = {k: batch[k] for k in ("index", "pool", "role", "labels")}
        out["logits"] = logits.float()
        if mint_logits is not None:
            out["mint_logits"] = mint_logits.float()
        return out

    # ---------------------------------------------------------------------------- optimiser
    def audited_parameters(self) -> list[torch.nn.Parameter]:
        """The audited model's parameters the optimiser updates: the backbone's (the membership
        memory's table is written by the memory itself, `on_before_optimizer_step`)."""
        return list(self.backbone.parameters())

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.memory is not None:
            self.memory.write()

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        audited = [] if self.phase == "mint_head" else self.audited_parameters()
        head = [] if self.phase == "audited" else list(self.mint_head.parameters())
        if self.head_lr is None:
            params = audited + head  # one group
        else:  # the head in a group of its own, at `mint.head.lr`
            groups = ({"params": audited}, {"params": head, "lr": self.head_lr})
            params = [group for group in groups if group["params"]]
        # conf/optim/*.yaml: the optimiser's class (`_target_`) and settings, `_partial_`.
        optimizer = hydra.utils.instantiate(self.optim_cfg)(params)
        if self.lr_schedule != "cosine":
            return optimizer
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.cosine_factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }

    def cosine_factor(self, epoch: int) -> float:
        """optim.lr's factor in the phase's epoch `epoch` under the cosine schedule: from 1 down to
        0 at max_epochs, stepped once per epoch. Read from the trainer's max_epochs each epoch, so a
        resumed run with more epochs follows the longer schedule from where it stands."""
        epochs = max(int(self.trainer.max_epochs or 1), 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(epoch, epochs) / epochs))
