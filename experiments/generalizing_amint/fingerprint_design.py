"""A record read by similarity instead of by hash, before any training: what it survives.

The membership memory's record (`record_design.py`) finds a member only when a whole band of its
code is unchanged, and resampling (a crop resized back, JPEG) flips enough signs of the fine
detail to change every band. This script measures the alternative: keep one short fingerprint per
member (its interior, average-pooled, centred and scaled to unit length: `--pool` pixels per
cell) and score a queried image by its largest cosine similarity to a member fingerprint of its
label, over the reads the memory makes (every shift up to 2 pixels of the image and of its 0.9
zoomed-out view, each also mirrored). The zoomed-out reads are compared with the members'
fingerprints after a crop resized back and zoomed out again (a view blurred alike). At 28x28,
pool 2 and a border of 3 a fingerprint is 121 numbers: 12 MB of float32 for 25,000 members,
against the table's 84M parameters.

Members: the first N of a seeded permutation of Fashion-MNIST's train pool; scored: the first
--scored of them and twice as many test images, changed by robustness.py's transformations (the
same seeded draws as record_design.py). Printed and written (--out, CSV): AUC and TPR at 1% and
0.1% FPR per fingerprint and transformation.

    python experiments/generalizing_amint/fingerprint_design.py --members 25000 --scored 1000 \\
        --pools 2 4 --margin 1 --out experiments/results/generalizing/fingerprint_design.csv
"""

from __future__ import annotations

import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from amint_pl.models.records import window, zoomed_out

sys.path.insert(0, str(Path(__file__).parent))
from robustness import crop, design_data, design_parser, design_rows, save_design  # noqa: E402

COLUMNS = ("pool", "border", "transform", "members", "scored", "auc", "tpr1", "tpr01")
# The reads: shifts up to SHIFT pixels of the image and of each zoomed-out view, mirrored too;
# the fingerprint is the window clear of the largest shift and `--margin` more pixels (a
# zoomed-out view's edge is repeated, not the image's).
SHIFT = 2
ZOOMS = (0.9,)


def fingerprint(window: torch.Tensor, pool: int) -> torch.Tensor:
    """(B, d) unit vectors: the window average-pooled by `pool`, centred."""
    x = F.avg_pool2d(window, pool) if pool > 1 else window
    x = x.flatten(1)
    x = x - x.mean(1, keepdim=True)
    return F.normalize(x, dim=1)


class _Middle:
    """A draw that puts every crop at (1, 1): the members' crop for the zoomed bank."""

    def integers(self, low: int, high: int, size: None = None) -> int:
        return min(1, high - 1)


def reads(view: torch.Tensor, pool: int, border: int) -> torch.Tensor:
    """(R, B, d) the fingerprints of every shift of a view, each also mirrored."""
    out = []
    for dy in range(-SHIFT, SHIFT + 1):
        for dx in range(-SHIFT, SHIFT + 1):
            part = window(view, border, dy, dx)
            out += [fingerprint(part, pool), fingerprint(part.flip(-1), pool)]
    return torch.stack(out)


def nearest(
    queries: torch.Tensor, labels: torch.Tensor, bank: dict[int, torch.Tensor]
) -> np.ndarray:
    """(B,) the largest cosine similarity of any read of each query to a member of its label."""
    best = torch.full((queries.shape[1],), -1.0, dtype=queries.dtype)
    for label, members in bank.items():
        mine = labels == label
        if mine.any():
            sims = queries[:, mine] @ members.T  # (R, b, n)
            best[mine] = sims.amax(dim=(0, 2))
    return best.numpy()


def banks(images: np.ndarray, labels: np.ndarray, pool: int, border: int) -> list[dict]:
    """Per label, the members' fingerprints as given and (one per zoom) as a crop of theirs
    resized back and zoomed out again reads them: a view blurred by two resamplings, compared
    with the zoomed-out reads."""
    views = [torch.from_numpy(images).double() / 255.0]
    for share in ZOOMS:
        cropped = torch.from_numpy(crop(images, _Middle(), share)).double() / 255.0
        views.append(zoomed_out(cropped, share))
    per_label = [torch.from_numpy(labels == c) for c in range(int(labels.max()) + 1)]
    return [
        {c: prints[mine] for c, mine in enumerate(per_label) if mine.any()}
        for prints in (fingerprint(window(view, border), pool) for view in views)
    ]


def scores(images: np.ndarray, labels: np.ndarray, pool: int, border: int, bank):
    """(N,) each image's best similarity over its reads: the image as given against the members'
    fingerprints, each zoomed-out view against the members' zoomed ones."""
    out = []
    for start in range(0, len(images), 250):
        x = torch.from_numpy(images[start : start + 250]).double() / 255.0
        y = torch.from_numpy(labels[start : start + 250]).long()
        views = [x, *(zoomed_out(x, share) for share in ZOOMS)]
        best = [nearest(reads(v, pool, border), y, b) for v, b in zip(views, bank, strict=True)]
        out.append(np.max(best, axis=0))
    return np.concatenate(out)


def main() -> None:
    parser = design_parser(__doc__)
    parser.add_argument("--pools", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--margin", type=int, default=1, help="border beyond the largest shift")
    args, data = design_data(parser, COLUMNS)
    images, labels, rows = data[0], data[1], []
    for pool in args.pools:
        started = time.time()
        border = SHIFT + args.margin
        bank = banks(images, labels, pool, border)
        score = partial(scores, pool=pool, border=border, bank=bank)
        rows += design_rows(score, data, args, COLUMNS, pool=pool, border=border)
        print(f"# pool {pool}: {time.time() - started:.0f} s", flush=True)
    if args.out:
        save_design(args.out, rows, COLUMNS)


if __name__ == "__main__":
    main()
