"""Runs that several test modules only read, trained once per test session (conftest.py makes
them session fixtures)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import DETERMINISTIC, compose_config, read_results, run_main


@dataclass(frozen=True)
class SharedRun:
    root: Path  # the data under root/data
    run_dir: Path
    results: dict
    outside: list[str]  # every path under root outside the run directory

    def checkpoint(self, phase: str) -> Path:
        """The run's best checkpoint of a phase."""
        return self.run_dir / self.results["best_checkpoints"][phase]


def train(root: Path, run_dir: Path, *overrides: str, cwd: Path | None = None) -> dict:
    """`python -m amint_pl.run` into run_dir (data under root/data), in this process; returns its
    results.json."""
    proc = run_main(
        "amint_pl.run",
        *DETERMINISTIC,
        f"hydra.run.dir={run_dir}",
        f"paths.data_dir={root / 'data'}",
        *overrides,
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return read_results(run_dir)


def _shared(root: Path, name: str, *overrides: str) -> SharedRun:
    """A run in root/<name>, started in an empty working directory root/cwd."""
    cwd = root / "cwd"
    cwd.mkdir(parents=True)
    results = train(root, root / name, *overrides, cwd=cwd)
    outside = [
        str(p.relative_to(root)) for p in root.rglob("*") if p.relative_to(root).parts[0] != name
    ]
    return SharedRun(root, root / name, results, outside)


def three_epoch_run(root: Path) -> SharedRun:
    """A 3-epoch aMINT run on digits: what the resume, determinism and audit tests read."""
    return _shared(root, "full", "trainer.max_epochs=3")


def notebook_run(root: Path, three_epochs: SharedRun) -> SharedRun:
    """three_epoch_run again, on its data, through `amint_pl.run.train(cfg, output_dir)` with the
    config composed by Hydra's compose API, as a notebook outside the repository calls it (started
    in an empty working directory root/cwd): what the train-API and the same-seed tests compare
    with the command line's run."""
    from amint_pl.run import train as train_in_process

    cwd = root / "cwd"
    cwd.mkdir(parents=True)
    overrides = [
        *DETERMINISTIC,
        "trainer.max_epochs=3",
        f"paths.data_dir={three_epochs.root / 'data'}",
    ]
    started = Path.cwd()
    os.chdir(cwd)
    try:
        results = train_in_process(compose_config(*overrides, hydra=True), root / "notebook")
    finally:
        os.chdir(started)
    outside = [
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.relative_to(root).parts[0] != "notebook"
    ]
    return SharedRun(root, root / "notebook", results, outside)


def general_run(root: Path) -> SharedRun:
    """A 2-epoch mint=active_general run on digits (its head reads the loss and the membership
    memory at the label), half of the seen members as positives, rotating, on augmented images."""
    return _shared(
        root,
        "general",
        "mint=active_general",
        "mint.positive_fraction=0.5",
        "mint.rotate_positives=true",
        "dataset.augment=flip_crop",  # the memory then reads the un-augmented images
    )
