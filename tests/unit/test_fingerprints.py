"""The fingerprint record (`mint.memory.record: fingerprint`, models/fingerprints.py): what writes
it, what it finds, what it leaves alone."""

import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from amint_pl.data.splits import ROLE_CODES
from amint_pl.errors import ConfigError
from amint_pl.evaluation.metrics import auc
from amint_pl.models.fingerprints import (
    FLOOR,
    SAME,
    SHARPNESS,
    FingerprintMemory,
    _mirror_fold,
    sharpened,
)
from amint_pl.models.memory import MembershipMemory, memory_from_config, memory_margin
from tests.helpers import REPO

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
SETTINGS = {"record": "fingerprint", "query_shifts": 2, "query_zooms": [0.9]}


def _images(n: int, seed: int) -> torch.Tensor:
    """Images with structure at several scales (not pixel noise), 28x28."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, 1, 7, 7, generator=generator)
    return F.interpolate(coarse, size=(28, 28), mode="bilinear", align_corners=False)


def _known(memory: FingerprintMemory, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) whether each image is in the bank with its label (similarity 1)."""
    n = int(memory.count)
    prints = memory.member_prints(images)[0]
    sims = prints @ memory.prints[0, :n].double().T
    return ((sims >= SAME) & (labels[:, None] == memory.labels[None, :n])).any(1)


def _train_step(memory, logits_of, batches, trained) -> None:
    """One training step: a forward of each batch through `logits_of` (network logits plus the
    memory's share), the cross-entropy of the rows `trained` picks, backward, `write`."""
    losses = []
    for (images, labels), rows in zip(batches, trained, strict=True):
        logits = logits_of(images) + memory.logit_share(memory(images))
        if rows is not None:
            losses.append(F.cross_entropy(logits[rows], labels[rows]))
    sum(losses).backward()
    memory.write()


def test_it_writes_what_cross_entropy_trained_each_once_and_nothing_else():
    memory = memory_from_config(SETTINGS, (1, 28, 28), 10, members=40)
    assert isinstance(memory, FingerprintMemory) and memory.capacity == 40
    network = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    images, labels = _images(80, 0), torch.randint(0, 10, (80,))
    members, external = slice(0, 40), slice(40, 80)
    # A batch of members and external samples (the CE reaches the members' rows only), and a
    # second forward whose output reaches no loss (as a MINT-only read would).
    joint = torch.cat([images[:20], images[40:60]]), torch.cat([labels[:20], labels[40:60]])
    unread = images[60:80], labels[60:80]
    memory.train()
    _train_step(memory, network, [joint, unread], [slice(0, 20), None])
    assert int(memory.count) == 20
    assert torch.equal(memory.labels[:20], labels[:20])  # the label: the gradient's negative entry
    assert bool(_known(memory, images[:20], labels[:20]).all())
    assert not bool(_known(memory, images[external], labels[external]).any())
    # Two forwards in one step, a member twice in a batch, members already written: each once.
    again = torch.cat([images[:30], images[25:30]]), torch.cat([labels[:30], labels[25:30]])
    rest = images[30:40], labels[30:40]
    _train_step(memory, network, [again, rest], [slice(None), slice(None)])
    assert int(memory.count) == 40 and memory.occupancy() == 1.0
    assert bool(_known(memory, images[members], labels[members]).all())
    # The same image under another label is another sample.
    assert not bool(_known(memory, images[:5], (labels[:5] + 1) % 10).any())
    # Over further epochs nothing is added; a full bank refuses a new member.
    for _ in range(2):
        _train_step(memory, network, [(images[members], labels[members])], [slice(None)])
    assert int(memory.count) == 40
    with pytest.raises(RuntimeError, match="bank is full"):
        _train_step(memory, network, [(images[40:41], labels[40:41])], [slice(None)])
    # A frozen memory (the phase that trains the head alone) writes nothing.
    fresh = memory_from_config(SETTINGS, (1, 28, 28), 10, members=40)
    fresh.requires_grad_(False)
    network.requires_grad_(True)
    _train_step(fresh, network, [(images[:10], labels[:10])], [slice(None)])
    assert int(fresh.count) == 0


def test_it_adds_nothing_to_the_class_logits():
    memory = memory_from_config(SETTINGS, (1, 28, 28), 10, members=40)
    images, labels = _images(40, 1), torch.randint(0, 10, (40,))
    logits = torch.randn(40, 10)
    for _ in range(2):  # an empty bank, then one holding these images
        memory.train()
        evidence = memory(images)
        assert torch.equal(logits + memory.logit_share(evidence), logits)
        F.cross_entropy(logits + memory.logit_share(evidence), labels).backward()
        memory.write()
        memory.eval()
        with torch.no_grad():
            evidence = memory(images)
            assert torch.equal(logits + memory.logit_share(evidence), logits)
    assert float(memory_margin(evidence, labels).min()) > 0.1
    # The hashed record's logits are all its share.
    hashed = MembershipMemory((1, 28, 28), 10, bands=2, bits=8, buckets=64)
    assert hashed.logit_share(evidence) is evidence


def test_the_bank_survives_a_checkpoint_round_trip():
    memory = memory_from_config(SETTINGS, (1, 28, 28), 10, members=30)
    images, labels = _images(30, 2), torch.randint(0, 10, (30,))
    memory.train()
    F.cross_entropy(memory.logit_share(memory(images)), labels).backward()
    memory.write()
    state = memory.state_dict()
    assert set(state) == {"prints", "labels", "count"}
    loaded = memory_from_config(SETTINGS, (1, 28, 28), 10, members=30)
    loaded.load_state_dict(state)
    assert int(loaded.count) == 30 and torch.equal(loaded.prints, memory.prints)
    memory.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded(images), memory(images))
    with pytest.raises(RuntimeError):  # another capacity does not fit
        memory_from_config(SETTINGS, (1, 28, 28), 10, members=31).load_state_dict(state)


def test_a_bank_replaced_in_place_is_read_anew():
    """The members grouped by class are kept between reads; a checkpoint loaded into the same
    memory (the same count, the same buffers) must not be answered from the old ones."""
    images, labels = _images(40, 3), torch.randint(0, 10, (40,))
    first, second = (memory_from_config(SETTINGS, (1, 28, 28), 10, members=20) for _ in range(2))
    for memory, rows in ((first, slice(0, 20)), (second, slice(20, 40))):
        memory.train()
        F.cross_entropy(memory.logit_share(memory(images[rows])), labels[rows]).backward()
        memory.write()
        memory.eval()
    with torch.no_grad():
        before = first(images)
        first.load_state_dict(second.state_dict())
        after = first(images)
        assert torch.equal(after, second(images)) and not torch.equal(after, before)
    margins = memory_margin(after, labels)
    assert float(margins[20:].min()) > 0.1 > float(margins[:20].max())


def test_fingerprint_settings_are_checked_in_one_line():
    memory = memory_from_config({"record": "fingerprint", "bands": 0}, (1, 28, 28), 10, 7)
    assert isinstance(memory, FingerprintMemory) and memory.capacity == 7  # whatever bands says
    assert memory.prints.shape == (1, 7, 13 * 13)  # margin 1 beyond no shift: 26 px, pooled by 2
    # The hashed records ignore the fingerprint's settings.
    assert memory_from_config({"bands": 0, "pool": 4}, (1, 28, 28), 10) is None
    for bad, message in [
        ({"pool": 0}, "mint.memory.pool=0: use a whole number >= 1"),
        ({"margin": -1}, "mint.memory.margin=-1: use a whole number >= 0"),
        ({"capacity": 0}, "mint.memory.capacity=0: use a whole number >= 1, or auto"),
        ({"capacity": "many"}, "mint.memory.capacity=many"),
        ({"query_shifts": -1}, "mint.memory.query_shifts=-1"),
        ({"query_zooms": [1.5]}, "mint.memory.query_zooms=[1.5]"),
        ({"scale": 0}, "mint.memory.scale=0"),
        ({"pool": 12}, "leave 1 number(s) of the 28x28 image"),
    ]:
        with pytest.raises(ConfigError) as err:
            memory_from_config({**SETTINGS, **bad}, (1, 28, 28), 10, 10)
        assert message in str(err.value) and "\n" not in str(err.value), bad
    with pytest.raises(ConfigError, match="8x8 image"):
        memory_from_config(SETTINGS, (1, 8, 8), 10, 10)


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist is absent")
def test_it_finds_members_mirrored_shifted_cropped_and_re_encoded():
    """300 real Fashion-MNIST members, written through a real backward pass, against 300 test
    images, each changed by robustness.py's transformations: the memory's margin at the label
    ranks the changed members above the changed non-members."""
    sys.path.insert(0, str(REPO / "experiments" / "generalizing_amint"))
    from robustness import TRANSFORMS

    from amint_pl.data.benchmarks import load_benchmark

    benchmark = load_benchmark("fashion_mnist", FASHION_MNIST)
    members, member_labels = benchmark.train.images[:300], benchmark.train.labels[:300]
    outsiders, outsider_labels = benchmark.test.images[:300], benchmark.test.labels[:300]
    memory = memory_from_config(SETTINGS, (1, 28, 28), 10, members=300)
    memory.train()
    x = torch.from_numpy(np.asarray(members)).float() / 255.0
    y = torch.from_numpy(np.asarray(member_labels)).long()
    F.cross_entropy(memory.logit_share(memory(x)), y).backward()
    memory.write()
    assert int(memory.count) == 300
    memory.eval()
    aucs = {}
    for name, change in TRANSFORMS.items():
        margins = []
        for images, labels in ((members, member_labels), (outsiders, outsider_labels)):
            changed = change(np.asarray(images), np.random.default_rng(0))
            with torch.no_grad():
                evidence = memory(torch.from_numpy(changed).float() / 255.0)
            margins.append(memory_margin(evidence, torch.from_numpy(labels).long()).numpy())
        aucs[name] = auc(*margins)
    assert min(aucs.values()) >= 0.98, aucs
    # The zoomed-out reads find the crop: without them (and their bank), far fewer do.
    plain = memory_from_config({**SETTINGS, "query_zooms": []}, (1, 28, 28), 10, members=300)
    plain.load_state_dict(
        {k: v[:1] if k == "prints" else v for k, v in memory.state_dict().items()}
    )
    plain.eval()
    changed = [
        TRANSFORMS["crop90"](np.asarray(images), np.random.default_rng(0))
        for images in (members, outsiders)
    ]
    with torch.no_grad():
        margins = [
            memory_margin(plain(torch.from_numpy(c).float() / 255.0), torch.from_numpy(lab).long())
            for c, lab in zip(changed, (member_labels, outsider_labels), strict=True)
        ]
    # (measured: 0.999 with them, 0.65 without)
    assert auc(*(m.numpy() for m in margins)) < 0.9


def test_the_audited_models_class_logits_are_the_networks():
    """In `AMINTModule.audited` the fingerprints add nothing to the class logits, in training (a
    zero-valued probe the cross-entropy reaches) and at evaluation; the head gets the evidence."""
    from amint_pl.training.module import AMINTModule
    from tests.helpers import config_dict

    config = config_dict("mint=active_fingerprint", "dataset.image_size=16", "debug=fast")
    module = AMINTModule(config, num_classes=10, native_channels=1, mean=[0.5], std=[0.25])
    images, labels = torch.rand(8, 1, 16, 16), torch.randint(0, 10, (8,))
    for _ in range(2):  # an empty bank, then one holding the images
        module.train()
        torch.manual_seed(0)
        logits, _, evidence = module.audited(images)
        torch.manual_seed(0)
        assert torch.equal(logits, module.backbone(images)[0])
        F.cross_entropy(logits, labels).backward()
        module.memory.write()
        assert int(module.memory.count) == 8
    module.eval()
    with torch.no_grad():
        logits, _, evidence = module.audited(images)
        assert torch.equal(logits, module.backbone(images)[0])
    assert float(memory_margin(evidence, labels).min()) > 0.1


class RecordReads(L.Callback):
    """Whether the fingerprint record reads every audited view, per validation and predict batch."""

    def __init__(self) -> None:
        self.validation: list[bool] = []
        self.predict: list[bool] = []

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.validation.append(pl_module.memory.full_reads())

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.predict.append(pl_module.memory.full_reads())


def _fingerprint_fit(tmp_path, callback, external, sanity_steps=0, external_per_member=1.0):
    """A real 3-epoch Trainer fit of `mint=active_fingerprint` on digits at 16 px (80 members,
    `external` external samples, 40 test images): (module, datamodule, trainer)."""
    from amint_pl.data.benchmarks import benchmark_from_config
    from amint_pl.data.datamodule import MembershipDataModule
    from amint_pl.data.splits import SplitSizes, build_splits
    from amint_pl.training.module import AMINTModule
    from tests.helpers import config_dict

    config = config_dict("mint=active_fingerprint", "dataset.image_size=16")
    benchmark = benchmark_from_config(config["dataset"])
    sizes = SplitSizes(80, 0.25, external, 40)
    splits = build_splits(len(benchmark.train), len(benchmark.test), sizes, seed=0)
    module = AMINTModule(
        config, benchmark.num_classes, benchmark.channels, benchmark.mean, benchmark.std
    )
    dm = MembershipDataModule(
        benchmark,
        splits,
        batch_size=20,
        eval_batch_size=64,
        seed=0,
        external_per_member=external_per_member,
    )
    trainer = L.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        callbacks=[callback],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=sanity_steps,
        use_distributed_sampler=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=dm)
    return module, dm, trainer


def test_the_fits_validation_reads_as_training_and_the_scoring_reads_every_view(tmp_path):
    """A real fit of `mint=active_fingerprint` over 3 epochs (sanity check included): its
    validation reads the calibration images as training does (the image and its mirror), so the
    whole fit keeps no read of every audited view; the scoring (`predict`) and a validation
    outside a fit read every view; the MINT AUCs are still logged every epoch."""
    reads = RecordReads()
    module, dm, trainer = _fingerprint_fit(tmp_path, reads, external=40, sanity_steps=1)
    memory = module.memory
    batches = len(dm.val_dataloader())
    assert len(reads.validation) == 1 + 3 * batches and not any(reads.validation)
    assert {full for full, _ in memory._reads} == {False}  # the fit read no audited view
    assert {"val/paper/mint_auc", "val/strict/mint_auc"} <= set(trainer.callback_metrics)
    assert memory.full_reads() is False  # training mode after the fit: the image and its mirror
    trainer.validate(module, datamodule=dm, verbose=False)
    trainer.predict(module, datamodule=dm)
    assert reads.validation[1 + 3 * batches :] == [True] * batches
    assert reads.predict and all(reads.predict)
    assert {full for full, _ in memory._reads} == {False, True}


class StepReads(L.Callback):
    """Per epoch, the fingerprint record's reads inside the training steps, by how they were
    answered (`read_counts`: kept, grown, new), and each step's evidence of its external rows."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, int]] = []
        self.external: list[tuple[torch.Tensor, torch.Tensor]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epochs.append(dict.fromkeys(pl_module.memory.read_counts, 0))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.before = dict(pl_module.memory.read_counts)
        self.inputs = pl_module.preprocess(batch["images"])[batch["role"] == ROLE_CODES["external"]]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        memory = pl_module.memory
        for how, n in memory.read_counts.items():
            self.epochs[-1][how] += n - self.before[how]
        if trainer.current_epoch == trainer.max_epochs - 1:  # the bank holds every member
            with torch.no_grad():
                self.external.append(
                    (memory.similarity(self.inputs), memory.similarity(self.inputs, reuse=False))
                )


def test_the_epochs_external_samples_are_read_ahead_and_each_step_finds_them_kept(tmp_path):
    """A real 3-epoch fit of `mint=active_fingerprint`: from the second epoch on (every member in
    the bank) the module reads the epoch's external samples before it, many at a time, so no
    read inside a step compares anything with the bank; their kept reads answer as the whole
    bank does."""
    steps = StepReads()
    _fingerprint_fit(tmp_path, steps, external=200, external_per_member=0.5)
    # Epoch 1: the members and the external samples (5 a step, 8 steps) read in the steps.
    assert steps.epochs[0] == {"kept": 0, "grown": 0, "new": 80 + 40}
    # Then every member's read is kept and completed, and every external sample was read ahead.
    assert steps.epochs[1:] == [{"kept": 80 + 40, "grown": 0, "new": 0}] * 2
    for kept, whole in steps.external:
        torch.testing.assert_close(kept, whole, rtol=0, atol=1e-6)


@pytest.mark.parametrize("cells", [(1, 11, 11), (3, 6, 8)])
def test_the_mirror_fold_keeps_products_and_takes_a_read_and_its_mirror_in_one(cells):
    """The folded basis is orthogonal (products are kept) and turns a mirror into a sign change
    of its last part, so that S.S' + |A.A'| is the larger product of x and of its mirror with y
    (an odd width keeps its middle column in S, an even one has none; every channel folds)."""
    basis, symmetric = _mirror_fold(*cells)
    d = basis.shape[0]
    assert torch.allclose(basis.T @ basis, torch.eye(d, dtype=torch.float64), atol=1e-12)
    x, y = torch.randn(2, 50, d, dtype=torch.float64)
    mirrored = x.view(50, *cells).flip(-1).reshape(50, d)
    fx, fy, fm = x @ basis, y @ basis, mirrored @ basis
    assert torch.allclose(fm[:, :symmetric], fx[:, :symmetric], atol=1e-12)
    assert torch.allclose(fm[:, symmetric:], -fx[:, symmetric:], atol=1e-12)
    pair = fx[:, :symmetric] @ fy[:, :symmetric].T + (fx[:, symmetric:] @ fy[:, symmetric:].T).abs()
    assert torch.allclose(pair, torch.maximum(x @ y.T, mirrored @ y.T), atol=1e-12)


@pytest.mark.parametrize("pool", [2, 3])
def test_every_read_is_the_largest_product_of_its_views_with_the_bank(pool):
    """An evaluation's read, per class, is the largest plain product over every shift of every
    view, each also mirrored, with that view's bank: computed here one by one in float64."""
    memory = memory_from_config({**SETTINGS, "pool": pool}, (1, 28, 28), 4, members=60)
    images, labels = _images(80, 9), torch.randint(0, 4, (80,))
    memory.add(memory.member_prints(images[:60]), labels[:60])
    memory.eval()
    with torch.no_grad():
        read = memory.similarity(images[50:80], reuse=False)
    views = memory.views(images[50:80])
    span = range(-memory.query_shifts, memory.query_shifts + 1)
    expected = torch.full((30, 4), -1.0, dtype=torch.float64)
    for view, bank in zip(views, memory.prints, strict=True):
        for image in (view, view.flip(-1)):
            for dy in span:
                for dx in span:
                    products = memory.fingerprint(image, dy, dx) @ bank[:60].double().T
                    for c in range(4):
                        top = products[:, labels[:60] == c].amax(1)
                        expected[:, c] = torch.maximum(expected[:, c], top)
    assert torch.allclose(read, expected, atol=2e-6)
    assert bool((read[:10].gather(1, labels[50:60, None]) > 1 - 2e-6).all())  # members: 1


def test_the_class_banks_grown_step_by_step_equal_those_built_at_once():
    """The reads group the members by class once and extend the groups as training writes; over
    steps that add to every class (and grow each block past its first size) they hold what
    grouping the whole bank afresh gives, and read the same."""
    images, labels = _images(96, 4), torch.randint(0, 4, (96,))
    memory = memory_from_config(SETTINGS, (1, 28, 28), 4, members=96)
    memory.train()
    for step in range(6):  # a read before each write: the groups exist and are extended
        rows = slice(16 * step, 16 * (step + 1))
        F.cross_entropy(memory.logit_share(memory(images[rows])), labels[rows]).backward()
        memory.write()
        grown = memory.class_banks(2)  # the zoomed-out bank too, as evaluation reads it
        assert [len(block) for block in grown[0]] == torch.bincount(
            labels[: 16 * (step + 1)], minlength=4
        ).tolist()
    fresh = memory_from_config(SETTINGS, (1, 28, 28), 4, members=96)
    fresh.load_state_dict(memory.state_dict())
    for grown_view, fresh_view in zip(memory.class_banks(2), fresh.class_banks(2), strict=True):
        for grown_block, fresh_block in zip(grown_view, fresh_view, strict=True):
            assert torch.equal(grown_block, fresh_block)
    memory.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(memory(images), fresh(images))
    assert float(memory_margin(memory(images), labels).min()) > 0.1


def test_reads_kept_over_epochs_answer_as_the_whole_bank_and_spare_the_members_later():
    """Training reads each member before the step writes it, so its kept read lacks itself and
    the members written after it, which the writes complete from those members' own reads: over
    three epochs of members and new external images every answer equals a read of the whole
    bank, and from the second epoch on every member is answered from its kept read alone."""
    images, labels = _images(120, 5), torch.randint(0, 4, (120,))
    external = _images(3 * 6 * 4, 6)  # four new ones a step
    memory = memory_from_config(SETTINGS, (1, 28, 28), 4, members=120)
    memory.train()
    counts = []
    for epoch in range(3):
        before = dict(memory.read_counts)
        # New batches each epoch: a batch holds members first read at different bank sizes.
        order = torch.randperm(120, generator=torch.Generator().manual_seed(epoch))
        for step in range(6):
            members = order[20 * step : 20 * (step + 1)]
            outside = external[4 * (6 * epoch + step) : 4 * (6 * epoch + step + 1)]
            batch = torch.cat([images[members], outside])
            evidence = memory(batch)
            # The same products, in blocks of another size: equal up to float32's rounding,
            # which the sharpening near a similarity of 1 magnifies to ~3e-5.
            whole = sharpened(memory.similarity(batch, reuse=False)).float()
            torch.testing.assert_close(evidence.detach(), whole, rtol=0, atol=1e-4)
            F.cross_entropy(memory.logit_share(evidence)[:20], labels[members]).backward()
            memory.write()
        counts.append({k: memory.read_counts[k] - before[k] for k in before})
    # Epoch 1: every image new. Epochs 2 and 3: the members kept (their reads completed as the
    # members after them were written), the external images new.
    assert counts == [
        {"kept": 0, "grown": 0, "new": 144},
        {"kept": 120, "grown": 0, "new": 24},
        {"kept": 120, "grown": 0, "new": 24},
    ]
    assert len(memory._tracked) == 120 and memory._era == 0
    with torch.no_grad():
        assert float(memory_margin(memory(images), labels).min()) > 0.1
    # Evaluation keeps its own reads (every shift and view): the second read is kept.
    memory.eval()
    with torch.no_grad():
        first = memory(external)
        kept_before = memory.read_counts["kept"]
        assert torch.equal(memory(external), first)
        assert memory.read_counts["kept"] - kept_before == len(external)


@pytest.mark.parametrize("pool", [2, 3])
def test_a_write_it_cannot_complete_ends_an_era_and_every_read_still_answers_as_the_bank(pool):
    """Members read before their step against a part of the bank (a validation's read) are read
    in their step from that part on, not against the whole bank: their write cannot complete
    the earlier members' reads, and ends an era; the members tracked before it answer for the
    bank up to it and are compared with the members after it. With pool 3 (22 pixels of window
    in cells of 3: a mirrored image's fingerprint is not the mirrored fingerprint) nothing is
    tracked. Over two epochs every answer equals a read of the whole bank."""
    images, labels = _images(90, 8), torch.randint(0, 4, (90,))
    memory = memory_from_config({**SETTINGS, "pool": pool}, (1, 28, 28), 4, members=90)

    def step(start: int) -> None:
        rows = slice(start, start + 30)
        memory.train()
        evidence = memory(images[rows])
        whole = memory.similarity(images[rows], reuse=False)
        # Compared as similarities (the sharpening magnifies float32's rounding near 1 ~500x):
        # the same products in blocks of other sizes, a few ulps apart.
        read = 1 + FLOOR - torch.exp(-evidence.detach().double() / SHARPNESS)
        torch.testing.assert_close(read, whole, rtol=0, atol=2e-6)
        F.cross_entropy(memory.logit_share(evidence), labels[rows]).backward()
        memory.write()

    tracks = pool == 2
    assert memory.symmetric is tracks
    step(0)
    memory.eval()
    memory.audit_reads = False  # as a fit's validation reads
    with torch.no_grad():
        memory(images[30:45])  # kept, read against the first 30 members
    step(30)
    step(60)
    assert len(memory._tracked) == (60 if tracks else 0)
    assert memory._era == (1 if tracks else 3)
    before = dict(memory.read_counts)
    for start in (0, 30, 60):
        step(start)
    counts = {k: memory.read_counts[k] - before[k] for k in before}
    # The first 30 tracked before the era ended, and the 30 of the write that ended it: grown;
    # the last 30, tracked since: kept. Without tracking the first 30 (read before any member
    # was written) are read against the whole bank, the others grown.
    if tracks:
        assert counts == {"kept": 30, "grown": 60, "new": 0}
    else:
        assert counts == {"kept": 0, "grown": 60, "new": 30}


@pytest.mark.parametrize("pool", [2, 3])
def test_a_write_skips_what_it_wrote_before_and_still_finds_copies_under_other_keys(
    pool, monkeypatch
):
    """The write knows an image it wrote before (its key and label) without fingerprinting it
    again; a brighter copy (another key, the same fingerprint) is still found in the bank, and
    the same image under another label is another sample. With a symmetric window (pool 2) the
    candidates come from the step's own read of the whole bank; else from a product of its
    own (pool 3: 22 pixels across do not split into cells of 3), as for images answered from
    their kept reads."""
    candidates = []
    known = FingerprintMemory.known

    def spied(self, plain, labels, near=None):
        candidates.append(near)
        return known(self, plain, labels, near)

    monkeypatch.setattr(FingerprintMemory, "known", spied)
    images, labels = _images(20, 7), torch.randint(0, 10, (20,))
    memory = memory_from_config({**SETTINGS, "pool": pool}, (1, 28, 28), 10, members=40)
    assert memory.symmetric is (pool == 2)
    memory.train()
    for batch, batch_labels, count in (
        (images, labels, 20),
        (images, labels, 20),  # by its key
        (2 * images + 1, labels, 20),  # by its fingerprint
        (images[:5], (labels[:5] + 1) % 10, 25),
        (images[:5], (labels[:5] + 1) % 10, 25),
    ):
        F.cross_entropy(memory.logit_share(memory(batch)), batch_labels).backward()
        memory.write()
        assert int(memory.count) == count
    assert len(memory._written) == 45  # every image and label the writes met
    # The bank was tested for the copies, then for the images under another label. The copies
    # were read against the whole bank in their step; the images under another label were
    # answered from their kept reads, without products, and take a product of their own.
    assert len(candidates) == 2
    assert (candidates[0] is not None) is memory.symmetric and candidates[1] is None
    if memory.symmetric:  # each copy's read comes within CANDIDATE of its own entry
        assert set(candidates[0][0].tolist()) == set(range(20))
