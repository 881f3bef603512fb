"""`python -m amint_pl.run` end to end, as a user runs it (real Hydra, Lightning, wandb offline): every
mint mode on two data sets as the jobs of one multirun, and the shipped defaults writing to a file
as under SLURM or nohup."""

import csv
import json
import math
import re

import pytest
import torch

from amint_pl.checkpoints import check_checkpoint
from amint_pl.errors import ConfigError
from amint_pl.status import STATUS_FILE
from amint_pl.training.resume import resume_plan
from tests.formats import write_mnist_files
from tests.helpers import ONE_EPOCH, read_results, run_dirs, start_run

pytestmark = pytest.mark.slow

RUN_FILES = (
    "results.json",
    "scores.csv",
    "roc.png",
    "scores_hist.png",
    "splits.npz",
    ".hydra/config.yaml",
)


def _check_run_files(run_dir, mode):
    for name in RUN_FILES:
        assert (run_dir / name).is_file() and (run_dir / name).stat().st_size > 0, name
    assert (run_dir / "roc.png").read_bytes()[:4] == b"\x89PNG"
    results = read_results(run_dir)
    assert results["status"] == "completed" and results["mint_mode"] == mode
    assert len(results["config_digest"]) == 64 and len(results["split_fingerprint"]) == 64
    assert 0.0 <= results["audited"]["test_acc"] <= 1.0
    methods = {"loss", "confidence", "entropy", "modified_entropy"} | (
        {"mint"} if mode != "off" else set()
    )
    sizes = results["split_sizes"]
    for protocol, role in (("paper", "members_seen"), ("strict", "members_unseen")):
        assert set(results["membership"][protocol]) == methods
        for m in results["membership"][protocol].values():
            assert 0.0 <= m["auc"] <= 1.0 and 0.0 <= m["balanced_acc_calibrated"] <= 1.0
            # Every member of the role but its calibration slice, every test non-member.
            assert m["n_members"] == sizes[role] - sizes[f"{role}_calib"]
            assert m["n_nonmembers"] == sizes["nonmembers_eval"]
            low, high = m["auc_ci"]
            assert low <= m["auc"] <= high and m["resamples"] == 1000
    with open(run_dir / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert {f"score_{m}" for m in methods} <= set(rows[0])
    reported = [r for r in rows if r["reported_paper"] == "1"]
    paper = results["membership"]["paper"]["loss"]
    assert len(reported) == paper["n_members"] + paper["n_nonmembers"]
    assert all(math.isfinite(float(r["score_loss"])) for r in rows)
    return results


def test_each_mint_mode_on_each_data_set_writes_every_file_one_run_per_cell(tmp_path, run_amint):
    write_mnist_files(tmp_path / "data" / "mnist" / "MNIST" / "raw", 90, 20)
    proc, _ = run_amint(*ONE_EPOCH, "dataset=digits,mnist", "mint=active,passive,off", "-m")
    jobs = run_dirs(tmp_path / "runs")
    assert len({d.parent for d in jobs}) == 1, "every job of a sweep in one sweep directory"
    cells = {}
    for job in jobs:
        results = read_results(job)
        mode = results["mint_mode"]
        cells[results["dataset"], mode] = results
        _check_run_files(job, mode)
        assert "audited test acc" in (job / "run.log").read_text()  # the table
        expected = {"active": {"joint"}, "passive": {"audited", "mint_head"}, "off": {"audited"}}
        assert set(results["best_checkpoints"]) == expected[mode]
        assert (job / "csv" / "metrics.csv").is_file()
        assert results["distributed"]["process_group_size"] == 1
        # What a run keeps: the best epoch's weights (evaluated, audited), the last epoch's whole
        # state.
        for phase, best in results["best_checkpoints"].items():
            best = torch.load(job / best, map_location="cpu", weights_only=True)
            last = torch.load(
                job / "checkpoints" / phase / "last.ckpt", map_location="cpu", weights_only=True
            )
            assert "optimizer_states" not in best and last["optimizer_states"]
            check_checkpoint(best, phase)  # sealed all the same
            assert best["hyper_parameters"] == last["hyper_parameters"]
        # A weights-only checkpoint cannot continue a phase: one line names the file to give.
        best = job / results["best_checkpoints"][sorted(expected[mode])[0]]
        with pytest.raises(ConfigError, match="holds the weights alone .*last.ckpt"):
            resume_plan(str(best), job, tuple(results["best_checkpoints"]))
    assert set(cells) == {(d, m) for d in ("digits", "mnist") for m in ("active", "passive", "off")}
    assert proc.stdout.count("audited test acc") == 6  # each job's table, printed


EPOCHS = 8


def test_the_defaults_learn_digits_and_a_run_writing_to_a_file_tells_its_story(
    tmp_path, monkeypatch
):
    """The shipped defaults (both loggers, digits' full splits) with fewer epochs: the audited model
    learns; written to a file, the run says where it is each epoch and tells its story in run.log;
    W&B keeps its offline run quietly, nothing of it after the results table."""
    # W&B as users have it (offline, not silenced): its closing summary must not follow the table.
    monkeypatch.delenv("WANDB_SILENT", raising=False)
    run_dir = tmp_path / "run"
    out = tmp_path / "run.out"
    with open(out, "w") as file:  # as `> run.out 2>&1` under SLURM or nohup
        proc = start_run(
            file,
            f"hydra.run.dir={run_dir}",
            f"paths.data_dir={tmp_path / 'data'}",
            f"trainer.max_epochs={EPOCHS}",
            "early_stopping_patience=100",
            "progress.interval_s=0.001",  # a line within every epoch too
        )
        proc.wait(timeout=600)
    output = out.read_text()
    assert proc.returncode == 0, output[-3000:]
    results = _check_run_files(run_dir, "active")
    assert results["audited"]["test_acc"] > 0.8
    assert results["membership"]["paper"]["mint"]["auc"] > 0.6
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
        # Scoring every role for the evaluation says how far it is, batch by batch, to the end.
        scoring = re.findall(r"scoring every role: batch (\d+)/(\d+) \| \d+ samples/s", text)
        total = int(scoring[-1][1])
        assert total > 1 and scoring == [(str(n), str(total)) for n in range(1, total + 1)]
    # Lightning's Rich bar draws only on a terminal: nothing of it in the file.
    assert "━" not in output.split("results:")[0]
    # The story: config choices, data and split sizes, the table, where the files are.
    assert "mint=active" in story and "model=small_cnn" in story
    sizes = results["split_sizes"]
    assert f"members_seen {sizes['members_seen']}" in story
    assert f"nonmembers_eval {sizes['nonmembers_eval']}" in story
    auc = results["membership"]["paper"]["mint"]["auc"]
    table = story[story.index("results:") :]
    assert "MINT head" in table and f"{auc:.3f}" in table
    assert f"run directory: {run_dir}" in story and "wandb sync" in story
    # W&B wrote its offline run, quietly: nothing of it after the table.
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    assert list(offline.glob("*.wandb"))
    assert "wandb:" not in output[output.index("results:") :] and "Run summary" not in output
    # The results table is the last thing the run prints.
    assert output.strip().splitlines()[-1].strip().startswith("accuracies are balanced")
    status = json.loads((run_dir / STATUS_FILE).read_text())
    assert status["state"] == "completed" and isinstance(status["pid"], int) and status["host"]
    assert (status["epoch"], status["max_epochs"], status["phase"]) == (EPOCHS, EPOCHS, "joint")
    assert status["metrics"]["val/aud_acc"] == pytest.approx(
        float(epoch_lines[-1].split("val/aud_acc ")[1].split()[0]), abs=1e-4
    )


def test_a_bf16_mixed_run_scores_every_sample_in_float32(run_amint):
    """bf16 keeps 8 bits of mantissa: membership scores computed in it collapse into a few hundred
    values, and AUCs and TPRs at low FPR move with the ties. Training may use it; scores may not."""
    _, run_dir = run_amint(
        *ONE_EPOCH,
        "dataset.splits.members=400",
        "dataset.splits.external=400",
        "dataset.splits.nonmembers_eval=400",
        "trainer.precision=bf16-mixed",
    )
    with open(run_dir / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) > 600
    for method in ("mint", "loss"):
        distinct = {r[f"score_{method}"] for r in rows}
        assert len(distinct) > 0.95 * len(rows), (method, len(distinct), len(rows))
