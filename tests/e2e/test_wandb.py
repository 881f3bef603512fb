"""W&B offline and TensorBoard, read back from the files they write (no mocks): a 2-job sweep whose
runs share the sweep as their W&B group, each with its config, tags, summary metrics of both
protocols and every method, the ROC / histogram images and the per-method table."""

import json
import struct

import pytest
from wandb.proto import wandb_internal_pb2

from amint_pl.aggregate import aggregate
from tests.conftest import TINY, read_results, run_dirs

# Each test starts the entry points as processes: the full suite only (make test).
pytestmark = pytest.mark.slow

# A .wandb file: the header ":W&B" + magic + version, then records in 32 KiB blocks, each record
# as [crc32 (4), length (2), type (1)] + bytes; type 1 = a whole record, 2/3/4 = first/middle/last.
HEADER, BLOCK, RECORD_HEADER = 7, 32768, 7


def wandb_records(path):
    """The protobuf records of an offline run's .wandb file, in order."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    pos, pending = HEADER, b""
    while pos + RECORD_HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < RECORD_HEADER:
            pos += left  # the block's zero padding
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + RECORD_HEADER])
        if kind == 0:
            pos += left
            continue
        pending += data[pos + RECORD_HEADER : pos + RECORD_HEADER + length]
        pos += RECORD_HEADER + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def read_offline_run(run_dir):
    """(run record, config dict, summary dict, exit code) of the one offline run in a run dir."""
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    (log,) = offline.glob("run-*.wandb")
    run, config, summary, exit_code = None, {}, {}, None
    for record in wandb_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            updates = record.run.config.update
        elif kind == "config":
            updates = record.config.update
        else:
            updates = []
        config.update({u.key: json.loads(u.value_json) for u in updates})
        if kind == "summary":
            summary.update({u.key: json.loads(u.value_json) for u in record.summary.update})
        if kind == "exit":
            exit_code = record.exit.exit_code
    return run, config, summary, offline, exit_code


def test_wandb_offline_sweep_runs_hold_group_config_summary_images_and_table(tmp_path, run_amint):
    proc, _ = run_amint(
        *TINY, "logger=[wandb,tensorboard]", "mint=active_general,passive", "seed=5", "-m"
    )
    jobs = sorted(run_dirs(tmp_path / "runs"), key=lambda d: int(d.name))
    assert len(jobs) == 2
    groups, run_ids = set(), set()
    presets = {"active_general": "active", "passive": "passive"}  # preset -> its mint.mode
    for job, (preset, mode) in zip(jobs, presets.items(), strict=True):
        results = read_results(job)
        assert results["status"] == "completed"
        # The preset, not only its mode, names the run everywhere.
        assert results["mint_mode"] == preset and results["choices"]["mint"] == preset
        run, config, summary, offline, exit_code = read_offline_run(job)
        assert exit_code == 0  # wandb.finish() at the end of each job
        groups.add(run.run_group)
        run_ids.add(run.run_id)
        assert set(run.tags) == {"digits", "small_cnn", f"mint_{preset}", "taps_entry"}
        assert run.job_type == preset
        assert run.display_name == f"digits-small_cnn-{preset}-taps_entry-seed5"
        # The whole resolved config, and the Hydra choices behind it.
        assert config["mint"]["mode"] == mode and config["seed"] == 5
        assert config["choices"]["mint"] == preset
        assert f"aMINT {preset} | digits" in proc.stdout  # the table's title
        # Summary: every method of both protocols, the numbers of results.json.
        for protocol, methods in results["membership"].items():
            for method, m in methods.items():
                assert summary[f"test/{protocol}/{method}/auc"] == m["auc"]
        assert "mint" in results["membership"]["paper"]
        assert summary["test/aud_test_acc"] == results["audited"]["test_acc"]
        media = offline / "files" / "media"
        assert list(media.glob("images/test/roc_*.png")) and list(
            media.glob("images/test/scores_hist_*.png")
        )
        (table,) = media.glob("table/test/membership_*.table.json")
        rows = json.loads(table.read_text())["data"]
        assert len(rows) == sum(len(m) for m in results["membership"].values())
        # TensorBoard, from the same run: its event file holds the summary metrics too.
        events = b"".join(
            f.read_bytes() for f in (job / "tensorboard").glob("events.out.tfevents.*")
        )
        assert b"test/paper/mint/auc" in events and b"test/membership" in events
    assert len(run_ids) == 2  # one W&B run per job
    (group,) = groups  # one group: the sweep
    assert group == "_".join(jobs[0].parent.parts[-2:])
    # The aggregate table tells the presets apart.
    rows = aggregate([jobs[0].parent], None)
    assert {r["mint_mode"] for r in rows} == set(presets)
    assert {"mint_active_general", "passive_mint"} <= {r["method"] for r in rows}
