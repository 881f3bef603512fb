"""Hydra sweeps as a user runs them: a 2 x 2 multirun, a failed job inside a parallel (joblib)
sweep, the sweep presets and the SLURM launcher config."""

import gzip
import struct

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

import amint_pl.run  # noqa: F401  (registers the run-directory resolver)
from amint_pl.run import config_dir
from tests.conftest import TINY, read_results, run_dirs


def _write_idx(path, array):
    """LeCun's IDX format (unsigned bytes, gzipped), as MNIST ships."""
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_tiny_mnist(data_dir, n_train=300, n_test=200):
    """A small MNIST in torchvision's layout: <data_dir>/mnist/MNIST/raw/*-ubyte.gz."""
    rng = np.random.default_rng(0)
    raw = data_dir / "mnist" / "MNIST" / "raw"
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 64, (n, 28, 28)) + labels[:, None, None] * 19
        _write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", labels)


def _jobs(log_dir):
    """The job directories of the (single) sweep under log_dir, by job number."""
    jobs = sorted(run_dirs(log_dir), key=lambda d: int(d.name))
    assert len({d.parent for d in jobs}) == 1, "every job of a sweep in one sweep directory"
    return jobs


@pytest.mark.slow
def test_two_by_two_multirun_writes_one_run_per_cell(tmp_path, run_amint):
    write_tiny_mnist(tmp_path / "data")
    proc, _ = run_amint(*TINY, "dataset=digits,mnist", "mint=active,passive", "-m")
    jobs = _jobs(tmp_path / "runs")
    cells = {(r["dataset"], r["mint_mode"]) for r in map(read_results, jobs)}
    assert cells == {
        ("digits", "active"),
        ("digits", "passive"),
        ("mnist", "active"),
        ("mnist", "passive"),
    }
    for job in jobs:
        results = read_results(job)
        assert results["status"] == "completed", results.get("error")
        assert results["membership"]["paper"]["loss"]["n_members"] > 0
        assert (job / "scores.csv").is_file() and (job / "roc.png").is_file()
        assert results["distributed"]["process_group_size"] == 1


@pytest.mark.slow
def test_a_failed_job_leaves_its_error_and_the_joblib_sweep_goes_on(tmp_path, run_amint):
    proc, _ = run_amint(
        *TINY, "hydra/launcher=joblib", "optim.name=nesterov,adam", "-m", check=False
    )
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    bad, good = map(read_results, _jobs(tmp_path / "runs"))
    assert good["status"] == "completed" and good["membership"]["paper"]["mint"]["auc"] >= 0
    assert bad["status"] == "failed"
    assert "optim.name" in bad["error"] and "adam" in bad["error"]  # the error, naming the fix
    # The failed job (the first one) did not stop the sweep; the sweep says so, and exits 1.
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 1 of 2 jobs of the sweep failed")


@pytest.mark.parametrize("preset", sorted(p.stem for p in (config_dir() / "sweep").glob("*.yaml")))
def test_sweep_presets_sweep_over_options_that_exist(preset):
    with initialize_config_module("amint_pl.conf", version_base="1.3"):
        cfg = compose("run", overrides=[f"+sweep={preset}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert params, f"sweep/{preset}.yaml sweeps nothing"
    for key, values in params.items():
        for value in str(values).split(","):
            if key in ("dataset", "model", "mint"):
                assert (config_dir() / key / f"{value}.yaml").is_file(), f"{key}={value}"
            elif key == "mint.taps":
                assert value in ("entry", "middle", "output")


def test_paper_grid_is_data_sets_by_architectures_by_tap_setups():
    with initialize_config_module("amint_pl.conf", version_base="1.3"):
        cfg = compose("run", overrides=["+sweep=paper_grid"], return_hydra_config=True)
    params = {k: str(v).split(",") for k, v in cfg.hydra.sweeper.params.items()}
    assert params["dataset"] == ["mnist", "cifar10", "gtsrb", "tiny_imagenet"]
    assert set(params["model"]) == {
        "mobilenet",
        "resnet50",
        "resnet101",
        "densenet121",
        "xception",
        "vit",
    }
    assert params["mint.taps"] == ["entry", "middle", "output"]


# Our launcher configs carry the plugins' names: Hydra validates them against their schemas.
@pytest.mark.filterwarnings("ignore:(?s).*is validated against ConfigStore schema")
def test_slurm_launcher_asks_one_task_per_gpu_so_slurm_starts_the_ddp_processes():
    overrides = [
        "hydra/launcher=submitit_slurm",
        "trainer=ddp",
        "trainer.devices=4",
        "trainer.num_nodes=2",
    ]
    with initialize_config_module("amint_pl.conf", version_base="1.3"):
        cfg = compose("run", overrides=overrides, return_hydra_config=True)
        launcher = cfg.hydra.launcher
        assert launcher.tasks_per_node == launcher.gpus_per_node == 4
        assert launcher.nodes == 2
        assert type(instantiate(launcher)).__name__ == "SlurmLauncher"
        joblib = compose("run", overrides=["hydra/launcher=joblib"], return_hydra_config=True)
        assert type(instantiate(joblib.hydra.launcher)).__name__ == "JoblibLauncher"
