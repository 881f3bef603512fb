"""`python -m amint_pl.audit`: a run's checkpoint scores new samples exactly as its training data
was seen, reproduces the run's own numbers, and refuses files amint_pl did not write."""

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from amint_pl.data.benchmarks import benchmark_from_config
from amint_pl.data.splits import MembershipSplits
from tests.conftest import run_module
from tests.shared_runs import three_epoch_run

# Each test starts the entry points as processes: the full suite only (make test).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny aMINT run on digits (shared with test_resume): (run dir, best checkpoint, results)."""
    root, results, _ = three_epoch_run(tmp_path_factory.getbasetemp())
    run_dir = root / "full"
    return run_dir, run_dir / results["best_checkpoints"]["joint"], results


def audit(*settings):
    return run_module("amint_pl.audit", *settings)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run_scores(run_dir):
    """The run's own MINT score of every scored sample: (pool, index) -> P(member)."""
    return {
        (r["pool"], int(r["index"])): float(r["score_mint"])
        for r in read_csv(run_dir / "scores.csv")
    }


def test_split_all_reproduces_the_runs_results(trained, tmp_path):
    run_dir, checkpoint, results = trained
    out = tmp_path / "all.csv"
    proc = audit(f"checkpoint={checkpoint}", "inputs=split:all", f"output={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "reproduces results.json: every metric of every method" in proc.stdout
    rows = read_csv(out)
    scores = run_scores(run_dir)
    assert len(rows) == len(scores)
    for row in rows:
        # scores.csv keeps 6 significant digits
        expected = scores[(row["pool"], int(row["index"]))]
        assert float(row["membership_probability"]) == pytest.approx(expected, rel=1e-5)
    threshold = results["membership"]["paper"]["mint"]["threshold_calibrated"]
    assert (
        f"threshold: {threshold:.6g} (calibrated, paper protocol, from results.json)" in proc.stdout
    )
    for row in rows:
        assert int(row["member"]) == (float(row["membership_probability"]) >= threshold)


def test_image_files_and_tensors_are_scored_as_training_saw_them(trained, tmp_path):
    run_dir, checkpoint, _ = trained
    config = torch.load(checkpoint, weights_only=True)["hyper_parameters"]["config"]
    benchmark = benchmark_from_config(config["dataset"])
    splits = MembershipSplits.load(run_dir / "splits.npz")
    chosen = [("train", i) for i in splits["members_seen"][:3]] + [
        ("test", i) for i in splits["nonmembers_eval"][:3]
    ]
    images = np.stack(
        [(benchmark.train if pool == "train" else benchmark.test).images[i] for pool, i in chosen]
    )
    # The 8x8 grey images as PNG files (a nested folder too), and one as a 32x32 RGB photo.
    folder = tmp_path / "images"
    (folder / "nested").mkdir(parents=True)
    paths = []
    for n, ((pool, i), image) in enumerate(zip(chosen, images, strict=True)):
        path = folder / ("nested" if pool == "test" else "") / f"{pool}_{i}.png"
        Image.fromarray(image[0], "L").save(path)
        paths.append(path)
        if n == 0:
            Image.fromarray(image[0], "L").convert("RGB").resize((32, 32)).save(folder / "big.png")
    out = tmp_path / "images.csv"
    proc = audit(f"checkpoint={checkpoint}", f"inputs={folder}", "threshold=0.5", f"output={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "audit: 7 sample(s)" in proc.stdout and "threshold: 0.5 (given)" in proc.stdout
    rows = {row["sample"]: row for row in read_csv(out)}
    assert set(rows) == {str(p) for p in paths} | {str(folder / "big.png")}
    scores = run_scores(run_dir)
    for (pool, i), path in zip(chosen, paths, strict=True):
        probability = float(rows[str(path)]["membership_probability"])
        assert probability == pytest.approx(scores[(pool, int(i))], rel=1e-5)
        assert int(rows[str(path)]["member"]) == (probability >= 0.5)
    assert 0.0 <= float(rows[str(folder / "big.png")]["membership_probability"]) <= 1.0

    # The same pixels as tensors: (N, C, H, W) in a .npy, (N, H, W) in a .pt, same numbers.
    np.save(tmp_path / "images.npy", images)
    torch.save(torch.from_numpy(images[:, 0].copy()), tmp_path / "images.pt")
    for name in ("images.npy", "images.pt"):
        out = tmp_path / f"{name}.csv"
        proc = audit(f"checkpoint={checkpoint}", f"inputs={tmp_path / name}", f"output={out}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        got = [float(r["membership_probability"]) for r in read_csv(out)]
        want = [float(rows[str(p)]["membership_probability"]) for p in paths]
        assert got == pytest.approx(want, rel=1e-6)


class Payload:
    """Stands for arbitrary code in a pickle: weights_only loading must refuse it."""


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("weights", "was changed after amint_pl wrote it"),
        ("config", "was changed after amint_pl wrote it"),
        ("foreign", "was not written by amint_pl"),
        ("pickle", "is not a checkpoint amint_pl wrote"),
    ],
)
def test_a_checkpoint_amint_pl_did_not_write_is_refused(trained, tmp_path, damage, message):
    _, checkpoint, _ = trained
    path = tmp_path / "suspect.ckpt"
    state = torch.load(checkpoint, weights_only=True)
    if damage == "weights":
        name = next(k for k, v in state["state_dict"].items() if v.is_floating_point())
        state["state_dict"][name] = state["state_dict"][name] + 1e-3
    elif damage == "config":
        state["hyper_parameters"]["mean"] = [0.0]
    elif damage == "foreign":
        state = {k: v for k, v in state.items() if not k.startswith("amint")}
    elif damage == "pickle":
        state = {"state_dict": {}, "payload": Payload()}
    torch.save(state, path)
    proc = audit(f"checkpoint={path}", "inputs=split:all")
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {path}") and message in line
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (("inputs=x.png",), "checkpoint= is missing"),
        (("checkpoint=a.ckpt", "inputs=x.png", "colour=red"), "'colour=red' is no audit setting"),
        (("checkpoint=a.ckpt", "inputs=x.png", "threshold=high"), "threshold=high: use calibrated"),
        (
            ("checkpoint=a.ckpt", "inputs=x.png", "output={existing}"),
            "exists: audit never overwrites",
        ),
    ],
)
def test_bad_audit_settings_are_one_line(tmp_path, settings, message):
    existing = tmp_path / "earlier.csv"
    existing.write_text("keep me")
    proc = audit(*(s.format(existing=existing) for s in settings))
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: ") and message in proc.stderr
    assert existing.read_text() == "keep me"
