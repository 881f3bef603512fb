"""DDP with real processes on the CPU (gloo): the balanced sampler's shards, 2 processes scoring like
1, and DDP inside a Hydra multirun (each job trains in its own 2-process group)."""

import csv

import numpy as np
import pytest

from amint_pl.data.datamodule import BalancedBatchSampler
from tests.conftest import TINY, read_results, run_dirs

# debug=fast: 120 members (seen + unseen) and 120 external samples.
MEMBERS = 120
# 2 processes with batch_size/2 each step on the same global batches as 1 process with
# batch_size. A BatchNorm model would normalise over each process's half (SyncBatchNorm needs a
# GPU), so the comparison uses a LayerNorm model (a 2-block ViT) and fixed loss weights (`initial`
# takes rank 0's first batch). What remains: each rank averages its own MINT BCE, whose count
# varies with the unseen members it drew, and float summation order. Measured here: AUCs within
# 0.007 for the classic attacks and 0.03 for the MINT head (the strict protocol has ~20 members).
TOLERANCE = 0.05
NO_BATCHNORM = (
    "model=vit_tiny",
    "+model.kwargs.embed_dim=32",
    "+model.kwargs.depth=2",
    "+model.kwargs.num_heads=2",
    "mint.taps=[1]",
    "mint.weighting=fixed",
)


@pytest.mark.parametrize(("n_members", "world_size"), [(120, 2), (121, 2), (50, 3)])
def test_balanced_sampler_shards_every_member_once_and_every_batch_balanced(n_members, world_size):
    members, external = np.arange(n_members), np.arange(1000, 1000 + 37)
    shards = [
        list(BalancedBatchSampler(members, external, 16, seed=3, rank=r, world_size=world_size))
        for r in range(world_size)
    ]
    assert (
        len({len(batches) for batches in shards}) == 1
    )  # every rank steps the same number of times
    seen = []
    for batches in shards:
        for batch in batches:
            is_member = np.asarray(batch) < 1000
            assert is_member.sum() == (~is_member).sum()  # balanced on every rank
            seen += [i for i in batch if i < 1000]
    assert set(seen) == set(range(n_members))  # every member in the epoch
    # ... once, but for the padding that gives every rank the same count (fewer than world_size).
    assert len(seen) - n_members == -n_members % world_size


def _scored_keys(run_dir):
    with open(run_dir / "scores.csv") as f:
        return sorted((r["pool"], int(r["index"]), r["role"]) for r in csv.DictReader(f))


def _assert_two_real_ranks(distributed, members=MEMBERS):
    assert distributed["process_group_size"] == 2 == distributed["trainer_world_size"]
    assert distributed["backend"] == "gloo"
    ranks = distributed["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1]
    for r in ranks:
        assert r["train_members"] == r["train_external"] == members // 2
        assert r["unbalanced_batches"] == 0
        assert r["scored"] > 0
    assert distributed["members_covered"] == members


@pytest.mark.slow
def test_two_processes_score_like_one(run_amint):
    # |E| = 2.5 |D|: all of E serves as MINT negatives only over 3 epochs of new batches.
    longer = ("dataset.splits.external=300", "trainer.max_epochs=3")
    _, one = run_amint(*TINY, *NO_BATCHNORM, *longer, "trainer=cpu", "batch_size=32")
    _, two = run_amint(*TINY, *NO_BATCHNORM, *longer, "trainer=ddp_cpu", "batch_size=16")
    single, ddp = read_results(one), read_results(two)
    assert single["distributed"]["process_group_size"] == 1
    _assert_two_real_ranks(ddp["distributed"])
    for results in (single, ddp):
        assert results["training"]["members_used"] == MEMBERS
        assert results["training"]["external_used"] == 300
        assert results["training"]["epochs"] == {"joint": 3}
        # Each rank began every epoch with another batch.
        for rank in results["distributed"]["ranks"]:
            assert len(set(rank["first_batches"])) == len(rank["first_batches"]) == 3
    # Every sample scored once: the ranks' shards, gathered and de-duplicated, are the whole set.
    assert _scored_keys(one) == _scored_keys(two)
    assert sum(r["scored"] for r in ddp["distributed"]["ranks"]) == len(_scored_keys(two))
    assert single["split_fingerprint"] == ddp["split_fingerprint"]
    assert abs(single["audited"]["test_acc"] - ddp["audited"]["test_acc"]) <= TOLERANCE
    for protocol, methods in single["membership"].items():
        for method, m in methods.items():
            d = ddp["membership"][protocol][method]
            assert (m["n_members"], m["n_nonmembers"]) == (d["n_members"], d["n_nonmembers"])
            assert abs(m["auc"] - d["auc"]) <= TOLERANCE, (protocol, method, m["auc"], d["auc"])


@pytest.mark.slow
def test_ddp_inside_a_multirun_gives_every_job_its_own_two_processes(tmp_path, run_amint):
    # Lightning alone: the second job would train in a 1-process group while reporting 2.
    proc, _ = run_amint(*TINY, "trainer=ddp_cpu", "mint=active,passive", "-m")
    jobs = [d for d in run_dirs(tmp_path / "runs") if (d / "results.json").is_file()]
    assert sorted(d.name for d in jobs) == ["0", "1"] and jobs[0].parent == jobs[1].parent
    for job, mode in zip(sorted(jobs), ("active", "passive"), strict=True):
        results = read_results(job)
        assert results["status"] == "completed" and results["mint_mode"] == mode
        _assert_two_real_ranks(results["distributed"])
        # The child rank ran this job only, in this job's directory (not the sweep again).
        assert (job / "train_ddp_process_1.log").is_file()
    assert len(list(jobs[0].parent.glob("*/results.json"))) == 2
