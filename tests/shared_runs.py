"""Runs that several test modules only read, trained once per test session (conftest.py makes
them session fixtures)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.helpers import DETERMINISTIC, read_results, run_main


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
