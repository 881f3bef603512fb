"""Decode and resize a benchmark's pools once; keep them as memory-mapped `.npy` files.

A cached pool is two files in `<dataset.cache_dir>/<name>-<root digest>/`:

    <split>-<size>px-<fingerprint>.images.npy   uint8 (N, C, size, size), opened memory-mapped
    <split>-<size>px-<fingerprint>.labels.npy   int64 (N,)

The fingerprint covers the source (every file's path, size and modification time, the labels,
the native channels) and `CACHE_FORMAT`, so a second run opens the arrays without decoding, and a
changed source, size or decoder builds a new pair (the stale pair of that split and size is
deleted). Files are written under a temporary name and renamed when complete, so an interrupted
run never leaves a cache that looks finished. Image files are decoded one at a time (a few threads:
Pillow releases the GIL) straight into the memory-mapped array, so memory stays bounded for any
folder size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from amint_pl.data.sources import ArraySource, ImageFiles, Pool, Source
from amint_pl.errors import ConfigError, CorruptDataError, DataNotFoundError
from amint_pl.status import PROGRESS_INTERVAL_S, PROGRESS_LOGGER, duration

# Bump when decoding or resizing changes: every cache is rebuilt.
CACHE_FORMAT = 1
DECODE_THREADS = min(8, os.cpu_count() or 1)
# Elements per chunk when resizing or summing arrays (~16M: tens of MB of float32).
CHUNK_ELEMENTS = 1 << 24
# Progress bars only for pools at least this large (a tiny pool caches in a blink).
PROGRESS_MIN_IMAGES = 2048


# ---------------------------------------------------------------------------------------------
# Decoding and resizing


def chunk_size(images_shape: tuple[int, ...]) -> int:
    return max(1, CHUNK_ELEMENTS // max(1, int(np.prod(images_shape[1:]))))


def resize_images(
    images: np.ndarray,
    size: int,
    out: np.ndarray | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Resize uint8 (N, C, H, W) images to (N, C, size, size), bilinear with antialiasing.

    Works in chunks and writes into `out` when given (e.g. a memory-mapped array); with neither
    `out` nor a change of size, returns `images` itself.
    """
    same = images.shape[2] == size and images.shape[3] == size
    if same and out is None:
        return images
    if out is None:
        out = np.empty((len(images), images.shape[1], size, size), dtype=np.uint8)
    chunk = chunk_size(images.shape)
    for start in range(0, len(images), chunk):
        batch = np.ascontiguousarray(images[start : start + chunk])
        if not same:
            resized = F.interpolate(
                torch.from_numpy(batch.astype(np.float32)),
                size=(size, size),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
            batch = resized.round().clamp(0, 255).to(torch.uint8).numpy()
        out[start : start + len(batch)] = batch
        if on_chunk is not None:
            on_chunk(len(batch))
    return out


def decode_image(path: str | Path, channels: int, size: int) -> np.ndarray:
    """One image file -> uint8 (channels, size, size); an unreadable file is a CorruptDataError."""
    from PIL import Image, UnidentifiedImageError

    mode = "L" if channels == 1 else "RGB"
    try:
        with Image.open(path) as image:
            # JPEG only: let the decoder scale down by 1/2..1/8 while staying >= size (much faster).
            image.draft(mode, (size, size))
            image = image.convert(mode)
            if image.size != (size, size):
                image = image.resize((size, size), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except FileNotFoundError as err:
        raise DataNotFoundError(
            f"image {path} is missing; restore it or fetch the data set again"
        ) from err
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise CorruptDataError(
            f"{path} is corrupt or truncated ({reason[:200]}); replace or delete it"
        ) from err
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def decode_images(
    files: ImageFiles, size: int, out: np.ndarray, on_chunk: Callable[[int], None] | None = None
) -> None:
    """Decode every file of `files` into `out` (N, C, size, size), a bounded chunk at a time."""
    chunk = 64 * DECODE_THREADS

    def decode(path: str | Path) -> np.ndarray:
        return decode_image(path, files.channels, size)

    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        for start in range(0, len(files), chunk):
            paths = files.paths[start : start + chunk]
            for offset, array in enumerate(pool.map(decode, paths)):
                out[start + offset] = array
            if on_chunk is not None:
                on_chunk(len(paths))


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units (chunked: bounded memory)."""
    total = np.zeros(images.shape[1])
    total_sq = np.zeros(images.shape[1])
    count = 0
    chunk = chunk_size(images.shape)
    for start in range(0, len(images), chunk):
        batch = np.asarray(images[start : start + chunk], dtype=np.float32) / 255.0
        total += batch.sum(axis=(0, 2, 3), dtype=np.float64)
        total_sq += np.square(batch).sum(axis=(0, 2, 3), dtype=np.float64)
        count += batch.shape[0] * batch.shape[2] * batch.shape[3]
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(total_sq / max(count, 1) - mean**2, 1e-12))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


# ---------------------------------------------------------------------------------------------
# Fingerprints


def source_fingerprint(source: ArraySource | ImageFiles) -> str:
    """SHA-256 of what a cached pool was built from: file paths, sizes, mtimes, labels, format."""
    digest = hashlib.sha256(f"amint_pl cache format {CACHE_FORMAT}\n".encode())
    if isinstance(source, ArraySource):
        paths: list = list(source.files)
    else:
        paths = list(source.paths)
        digest.update(f"channels {source.channels}\n".encode())
        digest.update(np.ascontiguousarray(source.labels, dtype="<i8").tobytes())
    lines = []
    for path in paths:
        try:
            stat = os.stat(path)
        except FileNotFoundError as err:
            raise DataNotFoundError(
                f"{path} is missing; restore it or fetch the data set again"
            ) from err
        lines.append(f"{os.path.abspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n")
        if len(lines) >= 8192:
            digest.update("".join(lines).encode("utf-8", "surrogateescape"))
            lines.clear()
    digest.update("".join(lines).encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def root_digest(root: str | Path) -> str:
    """A short digest of a data set's root: its cache folder name, so two roots never collide."""
    return hashlib.sha256(os.path.abspath(root).encode("utf-8", "surrogateescape")).hexdigest()[:8]


# ---------------------------------------------------------------------------------------------
# The cache


@contextmanager
def progress_bar(total: int, description: str) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr (nothing for small pools); yields `advance(n)`. When stderr
    is not a terminal (Rich would draw nothing until the end): plain progress lines instead."""
    if total < PROGRESS_MIN_IMAGES:
        yield lambda n: None
        return
    if not sys.stderr.isatty():
        yield _plain_progress(total, description)
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    ) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


def _plain_progress(total: int, description: str) -> Callable[[int], None]:
    """`advance(n)` that logs a line every PROGRESS_INTERVAL_S seconds and at the end."""
    log = logging.getLogger(PROGRESS_LOGGER)
    started = time.monotonic()
    state = {"done": 0, "last": started}
    log.info("%s: %d images", description, total)

    def advance(n: int) -> None:
        state["done"] += n
        now = time.monotonic()
        if now - state["last"] < PROGRESS_INTERVAL_S and state["done"] < total:
            return
        state["last"] = now
        rate = state["done"] / max(now - started, 1e-9)
        log.info(
            "%s: %d/%d images | %.0f images/s | elapsed %s ETA %s",
            description,
            state["done"],
            total,
            rate,
            duration(now - started),
            duration((total - state["done"]) / rate),
        )

    return advance


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(folder: Path, stem: str, key: str) -> None:
    """Delete earlier caches of the same split and size, and partial files of dead processes."""
    for path in folder.glob(f"{stem}-*"):
        if path.name.endswith(".partial"):
            pid = path.name.rsplit(".", 2)[-2]
            if pid.isdigit() and not _pid_alive(int(pid)):
                path.unlink(missing_ok=True)
        elif not path.name.startswith(f"{key}."):
            path.unlink(missing_ok=True)


def _open_cached(images_path: Path, labels_path: Path) -> Pool | None:
    """The cached pool, memory-mapped; None when absent or unreadable (then it is rebuilt)."""
    if not (images_path.is_file() and labels_path.is_file()):
        return None
    try:
        # Copy-on-write: torch can wrap it without a read-only warning; pages load on demand.
        images = np.load(images_path, mmap_mode="c")
        labels = np.load(labels_path)
        return Pool(images, labels.astype(np.int64, copy=False))
    except (OSError, ValueError, EOFError):
        return None


def _target_size(source: ArraySource | ImageFiles, size: int | None, name: str) -> int | None:
    if size is not None or isinstance(source, ArraySource):
        return size
    if source.native_size is None:
        raise ConfigError(
            f"dataset '{name}' has images of varying sizes: set dataset.image_size (e.g. 64)"
        )
    return source.native_size


def build_pool(
    source: ArraySource | ImageFiles,
    size: int | None,
    allocate: Callable[[tuple[int, ...]], np.ndarray],
    description: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode (and resize) a source into the array that `allocate(shape)` returns."""
    if isinstance(source, ArraySource):
        native = source.read()
        n, channels, height, width = native.images.shape
        shape = (n, channels, size or height, size or width)
        out = allocate(shape)
        with progress_bar(n, description) as advance:
            if size:
                resize_images(native.images, size, out=out, on_chunk=advance)
            else:
                out[...] = native.images
                advance(n)
        return out, native.labels
    assert size is not None
    out = allocate((len(source), source.channels, size, size))
    with progress_bar(len(source), description) as advance:
        decode_images(source, size, out, on_chunk=advance)
    return out, np.asarray(source.labels, dtype=np.int64)


def materialise(
    source: Source,
    name: str,
    split: str,
    size: int | None,
    folder: Path | None,
) -> tuple[Pool, Path | None]:
    """A source as a `Pool` of uint8 images of the given square size (None: native).

    Args:
        source: what a reader returned.
        name, split: the data set and pool (`train`, `test`), for file names and progress.
        size: the square side to resize to; None keeps the native size.
        folder: the cache folder; None decodes into memory without caching.

    Returns:
        (pool, cache prefix or None): the prefix names the cached files (`<prefix>.images.npy`).
    """
    if isinstance(source, Pool):
        if size is None:
            return source, None
        return Pool(resize_images(source.images, size), source.labels), None
    size = _target_size(source, size, name)
    description = f"caching {name} {split} at " + (f"{size} px" if size else "native size")
    if folder is None:
        images, labels = build_pool(source, size, lambda s: np.empty(s, np.uint8), description)
        return Pool(images, labels), None

    stem = f"{split}-{size}px" if size else f"{split}-native"
    key = f"{stem}-{source_fingerprint(source)[:16]}"
    prefix = folder / key
    images_path = Path(f"{prefix}.images.npy")
    labels_path = Path(f"{prefix}.labels.npy")
    if (cached := _open_cached(images_path, labels_path)) is not None:
        return cached, prefix
    suffix = f".{os.getpid()}.partial"
    images_tmp = Path(f"{images_path}{suffix}")
    labels_tmp = Path(f"{labels_path}{suffix}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _remove_stale(folder, stem, key)

        def allocate(shape: tuple[int, ...]) -> np.ndarray:
            return np.lib.format.open_memmap(images_tmp, mode="w+", dtype=np.uint8, shape=shape)

        images, labels = build_pool(source, size, allocate, description)
        images.flush()
        del images
        with open(labels_tmp, "wb") as file:
            np.save(file, labels.astype(np.int64))
        os.replace(labels_tmp, labels_path)
        os.replace(images_tmp, images_path)  # last: its presence marks a complete cache
    except OSError as err:
        raise ConfigError(
            f"cannot write the cache in {folder} ({err}): free disk space or set dataset.cache_dir "
            f"(null keeps pools in memory)"
        ) from err
    finally:
        images_tmp.unlink(missing_ok=True)
        labels_tmp.unlink(missing_ok=True)
    cached = _open_cached(images_path, labels_path)
    if cached is None:
        raise CorruptDataError(f"the cache {images_path} cannot be read back; delete {folder}")
    return cached, prefix


def cached_stats(
    images: np.ndarray, prefix: Path | None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """`channel_stats` of a pool, stored beside its cache (`<prefix>.stats.json`) when cached."""
    path = Path(f"{prefix}.stats.json") if prefix is not None else None
    if path is not None and path.is_file():
        try:
            stored = json.loads(path.read_text())
            return tuple(stored["mean"]), tuple(stored["std"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    mean, std = channel_stats(images)
    if path is not None:
        try:
            path.write_text(json.dumps({"mean": mean, "std": std}))
        except OSError:
            pass  # the stats are recomputed next time; nothing is lost
    return mean, std
