"""Benchmark readers, configs and the decode cache, on tiny files in each data set's exact format.

Every reader reads real files (IDX gz, CIFAR pickles, SVHN .mat, GTSRB .ppm + CSV, the
tiny-imagenet-200 tree, an image folder) that tests/formats.py writes into a temporary folder; no
mocks.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from amint_pl.data import readers
from amint_pl.data.benchmarks import (
    READERS,
    Benchmark,
    benchmark_from_config,
    load_benchmark,
)
from amint_pl.data.splits import SplitSizes, build_splits
from amint_pl.errors import ConfigError, CorruptDataError, DataNotFoundError
from tests.formats import (
    truncate,
    value,
    write_cifar,
    write_gtsrb,
    write_imagefolder,
    write_mnist_files,
    write_svhn,
    write_tiny_imagenet,
)
from tests.helpers import compose_config

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
    cfg = compose_config(f"dataset={name}", *overrides)
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
    cut = {"test_fraction", "cut_seed"}  # only data sets without an official test split are cut
    for name in DATASETS:
        cfg = compose_dataset(name, "paths.data_dir=/d")
        assert cfg["name"] == name and name in READERS
        assert set(digits) - cut <= set(cfg), set(digits) - set(cfg)
        assert (cut <= set(cfg)) == (name in ("digits", "imagefolder")), name
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
