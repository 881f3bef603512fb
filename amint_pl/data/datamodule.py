"""The membership DataModule: balanced member/external training batches and the scored sets.

Images stay uint8 in memory (one tensor per pool); a batch is gathered by index in one call
(`__getitems__`), so there is no per-sample Python work and no worker processes are needed.
Normalisation happens on the model's device (see `amint_pl.data.transforms`).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset, Sampler

from amint_pl.data.benchmarks import Benchmark, Pool
from amint_pl.data.splits import (
    CALIBRATION_ROLES,
    ROLE_CODES,
    ROLES,
    MembershipSplits,
    SplitSizes,
    load_or_build_splits,
)
from amint_pl.errors import ConfigError


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))


class IndexedSamples(Dataset):
    """A catalogue of (pool, pool index, role) entries over in-memory pools.

    `__getitems__(positions)` returns one batch dict: images uint8 (B, C, H, W), labels, role,
    index (into its pool) and pool (0 = train, 1 = test).
    """

    def __init__(
        self, pools: Sequence[Pool], pool_id: np.ndarray, index: np.ndarray, role: np.ndarray
    ) -> None:
        self.images = [_as_tensor(p.images) for p in pools]
        self.labels = [_as_tensor(p.labels) for p in pools]
        self.pool_id = torch.as_tensor(pool_id, dtype=torch.long)
        self.index = torch.as_tensor(index, dtype=torch.long)
        self.role = torch.as_tensor(role, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.index)

    def __getitems__(self, positions: Sequence[int]) -> dict[str, torch.Tensor]:
        # The catalogue stays on the host; images and labels are gathered where the pools live
        # (the GPU with `dataset.on_device`), by host-made positions: no device sync.
        pos = torch.as_tensor(positions, dtype=torch.long)
        pool_id, index = self.pool_id[pos], self.index[pos]
        device = self.images[0].device
        if bool((pool_id == pool_id[0]).all()):
            p = int(pool_id[0])
            images, labels = _gather(self.images[p], index), _gather(self.labels[p], index)
        else:
            images = torch.empty(
                (len(pos), *self.images[0].shape[1:]), dtype=torch.uint8, device=device
            )
            labels = torch.empty(len(pos), dtype=torch.long, device=device)
            for p in range(len(self.images)):
                rows = torch.nonzero(pool_id == p).flatten()
                if len(rows):
                    at = index[rows]
                    rows = rows.to(device)
                    images[rows] = _gather(self.images[p], at)
                    labels[rows] = _gather(self.labels[p], at)
        return {
            "images": images,
            "labels": labels,
            "role": self.role[pos],
            "index": index,
            "pool": pool_id,
        }

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([position])


def _gather(rows: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """rows[at], `at` on the host. A host gather goes through numpy: one thread, so it never
    waits on torch's intra-op thread pool (100x slower on a CPU that other jobs share)."""
    if rows.device.type == "cpu":
        return torch.from_numpy(rows.numpy()[at.numpy()])
    return rows[at.to(rows.device)]


def _whole_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return batch


class MemberOrder(Sampler[int]):
    """One rank's members for one epoch, in a new seeded order each epoch (`set_epoch`).

    It is the `sampler` of `BalancedBatchSampler`, where Lightning's fit loop finds it and sets
    the epoch before every epoch (also the epoch a resumed run continues with).
    """

    def __init__(self, members: np.ndarray, seed: int, rank: int, world_size: int) -> None:
        self.members = members
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.per_rank = math.ceil(len(members) / world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def order(self, epoch: int, rank: int) -> np.ndarray:
        """A rank's members in an epoch: an interleaved shard of the epoch's permutation, padded
        by wrapping so that every rank takes the same number."""
        permutation = np.random.default_rng([self.seed, 0, epoch]).permutation(self.members)
        return np.resize(permutation, self.per_rank * self.world_size)[rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order(self.epoch, self.rank).tolist())


def external_count(members: int, external_per_member: float) -> int:
    """External samples beside `members` members in a training batch: external_per_member times
    as many, rounded, at least 1."""
    return max(1, round(members * external_per_member))


class BalancedBatchSampler(Sampler[list[int]]):
    """Each batch: batch_size/2 members and `external_per_member` times as many external samples
    (catalogue positions; 1.0, the default: as many, the paper's balance).

    Every epoch visits each member once, in a new seeded order (`MemberOrder`). External samples
    come from one endless stream of seeded permutations of E, each epoch taking the next stretch
    of it: every external sample serves once before any serves twice, so all of E is used within
    ceil(|E| / (external_per_member |D|)) epochs. Under DDP each rank takes an interleaved shard
    of both (padded by wrapping so every rank has the same number of batches): every rank's batch
    holds the same shares and every member is seen once per epoch. `history` records how many
    batches each epoch yielded.
    """

    def __init__(
        self,
        member_positions: np.ndarray,
        external_positions: np.ndarray,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        history: dict[int, int] | None = None,
        external_per_member: float = 1.0,
    ) -> None:
        if batch_size < 2 or batch_size % 2:
            raise ValueError(f"batch_size must be even and >= 2, got {batch_size}")
        if not external_per_member > 0:
            raise ValueError(f"external_per_member must be > 0, got {external_per_member}")
        if len(member_positions) == 0 or len(external_positions) == 0:
            raise ValueError("training needs members and external samples")
        self.sampler = MemberOrder(np.asarray(member_positions), seed, rank, world_size)
        self.external = np.asarray(external_positions)
        self.half = batch_size // 2
        self.external_per_member = float(external_per_member)
        self.history = {} if history is None else history

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return math.ceil(self.sampler.per_rank / self.half)

    def external_counts(self) -> list[int]:
        """External samples in each of a rank's batches of an epoch (`external_count`)."""
        members = self.sampler.per_rank
        return [
            external_count(min(self.half, members - start), self.external_per_member)
            for start in range(0, members, self.half)
        ]

    def external_order(self, epoch: int, rank: int) -> np.ndarray:
        """A rank's external samples in an epoch: its shard of the epoch's stretch of the stream."""
        world = self.sampler.world_size
        total = sum(self.external_counts()) * world
        start, n = epoch * total, len(self.external)
        cycles = range(start // n, (start + total - 1) // n + 1)
        stream = np.concatenate(
            [
                np.random.default_rng([self.sampler.seed, 1, c]).permutation(self.external)
                for c in cycles
            ]
        )
        offset = start - cycles[0] * n
        return stream[offset : offset + total][rank::world]

    def batches(self, epoch: int, rank: int) -> Iterator[list[int]]:
        """The batches rank `rank` trains on in epoch `epoch`."""
        members = self.sampler.order(epoch, rank)
        externals = self.external_order(epoch, rank)
        taken = 0
        for start, count in zip(
            range(0, len(members), self.half), self.external_counts(), strict=True
        ):
            yield [
                *members[start : start + self.half].tolist(),
                *externals[taken : taken + count].tolist(),
            ]
            taken += count

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.epoch
        self.history[epoch] = 0
        for batch in self.batches(epoch, self.sampler.rank):
            self.history[epoch] += 1
            yield batch

    def positions_used(self) -> np.ndarray:
        """Every catalogue position that the batches of `history` ({epoch: batches yielded})
        held, over all ranks, sorted."""
        used = [
            np.asarray(batch)
            for epoch, n_batches in self.history.items()
            for rank in range(self.sampler.world_size)
            for batch in itertools.islice(self.batches(epoch, rank), n_batches)
        ]
        return np.unique(np.concatenate(used)) if used else np.zeros(0, dtype=np.int64)


class ShardedBatches(Sampler[list[int]]):
    """Consecutive batches over range(n), rank r taking positions r, r + world, ... (no padding)."""

    def __init__(self, n: int, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        self.positions = np.arange(rank, n, world_size)
        self.batch_size = batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.positions) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        for start in range(0, len(self.positions), self.batch_size):
            yield self.positions[start : start + self.batch_size].tolist()


def catalogue(
    splits: MembershipSplits, roles: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pool id, pool index, role code) arrays for the given roles, in that order."""
    pool_ids, indices, role_codes = [], [], []
    for role in roles:
        idx = splits[role]
        pool = 1 if role.startswith("nonmembers") else 0
        pool_ids.append(np.full(len(idx), pool))
        indices.append(idx)
        role_codes.append(np.full(len(idx), ROLE_CODES[role]))
    return np.concatenate(pool_ids), np.concatenate(indices), np.concatenate(role_codes)


class MembershipDataModule(L.LightningDataModule):
    """Balanced member/external training batches; calibration and scored sets for evaluation.

    Args:
        benchmark: the two pools.
        splits: the membership roles.
        batch_size: twice the members (D) per step and device.
        eval_batch_size: batch size of the calibration and scored sets.
        seed: the sampling seed (epoch orders derive from it).
        scored_roles: the roles `predict` scores (the reference-model attack adds `population`).
        on_device: on a GPU, keep the uint8 pools on it whole (`dataset.on_device`): batches are
            gathered there, with no host-to-device copy per step. No effect on a CPU.
        external_per_member: external samples (E) per member in a training batch
            (`mint.external_per_member`; 1.0: batch_size/2 of each).
    """

    def __init__(
        self,
        benchmark: Benchmark | None,
        splits: MembershipSplits | None,
        batch_size: int,
        eval_batch_size: int,
        seed: int,
        on_device: bool = False,
        scored_roles: Sequence[str] = ROLES,
        external_per_member: float = 1.0,
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.external_per_member = external_per_member
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.on_device = on_device
        self.scored_roles = tuple(scored_roles)
        # {phase: {epoch: batches this rank trained on}}: kept in checkpoints, so that what a
        # resumed run trained on before it stopped is counted too.
        self.history: dict[str, dict[int, int]] = {}
        self.benchmark: Benchmark | None = None
        self.splits: MembershipSplits | None = None
        if benchmark is not None and splits is not None:
            self.use(benchmark, splits)

    def use(self, benchmark: Benchmark, splits: MembershipSplits) -> None:
        """Serve these pools and roles."""
        self.benchmark, self.splits = benchmark, splits
        pools = (benchmark.train, benchmark.test)
        self.training_set = IndexedSamples(
            pools, *catalogue(splits, ("members_seen", "members_unseen", "external"))
        )
        self.calibration_set = IndexedSamples(pools, *catalogue(splits, CALIBRATION_ROLES))
        self.scored_set = IndexedSamples(pools, *catalogue(splits, self.scored_roles))

    # What a model of this data needs to know.
    @property
    def num_classes(self) -> int:
        return self.benchmark.num_classes

    @property
    def channels(self) -> int:
        return self.benchmark.channels

    @property
    def mean(self) -> tuple[float, ...]:
        return self.benchmark.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.benchmark.std

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.benchmark.class_names

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _device(self) -> torch.device:
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def setup(self, stage: str) -> None:
        """With `on_device` on a GPU, move the pools there once (shared by every set)."""
        device = self._device()
        if not self.on_device or device.type != "cuda":
            return
        pools = self.training_set
        if pools.images[0].device == device:
            return
        size = sum(t.nbytes for t in (*pools.images, *pools.labels))
        free, _ = torch.cuda.mem_get_info(device)
        if size > free // 2:
            raise ConfigError(
                f"dataset.on_device=true needs {size / 2**30:.1f} GiB on {device}, more than half "
                f"of its {free / 2**30:.1f} GiB free: set dataset.on_device=false"
            )
        images = [t.to(device) for t in pools.images]
        labels = [t.to(device) for t in pools.labels]
        for dataset in (self.training_set, self.calibration_set, self.scored_set):
            dataset.images, dataset.labels = images, labels

    def _loader(self, dataset: IndexedSamples, sampler: Sampler[list[int]]) -> DataLoader:
        # A batch is one gather from memory: worker processes would only add IPC. Host batches
        # bound for a GPU are pinned, so the copy to it runs asynchronously.
        pin = self._device().type == "cuda" and dataset.images[0].device.type == "cpu"
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=_whole_batch,
            num_workers=0,
            pin_memory=pin,
        )

    def _phase(self) -> str:
        module = self.trainer.lightning_module if self.trainer is not None else None
        return str(getattr(module, "phase", "joint"))

    def _balanced_sampler(self, rank: int, world: int, phase: str) -> BalancedBatchSampler:
        roles = self.training_set.role.numpy()
        members = np.flatnonzero(roles != ROLE_CODES["external"])
        external = np.flatnonzero(roles == ROLE_CODES["external"])
        return BalancedBatchSampler(
            members,
            external,
            self.batch_size,
            self.seed,
            rank,
            world,
            history=self.history.setdefault(phase, {}),
            external_per_member=self.external_per_member,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(
            self.training_set, self._balanced_sampler(*self._rank_world(), self._phase())
        )

    def state_dict(self) -> dict[str, Any]:
        return {"history": {phase: dict(epochs) for phase, epochs in self.history.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for phase, epochs in state_dict.get("history", {}).items():
            self.history.setdefault(phase, {}).update({int(e): int(n) for e, n in epochs.items()})

    def samples_used(self, phases: Sequence[str], mint_phases: Sequence[str]) -> dict[str, Any]:
        """How many distinct members, and external samples as MINT negatives (in `mint_phases`),
        the training batches held, over every epoch (a resumed run's earlier attempts too) and
        every rank: `{members_used, external_used, members, external, epochs: {phase: n}}`."""
        _, world = self._rank_world()
        roles = self.training_set.role.numpy()
        members, external = set(), set()
        for phase in phases:
            positions = self._balanced_sampler(0, world, phase).positions_used()
            is_external = roles[positions] == ROLE_CODES["external"]
            members.update(positions[~is_external].tolist())
            if phase in mint_phases:
                external.update(positions[is_external].tolist())
        return {
            "members_used": len(members),
            "external_used": len(external),
            "members": int((roles != ROLE_CODES["external"]).sum()),
            "external": int((roles == ROLE_CODES["external"]).sum()),
            "epochs": {phase: len(self.history.get(phase, {})) for phase in phases},
        }

    def val_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        return self._loader(
            self.calibration_set,
            ShardedBatches(len(self.calibration_set), self.eval_batch_size, rank, world),
        )

    def predict_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        return self._loader(
            self.scored_set, ShardedBatches(len(self.scored_set), self.eval_batch_size, rank, world)
        )


class RunDataModule(MembershipDataModule):
    """A run's data, loaded by the DataModule itself: `prepare_data` reads the benchmark (decoding
    it into the cache the first time) and builds the run's splits.npz, or reloads it (checked
    against the pools); `setup` serves them. Both run once, however often Lightning calls them.

    Args:
        dataset: the run config's `dataset` node (`conf/dataset/*.yaml`).
        sizes: the role sizes (`dataset.splits`).
        splits_path: the run's splits.npz.
        write_splits: whether this process saves a new splits.npz (global rank 0 only).
        on_stage: called with "caching", then "splitting", as each begins (the run's record).
        The rest: as `MembershipDataModule`.
    """

    def __init__(
        self,
        dataset: Mapping[str, Any],
        sizes: SplitSizes,
        splits_path: Path,
        batch_size: int,
        eval_batch_size: int,
        seed: int,
        write_splits: bool = True,
        on_stage: Callable[[str], None] = lambda stage: None,
        external_per_member: float = 1.0,
    ) -> None:
        super().__init__(
            None,
            None,
            batch_size,
            eval_batch_size,
            seed,
            bool(dataset.get("on_device", False)),
            external_per_member=external_per_member,
        )
        self.dataset, self.sizes, self.splits_path = dataset, sizes, Path(splits_path)
        self.write_splits, self.on_stage = write_splits, on_stage

    @classmethod
    def for_run(
        cls,
        cfg: DictConfig,
        output_dir: Path,
        write_splits: bool = True,
        on_stage: Callable[[str], None] = lambda stage: None,
    ) -> RunDataModule:
        """The data of a run config (its dataset, split sizes, batch sizes and seed), with the
        run's splits.npz in `output_dir`."""
        return cls(
            cfg.dataset,
            SplitSizes(**OmegaConf.to_container(cfg.dataset.splits)),
            Path(output_dir) / "splits.npz",
            int(cfg.batch_size),
            int(cfg.eval_batch_size),
            int(cfg.seed),
            write_splits=write_splits,
            on_stage=on_stage,
            external_per_member=float(cfg.mint.external_per_member),
        )

    def prepare_data(self) -> None:
        if self.benchmark is not None:
            return
        from amint_pl.data.benchmarks import benchmark_from_config

        self.on_stage("caching")
        benchmark = benchmark_from_config(self.dataset)
        self.on_stage("splitting")
        pools = (len(benchmark.train), len(benchmark.test))
        splits = load_or_build_splits(
            self.splits_path, *pools, self.sizes, self.seed, self.write_splits
        )
        self.use(benchmark, splits)
        logging.getLogger("amint_pl.run").info(
            "data %s: pools train %d, test %d; splits %s",
            self.dataset.name,
            *pools,
            ", ".join(f"{role} {len(idx)}" for role, idx in splits.indices.items()),
        )

    def setup(self, stage: str) -> None:
        self.prepare_data()
        super().setup(stage)
