"""What a reader hands back: a decoded `Pool`, or a source that `load_benchmark` decodes and caches.

A reader only finds files and says how to read them; decoding, resizing and the on-disk cache
live in `amint_pl.data.cache`, so every benchmark gets the same bounded, cached treatment:

- `Pool`: images already in memory (small, embedded data sets such as scikit-learn's digits);
- `ArraySource`: a few files decoded at once into arrays (IDX, CIFAR pickles, SVHN .mat);
- `ImageFiles`: one image file per sample (GTSRB, Tiny ImageNet, any image folder), decoded one
  file at a time into a preallocated array, so a 494k-image folder never sits in Python lists.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


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


@dataclass(frozen=True)
class ArraySource:
    """A pool stored in a few files that are decoded together.

    files: every file `read` opens (their names, sizes and modification times key the cache).
    read: decodes them into a native-size `Pool`; called only when the cache misses.
    """

    files: tuple[Path, ...]
    read: Callable[[], Pool]


@dataclass(frozen=True)
class ImageFiles:
    """A pool stored as one image file per sample.

    paths: the image files, in a fixed order (that order is the pool's index); plain strings
      keep a 494k-file list small.
    labels: int64 (N,), one per path.
    channels: the native channels (1 for grey data, else 3; other modes are converted to RGB).
    native_size: the square side all images share, or None when their sizes vary (then
      `dataset.image_size` must be set).
    class_names: the name of each label as the layout names it (its class folders), or None.
    """

    paths: Sequence[str | Path]
    labels: np.ndarray
    channels: int
    native_size: int | None = None
    class_names: tuple[str, ...] | None = None

    @property
    def num_classes(self) -> int | None:
        """The number of classes the layout declares, or None."""
        return None if self.class_names is None else len(self.class_names)

    def __post_init__(self) -> None:
        if len(self.paths) != len(self.labels):
            raise ValueError(f"{len(self.paths)} paths but {len(self.labels)} labels")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index: np.ndarray) -> ImageFiles:
        """The files at `index` (in that order), e.g. one side of a seeded train/test cut."""
        return ImageFiles(
            [self.paths[i] for i in index],
            self.labels[index],
            self.channels,
            self.native_size,
            self.class_names,
        )


Source = Pool | ArraySource | ImageFiles


@dataclass(frozen=True)
class ReaderRequest:
    """What a reader is asked for.

    root: the folder that holds the data set's files (the reader knows its layout below it).
    download: whether the reader may fetch missing files with the official downloader.
    options: the rest of the `dataset` config (reader-specific keys such as `test_root`).
    """

    root: Path
    download: bool
    options: Mapping[str, Any] = field(default_factory=dict)


# A reader returns (train source, test source or None when the data set has no official test
# split: `load_benchmark` then cuts one from the train pool with `dataset.cut_seed`).
Reader = Callable[[ReaderRequest], tuple[Source, Source | None]]
READERS: dict[str, Reader] = {}
# The data sets whose readers hand back `ImageFiles` (decoded and resized by Pillow, as `audit`
# must decode its inputs too) rather than arrays (resized by `resize_images`).
IMAGE_FILE_DATASETS: set[str] = set()


def register_reader(name: str, image_files: bool = False) -> Callable[[Reader], Reader]:
    """Decorator: make a reader available as `dataset.name=<name>`; `image_files`: it returns
    `ImageFiles`."""

    def add(reader: Reader) -> Reader:
        READERS[name] = reader
        if image_files:
            IMAGE_FILE_DATASETS.add(name)
        return reader

    return add
