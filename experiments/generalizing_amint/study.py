"""The generalizing-aMINT study: what makes the MINT head detect members it never saw?

Runs `python -m amint_pl.run` for each variant x seed (real runs, one after another), reads each
run's results.json, and writes a table (study.csv, study.md), a per-variant summary over the seeds
(summary.md) and a trade-off plot (tradeoff.png). Hydra overrides for every run go after `--`:

    python experiments/generalizing_amint/study.py --data fashion_mnist --seeds 0 1 2 \
        --variants paper_faithful general_preset --out experiments/results/generalizing \
        -- "model.kwargs.widths=[16,32,64]" trainer.max_epochs=15

Each variant is a list of Hydra overrides (VARIANTS below); the base setting is the study's:
Fashion-MNIST, 5,000 MINT-positive members + 1,000 CE-only members, 5,000 external samples.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BASE = {
    # 6,000 members: 5,000 seen (MINT positives) + 1,000 unseen (CE only), 5,000 external.
    "fashion_mnist": [
        "dataset=fashion_mnist",
        "dataset.splits.members=6000",
        "dataset.splits.members_unseen_fraction=0.16667",
        "dataset.splits.external=5000",
    ],
    "digits": ["dataset=digits"],
}

VARIANTS: dict[str, list[str]] = {
    # The paper's recipe: taps only, model selection on seen members.
    "paper_faithful": ["mint=active"],
    "taps_middle": ["mint=active", "mint.taps=middle"],
    "taps_output": ["mint=active", "mint.taps=output"],
    # Early stopping / selection on the strict protocol's calibration AUC.
    "strict_stop": ["mint=active", "mint.monitor=val/strict/mint_auc"],
    # The head also reads the audited model's output statistics.
    "outputs": ["mint=active", "mint.head.output_features=[loss,probs]"],
    "outputs_strict_stop": [
        "mint=active",
        "mint.head.output_features=[loss,probs]",
        "mint.monitor=val/strict/mint_auc",
    ],
    "outputs_only_strict_stop": [
        "mint=active",
        "mint.head.output_features=[loss,probs]",
        "mint.head.tap_features=false",
        "mint.monitor=val/strict/mint_auc",
    ],
    "outputs_only": [
        "mint=active",
        "mint.head.output_features=[loss,probs]",
        "mint.head.tap_features=false",
    ],
    # Half of the seen members are MINT positives, a new half each epoch.
    "rotate_half": ["mint=active", "mint.positive_fraction=0.5", "mint.rotate_positives=true"],
    # The head reads the membership memory alone (models/memory.py), no taps, no other outputs.
    "memory_only": [
        "mint=active",
        "mint.memory.bands=16",
        "mint.head.output_features=[memory]",
        "mint.head.tap_features=false",
    ],
    "head_dropout_wd": ["mint=active", "mint.head.dropout=0.5", "optim.weight_decay=1e-4"],
    "augment": ["mint=active", "dataset.augment=flip_crop"],
    # The preset: membership memory, the head reading output statistics (no taps).
    "general_preset": ["mint=active_general"],
    "general_preset_augment": ["mint=active_general", "dataset.augment=flip_crop"],
    # The preset, its head also reading the taps (as mint=active's does).
    "general_with_taps": ["mint=active_general", "mint.head.tap_features=true"],
    "passive": ["mint=passive"],
    "off": ["mint=off"],
}

COLUMNS = [
    "variant",
    "seed",
    "status",
    "test_acc",
    "paper_mint_auc",
    "paper_mint_tpr1",
    "strict_mint_auc",
    "strict_mint_tpr1",
    "strict_mint_balacc",
    "strict_mint_tpr01",
    "paper_mint_auc_lo",
    "paper_mint_auc_hi",
    "strict_mint_auc_lo",
    "strict_mint_auc_hi",
    "strict_mint_tpr1_lo",
    "strict_mint_tpr1_hi",
    "paper_loss_auc",
    "strict_loss_auc",
    "n_paper_members",
    "n_strict_members",
    "n_nonmembers",
    "external_used",
    "epochs",
    "wall_s",
]


def summarise(results: dict, variant: str, seed: int, wall: float) -> dict:
    row = {
        "variant": variant,
        "seed": seed,
        "status": results.get("status"),
        "wall_s": round(wall, 1),
    }
    if results.get("status") != "completed":
        return row
    m = results["membership"]
    row["test_acc"] = results["audited"]["test_acc"]
    row["epochs"] = results.get("epochs_trained")
    row["external_used"] = (results.get("training") or {}).get("external_used")
    for protocol in ("paper", "strict"):
        row[f"{protocol}_loss_auc"] = m[protocol]["loss"]["auc"]
        row[f"n_{protocol}_members"] = m[protocol]["loss"]["n_members"]
        row["n_nonmembers"] = m[protocol]["loss"]["n_nonmembers"]
        if "mint" in m[protocol]:
            mint = m[protocol]["mint"]
            row[f"{protocol}_mint_auc"] = mint["auc"]
            row[f"{protocol}_mint_tpr1"] = mint["tpr_at_1%_fpr"]
            if "auc_ci" in mint:  # confidence intervals (bootstrap.resamples > 0)
                row[f"{protocol}_mint_auc_lo"], row[f"{protocol}_mint_auc_hi"] = mint["auc_ci"]
    if "mint" in m["strict"]:
        mint = m["strict"]["mint"]
        row["strict_mint_balacc"] = mint["balanced_acc_calibrated"]
        row["strict_mint_tpr01"] = mint["tpr_at_0.1%_fpr"]
        if "tpr_at_1%_fpr_ci" in mint:
            row["strict_mint_tpr1_lo"], row["strict_mint_tpr1_hi"] = mint["tpr_at_1%_fpr_ci"]
    return row


def run_one(data: str, variant: str, seed: int, extra: list[str], log_dir: Path) -> dict:
    overrides = [
        *BASE[data],
        *VARIANTS[variant],
        f"seed={seed}",
        "logger=csv",
        f"paths.log_dir={log_dir}",
        *extra,
    ]
    env = dict(os.environ, WANDB_MODE="disabled")
    started = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "amint_pl.run", *overrides], capture_output=True, text=True, env=env
    )
    wall = time.time() - started
    runs = sorted(log_dir.rglob("results.json"), key=lambda p: p.stat().st_mtime)
    if proc.returncode != 0 or not runs:
        print(proc.stderr[-2000:], file=sys.stderr)
        return {"variant": variant, "seed": seed, "status": "failed", "wall_s": round(wall, 1)}
    return summarise(json.loads(runs[-1].read_text()), variant, seed, wall)


def write_table(rows: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "study.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [
            f"{row[c]:.3f}" if isinstance(row.get(c), float) else str(row.get(c, ""))
            for c in COLUMNS
        ]
        lines.append("| " + " | ".join(cells) + " |")
    (out / "study.md").write_text("\n".join(lines) + "\n")
    (out / "summary.md").write_text(summary_table(rows))
    print("\n".join(lines))


SUMMARY = [
    ("test_acc", "test acc"),
    ("paper_mint_auc", "paper AUC"),
    ("strict_mint_auc", "strict AUC"),
    ("strict_mint_tpr1", "strict TPR@1%FPR"),
    ("strict_loss_auc", "strict LOSS AUC"),
    ("wall_s", "wall s"),
]


def summary_table(rows: list[dict]) -> str:
    """One line per variant: the mean over its completed seeds, and the range where several."""
    lines = [
        "| variant | seeds | " + " | ".join(title for _, title in SUMMARY) + " |",
        "|---|---|" + "---|" * len(SUMMARY),
    ]
    for variant in dict.fromkeys(r["variant"] for r in rows):
        done = [r for r in rows if r["variant"] == variant and r.get("status") == "completed"]
        if not done:
            continue
        cells = []
        for key, _ in SUMMARY:
            values = [float(r[key]) for r in done if r.get(key) not in (None, "")]
            if not values:
                cells.append("-")
                continue
            digits = 0 if key == "wall_s" else 3
            mean = f"{sum(values) / len(values):.{digits}f}"
            if len(values) > 1:
                mean += f" ({min(values):.{digits}f}-{max(values):.{digits}f})"
            cells.append(mean)
        lines.append(f"| {variant} | {len(done)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for variant in dict.fromkeys(r["variant"] for r in rows):
        done = [r for r in rows if r["variant"] == variant and r.get("strict_mint_auc") is not None]
        if not done:
            continue
        axes[0].scatter(
            [r["strict_mint_auc"] for r in done], [r["paper_mint_auc"] for r in done], label=variant
        )
        axes[1].scatter(
            [r["strict_mint_auc"] for r in done], [r["test_acc"] for r in done], label=variant
        )
    loss = [r["strict_loss_auc"] for r in rows if r.get("strict_loss_auc") is not None]
    for ax, ylabel in zip(axes, ("paper-protocol MINT AUC", "audited test accuracy"), strict=True):
        if loss:
            ax.axvline(sum(loss) / len(loss), ls="--", c="grey", label="LOSS attack (strict, mean)")
        ax.axvline(0.80, ls=":", c="red", label="target strict AUC 0.80")
        ax.set_xlabel("strict-protocol MINT AUC (members never shown to the head)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].axhline(0.95, ls=":", c="red")
    axes[1].axhline(0.85, ls=":", c="red")
    axes[1].legend(fontsize=7, loc="center right")
    fig.tight_layout()
    fig.savefig(out / "tradeoff.png", dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", choices=sorted(BASE), default="fashion_mnist")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["paper_faithful", "outputs_strict_stop"],
        choices=sorted(VARIANTS),
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--out", type=Path, default=Path("experiments/results/generalizing"))
    parser.add_argument("--log-dir", type=Path, default=Path("runs/study"))
    parser.add_argument(
        "--append", action="store_true", help="add to an existing study.csv instead of replacing it"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        help="extra Hydra overrides for every run (e.g. trainer.max_epochs=10)",
    )
    args = parser.parse_args()
    rows: list[dict] = []
    if args.append and (args.out / "study.csv").exists():
        with open(args.out / "study.csv") as f:
            rows = [
                {
                    k: (float(v) if k not in ("variant", "status") and v not in ("", None) else v)
                    for k, v in r.items()
                }
                for r in csv.DictReader(f)
            ]
    for variant in args.variants:
        for seed in args.seeds:
            log_dir = args.log_dir / args.data / variant / f"seed{seed}"
            print(f"[study] {args.data} {variant} seed {seed} ...", flush=True)
            row = run_one(args.data, variant, seed, args.overrides, log_dir)
            print(f"[study] {row}", flush=True)
            rows.append(row)
            write_table(rows, args.out)
    plot(rows, args.out)


if __name__ == "__main__":
    main()
