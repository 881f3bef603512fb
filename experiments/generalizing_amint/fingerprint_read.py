"""The cost of the fingerprint record's evaluation read, in float64 and in float32, side by side.

At evaluation `FingerprintMemory.similarity` reads every query 100 times (25 shifts x 2 views x
mirrored) against every member's fingerprint: at the paper's MNIST split (20,000 members the
cross-entropy trains on, ~75,000 scored samples) that is the bulk of a run's evaluation on a CPU.
This script fills a bank with the first --members of a seeded permutation of Fashion-MNIST's
train pool (each written as training writes it), then times `similarity` on --queries images
(half of them members, half test images) with the products in float64 and in float32,
interleaved (A B, B A, ...) so that load from other processes hits both alike. Printed and
appended to --out (Markdown): seconds per 1,000 queries each way, the median ratio, the largest
difference in the evidence the MINT head reads, and the AUC of the similarity to the query's
label (members against test images) each way. With --against, another checkout's record reads the
same queries against the same bank instead, both in float32.

    OMP_NUM_THREADS=1 python experiments/generalizing_amint/fingerprint_read.py \\
        --root /usr/share/datasets/fashion-mnist --members 20000 --queries 512 --repeats 3 \\
        --out experiments/results/generalizing/fingerprint_read.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from fingerprint_step import memory_class

from amint_pl.data.benchmarks import load_benchmark
from amint_pl.evaluation.metrics import auc
from amint_pl.models.fingerprints import FingerprintMemory, sharpened

WRITE_CHUNK = 2000
DTYPES = (torch.float64, torch.float32)


def as_inputs(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).float() / 255.0
    return x[:, None] if x.ndim == 3 else x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--members", type=int, default=20000)
    parser.add_argument("--queries", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--against", type=Path, default=None, help="another checkout: float32 reads both ways"
    )
    parser.add_argument("--out", type=Path, default=None, help="Markdown file to append to")
    args = parser.parse_args()

    benchmark = load_benchmark("fashion_mnist", args.root)
    order = np.random.default_rng(0).permutation(len(benchmark.train.labels))[: args.members]
    images, labels = benchmark.train.images[order], benchmark.train.labels[order]
    # The ways a read is timed: (name, memory, dtype of the products).
    classes = {"this checkout": FingerprintMemory}
    if args.against is not None:
        classes[str(args.against)] = memory_class(args.against)
    memories = {}
    for name, cls in classes.items():
        memory = memories[name] = cls(tuple(as_inputs(images[:1]).shape[1:]), 10, args.members)
        for start in range(0, args.members, WRITE_CHUNK):
            part = as_inputs(images[start : start + WRITE_CHUNK])
            part_labels = torch.from_numpy(labels[start : start + WRITE_CHUNK])
            memory.add(memory.member_prints(part), part_labels)
        memory.eval()
    if args.against is None:
        ways = [(str(d).removeprefix("torch."), memories["this checkout"], d) for d in DTYPES]
    else:
        # The other checkout first: the ratio reads as its time over this one's.
        ways = [(name, memory, torch.float32) for name, memory in memories.items()][::-1]
    half = args.queries // 2
    queries = torch.cat([as_inputs(images[:half]), as_inputs(benchmark.test.images[:half])])
    query_labels = torch.from_numpy(np.concatenate([labels[:half], benchmark.test.labels[:half]]))

    seconds: dict[str, list[float]] = {name: [] for name, _, _ in ways}
    answers: dict[str, torch.Tensor] = {}
    for repeat in range(args.repeats):
        for name, memory, dtype in ways if repeat % 2 == 0 else ways[::-1]:
            start = time.perf_counter()
            answers[name] = memory.similarity(queries, dtype, reuse=False)
            seconds[name].append(time.perf_counter() - start)
    (first, *_), (second, *_) = ways
    ratios = [a / b for a, b in zip(seconds[first], seconds[second], strict=True)]
    gap = (sharpened(answers[first]) - sharpened(answers[second])).abs().max()
    own = {n: a.gather(1, query_labels[:, None]).squeeze(1).numpy() for n, a in answers.items()}
    per_1000 = {n: 1000 * statistics.median(s) / len(queries) for n, s in seconds.items()}
    against = "" if args.against is None else f" --against {args.against}"
    lines = [
        f"## {time.strftime('%Y-%m-%d')}, {platform.node()}, {torch.get_num_threads()} thread(s), "
        f"torch {torch.__version__}",
        "",
        f"`OMP_NUM_THREADS={torch.get_num_threads()} python "
        f"experiments/generalizing_amint/fingerprint_read.py --members {args.members} "
        f"--queries {args.queries} --repeats {args.repeats}{against}`",
        "",
        f"{args.members} members in the bank, {len(queries)} queries (half members, half test "
        f"images), {args.repeats} repeats interleaved.",
        "",
        f"| {'products in' if args.against is None else 'code (float32 products)'} | "
        "s per 1,000 queries | AUC of the label's similarity |",
        "|---|---|---|",
        *(
            f"| {name} | {per_1000[name]:.2f} | {auc(own[name][:half], own[name][half:]):.4f} |"
            for name, _, _ in ways
        ),
        "",
        f"{first} / {second} time: median {statistics.median(ratios):.2f}x "
        f"(per repeat: {', '.join(f'{r:.2f}' for r in ratios)}); largest difference in the "
        f"evidence: {float(gap):.2e}.",
        "",
    ]
    print("\n".join(lines))
    if args.out is not None:
        with args.out.open("a") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
