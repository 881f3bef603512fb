"""Benchmark readers: a name -> `Benchmark` (a `train` and a `test` pool of uint8 images).

Every reader returns images as one uint8 array (N, C, H, W) and int64 labels, in the data set's
native size and channels; `load_benchmark` resizes once to the configured size. Data sets without
an official test split are cut with a fixed seed (`cut_seed`), independent of the experiment seed,
so that the pools never change between experiments.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from amint_pl.errors import ConfigError


@dataclass
class Pool:
    """One pool of a benchmark: images uint8 (N, C, H, W) and labels int64 (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {self.images.dtype} {self.images.shape}"
            )
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Benchmark:
    """A benchmark's two pools and what a model needs to know about them."""

    name: str
    train: Pool
    test: Pool
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train.images.shape[2])


@dataclass(frozen=True)
class ReaderRequest:
    """What a reader is asked for: where the files live and whether it may download them."""

    root: Path
    download: bool


# A reader returns (train pool, test pool or None when the data set has no official test split).
Reader = Callable[[ReaderRequest], tuple[Pool, Pool | None]]
READERS: dict[str, Reader] = {}


def register_reader(name: str) -> Callable[[Reader], Reader]:
    def add(reader: Reader) -> Reader:
        READERS[name] = reader
        return reader

    return add


@register_reader("digits")
def read_digits(request: ReaderRequest) -> tuple[Pool, Pool | None]:
    """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), embedded in the wheel."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Values are 0..16; scale to the full uint8 range.
    images = np.clip(digits.images * 16.0, 0, 255).round().astype(np.uint8)[:, None]
    return Pool(images, digits.target.astype(np.int64)), None


def seeded_cut(pool: Pool, test_fraction: float, cut_seed: int) -> tuple[Pool, Pool]:
    """Cut a pool into train and test pools, the same for a given seed on every machine."""
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"dataset.test_fraction={test_fraction} must lie in (0, 1)")
    order = np.random.default_rng(cut_seed).permutation(len(pool))
    n_test = int(round(len(pool) * test_fraction))
    test_idx, train_idx = np.sort(order[:n_test]), np.sort(order[n_test:])
    return (
        Pool(pool.images[train_idx], pool.labels[train_idx]),
        Pool(pool.images[test_idx], pool.labels[test_idx]),
    )


def resize_images(images: np.ndarray, size: int, chunk: int = 4096) -> np.ndarray:
    """Resize uint8 (N, C, H, W) images to (N, C, size, size), bilinear with antialiasing."""
    if images.shape[2] == size and images.shape[3] == size:
        return images
    out = np.empty((len(images), images.shape[1], size, size), dtype=np.uint8)
    for start in range(0, len(images), chunk):
        batch = torch.from_numpy(np.ascontiguousarray(images[start : start + chunk])).float()
        resized = F.interpolate(
            batch, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        out[start : start + chunk] = resized.round().clamp(0, 255).to(torch.uint8).numpy()
    return out


def channel_stats(
    images: np.ndarray, chunk: int = 8192
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units."""
    total = np.zeros(images.shape[1])
    total_sq = np.zeros(images.shape[1])
    count = 0
    for start in range(0, len(images), chunk):
        batch = images[start : start + chunk].astype(np.float64) / 255.0
        total += batch.sum(axis=(0, 2, 3))
        total_sq += (batch**2).sum(axis=(0, 2, 3))
        count += batch.shape[0] * batch.shape[2] * batch.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def load_benchmark(
    name: str,
    root: str | Path,
    num_classes: int,
    image_size: int | None = None,
    download: bool = False,
    test_fraction: float = 0.2,
    cut_seed: int = 0,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> Benchmark:
    """Read a benchmark by name.

    Args:
        name: a key of `READERS`.
        root: the folder that holds the data set's files (the reader knows its layout below it).
        num_classes: the number of classes the config declares (checked against the labels).
        image_size: resize every image to this square size once; None keeps the native size.
        download: let the reader fetch the files where an official download exists.
        test_fraction, cut_seed: the seeded test cut for data sets without a test split.
        mean, std: normalisation in [0, 1] units; None computes them on the train pool.

    Returns:
        The `Benchmark`, images uint8 (N, C, H, W).
    """
    if name not in READERS:
        raise ConfigError(f"unknown dataset '{name}': choose one of {', '.join(sorted(READERS))}")
    train, test = READERS[name](ReaderRequest(Path(root).expanduser(), download))
    if test is None:
        train, test = seeded_cut(train, test_fraction, cut_seed)
    if image_size is not None:
        train = Pool(resize_images(train.images, image_size), train.labels)
        test = Pool(resize_images(test.images, image_size), test.labels)
    found = int(max(train.labels.max(), test.labels.max())) + 1
    if found > num_classes:
        raise ConfigError(
            f"dataset '{name}' has labels up to {found - 1} but dataset.num_classes={num_classes}: raise it"
        )
    if mean is None or std is None:
        mean, std = channel_stats(train.images)
    return Benchmark(name, train, test, num_classes, tuple(mean), tuple(std))


def benchmark_from_config(dataset_cfg: Mapping[str, Any]) -> Benchmark:
    """Read the benchmark that a `conf/dataset/*.yaml` node describes."""
    return load_benchmark(
        name=dataset_cfg["name"],
        root=dataset_cfg["root"],
        num_classes=int(dataset_cfg["num_classes"]),
        image_size=dataset_cfg.get("image_size"),
        download=bool(dataset_cfg.get("download", False)),
        test_fraction=float(dataset_cfg.get("test_fraction", 0.2)),
        cut_seed=int(dataset_cfg.get("cut_seed", 0)),
        mean=dataset_cfg.get("mean"),
        std=dataset_cfg.get("std"),
    )
