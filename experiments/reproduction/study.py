"""The reproduction study: the paper's six architectures on real Fashion-MNIST, one run per row.

Each row is one `python -m amint_pl.run` at the study's budget (5,000 MINT-positive and 1,000
CE-only members, 5,000 external samples, 10 epochs) and appends one line to the CSV as soon as it
finishes, so an interrupted study keeps what it measured and a second call runs only the rows the
CSV lacks. Rows run in the order below: the cheap, decisive ones first.

    OMP_NUM_THREADS=1 python experiments/reproduction/study.py --out /tmp/repro        # all rows
    python experiments/reproduction/study.py --out /tmp/repro --models mobilenet --jobs 2
    python experiments/reproduction/study.py --list                                     # the plan
    python experiments/reproduction/table.py                                            # the table

Recipes (the `recipe` column):
- `ours`: the run defaults (Adam lr 1e-3, 64 members + 64 external per step, no augmentation), the
  light MINT head unless `head` says `paper`;
- `paper`: `experiment=paper` (Adam lr 1e-4, the paper's head, the `initial` loss weighting);
- `ours_aug`: `ours` with `dataset.augment=flip_crop` (random flips and shifts of up to 1/8).
- `ours_stem`: `ours` with `model.small_stem=true` (a 3x3 stride-1 first conv: 4x the positions
  per stage).
- `ours_aug_clean`: `ours` with the small stem, `dataset.augment=flip_crop`, the cosine rate
  (`optim.schedule=cosine`) and 15 or 25 epochs; aMINT's head reads the batch un-augmented
  (`mint.clean_views=true`).
- `ours_aug_clean_half`: `ours_aug_clean` with the MINT term at half weight (`mint.w_mint=0.5`)
  and the checkpoint picked by the calibration sets' audited accuracy (`mint.monitor=val/aud_acc`,
  the rule `mint=off` picks by) in place of `mint=active`'s MINT AUC.
- `ours_bf16`: `ours` trained in bf16 (`trainer.precision=bf16-mixed`; scores stay float32), for
  the paper's head, whose convolutions dominate the step at the middle tap; the head
  trains at the paper's rate (`mint.head.lr=1e-4`: at 1e-3 it dies in the first epoch).
- `ours_bf16_w2`: `ours_bf16` with the MINT term at twice the weight (`mint.w_mint=2`).
- `ours_bf16_cos`: `ours_bf16` with the cosine rate (both rates down to 0 over the 10 epochs).
- `ours_cos`: `ours` with the cosine rate and 20 epochs, for the ViT, which at 10 epochs has not
  yet fitted its members (train accuracy 0.82).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CSV_PATH = REPO / "experiments" / "results" / "reproduction" / "fashion_mnist.csv"
ARCHITECTURES = ("mobilenet", "vit", "resnet50", "densenet121", "xception", "resnet101")
TAPS = ("entry", "middle", "output")
COLUMNS = (
    "model",
    "taps",
    "mode",
    "head",
    "seed",
    "epochs",
    "aud_test_acc",
    "mint_auc_paper",
    "mint_bal_acc_paper",
    "tpr1_paper",
    "mint_auc_strict",
    "loss_auc_paper",
    "wall_s",
    "recipe",
    "aud_train_acc",
    "mint_auc_paper_ci",
    "run_dir",
    "date",
    "threads",
)
# The budget: 6,000 members of which 1/6 never serve as MINT positives, 5,000 external.
CSV_LOCK = threading.Lock()
BUDGET = (
    "dataset=fashion_mnist",
    "dataset.splits.members=6000",
    "dataset.splits.members_unseen_fraction=0.16667",
    "dataset.splits.external=5000",
    "logger=csv",
    "early_stopping_patience=100",
    "progress.interval_s=120",
)


# Recipes that change only aMINT's side of a run: their `mint=off` row is their base recipe's.
OFF_RECIPE = {"ours_aug_clean_half": "ours_aug_clean"}


@dataclass(frozen=True)
class Row:
    model: str
    taps: str
    mode: str
    head: str
    seed: int
    recipe: str
    epochs: int = 10

    @property
    def key(self) -> tuple[str, ...]:
        return (self.model, self.taps, self.mode, self.head, str(self.seed), self.recipe) + (
            () if self.epochs == 10 else (f"{self.epochs}ep",)
        )

    @property
    def name(self) -> str:
        return "_".join(self.key)

    def overrides(self) -> list[str]:
        args = [*BUDGET, f"model={self.model}", f"seed={self.seed}"]
        args.append(f"trainer.max_epochs={self.epochs}")
        if self.recipe == "paper":
            args.append("experiment=paper")
            # The paper preset keeps Fashion-MNIST's own split sizes; the budget above wins.
        if self.recipe == "ours_aug":
            args.append("dataset.augment=flip_crop")
        if self.recipe == "ours_stem":
            args.append("model.small_stem=true")
        if self.recipe == "ours_cos":
            args.append("optim.schedule=cosine")
        if self.recipe.startswith("ours_aug_clean"):
            args += ["model.small_stem=true", "dataset.augment=flip_crop", "optim.schedule=cosine"]
            if self.mode == "active":
                args.append("mint.clean_views=true")
        if self.recipe == "ours_aug_clean_half":
            args += ["mint.w_mint=0.5", "mint.monitor=val/aud_acc"]
        if self.recipe.startswith("ours_bf16"):
            args += ["trainer.precision=bf16-mixed", "mint.head.lr=1e-4"]
        if self.recipe == "ours_bf16_w2":
            args.append("mint.w_mint=2")
        if self.recipe == "ours_bf16_cos":
            args.append("optim.schedule=cosine")
        args.append(f"mint={self.mode}")
        if self.mode != "off":
            args += [f"mint/head={self.head}", f"mint.taps={self.taps}"]
        return args


def plan() -> list[Row]:
    """Every row of the study, the most telling first."""
    rows: list[Row] = []
    for model in ARCHITECTURES:
        rows.append(Row(model, "-", "off", "-", 0, "ours"))
        rows.append(Row(model, "middle", "active", "light", 0, "ours"))
        if model == "mobilenet":
            rows.append(Row(model, "middle", "active", "paper", 0, "paper"))
        rows.append(Row(model, "middle", "passive", "light", 0, "ours"))
    for model in ARCHITECTURES:
        rows += [Row(model, t, "active", "light", 0, "ours") for t in ("entry", "output")]
    rows += [Row("mobilenet", t, "active", "paper", 0, "paper") for t in ("entry", "output")]
    # The paper's recipe without aMINT: is its audited accuracy the recipe's or the head's?
    rows.append(Row("mobilenet", "-", "off", "-", 0, "paper"))
    # Does augmentation close MobileNet's generalisation gap, and what does it cost the MINT head?
    rows += [
        Row("mobilenet", "-", "off", "-", 0, "ours_aug"),
        Row("mobilenet", "middle", "active", "light", 0, "ours_aug"),
    ]
    # Does the small stem lift it (more positions per stage at 28 px)?
    rows += [
        Row("mobilenet", "-", "off", "-", 0, "ours_stem"),
        Row("mobilenet", "middle", "active", "light", 0, "ours_stem"),
    ]
    # Augmentation for the network, the clean images for the MINT head: more epochs, as flips and
    # shifts slow the fit.
    rows += [
        Row("mobilenet", mint_taps, mode, head, 0, "ours_aug_clean", epochs=epochs)
        for epochs in (15, 25)
        for mode, mint_taps, head in (("off", "-", "-"), ("active", "middle", "light"))
    ]
    # aMINT's accuracy cost there: a lighter MINT term, the checkpoint picked as `mint=off` picks it.
    rows.append(Row("mobilenet", "middle", "active", "light", 0, "ours_aug_clean_half", epochs=25))
    # The paper's head at the run defaults' rate, in bf16; with its term weighing twice; with the
    # cosine rate.
    rows += [
        Row("mobilenet", "middle", "active", "paper", 0, r)
        for r in ("ours_bf16", "ours_bf16_w2", "ours_bf16_cos")
    ]
    # The last of those, which meets the paper code's figures, at the other two taps.
    rows += [
        Row("mobilenet", t, "active", "paper", 0, "ours_bf16_cos") for t in ("entry", "output")
    ]
    # The ViT under-fits in 10 epochs: does a longer, decaying rate take it past 0.80?
    rows += [
        Row("vit", mint_taps, mode, head, 0, "ours_cos", epochs=20)
        for mode, mint_taps, head in (
            ("off", "-", "-"),
            ("active", "middle", "light"),
            ("passive", "middle", "light"),
        )
    ]
    for seed in (1, 2):
        rows += [
            Row("mobilenet", "-", "off", "-", seed, "ours"),
            Row("mobilenet", "middle", "active", "light", seed, "ours"),
            Row("mobilenet", "middle", "active", "paper", seed, "paper"),
        ]
    # Seeds of the recipes that meet the targets: MobileNet's accuracy, the paper head's AUC.
    for seed in (1, 2):
        rows += [
            Row("mobilenet", "-", "off", "-", seed, "ours_aug_clean", epochs=25),
            Row("mobilenet", "middle", "active", "light", seed, "ours_aug_clean_half", epochs=25),
            Row("mobilenet", "middle", "active", "paper", seed, "ours_bf16_cos"),
        ]
    return rows


def key_of(line: dict[str, str]) -> tuple[str, ...]:
    """The key of the Row a CSV line records (epochs count only where they are not the budget's
    10)."""
    key = (line["model"], line["taps"], line["mode"], line["head"], line["seed"], line["recipe"])
    return key + (() if line["epochs"] == "10" else (f"{line['epochs']}ep",))


def done_keys(path: Path) -> set[tuple[str, ...]]:
    if not path.exists():
        return set()
    with path.open() as f:
        return {key_of(r) for r in csv.DictReader(f)}


def record(row: Row, run_dir: Path, wall_s: float) -> dict:
    """One CSV line from a finished run's results.json (wall_s: this command's; a resumed run
    counts every attempt, as its results.json does)."""
    results = json.loads((run_dir / "results.json").read_text())
    wall_s = results.get("wall_time_all_attempts_s", wall_s)
    paper = results["membership"]["paper"]
    strict = results["membership"].get("strict", {})
    mint = paper.get("mint", {})

    def fmt(value) -> str:
        return "" if value is None else f"{value:.4f}"

    ci = mint.get("auc_ci")
    return {
        "model": row.model,
        "taps": row.taps,
        "mode": row.mode,
        "head": row.head,
        "seed": row.seed,
        "epochs": results["epochs_trained"],
        "aud_test_acc": fmt(results["audited"]["test_acc"]),
        "mint_auc_paper": fmt(mint.get("auc")),
        "mint_bal_acc_paper": fmt(mint.get("acc_at_0.5")),
        "tpr1_paper": fmt(mint.get("tpr_at_1%_fpr")),
        "mint_auc_strict": fmt(strict.get("mint", {}).get("auc")),
        "loss_auc_paper": fmt(paper["loss"]["auc"]),
        "wall_s": f"{wall_s:.0f}",
        "recipe": row.recipe,
        "aud_train_acc": fmt(results["audited"]["train_acc"]),
        "mint_auc_paper_ci": "" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]",
        "run_dir": str(run_dir),
        "date": time.strftime("%Y-%m-%d"),
        # The run's torch threads: 2 marks a timing run (nothing else running), 1 one of the
        # background runs, two at a time. Empty in lines written before the column.
        "threads": os.environ.get("OMP_NUM_THREADS") or str(os.cpu_count()),
    }


def completed(run_dir: Path) -> bool:
    """Whether the run in run_dir finished (an interrupted or failed one writes results.json too,
    with its status)."""
    path = run_dir / "results.json"
    return path.exists() and json.loads(path.read_text()).get("status") == "completed"


def run_row(row: Row, out: Path, csv_path: Path, extra: list[str]) -> str:
    run_dir = out / row.name
    if run_dir.exists() and not completed(run_dir):
        # An interrupted attempt: its own last checkpoint resumes it.
        extra = [*extra, "ckpt_path=last"]
    cmd = [
        sys.executable,
        "-m",
        "amint_pl.run",
        *row.overrides(),
        *extra,
        f"paths.log_dir={out}",
        f"hydra.run.dir={run_dir}",
    ]
    start = time.time()
    with (out / f"{row.name}.log").open("a") as log:
        proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    wall = time.time() - start
    if proc.returncode != 0 or not completed(run_dir):
        return f"{row.name}: failed (exit {proc.returncode}), see {out / (row.name + '.log')}"
    line = record(row, run_dir, wall)
    with CSV_LOCK:
        new = not csv_path.exists()
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        with csv_path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            if new:
                writer.writeheader()
            writer.writerow(line)
    return f"{row.name}: test acc {line['aud_test_acc']}, MINT AUC {line['mint_auc_paper']}, {wall:.0f} s"


def to_run(done: set, models=None, recipes=None, seeds=None, modes=None) -> list[Row]:
    """The planned rows not yet in the CSV, in plan order, kept to the architectures, recipes,
    seeds and MINT modes asked for (None: all)."""
    return [
        r
        for r in plan()
        if r.key not in done
        and (not models or r.model in models)
        and (not recipes or r.recipe in recipes)
        and (seeds is None or r.seed in seeds)
        and (not modes or r.mode in modes)
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/reproduction"))
    parser.add_argument("--csv", type=Path, default=CSV_PATH)
    parser.add_argument("--models", nargs="*", default=None, help="only these architectures")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (one core each)")
    parser.add_argument("--recipes", nargs="*", default=None, help="only these recipes")
    parser.add_argument("--seeds", nargs="*", type=int, default=None, help="only these seeds")
    parser.add_argument(
        "--modes", nargs="*", default=None, help="only these MINT modes (active, passive, off)"
    )
    parser.add_argument("--limit", type=int, default=None, help="at most this many rows")
    parser.add_argument("--list", action="store_true", help="print the rows still to run")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args()

    todo = to_run(done_keys(args.csv), args.models, args.recipes, args.seeds, args.modes)
    todo = todo[: args.limit]
    if args.list:
        for row in todo:
            print(" ".join(row.overrides()))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_MODE", "offline")
    print(f"{len(todo)} runs, {args.jobs} at a time, into {args.out}", flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        for message in pool.map(lambda r: run_row(r, args.out, args.csv, args.overrides), todo):
            print(message, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
