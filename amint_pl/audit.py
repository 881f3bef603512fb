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
from amint_pl.errors import AmintError, CheckpointError, ConfigError, CorruptDataError, SplitError
from amint_pl.status import batch_progress

if TYPE_CHECKING:
    from amint_pl.data.benchmarks import Benchmark
    from amint_pl.data.splits import MembershipSplits
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
TENSOR_SUFFIXES = (".npy", ".pt", ".pth")


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
# The checkpoint


def build_module(checkpoint: dict[str, Any], path: Path, device: str) -> AMINTModule:
    """The AMINTModule the checkpoint holds, in eval mode on `device`."""
    from amint_pl.training.module import AMINTModule

    module = AMINTModule(**checkpoint["hyper_parameters"])
    phase = checkpoint["amint_phase"]
    if module.mint_head is None:
        raise ConfigError(
            f"{path} has no MINT head (its run used mint=off): audit a run trained with "
            "mint=active or mint=passive"
        )
    if phase == "audited":
        raise ConfigError(
            f"{path} is from the audited-model phase of a passive run, before its MINT head was "
            "trained: audit a checkpoint from checkpoints/mint_head/"
        )
    module.set_phase(phase)
    try:
        module.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:  # e.g. a membership memory from before its hash changed
        reason = " ".join(str(err).split())[:200]
        raise CheckpointError(
            f"{path} does not fit the model this amint_pl builds from its config ({reason}): "
            "audit it with the amint_pl that wrote it, or train it again with this one"
        ) from err
    return module.to(device).eval()


def run_dir_of(checkpoint_path: Path) -> Path | None:
    """The run directory a checkpoint lives in (the nearest folder above it with splits.npz)."""
    for folder in list(checkpoint_path.resolve().parents)[:4]:
        if (folder / "splits.npz").is_file():
            return folder
    return None


# ---------------------------------------------------------------------------------------------
# Inputs -> uint8 images in the data set's native channels and the training size


@dataclass
class Samples:
    """Images to score (uint8 (N, C, S, S)), one CSV description per image, and their labels
    (int64 (N,)) where known, with where they came from; unlabelled samples are scored at their
    predicted class."""

    images: np.ndarray
    rows: list[dict[str, Any]]
    catalogue: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # pool, index, role code
    labels: np.ndarray | None = None
    labels_from: str = ""


@dataclass(frozen=True)
class Classes:
    """The model's classes by the names its data set gives them (`Benchmark.class_names`, kept
    in the checkpoint): class folders for data sets stored as class folders, else "0", "1", ..."""

    names: tuple[str, ...]

    def label(self, name: str) -> int | None:
        """The label a class name stands for, or None. A whole number stands for the class with
        that number as its name (GTSRB's 00007 is 7), or, where no class is named by a number,
        for the class with that index."""
        name = name.strip()
        if name in self.names:
            return self.names.index(name)
        if not name.isdecimal():
            return None
        numbered = [i for i, n in enumerate(self.names) if n.isdecimal()]
        if numbered:
            return next((i for i in numbered if int(self.names[i]) == int(name)), None)
        return int(name) if int(name) < len(self.names) else None

    def describe(self) -> str:
        if not self.names:
            return (
                "the checkpoint records no class names: train it again with this amint_pl, or "
                "audit a tensor of the images with labels=<.npy of class indices>"
            )
        shown = ", ".join(self.names[:8]) + (", ..." if len(self.names) > 8 else "")
        return f"its {len(self.names)} classes are {shown}"


def _decode_native(path: Path, channels: int) -> np.ndarray:
    """One image file at its own size -> uint8 (channels, H, W)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        reason = " ".join(str(err).split())[:160] or type(err).__name__
        raise CorruptDataError(f"{path} is not a readable image ({reason}): remove it") from err
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


class StderrProgress:
    """Lines on stderr saying how far a loop is, `<what>: <unit> n/N | samples/s | elapsed ETA`:
    one every interval_s seconds, and one after the last step once any was printed (None:
    silent)."""

    def __init__(self, what: str, total: int, interval_s: float | None, unit: str = "batch"):
        self.what, self.total, self.interval_s, self.unit = what, total, interval_s, unit
        self.started = self.last_line = time.monotonic()
        self.shown = False

    def step(self, done: int, samples: int) -> None:
        """`done` of the `total` steps finished, `samples` samples in them."""
        now = time.monotonic()
        due = self.interval_s is not None and now - self.last_line >= self.interval_s
        if due or (self.shown and done == self.total):
            line = batch_progress(done, self.total, samples, now - self.started, self.unit)[0]
            print(f"{self.what}: {line}", file=sys.stderr)
            self.last_line, self.shown = now, True


def read_image_files(
    paths: Sequence[Path],
    channels: int,
    size: int,
    dataset_name: str,
    progress_s: float | None = None,
) -> np.ndarray:
    """Image files -> uint8 (N, channels, size, size), decoded and resized as the pools were
    (progress_s: see `StderrProgress`)."""
    from amint_pl.data.benchmarks import IMAGE_FILE_DATASETS, resize_images
    from amint_pl.data.cache import decode_image

    def decode(path: Path) -> np.ndarray:
        if dataset_name in IMAGE_FILE_DATASETS:
            return decode_image(path, channels, size)
        return resize_images(_decode_native(path, channels)[None], size)[0]

    progress = StderrProgress("decoding images", len(paths), progress_s, unit="file")
    images = []
    for n, path in enumerate(paths, 1):
        images.append(decode(path))
        progress.step(n, n)
    return np.stack(images)


def load_array(path: Path) -> np.ndarray:
    """The array in a .npy file, or the tensor in a .pt / .pth file (loaded with weights_only)."""
    import torch

    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        tensor = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"it holds a {type(tensor).__name__}, not a tensor")
        return tensor.numpy()
    except (OSError, ValueError, RuntimeError, EOFError) as err:
        reason = " ".join(str(err).split())[:160] or type(err).__name__
        raise CorruptDataError(f"{path} is not a readable tensor file ({reason})") from err


def read_tensor_file(path: Path, channels: int, size: int) -> np.ndarray:
    """A .npy / .pt uint8 tensor (N, C, H, W), or (N, H, W) for 1 channel -> (N, C, size, size)."""
    from amint_pl.data.benchmarks import resize_images

    array = load_array(path)
    if array.dtype != np.uint8:
        raise ConfigError(
            f"{path} holds {array.dtype}, not uint8 images: save the raw pixels (0..255) as uint8, "
            "e.g. (x * 255).round().astype(np.uint8)"
        )
    if array.ndim == 3 and channels == 1:
        array = array[:, None]
    if array.ndim != 4 or array.shape[1] != channels:
        raise ConfigError(
            f"{path} has shape {tuple(array.shape)}: give (N, {channels}, H, W) uint8 images, "
            f"in the {channels} native channel(s) of the model's data set"
        )
    return resize_images(np.ascontiguousarray(array), size)


def read_class_tree(root: Path, classes: Classes) -> tuple[list[Path], np.ndarray] | None:
    """The images of root/<class>/** and their labels when root's sub-folders are named as the
    model's classes; None when none of them is (a folder of unlabelled images)."""
    from amint_pl.data.readers import class_folders, class_tree, is_image

    folders = {name: classes.label(name) for name in class_folders(root)}
    unknown = [name for name, label in folders.items() if label is None]
    if not folders or len(unknown) == len(folders):
        return None
    if unknown:
        raise ConfigError(
            f"inputs={root}: sub-folder(s) {', '.join(unknown[:5])} name no class of the model "
            f"({classes.describe()}): rename or move them, or give labels=<path,label .csv>"
        )
    loose = sorted(e.name for e in os.scandir(root) if e.is_file() and is_image(e.name))
    if loose:
        raise ConfigError(
            f"inputs={root}: {len(loose)} image(s) ({loose[0]}, ...) lie beside the class "
            "folders, without a class: move each into its class folder"
        )
    paths, labels = class_tree(root, folders)
    return [Path(p) for p in paths], labels


def read_label_csv(path: Path, files: Sequence[Path], classes: Classes) -> np.ndarray:
    """The labels of image files from a CSV with the columns path,label: one row per file, the
    path absolute or relative to the CSV's folder, the label a class name (`Classes.label`)."""
    wanted = {f.resolve(): n for n, f in enumerate(files)}
    labels = np.full(len(files), -1, dtype=np.int64)
    strangers: list[str] = []
    try:
        with open(path, newline="") as file:
            reader = csv.DictReader(file)
            if not {"path", "label"} <= set(reader.fieldnames or ()):
                raise ConfigError(
                    f"labels={path} has the columns {reader.fieldnames}: give a CSV with the "
                    "header line path,label"
                )
            for line, row in enumerate(reader, 2):
                given = Path(row["path"] or "").expanduser()
                n = wanted.get((given if given.is_absolute() else path.parent / given).resolve())
                if n is None:
                    strangers.append(str(row["path"]))
                    continue
                label = classes.label(row["label"] or "")
                if label is None:
                    raise ConfigError(
                        f"labels={path} line {line}: '{row['label']}' is no class of the model "
                        f"({classes.describe()})"
                    )
                if labels[n] >= 0:
                    raise ConfigError(f"labels={path} line {line}: {row['path']} is labelled twice")
                labels[n] = label
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        reason = " ".join(str(err).split())[:160] or type(err).__name__
        raise ConfigError(f"labels={path} is not a readable CSV ({reason})") from err
    unlabelled = [f for f, n in wanted.items() if labels[n] < 0]
    if unlabelled or strangers:
        raise ConfigError(
            f"labels={path} does not label the {len(files)} input image(s) one to one: "
            f"{len(unlabelled)} without a row (e.g. {unlabelled[0] if unlabelled else '-'}), "
            f"{len(strangers)} row(s) for no input image (e.g. {strangers[0] if strangers else '-'}"
            "); give one row per image, its path relative to the CSV's folder"
        )
    return labels


def read_label_tensor(path: Path, count: int, num_classes: int) -> np.ndarray:
    """Class indices int (N,) from a .npy / .pt file, one per image of the inputs."""
    array = load_array(path)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ConfigError(
            f"labels={path} holds {array.dtype} of shape {tuple(array.shape)}: give whole-number "
            f"class indices of shape ({count},)"
        )
    if len(array) != count:
        raise ConfigError(
            f"labels={path} has {len(array)} label(s) for {count} input image(s): give one each"
        )
    if len(array) and (array.min() < 0 or array.max() >= num_classes):
        bad = array.min() if array.min() < 0 else array.max()
        raise ConfigError(
            f"labels={path} holds the label {bad}: the model's class indices run from 0 to "
            f"{num_classes - 1}"
        )
    return array.astype(np.int64)


def read_inputs(
    inputs: str,
    hparams: dict[str, Any],
    labels: Path | None = None,
    progress_s: float | None = None,
) -> Samples:
    """Image file, folder or tensor file (and their labels, see `labels` in the module's
    docstring) -> Samples (not split:..., see `read_split`); progress_s: see `StderrProgress`."""
    from amint_pl.data.readers import is_image, list_images

    dataset = hparams["config"]["dataset"]
    channels, size = int(hparams["native_channels"]), int(dataset["image_size"])
    classes = Classes(tuple(hparams.get("class_names") or ()))
    path = Path(inputs).expanduser()
    if not path.exists():
        raise ConfigError(
            f"inputs={inputs} does not exist: give an image, a folder of images, a .npy or .pt "
            "tensor, or split:<role>"
        )
    if labels is not None and not labels.is_file():
        raise ConfigError(f"labels={labels} does not exist: give a .csv, .npy or .pt file")
    tensor = path.is_file() and path.suffix.lower() in TENSOR_SUFFIXES
    if labels is not None and (labels.suffix.lower() in TENSOR_SUFFIXES) != tensor:
        raise ConfigError(
            f"labels={labels}: give tensor inputs a .npy or .pt of class indices, and image "
            "inputs a CSV path,label"
        )
    if tensor:
        images = read_tensor_file(path, channels, size)
        rows = [{"sample": f"{path}[{i}]"} for i in range(len(images))]
        if labels is None:
            return Samples(images, rows)
        given = read_label_tensor(labels, len(images), int(hparams["num_classes"]))
        return Samples(images, rows, labels=given, labels_from=str(labels))
    tree = None
    if path.is_dir():
        tree = read_class_tree(path, classes) if labels is None else None
        files = tree[0] if tree else [Path(p) for p in list_images(path)]
        if not files:
            raise ConfigError(f"inputs={inputs}: the folder holds no images (.png, .jpg, ...)")
    elif is_image(path.name):
        files = [path]
    else:
        raise ConfigError(
            f"inputs={inputs}: not an image (.png, .jpg, ...), a folder, a .npy or .pt tensor, "
            "or split:<role>"
        )
    images = read_image_files(files, channels, size, str(dataset["name"]), progress_s)
    samples = Samples(images, [{"sample": str(f)} for f in files])
    if tree:
        samples.labels, samples.labels_from = tree[1], f"the class folders of {path}"
    elif labels is not None:
        samples.labels, samples.labels_from = read_label_csv(labels, files, classes), str(labels)
    return samples


def load_run_splits(
    run_dir: Path | None, checkpoint: dict[str, Any], checkpoint_path: Path
) -> tuple[MembershipSplits, Benchmark]:
    """The run's splits.npz (every role's fingerprint checked) and its benchmark."""
    from amint_pl.data.benchmarks import benchmark_from_config
    from amint_pl.data.splits import MembershipSplits

    if run_dir is None:
        raise ConfigError(
            f"{checkpoint_path} is not inside its run directory (no splits.npz above it): keep the "
            "checkpoint in <run>/checkpoints/, or give threshold=<probability> and image inputs"
        )
    splits = MembershipSplits.load(run_dir / "splits.npz")
    if splits.fingerprint() != checkpoint.get("amint_split_fingerprint"):
        raise SplitError(
            f"{run_dir / 'splits.npz'} is not the split {checkpoint_path} was trained on (the "
            "fingerprints differ): audit the checkpoint inside its own run directory"
        )
    benchmark = benchmark_from_config(checkpoint["hyper_parameters"]["config"]["dataset"])
    sizes = {"train": len(benchmark.train), "test": len(benchmark.test)}
    if splits.pool_sizes and splits.pool_sizes != sizes:
        raise SplitError(
            f"the data set now has pools {sizes}, the run had {splits.pool_sizes}: point "
            "dataset.root at the data the run used"
        )
    return splits, benchmark


def read_split(roles: Sequence[str], splits: MembershipSplits, benchmark: Benchmark) -> Samples:
    """The samples of some roles of the run's splits, in the order the run scored them."""
    from amint_pl.data.datamodule import catalogue
    from amint_pl.data.splits import POOL_NAMES, ROLE_NAMES

    pool_id, index, role = catalogue(splits, roles)
    pools = (benchmark.train, benchmark.test)
    images = np.empty((len(index), *benchmark.train.images.shape[1:]), dtype=np.uint8)
    labels = np.empty(len(index), dtype=np.int64)
    for p, pool in enumerate(pools):
        rows = np.flatnonzero(pool_id == p)
        images[rows] = pool.images[index[rows]]
        labels[rows] = pool.labels[index[rows]]
    rows = [
        {
            "sample": f"{POOL_NAMES[p]}:{i}",
            "pool": POOL_NAMES[p],
            "index": int(i),
            "role": ROLE_NAMES[r],
            "label": int(y),
        }
        for p, i, r, y in zip(
            pool_id.tolist(), index.tolist(), role.tolist(), labels.tolist(), strict=True
        )
    ]
    return Samples(images, rows, (pool_id, index, role), labels, "the run's data set")


# ---------------------------------------------------------------------------------------------
# Scoring


def score(
    module: AMINTModule,
    samples: Samples,
    batch_size: int,
    progress_s: float | None = None,
    what: str = "scoring",
) -> tuple[np.ndarray, np.ndarray]:
    """(class logits float32 (N, K), MINT logits float32 (N,)) of the samples' uint8 images,
    through the module's own preprocessing, in batches (with their labels where known).

    progress_s: see `StderrProgress`."""
    import torch

    device = next(module.parameters()).device
    images, labels = samples.images, samples.labels
    logits, mint_logits = [], []
    progress = StderrProgress(what, -(-len(images) // batch_size), progress_s)
    with torch.inference_mode():
        for n, start in enumerate(range(0, len(images), batch_size), 1):
            batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
            inputs = module.on_after_batch_transfer({"images": batch.to(device)}, 0)["inputs"]
            label = None
            if labels is not None:
                label = torch.from_numpy(labels[start : start + batch_size]).to(device)
            out, mint = module(inputs, label)
            logits.append(out.float().cpu())
            mint_logits.append(mint.float().cpu())
            progress.step(n, min(start + batch_size, len(images)))
    return torch.cat(logits).numpy(), torch.cat(mint_logits).numpy()


def membership_probability(mint_logits: np.ndarray) -> np.ndarray:
    """P(member) as the run's report computes it."""
    import torch

    from amint_pl.models.outputs import member_probability

    return member_probability(torch.from_numpy(mint_logits)).numpy()


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
