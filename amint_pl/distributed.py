"""DDP that stays correct inside a Hydra sweep, and what the ranks report back.

Lightning's `ddp` starts ranks 1..N-1 by re-running the command line, and leaves its launch
environment (MASTER_ADDR, LOCAL_RANK, WORLD_SIZE, ...) and its process group behind in the
launching process. Inside a Hydra multirun that re-runs the whole sweep in each child, and the
next job finds LOCAL_RANK set, starts no processes and trains in a 1-process group while the
trainer still reports N, silently. `JobProcesses` wraps one job:

- before it, under `-m`, the command a rank re-runs is this job alone (its own overrides, its own
  run directory), not the sweep;
- during it, a callback records the real process-group size and what each rank trained on and
  scored, and (under `-m`) takes the child processes over from Lightning's watchdog, which would
  SIGKILL the whole sweep when one job's child fails;
- after it, the process group is destroyed, the children are reaped, and the environment, the
  torch thread count, sys.argv and the Hydra run directory are as they were before the job.

`gather_predictions` brings every rank's `predict_step` outputs to every rank, so that the report
scores each sample once (duplicates are dropped by `report.scored_samples`).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import Callback
from omegaconf import read_write

from amint_pl.data.datamodule import external_count
from amint_pl.data.splits import ROLE_CODES
from amint_pl.errors import ConfigError

# What a Lightning DDP launch writes into the launching process's environment.
LAUNCH_ENV = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "NODE_RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "RANK",
    "OMP_NUM_THREADS",
)
# How long a job's end waits for its child ranks to exit before it ends them.
CHILD_EXIT_TIMEOUT_S = 60.0
# Strategies whose ranks > 0 Lightning starts by re-running the command line.
RERUN_STRATEGIES = ("ddp", "ddp_find_unused_parameters_true", "ddp_find_unused_parameters_false")
ENTRY_MODULE = "amint_pl.run"


def is_rank_zero() -> bool:
    """Whether this process is the global rank 0 (the one that writes a run's files)."""
    from lightning.pytorch.utilities import rank_zero_only

    return rank_zero_only.rank == 0


def is_distributed() -> bool:
    """Whether a torch.distributed process group is up in this process."""
    return dist.is_available() and dist.is_initialized()


def process_group_size() -> int:
    """The real size of this process's group (1 without one)."""
    return dist.get_world_size() if is_distributed() else 1


def gather_objects(value: Any) -> list[Any]:
    """[value of rank 0, value of rank 1, ...] on every rank; [value] without a process group."""
    if not is_distributed() or dist.get_world_size() == 1:
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def gather_predictions(predictions: Sequence[Any]) -> list[Any]:
    """Every rank's `trainer.predict` outputs (lists of dicts of tensors), on every rank, on the CPU.

    Under DDP each rank predicts only its shard; scores are joined by (pool, role, index) later, so
    the order does not matter and the padding duplicates are dropped there.
    """
    local = [
        {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        for batch in predictions
    ]
    return [batch for rank_batches in gather_objects(local) for batch in rank_batches]


def started_as_a_rank() -> bool:
    """Whether something else (SLURM, torchrun, a DDP parent) started this process as one rank:
    Lightning then starts no processes of its own."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    return (
        "LOCAL_RANK" in os.environ or SLURMEnvironment.detect() or TorchElasticEnvironment.detect()
    )


class ShardReport(Callback):
    """What each rank really did, for results.json: the process-group size during fit, the training
    samples of the first epoch (members, external, batches without the configured share of external
    samples), a digest of each epoch's first batch (epochs draw new batches) and the scored
    samples. Given a `children` list, it also takes the child ranks over from Lightning's
    watchdog, which SIGKILLs the launching process (under `-m`: the whole sweep) when one of them
    exits non-zero; the job then reaps them itself.

    `report()` must be called on every rank while the process group is up (after `predict`).
    """

    def __init__(self, children: list[subprocess.Popen] | None = None) -> None:
        self.children = children
        self.process_group_size: int | None = None
        self.trainer_world_size: int | None = None
        self.backend: str | None = None
        self.train_members = 0
        self.train_external = 0
        self.batches = 0
        self.unbalanced_batches = 0
        self.member_keys: set[tuple[int, int]] = set()
        self.scored = 0
        self.first_batches: list[str] = []
        self._first_epoch_done = False

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        procs = getattr(trainer.strategy.launcher, "procs", None)
        if self.children is not None and procs:
            self.children.extend(procs)
            procs.clear()  # the watchdog watches this very list: it now has nothing to watch

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self.process_group_size is None:
            self.process_group_size = process_group_size()
            self.trainer_world_size = int(trainer.world_size)
            self.backend = dist.get_backend() if is_distributed() else None

    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: dict[str, torch.Tensor], batch_idx: int
    ) -> None:
        if batch_idx == 0:
            keys = batch["index"].cpu().numpy().astype("<i8").tobytes()
            self.first_batches.append(hashlib.sha256(keys).hexdigest()[:16])
        if self._first_epoch_done:
            return
        role = batch["role"].cpu()
        member = role != ROLE_CODES["external"]
        n_members, n_external = int(member.sum()), int((~member).sum())
        self.train_members += n_members
        self.train_external += n_external
        self.batches += 1
        # Unbalanced: not the configured share of external samples (mint.external_per_member).
        share = float(getattr(trainer.datamodule, "external_per_member", 1.0))
        self.unbalanced_batches += int(n_external != external_count(n_members, share))
        pool, index = batch["pool"].cpu()[member], batch["index"].cpu()[member]
        self.member_keys.update(zip(pool.tolist(), index.tolist(), strict=True))

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._first_epoch_done = True

    def on_predict_batch_end(
        self,
        trainer: Any,
        pl_module: Any,
        outputs: Any,
        batch: dict[str, torch.Tensor],
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.scored += len(batch["index"])

    def report(self) -> dict[str, Any]:
        """{process_group_size, trainer_world_size, backend, ranks: [per rank counts],
        members_covered: distinct members trained on in the first epoch over all ranks}."""
        mine = {
            "rank": dist.get_rank() if is_distributed() else 0,
            "train_members": self.train_members,
            "train_external": self.train_external,
            "batches": self.batches,
            "unbalanced_batches": self.unbalanced_batches,
            "scored": self.scored,
            "first_batches": self.first_batches,
        }
        ranks = gather_objects((mine, self.member_keys))
        return {
            "process_group_size": self.process_group_size or process_group_size(),
            "trainer_world_size": self.trainer_world_size,
            "backend": self.backend,
            "ranks": [counts for counts, _ in ranks],
            "members_covered": len(set().union(*(keys for _, keys in ranks))),
        }


class JobProcesses:
    """One job's DDP processes, set up before the job and cleared after it (see module docstring).

    Args:
        multirun: the job is one of a Hydra sweep (`-m`).
        strategy: `trainer.strategy` of the job.
    """

    def __init__(self, multirun: bool, strategy: str) -> None:
        self.multirun = multirun
        self.reruns_command = (
            multirun and str(strategy) in RERUN_STRATEGIES and not started_as_a_rank()
        )
        self.children: list[subprocess.Popen] = []
        self.shard_report = ShardReport(self.children if multirun else None)
        self._saved_env: dict[str, str | None] = {}
        self._saved_argv: list[str] = []
        self._saved_run_dir: str | None = None
        self._saved_threads = 0
        self._group_before = False

    def __enter__(self) -> JobProcesses:
        self._saved_env = {name: os.environ.get(name) for name in LAUNCH_ENV}
        self._saved_threads = torch.get_num_threads()
        self._group_before = is_distributed()
        self._saved_argv = list(sys.argv)
        if self.reruns_command:
            self._rerun_this_job_only()
        return self

    def _rerun_this_job_only(self) -> None:
        """Point the command Lightning re-runs for ranks > 0 at this job: its overrides without
        `-m`, and its run directory (Lightning adds `hydra.run.dir=<HydraConfig run.dir>`)."""
        import __main__

        spec = getattr(__main__, "__spec__", None)
        if spec is not None and spec.name != ENTRY_MODULE:
            raise ConfigError(
                f"trainer.strategy=ddp starts its ranks by re-running the command, which this "
                f"launcher's worker ({spec.name}) cannot: run DDP sweeps with the default launcher "
                f"or hydra/launcher=submitit_slurm"
            )
        hydra_cfg = HydraConfig.get()
        sys.argv = [sys.argv[0], *hydra_cfg.overrides.task]
        self._saved_run_dir = hydra_cfg.run.dir
        with read_write(hydra_cfg.run):
            hydra_cfg.run.dir = hydra_cfg.runtime.output_dir

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if is_distributed() and not self._group_before:
            dist.destroy_process_group()  # a child still waiting on us gets an error, not a hang
        interrupted = exc_type is not None and not issubclass(exc_type, Exception)
        for child in self.children:
            try:
                child.wait(timeout=0 if interrupted else CHILD_EXIT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self.children.clear()
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        torch.set_num_threads(self._saved_threads)
        sys.argv = self._saved_argv
        if self._saved_run_dir is not None:
            run = HydraConfig.get().run
            with read_write(run):
                run.dir = self._saved_run_dir
