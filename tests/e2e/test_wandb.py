"""W&B offline and TensorBoard in a real 2-job sweep, read back from the files they write (no mocks):
one offline W&B run per job, finished, with the ROC / histogram images and the per-method table;
TensorBoard's event file with the summary metrics of results.json (tests/unit/test_loggers.py:
the group, name, tags, config and summary of a job's W&B run, through wandb's public Run)."""

import json
import struct

import pytest
from tensorboardX.proto.event_pb2 import Event

from amint_pl.aggregate import aggregate
from tests.helpers import ONE_EPOCH, read_results, run_dirs

pytestmark = pytest.mark.slow


def tensorboard_scalars(folder):
    """{tag: last value} of the scalars in a folder's TensorBoard event files: TFRecords, each
    [length (8), its CRC (4), an Event protobuf, its CRC (4)]."""
    scalars = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                if value.WhichOneof("value") == "simple_value":
                    scalars[value.tag] = value.simple_value
    return scalars


def test_wandb_offline_sweep_keeps_a_finished_run_per_job_and_tensorboard_the_summary(
    tmp_path, run_amint
):
    proc, _ = run_amint(
        *ONE_EPOCH, "logger=[wandb,tensorboard]", "mint=active_general,passive", "seed=5", "-m"
    )
    jobs = sorted(run_dirs(tmp_path / "runs"), key=lambda d: int(d.name))
    assert len(jobs) == 2
    run_ids = set()
    presets = ("active_general", "passive")
    for job, preset in zip(jobs, presets, strict=True):
        results = read_results(job)
        assert results["status"] == "completed"
        # The preset, not only its mode, names the run everywhere.
        assert results["mint_mode"] == preset and results["choices"]["mint"] == preset
        assert f"aMINT {preset} | digits" in proc.stdout  # the table's title
        (offline,) = (job / "wandb").glob("offline-run-*")  # offline-run-<time>-<run id>
        run_ids.add(offline.name.rsplit("-", 1)[1])
        assert list(offline.glob(f"run-{offline.name.rsplit('-', 1)[1]}.wandb"))
        # wandb.finish(exit_code=0) at the end of each job, as the run's own log says.
        assert "got exitcode: 0" in (offline / "logs" / "debug.log").read_text()
        media = offline / "files" / "media"
        assert list(media.glob("images/test/roc_*.png"))
        assert list(media.glob("images/test/scores_hist_*.png"))
        (table,) = media.glob("table/test/membership_*.table.json")
        rows = json.loads(table.read_text())["data"]
        assert len(rows) == sum(len(m) for m in results["membership"].values())
        # TensorBoard, from the same run: the summary metrics, the numbers of results.json.
        scalars = tensorboard_scalars(job / "tensorboard")
        for protocol, methods in results["membership"].items():
            for method, m in methods.items():
                assert scalars[f"test/{protocol}/{method}/auc"] == pytest.approx(m["auc"])
        assert "mint" in results["membership"]["paper"]
        assert scalars["test/aud_test_acc"] == pytest.approx(results["audited"]["test_acc"])
    assert len(run_ids) == 2  # one W&B run per job
    # The aggregate table tells the presets apart.
    rows = aggregate([jobs[0].parent], None)
    assert {r["mint_mode"] for r in rows} == set(presets)
    assert {"mint_active_general", "passive_mint"} <= {r["method"] for r in rows}
