"""The membership DataModule: balanced member/external training batches and the scored sets.

Images stay uint8 in memory (one tensor per pool); a batch is gathered by index in one call
(`__getitems__`), so there is no per-sample Python work and no worker processes are needed.
Normalisation happens on the model's device (see `amint_pl.data.transforms`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from amint_pl.data.benchmarks import Benchmark, Pool
from amint_pl.data.splits import MembershipSplits
from amint_pl.errors import ConfigError

# Role codes carried by every batch (`batch["role"]`).
ROLE_CODES = {
    "members_seen": 0,
    "members_unseen": 1,
    "external": 2,
    "nonmembers_calib": 3,
    "nonmembers_eval": 4,
    "members_seen_calib": 5,
    "members_unseen_calib": 6,
}
ROLE_NAMES = {code: name for name, code in ROLE_CODES.items()}
POOL_NAMES = ("train", "test")


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


class BalancedBatchSampler(Sampler[list[int]]):
    """Each batch: batch_size/2 members and batch_size/2 external samples (catalogue positions).

    Every epoch visits each member once, in a new seeded order; external samples are drawn in their
    own seeded order, cycled to match. Under DDP each rank takes an interleaved shard of both
    orders (padded by wrapping so every rank has the same number of batches), so every rank's
    batch is balanced and every member is seen once per epoch.
    """

    def __init__(
        self,
        member_positions: np.ndarray,
        external_positions: np.ndarray,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 2 or batch_size % 2:
            raise ValueError(f"batch_size must be even and >= 2, got {batch_size}")
        if len(member_positions) == 0 or len(external_positions) == 0:
            raise ValueError("training needs members and external samples")
        self.members = np.asarray(member_positions)
        self.external = np.asarray(external_positions)
        self.half = batch_size // 2
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0
        self.per_rank = math.ceil(len(self.members) / world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.per_rank / self.half)

    def _shard(self, order: np.ndarray) -> np.ndarray:
        total = self.per_rank * self.world_size
        order = np.resize(order, total)  # wraps around: pads with the first entries
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        members = self._shard(rng.permutation(self.members))
        externals = self._shard(np.resize(rng.permutation(self.external), len(self.members)))
        for start in range(0, self.per_rank, self.half):
            stop = start + self.half
            yield [*members[start:stop].tolist(), *externals[start:stop].tolist()]


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


# The calibration sets (validation during training) and every scored set (evaluation).
CALIBRATION_ROLES = ("members_seen_calib", "members_unseen_calib", "nonmembers_calib")
SCORED_ROLES = ("members_seen", "members_unseen", "external", "nonmembers_calib", "nonmembers_eval")


class MembershipDataModule(L.LightningDataModule):
    """Balanced member/external training batches; calibration and scored sets for evaluation.

    Args:
        benchmark: the two pools.
        splits: the membership roles.
        batch_size: per step and device; half members (D), half external (E).
        eval_batch_size: batch size of the calibration and scored sets.
        seed: the sampling seed (epoch orders derive from it).
        on_device: on a GPU, keep the uint8 pools on it whole (`dataset.on_device`): batches are
            gathered there, with no host-to-device copy per step. No effect on a CPU.
    """

    def __init__(
        self,
        benchmark: Benchmark,
        splits: MembershipSplits,
        batch_size: int,
        eval_batch_size: int,
        seed: int,
        on_device: bool = False,
    ) -> None:
        super().__init__()
        self.benchmark = benchmark
        self.splits = splits
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.on_device = on_device
        pools = (benchmark.train, benchmark.test)
        self.training_set = IndexedSamples(
            pools, *catalogue(splits, ("members_seen", "members_unseen", "external"))
        )
        self.calibration_set = IndexedSamples(pools, *catalogue(splits, CALIBRATION_ROLES))
        self.scored_set = IndexedSamples(pools, *catalogue(splits, SCORED_ROLES))

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

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        roles = self.training_set.role.numpy()
        members = np.flatnonzero(roles != ROLE_CODES["external"])
        external = np.flatnonzero(roles == ROLE_CODES["external"])
        sampler = BalancedBatchSampler(members, external, self.batch_size, self.seed, rank, world)
        return self._loader(self.training_set, sampler)

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
