"""What an auditor brings, as the model's training saw it: image files, folders of images (labelled
by class folders or a CSV), uint8 tensors (labelled by a tensor of class indices), or the roles of
a run's own splits.npz; each read into `Samples` (uint8 images in the data set's native channels,
resized to the training size as its pools were). `amint_pl.audit` documents the inputs a user
gives."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from amint_pl.errors import ConfigError, CorruptDataError, SplitError
from amint_pl.status import StderrProgress

if TYPE_CHECKING:
    from amint_pl.data.benchmarks import Benchmark
    from amint_pl.data.splits import MembershipSplits

TENSOR_SUFFIXES = (".npy", ".pt", ".pth")


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
    """Image file, folder or tensor file (and their labels, see `labels` in `amint_pl.audit`'s
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
