"""DDP with real processes on the CPU (gloo): 2 processes score like 1, DDP inside a Hydra multirun
gives each job its own 2-process group, and the membership memory's table (and the fingerprint
record's bank) is written alike in every process (tests/unit/test_training.py: the balanced sampler's shards)."""

import csv

import pytest

from tests.helpers import TINY, read_results, run_dirs

pytestmark = pytest.mark.slow

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


def test_two_processes_score_like_one_and_each_job_of_a_multirun_gets_its_own_two(
    tmp_path, run_amint
):
    # |E| = 2.5 |D|: all of E serves as MINT negatives only over 3 epochs of new batches.
    longer = ("dataset.splits.external=300", "trainer.max_epochs=3")
    _, one = run_amint(*TINY, *NO_BATCHNORM, *longer, "trainer=cpu", "batch_size=32")
    # DDP inside a multirun: Lightning alone would train the second job in a 1-process group while
    # reporting 2. The first job is the single-process run's twin.
    ddp_run = (*TINY, *NO_BATCHNORM, *longer, "trainer=ddp_cpu", "batch_size=16")
    run_amint(*ddp_run, "mint=active,passive", "-m", process=True)  # Lightning starts rank 1 anew
    jobs = sorted(
        d for d in run_dirs(tmp_path / "runs") if d != one and (d / "results.json").is_file()
    )
    assert [d.name for d in jobs] == ["0", "1"] and jobs[0].parent == jobs[1].parent
    for job, mode in zip(jobs, ("active", "passive"), strict=True):
        results = read_results(job)
        assert results["status"] == "completed" and results["mint_mode"] == mode
        _assert_two_real_ranks(results["distributed"])
        # The child rank ran this job only, in this job's directory (not the sweep again).
        assert (job / "train_ddp_process_1.log").is_file()

    two = jobs[0]
    single, ddp = read_results(one), read_results(two)
    assert single["distributed"]["process_group_size"] == 1
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


def _write_memory_in_rank(rank, world, init_file, batches, out):
    """One DDP process: its own batch through a membership memory, backward, `write`."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from amint_pl.models.memory import MembershipMemory

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        memory = MembershipMemory((1, 28, 28), num_classes=10, bands=4, bits=12, buckets=64)
        images, labels = batches[rank]
        F.cross_entropy(memory(images), labels, reduction="sum").backward()
        memory.write()
        torch.save(memory.table.weight.detach(), out / f"table-{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_the_memory_writes_every_processs_rows_into_every_processs_table(tmp_path):
    """Under DDP each process writes the rows of every process's batch: both tables end equal to
    the table one process writes from both batches, rows both touched included."""
    import torch
    import torch.multiprocessing as mp
    import torch.nn.functional as F

    from amint_pl.models.memory import MembershipMemory

    generator = torch.Generator().manual_seed(0)
    images = torch.rand(12, 1, 28, 28, generator=generator)
    labels = torch.randint(0, 10, (12,), generator=generator)
    # Rank 1's batch repeats two of rank 0's images (their rows are touched by both processes).
    batches = [
        (images[:6], labels[:6]),
        (torch.cat([images[6:10], images[:2]]), labels[[6, 7, 8, 9, 0, 1]]),
    ]
    mp.spawn(
        _write_memory_in_rank,
        args=(2, tmp_path / "init", batches, tmp_path),
        nprocs=2,
        join=True,
    )
    tables = [torch.load(tmp_path / f"table-{rank}.pt") for rank in range(2)]
    assert torch.equal(tables[0], tables[1])

    one = MembershipMemory((1, 28, 28), num_classes=10, bands=4, bits=12, buckets=64)
    both = torch.cat([batches[0][0], batches[1][0]]), torch.cat([batches[0][1], batches[1][1]])
    F.cross_entropy(one(both[0]), both[1], reduction="sum").backward()
    one.write()
    assert torch.allclose(tables[0], one.table.weight.detach(), atol=1e-6)
    shared = set(one.codes(images[:2]).flatten().tolist())
    assert shared and all(tables[0][row].abs().sum() > 0 for row in shared)
    # The rows of rank 1's own images reached rank 0's table (and the other way round).
    for rank, (batch, _) in enumerate(batches):
        for row in one.codes(batch).flatten().tolist():
            assert tables[1 - rank][row].abs().sum() > 0


def _write_fingerprints_in_rank(rank, world, init_file, steps, out):
    """One DDP process: per step its own batch through a fingerprint memory, the cross-entropy
    of its first rows, backward, `write`; the bank saved after each step."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from amint_pl.models.memory import memory_from_config

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        memory = memory_from_config({"record": "fingerprint"}, (1, 16, 16), 10, members=16)
        memory.train()
        for step, batches in enumerate(steps):
            images, labels, trained = batches[rank]
            logits = memory.logit_share(memory(images))
            F.cross_entropy(logits[:trained], labels[:trained], reduction="sum").backward()
            memory.write()
            torch.save(memory.state_dict(), out / f"bank-{rank}-{step}.pt")
    finally:
        dist.destroy_process_group()


def test_the_fingerprints_of_every_processs_trained_samples_reach_every_processs_bank(tmp_path):
    """Under DDP each process adds the samples every process's cross-entropy trained (and only
    those), each once: both banks end equal to the bank one process writes from both batches.
    In a second step each process meets samples it wrote itself and samples the other one
    wrote: nothing is added twice, and the new ones reach both banks."""
    import torch
    import torch.multiprocessing as mp
    import torch.nn.functional as F

    from amint_pl.models.memory import memory_from_config

    generator = torch.Generator().manual_seed(0)
    coarse = torch.randn(12, 1, 4, 4, generator=generator)
    images = F.interpolate(coarse, size=(16, 16), mode="bilinear", align_corners=False)
    labels = torch.randint(0, 10, (12,), generator=generator)
    # Rank 0 trains on its first 5 rows (the sixth is read, not trained); rank 1 on its first 5,
    # two of them rank 0's (added once).
    batches = [
        (images[:6], labels[:6], 5),
        (torch.cat([images[[0, 1]], images[6:10]]), labels[[0, 1, 6, 7, 8, 9]], 5),
    ]
    # Then rank 0: one of its own, two of rank 1's, one new; rank 1: two of rank 0's, one new.
    again = [
        (images[[2, 7, 8, 10]], labels[[2, 7, 8, 10]], 4),
        (images[[3, 4, 11]], labels[[3, 4, 11]], 3),
    ]
    mp.spawn(
        _write_fingerprints_in_rank,
        args=(2, tmp_path / "init", [batches, again], tmp_path),
        nprocs=2,
        join=True,
    )
    banks = [torch.load(tmp_path / f"bank-{rank}-0.pt") for rank in range(2)]
    assert all(torch.equal(banks[0][key], banks[1][key]) for key in banks[0])
    assert int(banks[0]["count"]) == 8  # rank 0's 5, rank 1's 3 new ones
    assert torch.equal(banks[0]["labels"][:8], labels[[0, 1, 2, 3, 4, 6, 7, 8]])
    later = [torch.load(tmp_path / f"bank-{rank}-1.pt") for rank in range(2)]
    assert all(torch.equal(later[0][key], later[1][key]) for key in later[0])
    assert int(later[0]["count"]) == 10
    assert torch.equal(later[0]["labels"][:10], labels[[0, 1, 2, 3, 4, 6, 7, 8, 10, 11]])
    assert torch.equal(later[0]["prints"][:, :8], banks[0]["prints"][:, :8])

    one = memory_from_config({"record": "fingerprint"}, (1, 16, 16), 10, members=16)
    one.train()
    both = torch.cat([images[:5], images[[0, 1, 6, 7, 8]]])
    F.cross_entropy(
        one.logit_share(one(both)),
        torch.cat([labels[:5], labels[[0, 1, 6, 7, 8]]]),
        reduction="sum",
    ).backward()
    one.write()
    assert all(torch.equal(banks[0][key], value) for key, value in one.state_dict().items())
