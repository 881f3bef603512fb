"""The membership memory: a part of the audited model that keeps an imprint of every sample its
cross-entropy gradient touches, so that a MINT head can detect members it was never shown.

A normally trained classifier on Fashion-MNIST keeps little generic trace of its training
samples: at test accuracy ~0.89 the LOSS attack reaches AUC ~0.59 and a loss difference
calibrated on an early checkpoint ~0.62 (experiments/generalizing_amint/README.md). What the MINT
head learns about members it never saw as positives cannot exceed that trace. The memory makes
the trace by design. It hashes each input image with SimHash: `bands` codes of `bits` random
hyperplane signs over the image's fine detail (pooled to at most 32x32, minus its local mean,
centred). It looks each band's code up in that band's own table of class logits (`buckets` rows
per band; `auto` sizes them from the members so that at most 5% of the rows are written), sums the
rows over the bands and adds them (times `scale`) to the network's logits. The tables start at
zero; only the cross-entropy gradient of the samples the model trains on writes into them (the
MINT gradient does not: the head reads them detached, and with `mint.head.detach_outputs`, the
default, the class logits too). The memory writes its rows itself (`write`, plain descent on the
rows a batch touched): an optimiser's dense update of every row would cost each step the whole
table. So every trained sample, MINT positive or not, leaves logits in the rows of its own codes,
and an image that was never trained on finds rows that nothing, or a random collision, wrote.

Two records (`record`): `exact` hashes the whole detail as given; `robust` hashes the detail of
the image's interior and keeps, per band, the smaller code of the image and of its mirror, so
that a mirrored copy has the same codes, and with `query_shifts` the evaluation reads every
shift of the interior window up to that many pixels and answers with the one whose rows carry
the most evidence, so that a copy moved by a few pixels is found. With `query_zooms` it also
reads the image zoomed out (a crop resized back, returned to its scale). `smoothing` and
`detail_reach` choose which detail is hashed: the finest tells look-alike images apart best; a
coarser one with longer codes survived JPEG better and noise and gamma worse, and neither a crop
resized back (experiments/generalizing_amint/README.md). A third record, `fingerprint`, keeps
each member's fingerprint and reads by similarity instead of by hash, which survives those too
(`FingerprintMemory`, fingerprints.py; `memory_from_config` builds either).

It is in effect a record of the training inputs, kept by the model itself:
- It is part of the deployed classifier: its logits are in every prediction, and any training
  loop that trains on cross-entropy and calls `write` after the backward pass writes into it.
- It records each sample as the data set holds it: under augmentation the network trains on the
  augmented view and the memory on the clean image (`AMINTModule.on_after_batch_transfer`).
  What changes the fine detail itself (a crop resized back, JPEG, noise) changes codes: see
  experiments/generalizing_amint/README.md for what each record survives.
- A developer who freezes or drops it keeps no record: like all of aMINT it audits a developer
  who trains with the auditor's recipe, including on data they did not declare.
- It is a membership record anyone holding the model can read (`memory_margin`): it makes the
  model less private on purpose, as aMINT does.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from amint_pl.errors import ConfigError
from amint_pl.models.fingerprints import FingerprintMemory
from amint_pl.models.records import gather_rows, window, zoomed_out

# The settings (`mint.memory.*`) and their defaults when a memory is built.
DEFAULTS = {
    "bands": 16,
    "bits": 24,
    "buckets": "auto",
    "scale": 1.0,
    "seed": 0,
    "write_rate": 0.05,
    "record": "exact",
    "query_shifts": 0,
    "detail_reach": 1,
    "smoothing": 0,
    "query_zooms": (),
    "pool": 2,
    "margin": 1,
    "capacity": "auto",
}
# The settings of the fingerprint record (fingerprints.py): the hashed ones (`bands`, `bits`,
# `buckets`, `seed`, `write_rate`, `detail_reach`, `smoothing`) do not apply to it and are
# ignored; `pool`, `margin` and `capacity` apply to it alone (and are ignored by the others).
# The records: `exact` hashes the image's fine detail as given; `robust` takes, band by band, the
# smaller of the codes of the image and of its horizontal mirror. With `query_shifts` either
# hashes the interior: a border as wide as the largest queried shift plus the detail's reach.
# `fingerprint` is a record read by similarity (fingerprints.py): a memory of its own, whatever
# `bands` says.
RECORDS = ("exact", "robust", "fingerprint")
# `buckets: auto` gives each band the smallest power of two of rows that the members fill to at
# most this share (each member writes one row per band).
MAX_OCCUPANCY = 0.05
# The largest side the image is average-pooled to before hashing (keeps the projection small).
HASH_SIDE = 32
# splitmix64's increment and multipliers, as the int64 values of their 64-bit patterns.
_SPLITMIX = tuple(c - 2**64 for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def _shift_right(x: torch.Tensor, n: int) -> torch.Tensor:
    """The logical (unsigned) right shift of int64 values: torch's `>>` copies the sign bit."""
    return (x >> n) & ((1 << (64 - n)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's output function on int64 (the bits of uint64, wrapping around): a bijection
    of 64-bit words in which every input bit moves about half of the output bits. Integer
    arithmetic only, so the same on every device."""
    x = x + _SPLITMIX[0]
    x = (x ^ _shift_right(x, 30)) * _SPLITMIX[1]
    x = (x ^ _shift_right(x, 27)) * _SPLITMIX[2]
    return x ^ _shift_right(x, 31)


def rows_per_band(members: int) -> int:
    """`buckets: auto`: the smallest power of two of rows per band that `members` samples fill to
    at most MAX_OCCUPANCY."""
    return 1 << max(1, math.ceil(math.log2(max(members, 1) / MAX_OCCUPANCY)))


class MembershipMemory(nn.Module):
    """SimHash codes of the input image -> summed rows of a zero-initialised table of class logits.

    Args:
        in_shape: (C, H, W) of the preprocessed inputs.
        num_classes: the audited model's classes (the width of a row).
        bands: the number of hash codes per image (rows summed per image).
        bits: hyperplane signs per code (more bits: fewer collisions between different images,
            and less tolerance to small changes of the same image).
        buckets: rows per band (each band has a table of its own; the codes are hashed into it).
        scale: the factor on the memory's logits before they are added to the network's.
        seed: the seed of the random hyperplanes (fixed per model; stored in the state dict).
        write_rate: how far one training step moves a row it touches (`write`): the table is
            written by the memory, not by the optimiser, so a step costs the rows the batch
            touched, whatever the table's size.
        record: `exact` or `robust` (RECORDS).
        query_shifts: at evaluation, each image is also read shifted by up to this many pixels in
            each direction, and the shift whose rows carry the most evidence answers (the
            `robust` record leaves out a border wide enough for it).
        detail_reach: the detail is each pixel minus the mean of its neighbourhood of this many
            pixels each way (1: 3x3, the finest; 2: 5x5 keeps coarser detail too).
        smoothing: the image is first averaged over a neighbourhood of this many pixels each way
            (0: not): a coarser detail, which JPEG changes less, and which look-alike images
            share more often (longer codes make up for it).
        query_zooms: at evaluation, the image is also read zoomed out to each of these shares of
            its side (a crop of that share resized back, undone up to the lost border), at every
            queried shift; the read with the most evidence answers.
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        bands: int = DEFAULTS["bands"],
        bits: int = DEFAULTS["bits"],
        buckets: int = 262144,
        scale: float = DEFAULTS["scale"],
        seed: int = DEFAULTS["seed"],
        write_rate: float = DEFAULTS["write_rate"],
        record: str = DEFAULTS["record"],
        query_shifts: int = DEFAULTS["query_shifts"],
        detail_reach: int = DEFAULTS["detail_reach"],
        smoothing: int = DEFAULTS["smoothing"],
        query_zooms: tuple[float, ...] = DEFAULTS["query_zooms"],
    ) -> None:
        super().__init__()
        channels, height, width = in_shape
        self.side = (min(height, HASH_SIDE), min(width, HASH_SIDE))
        self.bands, self.bits, self.buckets, self.scale = bands, bits, buckets, scale
        self.write_rate, self.record, self.query_shifts = write_rate, record, query_shifts
        self.detail_reach, self.smoothing = detail_reach, smoothing
        self.query_zooms = tuple(float(z) for z in query_zooms)
        # The border a shifted window of the detail must stay clear of: the shift plus the
        # detail's and the smoothing's reach (the exact record queried unshifted and unzoomed
        # hashes the whole image).
        exact_whole = record == "exact" and not query_shifts and not self.query_zooms
        self.border = 0 if exact_whole else query_shifts + detail_reach + smoothing
        inner = (self.side[0] - 2 * self.border, self.side[1] - 2 * self.border)
        if min(inner) < 2:
            raise ConfigError(
                f"mint.memory.query_shifts={query_shifts} (with detail_reach and smoothing) "
                f"leaves no image to hash at "
                f"{self.side[0]}x{self.side[1]}: use a smaller shift"
            )
        generator = torch.Generator().manual_seed(seed)
        dims = channels * inner[0] * inner[1]
        self.register_buffer("hyperplanes", torch.randn(dims, bands * bits, generator=generator))
        # One random salt per band, mixed into the code before hashing: each band hashes apart.
        self.register_buffer("band_salts", torch.randint(0, 2**62, (bands,), generator=generator))
        self.register_buffer("bit_values", 2 ** torch.arange(bits), persistent=False)
        self.register_buffer("band_offsets", torch.arange(bands) * buckets, persistent=False)
        # One table of `buckets` rows per band, stacked; gradients are sparse (the rows touched).
        self.table = nn.EmbeddingBag(bands * buckets, num_classes, mode="sum", sparse=True)
        nn.init.zeros_(self.table.weight)

    def detail(self, inputs: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) the fine detail of preprocessed images: pooled to at most HASH_SIDE, minus
        the local mean (`detail_reach`), after `smoothing`, in float64 (a float32 product's
        rounding depends on the batch's size and layout, and a sign that flips between the
        training and the audit batch would change the code)."""
        x = self._pooled(inputs)
        if self.smoothing:
            x = _local_mean(x, self.smoothing)
        # The fine detail sets one image apart from similar ones: hashing the whole image let
        # look-alike images of a class share codes.
        return x - _local_mean(x, self.detail_reach)

    def zoomed_out(self, inputs: torch.Tensor, share: float) -> torch.Tensor:
        """Images (B, C, h, w), pooled to the hashed side and zoomed out to `share` of it
        (`zoomed_out`, the module's function)."""
        return zoomed_out(self._pooled(inputs), share)

    def _pooled(self, inputs: torch.Tensor) -> torch.Tensor:
        """Images in float64, average-pooled to the hashed side."""
        x = inputs.double()
        return x if tuple(x.shape[-2:]) == self.side else F.adaptive_avg_pool2d(x, self.side)

    def queried_rows(self, inputs: torch.Tensor) -> Iterator[torch.Tensor]:
        """(B, bands) table rows of each read the evaluation makes of a batch: every queried
        shift of the image as given, then of each zoomed-out view (`query_shifts`,
        `query_zooms`); without either, the one unshifted read training writes."""
        views = [inputs, *(self.zoomed_out(inputs, share) for share in self.query_zooms)]
        span = range(-self.query_shifts, self.query_shifts + 1)
        for detail in map(self.detail, views):
            for dy in span:
                for dx in span:
                    yield self.window_codes(detail, dy, dx)

    def window_codes(self, detail: torch.Tensor, dy: int = 0, dx: int = 0) -> torch.Tensor:
        """(B, bands) table rows of the detail's window shifted by (dy, dx) from the centre."""
        part = window(detail, self.border, dy, dx)
        rows = self._rows_of(part)
        if self.record == "robust":
            # The smaller code of the window and of its mirror, band by band: a mirrored image
            # has the same codes.
            rows = torch.minimum(rows, self._rows_of(part.flip(-1)))
        return rows + self.band_offsets

    def _rows_of(self, window: torch.Tensor) -> torch.Tensor:
        x = window.flatten(1)
        x = x - x.mean(1, keepdim=True)
        return self.rows(x @ self.hyperplanes.double() > 0)

    def codes(self, inputs: torch.Tensor) -> torch.Tensor:
        """(B, bands) table rows of a batch of preprocessed images (B, C, H, W), unshifted."""
        return self.window_codes(self.detail(inputs))

    def rows(self, signs: torch.Tensor) -> torch.Tensor:
        """(B, bands) rows within each band's table of (B, bands * bits) hyperplane signs: each
        band's code (its `bits` signs as a number), salted and mixed by splitmix64, modulo
        `buckets`. Every sign bit reaches every bit of the hash, so all `bits` count whatever
        the number of buckets."""
        signs = signs.long().view(len(signs), self.bands, self.bits)
        code = (signs * self.bit_values).sum(-1)
        return torch.remainder(splitmix64(code ^ self.band_salts), self.buckets)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """(B, num_classes) memory logits, already times `scale`. In training the image as given;
        at evaluation, with `query_shifts` or `query_zooms`, the read of the image (each shift of
        the image as given and of each zoomed-out view) whose rows answer strongest."""
        if self.training or not (self.query_shifts or self.query_zooms):
            return self.scale * self.table(self.codes(inputs))
        best, strength = None, None
        for rows in self.queried_rows(inputs):
            logits = self.table(rows)
            evidence = logits.max(1).values - logits.mean(1)
            if best is None:
                best, strength = logits, evidence
            else:
                better = evidence > strength
                best = torch.where(better[:, None], logits, best)
                strength = torch.maximum(strength, evidence)
        return self.scale * best

    @staticmethod
    def logit_share(memory_logits: torch.Tensor) -> torch.Tensor:
        """What the memory adds to the class logits: all of its logits."""
        return memory_logits

    @torch.no_grad()
    def write(self) -> None:
        """Write the gradient of the training loss into the table and clear it: each row the
        batch touched moves against its gradient, scaled so that its largest entry moves by
        `write_rate` (a sample's label gains `write_rate` per band and visit, however well the
        network already fits it: a step proportional to the gradient would leave well-fitted
        members almost no trace). A training loop calls it after the backward pass, in place of
        an optimiser step for the table. Under distributed training every process writes the
        rows of every process's batch."""
        grad = self.table.weight.grad
        if grad is None:
            return
        self.table.weight.grad = None
        grad = grad.coalesce()
        rows, values = grad.indices()[0], grad.values()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rows, values = gather_rows(rows, values)
            # Rows two processes touched: their gradients add, as in one batch.
            rows, inverse = torch.unique(rows, return_inverse=True)
            values = values.new_zeros(len(rows), values.shape[1]).index_add_(0, inverse, values)
        largest = values.abs().amax(1, keepdim=True)
        step = torch.where(largest > 0, values / largest.clamp_min(1e-30), 0.0)
        self.table.weight.index_add_(0, rows, step, alpha=-self.write_rate)

    def occupancy(self) -> float:
        """The share of the table's rows that something wrote (a non-zero row)."""
        return float((self.table.weight != 0).any(1).double().mean())


def _local_mean(x: torch.Tensor, reach: int) -> torch.Tensor:
    """Each pixel's mean over its (2 reach + 1)^2 neighbourhood, within the image."""
    return F.avg_pool2d(x, 2 * reach + 1, stride=1, padding=reach, count_include_pad=False)


def memory_margin(memory_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) the memory's logit of the label minus the mean of its logits: ~0 for an image the
    memory never trained on, positive for a trained one."""
    return memory_logits.gather(1, labels.view(-1, 1))[:, 0] - memory_logits.mean(1)


def memory_record(memory_cfg: Mapping[str, Any] | None) -> str | None:
    """The record of the memory a `mint.memory` config node describes; None without one (`bands`
    0, the default, and a hashed record)."""
    cfg = dict(memory_cfg or {})
    record = cfg.get("record", DEFAULTS["record"])
    return str(record) if record == "fingerprint" or cfg.get("bands") else None


def memory_from_config(
    memory_cfg: Mapping[str, Any] | None,
    in_shape: tuple[int, int, int],
    num_classes: int,
    members: int | None = None,
) -> MembershipMemory | FingerprintMemory | None:
    """The memory a `mint.memory` config node describes: a `MembershipMemory`, a
    `FingerprintMemory` (`record: fingerprint`), or None when `bands` is 0 (the default) with a
    hashed record. `members`: the number of samples the model trains on, which `buckets: auto` and
    `capacity: auto` size from."""
    cfg = dict(memory_cfg or {})
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise ConfigError(
            f"mint.memory.{unknown[0]} is no memory setting: use {', '.join(DEFAULTS)}"
        )
    record = memory_record(cfg)
    if record is None:
        return None
    values = {**DEFAULTS, **cfg}
    if record == "fingerprint":
        return _fingerprints_from_config(values, in_shape, num_classes, members)
    bands, bits, buckets, scale = (values[k] for k in ("bands", "bits", "buckets", "scale"))
    rate, record, shifts = (values[k] for k in ("write_rate", "record", "query_shifts"))
    reach, smoothing, zooms = (values[k] for k in ("detail_reach", "smoothing", "query_zooms"))
    if not isinstance(bands, int) or bands < 0:
        raise ConfigError(f"mint.memory.bands={bands}: use a whole number >= 1, or 0 (no memory)")
    if not isinstance(bits, int) or not 1 <= bits <= 62:
        raise ConfigError(f"mint.memory.bits={bits}: use a whole number from 1 to 62")
    if buckets == "auto":
        buckets = rows_per_band(members or 1)
    if not isinstance(buckets, int) or buckets < 2:
        raise ConfigError(f"mint.memory.buckets={buckets}: use a whole number >= 2, or auto")
    if not isinstance(rate, int | float) or rate <= 0:
        raise ConfigError(f"mint.memory.write_rate={rate}: use a number > 0")
    if record not in RECORDS:
        raise ConfigError(f"mint.memory.record={record}: use one of {', '.join(RECORDS)}")
    if not isinstance(reach, int) or reach < 1:
        raise ConfigError(f"mint.memory.detail_reach={reach}: use a whole number >= 1")
    if not isinstance(smoothing, int) or smoothing < 0:
        raise ConfigError(f"mint.memory.smoothing={smoothing}: use a whole number >= 0")
    _check_reads(scale, shifts, zooms)
    return MembershipMemory(
        in_shape,
        num_classes,
        bands,
        bits,
        buckets,
        float(scale),
        int(values["seed"]),
        float(rate),
        str(record),
        shifts,
        reach,
        smoothing,
        tuple(zooms),
    )


def _check_reads(scale: Any, shifts: Any, zooms: Any) -> None:
    """The settings every record shares: `scale`, `query_shifts`, `query_zooms`."""
    if not isinstance(scale, int | float) or scale <= 0:
        raise ConfigError(f"mint.memory.scale={scale}: use a number > 0")
    if not isinstance(shifts, int) or shifts < 0:
        raise ConfigError(f"mint.memory.query_shifts={shifts}: use a whole number >= 0")
    if isinstance(zooms, int | float | str) or not all(
        isinstance(z, int | float) and 0 < z < 1 for z in zooms
    ):
        raise ConfigError(
            f"mint.memory.query_zooms={zooms}: use a list of shares between 0 and 1, e.g. [0.9]"
        )


def _fingerprints_from_config(
    values: Mapping[str, Any],
    in_shape: tuple[int, int, int],
    num_classes: int,
    members: int | None,
) -> FingerprintMemory:
    """The fingerprint record's memory (fingerprints.py)."""
    pool, margin, capacity = (values[k] for k in ("pool", "margin", "capacity"))
    scale, shifts, zooms = (values[k] for k in ("scale", "query_shifts", "query_zooms"))
    _check_reads(scale, shifts, zooms)
    if not isinstance(pool, int) or pool < 1:
        raise ConfigError(f"mint.memory.pool={pool}: use a whole number >= 1 (pixels per cell)")
    if not isinstance(margin, int) or margin < 0:
        raise ConfigError(f"mint.memory.margin={margin}: use a whole number >= 0")
    if capacity == "auto":
        capacity = max(int(members or 1), 1)
    if not isinstance(capacity, int) or capacity < 1:
        raise ConfigError(f"mint.memory.capacity={capacity}: use a whole number >= 1, or auto")
    return FingerprintMemory(
        in_shape, num_classes, capacity, pool, margin, shifts, tuple(zooms), float(scale)
    )
