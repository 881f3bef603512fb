"""One reader per benchmark, in the on-disk layouts that users already have.

A reader finds the files under `dataset.root`, fetches them with the official downloader when
`dataset.download=true`, and returns sources (see `amint_pl.data.sources`): it decodes nothing
itself, so a cached benchmark starts without touching the originals. Layouts:

| name            | files under root                                                          |
|-----------------|---------------------------------------------------------------------------|
| digits          | none (scikit-learn's copy)                                                |
| mnist           | MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] (torchvision)  |
| fashion_mnist   | FashionMNIST/raw/... as mnist, else /usr/share/datasets/fashion-mnist      |
| cifar10         | cifar-10-batches-py/data_batch_1..5, test_batch (torchvision)             |
| cifar100        | cifar-100-python/train, test (torchvision; fine labels)                   |
| svhn            | train_32x32.mat, test_32x32.mat (torchvision)                             |
| gtsrb           | gtsrb/GTSRB/Training/<class>/*.ppm, gtsrb/GTSRB/Final_Test/Images/*.ppm,  |
|                 | gtsrb/GT-final_test.csv (torchvision)                                     |
| tiny_imagenet   | tiny-imagenet-200/train/<wnid>/images/*.JPEG, val/images +                |
|                 | val/val_annotations.txt (or val/<wnid>/images)                            |
| imagefolder     | <class>/**/<image> (torchvision's ImageFolder); test from dataset.test_root |
|                 | or a seeded cut                                                           |

Every IDX, pickle and .mat file, and every image, is checked when it is decoded: a missing data
set raises `DataNotFoundError`, an unreadable file `CorruptDataError`, each naming the path.
"""

from __future__ import annotations

import csv
import gzip
import os
import pickle
import zlib
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path

import numpy as np

from amint_pl.data.sources import ArraySource, ImageFiles, Pool, ReaderRequest, register_reader
from amint_pl.errors import ConfigError, CorruptDataError, DataNotFoundError

# Where Debian's `dataset-fashion-mnist` package installs the four IDX files.
FASHION_MNIST_SYSTEM_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets/fashion-mnist"),)
# torchvision's ImageFolder extensions (lower case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})
TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
# GTSRB's 43 class folders, 00000..00042: label i is folder f"{i:05d}".
GTSRB_CLASSES = tuple(f"{i:05d}" for i in range(43))


# ---------------------------------------------------------------------------------------------
# Errors and downloads


def not_found(
    name: str, expected: str | Path, where: str, downloadable: bool = True
) -> DataNotFoundError:
    """The one-line error for a missing data set: the expected path and the ways to fix it."""
    if downloadable:
        fix = f"run with dataset.download=true to fetch it, or put {where}"
    else:
        fix = f"put {where} (dataset.download=true has no source for it)"
    return DataNotFoundError(f"dataset '{name}' not found: expected {expected}; {fix}")


def corrupt(path: str | Path, err: object) -> CorruptDataError:
    """The one-line error for a file that exists but cannot be read."""
    reason = " ".join(str(err).split()) or type(err).__name__
    return CorruptDataError(
        f"{path} is corrupt or truncated ({reason[:200]}); delete it and fetch it again"
    )


def download(name: str, root: Path, fetch: Callable[[], object], where: str) -> None:
    """Run an official downloader; any failure (no network, bad checksum) is one line."""
    root.mkdir(parents=True, exist_ok=True)
    try:
        fetch()
    except Exception as err:  # torchvision raises URLError, RuntimeError, OSError, ...
        reason = " ".join(str(err).split()) or type(err).__name__
        raise DataNotFoundError(
            f"dataset '{name}': download into {root} failed ({reason[:200]}); put {where}"
        ) from err


def download_torchvision(name: str, root: Path, torchvision_class: str, where: str) -> None:
    """Fetch a data set with torchvision's own downloader (its train split brings every file)."""
    import torchvision.datasets

    dataset_class = getattr(torchvision.datasets, torchvision_class)
    download(name, root, lambda: dataset_class(str(root), train=True, download=True), where)


# ---------------------------------------------------------------------------------------------
# digits


@register_reader("digits")
def read_digits(request: ReaderRequest) -> tuple[Pool, None]:
    """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), embedded in the wheel."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Values are 0..16; scale to the full uint8 range.
    images = np.clip(digits.images * 16.0, 0, 255).round().astype(np.uint8)[:, None]
    return Pool(images, digits.target.astype(np.int64)), None


# ---------------------------------------------------------------------------------------------
# MNIST and Fashion-MNIST: IDX files, raw or gzipped

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_PATTERN = "{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]"


def read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes (LeCun's format), raw or gzipped, as a numpy array."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as file:
                data = file.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise corrupt(path, err) from err
    if len(data) < 4 or data[:3] != b"\x00\x00\x08" or not 1 <= data[3] <= 4:
        raise corrupt(path, "not an IDX file of unsigned bytes")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise corrupt(path, "header cut short")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    body = np.frombuffer(data, dtype=np.uint8, offset=header)
    if body.size != int(np.prod(shape)):
        raise corrupt(path, f"{body.size} bytes of data where the header promises {shape}")
    return body.reshape(shape).copy()  # writable, detached from the file's bytes


def read_idx_pool(images_path: Path, labels_path: Path) -> Pool:
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1:
        raise corrupt(images_path if images.ndim != 3 else labels_path, "unexpected dimensions")
    if len(images) != len(labels):
        raise corrupt(labels_path, f"{len(labels)} labels for {len(images)} images")
    return Pool(images[:, None], labels.astype(np.int64))


def find_idx_files(folders: Iterable[Path]) -> dict[str, Path] | None:
    """The first folder that holds all four IDX files (raw or .gz): base name -> path."""
    for folder in folders:
        found: dict[str, Path] = {}
        for base in (name for pair in IDX_FILES.values() for name in pair):
            for candidate in (folder / base, folder / f"{base}.gz"):
                if candidate.is_file():
                    found[base] = candidate
                    break
        if len(found) == 4:
            return found
    return None


def idx_reader(
    name: str, torchvision_class: str, fallback_dirs: Callable[[], Sequence[Path]] = tuple
) -> Callable[[ReaderRequest], tuple[ArraySource, ArraySource]]:
    """A reader for torchvision's MNIST-style layout: <root>/<class>/raw/*-ubyte[.gz]."""

    def read(request: ReaderRequest) -> tuple[ArraySource, ArraySource]:
        raw = request.root / torchvision_class / "raw"
        folders = [raw, request.root, *fallback_dirs()]
        where = f"the four IDX files in {raw} (torchvision's {torchvision_class} layout)"
        files = find_idx_files(folders)
        if files is None and request.download:
            download_torchvision(name, request.root, torchvision_class, where)
            files = find_idx_files([raw])
        if files is None:
            extra = "".join(f" (or {d})" for d in fallback_dirs())
            raise not_found(name, f"{raw}/{IDX_PATTERN}{extra}", where)
        sources = []
        for images_name, labels_name in IDX_FILES.values():
            images_path, labels_path = files[images_name], files[labels_name]
            sources.append(
                ArraySource(
                    (images_path, labels_path), partial(read_idx_pool, images_path, labels_path)
                )
            )
        return sources[0], sources[1]

    read.__doc__ = f"{torchvision_class}: 28x28 grey IDX files, 60k train and 10k test images."
    return read


read_mnist = register_reader("mnist")(idx_reader("mnist", "MNIST"))
read_fashion_mnist = register_reader("fashion_mnist")(
    idx_reader("fashion_mnist", "FashionMNIST", lambda: FASHION_MNIST_SYSTEM_DIRS)
)


# ---------------------------------------------------------------------------------------------
# CIFAR-10 and CIFAR-100: pickled batches


def read_cifar_batches(paths: Sequence[Path], label_key: str) -> Pool:
    images, labels = [], []
    for path in paths:
        try:
            with open(path, "rb") as file:
                entry = pickle.load(file, encoding="latin1")
            data = np.asarray(entry["data"], dtype=np.uint8)
            batch_labels = np.asarray(entry[label_key], dtype=np.int64)
            data = data.reshape(-1, 3, 32, 32)
        except (OSError, EOFError, pickle.UnpicklingError, KeyError, ValueError, TypeError) as err:
            raise corrupt(path, err) from err
        if len(data) != len(batch_labels):
            raise corrupt(path, f"{len(batch_labels)} labels for {len(data)} images")
        images.append(data)
        labels.append(batch_labels)
    return Pool(np.concatenate(images), np.concatenate(labels))


def cifar_reader(
    name: str,
    torchvision_class: str,
    folder: str,
    train_files: Sequence[str],
    test_files: Sequence[str],
    label_key: str,
) -> Callable[[ReaderRequest], tuple[ArraySource, ArraySource]]:
    """A reader for torchvision's CIFAR layout: <root>/<folder>/<pickled batches>."""

    def read(request: ReaderRequest) -> tuple[ArraySource, ArraySource]:
        base = request.root / folder
        where = (
            f"the extracted {folder}/ folder (torchvision's {torchvision_class}) in {request.root}"
        )

        def missing() -> list[Path]:
            return [base / f for f in (*train_files, *test_files) if not (base / f).is_file()]

        if missing() and request.download:
            download_torchvision(name, request.root, torchvision_class, where)
        if absent := missing():
            raise not_found(name, absent[0], where)
        train = tuple(base / f for f in train_files)
        test = tuple(base / f for f in test_files)
        return (
            ArraySource(train, partial(read_cifar_batches, train, label_key)),
            ArraySource(test, partial(read_cifar_batches, test, label_key)),
        )

    read.__doc__ = f"{torchvision_class}: 32x32 RGB pickled batches, 50k train and 10k test images."
    return read


read_cifar10 = register_reader("cifar10")(
    cifar_reader(
        "cifar10",
        "CIFAR10",
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        "labels",
    )
)
read_cifar100 = register_reader("cifar100")(
    cifar_reader("cifar100", "CIFAR100", "cifar-100-python", ["train"], ["test"], "fine_labels")
)


# ---------------------------------------------------------------------------------------------
# SVHN: MATLAB files

SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}


def read_svhn_mat(path: Path) -> Pool:
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
        images = np.asarray(mat["X"])
        labels = np.asarray(mat["y"]).astype(np.int64).reshape(-1)
    except Exception as err:  # scipy raises ValueError, MatReadError, OSError, TypeError, ...
        raise corrupt(path, err) from err
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[2] != 3:
        raise corrupt(path, f"X is {images.dtype} {images.shape}, expected uint8 (32, 32, 3, N)")
    if images.shape[3] != len(labels):
        raise corrupt(path, f"{len(labels)} labels for {images.shape[3]} images")
    # SVHN stores the digit 0 as label 10 (torchvision maps it back to 0).
    labels[labels == 10] = 0
    return Pool(np.ascontiguousarray(images.transpose(3, 2, 0, 1)), labels)


@register_reader("svhn")
def read_svhn(request: ReaderRequest) -> tuple[ArraySource, ArraySource]:
    """SVHN (cropped digits): 32x32 RGB .mat files, 73,257 train and 26,032 test images."""
    where = f"train_32x32.mat and test_32x32.mat in {request.root} (torchvision's SVHN layout)"
    paths = {split: request.root / file for split, file in SVHN_FILES.items()}
    if request.download:
        import torchvision.datasets

        for split, path in paths.items():
            if not path.is_file():
                download(
                    "svhn",
                    request.root,
                    partial(torchvision.datasets.SVHN, str(request.root), split, download=True),
                    where,
                )
    for path in paths.values():
        if not path.is_file():
            raise not_found("svhn", path, where)
    return (
        ArraySource((paths["train"],), partial(read_svhn_mat, paths["train"])),
        ArraySource((paths["test"],), partial(read_svhn_mat, paths["test"])),
    )


# ---------------------------------------------------------------------------------------------
# Image trees: GTSRB, Tiny ImageNet, any image folder


def is_image(name: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> bool:
    return name.lower().endswith(tuple(extensions))


def list_images(folder: Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[str]:
    """Image files below `folder`, recursively, in torchvision's ImageFolder order."""
    found = []
    for dirpath, _, filenames in sorted(os.walk(folder, followlinks=True)):
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if is_image(f, extensions))
    return found


def native_channels(paths: Sequence[str]) -> int:
    """1 when a sample of the images (up to 8, spread over the list) is all grey, else 3."""
    from PIL import Image, UnidentifiedImageError

    step = max(1, len(paths) // 8)
    for path in paths[::step][:8]:
        try:
            with Image.open(path) as image:
                if image.mode not in GREY_MODES:
                    return 3
        except (OSError, UnidentifiedImageError) as err:
            raise corrupt(path, err) from err
    return 1


def class_tree(
    root: Path, class_to_idx: dict[str, int], extensions: Sequence[str] = IMAGE_EXTENSIONS
) -> tuple[list[str], np.ndarray]:
    """Every image of root/<class>/** for the given classes: (paths, labels)."""
    paths: list[str] = []
    labels: list[np.ndarray] = []
    for class_name, label in sorted(class_to_idx.items()):
        found = list_images(root / class_name, extensions)
        paths.extend(found)
        labels.append(np.full(len(found), label, dtype=np.int64))
    return paths, np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)


def class_folders(root: Path) -> list[str]:
    """Sub-folder names of root, sorted (hidden folders skipped): torchvision's classes."""
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


@register_reader("gtsrb", image_files=True)
def read_gtsrb(request: ReaderRequest) -> tuple[ImageFiles, ImageFiles]:
    """GTSRB: 43 classes of traffic-sign .ppm images (15 to 250 px), 26,640 train, 12,630 test."""
    base = request.root / "gtsrb"
    train_dir = base / "GTSRB" / "Training"
    test_dir = base / "GTSRB" / "Final_Test" / "Images"
    test_csv = base / "GT-final_test.csv"
    where = (
        f"GTSRB/Training/<class>/*.ppm, GTSRB/Final_Test/Images/*.ppm and GT-final_test.csv in "
        f"{base} (torchvision's GTSRB layout)"
    )
    if request.download and not (train_dir.is_dir() and test_dir.is_dir() and test_csv.is_file()):
        import torchvision.datasets

        for split in ("train", "test"):
            download(
                "gtsrb",
                request.root,
                partial(torchvision.datasets.GTSRB, str(request.root), split, download=True),
                where,
            )
    for path in (train_dir, test_dir):
        if not path.is_dir():
            raise not_found("gtsrb", path, where)
    if not test_csv.is_file():
        raise not_found("gtsrb", test_csv, where)
    classes = class_folders(train_dir)
    if not all(c.isdigit() for c in classes):
        raise corrupt(train_dir, f"class folders must be numbered (00000..00042), found {classes}")
    train_paths, train_labels = class_tree(train_dir, {c: int(c) for c in classes}, (".ppm",))
    if not train_paths:
        raise not_found("gtsrb", f"{train_dir}/<class>/*.ppm", where)
    try:
        with open(test_csv, newline="") as file:
            rows = list(csv.DictReader(file, delimiter=";", skipinitialspace=True))
        test_paths = [str(test_dir / row["Filename"]) for row in rows]
        test_labels = np.array([int(row["ClassId"]) for row in rows], dtype=np.int64)
    except (OSError, KeyError, TypeError, ValueError, csv.Error) as err:
        raise corrupt(test_csv, f"needs Filename and ClassId columns: {err}") from err
    if not test_paths:
        raise corrupt(test_csv, "no rows")
    return (
        ImageFiles(train_paths, train_labels, channels=3, class_names=GTSRB_CLASSES),
        ImageFiles(test_paths, test_labels, channels=3, class_names=GTSRB_CLASSES),
    )


def tiny_imagenet_base(root: Path) -> Path:
    """root/tiny-imagenet-200, or root itself when it is that folder."""
    nested = root / "tiny-imagenet-200"
    if not nested.is_dir() and (root / "train").is_dir() and (root / "val").is_dir():
        return root
    return nested


@register_reader("tiny_imagenet", image_files=True)
def read_tiny_imagenet(request: ReaderRequest) -> tuple[ImageFiles, ImageFiles]:
    """Tiny ImageNet: 200 classes of 64x64 JPEGs, 100k train; its labelled val set (10k) is the test pool.

    Classes are the sorted wnid folders of train/. The val split is read from
    val/val_annotations.txt + val/images/ as distributed, or from val/<wnid>/ when it was
    reorganised into class folders.
    """
    base = tiny_imagenet_base(request.root)
    where = f"the extracted tiny-imagenet-200/ folder (train/, val/) in {request.root}"
    if request.download and not (base / "train").is_dir():
        from torchvision.datasets.utils import download_and_extract_archive

        download(
            "tiny_imagenet",
            request.root,
            partial(download_and_extract_archive, TINY_IMAGENET_URL, str(request.root)),
            where,
        )
        base = tiny_imagenet_base(request.root)
    train_dir, val_dir = base / "train", base / "val"
    for path in (train_dir, val_dir):
        if not path.is_dir():
            raise not_found("tiny_imagenet", path, where)
    wnids = class_folders(train_dir)
    class_to_idx = {wnid: i for i, wnid in enumerate(wnids)}
    train_paths, train_labels = class_tree(train_dir, class_to_idx)
    if not train_paths:
        raise not_found("tiny_imagenet", f"{train_dir}/<wnid>/images/*.JPEG", where)

    annotations = val_dir / "val_annotations.txt"
    if annotations.is_file():
        test_paths, labels = [], []
        try:
            with open(annotations) as file:
                for line_number, line in enumerate(file, 1):
                    if not line.strip():
                        continue
                    fields = line.split("\t") if "\t" in line else line.split()
                    filename, wnid = fields[0].strip(), fields[1].strip()
                    if wnid not in class_to_idx:
                        raise ValueError(f"line {line_number}: wnid {wnid} is not a train class")
                    test_paths.append(str(val_dir / "images" / filename))
                    labels.append(class_to_idx[wnid])
        except (OSError, UnicodeDecodeError, IndexError, ValueError) as err:
            raise corrupt(annotations, err) from err
        test_labels = np.array(labels, dtype=np.int64)
    else:
        val_classes = class_folders(val_dir)
        unknown = sorted(set(val_classes) - set(class_to_idx) - {"images"})
        if unknown or not val_classes or val_classes == ["images"]:
            raise not_found("tiny_imagenet", annotations, where)
        test_paths, test_labels = class_tree(val_dir, {c: class_to_idx[c] for c in val_classes})
    if not test_paths:
        raise not_found("tiny_imagenet", f"{val_dir}/images/*.JPEG", where)
    return (
        ImageFiles(train_paths, train_labels, 3, native_size=64, class_names=tuple(wnids)),
        ImageFiles(test_paths, test_labels, 3, native_size=64, class_names=tuple(wnids)),
    )


@register_reader("imagefolder", image_files=True)
def read_imagefolder(request: ReaderRequest) -> tuple[ImageFiles, ImageFiles | None]:
    """Any root/<class>/**/<image> tree (CASIA-WebFace, a user's own data), torchvision's ImageFolder order.

    Classes are the sorted sub-folders of `dataset.root`. The test pool is the same kind of tree
    at `dataset.test_root` (its class folders must exist in root), or, when that is null, a
    seeded cut of root (`dataset.test_fraction`, `dataset.cut_seed`).
    """
    root = request.root
    where = f"one sub-folder of images per class in {root}"
    if not root.is_dir():
        raise not_found("imagefolder", f"{root}/<class>/<image>", where, downloadable=False)
    classes = class_folders(root)
    class_to_idx = {c: i for i, c in enumerate(classes)}
    paths, labels = class_tree(root, class_to_idx)
    if not paths:
        raise not_found(
            "imagefolder",
            f"{root}/<class>/<image> ({', '.join(IMAGE_EXTENSIONS)})",
            where,
            downloadable=False,
        )
    channels = native_channels(paths)
    train = ImageFiles(paths, labels, channels, class_names=tuple(classes))
    test_root = request.options.get("test_root")
    if test_root is None:
        return train, None
    test_root = Path(test_root).expanduser()
    test_where = f"one sub-folder of test images per class in dataset.test_root={test_root}"
    if not test_root.is_dir():
        raise not_found("imagefolder", f"{test_root}/<class>/<image>", test_where, False)
    test_classes = class_folders(test_root)
    if unknown := sorted(set(test_classes) - set(class_to_idx)):
        raise ConfigError(
            f"dataset.test_root={test_root} has class folders that {root} lacks "
            f"({', '.join(unknown[:5])}): give both trees the same classes"
        )
    test_paths, test_labels = class_tree(test_root, {c: class_to_idx[c] for c in test_classes})
    if not test_paths:
        raise not_found("imagefolder", f"{test_root}/<class>/<image>", test_where, False)
    return train, ImageFiles(test_paths, test_labels, channels, class_names=tuple(classes))
