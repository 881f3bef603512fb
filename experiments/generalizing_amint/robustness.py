"""Does a run's membership detection survive what real copies of an image go through?

For each finished run, the strict protocol's reported members (trained on, never MINT positives)
and every reported test non-member are changed by each transformation below, then scored by
three methods; one CSV row per transformation x method x run seed:

- `mint_<record>`: the run's MINT head, loaded and scored as the audit does
  (`amint_pl.evaluation.scoring`; with the membership memory, `<record>` is its
  `mint.memory.record`, with `_flip_crop` when the run trained under augmentation; without one,
  `none`);
- `loss_<record>`: the LOSS attack on the same model (minus the log loss at the label);
- `memory_<record>`: with a membership memory, its margin at the label alone (what the record
  itself answers, read during the same scoring, without the head);
- `exact_hash`: an auditor who keeps the SHA-256 of every training image (hit = member).

A `mint=off` run (no MINT head: `<record>` is `off`) gives the LOSS attack and the hash list, and
its audited accuracy under each transformation: the reference a memory's accuracy is held to.

    python experiments/generalizing_amint/robustness.py <run dir> [<run dir> ...] \\
        [--out experiments/results/generalizing/robustness.csv] [--append] [--plot robustness.png]

`--transforms` picks among the targets' changes (TRANSFORMS, the default) and the harder ones
beyond them (BEYOND: shifts up to 4 pixels, an 80% crop resized back, rotations up to 5 degrees,
a Gaussian blur of radius 1).

Columns: transform, method, seed, auc_strict, tpr01_strict (TPR at 0.1% FPR), aud_test_acc (the
audited model's accuracy on the transformed test non-members; empty for `exact_hash`). An
existing CSV is refused unless --append adds to it (rows already there, by transform, method and
seed, are kept and not written twice).

The scripts that measure a record before any training (`record_design.py`,
`fingerprint_design.py`) take their options, data and per-transformation rows from here
(`design_parser`, `design_data`, `design_rows`, `save_design`), so that they meet the same
changed images.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from amint_pl.checkpoints import load_checkpoint
from amint_pl.data.audit_inputs import Samples, load_run_splits, read_split
from amint_pl.data.benchmarks import load_benchmark
from amint_pl.data.splits import POOL_NAMES
from amint_pl.errors import AmintError
from amint_pl.evaluation.metrics import auc, tpr_at_fpr
from amint_pl.evaluation.scoring import build_module
from amint_pl.evaluation.scoring import score as mint_score
from amint_pl.models.memory import memory_margin, memory_record

COLUMNS = ("transform", "method", "seed", "auc_strict", "tpr01_strict", "aud_test_acc")
DEFAULT_OUT = Path("experiments/results/generalizing/robustness.csv")
# The seed of the transformations' random draws (offset by the transformation's place in
# ALL_TRANSFORMS): every run and method meets the same changed images.
DRAW_SEED = 0


def _pil(image: np.ndarray) -> Image.Image:
    """A uint8 (C, H, W) image as Pillow's grey or RGB image."""
    return Image.fromarray(
        image.transpose(1, 2, 0).squeeze(-1) if len(image) == 1 else image.transpose(1, 2, 0)
    )


def _array(picture: Image.Image, channels: int) -> np.ndarray:
    out = np.asarray(picture)
    return out.reshape(*out.shape[:2], channels).transpose(2, 0, 1)


def hflip(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.ascontiguousarray(images[..., ::-1])


def shift(images: np.ndarray, rng: np.random.Generator, most: int = 2) -> np.ndarray:
    """Each image moved by (dy, dx), both within [-most, most] and not both 0; black fills."""
    out = np.zeros_like(images)
    moves = [(dy, dx) for dy in range(-most, most + 1) for dx in range(-most, most + 1) if dy or dx]
    height, width = images.shape[-2:]
    for i, k in enumerate(rng.integers(0, len(moves), len(images))):
        dy, dx = moves[k]
        out[i, :, max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] = images[
            i, :, max(-dy, 0) : height + min(-dy, 0), max(-dx, 0) : width + min(-dx, 0)
        ]
    return out


def crop(images: np.ndarray, rng: np.random.Generator, share: float = 0.9) -> np.ndarray:
    """A crop of `share` of each side at a random place, resized back (Pillow, bilinear)."""
    height, width = images.shape[-2:]
    h, w = round(share * height), round(share * width)
    out = np.empty_like(images)
    for i, image in enumerate(images):
        top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
        part = _pil(np.ascontiguousarray(image[:, top : top + h, left : left + w]))
        out[i] = _array(part.resize((width, height), Image.BILINEAR), len(image))
    return out


def jpeg(images: np.ndarray, rng: np.random.Generator, quality: int = 75) -> np.ndarray:
    out = np.empty_like(images)
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        _pil(image).save(buffer, "JPEG", quality=quality)
        out[i] = _array(Image.open(buffer), len(image))
    return out


def noise(images: np.ndarray, rng: np.random.Generator, sigma: float = 4.0) -> np.ndarray:
    """Gaussian noise of `sigma` grey levels (of 255), rounded and clipped."""
    noisy = np.round(images + rng.normal(0.0, sigma, images.shape))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def gamma(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """255 * (x / 255) ** g, g log-uniform in [0.8, 1.25] per image."""
    g = np.exp(rng.uniform(np.log(0.8), np.log(1.25), (len(images), 1, 1, 1)))
    return np.clip(np.round(255.0 * (images / 255.0) ** g), 0, 255).astype(np.uint8)


TRANSFORMS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "none": lambda images, rng: images,
    "hflip": hflip,
    "shift2": shift,
    "crop90": crop,
    "jpeg75": jpeg,
    "noise4": noise,
    "gamma": gamma,
}


def rotate(images: np.ndarray, rng: np.random.Generator, most: float = 5.0) -> np.ndarray:
    """Each image turned about its centre by an angle uniform in [-most, most] degrees (Pillow,
    bilinear; black fills the corners)."""
    out = np.empty_like(images)
    angles = rng.uniform(-most, most, len(images))
    for i, (image, angle) in enumerate(zip(images, angles, strict=True)):
        out[i] = _array(_pil(image).rotate(float(angle), Image.BILINEAR), len(image))
    return out


def blur(images: np.ndarray, rng: np.random.Generator, radius: float = 1.0) -> np.ndarray:
    """Pillow's Gaussian blur of `radius` pixels."""
    out = np.empty_like(images)
    for i, image in enumerate(images):
        out[i] = _array(_pil(image).filter(ImageFilter.GaussianBlur(radius)), len(image))
    return out


# Changes beyond the targets above, to find where a record stops: measured on request
# (--transforms); their draws come after TRANSFORMS' (their place in ALL_TRANSFORMS).
BEYOND: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "shift4": partial(shift, most=4),
    "crop80": partial(crop, share=0.8),
    "rotate5": rotate,
    "blur1": blur,
}
ALL_TRANSFORMS = {**TRANSFORMS, **BEYOND}


def image_hash(image: np.ndarray) -> bytes:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).digest()


def method_tag(config: dict) -> str:
    """`<record>` of the run's membership memory (`none` without one), `_flip_crop` when it
    trained under augmentation."""
    off = config["mint"].get("mode") == "off"
    tag = "off" if off else memory_record(config["mint"].get("memory")) or "none"
    augment = config["dataset"].get("augment", "none")
    return tag if augment == "none" else f"{tag}_{augment}"


def rows_of_run(run_dir: Path, transforms: list[str]) -> list[dict]:
    results = json.loads((run_dir / "results.json").read_text())
    path = run_dir / list(results["best_checkpoints"].values())[-1]
    checkpoint = load_checkpoint(path)
    config = checkpoint["hyper_parameters"]["config"]
    module = build_module(checkpoint, path, "cpu", head=config["mint"].get("mode") != "off")
    splits, benchmark = load_run_splits(run_dir, checkpoint, path)
    members, nonmembers = splits.reported("strict")
    samples = read_split(("members_unseen", "nonmembers_eval"), splits, benchmark)
    pool_id, index, _ = samples.catalogue
    train = pool_id == POOL_NAMES.index("train")
    is_member = train & np.isin(index, members)
    is_nonmember = ~train & np.isin(index, nonmembers)
    keep = is_member | is_nonmember
    images, labels, is_member = samples.images[keep], samples.labels[keep], is_member[keep]
    training = benchmark.train.images[splits.members]
    hashes = {image_hash(image) for image in training}
    tag, seed = method_tag(config), int(config["seed"])
    batch = int(config.get("eval_batch_size") or 512)
    out = []
    memory_logits: list[torch.Tensor] = []
    if module.memory is not None:  # its logits, as the scoring computes them
        module.memory.register_forward_hook(lambda m, i, logits: memory_logits.append(logits))
    for name in transforms:
        draws = np.random.default_rng(DRAW_SEED + list(ALL_TRANSFORMS).index(name))
        changed = ALL_TRANSFORMS[name](images, draws)
        memory_logits.clear()
        logits, mint = mint_score(
            module, Samples(changed, [{}] * len(changed), None, labels), batch
        )
        loss = F.cross_entropy(
            torch.from_numpy(logits), torch.from_numpy(labels), reduction="none"
        ).numpy()
        accuracy = float((logits.argmax(1) == labels)[~is_member].mean())
        hit = np.array([image_hash(image) in hashes for image in changed], dtype=np.float64)
        methods = [(f"loss_{tag}", -loss, accuracy)]
        if mint is not None:
            methods.insert(0, (f"mint_{tag}", mint, accuracy))
        if memory_logits:
            margin = memory_margin(torch.cat(memory_logits).float(), torch.from_numpy(labels))
            methods.append((f"memory_{tag}", margin.numpy(), accuracy))
        for method, scores, acc in (*methods, ("exact_hash", hit, None)):
            member_scores, nonmember_scores = scores[is_member], scores[~is_member]
            row = {
                "transform": name,
                "method": method,
                "seed": seed,
                "auc_strict": round(auc(member_scores, nonmember_scores), 6),
                "tpr01_strict": round(tpr_at_fpr(member_scores, nonmember_scores, 0.001), 6),
                "aud_test_acc": "" if acc is None else round(acc, 6),
            }
            out.append(row)
            print(",".join(str(row[c]) for c in COLUMNS), flush=True)
    return out


def design_parser(doc: str) -> argparse.ArgumentParser:
    """The options of a script that measures a record before any training."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--members", type=int, default=25000)
    parser.add_argument("--scored", type=int, default=1000, help="members scored (x2 non-members)")
    parser.add_argument("--transforms", nargs="+", default=list(TRANSFORMS), choices=ALL_TRANSFORMS)
    parser.add_argument("--root", default="data/fashion_mnist")
    parser.add_argument("--out", type=Path, default=None)
    return parser


def design_data(
    parser: argparse.ArgumentParser, columns: tuple[str, ...]
) -> tuple[argparse.Namespace, tuple[np.ndarray, ...]]:
    """The parsed options, and (images, labels) of the members (the first --members of a seeded
    permutation of Fashion-MNIST's train pool), then of the outsiders (its first 2 x --scored
    test images); prints the rows' header."""
    args = parser.parse_args()
    torch.set_num_threads(1)
    benchmark = load_benchmark("fashion_mnist", args.root)
    order = np.random.default_rng(0).permutation(len(benchmark.train))[: args.members]
    outsiders = slice(0, 2 * args.scored)
    print(",".join(columns), flush=True)
    return args, (
        benchmark.train.images[order],
        benchmark.train.labels[order],
        benchmark.test.images[outsiders],
        benchmark.test.labels[outsiders],
    )


def design_rows(
    score: Callable[[np.ndarray, np.ndarray], np.ndarray],
    data: tuple[np.ndarray, ...],
    args: argparse.Namespace,
    columns: tuple[str, ...],
    **fixed: object,
) -> list[dict]:
    """One row per transformation of --transforms for a record measured before any training:
    `score(images, labels)` of the first --scored members and of the outsiders of `data`, each
    changed by the transformation (every script draws the same changes: the members DRAW_SEED +
    its place in ALL_TRANSFORMS, the outsiders 100 more), and its AUC and TPR at 1% and 0.1% FPR,
    after the `fixed` values. Each row is printed (its `columns`) as it comes."""
    images, labels, outsiders, outsider_labels = data
    rows = []
    for name in args.transforms:
        place = list(ALL_TRANSFORMS).index(name)
        change = ALL_TRANSFORMS[name]
        members = change(images[: args.scored], np.random.default_rng(DRAW_SEED + place))
        member_scores = score(members, labels[: args.scored])
        changed = change(outsiders, np.random.default_rng(DRAW_SEED + 100 + place))
        outsider_scores = score(changed, outsider_labels)
        row = {
            **fixed,
            "transform": name,
            "members": args.members,
            "scored": f"{args.scored}/{2 * args.scored}",
            "auc": round(auc(member_scores, outsider_scores), 4),
            "tpr1": round(tpr_at_fpr(member_scores, outsider_scores, 0.01), 4),
            "tpr01": round(tpr_at_fpr(member_scores, outsider_scores, 0.001), 4),
        }
        rows.append(row)
        print(",".join(str(row[c]) for c in columns), flush=True)
    return rows


def save_design(path: Path, rows: list[dict], columns: tuple[str, ...]) -> None:
    """A design script's rows as a CSV of its `columns`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {path}")


def write_rows(path: Path, rows: list[dict], append: bool) -> None:
    kept: list[dict] = []
    if path.exists():
        with path.open(newline="") as handle:
            kept = list(csv.DictReader(handle))
    have = {(r["transform"], r["method"], str(r["seed"])) for r in kept}
    new = [r for r in rows if (r["transform"], r["method"], str(r["seed"])) not in have]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a" if kept else "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        if not kept:
            writer.writeheader()
        writer.writerows(new)


def plot(path: Path, rows: list[dict]) -> None:
    """AUC and TPR at 0.1% FPR per transformation and method: the mean over seeds, the range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    transforms = list(dict.fromkeys(r["transform"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 1.3 * len(transforms)), 7), sharex=True)
    width = 0.8 / len(methods)
    for ax, key, label, target in (
        (axes[0], "auc_strict", "strict AUC", 0.95),
        (axes[1], "tpr01_strict", "strict TPR at 0.1% FPR", 0.90),
    ):
        for m, method in enumerate(methods):
            values = [
                [float(r[key]) for r in rows if r["method"] == method and r["transform"] == t]
                for t in transforms
            ]
            mean = [np.mean(v) if v else np.nan for v in values]
            # The mean of equal seeds can round past them: no bar below zero.
            low = [max(m_ - min(v), 0.0) if v else 0 for m_, v in zip(mean, values, strict=True)]
            high = [max(max(v) - m_, 0.0) if v else 0 for m_, v in zip(mean, values, strict=True)]
            x = np.arange(len(transforms)) + (m - (len(methods) - 1) / 2) * width
            ax.bar(x, mean, width, yerr=[low, high], label=method, capsize=2)
        ax.axhline(target, color="k", ls="--", lw=0.8)
        ax.set_ylabel(label)
        ax.set_ylim(0, 1.02)
    axes[1].set_xticks(range(len(transforms)), transforms)
    # Above the bars, not over them.
    axes[0].legend(fontsize=7, ncol=4, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dirs", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--append", action="store_true", help="add to an existing CSV")
    parser.add_argument("--plot", type=Path, default=None, help="default: the CSV's name, .png")
    parser.add_argument("--transforms", nargs="+", default=list(TRANSFORMS), choices=ALL_TRANSFORMS)
    args = parser.parse_args()
    if args.out.exists() and not args.append:
        print(
            f"error: {args.out} exists: give --append to add to it, or another --out",
            file=sys.stderr,
        )
        sys.exit(2)
    for run_dir in args.run_dirs:
        if not (run_dir / "results.json").is_file():
            print(
                f"error: {run_dir} has no results.json: give a finished run's directory",
                file=sys.stderr,
            )
            sys.exit(2)
    try:
        rows = [row for run_dir in args.run_dirs for row in rows_of_run(run_dir, args.transforms)]
    except AmintError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    write_rows(args.out, rows, args.append)
    with args.out.open(newline="") as handle:
        everything = list(csv.DictReader(handle))
    plot(args.plot or args.out.with_suffix(".png"), everything)
    print(f"wrote {args.out} ({len(everything)} rows) and its plot")


if __name__ == "__main__":
    main()
