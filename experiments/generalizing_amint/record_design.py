"""What a membership record survives, before any training: every member writes the rows of its
codes, and a changed copy of a member, or an untouched-and-changed non-member, is scored by the
number of its bands that read a row a member of its label wrote (the most over the memory's
queried reads: shifts, zoomed-out views). The trained memory writes the same rows (its codes are
those of the image as given) and answers with the logits written there, so this is the record's
own ceiling, without the network, the write's learning rate or the head.

Members: the first N of a seeded permutation of Fashion-MNIST's train pool (all write); scored:
the first --scored of them and twice as many test images, each changed by the transformations
of robustness.py (seeded per transformation). Printed and written (--out, CSV): AUC and TPR at
1% FPR per record and transformation.

    python experiments/generalizing_amint/record_design.py --members 25000 --scored 1000 \\
        --out experiments/results/generalizing/record_design.csv
"""

from __future__ import annotations

import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from amint_pl.models.memory import memory_from_config

sys.path.insert(0, str(Path(__file__).parent))
from robustness import design_data, design_parser, design_rows, save_design  # noqa: E402

# The records compared: memory settings over the defaults (`mint=active_general` is `fine24`).
RECORDS = {
    "fine24": {"bands": 16, "record": "robust", "query_shifts": 2},
    "smooth62_zoom": {
        "bands": 16,
        "bits": 62,
        "record": "robust",
        "query_shifts": 2,
        "detail_reach": 2,
        "smoothing": 1,
        "query_zooms": [0.9],
    },
}
COLUMNS = ("record", "transform", "members", "scored", "auc", "tpr1")


def _batches(images: np.ndarray, labels: np.ndarray, size: int = 1000):
    for start in range(0, len(images), size):
        x = torch.from_numpy(images[start : start + size]).double() / 255.0
        yield x, torch.from_numpy(labels[start : start + size]).long()


def written(memory, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The (row, label) keys the members write: their unshifted codes, as training writes."""
    keys = [(memory.codes(x) * 16 + y[:, None]).flatten() for x, y in _batches(images, labels)]
    return np.unique(torch.cat(keys).numpy())


def hits(memory, images: np.ndarray, labels: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """(N,) the most bands, over the memory's queried reads, whose row a member of the same
    label wrote."""
    out = []
    for x, y in _batches(images, labels):
        best = torch.zeros(len(x), dtype=torch.long)
        for rows in memory.queried_rows(x):
            found = torch.from_numpy(np.isin((rows * 16 + y[:, None]).numpy(), keys)).sum(1)
            best = torch.maximum(best, found)
        out.append(best.numpy())
    return np.concatenate(out).astype(np.float64)


def main() -> None:
    parser = design_parser(__doc__)
    parser.add_argument("--records", nargs="+", default=list(RECORDS), choices=RECORDS)
    args, data = design_data(parser, COLUMNS)
    images, labels, rows = data[0], data[1], []
    for name in args.records:
        started = time.time()
        memory = memory_from_config(RECORDS[name], (1, 28, 28), 10, args.members)
        keys = written(memory, images, labels)
        rows += design_rows(partial(hits, memory, keys=keys), data, args, COLUMNS, record=name)
        print(f"# {name}: {time.time() - started:.0f} s", flush=True)
    if args.out:
        save_design(args.out, rows, COLUMNS)


if __name__ == "__main__":
    main()
