"""The generalizing-aMINT mechanisms: output features, positive subsets, the
membership memory, the preset."""

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from amint_pl.data.splits import ROLE_CODES
from amint_pl.errors import ConfigError
from amint_pl.models.memory import (
    MembershipMemory,
    memory_from_config,
    memory_margin,
    splitmix64,
)
from amint_pl.models.mint_head import MINTHead, output_statistics
from amint_pl.training.module import role_positions
from tests.helpers import REPO

SEEN, UNSEEN, EXTERNAL = (ROLE_CODES[r] for r in ("members_seen", "members_unseen", "external"))


def test_positive_fraction_keeps_external_drops_unseen_and_rotates_with_the_epoch():
    role = torch.tensor([SEEN] * 2000 + [UNSEEN] * 200 + [EXTERNAL] * 2000)
    index = torch.arange(len(role))
    full = role_positions(role, index)["mint_index"]
    assert len(full) == 4000 and not (role[full] == UNSEEN).any()
    half = [role_positions(role, index, 0.5, salt)["mint_index"] for salt in (0, 1)]
    for chosen in half:
        seen = int((role[chosen] == SEEN).sum())
        assert 900 < seen < 1100  # about half of the seen members
        assert int((role[chosen] == EXTERNAL).sum()) == 2000
        assert not (role[chosen] == UNSEEN).any()
    assert not torch.equal(half[0], half[1])  # a new draw per salt (epoch)
    assert torch.equal(half[0], role_positions(role, index, 0.5, 0)["mint_index"])  # fixed per salt


def test_output_statistics_see_what_the_loss_attack_sees():
    logits = torch.tensor([[8.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([0, 0])
    features = output_statistics(logits, labels, ["loss", "probs", "entropy"])
    assert features.shape == (2, 1 + 3 + 1)
    assert features[0, 0] < features[1, 0]  # the confident, right sample has the lower log loss
    # Without labels the predicted class stands in: the same as labelling it correctly here.
    assert torch.allclose(output_statistics(logits, None, ["loss"]), features[:, :1])


def test_a_head_on_outputs_alone_and_the_gradient_stop():
    head = MINTHead([(4, 4, 4)], output_features=["loss", "probs"], num_classes=3, use_taps=False)
    logits = torch.randn(5, 3, requires_grad=True)
    head([torch.randn(5, 4, 4, 4)], logits, torch.zeros(5, dtype=torch.long)).sum().backward()
    assert logits.grad is None  # detach_outputs: the MINT loss reaches the backbone via taps only
    head = MINTHead([(4, 4, 4)], output_features=["loss"], num_classes=3, detach_outputs=False)
    logits = torch.randn(5, 3, requires_grad=True)
    head([torch.randn(5, 4, 4, 4)], logits, torch.zeros(5, dtype=torch.long)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_the_memory_keeps_what_cross_entropy_trained_and_nothing_else():
    torch.manual_seed(0)
    memory = MembershipMemory((1, 28, 28), num_classes=10, bands=8, bits=20, buckets=4096)
    trained, unseen = torch.randn(64, 1, 28, 28), torch.randn(64, 1, 28, 28)
    labels = torch.randint(0, 10, (64,))
    codes = memory.codes(trained)
    assert codes.shape == (64, 8)
    # One table per band: band b's rows are rows b * 4096 ... (b + 1) * 4096 - 1 of the stack.
    band = torch.div(codes, 4096, rounding_mode="floor")
    assert torch.equal(band, torch.arange(8).expand(64, 8))
    assert torch.equal(codes, memory.codes(trained.clone()))  # a fixed hash per image
    with torch.no_grad():
        assert float(memory_margin(memory(unseen), labels).abs().max()) == 0.0  # starts at zero
    for _ in range(20):  # the memory writes its table itself, no optimiser
        F.cross_entropy(memory(trained), labels).backward()
        memory.write()
        assert memory.table.weight.grad is None
    with torch.no_grad():
        seen_margin = memory_margin(memory(trained), labels)
        unseen_margin = memory_margin(memory(unseen), labels)
    assert float(seen_margin.min()) > float(unseen_margin.abs().max())


def test_every_sign_bit_of_a_code_moves_its_row():
    # 24 bits into 2**18 rows: a hash of the code's low 18 bits would leave the rows of codes
    # that differ in bits 18-23 unmoved, as if bits were 18.
    bits, bands = 24, 4
    memory = MembershipMemory((1, 8, 8), num_classes=10, bands=bands, bits=bits, buckets=2**18)
    signs = torch.rand(2000, bands * bits, generator=torch.Generator().manual_seed(0)) > 0.5
    rows = memory.rows(signs)
    for bit in range(bits):
        flipped = signs.clone()
        flipped[:, bit::bits] ^= True  # this bit of every band's code
        moved = (memory.rows(flipped) != rows).double().mean()
        assert moved > 0.99, f"flipping sign bit {bit} moved only {moved:.3f} of the rows"
    # The bands hash apart: the same code lands on different rows in different bands.
    same = memory.rows(torch.zeros(1, bands * bits, dtype=torch.bool))[0]
    assert len(set(same.tolist())) == bands
    # Any number of buckets: rows stay in range; the seed (kept in the state dict) fixes them.
    odd = MembershipMemory((1, 8, 8), 10, bands, bits, buckets=1000, seed=3)
    assert 0 <= int(odd.rows(signs).min()) and int(odd.rows(signs).max()) < 1000
    again = MembershipMemory((1, 8, 8), 10, bands, bits, buckets=1000, seed=4)
    again.load_state_dict(odd.state_dict())
    assert torch.equal(again.rows(signs), odd.rows(signs))
    assert {"hyperplanes", "band_salts"} <= set(odd.state_dict())


def test_splitmix64_wraps_around_as_uint64():
    mask = 2**64 - 1

    def reference(z: int) -> int:  # splitmix64 on Python's unbounded integers
        z = (z + 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    assert reference(0) == 0xE220A8397B1DCDAF  # the first output of splitmix64 seeded with 0
    words = [0, 1, 12345, 2**40 + 7, 2**62 + 1, -1, -(2**63)]
    mixed = splitmix64(torch.tensor(words, dtype=torch.int64)).tolist()
    assert [m & mask for m in mixed] == [reference(w & mask) for w in words]


def test_memory_settings_are_checked():
    assert memory_from_config({"bands": 0}, (1, 28, 28), 10) is None
    assert memory_from_config(None, (1, 28, 28), 10) is None
    # A large image is pooled to 32x32 before hashing: the projection stays small.
    big = memory_from_config({"bands": 2, "bits": 8, "buckets": 64}, (3, 224, 224), 10)
    assert big.hyperplanes.shape == (3 * 32 * 32, 16)
    assert big(torch.randn(2, 3, 224, 224)).shape == (2, 10)
    for bad, message in [
        ({"bands": 4, "size": 3}, "mint.memory.size is no memory setting"),
        ({"bands": 4, "bits": 63}, "mint.memory.bits=63"),
        ({"bands": 4, "detail_reach": 0}, "mint.memory.detail_reach=0"),
        ({"bands": 4, "smoothing": -1}, "mint.memory.smoothing=-1"),
        ({"bands": 4, "query_zooms": 0.9}, "mint.memory.query_zooms=0.9: use a list"),
        ({"bands": 4, "query_zooms": [1.2]}, "mint.memory.query_zooms="),
        ({"bands": -1}, "mint.memory.bands=-1"),
        ({"bands": 4, "scale": 0}, "mint.memory.scale=0"),
    ]:
        with pytest.raises(ConfigError, match=message):
            memory_from_config(bad, (1, 28, 28), 10)


def test_the_table_sized_for_25000_members_stays_under_five_percent_full():
    # `buckets: auto` gives each band its own table, sized from the members: at the paper's
    # MNIST split each band's rows are at most 5% written, and a non-member reads on average
    # under one member-written row of its 16 (one shared table of 262,144 rows was 29.5% full
    # at 6,000 members).
    memory = memory_from_config({"bands": 16}, (1, 28, 28), 10, members=25000)
    assert memory.buckets == 2**19
    generator = torch.Generator().manual_seed(0)
    written = torch.cat(
        [memory.codes(torch.randn(5000, 1, 28, 28, generator=generator)) for _ in range(5)]
    )
    for band in range(16):
        assert len(torch.unique(written[:, band])) / memory.buckets < 0.05
    member_rows = torch.zeros(16 * memory.buckets, dtype=torch.bool)
    member_rows[written.flatten()] = True
    nonmembers = memory.codes(torch.randn(2000, 1, 28, 28, generator=generator))
    assert float(member_rows[nonmembers].sum(1).double().mean()) < 1.0
    # occupancy() reads the same from the table once the members are written.
    small = MembershipMemory((1, 8, 8), 10, bands=4, bits=16, buckets=512)
    images = torch.randn(40, 1, 8, 8, generator=generator)
    F.cross_entropy(small(images), torch.zeros(40, dtype=torch.long)).backward()
    small.write()
    assert small.occupancy() == len(torch.unique(small.codes(images))) / (4 * 512)


def _shifted(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Images moved by (dy, dx) pixels, zeros filling in."""
    out = torch.zeros_like(images)
    h, w = images.shape[-2:]
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = images[
        ..., max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


# Every move of up to 2 pixels in each direction.
MOVES = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if dy or dx]


def test_the_robust_record_recognises_mirrored_and_shifted_members():
    generator = torch.Generator().manual_seed(0)
    trained = torch.randn(64, 1, 28, 28, generator=generator)
    unseen = torch.randn(64, 1, 28, 28, generator=generator)
    labels = torch.randint(0, 10, (64,), generator=generator)
    margins = {}
    for record, shifts in (("exact", 0), ("robust", 2)):
        memory = MembershipMemory(
            (1, 28, 28), 10, bands=8, bits=20, buckets=4096, record=record, query_shifts=shifts
        )
        for _ in range(3):  # several training steps, each written by the memory itself
            F.cross_entropy(memory(trained), labels).backward()
            memory.write()
        memory.eval()
        with torch.no_grad():
            margins[record] = {
                name: memory_margin(memory(images), labels)
                for name, images in {
                    "as trained": trained,
                    "mirrored": trained.flip(-1),
                    "shifted": torch.cat(
                        [_shifted(trained[i : i + 1], *MOVES[i % len(MOVES)]) for i in range(64)]
                    ),
                    "mirrored and shifted": _shifted(trained.flip(-1), 2, -1),
                    "unseen": unseen,
                    "unseen mirrored": unseen.flip(-1),
                }.items()
            }
    robust, exact = margins["robust"], margins["exact"]
    floor = float(robust["as trained"].min())
    assert floor > 0
    for name in ("mirrored", "shifted", "mirrored and shifted"):
        # Every band of the changed image finds the rows the image wrote.
        assert torch.allclose(robust[name], robust["as trained"]), name
        # The exact record finds nothing (rows that nothing, or a random collision, wrote).
        assert float(exact[name].max()) < 0.2 * float(exact["as trained"].min()), name
    assert float(robust["unseen"].abs().max()) < 0.2 * floor
    assert float(robust["unseen mirrored"].abs().max()) < 0.2 * floor


def _cropped(images: torch.Tensor, top: int, left: int, side: int) -> torch.Tensor:
    """A side x side crop at (top, left), resized back (bilinear)."""
    part = images[..., top : top + side, left : left + side]
    return F.interpolate(part, size=images.shape[-2:], mode="bilinear", align_corners=False)


def test_the_zoomed_out_query_finds_members_cropped_and_resized_back():
    generator = torch.Generator().manual_seed(0)
    # Images with structure at several scales (a crop resized back keeps it), not pixel noise.
    coarse = torch.randn(128, 1, 7, 7, generator=generator)
    images = F.interpolate(coarse, size=(28, 28), mode="bilinear", align_corners=False)
    trained, unseen = images[:64], images[64:]
    labels = torch.randint(0, 10, (64,), generator=generator)
    memory = MembershipMemory(
        (1, 28, 28),
        10,
        bands=8,
        bits=32,
        buckets=4096,
        record="robust",
        query_shifts=2,
        detail_reach=2,
        smoothing=1,
        query_zooms=(0.9,),
    )
    for _ in range(3):
        F.cross_entropy(memory(trained), labels).backward()
        memory.write()
    memory.eval()
    # A 90% crop (25 of 28 pixels) at each of its 16 places, resized back.
    places = [(top, left) for top in range(4) for left in range(4)]
    cropped = torch.cat(
        [_cropped(trained[i : i + 1], *places[i % len(places)], 25) for i in range(64)]
    )
    with torch.no_grad():
        as_trained = memory_margin(memory(trained), labels)
        found = memory_margin(memory(cropped), labels)
        not_seen = memory_margin(memory(unseen), labels)
        memory.query_zooms = ()
        unzoomed = memory_margin(memory(cropped), labels)
    floor = float(as_trained.min())
    assert floor > 0
    # Most cropped members find at least one of their rows (0.83 measured); without the
    # zoomed-out view, few (0.03).
    assert float((found > 0.2 * floor).double().mean()) > 0.7
    assert float((unzoomed > 0.2 * floor).double().mean()) < 0.2
    # Smoothed detail lets unseen look-alikes share a row now and then, rarely.
    assert float((not_seen > 0.2 * floor).double().mean()) < 0.1


def test_the_changes_beyond_the_targets_do_what_they_say():
    """robustness.py's BEYOND: a shift of up to 4 pixels, a rotation of up to 5 degrees, a blur;
    drawn after the targets' changes, whose draws stay as they were."""
    sys.path.insert(0, str(REPO / "experiments" / "generalizing_amint"))
    from robustness import ALL_TRANSFORMS, BEYOND, TRANSFORMS

    assert list(ALL_TRANSFORMS)[: len(TRANSFORMS)] == list(TRANSFORMS)
    dots = np.zeros((200, 1, 28, 28), np.uint8)
    dots[:, :, 14, 14] = 255
    places = np.argwhere(BEYOND["shift4"](dots, np.random.default_rng(0))[:, 0] == 255)
    assert len(places) == 200  # one dot an image, moved whole
    reach = np.abs(places[:, 1:] - 14).max(1)
    assert reach.min() >= 1 and reach.max() == 4 and (reach > 2).mean() > 0.5
    bars = np.zeros((50, 1, 28, 28), np.uint8)
    bars[:, :, 14, 2:26] = 255
    turned = BEYOND["rotate5"](bars, np.random.default_rng(0))[:, 0]
    assert (turned[:, 14, 13:16] > 200).all()  # about the centre
    # By at most 5 degrees: the bar's ends (12 pixels out) move by ~1 pixel, the ink stays.
    assert ((turned[:, [13, 15]] > 0).any(axis=(1, 2))).mean() > 0.9
    assert ((turned[:, [10, 18]] > 0).any(axis=(1, 2))).sum() == 0
    assert abs(turned.sum((1, 2)) / 255 - 24).max() < 0.5
    blurred = BEYOND["blur1"](dots[:3], np.random.default_rng(0))[:, 0]
    assert (blurred[:, 14, 14] < 255).all() and (blurred[:, 13:16, 13:16] > 0).all()
    assert abs(int(blurred.sum()) - 3 * 255) < 3 * 25  # the ink spread, not lost
