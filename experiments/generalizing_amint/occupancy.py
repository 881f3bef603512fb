"""How full the membership memory's table gets, and how often a non-member reads a row a member
wrote, at a given number of members (no training: the rows a member writes are its codes).

For each member count and record, the memory of `mint=active_general` (its settings, `buckets:
auto`) is built as a run of that many members builds it; the first N images of a seeded
permutation of Fashion-MNIST's train pool are the members, the 10,000 test images the
non-members. Printed and written (--out, Markdown) per row: the rows per band, the share of rows
written (occupancy), and per non-member the mean number of its `bands` rows that a member wrote
(unshifted; with `query_shifts`, the most over the queried shifts too).

    python experiments/generalizing_amint/occupancy.py --members 6000 25000 \\
        [--out experiments/results/generalizing/occupancy.md]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from amint_pl.data.benchmarks import load_benchmark
from amint_pl.models.memory import DEFAULTS, memory_from_config

# The records measured: the memory settings over the defaults of `mint=active_general`.
RECORDS = {
    "exact": {"bands": 16},
    "robust": {"bands": 16, "record": "robust", "query_shifts": 2},
}


def written_rows(memory, images: np.ndarray, batch: int = 2000) -> torch.Tensor:
    """(N, bands) the unshifted rows of uint8 images (the rows training writes)."""
    out = []
    for start in range(0, len(images), batch):
        x = torch.from_numpy(images[start : start + batch]).double() / 255.0
        out.append(memory.codes(x))
    return torch.cat(out)


def hits(memory, images: np.ndarray, written: torch.Tensor, batch: int = 2000) -> tuple:
    """(mean rows a member wrote per image unshifted, the same at the shift with the most)."""
    mask = torch.zeros(memory.bands * memory.buckets, dtype=torch.bool)
    mask[written.flatten()] = True
    plain, best = [], []
    for start in range(0, len(images), batch):
        x = torch.from_numpy(images[start : start + batch]).double() / 255.0
        counts = torch.stack([mask[rows].sum(1) for rows in memory.queried_rows(x)])
        plain.append(mask[memory.codes(x)].sum(1))
        best.append(counts.max(0).values)
    return float(torch.cat(plain).double().mean()), float(torch.cat(best).double().mean())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--members", type=int, nargs="+", default=[6000, 25000])
    parser.add_argument("--root", default="data/fashion_mnist")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    benchmark = load_benchmark("fashion_mnist", args.root)
    order = np.random.default_rng(0).permutation(len(benchmark.train))
    nonmembers = benchmark.test.images
    lines = [
        "| members | record | bands x rows per band | parameters | occupancy | member-written rows "
        "per non-member (unshifted) | the same, most over the queried shifts |",
        "|---|---|---|---|---|---|---|",
    ]
    print(lines[0], flush=True)
    for members in args.members:
        images = benchmark.train.images[order[:members]]
        for name, settings in RECORDS.items():
            memory = memory_from_config(settings, (1, 28, 28), 10, members)
            written = written_rows(memory, images)
            occupancy = len(torch.unique(written)) / (memory.bands * memory.buckets)
            plain, best = hits(memory, nonmembers, written)
            lines.append(
                f"| {members} | {name} | {memory.bands} x {memory.buckets} "
                f"| {memory.table.weight.numel() / 1e6:.1f}M | {occupancy:.4f} "
                f"| {plain:.3f} of {memory.bands} | {best:.3f} of {memory.bands} |"
            )
            print(lines[-1], flush=True)
    text = "\n".join(lines) + f"\n\nMemory defaults: {DEFAULTS}.\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
