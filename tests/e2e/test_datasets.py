"""`python -m amint_pl.run dataset=<name>` end to end on tiny files in each data set's own format.

Real subprocesses: the shipped config composed by Hydra, the real readers and cache, one epoch of
real Lightning training. All eight data sets run as the jobs of one multirun (`-m dataset=...`),
so the ~10 s import of the stack is paid once, not eight times.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.formats import (
    truncate,
    write_cifar,
    write_gtsrb,
    write_imagefolder,
    write_mnist_files,
    write_svhn,
    write_tiny_imagenet,
)
from tests.helpers import ONE_EPOCH, read_results, run_dirs, run_into

# Each test runs the entry point end to end on every reader: the full suite only (make test).
pytestmark = pytest.mark.slow

# Each writer puts ~90 train and >= 18 test images where the config's default root expects them
# (`<data_dir>/<name>`).
WRITERS = {
    "mnist": lambda d: write_mnist_files(d / "mnist" / "MNIST" / "raw", 90, 20),
    "fashion_mnist": lambda d: write_mnist_files(
        d / "fashion_mnist" / "FashionMNIST" / "raw", 90, 20, gz=False
    ),
    "cifar10": lambda d: write_cifar(d / "cifar10", 18),
    "cifar100": lambda d: write_cifar(d / "cifar100", 90, hundred=True),
    "svhn": lambda d: write_svhn(d / "svhn", 90, 20),
    "gtsrb": lambda d: write_gtsrb(d / "gtsrb", per_class=30, n_test=20),
    "tiny_imagenet": lambda d: write_tiny_imagenet(d / "tiny_imagenet", per_class=30, n_val=20),
    "imagefolder": lambda d: write_imagefolder(d / "imagefolder", {"a": 40, "b": 40, "c": 40}),
}


def run(tmp_path: Path, *overrides: str, multirun: bool = False):
    return run_into(tmp_path / "runs", tmp_path / "data", *overrides, multirun=multirun)


def test_run_trains_and_reports_on_every_dataset(tmp_path):
    for write in WRITERS.values():
        write(tmp_path / "data")
    # 32 px everywhere keeps the 64 px data sets (GTSRB, Tiny ImageNet, folders) quick.
    datasets = f"dataset={','.join(WRITERS)}"
    proc, _ = run(tmp_path, datasets, "dataset.image_size=32", *ONE_EPOCH, multirun=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {}
    for run_dir in run_dirs(tmp_path / "runs"):
        result = read_results(run_dir)
        results[result["dataset"]] = result
    assert set(results) == set(WRITERS)
    for name, result in results.items():
        assert result["status"] == "completed", name
        assert 0.0 <= result["audited"]["test_acc"] <= 1.0, name
        assert result["audited"]["n_train"] == 40, name
        for protocol in ("paper", "strict"):
            assert 0.0 <= result["membership"][protocol]["mint"]["auc"] <= 1.0, name
        # Decoded once into the cache under the data directory: train and test.
        cached = list((tmp_path / "data" / "cache").glob(f"{name}-*/*-32px-*.images.npy"))
        assert len(cached) == 2, (name, cached)


def test_missing_and_corrupt_data_exit_2_with_one_line(tmp_path):
    proc, _ = run(tmp_path, "dataset=svhn", *ONE_EPOCH)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: dataset 'svhn' not found") and "dataset.download=true" in last
    assert str(tmp_path / "data" / "svhn" / "train_32x32.mat") in last

    raw = tmp_path / "data" / "mnist" / "MNIST" / "raw"
    write_mnist_files(raw, 90, 20)
    truncate(raw / "train-labels-idx1-ubyte.gz")
    proc, _ = run(tmp_path, "dataset=mnist", *ONE_EPOCH)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(raw / "train-labels-idx1-ubyte.gz") in last
