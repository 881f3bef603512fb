"""Benchmarks: a name -> `Benchmark` (a `train` and a `test` pool of uint8 images).

Readers (`amint_pl.data.readers`) find a data set's files and return native-size sources;
`load_benchmark` decodes and resizes them once to the configured size and caches the result as
memory-mapped `.npy` files (`amint_pl.data.cache`). Data sets without an official test split are
cut with a fixed seed (`cut_seed`), independent of the experiment seed, so that the pools never
change between experiments.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from amint_pl.data.cache import cached_stats, channel_stats, materialise, resize_images, root_digest

# Importing the readers registers them; the names below are the data package's public interface.
from amint_pl.data.readers import read_digits
from amint_pl.data.sources import (
    IMAGE_FILE_DATASETS,
    READERS,
    ArraySource,
    ImageFiles,
    Pool,
    Reader,
    ReaderRequest,
    Source,
    register_reader,
)
from amint_pl.errors import ConfigError

__all__ = [
    "IMAGE_FILE_DATASETS",
    "READERS",
    "ArraySource",
    "Benchmark",
    "ImageFiles",
    "Pool",
    "Reader",
    "ReaderRequest",
    "Source",
    "benchmark_from_config",
    "channel_stats",
    "load_benchmark",
    "read_digits",
    "register_reader",
    "resize_images",
    "seeded_cut",
]


@dataclass
class Benchmark:
    """A benchmark's two pools and what a model needs to know about them."""

    name: str
    train: Pool
    test: Pool
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # The name of each label: the class folders of a data set stored as class folders, else the
    # labels themselves ("0", "1", ...).
    class_names: tuple[str, ...] = ()

    @property
    def channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train.images.shape[2])


def cut_indices(n: int, test_fraction: float, cut_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices) of a seeded cut of n samples, the same on every machine."""
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"dataset.test_fraction={test_fraction} must lie in (0, 1)")
    order = np.random.default_rng(cut_seed).permutation(n)
    n_test = int(round(n * test_fraction))
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def seeded_cut(pool: Pool, test_fraction: float, cut_seed: int) -> tuple[Pool, Pool]:
    """Cut a pool into train and test pools, the same for a given seed on every machine."""
    train_idx, test_idx = cut_indices(len(pool), test_fraction, cut_seed)
    return (
        Pool(pool.images[train_idx], pool.labels[train_idx]),
        Pool(pool.images[test_idx], pool.labels[test_idx]),
    )


def cut_source(source: Source, test_fraction: float, cut_seed: int) -> tuple[Source, Source]:
    """`seeded_cut` of any source; image files are cut before decoding (each side is cached)."""
    if isinstance(source, ImageFiles):
        train_idx, test_idx = cut_indices(len(source), test_fraction, cut_seed)
        return source.subset(train_idx), source.subset(test_idx)
    if isinstance(source, ArraySource):
        source = source.read()
    return seeded_cut(source, test_fraction, cut_seed)


def _floats(values: Sequence[float] | None, key: str, channels: int) -> tuple[float, ...] | None:
    if values is None:
        return None
    values = tuple(float(v) for v in values)
    if len(values) != channels:
        raise ConfigError(
            f"dataset.{key} has {len(values)} values but the images have {channels} channel(s): "
            f"give one per channel, or null to compute them"
        )
    return values


def load_benchmark(
    name: str,
    root: str | Path,
    num_classes: int | None = None,
    image_size: int | None = None,
    download: bool = False,
    test_fraction: float = 0.2,
    cut_seed: int = 0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    cache_dir: str | Path | None = None,
    options: Mapping[str, Any] | None = None,
) -> Benchmark:
    """Read a benchmark by name, decoding and resizing it once (cached when cache_dir is set).

    Args:
        name: a key of `READERS`.
        root: the folder that holds the data set's files (the reader knows its layout below it).
        num_classes: the number of classes the config declares (checked against the labels);
            None takes it from the data (the class folders, else the largest label + 1).
        image_size: resize every image to this square size once; None keeps the native size.
        download: let the reader fetch the files where an official download exists.
        test_fraction, cut_seed: the seeded test cut for data sets without a test split.
        mean, std: normalisation per native channel, in [0, 1] units; None computes them on the
            train pool (stored beside the cache).
        cache_dir: where decoded pools are cached (`<cache_dir>/<name>-<root digest>/`); None
            decodes into memory on every run.
        options: reader-specific settings (the rest of the `dataset` config, e.g. `test_root`).

    Returns:
        The `Benchmark`, images uint8 (N, C, H, W), memory-mapped when cached.
    """
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise ConfigError(f"dataset.image_size={image_size} must be a positive integer or null")
    root = Path(root).expanduser()
    train_source, test_source = READERS[name](ReaderRequest(root, download, dict(options or {})))
    if test_source is None:
        train_source, test_source = cut_source(train_source, test_fraction, cut_seed)
    folder = Path(cache_dir).expanduser() / f"{name}-{root_digest(root)}" if cache_dir else None
    train, prefix = materialise(train_source, name, "train", image_size, folder)
    test, _ = materialise(test_source, name, "test", image_size, folder)
    if len(train) == 0 or len(test) == 0:
        raise ConfigError(f"dataset '{name}' has an empty train or test pool: check {root}")
    found = int(max(train.labels.max(), test.labels.max())) + 1
    if num_classes is None:
        declared = getattr(train_source, "num_classes", None)
        num_classes = max(found, declared or 0)
    elif found > num_classes:
        raise ConfigError(
            f"dataset '{name}' has labels up to {found - 1} but dataset.num_classes={num_classes}: "
            f"raise it"
        )
    channels = int(train.images.shape[1])
    mean, std = _floats(mean, "mean", channels), _floats(std, "std", channels)
    if mean is None or std is None:
        mean, std = cached_stats(train.images, prefix)
    folders = getattr(train_source, "class_names", None) or ()
    class_names = tuple(folders[i] if i < len(folders) else str(i) for i in range(num_classes))
    return Benchmark(name, train, test, int(num_classes), tuple(mean), tuple(std), class_names)


# The `dataset` config keys that `load_benchmark` takes itself; the rest go to the reader.
BENCHMARK_KEYS = (
    "name",
    "root",
    "num_classes",
    "image_size",
    "download",
    "test_fraction",
    "cut_seed",
    "mean",
    "std",
    "cache_dir",
)


def benchmark_from_config(dataset_cfg: Mapping[str, Any]) -> Benchmark:
    """Read the benchmark that a `conf/dataset/*.yaml` node describes (a dict or DictConfig)."""
    num_classes = dataset_cfg.get("num_classes")
    image_size = dataset_cfg.get("image_size")
    return load_benchmark(
        name=dataset_cfg["name"],
        root=dataset_cfg["root"],
        num_classes=None if num_classes is None else int(num_classes),
        image_size=None if image_size is None else int(image_size),
        download=bool(dataset_cfg.get("download", False)),
        test_fraction=float(dataset_cfg.get("test_fraction", 0.2)),
        cut_seed=int(dataset_cfg.get("cut_seed", 0)),
        mean=dataset_cfg.get("mean"),
        std=dataset_cfg.get("std"),
        cache_dir=dataset_cfg.get("cache_dir"),
        options={k: v for k, v in dataset_cfg.items() if k not in BENCHMARK_KEYS},
    )
