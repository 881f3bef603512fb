"""One real training step of each mint mode changes the right parameters."""

import copy
import math

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from amint_pl.data.benchmarks import benchmark_from_config
from amint_pl.data.datamodule import BalancedBatchSampler, MembershipDataModule
from amint_pl.data.splits import ROLE_CODES, SplitSizes, build_splits
from amint_pl.training.module import AMINTModule
from tests.helpers import config_dict


def _digits(sizes: SplitSizes):
    """Digits' pools and splits of the given sizes."""
    benchmark = benchmark_from_config(config_dict()["dataset"])
    return benchmark, build_splits(len(benchmark.train), len(benchmark.test), sizes, seed=0)


@pytest.fixture(scope="module")
def digits():
    return _digits(SplitSizes(200, 0.2, 200, 100))


def _module_and_batch(digits, *overrides):
    benchmark, splits = digits
    cfg = config_dict(*overrides)
    module = AMINTModule(
        cfg, benchmark.num_classes, benchmark.channels, benchmark.mean, benchmark.std
    )
    dm = MembershipDataModule(benchmark, splits, batch_size=64, eval_batch_size=64, seed=0)
    batch = next(iter(dm.train_dataloader()))
    return module, batch


def _step(module, batch):
    """A real optimisation step as Lightning runs it: transfer hook, training_step, backward, step."""
    optimizer = module.configure_optimizers()
    module.train()
    module.on_train_epoch_start()
    batch = module.on_after_batch_transfer(dict(batch), 0)
    optimizer.zero_grad()
    loss = module.training_step(batch, 0)
    loss.backward()
    grads = {
        n: (p.grad is not None and bool(p.grad.abs().sum() > 0))
        for n, p in module.named_parameters()
    }
    optimizer.step()
    return loss, grads


def _changed(before, after):
    return {
        n
        for n, p in after.named_parameters()
        if not torch.equal(p, dict(before.named_parameters())[n])
    }


def test_active_step_sends_mint_gradient_into_the_backbone(digits):
    # With the audited loss switched off, any backbone gradient can only come from the MINT loss.
    module, batch = _module_and_batch(digits, "mint=active", "mint.w_aud=0", "mint.weighting=fixed")
    loss, grads = _step(module, batch)
    assert torch.isfinite(loss)
    tapped = [n for n in grads if n.startswith("backbone.network.stages.0.") and "weight" in n]
    assert tapped and all(grads[n] for n in tapped)
    assert all(grads[n] for n in grads if n.startswith("mint_head."))


@pytest.mark.parametrize("clean_views", [False, True])
def test_clean_views_feed_the_mint_head_the_images_as_an_audit_shows_them(digits, clean_views):
    """Under augmentation, mint.clean_views=true forwards the augmented members (cross-entropy)
    and the whole batch un-augmented (the MINT head's) in one pass; false, the augmented batch."""
    module, batch = _module_and_batch(
        digits, "dataset.augment=flip_crop", f"mint.clean_views={str(clean_views).lower()}"
    )
    seen = {}
    module.backbone.register_forward_hook(lambda m, args, out: seen.update(backbone=args[0]))
    module.mint_head.register_forward_hook(lambda m, args, out: seen.update(head=args[0][0]))
    loss, grads = _step(module, batch)
    assert torch.isfinite(loss) and all(grads[n] for n in grads if n.startswith("mint_head."))
    clean = module.preprocess(batch["images"], train=False)
    members = torch.nonzero(batch["role"] != ROLE_CODES["external"]).flatten()
    forwarded = seen["backbone"]
    if clean_views:
        assert len(forwarded) == len(members) + len(clean)
        assert torch.equal(forwarded[len(members) :], clean)  # the head's rows: clean
        # the cross-entropy's: augmented views of the members (most moved by a flip or a shift)
        moved = (forwarded[: len(members)] != clean[members]).flatten(1).any(1)
        assert moved.float().mean() > 0.5
        assert len(seen["head"]) == len(clean)
    else:
        assert len(forwarded) == len(clean) and not torch.equal(forwarded, clean)


def test_passive_head_phase_keeps_the_backbone_frozen(digits):
    module, batch = _module_and_batch(digits, "mint=passive")
    module.set_phase("mint_head")
    before = copy.deepcopy(module)
    _step(module, batch)
    changed = _changed(before, module)
    assert changed and all(n.startswith("mint_head.") for n in changed)
    # BatchNorm statistics of the frozen backbone do not move either.
    for (name, buf), (_, old) in zip(
        module.backbone.named_buffers(), before.backbone.named_buffers(), strict=True
    ):
        assert torch.equal(buf, old), name


def test_audited_phase_trains_only_the_backbone(digits):
    for mode in ("passive", "off"):
        module, batch = _module_and_batch(digits, f"mint={mode}")
        before = copy.deepcopy(module)
        _step(module, batch)
        changed = _changed(before, module)
        assert changed and all(n.startswith("backbone.") for n in changed), mode
    assert module.mint_head is None  # mint=off has no head


def test_initial_weighting_is_kept_in_the_checkpoint(digits):
    module, batch = _module_and_batch(digits, "mint=active", "mint.weighting=initial")
    first, _ = _step(module, batch)
    # Each term divided by its own first value: the first loss is w_aud + w_mint = 2.
    assert first.item() == pytest.approx(2.0, rel=1e-5)
    scales = module.state_dict()["loss_weighting.initial_losses"]
    assert (scales > 0).all()
    _step(module, batch)
    assert torch.equal(module.state_dict()["loss_weighting.initial_losses"], scales)


def test_balanced_batches_visit_every_member_once_per_epoch():
    members, external = np.arange(0, 103), np.arange(103, 180)
    sampler = BalancedBatchSampler(members, external, batch_size=20, seed=0)
    seen = []
    for batch in sampler:
        half = len(batch) // 2
        assert np.isin(batch[:half], members).all() and np.isin(batch[half:], external).all()
        seen += batch[:half]
    assert sorted(seen) == members.tolist()
    # Two ranks: disjoint member shards covering all members, equal batch counts.
    shards = [list(BalancedBatchSampler(members, external, 20, 0, rank, 2)) for rank in (0, 1)]
    assert len(shards[0]) == len(shards[1])
    covered = {m for shard in shards for b in shard for m in b[: len(b) // 2]}
    assert covered == set(members.tolist())


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


@pytest.mark.parametrize("world_size", [1, 2])
def test_fewer_external_samples_per_member_serve_all_of_e_over_more_epochs(world_size):
    # 100 members, 8 a batch, a quarter as many external samples: 2 per full batch, at least 1
    # in a rank's last (4 members at world 1, 2 at world 2).
    members, external = np.arange(100), np.arange(1000, 1060)
    samplers = [
        BalancedBatchSampler(members, external, 16, 7, r, world_size, external_per_member=0.25)
        for r in range(world_size)
    ]
    per_epoch, served = [], []
    for epoch in range(3):
        used = []
        for sampler in samplers:
            sampler.set_epoch(epoch)
            batches = list(sampler)
            for batch in batches:
                n_members = sum(i < 1000 for i in batch)
                assert len(batch) - n_members == max(1, round(n_members * 0.25))
            assert {i for b in batches for i in b if i < 1000} <= set(members.tolist())
            used += [i for b in batches for i in b if i >= 1000]
        per_epoch.append(used)
        served += used
    seen = {i for sampler in samplers for b in sampler.batches(0, sampler.sampler.rank) for i in b}
    assert set(members.tolist()) <= seen  # every member in an epoch
    assert len(per_epoch[0]) == sum(samplers[0].external_counts()) * world_size
    # Every external sample once before any twice (25-26 an epoch: the first two epochs draw
    # none twice), and all of E within ceil(60 / 25) = 3 epochs.
    first_two = per_epoch[0] + per_epoch[1]
    assert len(first_two) == len(set(first_two)) >= 50
    assert set(served) == set(external.tolist())


def test_training_batches_hold_members_and_external_only(digits):
    benchmark, splits = digits
    dm = MembershipDataModule(benchmark, splits, batch_size=64, eval_batch_size=64, seed=0)
    batch = next(iter(dm.train_dataloader()))
    roles = batch["role"].tolist()
    assert roles.count(ROLE_CODES["external"]) == 32
    assert set(roles) <= {ROLE_CODES[r] for r in ("members_seen", "members_unseen", "external")}
    assert batch["images"].dtype == torch.uint8


class RecordBatches(L.Callback):
    """The (index, role) pairs of every training batch, per epoch, as the Trainer feeds them."""

    def __init__(self) -> None:
        self.epochs: list[list[list[tuple[int, int]]]] = []
        self.rates: list[float] = []  # the learning rate each epoch trains at
        self.group_rates: list[list[float]] = []  # the same, of every parameter group

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epochs.append([])
        self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])
        self.group_rates.append([g["lr"] for g in trainer.optimizers[0].param_groups])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        pairs = zip(batch["index"].tolist(), batch["role"].tolist(), strict=True)
        self.epochs[-1].append(list(pairs))


COSINE = "optim.schedule=cosine"


def _fit(digits, max_epochs, tmp_path, ckpt_path=None, *overrides, record=None):
    """A real Trainer fit of a tiny aMINT model: (recorded batches, datamodule, trainer, the
    learning rate of each epoch)."""
    benchmark, splits = digits
    cfg = config_dict("mint.weighting=fixed", *overrides)
    module = AMINTModule(
        cfg, benchmark.num_classes, benchmark.channels, benchmark.mean, benchmark.std
    )
    dm = MembershipDataModule(benchmark, splits, batch_size=20, eval_batch_size=256, seed=5)
    record = RecordBatches() if record is None else record
    trainer = L.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        logger=False,
        callbacks=[record, ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    return record.epochs, dm, trainer, record.rates


@pytest.fixture(scope="module")
def few_members():
    """|E| = 2.5 |D|: all of E serves as MINT negatives only over 3 epochs."""
    return _digits(SplitSizes(60, 0.2, 150, 100))


@pytest.fixture(scope="module")
def four_epochs(few_members, tmp_path_factory):
    """A 4-epoch fit on few_members, the rate on the cosine schedule: (recorded batches,
    datamodule, trainer, rates)."""
    return _fit(few_members, 4, tmp_path_factory.mktemp("four_epochs"), None, COSINE)


def test_every_epoch_draws_new_batches_and_all_of_e_serves(few_members, four_epochs):
    _, splits = few_members
    epochs, dm, _, _ = four_epochs
    assert len(epochs) == 4
    members, external = set(splits.members.tolist()), set(splits["external"].tolist())
    ext = ROLE_CODES["external"]
    for batches in epochs:
        seen = [i for batch in batches for i, role in batch if role != ext]
        assert sorted(seen) == sorted(members)  # every member once per epoch
    orders = [[i for batch in batches for i, _ in batch] for batches in epochs]
    assert len({tuple(order) for order in orders}) == 4  # a new order every epoch
    # Every external sample serves once before any serves twice: all of E in ceil(150/60) = 3.
    used = [i for batches in epochs[:3] for batch in batches for i, role in batch if role == ext]
    assert set(used) == external
    first_two = [i for batches in epochs[:2] for batch in batches for i, r in batch if r == ext]
    assert len(first_two) == len(set(first_two)) == 120
    assert dm.samples_used(["joint"], ["joint"]) == {
        "members_used": 60,
        "external_used": 150,
        "members": 60,
        "external": 150,
        "epochs": {"joint": 4},
    }


def test_a_resumed_run_continues_the_same_sequence_of_batches(few_members, four_epochs, tmp_path):
    whole, dm_whole, _, _ = four_epochs
    first, _, _, _ = _fit(few_members, 2, tmp_path / "stopped")
    rest, dm_rest, _, _ = _fit(
        few_members, 4, tmp_path / "stopped", tmp_path / "stopped" / "last.ckpt"
    )
    assert first + rest == whole
    # The earlier attempt's epochs come back with the checkpoint: counted as if never stopped.
    assert dm_rest.history == dm_whole.history == {"joint": {e: 6 for e in range(4)}}


class StopAfter(RecordBatches):
    """Records batches and rates, and stops the fit after `epochs` epochs (an interruption)."""

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.stop_after = epochs

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch + 1 >= self.stop_after:
            trainer.should_stop = True


def test_the_cosine_schedule_falls_each_epoch_and_a_resume_continues_it(
    few_members, four_epochs, tmp_path
):
    lr, epochs = 1e-3, 4
    expected = [lr * (1 + math.cos(math.pi * e / epochs)) / 2 for e in range(epochs)]
    assert four_epochs[3] == pytest.approx(expected)
    # Interrupted after 2 of 4 epochs, then resumed from its last checkpoint.
    stopped = StopAfter(2)
    _fit(few_members, epochs, tmp_path / "stopped", None, COSINE, record=stopped)
    assert len(stopped.rates) == 2
    last = tmp_path / "stopped" / "last.ckpt"
    resumed = RecordBatches()
    _fit(few_members, epochs, tmp_path / "stopped", last, COSINE, record=resumed)
    assert stopped.rates + resumed.rates == pytest.approx(expected)


def test_the_heads_own_rate_follows_the_cosine_schedule_through_a_resume(few_members, tmp_path):
    """mint.head.lr: the head's group falls on the schedule beside the network's, epoch by epoch,
    and a run resumed from its last checkpoint continues both."""
    epochs, rates = 4, {"network": 1e-3, "head": 1e-5}
    expected = [
        [r * (1 + math.cos(math.pi * e / epochs)) / 2 for r in rates.values()]
        for e in range(epochs)
    ]
    head_lr = f"mint.head.lr={rates['head']}"
    whole = RecordBatches()
    _fit(few_members, epochs, tmp_path / "whole", None, COSINE, head_lr, record=whole)
    assert whole.group_rates == [pytest.approx(r) for r in expected]
    stopped = StopAfter(2)
    _fit(few_members, epochs, tmp_path / "stopped", None, COSINE, head_lr, record=stopped)
    resumed = RecordBatches()
    last = tmp_path / "stopped" / "last.ckpt"
    _fit(few_members, epochs, tmp_path / "stopped", last, COSINE, head_lr, record=resumed)
    assert stopped.group_rates + resumed.group_rates == [pytest.approx(r) for r in expected]


DETACHED_HEAD = (
    "mint=active",
    "mint.head.output_features=[loss,probs]",
    "mint.head.tap_features=false",
    "mint.head.detach_outputs=true",
)


class CountTrainingRows(RecordBatches):
    """RecordBatches, and the rows the audited network and the membership memory forward in
    the training steps, and their forwards."""

    def __init__(self) -> None:
        super().__init__()
        self.rows = {"backbone": 0, "memory": 0}
        self.calls = {"backbone": 0, "memory": 0}

    def on_train_start(self, trainer, pl_module) -> None:
        for name in self.rows:
            if getattr(pl_module, name) is not None:
                getattr(pl_module, name).register_forward_hook(self._counter(name))

    def _counter(self, name):
        def count(module, args, output) -> None:
            if module.training:
                self.rows[name] += len(args[0])
                self.calls[name] += 1

        return count


@pytest.mark.parametrize(
    ("preset", "network_reads_external"),
    [
        (DETACHED_HEAD, True),
        (
            (
                "mint=active_fingerprint",
                "dataset.image_size=16",
                "mint.head.output_features=[loss,probs,memory]",
            ),
            True,
        ),
        (("mint=active_fingerprint", "dataset.image_size=16"), False),
    ],
    ids=["detached_head", "fingerprint_and_outputs", "fingerprint"],
)
def test_a_head_that_reads_detached_outputs_leaves_the_audited_network_as_mint_off_trains_it(
    few_members, tmp_path, preset, network_reads_external
):
    """Where the MINT loss reaches no layer of the audited model, the external samples forward
    apart (no graph), normalised by the members' BatchNorm statistics: over three epochs the
    audited network learns exactly what it learns without aMINT, running statistics included
    (one forward over the whole batch would normalise the members by the external rows too).
    A head that reads the membership memory alone has the memory alone read them, with the
    members, in one read a step."""
    size = [o for o in preset if o.startswith("dataset.image_size")]
    torch.manual_seed(0)
    off = _fit(few_members, 3, tmp_path / "off", None, "mint=off", *size)[2].lightning_module
    torch.manual_seed(0)
    counted = CountTrainingRows()
    active = _fit(few_members, 3, tmp_path / "active", None, *preset, record=counted)
    active = active[2].lightning_module
    assert active.head_reads_detached()
    rows = [role for epoch in counted.epochs for batch in epoch for _, role in batch]
    members = sum(role != ROLE_CODES["external"] for role in rows)
    assert 0 < members < len(rows)
    assert counted.rows["backbone"] == (len(rows) if network_reads_external else members)
    if active.memory is not None:
        # A head on the memory alone has it read each step's whole batch at once.
        steps = sum(len(epoch) for epoch in counted.epochs)
        assert counted.rows["memory"] == len(rows)
        assert counted.calls["memory"] == (2 * steps if network_reads_external else steps)
    trained = dict(off.backbone.state_dict())
    torch.manual_seed(0)
    start = _network_at_start(few_members, *size)  # what both began from: training moved it
    assert any(not torch.equal(value, trained[name]) for name, value in start.items())
    for name, value in active.backbone.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, trained[name], rtol=1e-5, atol=1e-6), name
        else:
            assert torch.equal(value, trained[name]), name  # BatchNorm's batch counts


def _network_at_start(digits, *overrides):
    benchmark, _ = digits
    module = AMINTModule(
        config_dict("mint=off", *overrides),
        benchmark.num_classes,
        benchmark.channels,
        benchmark.mean,
        benchmark.std,
    )
    return dict(module.backbone.state_dict())


@pytest.mark.parametrize("phase", ["joint", "mint_head"])
def test_the_mint_head_trains_at_its_own_rate_where_mint_head_lr_says(digits, phase):
    """Adam's first step moves every parameter with a gradient by about its rate: optim.lr for the
    audited model, mint.head.lr for the head."""
    mode = "active" if phase == "joint" else "passive"
    module, batch = _module_and_batch(digits, f"mint={mode}", "optim.lr=1e-3", "mint.head.lr=1e-5")
    module.set_phase(phase)
    before = copy.deepcopy(module)
    _step(module, batch)
    moved = {
        n: float((p - dict(before.named_parameters())[n]).detach().abs().max())
        for n, p in module.named_parameters()
    }
    head = [v for n, v in moved.items() if n.startswith("mint_head.")]
    audited = [v for n, v in moved.items() if n.startswith("backbone.")]
    assert 0.5e-5 < max(head) < 2e-5
    if phase == "joint":
        assert 0.5e-3 < max(audited) < 2e-3
    else:
        assert max(audited) == 0.0
