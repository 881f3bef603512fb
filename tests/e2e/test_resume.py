"""Determinism, resume and nothing lost, with the real entry point stopped and killed for real.

Tolerance (README, "Auditing a model, resuming, and what is never lost"): on CPU with
`trainer.deterministic=true`, the same seed gives bit-identical results.json metrics and scores.csv,
and a run resumed with `ckpt_path=last` ends with the metrics of the uninterrupted run: zero
difference.
"""

import csv
import io
import os
import signal
import threading
import time

import pytest
import torch

from amint_pl.audit import main as audit
from amint_pl.checkpoints import RESUMABLE_KEYS
from amint_pl.status import PAUSE_ENV
from tests.helpers import DETERMINISTIC, read_results, run_main, start_run, wait_for
from tests.shared_runs import train

pytestmark = pytest.mark.slow

RUN = DETERMINISTIC
TOLERANCE = 0.0  # CPU, deterministic: bit-identical


def outcome(results):
    """What a result is: every metric of every method, audited accuracy, what was selected."""
    keys = ("audited", "membership", "best_checkpoints", "epochs_trained", "split_fingerprint")
    return {key: results[key] for key in keys}


def logged_epochs(folder):
    with open(folder / "csv" / "metrics.csv") as f:
        return {row["epoch"] for row in csv.DictReader(f) if row.get("epoch")}


def _leaves(tree, prefix=""):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaves(value, f"{prefix}/{key}")
    else:
        yield prefix, tree


def assert_same(a, b):
    """Equal outcomes: every number within TOLERANCE, everything else identical."""
    left, right = dict(_leaves(outcome(a))), dict(_leaves(outcome(b)))
    assert left.keys() == right.keys()
    for key, value in left.items():
        if isinstance(value, float) and isinstance(right[key], float):
            assert abs(value - right[key]) <= TOLERANCE, key
        else:
            assert value == right[key], key


@pytest.fixture(scope="module")
def uninterrupted(three_epoch_run):
    """A 3-epoch aMINT run, started in an empty working directory (shared with test_audit):
    (root, results.json, every path under root outside the run directory)."""
    return three_epoch_run.root, three_epoch_run.results, three_epoch_run.outside


def test_a_run_writes_only_inside_its_run_directory_and_data_folder(uninterrupted):
    _, results, outside = uninterrupted
    assert results["status"] == "completed"
    # Nothing relative to where it was started (cwd stays empty); digits needs no data cache.
    assert outside == ["cwd"]


def test_same_seed_same_results(uninterrupted, notebook_run):
    # The same config and seed trained again (through `train(cfg, output_dir)`, shared with
    # test_train_api): bit-identical metrics and scores.
    root, results, _ = uninterrupted
    assert_same(results, notebook_run.results)
    assert (root / "full" / "scores.csv").read_bytes() == (
        notebook_run.run_dir / "scores.csv"
    ).read_bytes()


def resume(run_dir, *changes):
    """`python -m amint_pl.run hydra.run.dir=<run> ckpt_path=last <changes>`, as the README and
    results.json's resume_with say: the run's own config comes back by itself."""
    proc = run_main("amint_pl.run", f"hydra.run.dir={run_dir}", "ckpt_path=last", *changes)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return read_results(run_dir)


def epoch_of(checkpoint):
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["epoch"]


def test_resumed_run_ends_as_the_uninterrupted_one(uninterrupted):
    root, _, _ = uninterrupted
    # Model selection on the lowest calibration AUC makes the first epoch the best: the run's
    # best checkpoint is then not its last, whatever the training does.
    worst_first = "mint.monitor_mode=min"
    results = train(root, root / "whole", "trainer.max_epochs=3", worst_first)
    run_dir = root / "stopped"
    stopped = train(root, run_dir, "trainer.max_epochs=2", worst_first)  # stopped after epoch 2
    assert stopped["epochs_trained"] == 2
    # Its best epoch is not its last: last.ckpt holds the last one all the same.
    folder = run_dir / "checkpoints" / "joint"
    assert [p.name for p in folder.glob("best-*.ckpt")] == ["best-epoch=000.ckpt"]
    assert epoch_of(folder / "last.ckpt") == 1
    resumed = resume(run_dir, "trainer.max_epochs=3")  # only what changes is typed
    assert_same(results, resumed)
    assert resumed["config_digest"] == results["config_digest"]  # the run's own config
    assert logged_epochs(run_dir) == {"2"}  # no epoch trained twice
    # Nothing of the first attempt is lost: its results and config are kept beside the new ones.
    assert read_results(run_dir / "attempts" / "1") == stopped
    (resumed_cfg,) = (run_dir / ".hydra").glob("resumed-*/config.yaml")
    assert "max_epochs: 2" in (run_dir / ".hydra" / "config.yaml").read_text()
    assert "max_epochs: 3" in resumed_cfg.read_text()
    assert logged_epochs(run_dir / "attempts" / "1") == {"0", "1"}  # Lightning would delete these


@pytest.mark.parametrize(
    ("change", "trained_with"),
    [
        ("mint.w_mint=0.5", "mint.w_mint=1.0, not 0.5"),
        ("trainer.deterministic=false", "trainer.deterministic=True, not False"),
    ],
)
def test_resume_refuses_a_changed_config_and_leaves_the_run_alone(
    uninterrupted, change, trained_with
):
    root, _, _ = uninterrupted
    run_dir = root / "full"
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    results = (run_dir / "results.json").read_text()
    proc = run_main(
        "amint_pl.run", f"hydra.run.dir={run_dir}", "trainer.max_epochs=4", "ckpt_path=last", change
    )
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: ckpt_path: the run was trained with {trained_with}")
    # The error lists what a resume may change, from the one list the check uses.
    assert line.endswith(f"a resume may change {', '.join(RESUMABLE_KEYS)})")
    assert (run_dir / "results.json").read_text() == results
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before


def test_a_killed_run_keeps_its_checkpoint_says_failed_and_resumes(tmp_path):
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "joint" / "last.ckpt"
    log_path = tmp_path / "run.log"
    with open(log_path, "w") as log:
        proc = start_run(
            log,
            *RUN,
            f"hydra.run.dir={run_dir}",
            f"paths.data_dir={tmp_path / 'data'}",
            "trainer.max_epochs=1000",
            "early_stopping_patience=1000",
        )
        wait_for(proc, log_path, last.exists)
        proc.send_signal(signal.SIGTERM)  # what a cluster scheduler sends before it kills a job
        assert proc.wait(timeout=300) != 0

    results = read_results(run_dir)
    assert results["status"] == "failed" and results["error"].startswith("SIGTERMException")
    assert results["resume_with"] == f"hydra.run.dir={run_dir} ckpt_path=last"
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)  # complete and loadable
    reached = checkpoint["epoch"]

    assert results["stage"] == "training" and results["phase"] == "joint"

    # Resumed (here to end right after the epoch it had finished), it completes.
    resumed = resume(run_dir, f"trainer.max_epochs={reached + 1}")
    assert resumed["status"] == "completed" and resumed["epochs_trained"] == reached + 1
    assert read_results(run_dir / "attempts" / "1")["status"] == "failed"


def stop_at(stage, run_dir, *args):
    """Run `python -m amint_pl.run <args>` in this process, paused at the start of a stage
    (AMINT_PAUSE_AT_STAGE); send the process SIGTERM there, as a scheduler would, and return the
    run's results.json."""
    err, done = io.StringIO(), threading.Event()
    paused = f"paused at stage {stage}"

    def terminate_when_paused():
        while not done.is_set():
            if paused in err.getvalue():  # the run's own SIGTERM handler is in place there
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.05)

    sender = threading.Thread(target=terminate_when_paused, daemon=True)
    sender.start()
    try:
        proc = run_main("amint_pl.run", *args, env={PAUSE_ENV: stage}, err=err)
    finally:
        done.set()
        sender.join()
    assert proc.returncode == 1, proc.stderr[-3000:]
    return read_results(run_dir)


STAGES = ("caching", "splitting", "training", "evaluating", "reporting")


def test_a_run_stopped_at_every_stage_in_turn_says_where_and_ends_as_the_uninterrupted_one(
    uninterrupted, tmp_path
):
    """One run stopped at the start of each stage in turn, each attempt resumed with the command
    its results.json gives, as it is: each stop says where it was, the run ends as if it had never
    stopped, and every attempt's results are kept."""
    root, results, _ = uninterrupted
    run_dir = tmp_path / "run"
    command = [*RUN, f"hydra.run.dir={run_dir}", f"paths.data_dir={root / 'data'}"]
    command.append("trainer.max_epochs=3")
    for stage in STAGES:
        stopped = stop_at(stage, run_dir, *command)
        assert stopped["status"] == "failed" and stopped["stage"] == stage
        assert stopped["error"] == "SIGTERMException: interrupted"
        assert stopped["resume_with"] == f"hydra.run.dir={run_dir} ckpt_path=last"
        command = stopped["resume_with"].split()
    proc = run_main("amint_pl.run", *command)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same(results, read_results(run_dir))
    kept = [read_results(run_dir / "attempts" / str(n))["stage"] for n in range(1, 6)]
    assert kept == list(STAGES)


def test_passive_run_resumes_in_either_phase(tmp_path, capsys):
    """Passive MINT stopped in phase 1 (the audited model) or in phase 2 (the MINT head) and
    resumed: both end alike. Stopped in phase 1, phase 1 is resumed and phase 2 trains whole;
    stopped in phase 2, phase 1 ran whole and phase 2 is resumed: equal results mean each resumed
    phase equals its uninterrupted self."""
    longer = ("trainer.max_epochs=2", "mint.head_max_epochs=2")
    in_phase_1 = tmp_path / "phase1"
    train(tmp_path, in_phase_1, "mint=passive", "trainer.max_epochs=1", "mint.head_max_epochs=1")
    resumed_1 = resume(in_phase_1, *longer)  # mint=passive comes back with the run's config
    # The head trained on the 1-epoch audited model is superseded, and kept.
    assert (in_phase_1 / "checkpoints" / "mint_head.superseded-1" / "last.ckpt").is_file()

    in_phase_2 = tmp_path / "phase2"
    train(tmp_path, in_phase_2, "mint=passive", "trainer.max_epochs=2", "mint.head_max_epochs=1")
    resumed_2 = resume(in_phase_2, *longer)
    assert_same(resumed_1, resumed_2)
    assert resumed_2["epochs_trained"] == 2

    # Its phase-1 checkpoint has an untrained MINT head: audit refuses it in one line.
    (audited,) = (in_phase_2 / "checkpoints" / "audited").glob("best-*.ckpt")
    with pytest.raises(SystemExit) as exit_:
        audit([f"checkpoint={audited}", "inputs=split:all"])
    assert exit_.value.code == 2
    assert "audit a checkpoint from checkpoints/mint_head/" in capsys.readouterr().err
