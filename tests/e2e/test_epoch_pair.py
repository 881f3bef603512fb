"""`experiments/epoch_pair.py`: two real runs trained side by side, each epoch timed from the
runs' own progress lines."""

import re
import subprocess
import sys

from tests.helpers import REPO, process_env


def _epoch_pair(*args: str, cwd) -> subprocess.CompletedProcess:
    script = REPO / "experiments" / "epoch_pair.py"
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=cwd,
        env=process_env(WANDB_MODE="disabled"),
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_two_runs_are_timed_epoch_by_epoch_and_stopped_before_evaluating(tmp_path):
    out, runs = tmp_path / "pair.md", tmp_path / "runs"
    common = ["debug=fast", "dataset.splits.members=64", "dataset.splits.external=64"]
    proc = _epoch_pair(
        *("--common", *common, "--a", "trainer.max_epochs=3"),
        *("--b", "mint=active", "trainer.max_epochs=2", "--runs", str(runs), "--out", str(out)),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in out.read_text().splitlines() if re.match(r"^\| \d", line)]
    assert [row.split(" | ")[0] for row in rows] == ["| 1", "| 2", "| 3"]
    cells = [row.strip("| ").split(" | ") for row in rows]
    for _, a, b, ratio in cells[:2]:
        assert float(a.split()[0]) > 0 and float(b.split()[0]) > 0
        assert ratio == "-" or float(ratio.rstrip("x")) > 0
    assert cells[2][2] == "-" and cells[2][3] == "-"  # b trained two epochs
    for name in ("a", "b"):  # each trained through (a tiny run may end before it is stopped)
        assert "stage evaluating" in (runs / f"{name}.log").read_text()


def test_a_run_that_cannot_start_is_named_with_the_fix(tmp_path):
    proc = _epoch_pair(
        *("--common", "debug=fast", "--a", "--b", "model=no_such_model"),
        *("--runs", str(tmp_path / "runs")),
        cwd=tmp_path,
    )
    assert proc.returncode != 0
    assert "run b ended" in proc.stderr and "fix its overrides" in proc.stderr


def test_an_epoch_whose_last_step_is_reported_twice_ends_at_its_last_line():
    """The interval's line can fall on an epoch's last step before its validation: the epoch ends
    at the line after the validation, and counts once."""
    sys.path.insert(0, str(REPO / "experiments"))
    from epoch_pair import epochs_of

    log = "\n".join(
        [
            "[2026-12-02 19:02:03,565][amint_pl.run][INFO] - stage training (joint)",
            "[2026-12-02 19:02:34,129][amint_pl.progress][INFO] - joint epoch 1/2 step 391/391 | x",
            "[2026-12-02 19:02:35,692][amint_pl.progress][INFO] - joint epoch 1/2 step 391/391 | y",
            "[2026-12-02 19:02:50,000][amint_pl.progress][INFO] - joint epoch 2/2 step 200/391 | z",
            "[2026-12-02 19:03:03,854][amint_pl.progress][INFO] - joint epoch 2/2 step 391/391 | w",
            "[2026-12-02 19:03:04,000][amint_pl.run][INFO] - stage evaluating",
        ]
    )
    started, ends, evaluating = epochs_of(log)
    assert [round(end - started, 3) for end in ends] == [32.127, 60.289]
    assert round(evaluating - ends[-1], 3) == 0.146
