"""How much generic membership signal does a normally trained classifier carry?

Trains the audited network alone (cross-entropy, no MINT head, no memory) on `--members` training
images of Fashion-MNIST and, after every epoch, scores every member and `--nonmembers` test images
with two signals that need no MINT positives at all:

- LOSS: the per-sample cross-entropy (Yeom et al.), lower for members;
- calibrated LOSS: the drop of the log loss since epoch 1 (difficulty calibration against an early
  checkpoint of the same run, in the spirit of Watson et al. 2022).

A MINT head that reads the network cannot detect members it was never shown better than the
signal the network carries about them, so these AUCs bound the strict protocol of any head over a
normally trained model. Prints one line per epoch and writes them to `--out` (CSV):

    OMP_NUM_THREADS=1 python experiments/generalizing_amint/signal_ceiling.py --epochs 40 \
        --out experiments/results/generalizing/signal_ceiling.csv
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from amint_pl.data.benchmarks import benchmark_from_config
from amint_pl.evaluation.metrics import auc
from amint_pl.models.small_cnn import SmallCNN


def normalised(images: np.ndarray, mean: float, std: float) -> torch.Tensor:
    return torch.from_numpy(np.asarray(images)).float().div(255).sub(mean).div(std)


def per_sample(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[np.ndarray, float]:
    """(per-sample CE losses, accuracy) in eval mode."""
    model.eval()
    losses, correct = [], 0
    with torch.no_grad():
        for i in range(0, len(x), 1000):
            logits = model(x[i : i + 1000])
            losses.append(F.cross_entropy(logits, y[i : i + 1000], reduction="none"))
            correct += int((logits.argmax(1) == y[i : i + 1000]).sum())
    model.train()
    return torch.cat(losses).numpy(), correct / len(x)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--members", type=int, default=6000)
    parser.add_argument("--nonmembers", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--widths", type=int, nargs=3, default=[16, 32, 64])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", default="data/fashion_mnist")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    bench = benchmark_from_config(
        {
            "name": "fashion_mnist",
            "root": args.root,
            "num_classes": 10,
            "image_size": 28,
            "cache_dir": "data/cache",
        }
    )
    mean, std = bench.mean[0], bench.std[0]
    members = rng.permutation(len(bench.train))[: args.members]
    outsiders = rng.permutation(len(bench.test))[: args.nonmembers]
    x_in = normalised(bench.train.images[members], mean, std)
    y_in = torch.from_numpy(np.asarray(bench.train.labels)[members])
    x_out = normalised(bench.test.images[outsiders], mean, std)
    y_out = torch.from_numpy(np.asarray(bench.test.labels)[outsiders])

    model = SmallCNN(10, 1, tuple(args.widths))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    first: tuple[np.ndarray, np.ndarray] | None = None
    rows, started = [], time.time()
    for epoch in range(1, args.epochs + 1):
        order = torch.randperm(len(x_in))
        for i in range(0, len(order), args.batch_size):
            batch = order[i : i + args.batch_size]
            loss = F.cross_entropy(model(x_in[batch]), y_in[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        loss_in, train_acc = per_sample(model, x_in, y_in)
        loss_out, test_acc = per_sample(model, x_out, y_out)
        log_in, log_out = np.log(loss_in + 1e-12), np.log(loss_out + 1e-12)
        first = first or (log_in, log_out)
        row = {
            "epoch": epoch,
            "train_acc": round(train_acc, 4),
            "test_acc": round(test_acc, 4),
            "loss_auc": round(auc(-loss_in, -loss_out), 4),
            "calibrated_loss_auc": round(auc(first[0] - log_in, first[1] - log_out), 4),
            "seconds": round(time.time() - started, 1),
        }
        rows.append(row)
        print(row, flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
