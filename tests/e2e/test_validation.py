"""Validation at the edge: a bad setting stops `python -m amint_pl.run` with one line naming the fix,
exit code 2, before any data is decoded or any step trained; an existing run is never overwritten."""

import pytest
import torch

from tests.helpers import TINY, read_results, run_dirs, run_main, run_module

pytestmark = pytest.mark.slow

# MNIST's files are absent here: an error about anything else proves nothing was decoded first.
NO_DATA = "dataset=mnist"
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")


def _run(tmp_path, *overrides, process=False):
    """The run command in this process, or with process=True as a new one (the checks before
    Hydra starts cost a process no heavy import: those prove the exit status for real)."""
    return (run_module if process else run_main)(
        "amint_pl.run",
        *TINY,
        f"paths.log_dir={tmp_path / 'runs'}",
        f"paths.data_dir={tmp_path / 'data'}",
        *overrides,
    )


def _one_line_error(proc, message):
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1], lines[-1]
    assert "Traceback" not in proc.stderr


def test_a_misspelt_key_is_one_line_before_anything_is_written(tmp_path):
    proc = _run(tmp_path, "dataset.augmnt=flip_crop", process=True)
    _one_line_error(proc, "Could not override 'dataset.augmnt'. Key 'augmnt' is not in struct")
    assert "add a new key with a leading +" in proc.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("trainer.max_epochs=[",), "no viable alternative at input '[': write overrides as"),
        (("mint=active,passive", "mint.hed.kind=light", "-m"), "Key 'hed' is not in struct"),
    ],
)
def test_an_override_hydra_cannot_apply_is_one_line_in_a_run_or_a_sweep(
    tmp_path, overrides, message
):
    _one_line_error(_run(tmp_path, *overrides), message)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ((NO_DATA, "mint.taps=[7]"), "index 7 is out of range; this model has stages 0..2"),
        # Split sizes need the pool sizes: digits loads in a blink, then build_splits refuses.
        (("dataset.splits.members=5000",), "exceeds the train pool (1258): lower them"),
        ((NO_DATA, "seed=abc"), "seed=abc must be an integer"),
        pytest.param((NO_DATA, "trainer=gpu"), "torch sees no GPU here", marks=NO_GPU),
    ],
)
def test_the_entry_point_stops_before_data_or_training(tmp_path, overrides, message):
    proc = _run(tmp_path, *overrides)
    _one_line_error(proc, message)
    (run_dir,) = run_dirs(tmp_path / "runs")
    assert not (run_dir / "checkpoints").exists()  # nothing trained
    assert not (tmp_path / "data").exists()  # nothing decoded or cached
    results = read_results(run_dir)  # a sweep still sees why this job failed
    assert results["status"] == "failed" and message in results["error"]
    # A setting to fix: no resume command, a new run.
    assert results["stage"] in ("validating", "splitting") and "resume_with" not in results


def test_an_existing_run_directory_is_never_overwritten(tmp_path):
    run_dir = tmp_path / "earlier"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("mine")
    proc = _run(tmp_path, f"hydra.run.dir={run_dir}")
    _one_line_error(proc, "already holds a run: pick a new hydra.run.dir")
    assert sorted(p.name for p in run_dir.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("run_dir", [None, "empty"])
def test_resume_needs_the_run_directory(tmp_path, run_dir):
    extra = [f"hydra.run.dir={tmp_path / run_dir}"] if run_dir else []
    proc = _run(tmp_path, "ckpt_path=last", *extra, process=True)
    _one_line_error(proc, "ckpt_path=last resumes a run in its own directory")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "empty").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("dataset=nope", "unknown dataset 'nope'"),
        ("model=nope", "unknown model 'nope'"),
        ("mint.mode=sometimes", "mint.mode='sometimes' is unknown"),
    ],
)
def test_bad_override_is_one_line_and_exit_2(tmp_path, override, message):
    _one_line_error(_run(tmp_path, override), message)
