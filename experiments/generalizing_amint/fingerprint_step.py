"""The fingerprint record's cost in a training step, against another checkout's, side by side.

A training step reads the memory once per batch (each image and its mirror against every member
written so far) and, after the backward pass, writes the members the cross-entropy reached
(each tested first against the members of its class). This script fills a bank with --members
Fashion-MNIST training images, then runs --steps training steps of the memory alone on batches
of --batch members (drawn from the members written and 4 x --batch more: most are found in the
bank, a few are new, so that most steps write) and --batch / 4 test images. With
--against, another checkout's `amint_pl/models/fingerprints.py` runs the same steps on the same
batches, interleaved step by step, and the script checks that both give the same evidence and
the same bank bit for bit (its module imports the rest of amint_pl from this checkout).
Printed and appended to --out (Markdown): milliseconds a step each way
(medians after the first step) and their ratio.

    git worktree add /tmp/before 6bb475b~1   # the code before the class groups were kept
    OMP_NUM_THREADS=1 python experiments/generalizing_amint/fingerprint_step.py \\
        --members 21000 --channels 3 --size 32 --against /tmp/before \\
        --out experiments/results/generalizing/fingerprint_step.md
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--members", type=int, default=21000)
    parser.add_argument("--batch", type=int, default=128, help="members a step")
    parser.add_argument("--steps", type=int, default=9)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--against", type=Path, default=None, help="another checkout's root")
    parser.add_argument("--out", type=Path, default=None, help="Markdown file to append to")
    args = parser.parse_args()

    benchmark = load_benchmark("fashion_mnist", args.root)
    pool = args.members + 4 * args.batch
    if pool > len(benchmark.train.labels):
        raise SystemExit(
            f"--members {args.members}: at most {len(benchmark.train.labels) - 4 * args.batch}"
        )
    order = np.random.default_rng(0).permutation(len(benchmark.train.labels))[:pool]
    images = as_inputs(benchmark.train.images[order], args.channels, args.size)
    labels = torch.from_numpy(benchmark.train.labels[order]).long()
    test = as_inputs(benchmark.test.images, args.channels, args.size)
    shape = tuple(images.shape[1:])

    kinds = {"this checkout": FingerprintMemory}
    if args.against is not None:
        kinds[f"{args.against}"] = memory_class(args.against)
    memories = {name: cls(shape, 10, pool) for name, cls in kinds.items()}
    for memory in memories.values():
        for start in range(0, args.members, WRITE_CHUNK):
            stop = min(start + WRITE_CHUNK, args.members)
            memory.add(memory.member_prints(images[start:stop]), labels[start:stop])

    generator = torch.Generator().manual_seed(0)
    ms: dict[str, list[float]] = {name: [] for name in memories}
    same = True
    for k in range(args.steps):
        rows = torch.randint(0, pool, (args.batch,), generator=generator)
        outside = torch.randint(0, len(test), (args.batch // 4,), generator=generator)
        batch = torch.cat([images[rows], test[outside]])
        batch_labels = torch.cat([labels[rows], torch.zeros(len(outside), dtype=torch.long)])
        names = list(memories) if k % 2 == 0 else list(memories)[::-1]
        evidence = {}
        for name in names:
            start = time.perf_counter()
            evidence[name] = step(memories[name], batch, batch_labels, args.batch)
            if k > 0:  # the first step builds what later steps keep
                ms[name].append(1000 * (time.perf_counter() - start))
        answers = list(evidence.values())
        same &= all(torch.equal(answers[0], other) for other in answers[1:])
    banks = [(m.prints, m.labels, int(m.count)) for m in memories.values()]
    same &= all(
        torch.equal(banks[0][0], b[0]) and torch.equal(banks[0][1], b[1]) and banks[0][2] == b[2]
        for b in banks[1:]
    )
    median = {name: statistics.median(times) for name, times in ms.items()}
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        f"## {time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, {torch.get_num_threads()} "
        f"thread(s), torch {torch.__version__}, load average {load}",
        "",
        f"`OMP_NUM_THREADS={torch.get_num_threads()} python "
        f"experiments/generalizing_amint/fingerprint_step.py --members {args.members} --batch "
        f"{args.batch} --steps {args.steps} --channels {args.channels} --size {args.size}"
        + (f" --against {args.against}`" if args.against else "`"),
        "",
        f"{args.members} members in the bank at the start ({banks[0][2]} at the end), "
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
        lines += [
            f"{args.against} / this checkout: {second / first:.2f}x; the evidence and the bank "
            f"{'the same bit for bit' if same else '**differ**'}.",
            "",
        ]
    print("\n".join(lines))
    if args.out is not None:
        with args.out.open("a") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
