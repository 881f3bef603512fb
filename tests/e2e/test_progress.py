"""Where a run is, wherever it runs: plain progress lines when stdout is a file, the run's story in
run.log, status.json while it runs and once it stopped, and running jobs in the aggregate."""

import io
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from amint_pl.aggregate import aggregate, markdown
from amint_pl.data.cache import PROGRESS_MIN_IMAGES, progress_bar
from amint_pl.run import PAUSE_ENV
from amint_pl.status import PROGRESS_LOGGER, STALE_AFTER_S, STATUS_FILE
from tests.conftest import REPO, TINY, read_results

EPOCHS = 3


@pytest.mark.slow
def test_a_run_writing_to_a_file_says_where_it_is_each_epoch_and_tells_its_story(
    tmp_path, monkeypatch
):
    # W&B as users have it (offline, not silenced): its closing summary must not follow the table.
    monkeypatch.delenv("WANDB_SILENT", raising=False)
    run_dir = tmp_path / "run"
    out = tmp_path / "run.out"
    with open(out, "w") as file:  # as `> run.out 2>&1` under SLURM or nohup
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "amint_pl.run",
                *TINY,
                "logger=default",
                f"hydra.run.dir={run_dir}",
                f"paths.data_dir={tmp_path / 'data'}",
                f"trainer.max_epochs={EPOCHS}",
                "progress.interval_s=0.001",  # a line within every epoch too
            ],
            cwd=REPO,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            stdout=file,
            stderr=subprocess.STDOUT,
            timeout=600,
        )
    output = out.read_text()
    assert proc.returncode == 0, output[-3000:]
    story = (run_dir / "run.log").read_text()
    for text in (output, story):
        epoch_lines = [line for line in text.splitlines() if "val/aud_acc" in line]
        assert len(epoch_lines) == EPOCHS, text[-3000:]
        for n, line in enumerate(epoch_lines, 1):
            assert re.search(rf"joint epoch {n}/{EPOCHS} step (\d+)/\1 \| \d+ samples/s", line)
            assert re.search(r"elapsed \S+ ETA \S+ \| train/loss [\d.]+ ", line)
            assert re.search(r"val/paper/mint_auc [\d.]+", line)
        within = re.findall(rf"joint epoch \d/{EPOCHS} step (\d+)/(\d+) ", text)
        assert any(int(done) < int(per_epoch) for done, per_epoch in within)
    # Lightning's Rich bar draws only on a terminal: nothing of it in the file.
    assert "━" not in output.split("results:")[0]
    # The story: config choices, data and split sizes, the table, where the files are.
    assert "mint=active" in story and "model=small_cnn" in story
    assert "members_seen 96" in story and "nonmembers_eval 120" in story
    results = read_results(run_dir)
    auc = results["membership"]["paper"]["mint"]["auc"]
    table = story[story.index("results:") :]
    assert "MINT head" in table and f"{auc:.3f}" in table
    assert f"run directory: {run_dir}" in story and "wandb sync" in story
    # W&B wrote its offline run, quietly: nothing of it after the table.
    assert list((run_dir / "wandb").glob("offline-run-*"))
    assert "wandb:" not in output[output.index("results:") :] and "Run summary" not in output
    status = json.loads((run_dir / STATUS_FILE).read_text())
    assert status["state"] == "completed" and isinstance(status["pid"], int) and status["host"]
    assert (status["epoch"], status["max_epochs"], status["phase"]) == (EPOCHS, EPOCHS, "joint")
    assert status["metrics"]["val/aud_acc"] == pytest.approx(
        float(epoch_lines[-1].split("val/aud_acc ")[1].split()[0]), abs=1e-4
    )


@pytest.mark.slow
def test_a_run_stopped_mid_way_leaves_status_json_saying_where_and_the_aggregate_lists_it(
    tmp_path,
):
    sweep = tmp_path / "sweep"
    run_dir = sweep / "0"
    out = tmp_path / "run.out"
    with open(out, "w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "amint_pl.run",
                *TINY,
                f"hydra.run.dir={run_dir}",
                f"paths.data_dir={tmp_path / 'data'}",
                "mint=passive",
                "mint.head_max_epochs=2",
            ],
            cwd=REPO,
            env=dict(os.environ, PYTHONUNBUFFERED="1", **{PAUSE_ENV: "evaluating"}),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 600
        while "paused at stage evaluating" not in out.read_text():
            assert proc.poll() is None, out.read_text()[-3000:]
            assert time.time() < deadline
            time.sleep(0.2)
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


def test_decoding_off_a_terminal_says_how_far_it_is(monkeypatch, caplog):
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # as `2> file`: no terminal for Rich
    caplog.set_level(logging.INFO, logger=PROGRESS_LOGGER)
    n = PROGRESS_MIN_IMAGES
    with progress_bar(n, "decoding train") as advance:
        for _ in range(4):
            advance(n // 4)
    lines = [r.getMessage() for r in caplog.records if r.name == PROGRESS_LOGGER]
    assert lines[0] == f"decoding train: {n} images"
    assert re.match(
        rf"decoding train: {n}/{n} images \| \d+ images/s \| elapsed \S+ ETA 0s", lines[-1]
    )
    assert sys.stderr.getvalue() == ""  # no bar drawn into the file
