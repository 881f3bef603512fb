"""Where a run is while it runs: status.json while it runs and once it stopped, and running, failed
and stale jobs in the aggregate (tests/e2e/test_run.py: progress lines and the run's story)."""

import json
import shutil
import signal

import pytest

from amint_pl.aggregate import aggregate, markdown
from amint_pl.status import PAUSE_ENV, STALE_AFTER_S, STATUS_FILE
from tests.helpers import ONE_EPOCH, start_run, wait_for

pytestmark = pytest.mark.slow


def test_a_run_stopped_mid_way_leaves_status_json_saying_where_and_the_aggregate_lists_it(
    tmp_path,
):
    sweep = tmp_path / "sweep"
    run_dir = sweep / "0"
    out = tmp_path / "run.out"
    with open(out, "w") as log:
        proc = start_run(
            log,
            *ONE_EPOCH,  # phase 1 (the audited model): one epoch; phase 2 (the head): two
            f"hydra.run.dir={run_dir}",
            f"paths.data_dir={tmp_path / 'data'}",
            "mint=passive",
            "mint.head_max_epochs=2",
            **{PAUSE_ENV: "evaluating"},
        )
        wait_for(proc, out, lambda: "paused at stage evaluating" in out.read_text())
        # Still going: status.json is fresh, results.json not written yet.
        running = json.loads((run_dir / STATUS_FILE).read_text())
        assert not (run_dir / "results.json").exists()
        assert (running["state"], running["stage"], running["pid"]) == (
            "running",
            "evaluating",
            proc.pid,
        )
        assert (running["phase"], running["epoch"], running["max_epochs"]) == ("mint_head", 2, 2)
        rows = aggregate([sweep], None)
        assert [r["status"] for r in rows] == ["running"]
        assert rows[0]["mint_mode"] == "passive"
        assert "evaluating mint_head epoch 2/2" in rows[0]["progress"]
        assert "| running |" in markdown(rows)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=300) == 1
    stopped = json.loads((run_dir / STATUS_FILE).read_text())
    assert (stopped["state"], stopped["stage"], stopped["epoch"]) == ("failed", "evaluating", 2)
    assert stopped["error"] == "SIGTERMException: interrupted"
    assert set(stopped["metrics"]) >= {"val/aud_acc", "val/paper/mint_auc"}
    assert "failed at stage evaluating" in (run_dir / "run.log").read_text()
    assert [r["status"] for r in aggregate([sweep], None)] == ["failed"]
    # A run killed without a word (SIGKILL, a lost node): its status.json goes stale.
    killed = sweep / "1"
    shutil.copytree(run_dir / ".hydra", killed / ".hydra")
    running["updated_unix"] -= STALE_AFTER_S + 60
    (killed / STATUS_FILE).write_text(json.dumps(running))
    rows = {r["run_dir"].rsplit("/", 1)[-1]: r for r in aggregate([sweep], None)}
    assert rows["1"]["status"] == "stale" and f"pid {proc.pid}" in rows["1"]["error"]
