"""Benchmark readers, configs and the decode cache, on tiny files in each data set's exact format.

Every reader reads real files (IDX gz, CIFAR pickles, SVHN .mat, GTSRB .ppm + CSV, the
tiny-imagenet-200 tree, an image folder) written here into a temporary folder; no mocks.
Images are constant-coloured with a value derived from their index and channel, so shapes,
order, channel layout and labels can be checked after decoding and resizing.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from amint_pl.data import readers
from amint_pl.data.benchmarks import (
    READERS,
    Benchmark,
    benchmark_from_config,
    load_benchmark,
)
from amint_pl.data.splits import SplitSizes, build_splits
from amint_pl.errors import ConfigError, CorruptDataError, DataNotFoundError

CONF_DIR = Path(__file__).resolve().parents[1] / "amint_pl" / "conf"
DATASETS = (
    "mnist",
    "fashion_mnist",
    "cifar10",
    "cifar100",
    "svhn",
    "gtsrb",
    "tiny_imagenet",
    "imagefolder",
)


# ---------------------------------------------------------------------------------------------
# Writers: each data set's on-disk format


def value(index: int, channel: int = 0) -> int:
    """The constant value of image `index`, channel `channel`."""
    return (index * 7 + channel * 50 + 3) % 256


def constant_images(n: int, channels: int, height: int, width: int, start: int = 0) -> np.ndarray:
    """uint8 (n, channels, height, width), image i channel c filled with value(start + i, c)."""
    images = np.empty((n, channels, height, width), dtype=np.uint8)
    for i in range(n):
        for c in range(channels):
            images[i, c] = value(start + i, c)
    return images


def write_idx(path: Path, array: np.ndarray) -> None:
    """LeCun's IDX format (unsigned bytes), gzipped when the name ends in .gz."""
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as file:
            file.write(data)
    else:
        path.write_bytes(data)


def write_mnist_files(folder: Path, n_train: int, n_test: int, gz: bool = True) -> None:
    """The four IDX files of MNIST / Fashion-MNIST into `folder` (labels i % 10)."""
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(
            folder / f"{prefix}-images-idx3-ubyte{suffix}", constant_images(n, 1, 28, 28)[:, 0]
        )
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", np.arange(n) % 10)


def write_cifar(root: Path, n_per_batch: int, hundred: bool = False) -> None:
    """torchvision's cifar-10-batches-py (5 train batches + test_batch) or cifar-100-python.

    Train images are numbered across the batches (value(k), label k % classes); test from 0.
    """
    if hundred:
        folder, key, classes = root / "cifar-100-python", "fine_labels", 100
        files = [("train", 0), ("test", 0)]
    else:
        folder, key, classes = root / "cifar-10-batches-py", "labels", 10
        files = [(f"data_batch_{b + 1}", b * n_per_batch) for b in range(5)] + [("test_batch", 0)]
    folder.mkdir(parents=True, exist_ok=True)
    for name, start in files:
        images = constant_images(n_per_batch, 3, 32, 32, start)
        entry = {
            "data": images.reshape(n_per_batch, 3072),
            key: [int((start + i) % classes) for i in range(n_per_batch)],
            "batch_label": name,
            "filenames": [f"{name}_{i}.png" for i in range(n_per_batch)],
        }
        if hundred:
            entry["coarse_labels"] = [int((start + i) % 20) for i in range(n_per_batch)]
        with open(folder / name, "wb") as file:
            pickle.dump(entry, file)


def write_svhn(root: Path, n_train: int, n_test: int) -> None:
    """train_32x32.mat / test_32x32.mat: X (32, 32, 3, N) uint8, y (N, 1) with 10 for digit 0."""
    root.mkdir(parents=True, exist_ok=True)
    for name, n in (("train_32x32.mat", n_train), ("test_32x32.mat", n_test)):
        images = constant_images(n, 3, 32, 32).transpose(2, 3, 1, 0)
        labels = (np.arange(n) % 10).astype(np.uint8)
        labels[labels == 0] = 10
        scipy.io.savemat(root / name, {"X": images, "y": labels[:, None]})


def save_image(path: Path, index: int, channels: int, size: tuple[int, int], **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if channels == 1:
        Image.new("L", size, value(index)).save(path, **kwargs)
    else:
        Image.new("RGB", size, tuple(value(index, c) for c in range(3))).save(path, **kwargs)


def write_gtsrb(root: Path, per_class: int, n_test: int, classes: int = 3) -> None:
    """torchvision's GTSRB: Training/<5 digits>/*.ppm + GT-<class>.csv, Final_Test + GT-final_test.csv."""
    base = root / "gtsrb"
    training = base / "GTSRB" / "Training"
    index = 0
    for label in range(classes):
        folder = training / f"{label:05d}"
        rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
        for j in range(per_class):
            size = (20 + 3 * j, 25 + 2 * j)  # GTSRB's sizes vary
            save_image(folder / f"{j // 30:05d}_{j:05d}.ppm", index, 3, size)
            rows.append(
                f"{j // 30:05d}_{j:05d}.ppm;{size[0]};{size[1]};1;1;{size[0] - 1};{size[1] - 1};{label}"
            )
            index += 1
        (folder / f"GT-{label:05d}.csv").write_text("\n".join(rows) + "\n")
    images = base / "GTSRB" / "Final_Test" / "Images"
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    for i in range(n_test):
        save_image(images / f"{i:05d}.ppm", i, 3, (30 + i, 30))
        rows.append(f"{i:05d}.ppm;{30 + i};30;1;1;29;29;{(i * 2) % classes}")
    (base / "GT-final_test.csv").write_text("\n".join(rows) + "\n")


def write_tiny_imagenet(root: Path, per_class: int, n_val: int, classes: int = 3) -> list[str]:
    """The tiny-imagenet-200 tree as the official zip extracts; returns the wnids (sorted)."""
    base = root / "tiny-imagenet-200"
    wnids = [f"n0{1440764 + 1000 * k}" for k in range(classes)]
    (base).mkdir(parents=True, exist_ok=True)
    (base / "wnids.txt").write_text("\n".join(reversed(wnids)) + "\n")  # not sorted in the zip
    (base / "words.txt").write_text("".join(f"{w}\tthing {w}\n" for w in wnids))
    index = 0
    for wnid in wnids:
        boxes = []
        for j in range(per_class):
            name = f"{wnid}_{j}.JPEG"
            # Tiny ImageNet holds a few grey JPEGs among the RGB ones.
            channels = 1 if index == 1 else 3
            save_image(
                base / "train" / wnid / "images" / name,
                index,
                channels,
                (64, 64),
                format="JPEG",
                quality=95,
            )
            boxes.append(f"{name}\t0\t0\t63\t63")
            index += 1
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("\n".join(boxes) + "\n")
    lines = []
    for i in range(n_val):
        save_image(
            base / "val" / "images" / f"val_{i}.JPEG", i, 3, (64, 64), format="JPEG", quality=95
        )
        lines.append(f"val_{i}.JPEG\t{wnids[(i * 2) % classes]}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    save_image(base / "test" / "images" / "test_0.JPEG", 0, 3, (64, 64), format="JPEG")
    return wnids


def write_imagefolder(
    root: Path, counts: dict[str, int], channels: int = 3, start: int = 0
) -> None:
    """root/<class>/<image>.png (sizes vary), `counts[class]` images per class."""
    index = start
    for class_name, n in counts.items():
        for j in range(n):
            save_image(root / class_name / f"img_{j:04d}.png", index, channels, (40 + j, 36))
            index += 1


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def assert_one_line(err: pytest.ExceptionInfo, *parts: str) -> str:
    message = str(err.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, (part, message)
    return message


def load(name: str, root: Path, cache: Path | None, **kwargs) -> Benchmark:
    return load_benchmark(name, root, cache_dir=cache, **kwargs)


# ---------------------------------------------------------------------------------------------
# Configs


def compose_dataset(name: str, *overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="run", overrides=[f"dataset={name}", *overrides])
    return OmegaConf.to_container(cfg.dataset, resolve=True)


# The real pools: (train, test) sizes; imagefolder is CASIA-WebFace cut at test_fraction 0.2.
REAL_POOLS = {
    "mnist": (60000, 10000),
    "fashion_mnist": (60000, 10000),
    "cifar10": (50000, 10000),
    "cifar100": (50000, 10000),
    "svhn": (73257, 26032),
    "gtsrb": (26640, 12630),
    "tiny_imagenet": (100000, 10000),
    "imagefolder": (494414 - round(494414 * 0.2), round(494414 * 0.2)),
}
PAPER_SIZES = {"mnist": 28, "fashion_mnist": 28, "cifar10": 32, "cifar100": 32, "svhn": 32}
PAPER_SPLITS = {
    "mnist": (25000, 35000),
    "cifar10": (20000, 30000),
    "gtsrb": (11000, 15640),
    "tiny_imagenet": (40000, 60000),
}


def test_every_dataset_has_a_config_with_digits_keys_and_a_reader():
    digits = compose_dataset("digits")
    for name in DATASETS:
        cfg = compose_dataset(name, "paths.data_dir=/d")
        assert cfg["name"] == name and name in READERS
        assert set(digits) <= set(cfg), set(digits) - set(cfg)
        assert set(digits["splits"]) == set(cfg["splits"])
        assert cfg["root"] == f"/d/{name}" and cfg["cache_dir"] == "/d/cache"
        assert cfg["image_size"] == PAPER_SIZES.get(name, 64)
        assert cfg["channels"] is None and cfg["download"] is False
        if PAPER_SPLITS.get(name):
            assert (cfg["splits"]["members"], cfg["splits"]["external"]) == PAPER_SPLITS[name]
        # The default roles fit the real pools.
        n_train, n_test = REAL_POOLS[name]
        splits = build_splits(n_train, n_test, SplitSizes(**cfg["splits"]), seed=0)
        assert len(splits.members) == cfg["splits"]["members"]
    assert compose_dataset("imagefolder")["test_root"] is None


def test_digits_still_reads_through_its_config():
    bench = benchmark_from_config(compose_dataset("digits"))
    assert bench.train.images.shape[1:] == (1, 8, 8) and len(bench.train) + len(bench.test) == 1797
    assert bench.num_classes == 10
    assert bench.class_names == tuple(str(i) for i in range(10))  # numbered classes


# ---------------------------------------------------------------------------------------------
# MNIST and Fashion-MNIST


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_reads_torchvision_layout(tmp_path, gz):
    write_mnist_files(tmp_path / "MNIST" / "raw", 30, 12, gz=gz)
    bench = load("mnist", tmp_path, tmp_path / "cache", num_classes=10, image_size=28)
    assert bench.train.images.shape == (30, 1, 28, 28) and bench.test.images.shape == (
        12,
        1,
        28,
        28,
    )
    assert isinstance(bench.train.images, np.memmap)
    assert [int(bench.train.images[i, 0, 5, 5]) for i in range(30)] == [value(i) for i in range(30)]
    assert bench.train.labels.dtype == np.int64
    assert np.bincount(bench.train.labels).tolist() == [3] * 10
    assert bench.channels == 1 and bench.num_classes == 10


def test_mnist_resizes_once_and_reuses_the_cache_without_decoding(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_mnist_files(raw, 20, 10)
    cache = tmp_path / "cache"
    first = load("mnist", tmp_path, cache, num_classes=10, image_size=32)
    assert first.train.images.shape == (20, 1, 32, 32)
    assert [int(first.train.images[i, 0, 16, 16]) for i in range(20)] == [
        value(i) for i in range(20)
    ]
    cached = sorted(p.name for p in cache.rglob("*.npy"))
    assert len(cached) == 4  # images + labels of train and test

    # Scramble the source but keep its size and time: a cached run never reads it.
    images_file = raw / "train-images-idx3-ubyte.gz"
    stat = images_file.stat()
    images_file.write_bytes(b"\0" * stat.st_size)
    os.utime(images_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = load("mnist", tmp_path, cache, num_classes=10, image_size=32)
    np.testing.assert_array_equal(second.train.images, first.train.images)

    # A changed source (new modification time) is decoded again: here it is now corrupt.
    os.utime(images_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(CorruptDataError) as err:
        load("mnist", tmp_path, cache, num_classes=10, image_size=32)
    assert_one_line(err, str(images_file))

    # Rewritten properly it rebuilds, and the stale cache of that split and size is gone.
    write_mnist_files(raw, 25, 10)
    third = load("mnist", tmp_path, cache, num_classes=10, image_size=32)
    assert len(third.train) == 25
    assert len(list(cache.rglob("train-32px-*.images.npy"))) == 1


def test_mnist_missing_is_one_line_with_path_and_both_fixes(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        load("mnist", tmp_path / "nowhere", tmp_path / "cache", num_classes=10)
    assert_one_line(
        err, str(tmp_path / "nowhere" / "MNIST" / "raw"), "dataset.download=true", "put "
    )


@pytest.mark.parametrize("damage", ["truncated_gz", "short_raw", "not_idx"])
def test_mnist_corrupt_file_is_one_line_naming_it(tmp_path, damage):
    raw = tmp_path / "MNIST" / "raw"
    write_mnist_files(raw, 20, 10, gz=damage == "truncated_gz")
    target = raw / ("t10k-images-idx3-ubyte" + (".gz" if damage == "truncated_gz" else ""))
    if damage == "not_idx":
        target.write_bytes(b"<html>rate limited</html>")
    else:
        truncate(target, 0.6)
    with pytest.raises(CorruptDataError) as err:
        load("mnist", tmp_path, tmp_path / "cache", num_classes=10)
    assert_one_line(err, str(target))


def test_fashion_mnist_falls_back_to_the_debian_folder(tmp_path, monkeypatch):
    system = tmp_path / "usr_share_datasets_fashion-mnist"
    write_mnist_files(system, 20, 10)  # Debian ships the four .gz files, flat
    monkeypatch.setattr(readers, "FASHION_MNIST_SYSTEM_DIRS", (system,))
    root = tmp_path / "data" / "fashion_mnist"  # absent: the fallback is used
    cfg = compose_dataset("fashion_mnist", f"paths.data_dir={tmp_path / 'data'}")
    bench = benchmark_from_config(cfg)
    assert bench.train.images.shape == (20, 1, 28, 28) and len(bench.test) == 10
    assert bench.mean == (0.2860,) and bench.num_classes == 10
    # torchvision's own layout under root wins over the system copy.
    write_mnist_files(root / "FashionMNIST" / "raw", 30, 10, gz=False)
    assert len(benchmark_from_config(cfg).train) == 30


def test_fashion_mnist_missing_names_root_and_the_system_folder(tmp_path, monkeypatch):
    system = tmp_path / "no_debian_package"
    monkeypatch.setattr(readers, "FASHION_MNIST_SYSTEM_DIRS", (system,))
    with pytest.raises(DataNotFoundError) as err:
        load("fashion_mnist", tmp_path / "fm", tmp_path / "cache", num_classes=10)
    assert_one_line(
        err, str(tmp_path / "fm" / "FashionMNIST" / "raw"), str(system), "dataset.download=true"
    )


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed",
)
def test_real_fashion_mnist_from_debian(tmp_path):
    bench = load(
        "fashion_mnist", tmp_path / "fm", tmp_path / "cache", num_classes=10, image_size=28
    )
    assert bench.train.images.shape == (60000, 1, 28, 28) and len(bench.test) == 10000
    assert np.bincount(bench.train.labels).tolist() == [6000] * 10


# ---------------------------------------------------------------------------------------------
# CIFAR-10, CIFAR-100, SVHN


@pytest.mark.parametrize("hundred", [False, True])
def test_cifar_reads_pickled_batches(tmp_path, hundred):
    name, classes, per_batch, n_train = (
        ("cifar100", 100, 120, 120) if hundred else ("cifar10", 10, 6, 30)
    )
    write_cifar(tmp_path, per_batch, hundred=hundred)
    bench = load(name, tmp_path, tmp_path / "cache", num_classes=classes, image_size=32)
    assert bench.train.images.shape == (n_train, 3, 32, 32) and bench.channels == 3
    assert len(bench.test) == per_batch and bench.num_classes == classes
    # Channel-first, batches in order: channel c of train image k holds value(k, c).
    for k in (3, n_train - 1):
        assert [int(bench.train.images[k, c, 7, 7]) for c in range(3)] == [
            value(k, c) for c in range(3)
        ]
    assert bench.train.labels.tolist() == [k % classes for k in range(n_train)]
    assert np.bincount(bench.train.labels, minlength=classes).max() == (2 if hundred else 3)


def test_cifar_missing_batch_and_corrupt_pickle(tmp_path):
    write_cifar(tmp_path, 4)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataNotFoundError) as err:
        load("cifar10", tmp_path, tmp_path / "cache", num_classes=10)
    assert_one_line(err, "data_batch_3", "dataset.download=true")
    write_cifar(tmp_path, 4)
    broken = tmp_path / "cifar-10-batches-py" / "test_batch"
    truncate(broken)
    with pytest.raises(CorruptDataError) as err:
        load("cifar10", tmp_path, tmp_path / "cache", num_classes=10)
    assert_one_line(err, str(broken))


def test_svhn_reads_mat_files_and_maps_label_10_to_0(tmp_path):
    write_svhn(tmp_path, 30, 20)
    bench = load("svhn", tmp_path, tmp_path / "cache", num_classes=10, image_size=32)
    assert bench.train.images.shape == (30, 3, 32, 32) and bench.test.images.shape == (
        20,
        3,
        32,
        32,
    )
    assert bench.train.labels.tolist() == [i % 10 for i in range(30)]
    assert [int(bench.train.images[7, c, 4, 9]) for c in range(3)] == [
        value(7, c) for c in range(3)
    ]


def test_svhn_missing_and_corrupt(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        load("svhn", tmp_path, tmp_path / "cache", num_classes=10)
    assert_one_line(err, str(tmp_path / "train_32x32.mat"), "dataset.download=true")
    write_svhn(tmp_path, 10, 10)
    truncate(tmp_path / "test_32x32.mat", 0.3)
    with pytest.raises(CorruptDataError) as err:
        load("svhn", tmp_path, tmp_path / "cache", num_classes=10)
    assert_one_line(err, str(tmp_path / "test_32x32.mat"))


def test_a_failed_download_is_one_line(tmp_path):
    def offline() -> None:
        from urllib.error import URLError

        raise URLError("[Errno -3] Temporary failure in name resolution\nsecond line")

    with pytest.raises(DataNotFoundError) as err:
        readers.download("svhn", tmp_path / "svhn", offline, "the .mat files in x")
    assert_one_line(
        err, str(tmp_path / "svhn"), "download", "name resolution", "put the .mat files"
    )


# ---------------------------------------------------------------------------------------------
# GTSRB, Tiny ImageNet, image folders


def test_gtsrb_reads_ppm_tree_and_test_csv(tmp_path):
    write_gtsrb(tmp_path, per_class=5, n_test=7)
    bench = load("gtsrb", tmp_path, tmp_path / "cache", num_classes=43, image_size=16)
    assert bench.train.images.shape == (15, 3, 16, 16) and bench.test.images.shape == (7, 3, 16, 16)
    assert isinstance(bench.train.images, np.memmap)
    assert np.bincount(bench.train.labels).tolist() == [5, 5, 5]
    assert len(bench.class_names) == 43 and bench.class_names[7] == "00007"  # its folder names
    assert bench.test.labels.tolist() == [(i * 2) % 3 for i in range(7)]
    assert [int(bench.train.images[6, c, 8, 8]) for c in range(3)] == [
        value(6, c) for c in range(3)
    ]
    assert [int(bench.test.images[4, c, 3, 3]) for c in range(3)] == [value(4, c) for c in range(3)]


def test_gtsrb_needs_an_image_size_missing_and_corrupt(tmp_path):
    write_gtsrb(tmp_path, per_class=2, n_test=2)
    with pytest.raises(ConfigError, match="dataset.image_size"):
        load("gtsrb", tmp_path, tmp_path / "cache", num_classes=43)
    with pytest.raises(DataNotFoundError) as err:
        load("gtsrb", tmp_path / "empty", tmp_path / "cache", num_classes=43, image_size=16)
    assert_one_line(
        err, str(tmp_path / "empty" / "gtsrb" / "GTSRB" / "Training"), "dataset.download=true"
    )
    broken = tmp_path / "gtsrb" / "GTSRB" / "Final_Test" / "Images" / "00001.ppm"
    truncate(broken)
    with pytest.raises(CorruptDataError) as err:
        load("gtsrb", tmp_path, tmp_path / "cache", num_classes=43, image_size=16)
    assert_one_line(err, str(broken))
    (tmp_path / "gtsrb" / "GT-final_test.csv").unlink()
    with pytest.raises(DataNotFoundError) as err:
        load("gtsrb", tmp_path, tmp_path / "cache", num_classes=43, image_size=16)
    assert_one_line(err, "GT-final_test.csv")


def test_tiny_imagenet_reads_the_official_tree(tmp_path):
    wnids = write_tiny_imagenet(tmp_path, per_class=4, n_val=6)
    bench = load("tiny_imagenet", tmp_path, tmp_path / "cache", num_classes=200, image_size=64)
    assert bench.train.images.shape == (12, 3, 64, 64) and bench.test.images.shape == (6, 3, 64, 64)
    assert np.bincount(bench.train.labels).tolist() == [4, 4, 4]  # classes: sorted wnids
    assert bench.class_names[:3] == tuple(sorted(wnids)) and bench.class_names[3] == "3"
    assert bench.test.labels.tolist() == [(i * 2) % 3 for i in range(6)]
    # JPEG: near the written colour; the grey JPEG (index 1) comes back as 3 equal channels.
    np.testing.assert_allclose(
        bench.train.images[5, :, 32, 32], [value(5, c) for c in range(3)], atol=3
    )
    grey = bench.train.images[1, :, 32, 32].astype(int)
    assert grey[0] == grey[1] == grey[2] and abs(grey[0] - value(1)) <= 2
    assert wnids == sorted(wnids)

    # The val split reorganised into class folders (a common script) reads the same.
    base = tmp_path / "tiny-imagenet-200"
    (base / "val" / "val_annotations.txt").unlink()
    for i in range(6):
        target = base / "val" / wnids[(i * 2) % 3] / "images" / f"val_{i}.JPEG"
        target.parent.mkdir(parents=True, exist_ok=True)
        (base / "val" / "images" / f"val_{i}.JPEG").rename(target)
    (base / "val" / "images").rmdir()
    reorganised = load("tiny_imagenet", base, tmp_path / "cache", num_classes=200, image_size=32)
    assert sorted(reorganised.test.labels.tolist()) == sorted((i * 2) % 3 for i in range(6))
    assert reorganised.test.images.shape == (6, 3, 32, 32)


def test_tiny_imagenet_missing_and_corrupt(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        load("tiny_imagenet", tmp_path, tmp_path / "cache", num_classes=200)
    assert_one_line(err, str(tmp_path / "tiny-imagenet-200" / "train"), "dataset.download=true")
    wnids = write_tiny_imagenet(tmp_path, per_class=2, n_val=2)
    broken = tmp_path / "tiny-imagenet-200" / "train" / wnids[1] / "images" / f"{wnids[1]}_0.JPEG"
    truncate(broken, 0.4)
    with pytest.raises(CorruptDataError) as err:
        load("tiny_imagenet", tmp_path, tmp_path / "cache", num_classes=200, image_size=64)
    assert_one_line(err, str(broken))
    annotations = tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    annotations.write_text("val_0.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(CorruptDataError) as err:
        load("tiny_imagenet", tmp_path, None, num_classes=200, image_size=64)
    assert_one_line(err, str(annotations), "n99999999")


def test_imagefolder_seeded_cut_grey_channels_and_inferred_classes(tmp_path):
    root = tmp_path / "faces"
    write_imagefolder(root, {"id_b": 6, "id_a": 4, "id_c": 10}, channels=1)
    (root / ".hidden").mkdir()
    (root / "id_a" / "notes.txt").write_text("not an image")
    cfg = compose_dataset(
        "imagefolder",
        f"dataset.root={root}",
        f"paths.data_dir={tmp_path / 'data'}",
        "dataset.image_size=24",
        "dataset.test_fraction=0.25",
    )
    bench = benchmark_from_config(cfg)
    assert bench.channels == 1 and bench.num_classes == 3  # sorted folders: id_a, id_b, id_c
    assert bench.class_names == ("id_a", "id_b", "id_c")
    assert len(bench.train) == 15 and len(bench.test) == 5
    assert bench.train.images.shape[1:] == (1, 24, 24)
    labels = np.concatenate([bench.train.labels, bench.test.labels])
    assert np.bincount(labels).tolist() == [4, 6, 10]
    # Values identify the files: the cut is disjoint and covers every image.
    written = {value(i) for i in range(20)}
    found = {int(v) for v in bench.train.images[:, 0, 12, 12]} | {
        int(v) for v in bench.test.images[:, 0, 12, 12]
    }
    assert found == written
    assert len(bench.mean) == 1 and (tmp_path / "data" / "cache").is_dir()
    assert list((tmp_path / "data" / "cache").rglob("*.stats.json"))
    # The same seed gives the same cut, from the cache.
    again = benchmark_from_config(cfg)
    np.testing.assert_array_equal(again.test.images, bench.test.images)
    assert again.mean == bench.mean


def test_imagefolder_test_root_cache_rebuild_and_errors(tmp_path):
    root, test_root = tmp_path / "train", tmp_path / "test"
    write_imagefolder(root, {"cat": 3, "dog": 5})
    write_imagefolder(test_root, {"dog": 2}, start=50)
    options = {"test_root": str(test_root)}
    cache = tmp_path / "cache"
    bench = load("imagefolder", root, cache, image_size=20, options=options)
    assert bench.channels == 3 and bench.num_classes == 2
    assert bench.train.labels.tolist() == [
        0,
        0,
        0,
        1,
        1,
        1,
        1,
        1,
    ] and bench.test.labels.tolist() == [1, 1]
    assert int(bench.test.images[1, 2, 0, 0]) == value(51, 2)
    # A new image changes the source: both the cache and the pool follow.
    write_imagefolder(root, {"cat": 4})
    rebuilt = load("imagefolder", root, cache, image_size=20, options=options)
    assert len(rebuilt.train) == 9
    assert len(list(cache.rglob("train-20px-*.images.npy"))) == 1

    with pytest.raises(ConfigError, match="test_root"):
        write_imagefolder(test_root, {"bird": 1})
        load("imagefolder", root, cache, image_size=20, options=options)
    with pytest.raises(ConfigError, match="dataset.image_size"):
        load("imagefolder", root, cache, options={})
    with pytest.raises(ConfigError, match="num_classes=1"):
        load("imagefolder", root, cache, num_classes=1, image_size=20, options={})
    with pytest.raises(ConfigError, match="dataset.mean has 1 values"):
        load("imagefolder", root, cache, image_size=20, mean=[0.5], std=[0.2])
    with pytest.raises(DataNotFoundError) as err:
        load("imagefolder", tmp_path / "absent", cache, image_size=20)
    assert_one_line(
        err, str(tmp_path / "absent"), "dataset.download=true", "one sub-folder of images per class"
    )
    broken = root / "dog" / "img_0002.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(CorruptDataError) as err:
        load("imagefolder", root, cache, image_size=20)
    assert_one_line(err, str(broken))


def test_no_cache_dir_decodes_into_memory(tmp_path):
    write_imagefolder(tmp_path / "f", {"a": 3, "b": 3})
    bench = load("imagefolder", tmp_path / "f", None, image_size=8, test_fraction=0.5)
    assert not isinstance(bench.train.images, np.memmap) and len(bench.train) == 3
    assert not list(tmp_path.rglob("*.npy"))


def test_an_interrupted_cache_is_not_used(tmp_path):
    write_svhn(tmp_path, 10, 10)
    cache = tmp_path / "cache"
    load("svhn", tmp_path, cache, num_classes=10, image_size=32)
    images = next(cache.rglob("train-*.images.npy"))
    truncate(images, 0.5)  # a cache cut short (disk full, killed) is rebuilt, not trusted
    again = load("svhn", tmp_path, cache, num_classes=10, image_size=32)
    assert again.train.images.shape == (10, 3, 32, 32)
    assert [int(again.train.images[9, c, 0, 0]) for c in range(3)] == [
        value(9, c) for c in range(3)
    ]
