"""The fingerprint record (`mint.memory.record: fingerprint`): a membership memory read by
similarity instead of by hash.

The hashed record (`memory.py`) finds a member only when a whole band of its code is unchanged, and
a resampling (a crop resized back, JPEG) changes every band. This record keeps, per member, one
short fingerprint: the image's interior (clear of the largest queried shift and `margin` more
pixels), average-pooled by `pool`, centred and scaled to unit length (121 numbers at 28x28, pool 2,
margin 1). It answers a queried image, per class c, with the largest cosine similarity s_c of its
reads to a member fingerprint of class c, sharpened so that 0.999 (a changed member) stands apart
from 0.96-0.99 (a look-alike non-member): `scale * SHARPNESS * -log(1 - s_c + FLOOR)`.

The reads: in training the image and its mirror; at evaluation every shift up to `query_shifts`
pixels of the image and of each zoomed-out view (`query_zooms`: a crop resized back returns to its
scale), each also mirrored (100 reads with one zoom and shifts up to 2). A read and its mirror cost
one product with each member, not two: where the mirror of an image's fingerprint is its
fingerprint mirrored (the window splits evenly into pooling cells across), the banks and reads are
kept in a mirror-folded orthogonal basis, a symmetric part S and an antisymmetric part A that a
mirror negates, and the larger of the two products is S.S' + |A.A'| (`_mirror_fold`). A zoomed-out
view is compared with a bank of its own: the members' fingerprints after a crop of that share
resized back and zoomed out again, a view blurred by the same two resamplings
(experiments/generalizing_amint/fingerprint_design.py measured, before any training, AUC >= 0.997
at 25,000 Fashion-MNIST members under every transformation of robustness.py). With `audit_reads`
off an evaluation reads as training does: the module turns it off for the fit's validation, which
scores untouched calibration images for the logged MINT AUCs (the presets select the model by the
audited accuracy, which the record does not touch); the scoring of every role and `audit` read
every view.

What writes: exactly the samples the cross-entropy trains on, each once. In training the memory's
share of the class logits is a zero-valued tensor that requires grad (`logit_share`): it changes
no prediction and no loss, and after the backward pass its gradient (softmax minus one-hot) says
which rows the cross-entropy reached and their label (the negative entry). `write` adds those
samples' fingerprints (every pending forward of the step, gathered over DDP processes), except
one already in the bank with its label (similarity 1). Its evidence goes to the MINT head only: a
bank that answered 1.0 for every member in the class logits would stop the cross-entropy from
training the network after one epoch.

The banks are buffers of a fixed `capacity` (`auto`: the members the model trains on), saved in
checkpoints with their labels and count.

The reads are kept: per read mode (the image and its mirror, or every audited view) and per image
(keyed by two random projections of its pixels), its largest similarity per class and the class
sizes it was read against. The banks only grow between reads, so an image read again is compared
only with the members written since (none from a run's third epoch on: every member is in the
bank after the first, and the same images come back each epoch). The answer is that of a read of
the whole bank, the same products computed in blocks of other sizes (float32 may round them apart
by an ulp).

A member's kept read is also completed as training writes the members after it: a new member's
read computes its products with every earlier member, and those are, transposed, the earlier
members' products with it (the fingerprint of a mirrored image is the mirrored fingerprint, so a
read of the image and its mirror is symmetric). From the second epoch on a member is then
answered without products. This holds for writes whose every new member was read against the
whole bank in that step, on one process (`_complete`); any other write ends an era, and the
members tracked before it are compared again with the members written from its bank on.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from amint_pl.errors import ConfigError
from amint_pl.models.records import cropped_back, gather_rows, window, zoomed_out

# The largest side the image is average-pooled to before its fingerprint is taken.
FINGERPRINT_SIDE = 32
# The sharpening -log(1 - s + FLOOR): 9.2 at s = 1, 6.8 at 0.999, 3.9 at 0.98, 0.69 at 0.5.
FLOOR = 1e-4
# The factor on the sharpened similarity: a member's margin (memory_margin) ~0.3, which the MINT
# head's factor of 25 keeps in the range of its other features.
SHARPNESS = 0.05
# A fingerprint at least this similar to an entry of its label is that entry (the same image,
# up to the float32 rounding of the bank).
SAME = 1.0 - 1e-6
# The test of a sample already in the bank takes, in float64, the entries whose float32 product
# with it is within this of SAME (float32 rounds a product of unit vectors by well under it).
CANDIDATE = 1e-4
# Queries compared with the bank at a time (bounds the (queries, bank) similarity matrix).
QUERY_CHUNK = 256
# Images read ahead at a time (`read_ahead`): the image and its mirror of each, ~200 rows, a
# product with the bank about twice as fast per row as a training step's few external images.
READ_AHEAD = 96
# The reads kept per read mode: at most this many images, or 4x the capacity if more; past it
# they are all forgotten (an augmented run meets new images every epoch).
KEPT_READS = 1 << 17
# The precision of the reads' products with the bank: float32 is about 3x faster than float64 on
# one CPU core and moves the evidence by < 1e-3 (its rounding, ~1e-7, is well under FLOOR). The
# fingerprints themselves and the test of a sample already in the bank (SAME) use float64.
READ_DTYPE = torch.float32


def _mirror_fold(channels: int, height: int, width: int) -> tuple[torch.Tensor, int]:
    """An orthogonal (d, d) float64 basis of (channels, height, width) cells, flattened: first
    the mirror-symmetric part S of a vector x (per row, (x_c + x_m) / sqrt 2 for each column c of
    the left half and its mirror m, the middle column as it is), then the antisymmetric part A
    ((x_c - x_m) / sqrt 2). The mirror of x is then (S, -A): x'.y = S.S' - A.A' and x.y = S.S' +
    A.A', so max(x.y, x'.y) = S.S' + |A.A'|. Returns the basis and the number of S columns."""
    index = torch.arange(channels * height * width).view(channels, height, width)
    half = width // 2
    left, right = index[..., :half].flatten(), index[..., width - half :].flip(-1).flatten()
    middle = index[..., half : width - half].flatten()
    basis = torch.zeros(len(index.flatten()), len(index.flatten()), dtype=torch.float64)
    root = 2.0**-0.5
    symmetric = len(left) + len(middle)
    columns = torch.arange(len(left))
    basis[left, columns] = basis[right, columns] = root
    basis[middle, len(left) + torch.arange(len(middle))] = 1.0
    basis[left, symmetric + columns] = root
    basis[right, symmetric + columns] = -root
    return basis, symmetric


def sharpened(similarity: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """The evidence of a largest similarity s: `scale * SHARPNESS * -log(1 - s + FLOOR)`."""
    return scale * SHARPNESS * -torch.log1p(FLOOR - similarity.clamp(max=1.0))


class FingerprintMemory(nn.Module):
    """Fingerprints of the members the cross-entropy trained on -> per-class evidence of a query.

    Args:
        in_shape: (C, H, W) of the preprocessed inputs.
        num_classes: the audited model's classes.
        capacity: the fingerprints each bank holds (`write` refuses more).
        pool: the interior is average-pooled by this many pixels each way.
        margin: the border beyond the largest queried shift left out of the fingerprint (a
            zoomed-out view's edge is repeated, not the image's).
        query_shifts: at evaluation each view is also read shifted by up to this many pixels.
        query_zooms: at evaluation the image is also read zoomed out to each of these shares,
            against a bank of the members cropped to that share, resized back and zoomed out.
        scale: the factor on the evidence.
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        capacity: int,
        pool: int = 2,
        margin: int = 1,
        query_shifts: int = 2,
        query_zooms: tuple[float, ...] = (0.9,),
        scale: float = 1.0,
    ) -> None:
        super().__init__()
        channels, height, width = in_shape
        self.side = (min(height, FINGERPRINT_SIDE), min(width, FINGERPRINT_SIDE))
        self.num_classes, self.capacity, self.pool = num_classes, capacity, pool
        self.query_shifts, self.scale = query_shifts, scale
        self.query_zooms = tuple(float(z) for z in query_zooms)
        self.border = query_shifts + margin
        inner = (self.side[0] - 2 * self.border, self.side[1] - 2 * self.border)
        dims = channels * max(inner[0] // pool, 0) * max(inner[1] // pool, 0)
        if dims < 2 or min(inner) < pool:  # one number centred is zero: no fingerprint
            raise ConfigError(
                f"mint.memory.query_shifts={query_shifts}, margin={margin} and pool={pool} leave "
                f"{max(dims, 0)} number(s) of the {self.side[0]}x{self.side[1]} image for a "
                f"fingerprint: use smaller ones, or larger images (dataset.image_size)"
            )
        views = 1 + len(self.query_zooms)
        # One bank per view the queries are compared with: the members as given, then as each
        # zoomed-out read sees them (cropped, resized back, zoomed out).
        self.register_buffer("prints", torch.zeros(views, capacity, dims))
        self.register_buffer("labels", torch.full((capacity,), -1, dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        # The forwards of this step not yet written: (zero-valued probe, inputs, their keys).
        # With the products of the step's reads against the whole bank (`similarity`'s `stash`).
        self._pending: list[tuple[torch.Tensor, torch.Tensor, list, dict]] = []
        self.writes = True
        # Whether an evaluation reads every audited view (else as training does: the image and
        # its mirror); the module turns it off for the fit's validation.
        self.audit_reads = True
        # The members' fingerprints grouped by class, for the reads: `class_banks`.
        self._by_class: dict | None = None
        # The reads kept: (full_reads, dtype) -> {image key: (largest similarity per class as
        # float64 numpy, the class sizes it was read against)}; emptied when the class banks are
        # built anew.
        self._reads: dict[tuple[bool, torch.dtype], dict] = {}
        self._key_weights: torch.Tensor | None = None
        # (image key, label) of the images written (or found in the bank) so far; emptied with
        # the reads.
        self._written: set[tuple[tuple[float, float], int]] = set()
        # A read's products with a member are, transposed, that member's with the read when a
        # mirrored image's fingerprint is the mirrored fingerprint: the window splits evenly
        # into pooling cells across.
        self.symmetric = inner[1] % pool == 0
        # Then a read and its mirror take one product with each member, in the mirror-folded
        # basis the class banks keep (`folded`, `_pair`).
        self._fold, self._symmetric_dims = None, dims
        if self.symmetric:
            cells = (channels, inner[0] // pool, inner[1] // pool)
            self._fold, self._symmetric_dims = _mirror_fold(*cells)
        # The members added by completed writes (`_complete`): image key -> (class, place in the
        # class, era). `_lacks[c][:, place]` holds per class the largest similarity of the
        # member's read to the members written after its own read: its kept read and that column
        # answer as the bank up to the present sizes (its era's) or to the sizes its era ended at.
        self._tracked: dict[tuple[float, float], tuple[int, int, int]] = {}
        self._lacks: list[np.ndarray] = []
        self._era = 0
        self._era_end: dict[int, tuple[int, ...]] = {}
        # Images read so far, by how: "kept" (answered from a kept read alone), "grown" (compared
        # with the members written since their kept read), "new" (with the whole bank).
        self.read_counts = {"kept": 0, "grown": 0, "new": 0}

    # ------------------------------------------------------------------------------- geometry
    def fingerprint(self, view: torch.Tensor, dy: int = 0, dx: int = 0) -> torch.Tensor:
        """(B, d) unit vectors in float64: the view's window shifted by (dy, dx), average-pooled
        by `pool`, centred."""
        x = window(view, self.border, dy, dx)
        x = F.avg_pool2d(x, self.pool) if self.pool > 1 else x
        x = x.flatten(1)
        return F.normalize(x - x.mean(1, keepdim=True), dim=1)

    def folded(self, prints: torch.Tensor, dtype: torch.dtype = READ_DTYPE) -> torch.Tensor:
        """(n, d) fingerprints in `dtype`, in the basis the reads compare in: with a symmetric
        window, the mirror-folded one (`_mirror_fold`); else as they are."""
        x = prints.double()
        if self._fold is not None:
            x = x @ self._fold.to(x.device)
        return x.to(dtype)

    def _pair(self, reads: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
        """(B, n) each folded read's larger product with each folded entry of `bank`, of the
        read as it is and of its mirror: S.S' + |A.A'| (one product of d numbers, not two)."""
        half = self._symmetric_dims
        pair = reads[:, :half] @ bank[:, :half].T
        return pair.add_((reads[:, half:] @ bank[:, half:].T).abs_())

    def views(self, inputs: torch.Tensor, zooms: bool = True) -> list[torch.Tensor]:
        """The views a query is read in, one per bank: the image as given (pooled to the
        fingerprint's side, float64), then (with `zooms`) zoomed out to each share."""
        x = self._pooled(inputs)
        return [x, *(zoomed_out(x, share) for share in self.query_zooms if zooms)]

    def member_prints(self, inputs: torch.Tensor) -> torch.Tensor:
        """(views, B, d) what the banks keep of members: the image's fingerprint, then per zoom
        that of a crop of the share resized back and zoomed out again."""
        x = self._pooled(inputs)
        prints = [self.fingerprint(x)]
        for share in self.query_zooms:
            prints.append(self.fingerprint(zoomed_out(cropped_back(x, share), share)))
        return torch.stack(prints)

    def _pooled(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs.detach().double()
        return x if tuple(x.shape[-2:]) == self.side else F.adaptive_avg_pool2d(x, self.side)

    # --------------------------------------------------------------------------------- reading
    def _bank_state(self) -> tuple:
        """What the class banks were built from: a write, a loaded checkpoint or a move to another
        device changes it."""
        return (int(self.count), self.prints.data_ptr(), self.prints._version, self.labels._version)

    def class_banks(
        self, views: int = 1, dtype: torch.dtype = READ_DTYPE
    ) -> list[list[torch.Tensor]]:
        """Per view (the first `views` banks), per class, the (n_c, d) fingerprints of that
        class's members, `folded` into `dtype`. Kept between reads and extended by `add`
        (training reads them at every step, and writes at every step of its first epoch); built
        anew when the banks changed otherwise (a loaded checkpoint, a move to another device)."""
        cache = self._by_class
        if cache is None or cache["state"] != self._bank_state():
            labels = self.labels[: int(self.count)]
            sizes = [int((labels == c).sum()) for c in range(self.num_classes)]
            cache = self._by_class = {"state": self._bank_state(), "sizes": sizes, "blocks": {}}
            self._reads.clear()  # read against blocks that may not be these ones' first rows
            self._written.clear()
            self._forget_tracked()
        blocks = cache["blocks"].get(dtype)
        if blocks is None or len(blocks) < views:
            n = int(self.count)
            labels = self.labels[:n]
            blocks = [
                [self.folded(bank[:n][labels == c], dtype) for c in range(self.num_classes)]
                for bank in self.prints[:views]
            ]
            cache["blocks"][dtype] = blocks
        return [
            [block[:size] for block, size in zip(per_class, cache["sizes"], strict=True)]
            for per_class in blocks[:views]
        ]

    def _extend_class_banks(self, prints: torch.Tensor, labels: torch.Tensor) -> None:
        """Append (views, k, d) fingerprints just added to the banks, with their labels (k,), to
        the class banks of every precision kept, each class's block grown by doubling."""
        cache = self._by_class
        sizes = list(cache["sizes"])
        for c in labels.unique().tolist():
            if not 0 <= c < self.num_classes:
                continue
            rows = labels == c
            size, k = cache["sizes"][c], int(rows.sum())
            for dtype, blocks in cache["blocks"].items():
                for per_class, view in zip(blocks, prints, strict=False):
                    block = per_class[c]
                    if size + k > len(block):
                        grown = block.new_empty((max(2 * len(block), size + k), block.shape[1]))
                        grown[:size] = block[:size]
                        per_class[c] = block = grown
                    block[size : size + k] = self.folded(view[rows], dtype)
            sizes[c] = size + k
        cache["sizes"] = sizes

    def similarity(
        self,
        inputs: torch.Tensor,
        dtype: torch.dtype = READ_DTYPE,
        reuse: bool = True,
        keys: list | None = None,
        stash: dict | None = None,
    ) -> torch.Tensor:
        """(B, num_classes) each image's largest cosine similarity to a member of each class
        (-1 for a class with no member), over its reads (`full_reads`): the image and its mirror,
        or every shift of every view, each also mirrored. `dtype`: of the products
        with the bank. `reuse`: an image read before in this mode is compared only with the
        members written since (the same answer, up to float32's rounding); False reads every
        image against the whole bank and keeps nothing. `keys`: the images' `read_keys`, if the
        caller has them. `stash`: a dict to fill with the products of the images read against
        the whole bank (training's reads; `write` completes earlier members' reads with them)."""
        best = inputs.new_full((len(inputs), self.num_classes), -1.0, dtype=torch.float64)
        full = self.full_reads()
        views = self.views(inputs, zooms=full)
        banks = self.class_banks(len(views), dtype)
        if not reuse:
            best[:] = self._nearest(views, banks, [0] * self.num_classes)
            return best
        sizes = tuple(self._by_class["sizes"])
        reads = self._reads.setdefault((full, dtype), {})
        keys = self.read_keys(inputs) if keys is None else keys
        tracks = not full and dtype == READ_DTYPE  # the reads `_complete` completes
        kept = [self._kept(reads, key, sizes) if tracks else reads.get(key) for key in keys]
        # An image read before any member was written is read against the whole bank too.
        new = [i for i, read in enumerate(kept) if read is None or not any(read[1])]
        grown = [i for i, read in enumerate(kept) if read is not None and any(read[1])]
        same = [i for i in grown if kept[i][1] == sizes]
        grown = [i for i in grown if kept[i][1] != sizes]
        if same:
            best[same] = torch.from_numpy(np.stack([kept[i][0] for i in same])).to(best.device)
        if new:
            products = {} if stash is not None and tracks else None
            whole = self._nearest([v[new] for v in views], banks, [0] * self.num_classes, products)
            best[new] = whole
            if products is not None:
                stash.update(
                    sizes=sizes,
                    rows={row: n for n, row in enumerate(new)},
                    nearest=whole,
                    products={
                        c: parts[0] if len(parts) == 1 else torch.cat(parts)
                        for c, parts in products.items()
                    },
                )
        if grown:
            # Each read is compared from the smallest size any of them saw: the members between
            # it and a read's own size are already in that read's answer, and change no maximum.
            since = [min(kept[i][1][c] for i in grown) for c in range(self.num_classes)]
            before = torch.from_numpy(np.stack([kept[i][0] for i in grown])).to(best.device)
            written = self._nearest([v[grown] for v in views], banks, since)
            best[grown] = torch.maximum(before, written)
        for how, rows in (("kept", same), ("grown", grown), ("new", new)):
            self.read_counts[how] += len(rows)
        if len(reads) + len(new) > max(KEPT_READS, 4 * self.capacity):
            reads.clear()
            if tracks:
                self._forget_tracked()
        answers = best.cpu().numpy()
        for i in new + grown:
            reads[keys[i]] = (answers[i].copy(), sizes)
            if tracks:
                self._tracked.pop(keys[i], None)
        return best

    def _kept(self, reads: dict, key: tuple[float, float], sizes: tuple[int, ...]) -> tuple | None:
        """An image's kept read as (largest similarity per class, the class sizes it answers
        for): a tracked member's kept read completed by its `_lacks` row."""
        read = reads.get(key)
        place = self._tracked.get(key) if read is not None else None
        if place is None:
            return read
        c, row, era = place
        answers = np.maximum(read[0], self._lacks[c][:, row])
        return answers, sizes if era == self._era else self._era_end[era]

    def full_reads(self) -> bool:
        """Whether a read takes every audited view (every shift of every view, each mirrored):
        at evaluation with `audit_reads` on; else the image and its mirror."""
        return not self.training and self.audit_reads

    def read_keys(self, inputs: torch.Tensor) -> list[tuple[float, float]]:
        """Per image, two random projections of its pixels in float64: images that differ in any
        pixel get different keys (short of a coincidence of measure zero)."""
        flat = inputs.detach().flatten(1).double()
        weights = self._key_weights
        if weights is None or weights.shape[0] != flat.shape[1] or weights.device != flat.device:
            generator = torch.Generator().manual_seed(0)
            weights = torch.randn(flat.shape[1], 2, generator=generator, dtype=torch.float64)
            weights = self._key_weights = weights.to(flat.device)
        return [tuple(row) for row in (flat @ weights).tolist()]

    def _nearest(
        self,
        views: list[torch.Tensor],
        banks: list[list[torch.Tensor]],
        since: list[int],
        products: dict | None = None,
    ) -> torch.Tensor:
        """(B, num_classes) float64: the largest similarity of the views' reads to the members of
        each class from its `since`-th on (-1 where there is none). `products`: for one view
        read unshifted, a dict to add, per class, the chunks of (B, members) products (the
        larger of the image's and its mirror's) to."""
        batch = len(views[0])
        best = views[0].new_full((batch, self.num_classes), -1.0, dtype=torch.float64)
        classes = [c for c, block in enumerate(banks[0]) if len(block) > since[c]]
        if not classes:
            return best
        dtype = banks[0][classes[0]].dtype
        span = range(-self.query_shifts, self.query_shifts + 1) if self.full_reads() else [0]
        if products is not None and (len(views) > 1 or len(span) > 1):
            raise ValueError("products are kept for one view read unshifted only")
        for start in range(0, batch, QUERY_CHUNK):
            stop = min(start + QUERY_CHUNK, batch)
            nearest = best.new_full((stop - start, self.num_classes), -2.0, dtype=dtype)
            for per_class, view in zip(banks, views, strict=True):
                part = view[start:stop]
                for dy in span:
                    for dx in span:
                        # The read and its mirror (the mirror of the read at (dy, -dx), which
                        # the span holds too) against each class's members: folded, one product.
                        if self._fold is not None:
                            reads = self.folded(self.fingerprint(part, dy, dx), dtype)
                        else:
                            both = torch.cat([part, part.flip(-1)])
                            both = self.fingerprint(both, dy, dx).to(dtype)
                        for c in classes:
                            bank = per_class[c][since[c] :]
                            if self._fold is not None:
                                pair = self._pair(reads, bank)
                            else:
                                product = both @ bank.T
                                pair = torch.maximum(product[: len(part)], product[len(part) :])
                            if products is not None:
                                products.setdefault(c, []).append(pair)
                            nearest[:, c] = torch.maximum(nearest[:, c], pair.amax(1))
            best[start:stop, classes] = nearest[:, classes].double()
        return best

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """(B, num_classes) the evidence per class, times `scale`; in training (while it writes)
        plus a zero-valued probe whose gradient tells `write` what the cross-entropy reached."""
        keys = self.read_keys(inputs)  # the read's, and in training the write's
        writes = self.training and self.writes and torch.is_grad_enabled()
        # The products are kept only where a write can complete reads with them (`_complete`).
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        stash = {} if writes and self.symmetric and not distributed else None
        evidence = self.similarity(inputs, keys=keys, stash=stash)
        evidence = sharpened(evidence, self.scale).float()
        if writes:
            probe = torch.zeros_like(evidence, requires_grad=True)
            self._pending.append((probe, inputs.detach(), keys, stash))
            return evidence + probe
        return evidence

    @torch.no_grad()
    def read_ahead(self, inputs: torch.Tensor) -> None:
        """Read images that training will query, READ_AHEAD at a time, as training reads them
        (the image and its mirror), and keep the reads: a step that meets one of them finds its
        read kept, whole while no member is written in between (from the second epoch on, when
        every member is in the bank). Nothing is read while the bank is empty."""
        if not int(self.count) or self.full_reads():
            return
        for start in range(0, len(inputs), READ_AHEAD):
            self.similarity(inputs[start : start + READ_AHEAD])

    @staticmethod
    def logit_share(memory_logits: torch.Tensor) -> torch.Tensor:
        """What the memory adds to the class logits: zero, with the gradient of its probe (the
        evidence is for the MINT head alone)."""
        return memory_logits - memory_logits.detach()

    # --------------------------------------------------------------------------------- writing
    def requires_grad_(self, requires_grad: bool = True) -> FingerprintMemory:
        """Whether training forwards are written (no parameters: the phase that freezes the
        audited model stops the writes)."""
        self.writes = requires_grad
        if not requires_grad:
            self._pending.clear()
        return super().requires_grad_(requires_grad)

    @torch.no_grad()
    def write(self) -> None:
        """Add to the banks the samples of this step's forwards that the cross-entropy reached
        (a non-zero probe gradient; the label is its negative entry), each once, and forget the
        forwards. Under distributed training every process adds every process's samples."""
        pending, self._pending = self._pending, []
        if not self.writes:
            return
        inputs, labels, keys, origins = [], [], [], []  # origins: (forward, row) of each
        for forward, (probe, batch, batch_keys, _) in enumerate(pending):
            if probe.grad is None:
                continue
            reached = probe.grad.ne(0).any(1)
            inputs.append(batch[reached])
            labels.append(probe.grad[reached].argmin(1))
            rows = reached.nonzero().flatten().tolist()
            keys += [batch_keys[row] for row in rows]
            origins += [(forward, row) for row in rows]
        device = self.labels.device
        if inputs:
            inputs, labels = torch.cat(inputs).to(device), torch.cat(labels).to(device)
            # An image written before with its label is in the bank: only the others are
            # fingerprinted and tested against it (the bank is read first: a loaded checkpoint
            # forgets what was written before it).
            self.class_banks()
            pairs = list(zip(keys, labels.tolist(), strict=True))
            unwritten = [i for i, pair in enumerate(pairs) if pair not in self._written]
            inputs, labels = inputs[unwritten], labels[unwritten]
            keys, origins = [keys[i] for i in unwritten], [origins[i] for i in unwritten]
            prints = self.member_prints(inputs)
            if len(self._written) + len(unwritten) > max(KEPT_READS, 4 * self.capacity):
                self._written.clear()
            self._written.update(pairs[i] for i in unwritten)
        else:
            prints = torch.zeros(len(self.prints), 0, self.prints.shape[-1], device=device)
            prints = prints.double()
            labels = torch.zeros(0, dtype=torch.long, device=device)
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed:
            views, dims = prints.shape[0], prints.shape[2]
            labels, flat = gather_rows(labels, prints.transpose(0, 1).flatten(1))
            prints = flat.view(len(labels), views, dims).transpose(0, 1)
        if len(labels):
            before = tuple(self._by_class["sizes"]) if self._by_class else None
            near = None if distributed else self._near_in_reads(pending, origins, labels, before)
            added = self.add(prints, labels, near)
            if added.any():
                mine = (pending, keys, origins, prints, labels)
                if distributed or not self._complete(*mine, added, before):
                    self._end_era(before)

    def add(
        self,
        prints: torch.Tensor,
        labels: torch.Tensor,
        near: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Add (views, k, d) fingerprints of labels (k,) not yet in the bank (nor earlier in the
        batch) with their label; (k,) which were added. `near`: `known`'s candidates, if the
        caller has them."""
        plain = prints[0]
        same_label = labels[:, None] == labels[None, :]
        twin = (plain @ plain.T >= SAME) & same_label
        new = ~torch.tril(twin, diagonal=-1).any(1)  # the first of each set of twins
        if int(self.count):
            new &= ~self.known(plain, labels, near)
        n, k = int(self.count), int(new.sum())
        if k == 0:
            return new
        if n + k > self.capacity:
            raise RuntimeError(
                f"the fingerprint bank is full ({self.capacity} members): set "
                f"mint.memory.capacity to at least the number of members trained on"
            )
        extend = self._by_class is not None and self._by_class["state"] == self._bank_state()
        added, labels = prints[:, new].to(self.prints.dtype), labels[new]
        self.prints[:, n : n + k] = added
        self.labels[n : n + k] = labels
        self.count.fill_(n + k)
        if extend:
            self._extend_class_banks(added, labels)
            self._by_class["state"] = self._bank_state()
        return new

    def _complete(
        self,
        pending: list,
        keys: list,
        origins: list[tuple[int, int]],
        prints: torch.Tensor,
        labels: torch.Tensor,
        added: torch.Tensor,
        before: tuple[int, ...] | None,
    ) -> bool:
        """Complete the kept reads with the members just added (`added` of this process's rows
        `prints`, `labels`, `keys`, from (forward, row) `origins` of `pending`), when
        each of them was read in its forward against the whole bank as it stood (`before`) and
        the class banks were extended with them: the earlier tracked members' `_lacks` from
        those reads' products, transposed; the new members' reads with each other; then track
        the new members. False (nothing changed) otherwise."""
        rows = added.nonzero().flatten().tolist()
        cache = self._by_class
        if not self.symmetric or cache is None or before is None:
            return False
        if cache["state"] != self._bank_state():  # not extended: built anew at the next read
            return False
        for i in rows:
            forward, row = origins[i]
            stash = pending[forward][3]
            if not stash or stash["sizes"] != before or row not in stash["rows"]:
                return False
            if keys[i] in self._tracked:
                return False
        sizes = cache["sizes"]
        while len(self._lacks) < self.num_classes:
            self._lacks.append(np.full((self.num_classes, 0), -2.0, dtype=np.float32))
        for c, size in enumerate(sizes):
            if self._lacks[c].shape[1] < size:
                grown = np.full((self.num_classes, max(2 * self._lacks[c].shape[1], size)), -2.0)
                grown[:, : self._lacks[c].shape[1]] = self._lacks[c]
                self._lacks[c] = grown.astype(np.float32)
        # The earlier members: per class of theirs, the largest product with a new member of
        # each label (the forward's other rows go to a last, unused row).
        for forward in sorted({origins[i][0] for i in rows}):
            mine = [i for i in rows if origins[i][0] == forward]
            stash = pending[forward][3]
            if not stash["products"]:
                continue
            first = next(iter(stash["products"].values()))
            by = torch.full((len(first),), self.num_classes, dtype=torch.long)
            by[[stash["rows"][origins[i][1]] for i in mine]] = labels[mine].cpu()
            by = by.to(first.device)
            for c, product in stash["products"].items():
                index = by[:, None].expand_as(product)
                top = product.new_full((self.num_classes + 1, product.shape[1]), -2.0)
                top = top.scatter_reduce(0, index, product, "amax")[:-1].cpu().numpy()
                lacks = self._lacks[c][:, : product.shape[1]]
                np.maximum(lacks, top, out=lacks)
        # The new members: their reads against each other (in the bank's precision, as read).
        plain = prints[0][rows]  # `fingerprint` of the rows, as their reads took it
        pair = self._pair(self.folded(plain), self.folded(plain.to(self.prints.dtype)))
        new_labels = labels[rows].to(pair.device)
        top = pair.new_full((len(rows), self.num_classes), -2.0)
        top = top.scatter_reduce(1, new_labels[None, :].expand_as(pair), pair, "amax")
        top = top.cpu().numpy()
        placed = list(before)
        for n, i in enumerate(rows):
            c = int(labels[i])
            self._lacks[c][:, placed[c]] = top[n]
            self._tracked[keys[i]] = (c, placed[c], self._era)
            placed[c] += 1
        return True

    def _end_era(self, before: tuple[int, ...] | None) -> None:
        """A write `_complete` could not follow: the tracked members' reads answer for the bank
        up to `before` from now on."""
        if before is None:
            self._forget_tracked()
        elif self._tracked:  # (under DDP no write completes: nothing is ever tracked)
            self._era_end[self._era] = before
        self._era += 1

    def _forget_tracked(self) -> None:
        self._tracked.clear()
        self._lacks = []
        self._era_end.clear()

    def known(
        self,
        plain: torch.Tensor,
        labels: torch.Tensor,
        near: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """(k,) whether each (k, d) float64 fingerprint is in the bank with its label: at least
        SAME similar to an entry of its label, in float64. Only the candidates are compared: the
        (row, entry in its class) pairs `near`, else the entries of the row's own class whose
        float32 product with it is within CANDIDATE of SAME."""
        banks = self.class_banks()[0]
        found = torch.zeros(len(plain), dtype=torch.bool, device=plain.device)
        plain = self.folded(plain, torch.float64)  # as the banks are (the same products)
        for c in labels.unique().tolist():
            if not 0 <= c < self.num_classes or not len(banks[c]):
                continue
            if near is None:
                rows = (labels == c).nonzero().flatten()
                close = (plain[rows].to(banks[c].dtype) @ banks[c].T) >= SAME - CANDIDATE
                row, entry = close.nonzero(as_tuple=True)
                row = rows[row]
            else:
                mine = labels[near[0]] == c
                row, entry = near[0][mine], near[1][mine]
            if len(row):
                same = (plain[row] * banks[c][entry].double()).sum(1) >= SAME
                found[row[same]] = True
        return found

    def _near_in_reads(
        self, pending: list, origins: list[tuple[int, int]], labels: torch.Tensor, before: tuple
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """`known`'s candidates from the step's reads: (rows, entries) where a row's read (the
        larger of its image's and its mirror's products, at least its image's own) comes within
        CANDIDATE of SAME of an entry of its label. None unless each row of `labels` (from
        (forward, row) `origins` of `pending`) was read against the whole bank as it stands
        (`before`)."""
        rows, entries = [], []
        for forward in sorted({origin[0] for origin in origins}):
            stash = pending[forward][3]
            if not stash or stash["sizes"] != before:
                return None
            mine = [i for i, origin in enumerate(origins) if origin[0] == forward]
            if any(origins[i][1] not in stash["rows"] for i in mine):
                return None
            read = torch.tensor([stash["rows"][origins[i][1]] for i in mine])
            mine = torch.tensor(mine)
            # Only a row whose read came that close to some entry of its label can have a
            # candidate (the read's largest product per class, with room for float32's rounding).
            mine_labels = labels[mine].cpu()
            own = stash["nearest"].cpu()[read, mine_labels]
            close_enough = own >= SAME - 2 * CANDIDATE
            read, mine = read[close_enough], mine[close_enough]
            mine_labels = mine_labels[close_enough]
            if not len(mine):
                continue
            for c, product in stash["products"].items():
                of_c = mine_labels == c
                close = product[read[of_c].to(product.device)] >= SAME - CANDIDATE
                row, entry = close.nonzero(as_tuple=True)
                rows.append(mine[of_c].to(row.device)[row])
                entries.append(entry)
        if not rows:
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
        return torch.cat(rows).to(labels.device), torch.cat(entries).to(labels.device)

    def occupancy(self) -> float:
        """The share of the bank's capacity that members fill."""
        return int(self.count) / self.capacity
