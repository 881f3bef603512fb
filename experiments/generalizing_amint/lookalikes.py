"""What holds the strict protocol's TPR at 0.1% FPR down on a `mint=active_general` run: look-alikes.

A record that recognises a member after a flip, a shift or noise also recognises a test image that
looks like a member. Fashion-MNIST holds many such pairs. For every reported non-member of the
strict protocol this script finds its nearest training member (mean squared difference of the
pixels in [0, 1]), and reports the MINT head's score and the membership memory's margin
(`memory_margin`, as the run's evaluation reads it, shifts included) on the reported members and
non-members: the non-members above the members' 1% quantile, how many of them have a member
look-alike, and the TPR at 0.1% and 1% FPR with and without the non-members that have one.

    python experiments/generalizing_amint/lookalikes.py <run dir> [--out lookalikes.md]

The MINT head's scores are the run's own (scores.csv); the memory's margins are recomputed from
the run's best checkpoint through its own preprocessing.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import torch

from amint_pl.checkpoints import load_checkpoint
from amint_pl.data.audit_inputs import load_run_splits
from amint_pl.data.splits import POOL_NAMES
from amint_pl.evaluation.metrics import auc, tpr_at_fpr
from amint_pl.evaluation.scoring import build_module
from amint_pl.models.memory import memory_margin

# Mean squared pixel differences below which a training member counts as a look-alike.
CLOSER_THAN = (0.0025, 0.005, 0.01)
BATCH = 1000


def reported(run_dir: Path) -> dict[str, list[dict]]:
    """The strict protocol's reported samples, from scores.csv: {'members': rows, 'nonmembers'}."""
    out: dict[str, list[dict]] = {"members": [], "nonmembers": []}
    with open(run_dir / "scores.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["reported_strict"] == "1":
                side = "members" if row["role"].startswith("members") else "nonmembers"
                out[side].append(row)
    return out


def images_of(rows: list[dict], benchmark) -> np.ndarray:
    pools = {name: getattr(benchmark, name) for name in POOL_NAMES}
    return np.stack([pools[r["pool"]].images[int(r["index"])] for r in rows])


def margins(module, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The memory's margin at each image's label, through the module's own preprocessing."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), BATCH):
            batch = torch.from_numpy(np.ascontiguousarray(images[start : start + BATCH]))
            inputs = module.on_after_batch_transfer({"images": batch}, 0)["inputs"]
            label = torch.from_numpy(labels[start : start + BATCH])
            out.append(memory_margin(module.memory(inputs), label))
    return torch.cat(out).numpy()


def nearest_member(queries: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Each query's smallest mean squared pixel difference to a member (pixels in [0, 1])."""
    m = torch.from_numpy(members.reshape(len(members), -1)).double() / 255
    m_sq = (m * m).sum(1)
    out = []
    for start in range(0, len(queries), BATCH):
        q = torch.from_numpy(queries[start : start + BATCH].reshape(-1, m.shape[1])).double() / 255
        d2 = (q * q).sum(1, keepdim=True) + m_sq[None] - 2 * q @ m.T
        out.append(d2.min(1).values.clamp_min(0) / m.shape[1])
    return torch.cat(out).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, help="also write the table here (Markdown)")
    args = parser.parse_args()
    results = json.loads((args.run_dir / "results.json").read_text())
    path = args.run_dir / list(results["best_checkpoints"].values())[-1]
    checkpoint = load_checkpoint(path)
    module = build_module(checkpoint, path, "cpu")
    if module.memory is None:
        raise SystemExit(f"error: {path} has no membership memory: give a mint=active_general run")
    splits, benchmark = load_run_splits(args.run_dir, checkpoint, path)
    rows = reported(args.run_dir)
    images = {side: images_of(r, benchmark) for side, r in rows.items()}
    labels = {side: np.array([int(x["label"]) for x in r]) for side, r in rows.items()}
    head = {side: np.array([float(x["score_mint"]) for x in r]) for side, r in rows.items()}
    memory = {side: margins(module, images[side], labels[side]) for side in rows}
    closest = nearest_member(images["nonmembers"], benchmark.train.images[splits.members])

    high = memory["nonmembers"] > np.quantile(memory["members"], 0.01)
    lines = [
        f"Run: `{args.run_dir}` ({len(rows['members'])} strict members, "
        f"{len(rows['nonmembers'])} test non-members; written by "
        "`python experiments/generalizing_amint/lookalikes.py`).",
        "",
        f"- Non-members whose memory margin exceeds the members' 1% quantile: {int(high.sum())}.",
    ]
    for cut in CLOSER_THAN:
        near = closest < cut
        lines.append(
            f"- Non-members with a training member closer than {cut} (mean squared difference; "
            f"RMS {cut**0.5 * 255:.0f}/255): {int(near.sum())}, of which above that quantile: "
            f"{int((near & high).sum())}."
        )
    lines += [
        "",
        "| score | non-members | strict AUC | TPR @0.1% FPR | TPR @1% FPR |",
        "|---|---|---:|---:|---:|",
    ]
    apart = closest >= CLOSER_THAN[-1]
    for name, score in (("MINT head", head), ("memory margin", memory)):
        for which, keep in (
            ("all", slice(None)),
            (f"without look-alikes (< {CLOSER_THAN[-1]})", apart),
        ):
            pos, neg = score["members"], score["nonmembers"][keep]
            lines.append(
                f"| {name} | {which} ({len(neg)}) | {auc(pos, neg):.4f} | "
                f"{tpr_at_fpr(pos, neg, 0.001):.3f} | {tpr_at_fpr(pos, neg, 0.01):.3f} |"
            )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
