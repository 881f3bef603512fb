"""What the confidence intervals cost at the end of a run: `membership_results` on a finished
run's scores, with `bootstrap.resamples` at 0 and at 1,000, side by side in one process.

    python experiments/bootstrap_cost.py <run dir> [--resamples 1000] [--repeats 3]

Reads the run's `scores.csv` and `splits.npz`; prints the seconds of each (best of the repeats)
and the seconds the intervals add.
"""

from __future__ import annotations

import argparse
import csv
import platform
import time
from pathlib import Path

import numpy as np

from amint_pl.data.splits import MembershipSplits
from amint_pl.evaluation.report import ScoredSamples, membership_results


def read_scores(path: Path) -> ScoredSamples:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    methods = [k[len("score_") :] for k in rows[0] if k.startswith("score_")]
    return ScoredSamples(
        pool=np.array([r["pool"] for r in rows]),
        index=np.array([int(r["index"]) for r in rows]),
        role=np.array([r["role"] for r in rows]),
        label=np.array([int(r["label"]) for r in rows]),
        prediction=np.array([int(r["prediction"]) for r in rows]),
        scores={m: np.array([float(r[f"score_{m}"]) for r in rows]) for m in methods},
    )


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    samples = read_scores(args.run_dir / "scores.csv")
    splits = MembershipSplits.load(args.run_dir / "splits.npz")
    without = best_time(lambda: membership_results(samples, splits, 0), args.repeats)
    with_ci = best_time(lambda: membership_results(samples, splits, args.resamples), args.repeats)
    print(f"run: {args.run_dir} ({len(samples)} scored samples, {len(samples.methods)} methods)")
    print(f"machine: {platform.processor() or platform.machine()}, {platform.python_version()}")
    print(f"metrics without intervals: {without:.3f} s")
    print(f"metrics with {args.resamples} resamples: {with_ci:.3f} s")
    print(f"the intervals add: {with_ci - without:.3f} s")


if __name__ == "__main__":
    main()
