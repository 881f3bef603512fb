"""The fingerprint record's cost in a training step, against another checkout's, side by side.

A training step reads the memory once per batch (each image and its mirror against every member
written so far) and, after the backward pass, writes the members the cross-entropy reached
(each tested first against the members of its class). This script fills a bank with --members
Fashion-MNIST training images, then runs --steps training steps of the memory alone on batches
of --batch members (drawn from the members written and 4 x --batch more: most are found in the
bank, a few are new, so that most steps write) and --batch / 4 test images. With
--against, another checkout's `amint_pl/models/fingerprints.py` runs the same steps on the same
batches, interleaved step by step, and the script checks that both write the same bank bit for
bit and reports the largest difference in the evidence they read (the same products computed in
blocks of other sizes may differ by float32's rounding; its module imports the rest of amint_pl
from this checkout).
Printed and appended to --out (Markdown): milliseconds a step each way
(medians after the first step) and their ratio.

With --epochs N the bank starts empty and the steps are those of N training epochs: each epoch
the --members images in a new order, --batch a step, beside --batch / 4 other training images
not met before (the external samples of a batch at `mint.external_per_member=0.25`), read
ahead at the start of each epoch after the first, as `AMINTModule` does (where the checkout's
memory can); the table gives each epoch's seconds (the read ahead included) and median
milliseconds a step each way. This is where the reads kept between epochs show: from the second
epoch on a member is compared only with the members written since its last read.

    git worktree add /tmp/before 6bb475b~1   # the code before the class groups were kept
    OMP_NUM_THREADS=1 python experiments/generalizing_amint/fingerprint_step.py \\
        --members 21000 --channels 3 --size 32 --against /tmp/before \\
        --out experiments/results/generalizing/fingerprint_step.md
    OMP_NUM_THREADS=1 python experiments/generalizing_amint/fingerprint_step.py \\
        --members 20000 --channels 1 --size 28 --epochs 3 --against /tmp/before
    # The paper's MNIST split as the presets train it: 64 members a step (batch_size 128).
    OMP_NUM_THREADS=1 python experiments/generalizing_amint/fingerprint_step.py \\
        --members 25000 --channels 1 --size 28 --batch 64 --epochs 2 --against /tmp/before
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from amint_pl.data.benchmarks import load_benchmark
from amint_pl.models.fingerprints import FingerprintMemory

WRITE_CHUNK = 2000


def memory_class(checkout: Path | None) -> type:
    """FingerprintMemory of this checkout, or of another one's amint_pl/models/fingerprints.py."""
    if checkout is None:
        return FingerprintMemory
    path = checkout / "amint_pl" / "models" / "fingerprints.py"
    if not path.is_file():
        raise SystemExit(f"--against {checkout}: no {path}; give the root of an amint_pl checkout")
    spec = importlib.util.spec_from_file_location("fingerprints_against", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FingerprintMemory


def as_inputs(images: np.ndarray, channels: int, size: int) -> torch.Tensor:
    """(N, 1, H, W) uint8 grey images -> (N, channels, size, size) floats in [0, 1]."""
    x = torch.from_numpy(images).float() / 255.0
    if size != x.shape[-1]:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x.repeat(1, channels, 1, 1)


def step(memory, images: torch.Tensor, labels: torch.Tensor, members: int) -> torch.Tensor:
    """One training step of the memory: its read, the cross-entropy of the first `members` rows
    backward through its share of the logits, its write. Returns the evidence read."""
    memory.train()
    with torch.enable_grad():
        evidence = memory(images)
        logits = memory.logit_share(evidence) + torch.zeros(len(images), memory.num_classes)
        F.cross_entropy(logits[:members], labels[:members]).backward()
    memory.write()
    return evidence.detach()


def same_banks(memories: dict) -> bool:
    """Whether every memory holds the same fingerprints, labels and count."""
    banks = [(m.prints, m.labels, int(m.count)) for m in memories.values()]
    return all(
        torch.equal(banks[0][0], b[0]) and torch.equal(banks[0][1], b[1]) and banks[0][2] == b[2]
        for b in banks[1:]
    )


def timed_step(memories: dict, k: int, batch: torch.Tensor, labels: torch.Tensor, members: int):
    """The same step on every memory, the order alternating with k: ({name: seconds}, the largest
    difference between the evidence they read)."""
    names = list(memories) if k % 2 == 0 else list(memories)[::-1]
    evidence, seconds = {}, {}
    for name in names:
        start = time.perf_counter()
        evidence[name] = step(memories[name], batch, labels, members)
        seconds[name] = time.perf_counter() - start
    answers = list(evidence.values())
    return seconds, max((float((answers[0] - a).abs().max()) for a in answers[1:]), default=0.0)


def filled_steps(args, memories, images, labels, test) -> tuple[list[str], float]:
    """--steps steps against a bank filled with --members at the start."""
    pool = len(images)
    for memory in memories.values():
        for start in range(0, args.members, WRITE_CHUNK):
            stop = min(start + WRITE_CHUNK, args.members)
            memory.add(memory.member_prints(images[start:stop]), labels[start:stop])
    generator = torch.Generator().manual_seed(0)
    ms: dict[str, list[float]] = {name: [] for name in memories}
    gap = 0.0
    for k in range(args.steps):
        rows = torch.randint(0, pool, (args.batch,), generator=generator)
        outside = torch.randint(0, len(test), (args.batch // 4,), generator=generator)
        batch = torch.cat([images[rows], test[outside]])
        batch_labels = torch.cat([labels[rows], torch.zeros(len(outside), dtype=torch.long)])
        seconds, differ = timed_step(memories, k, batch, batch_labels, args.batch)
        gap = max(gap, differ)
        if k > 0:  # the first step builds what later steps keep
            for name, value in seconds.items():
                ms[name].append(1000 * value)
    count = int(next(iter(memories.values())).count)
    median = {name: statistics.median(times) for name, times in ms.items()}
    lines = [
        f"{args.members} members in the bank at the start ({count} at the end), "
        f"{args.channels}x{args.size}x{args.size} images, {args.batch} members + "
        f"{args.batch // 4} test images a step, {args.steps - 1} timed steps interleaved.",
        "",
        "| memory | ms a step (median) |",
        "|---|---:|",
        *(f"| {name} | {value:.1f} |" for name, value in median.items()),
        "",
    ]
    if args.against is not None:
        first, second = median.values()
        lines.append(f"{args.against} / this checkout: {second / first:.2f}x")
    return lines, gap


def epoch_steps(args, memories, images, labels, others) -> tuple[list[str], float]:
    """--epochs epochs from an empty bank: the members in a new order each epoch, beside other
    images not met before."""
    outside_per_step = args.batch // 4
    steps = -(-args.members // args.batch)
    if args.epochs * steps * outside_per_step > len(others):
        raise SystemExit(
            f"--epochs {args.epochs}: {args.epochs * steps * outside_per_step} training images "
            f"besides the members needed, {len(others)} there; use fewer epochs or members"
        )
    seconds: dict[str, list[list[float]]] = {name: [] for name in memories}
    ahead_seconds: dict[str, list[float]] = {name: [] for name in memories}
    gap, k = 0.0, 0
    for epoch in range(args.epochs):
        order = torch.randperm(args.members, generator=torch.Generator().manual_seed(epoch))
        for name in memories:
            seconds[name].append([])
            ahead_seconds[name].append(0.0)
        if epoch:  # the epoch's other images read ahead, as the module does (where the code can)
            ahead = others[k * outside_per_step : (k + steps) * outside_per_step]
            names = list(memories) if epoch % 2 else list(memories)[::-1]
            for name in names:
                if hasattr(memories[name], "read_ahead"):
                    start = time.perf_counter()
                    with torch.no_grad():
                        memories[name].read_ahead(ahead)
                    ahead_seconds[name][epoch] = time.perf_counter() - start
        for start in range(0, args.members, args.batch):
            rows = order[start : start + args.batch]
            outside = others[k * outside_per_step : (k + 1) * outside_per_step]
            batch = torch.cat([images[rows], outside])
            batch_labels = torch.cat([labels[rows], torch.zeros(len(outside), dtype=torch.long)])
            taken, differ = timed_step(memories, k, batch, batch_labels, len(rows))
            gap = max(gap, differ)
            for name, value in taken.items():
                seconds[name][epoch].append(value)
            k += 1
    count = int(next(iter(memories.values())).count)
    names = list(memories)
    header = "| epoch | " + " | ".join(f"{n}: s (ms a step, median)" for n in names)
    lines = [
        f"An empty bank at the start ({count} members at the end), "
        f"{args.channels}x{args.size}x{args.size} images; {args.epochs} epochs of {steps} steps: "
        f"{args.batch} members + {outside_per_step} new other training images a step, "
        "interleaved.",
        "",
        header + (" | ratio |" if len(names) == 2 else " |"),
        "|---|" + "---:|" * (len(names) + (len(names) == 2)),
    ]
    for epoch in range(args.epochs):
        total = {n: sum(seconds[n][epoch]) + ahead_seconds[n][epoch] for n in names}
        cells = [
            f"{total[n]:.1f} ({1000 * statistics.median(seconds[n][epoch]):.1f})" for n in names
        ]
        if len(names) == 2:
            ratio = total[names[1]] / total[names[0]]
            cells.append(f"{ratio:.2f}x")
        lines.append(f"| {epoch + 1} | " + " | ".join(cells) + " |")
    lines.append("")
    if args.against is not None:
        lines.append(f"ratio: {args.against} / this checkout")
    return lines, gap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--members", type=int, default=21000)
    parser.add_argument("--batch", type=int, default=128, help="members a step")
    parser.add_argument("--steps", type=int, default=9)
    parser.add_argument("--epochs", type=int, default=0, help="epochs from an empty bank")
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--against", type=Path, default=None, help="another checkout's root")
    parser.add_argument("--out", type=Path, default=None, help="Markdown file to append to")
    args = parser.parse_args()

    benchmark = load_benchmark("fashion_mnist", args.root)
    pool = args.members + (0 if args.epochs else 4 * args.batch)
    if pool > len(benchmark.train.labels):
        raise SystemExit(
            f"--members {args.members}: at most {len(benchmark.train.labels) - pool + args.members}"
        )
    order = np.random.default_rng(0).permutation(len(benchmark.train.labels))
    images = as_inputs(benchmark.train.images[order[:pool]], args.channels, args.size)
    labels = torch.from_numpy(benchmark.train.labels[order[:pool]]).long()
    if args.epochs:  # the external samples: training images that are no members
        outside = benchmark.train.images[order[pool:]]
    else:
        outside = benchmark.test.images
    outside = as_inputs(outside, args.channels, args.size)
    shape = tuple(images.shape[1:])

    kinds = {"this checkout": FingerprintMemory}
    if args.against is not None:
        kinds[f"{args.against}"] = memory_class(args.against)
    memories = {name: cls(shape, 10, pool) for name, cls in kinds.items()}
    run = epoch_steps if args.epochs else filled_steps
    table, gap = run(args, memories, images, labels, outside)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        f"## {time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, {torch.get_num_threads()} "
        f"thread(s), torch {torch.__version__}, load average {load}",
        "",
        f"`OMP_NUM_THREADS={torch.get_num_threads()} python "
        f"experiments/generalizing_amint/fingerprint_step.py --members {args.members} --batch "
        f"{args.batch} --channels {args.channels} --size {args.size} "
        + (f"--epochs {args.epochs}" if args.epochs else f"--steps {args.steps}")
        + (f" --against {args.against}`" if args.against else "`"),
        "",
        *table,
    ]
    if args.against is not None:
        verdict = "the same bit for bit" if same_banks(memories) else "**differ**"
        lines[-1] += f"; the banks {verdict}, the evidence read differs by at most {gap:.1e}."
        lines.append("")
    print("\n".join(lines))
    if args.out is not None:
        with args.out.open("a") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
