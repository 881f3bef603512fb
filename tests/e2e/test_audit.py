"""`python -m amint_pl.audit`: a run's checkpoint scores new samples exactly as its training data
was seen, reproduces the run's own numbers, and refuses files amint_pl did not write.

Every check runs the command's own `main` in this process (its output and exit status come back
as a process's would), on the real checkpoints of real runs."""

import csv
import re

import numpy as np
import pytest
import torch
from PIL import Image

from amint_pl.audit import main
from amint_pl.data.benchmarks import benchmark_from_config
from amint_pl.data.splits import MembershipSplits
from tests.helpers import run_main

# Each test reads the checkpoint of a real run: the full suite only (make test).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(three_epoch_run):
    """A tiny aMINT run on digits (shared with test_resume): (run dir, best checkpoint, results)."""
    run = three_epoch_run
    return run.run_dir, run.checkpoint("joint"), run.results


def audit(*settings):
    return run_main("amint_pl.audit", *settings)


def refused(settings, capsys):
    """`main(settings)` in this process, which must stop with exit code 2: its stderr."""
    with pytest.raises(SystemExit) as exit_:
        main(settings)
    assert exit_.value.code == 2
    return capsys.readouterr().err


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


def test_image_files_and_tensors_are_scored_as_training_saw_them(trained, tmp_path, capsys):
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
    main([f"checkpoint={checkpoint}", f"inputs={folder}", "threshold=0.5", f"output={out}"])
    captured = capsys.readouterr()
    assert "audit: 7 sample(s)" in captured.out and "threshold: 0.5 (given)" in captured.out
    assert "scoring:" not in captured.err  # an audit shorter than `progress` says nothing of it
    assert "decoding images:" not in captured.err
    # A line per file decoded and per batch scored, to the last, with progress=0.
    settings = [f"checkpoint={checkpoint}", f"inputs={folder}", "threshold=0.5", "batch_size=4"]
    main([*settings, "progress=0", f"output={tmp_path / 'again.csv'}"])
    err = capsys.readouterr().err
    line = r"^{}: {} (\d+)/(\d+) \| \d+ samples/s \| elapsed \S+ ETA \S+$"
    decoded = re.findall(line.format("decoding images", "file"), err, re.M)
    assert decoded == [(str(n), "7") for n in range(1, 8)], err
    assert re.findall(line.format("scoring", "batch"), err, re.M) == [("1", "2"), ("2", "2")], err
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
    # In batches of 2 with a progress line each: every batch to the last, 3 of 3.
    for name, settings in (("images.npy", []), ("images.pt", ["batch_size=2", "progress=0"])):
        out = tmp_path / f"{name}.csv"
        main([f"checkpoint={checkpoint}", f"inputs={tmp_path / name}", f"output={out}", *settings])
        got = [float(r["membership_probability"]) for r in read_csv(out)]
        want = [float(rows[str(p)]["membership_probability"]) for p in paths]
        assert got == pytest.approx(want, rel=1e-6)
        err = capsys.readouterr().err
        lines = re.findall(
            r"^scoring: batch (\d+)/(\d+) \| \d+ samples/s \| elapsed \S+ ETA \S+$", err, re.M
        )
        assert lines == ([(str(n), "3") for n in (1, 2, 3)] if settings else []), err


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
def test_a_checkpoint_amint_pl_did_not_write_is_refused(trained, tmp_path, capsys, damage, message):
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
    stderr = refused([f"checkpoint={path}", "inputs=split:all"], capsys)
    assert len(stderr.strip().splitlines()) == 1
    assert stderr.startswith(f"error: {path}") and message in stderr


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


# ---------------------------------------------------------------------------------------------
# Labels: a head that reads the loss and the memory at the label (mint=active_general)


@pytest.fixture(scope="module")
def general(general_run):
    """A tiny mint=active_general run on digits (shared with test_generalizing) and some of the
    samples it scored: misclassified ones first (where the label changes the head's input), then
    correctly classified ones.
    Returns (run dir, best checkpoint, [(pool, index, label, prediction, P(member))], images)."""
    run_dir, checkpoint = general_run.run_dir, general_run.checkpoint("joint")
    scored = [
        (r["pool"], int(r["index"]), int(r["label"]), int(r["prediction"]), float(r["score_mint"]))
        for r in read_csv(run_dir / "scores.csv")
        if r["role"] in ("members_seen", "nonmembers_eval")
    ]
    wrong = [s for s in scored if s[2] != s[3]][:4]
    right = [s for s in scored if s[2] == s[3]][:4]
    assert wrong, "the tiny run classified every sample right: no sample tells labels apart"
    config = torch.load(checkpoint, weights_only=True)["hyper_parameters"]["config"]
    benchmark = benchmark_from_config(config["dataset"])
    chosen = wrong + right
    images = np.stack([getattr(benchmark, pool).images[i] for pool, i, *_ in chosen])
    return run_dir, checkpoint, chosen, images


def save_png(image, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image[0], "L").save(path)


def test_given_labels_reproduce_the_runs_scores_and_unlabelled_samples_say_predicted(
    general, tmp_path, capsys
):
    run_dir, checkpoint, chosen, images = general
    # A class-per-folder tree: digits names its classes 0..9.
    tree, flat = tmp_path / "tree", tmp_path / "flat"
    for (pool, i, label, *_), image in zip(chosen, images, strict=True):
        save_png(image, tree / str(label) / f"{pool}_{i}.png")
        save_png(image, flat / f"{pool}_{i}.png")
    out = tmp_path / "tree.csv"
    proc = audit(f"checkpoint={checkpoint}", f"inputs={tree}", f"output={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"labels: given, from the class folders of {tree}" in proc.stdout
    rows = {row["sample"]: row for row in read_csv(out)}
    for pool, i, label, _, probability in chosen:
        row = rows[str(tree / str(label) / f"{pool}_{i}.png")]
        assert (int(row["label"]), row["label_source"]) == (label, "given")
        # scores.csv keeps 6 significant digits
        assert float(row["membership_probability"]) == pytest.approx(probability, rel=1e-5)

    # Unlabelled: one line says so; each sample is scored at its predicted class.
    out = tmp_path / "flat.csv"
    main([f"checkpoint={checkpoint}", f"inputs={flat}", f"output={out}"])
    stdout = capsys.readouterr().out
    fallback = [line for line in stdout.splitlines() if line.startswith("labels:")]
    assert len(fallback) == 1 and "none given" in fallback[0], stdout
    assert "loss and memory" in fallback[0] and "predicted class" in fallback[0]
    rows = {row["sample"]: row for row in read_csv(out)}
    for pool, i, label, prediction, probability in chosen:
        row = rows[str(flat / f"{pool}_{i}.png")]
        assert row["label_source"] == "predicted"
        assert int(row["label"]) == int(row["prediction"]) == prediction
        if label != prediction:  # the head read another class's loss: another probability
            assert float(row["membership_probability"]) != pytest.approx(probability, rel=1e-3)
        else:
            assert float(row["membership_probability"]) == pytest.approx(probability, rel=1e-5)


def test_labels_from_a_csv_or_a_tensor(general, tmp_path, capsys):
    run_dir, checkpoint, chosen, images = general
    flat = tmp_path / "flat"
    lines = ["path,label"]
    for (pool, i, label, *_), image in zip(chosen, images, strict=True):
        save_png(image, flat / f"{pool}_{i}.png")
        lines.append(f"flat/{pool}_{i}.png,{label}")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "labels.npy", np.array([c[2] for c in chosen]))
    torch.save(torch.tensor([c[2] for c in chosen]), tmp_path / "labels.pt")
    for inputs, labels in [
        (flat, "labels.csv"),
        (tmp_path / "images.npy", "labels.npy"),
        (tmp_path / "images.npy", "labels.pt"),
    ]:
        out = tmp_path / f"{labels}.out.csv"
        main(
            [
                f"checkpoint={checkpoint}",
                f"inputs={inputs}",
                f"labels={tmp_path / labels}",
                f"output={out}",
            ]
        )
        assert f"labels: given, from {tmp_path / labels}" in capsys.readouterr().out
        rows = read_csv(out)
        if labels.endswith(".csv"):
            rows = [
                {r["sample"]: r for r in rows}[str(flat / f"{p}_{i}.png")] for p, i, *_ in chosen
            ]
        for row, (_, _, label, _, probability) in zip(rows, chosen, strict=True):
            assert (int(row["label"]), row["label_source"]) == (label, "given")
            assert float(row["membership_probability"]) == pytest.approx(probability, rel=1e-5)


def test_bad_labels_are_one_line_errors(general, tmp_path, capsys):
    _, checkpoint, chosen, images = general
    n = len(images)
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "short.npy", np.zeros(n - 1, dtype=np.int64))
    np.save(tmp_path / "range.npy", np.full(n, 10))
    np.save(tmp_path / "float.npy", np.zeros(n))
    flat = tmp_path / "flat"
    for k, image in enumerate(images):
        save_png(image, flat / f"{k}.png")
    (tmp_path / "unknown.csv").write_text(
        "path,label\n" + "".join(f"flat/{k}.png,{'cat' if k == 1 else 0}\n" for k in range(n))
    )
    (tmp_path / "missing.csv").write_text("path,label\nflat/0.png,3\n")
    (tmp_path / "headless.csv").write_text("flat/0.png,3\n")
    mixed = tmp_path / "mixed"
    save_png(images[0], mixed / "3" / "a.png")
    save_png(images[1], mixed / "misc" / "b.png")
    loose = tmp_path / "loose"
    save_png(images[0], loose / "3" / "a.png")
    save_png(images[1], loose / "b.png")

    npy = tmp_path / "images.npy"
    for inputs, labels, message in [
        (npy, "short.npy", f"has {n - 1} label(s) for {n} input image(s): give one each"),
        (npy, "range.npy", "holds the label 10: the model's class indices run from 0 to 9"),
        (npy, "float.npy", "holds float64 of shape"),
        (npy, "unknown.csv", "give tensor inputs a .npy or .pt of class indices"),
        (flat, "short.npy", "give tensor inputs a .npy or .pt of class indices"),
        (flat, "unknown.csv", "line 3: 'cat' is no class of the model (its 10 classes are 0, 1"),
        (flat, "missing.csv", f"{n - 1} without a row"),
        (flat, "headless.csv", "give a CSV with the header line path,label"),
        (flat, "none.csv", "does not exist"),
        ("split:members_seen", "short.npy", "labels= is for image and tensor inputs"),
        (mixed, None, "sub-folder(s) misc name no class of the model"),
        (loose, None, "1 image(s) (b.png, ...) lie beside the class folders"),
    ]:
        settings = [f"checkpoint={checkpoint}", f"inputs={inputs}", f"output={tmp_path / 'x.csv'}"]
        if labels:
            settings.append(f"labels={tmp_path / labels}")
        with pytest.raises(SystemExit) as exit_:
            main(settings)
        stderr = capsys.readouterr().err
        assert exit_.value.code == 2
        assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("error: ")
        assert message in stderr, stderr
    assert not (tmp_path / "x.csv").exists()


def test_a_checkpoint_whose_weights_the_model_no_longer_has_is_refused(general, tmp_path, capsys):
    from amint_pl.checkpoints import seal_checkpoint

    # A sealed checkpoint from before the memory's hash was salted per band (band_offsets).
    _, checkpoint, _, images = general
    state = torch.load(checkpoint, weights_only=True)
    state["state_dict"]["memory.band_offsets"] = state["state_dict"].pop("memory.band_salts")
    seal_checkpoint(state)
    old = tmp_path / "old.ckpt"
    torch.save(state, old)
    np.save(tmp_path / "images.npy", images)
    with pytest.raises(SystemExit) as exit_:
        main([f"checkpoint={old}", f"inputs={tmp_path / 'images.npy'}", "threshold=0.5"])
    stderr = capsys.readouterr().err
    assert exit_.value.code == 2 and len(stderr.strip().splitlines()) == 1
    assert stderr.startswith(f"error: {old} does not fit the model this amint_pl builds")
    assert "memory.band_offsets" in stderr
