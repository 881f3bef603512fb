"""Tiny files in each data set's exact on-disk format (IDX gz, CIFAR pickles, SVHN .mat, GTSRB
.ppm + CSV, the tiny-imagenet-200 tree, an image folder), for the readers' unit tests and the runs.

Images are constant-coloured with a value derived from their index and channel, so shapes, order,
channel layout and labels can be checked after decoding and resizing.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image


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
