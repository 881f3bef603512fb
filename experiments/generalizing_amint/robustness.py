"""How much does a run's membership detection survive small changes of the audited images?

The membership memory (`mint=active_general`) hashes the image exactly as the model saw it, so an
image changed before the audit (noise, a one-pixel shift, a flip, JPEG) may lose its trace. This
scores a finished run's reported members and non-members through `amint_pl.audit`'s own loading
and scoring, once per perturbation, and prints the MINT head's AUC in both protocols, the LOSS
attack's, and the audited test accuracy:

    python experiments/generalizing_amint/robustness.py <run dir> [--out table.md]
"""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from amint_pl.audit import (
    Samples,
    build_module,
    load_checkpoint,
    load_run_splits,
    read_split,
    score,
)
from amint_pl.evaluation.metrics import auc


def jpeg(images: np.ndarray, quality: int) -> np.ndarray:
    out = np.empty_like(images)
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image.transpose(1, 2, 0).squeeze(-1)).save(buffer, "JPEG", quality=quality)
        decoded = np.asarray(Image.open(buffer))
        out[i] = decoded.reshape(image.shape[1], image.shape[2], -1).transpose(2, 0, 1)
    return out


def noise(images: np.ndarray, levels: int, seed: int = 0) -> np.ndarray:
    step = np.random.default_rng(seed).integers(-levels, levels + 1, images.shape)
    return np.clip(images.astype(np.int16) + step, 0, 255).astype(np.uint8)


PERTURBATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "none": lambda x: x,
    "noise +-1 grey level": lambda x: noise(x, 1),
    "noise +-4 grey levels": lambda x: noise(x, 4),
    "JPEG quality 95": lambda x: jpeg(x, 95),
    "shift 1 pixel right": lambda x: np.roll(x, 1, axis=-1),
    "horizontal flip": lambda x: np.ascontiguousarray(x[..., ::-1]),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    results = json.loads((args.run_dir / "results.json").read_text())
    path = args.run_dir / list(results["best_checkpoints"].values())[-1]
    checkpoint = load_checkpoint(path)
    module = build_module(checkpoint, path, "cpu")
    splits, benchmark = load_run_splits(args.run_dir, checkpoint, path)
    roles = ("members_seen", "members_unseen", "nonmembers_eval")
    samples = read_split(roles, splits, benchmark)
    role = np.array([r["role"] for r in samples.rows])
    labels = samples.labels
    lines = [
        "| perturbation | paper MINT AUC | strict MINT AUC | strict LOSS AUC | test accuracy |",
        "|---|---|---|---|---|",
    ]
    for name, perturb in PERTURBATIONS.items():
        changed = Samples(perturb(samples.images), samples.rows, samples.catalogue)
        logits, mint = score(module, changed, 512)
        loss = F.cross_entropy(
            torch.from_numpy(logits), torch.from_numpy(labels), reduction="none"
        ).numpy()
        out = role == "nonmembers_eval"
        seen, unseen = role == "members_seen", role == "members_unseen"
        accuracy = float((logits.argmax(1) == labels)[out].mean())
        lines.append(
            f"| {name} | {auc(mint[seen], mint[out]):.3f} | {auc(mint[unseen], mint[out]):.3f} "
            f"| {auc(-loss[unseen], -loss[out]):.3f} | {accuracy:.3f} |"
        )
        print(lines[-1], flush=True)
    table = "\n".join(lines) + "\n"
    print(f"\n{args.run_dir}\n{table}")
    if args.out:
        args.out.write_text(table)


if __name__ == "__main__":
    main()
