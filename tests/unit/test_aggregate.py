"""The aggregate table on results.json files written here: the paper's numbers beside ours, runs that
differ only by seed reduced to mean and std, and nothing to aggregate as a one-line error
(tests/e2e/test_aggregate.py: the table of a real sweep)."""

import csv
import json

import pytest

from amint_pl.aggregate import aggregate, main, paper_model


def _results(dataset, model, taps, mode, methods):
    metrics = {
        "auc": 0.9,
        "balanced_acc_calibrated": 0.8,
        "acc_at_0.5": 0.7,
        "tpr_at_1%_fpr": 0.2,
        "tpr_at_1%_fpr_meaningful": True,
    }
    return {
        "status": "completed",
        "dataset": dataset,
        "model": model,
        "mint_mode": mode,
        "taps": taps,
        "seed": 0,
        "audited": {"test_acc": 0.95},
        "membership": {p: {m: metrics for m in methods} for p in ("paper", "strict")},
    }


def test_paper_numbers_sit_beside_ours(tmp_path):
    for name, results in {
        "a": _results("mnist", "mobilenetv1_100", "entry", "active", ["mint", "loss"]),
        "b": _results("mnist", "mobilenetv1_100", "entry", "passive", ["mint"]),
        "c": _results("cifar10", "resnet50", "middle", "active", ["mint", "loss", "confidence"]),
        "d": _results("gtsrb", "resnet50", [1, 2], "active", ["mint"]),
    }.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(results))
    rows = {(r["dataset"], r["taps"], r["method"]): r for r in aggregate([tmp_path])}
    # Table 1 (mnist, entry, mobilenet) and the baselines (passive MINT; the attacks on cifar10).
    assert rows["mnist", "entry", "amint"]["paper_mint_acc"] == 0.86
    assert rows["mnist", "entry", "amint"]["paper_aud_acc"] == 0.96
    assert rows["mnist", "entry", "passive_mint"]["paper_mint_acc"] == 0.52
    assert rows["cifar10", "middle", "amint"]["paper_mint_acc"] == 0.89
    assert rows["cifar10", "middle", "loss"]["paper_mint_acc"] == 0.64  # Yeom et al.
    assert rows["cifar10", "middle", "confidence"]["paper_mint_acc"] == 0.61  # Salem et al.
    assert rows["mnist", "entry", "loss"]["paper_mint_acc"] is None  # not in the paper
    assert rows["gtsrb", "[1,2]", "amint"]["paper_mint_acc"] is None  # not a paper tap setup
    names = ("legacy_xception", "vit_amint", "vit_tiny_patch16_224", "resnet18")
    # Only the paper's own ViT configuration stands beside the paper's ViT numbers.
    assert [paper_model(m) for m in names] == ["xception", "vit", None, None]


def _exit_code(argv):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    return exit_.value.code


def test_nothing_to_aggregate_is_one_line_and_exit_2(tmp_path, capsys):
    assert _exit_code([str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: no runs below {tmp_path}: give a sweep directory (multirun/...) or run "
        "directories (each holds results.json or .hydra/)"
    ]
    assert _exit_code([str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_runs_that_differ_only_by_seed_reduce_to_mean_and_std(tmp_path, capsys):
    aucs = {0: 0.80, 1: 0.90, 2: 0.85}
    for seed, value in aucs.items():
        for lr, name in ((1e-3, f"s{seed}"), (1e-4, f"slow{seed}")):
            results = _results("mnist", "resnet50", "middle", "active", ["mint"])
            results["seed"] = seed
            results["membership"]["paper"]["mint"] = {
                **results["membership"]["paper"]["mint"],
                "auc": value if lr == 1e-3 else 0.6,
                "auc_ci": [value - 0.05, value + 0.05],
            }
            run = tmp_path / name
            (run / ".hydra").mkdir(parents=True)
            (run / "results.json").write_text(json.dumps(results))
            config = f"seed: {seed}\noptim:\n  lr: {lr}\npaths:\n  output_dir: {run}\n"
            (run / ".hydra" / "config.yaml").write_text(config)
    main([str(tmp_path)])
    stdout = capsys.readouterr().out
    with open(tmp_path / "aggregate_seeds.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["method"] == "amint"]
    assert len(rows) == 2  # two learning rates: two recipes, three seeds each
    fast = next(r for r in rows if float(r["auc_mean"]) > 0.7)
    assert fast["n_seeds"] == "3" and fast["seeds"] == "0 1 2"
    assert float(fast["auc_mean"]) == pytest.approx(0.85)
    assert float(fast["auc_std"]) == pytest.approx(0.05)
    assert "0.850 ± 0.050" in stdout and "[0.750, 0.850]" in stdout
