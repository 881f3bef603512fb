"""A run's record over its life (`run_record`): results.json and status.json say where the run is
while it runs and how it ended, whatever ended it (tests/e2e/test_resume.py: real runs stopped at
each stage)."""

import json
import time

import pytest
from lightning.pytorch.utilities.exceptions import SIGTERMException

from amint_pl.errors import ConfigError
from amint_pl.record import resolved_config, run_record
from amint_pl.status import RunStatus
from tests.helpers import TINY, compose_config, read_results

CHOICES = {"model": "small_cnn", "mint": "passive"}


def _config(run_dir, *overrides):
    return resolved_config(compose_config(*TINY, "mint=passive", *overrides), run_dir)


def _status(run_dir):
    return json.loads((run_dir / "status.json").read_text())


def test_a_completed_run_records_each_stage_on_its_way_and_its_outcome(tmp_path):
    started = time.time()
    with run_record(_config(tmp_path), tmp_path, CHOICES, True, started) as stages:
        assert _status(tmp_path)["stage"] == "starting" and "config_digest" in stages.results
        assert not (tmp_path / "results.json").exists()  # written once, at the end
        for phase in ("audited", "mint_head"):
            stages.training(phase)
            assert (stages.results["phase"], _status(tmp_path)["phase"]) == (phase, phase)
        stages.enter("evaluating")
        assert "phase" not in stages.results  # results.json names a phase only while one trains
        assert _status(tmp_path)["phase"] == "mint_head"  # status.json keeps the last one trained
    results = read_results(tmp_path)
    assert results["status"] == "completed" and not {"stage", "phase", "error"} & set(results)
    assert results["choices"] == CHOICES and results["wall_time_s"] >= 0
    assert _status(tmp_path)["state"] == "completed"


@pytest.mark.parametrize(
    ("error", "raised", "resumable"),
    [
        (RuntimeError("out of memory"), RuntimeError, True),
        (SIGTERMException(), SystemExit, True),  # Lightning's exit code 0 for a SIGTERM
        (ConfigError("batch_size=33 must be an even integer"), ConfigError, False),
    ],
)
def test_a_run_that_stops_records_where_why_and_how_to_go_on(tmp_path, error, raised, resumable):
    with pytest.raises(raised) as stopped:
        with run_record(_config(tmp_path), tmp_path, CHOICES, True, time.time()) as stages:
            stages.training("audited")
            raise error
    if raised is SystemExit:
        assert stopped.value.code == 1  # a scheduler sees a failed job, not a finished one
    results = read_results(tmp_path)
    assert (results["status"], results["stage"], results["phase"]) == (
        "failed",
        "training",
        "audited",
    )
    assert results["error"].startswith(type(error).__name__)
    assert ("resume_with" in results) == resumable
    status = _status(tmp_path)
    assert (status["state"], status["stage"]) == ("failed", "training")


def test_a_resumed_run_keeps_its_earlier_attempt(tmp_path):
    cfg = _config(tmp_path)
    with run_record(cfg, tmp_path, CHOICES, True, time.time()):
        pass
    first = read_results(tmp_path)
    assert "wall_time_all_attempts_s" not in first
    resumed = _config(tmp_path, "ckpt_path=last")
    walls = [first["wall_time_s"]]
    for attempt in (1, 2):
        with run_record(resumed, tmp_path, CHOICES, True, time.time() - 100 * attempt):
            assert not (tmp_path / "results.json").exists()
        kept = tmp_path / "attempts" / str(attempt)
        assert read_results(kept)["run_dir"] == first["run_dir"]
        assert _status(kept)["wall_time_s"] == walls[-1]
        results = read_results(tmp_path)
        walls.append(results["wall_time_s"])
        assert results["wall_time_all_attempts_s"] == pytest.approx(sum(walls), abs=0.02)
    assert read_results(tmp_path)["status"] == "completed" and walls[-1] >= 200


def test_a_killed_attempts_time_counts_from_its_start_to_its_last_status(tmp_path):
    """A process killed outright writes no end: its status.json as it last rewrote it stands."""
    killed = RunStatus(tmp_path)
    killed.fields["started_unix"] -= 3600  # started an hour before its last status
    killed.update(stage="training", phase="joint", epoch=9)
    with run_record(_config(tmp_path, "ckpt_path=last"), tmp_path, CHOICES, True, time.time()):
        assert _status(tmp_path)["stage"] == "starting"
    assert _status(tmp_path / "attempts" / "1")["state"] == "running"
    results = read_results(tmp_path)
    assert results["wall_time_all_attempts_s"] == pytest.approx(
        results["wall_time_s"] + 3600, abs=0.1
    )


def test_only_global_rank_zero_writes_the_record(tmp_path):
    with run_record(_config(tmp_path), tmp_path, CHOICES, False, time.time()) as stages:
        stages.enter("validating")
    assert stages.results["status"] == "completed"
    assert not (tmp_path / "results.json").exists() and not (tmp_path / "status.json").exists()
