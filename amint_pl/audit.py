"""Audit a trained model: was this data used to train it? Scores samples with a checkpoint's MINT head.

    python -m amint_pl.audit checkpoint=<run>/checkpoints/joint/best-epoch=012.ckpt inputs=<images>
    python -m amint_pl.audit checkpoint=... inputs=photo.png threshold=0.5 output=audit.csv
    python -m amint_pl.audit checkpoint=... inputs=split:members_seen   # a role of the run's splits
    python -m amint_pl.audit checkpoint=... inputs=split:all            # reproduces results.json
    python -m amint_pl.audit checkpoint=... inputs=<root>/<class>/<images>  # labelled by folder
    python -m amint_pl.audit checkpoint=... inputs=photos/ labels=labels.csv    # path,label
    python -m amint_pl.audit checkpoint=... inputs=batch.npy labels=labels.npy  # class indices

Settings (key=value):
    checkpoint  a .ckpt written by an amint_pl run (required). Loaded with weights_only; a file
                amint_pl did not write, or one changed since, is refused.
    inputs      an image file, a folder of images (searched recursively), a .npy or .pt uint8
                tensor (N, C, H, W) or (N, H, W) in the data set's native channels, or
                split:<role> / split:all: samples of the run's own splits.npz (fingerprint checked).
    labels      the inputs' classes, for a MINT head that reads the loss or the membership
                memory at the label: a CSV with the columns path,label (paths relative to the
                CSV's folder) for image inputs, a .npy or .pt of class indices (N,) for a tensor.
                A folder whose sub-folders are all named as the model's classes is labelled by
                them without it. Unlabelled samples are scored at their predicted class.
    threshold   calibrated (default: the run's threshold, calibrated on its calibration sets),
                or a probability such as 0.5.
    protocol    paper (default) or strict: whose calibration sets set the calibrated threshold.
    output      the CSV to write (never overwritten); default <run dir>/audit/<time>.csv.
    batch_size  samples per forward pass (default: the run's eval_batch_size).
    progress    seconds between the lines on stderr that say how far the decoding of image files
                and the scoring are (default 10; 0: a line each file and batch). An audit
                shorter than that prints none.
    device      auto (default: a GPU when there is one), cpu, cuda, cuda:1, ...

Inputs are preprocessed as the run's training data was: decoded to the data set's native channels,
resized to dataset.image_size the way its pools were (Pillow for data sets read from image files,
else `resize_images`), then the model's own `preprocess` (normalisation, channel conversion).
Each CSV row: the sample, the label it was scored at and whether it was given or predicted, the
predicted class, P(member) from the MINT head, and the decision (P >= threshold).
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from amint_pl.checkpoints import load_checkpoint
from amint_pl.data.audit_inputs import load_run_splits, read_inputs, read_split
from amint_pl.errors import AmintError, ConfigError
from amint_pl.evaluation.scoring import build_module, membership_probability, score

if TYPE_CHECKING:
    from amint_pl.training.module import AMINTModule

SETTINGS = (
    "checkpoint",
    "inputs",
    "labels",
    "threshold",
    "protocol",
    "output",
    "batch_size",
    "device",
    "progress",
)
SPLIT_PREFIX = "split:"


@dataclass
class AuditRequest:
    """What `python -m amint_pl.audit key=value ...` asks for."""

    checkpoint: Path
    inputs: str
    labels: Path | None = None
    threshold: str = "calibrated"
    protocol: str = "paper"
    output: Path | None = None
    batch_size: int | None = None
    device: str = "auto"
    progress_s: float = 10.0


def parse_args(argv: Sequence[str]) -> AuditRequest:
    """key=value arguments -> AuditRequest; a wrong one is a ConfigError naming the fix."""
    given: dict[str, str] = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in SETTINGS:
            raise ConfigError(
                f"'{arg}' is no audit setting: use key=value with keys {', '.join(SETTINGS)} "
                "(python -m amint_pl.audit --help)"
            )
        given[key] = value
    for key in ("checkpoint", "inputs"):
        if not given.get(key):
            raise ConfigError(
                f"{key}= is missing: python -m amint_pl.audit checkpoint=<run>/checkpoints/<phase>/"
                "<file>.ckpt inputs=<image | folder | .npy | .pt | split:<role>>"
            )
    threshold = given.get("threshold", "calibrated")
    if threshold != "calibrated":
        try:
            value = float(threshold)
        except ValueError:
            value = math.nan
        if not 0.0 <= value <= 1.0:
            raise ConfigError(
                f"threshold={threshold}: use calibrated or a probability in [0, 1], e.g. 0.5"
            )
    protocol = given.get("protocol", "paper")
    if protocol not in ("paper", "strict"):
        raise ConfigError(f"protocol={protocol}: use paper or strict")
    batch_size = given.get("batch_size")
    if batch_size is not None and (not batch_size.isdigit() or int(batch_size) < 1):
        raise ConfigError(f"batch_size={batch_size} must be a positive integer")
    progress = given.get("progress", "10")
    try:
        progress_s = float(progress)
    except ValueError:
        progress_s = math.nan
    if not 0.0 <= progress_s < math.inf:
        raise ConfigError(f"progress={progress} must be a number of seconds >= 0, e.g. 10")
    return AuditRequest(
        checkpoint=Path(given["checkpoint"]).expanduser(),
        inputs=given["inputs"],
        labels=Path(given["labels"]).expanduser() if given.get("labels") else None,
        threshold=threshold,
        protocol=protocol,
        output=Path(given["output"]).expanduser() if given.get("output") else None,
        batch_size=int(batch_size) if batch_size else None,
        device=given.get("device", "auto"),
        progress_s=progress_s,
    )


# ---------------------------------------------------------------------------------------------
# The run the checkpoint belongs to, and its calibrated threshold


def run_dir_of(checkpoint_path: Path) -> Path | None:
    """The run directory a checkpoint lives in (the nearest folder above it with splits.npz)."""
    for folder in list(checkpoint_path.resolve().parents)[:4]:
        if (folder / "splits.npz").is_file():
            return folder
    return None


def _final_phase_checkpoint(results: dict[str, Any], run_dir: Path) -> Path | None:
    best = results.get("best_checkpoints") or {}
    return (run_dir / list(best.values())[-1]).resolve() if best else None


def calibrated_threshold(
    request: AuditRequest, checkpoint: dict[str, Any], module: AMINTModule, run_dir: Path | None
) -> tuple[float, str]:
    """The P(member) threshold of the run's calibration sets: from results.json when it scored
    this very checkpoint, else calibrated now on the run's calibration sets."""
    from amint_pl.data.splits import PROTOCOLS
    from amint_pl.evaluation.metrics import calibrate_threshold

    results_path = run_dir / "results.json" if run_dir else None
    if results_path is not None and results_path.is_file():
        results = json.loads(results_path.read_text())
        mint = (results.get("membership") or {}).get(request.protocol, {}).get("mint") or {}
        scored = _final_phase_checkpoint(results, run_dir)
        if scored == request.checkpoint.resolve() and mint.get("threshold_calibrated") is not None:
            threshold = float(mint["threshold_calibrated"])
            return threshold, f"calibrated, {request.protocol} protocol, from results.json"
    try:
        splits, benchmark = load_run_splits(run_dir, checkpoint, request.checkpoint)
    except AmintError as err:
        raise ConfigError(
            f"threshold=calibrated needs the run's calibration data ({err}); or give threshold=0.5"
        ) from err
    role = f"{PROTOCOLS[request.protocol]}_calib"
    samples = read_split((role, "nonmembers_calib"), splits, benchmark)
    batch = request.batch_size or int(checkpoint["hyper_parameters"]["config"]["eval_batch_size"])
    scored = score(module, samples, batch, request.progress_s, "calibrating the threshold")
    probability = membership_probability(scored[1])
    is_member = np.array([r["role"] == role for r in samples.rows])
    if not is_member.any():
        raise ConfigError(f"the run has no {role} samples: use protocol=paper or threshold=0.5")
    threshold = calibrate_threshold(probability[is_member], probability[~is_member])
    return float(threshold), f"calibrated now on the {request.protocol} protocol's calibration sets"


# ---------------------------------------------------------------------------------------------
# Output


def default_output(checkpoint_path: Path, run_dir: Path | None) -> Path:
    folder = (run_dir or checkpoint_path.resolve().parent) / "audit"
    return folder / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{os.getpid()}.csv"


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write rows to a new CSV file; an existing file is never overwritten."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        file = open(path, "x", newline="")
    except FileExistsError as err:
        raise ConfigError(
            f"output={path} exists: audit never overwrites a file; give a new output= path"
        ) from err
    with file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def compare_with_results(membership: dict[str, Any], results_path: Path) -> tuple[float, list[str]]:
    """The largest difference between re-scored metrics and results.json's, and where they differ."""
    reported = json.loads(results_path.read_text()).get("membership", {})
    largest, differing = 0.0, []
    for protocol, methods in membership.items():
        for method, metrics in methods.items():
            for key, value in metrics.items():
                old = reported.get(protocol, {}).get(method, {}).get(key)
                if isinstance(value, bool) or not isinstance(value, int | float):
                    continue
                diff = abs(float(value) - float(old)) if isinstance(old, int | float) else math.inf
                largest = max(largest, diff)
                if diff > 1e-9:
                    differing.append(f"{protocol}/{method}/{key}: {old} -> {value}")
    return largest, differing


# ---------------------------------------------------------------------------------------------
# The command


def audit(request: AuditRequest) -> dict[str, Any]:
    """Score the inputs with the checkpoint's MINT head; write the CSV; return the summary."""
    if request.output is not None and request.output.exists():
        raise ConfigError(
            f"output={request.output} exists: audit never overwrites a file; give a new output= path"
        )
    import torch

    from amint_pl.data.splits import CALIB_SLICES, ROLES
    from amint_pl.models.mint_head import LABELLED_FEATURES

    device = request.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    checkpoint = load_checkpoint(request.checkpoint)  # refuses a foreign or changed file
    hparams = checkpoint["hyper_parameters"]
    config = hparams["config"]
    try:
        module = build_module(checkpoint, request.checkpoint, device)
    except RuntimeError as err:
        raise ConfigError(
            f"device={request.device} cannot be used ({err}): use device=cpu"
        ) from err
    run_dir = run_dir_of(request.checkpoint)
    batch_size = request.batch_size or int(config["eval_batch_size"])

    split_role = (
        request.inputs[len(SPLIT_PREFIX) :] if request.inputs.startswith(SPLIT_PREFIX) else None
    )
    splits = None
    if split_role is not None and request.labels is not None:
        raise ConfigError(
            f"labels= is for image and tensor inputs: {request.inputs} has the data set's labels"
        )
    if split_role is not None:
        known = (*ROLES, *CALIB_SLICES)
        if split_role not in (*known, "all"):
            raise ConfigError(f"inputs={request.inputs}: use split:<{' | '.join(known)} | all>")
        splits, benchmark = load_run_splits(run_dir, checkpoint, request.checkpoint)
        samples = read_split(ROLES if split_role == "all" else (split_role,), splits, benchmark)
    else:
        samples = read_inputs(request.inputs, hparams, request.labels, request.progress_s)

    logits, mint_logits = score(module, samples, batch_size, request.progress_s)
    probability = membership_probability(mint_logits)
    if request.threshold == "calibrated":
        threshold, source = calibrated_threshold(request, checkpoint, module, run_dir)
    else:
        threshold, source = float(request.threshold), "given"
    member = probability >= threshold
    prediction = logits.argmax(1)
    # The label each sample was scored at: given, or (unlabelled) the predicted class.
    label, label_source = (
        (samples.labels, "given") if samples.labels is not None else (prediction, "predicted")
    )
    rows = [
        {
            **row,
            "label": int(label[i]),
            "label_source": label_source,
            "prediction": int(prediction[i]),
            "membership_probability": float(probability[i]),
            "member": int(member[i]),
        }
        for i, row in enumerate(samples.rows)
    ]
    output = request.output or default_output(request.checkpoint, run_dir)
    write_csv(output, rows)

    summary: dict[str, Any] = {
        "checkpoint": str(request.checkpoint),
        "inputs": request.inputs,
        "n_samples": len(rows),
        "threshold": threshold,
        "threshold_source": source,
        "n_members": int(member.sum()),
        "mean_membership_probability": float(probability.mean()),
        "csv": str(output),
    }
    print(f"audit: {len(rows)} sample(s) from {request.inputs}")
    print(
        f"model: {config['dataset']['name']} | {config['model']['name']} | "
        f"mint={config['mint']['mode']} | phase {checkpoint['amint_phase']} | epoch "
        f"{checkpoint.get('epoch')} (amint_pl {checkpoint.get('amint_pl_version')})"
    )
    print(
        f"preprocessed as in training: {hparams['native_channels']} channel(s), "
        f"{config['dataset']['image_size']}x{config['dataset']['image_size']} px, the run's "
        "normalisation"
    )
    labelled_features = [f for f in module.mint_head.output_features if f in LABELLED_FEATURES]
    if samples.labels is not None:
        print(f"labels: given, from {samples.labels_from}")
    elif labelled_features:
        print(
            f"labels: none given, so the MINT head reads its {' and '.join(labelled_features)} "
            "feature(s) at each sample's predicted class (label_source=predicted): give class "
            "folders, labels=<path,label .csv> or labels=<.npy of class indices>"
        )
    summary["label_source"] = label_source
    print(f"threshold: {threshold:.6g} ({source})")
    print(
        f"members (P(member) >= threshold): {summary['n_members']} of {len(rows)}; "
        f"mean P(member) {summary['mean_membership_probability']:.4f}"
    )
    if split_role == "all":
        summary.update(
            _reproduce_run(samples, logits, mint_logits, splits, checkpoint, request, run_dir)
        )
    print(f"csv: {output}")
    return summary


def _reproduce_run(samples, logits, mint_logits, splits, checkpoint, request, run_dir) -> dict:
    """split:all: every metric of the run, recomputed; compared with results.json."""
    import torch

    from amint_pl.evaluation.report import (
        audited_accuracy,
        membership_results,
        print_table,
        scored_samples,
    )

    pool_id, index, role = samples.catalogue
    labels = torch.from_numpy(samples.labels)
    predictions = [
        {
            "index": torch.as_tensor(index),
            "pool": torch.as_tensor(pool_id),
            "role": torch.as_tensor(role),
            "labels": labels,
            "logits": torch.from_numpy(logits),
            "mint_logits": torch.from_numpy(mint_logits),
        }
    ]
    scored = scored_samples(predictions)
    membership = membership_results(scored, splits)
    config = checkpoint["hyper_parameters"]["config"]
    print_table(
        {
            "dataset": config["dataset"]["name"],
            "model": config["model"]["name"],
            "mint_mode": config["mint"]["mode"],
            "audited": audited_accuracy(scored),
            "membership": membership,
        }
    )
    out: dict[str, Any] = {"membership": membership}
    results_path = run_dir / "results.json"
    if not results_path.is_file():
        return out
    results = json.loads(results_path.read_text())
    if _final_phase_checkpoint(results, run_dir) != request.checkpoint.resolve():
        print(
            "results.json scored another checkpoint "
            f"({list((results.get('best_checkpoints') or {'-': '-'}).values())[-1]}): not compared"
        )
        return out
    largest, differing = compare_with_results(membership, results_path)
    out["largest_difference_from_results"] = largest
    if differing:
        print(f"differs from results.json in {len(differing)} value(s): {'; '.join(differing[:5])}")
    else:
        print(f"reproduces results.json: every metric of every method within {largest:.1e}")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m amint_pl.audit checkpoint=<ckpt> inputs=<...> [threshold=...] [output=...]`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    try:
        audit(parse_args(argv))
    except AmintError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
