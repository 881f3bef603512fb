"""Runs that several test modules only read, trained once per test session (each run costs
~15 s of imports and training on 2 CPU cores)."""

from __future__ import annotations

import functools
from pathlib import Path

from tests.conftest import TINY, read_results, run_module

# Tiny, quiet and deterministic: what the resume and determinism tests compare.
DETERMINISTIC = [*TINY, "trainer.enable_progress_bar=false", "trainer.deterministic=true"]


def train(root: Path, run_dir: Path, *overrides: str, cwd: Path | None = None) -> dict:
    """`python -m amint_pl.run` into run_dir (data under root/data); returns its results.json."""
    proc = run_module(
        "amint_pl.run",
        *DETERMINISTIC,
        f"hydra.run.dir={run_dir}",
        f"paths.data_dir={root / 'data'}",
        *overrides,
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return read_results(run_dir)


@functools.cache
def three_epoch_run(base: Path) -> tuple[Path, dict, list[str]]:
    """A 3-epoch aMINT run on digits in <base>/shared/full, started in an empty working directory
    <base>/shared/cwd: (root, results.json, every path under root outside the run directory)."""
    root = base / "shared"
    cwd = root / "cwd"
    cwd.mkdir(parents=True)
    results = train(root, root / "full", "trainer.max_epochs=3", cwd=cwd)
    outside = [
        str(p.relative_to(root)) for p in root.rglob("*") if p.relative_to(root).parts[0] != "full"
    ]
    return root, results, outside


@functools.cache
def general_run(base: Path) -> tuple[Path, dict]:
    """A 2-epoch mint=active_general run on digits (its head reads the loss and the membership
    memory at the label), half of the seen members as positives, rotating, on augmented images,
    in <base>/shared/general: (run dir, results.json)."""
    run_dir = base / "shared" / "general"
    results = train(
        base / "shared",
        run_dir,
        "mint=active_general",
        "mint.positive_fraction=0.5",
        "mint.rotate_positives=true",
        "dataset.augment=flip_crop",  # the memory then reads the un-augmented images
    )
    return run_dir, results
