"""`amint_pl.run.train(cfg, output_dir)`: a notebook or another program composes the config with
Hydra's compose API and trains in-process, with no Hydra run, and gets what the command line gets."""

import json

import pytest

# What must match the command line's run: every metric, and what they were computed on.
SAME = (
    "status",
    "dataset",
    "model",
    "mint_mode",
    "choices",
    "taps",
    "seed",
    "config_digest",
    "audited",
    "membership",
    "split_fingerprint",
    "split_sizes",
    "tap_info",
    "best_checkpoints",
    "epochs_trained",
    "training",
)


@pytest.mark.slow  # trains twice (both runs are shared with other modules)
def test_train_in_process_matches_the_command_line(three_epoch_run, notebook_run):
    """notebook_run: three_epoch_run's config composed with Hydra's compose API and passed to
    `train(cfg, output_dir)` in this process, started in an empty folder outside the repository."""
    cli, results, run_dir = three_epoch_run.results, notebook_run.results, notebook_run.run_dir

    assert json.loads((run_dir / "results.json").read_text()) == json.loads(json.dumps(results))
    assert results["status"] == "completed" and results["epochs_trained"] == 3
    assert results["run_dir"] == str(run_dir.resolve())
    assert (run_dir / "csv" / "metrics.csv").is_file()  # logger=csv in the run dir
    for key in SAME:
        assert results[key] == cli[key], key
    # A metric that really moved: the MINT head learnt something in three epochs.
    assert results["membership"]["paper"]["mint"]["auc"] > 0.5
    # Nothing where it was started (no outputs/ or runs/): the working directory stays empty.
    assert notebook_run.outside == ["cwd"]
