"""The generalizing-aMINT preset in a tiny real run: its memory trains, and the audit rebuilds it."""

import csv
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import ONE_EPOCH, REPO, TINY, read_results, run_main

sys.path.insert(0, str(REPO / "experiments" / "generalizing_amint"))  # its scripts: no package

pytestmark = pytest.mark.slow


def test_the_general_preset_runs_and_audits_on_a_tiny_budget(general_run, tmp_path):
    run_dir, results = general_run.run_dir, general_run.results
    assert results["status"] == "completed"
    assert {"paper", "strict"} <= set(results["membership"])
    assert 0.0 <= results["membership"]["strict"]["mint"]["auc"] <= 1.0
    # A quarter as many external samples as members (mint.external_per_member): batches of 16
    # members and 4 external samples (the last: 8 and 2), 30 an epoch; 60 of E's 120 in 2 epochs.
    training = results["training"]
    assert (training["members_used"], training["external_used"]) == (120, 60)
    rank = results["distributed"]["ranks"][0]
    assert (rank["train_members"], rank["train_external"], rank["unbalanced_batches"]) == (
        120,
        30,
        0,
    )
    checkpoint = run_dir / results["best_checkpoints"]["joint"]
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    assert "memory.table.weight" in state and float(state["memory.table.weight"].abs().sum()) > 0
    # The audit rebuilds the model, memory included, and reproduces the run's numbers.
    proc = run_main(
        "amint_pl.audit",
        f"checkpoint={checkpoint}",
        "inputs=split:all",
        f"output={tmp_path / 'all.csv'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "reproduces results.json: every metric of every method" in proc.stdout


@pytest.mark.parametrize(
    "processes", [(), ("trainer=ddp_cpu", "batch_size=16")], ids=["one_process", "ddp"]
)
def test_the_fingerprint_preset_keeps_exactly_the_trained_members_and_audits(
    run_amint, tmp_path, processes
):
    """mint=active_fingerprint over 2 epochs (digits at 16 px: at 8 px the shifts leave no
    fingerprint), in one process and in two DDP processes (each forwarding its external samples
    apart and reading them ahead from the second epoch): its bank holds each member the
    cross-entropy trained, once, and no external sample; the audit rebuilds the model, bank
    included, and reproduces the run's numbers."""
    from amint_pl.checkpoints import load_checkpoint
    from amint_pl.data.audit_inputs import load_run_splits
    from amint_pl.evaluation.scoring import build_module
    from amint_pl.models.fingerprints import SAME

    _, run_dir = run_amint(
        *TINY,
        "mint=active_fingerprint",
        "dataset.image_size=16",
        *processes,
        process=bool(processes),
    )
    results = read_results(run_dir)
    assert results["status"] == "completed"
    assert results["distributed"]["process_group_size"] == (2 if processes else 1)
    checkpoint_path = run_dir / results["best_checkpoints"]["joint"]
    checkpoint = load_checkpoint(checkpoint_path)
    module = build_module(checkpoint, checkpoint_path, "cpu")
    splits, benchmark = load_run_splits(run_dir, checkpoint, checkpoint_path)
    memory, members = module.memory, splits.members
    assert int(memory.count) == memory.capacity == len(members) == 120
    bank, bank_labels = memory.prints[0].double(), memory.labels

    def found(indices):
        images = torch.from_numpy(np.asarray(benchmark.train.images[indices]))
        labels = torch.from_numpy(np.asarray(benchmark.train.labels[indices])).long()
        prints = memory.member_prints(module.preprocess(images, train=False))[0]
        same = (prints @ bank.T >= SAME) & (labels[:, None] == bank_labels[None, :])
        return same.sum(1)

    assert found(members).tolist() == [1] * len(members)  # every member, once
    assert int(found(splits["external"]).sum()) == 0  # the MINT negatives: read, never trained
    proc = run_main(
        "amint_pl.audit",
        f"checkpoint={checkpoint_path}",
        "inputs=split:all",
        f"output={tmp_path / 'all.csv'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "reproduces results.json: every metric of every method" in proc.stdout
    # robustness.py reads the record alone through its forward hook: `memory_fingerprint`.
    out = tmp_path / "robustness.csv"
    proc = run_main("robustness", str(run_dir), "--out", str(out), "--transforms", "none", "hflip")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with out.open(newline="") as handle:
        by = {(r["transform"], r["method"]): r for r in csv.DictReader(handle)}
    assert {m for _, m in by} == {
        "mint_fingerprint",
        "loss_fingerprint",
        "memory_fingerprint",
        "exact_hash",
    }
    for transform in ("none", "hflip"):  # a mirrored member is found as itself
        assert float(by[transform, "memory_fingerprint"]["auc_strict"]) == 1.0


@pytest.mark.slow
def test_robustness_scores_every_transformation_and_method_on_a_run(general_run, tmp_path):
    run_dir, results = general_run.run_dir, general_run.results
    out = tmp_path / "robustness.csv"
    # `python experiments/generalizing_amint/robustness.py <run> --out <csv>`, its main() in this
    # process.
    proc = run_main("robustness", str(run_dir), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == [
        "transform",
        "method",
        "seed",
        "auc_strict",
        "tpr01_strict",
        "aud_test_acc",
    ]
    transforms = ["none", "hflip", "shift2", "crop90", "jpeg75", "noise4", "gamma"]
    # The run: mint=active_general, trained under flip_crop augmentation.
    methods = [
        "mint_robust_flip_crop",
        "loss_robust_flip_crop",
        "memory_robust_flip_crop",
        "exact_hash",
    ]
    assert [(r["transform"], r["method"]) for r in rows] == [
        (t, m) for t in transforms for m in methods
    ]
    by = {(r["transform"], r["method"]): r for r in rows}
    # The hash list knows every untouched training image and no changed one.
    assert float(by["none", "exact_hash"]["auc_strict"]) == 1.0
    assert float(by["none", "exact_hash"]["tpr01_strict"]) == 1.0
    assert float(by["noise4", "exact_hash"]["auc_strict"]) == 0.5
    # Untouched, the head scores as the run reported (the same members and non-members).
    assert float(by["none", "mint_robust_flip_crop"]["auc_strict"]) == pytest.approx(
        results["membership"]["strict"]["mint"]["auc"], abs=1e-6
    )
    # The robust record alone: a mirrored image reads the same rows (the queried shifts are
    # symmetric), so its margin ranks members exactly as untouched; noise changes it.
    memory = {t: by[t, "memory_robust_flip_crop"] for t in transforms}
    assert memory["hflip"]["auc_strict"] == memory["none"]["auc_strict"]
    assert memory["noise4"]["auc_strict"] != memory["none"]["auc_strict"]
    assert by["none", "exact_hash"]["aud_test_acc"] == "" and all(r["seed"] == "0" for r in rows)
    assert out.with_suffix(".png").stat().st_size > 0
    # An existing CSV is refused without --append, and kept as it was.
    before = out.read_text()
    again = run_main("robustness", str(run_dir), "--out", str(out))
    assert again.returncode == 2 and again.stderr.startswith("error: ")
    assert out.read_text() == before


@pytest.mark.slow
def test_robustness_takes_a_run_without_a_head_and_refuses_a_broken_one_in_a_line(
    run_amint, tmp_path
):
    """A `mint=off` run: the LOSS attack and the hash list (and the audited accuracy) under each
    transformation, the untouched LOSS as the run reported it. A run whose checkpoint is gone:
    one line that names it, exit status 2, no CSV."""
    _, run_dir = run_amint(*ONE_EPOCH, "mint=off")
    out = tmp_path / "off.csv"
    proc = run_main("robustness", str(run_dir), "--out", str(out), "--transforms", "none", "hflip")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with out.open(newline="") as handle:
        rows = {(r["transform"], r["method"]): r for r in csv.DictReader(handle)}
    assert set(rows) == {(t, m) for t in ("none", "hflip") for m in ("loss_off", "exact_hash")}
    loss = read_results(run_dir)["membership"]["strict"]["loss"]["auc"]
    assert float(rows["none", "loss_off"]["auc_strict"]) == pytest.approx(loss, abs=1e-6)
    assert 0.0 <= float(rows["hflip", "loss_off"]["aud_test_acc"]) <= 1.0
    for checkpoint in (run_dir / "checkpoints").rglob("*.ckpt"):
        checkpoint.unlink()
    broken = tmp_path / "broken.csv"
    proc = run_main("robustness", str(run_dir), "--out", str(broken))
    assert proc.returncode == 2 and not broken.exists()
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1


FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


@pytest.mark.skipif(
    not Path(FASHION_MNIST).is_dir(), reason="Debian's dataset-fashion-mnist is not installed"
)
def test_fingerprints_find_members_cropped_and_re_encoded(tmp_path):
    """`fingerprint_design.py` on real Fashion-MNIST (2,000 members, 100 of them changed, against
    200 changed test images): the zoomed-out reads against the members' resampled fingerprints,
    one pixel clear of the shifts, find cropped members (a window only clear of the shifts
    measured 0.965 here)."""
    out = tmp_path / "fingerprints.csv"
    proc = run_main(
        "fingerprint_design",
        *("--members", "2000", "--scored", "100", "--pools", "2", "--root", FASHION_MNIST),
        *("--transforms", "none", "crop90", "jpeg75", "--out", str(out)),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with out.open(newline="") as handle:
        rows = {r["transform"]: r for r in csv.DictReader(handle)}
    assert set(rows) == {"none", "crop90", "jpeg75"}
    assert float(rows["none"]["auc"]) == float(rows["none"]["tpr01"]) == 1.0
    assert float(rows["crop90"]["auc"]) >= 0.99 and float(rows["jpeg75"]["auc"]) >= 0.99


@pytest.mark.skipif(
    not Path(FASHION_MNIST).is_dir(), reason="Debian's dataset-fashion-mnist is not installed"
)
def test_the_fingerprint_step_bench_times_two_checkouts_on_the_same_steps(tmp_path):
    """`fingerprint_step.py` against a checkout (here this one): both memories run the same
    steps (against a filled bank, then over epochs from an empty one), write the same bank and
    read the same evidence, and the tables say so; a path that is no checkout is refused in one
    line."""
    out = tmp_path / "step.md"
    args = ("--members", "300", "--batch", "16", "--root", FASHION_MNIST)
    for mode in (("--steps", "3"), ("--epochs", "2")):
        proc = run_main("fingerprint_step", *args, *mode, "--against", str(REPO), "--out", str(out))
        assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = out.read_text().split("\n## ")
    assert "300 members in the bank at the start" in first and "| this checkout |" in first
    assert "An empty bank at the start (300 members at the end)" in second
    assert len(re.findall(r"^\| [12] \| .* \| \d+\.\d+x \|$", second, re.M)) == 2
    for part in (first, second):
        assert "the banks the same bit for bit" in part
        assert float(re.search(r"differs by at most (\S+)\.$", part, re.M)[1]) == 0.0
    proc = run_main("fingerprint_step", *args, "--steps", "3", "--against", str(tmp_path))
    assert proc.returncode != 0 and "give the root of an amint_pl checkout" in proc.stderr


@pytest.mark.skipif(
    not Path(FASHION_MNIST).is_dir(), reason="Debian's dataset-fashion-mnist is not installed"
)
def test_the_evaluation_read_bench_times_two_precisions_or_two_checkouts(tmp_path):
    """`fingerprint_read.py` reads the same queries against the same bank in float64 and float32,
    or (--against, here this checkout) with another checkout's record: the same answers up to
    float32's rounding, members found (AUC 1), and a checkout that is none refused in one line."""
    out = tmp_path / "read.md"
    args = ("--members", "300", "--queries", "32", "--repeats", "2", "--root", FASHION_MNIST)
    for extra in ((), ("--against", str(REPO))):
        proc = run_main("fingerprint_read", *args, *extra, "--out", str(out))
        assert proc.returncode == 0, proc.stderr[-3000:]
    precisions, checkouts = out.read_text().split("\n## ")
    assert "| float64 |" in precisions and "| float32 |" in precisions
    assert f"| {REPO} |" in checkouts and "| this checkout |" in checkouts
    for part in (precisions, checkouts):
        assert part.count("| 1.0000 |") == 2
        assert float(re.search(r"evidence: (\S+)\.$", part, re.M)[1]) < 1e-3
    proc = run_main("fingerprint_read", *args, "--against", str(tmp_path))
    assert proc.returncode != 0 and "give the root of an amint_pl checkout" in proc.stderr


def test_the_robustness_plot_takes_equal_seeds_whose_mean_rounds_past_them(tmp_path):
    """Three seeds of the same value, whose mean rounds above it: no negative error bar."""
    import robustness

    rows = [
        {"transform": "none", "method": "mint", "seed": seed, "auc_strict": "0.022444"}
        | {"tpr01_strict": "0.022444", "aud_test_acc": ""}
        for seed in ("0", "1", "2")
    ]
    robustness.plot(tmp_path / "seeds.png", rows)
    assert (tmp_path / "seeds.png").stat().st_size > 0
