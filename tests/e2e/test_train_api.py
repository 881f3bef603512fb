"""`amint_pl.run.train(cfg, output_dir)`: a notebook or another program composes the config with
Hydra's compose API and trains in-process, with no Hydra run, and gets what the command line gets."""

import json

import pytest

from amint_pl.run import train
from tests.helpers import DETERMINISTIC, compose_config

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


@pytest.mark.slow  # trains twice (the command line's run is shared with other modules)
def test_train_in_process_matches_the_command_line(three_epoch_run, tmp_path, monkeypatch):
    root, cli = three_epoch_run.root, three_epoch_run.results
    monkeypatch.chdir(tmp_path)  # outside the repository, as a notebook elsewhere is
    overrides = [*DETERMINISTIC, "trainer.max_epochs=3", f"paths.data_dir={root / 'data'}"]
    cfg = compose_config(*overrides, hydra=True)
    results = train(cfg, tmp_path / "notebook")

    assert json.loads((tmp_path / "notebook" / "results.json").read_text()) == json.loads(
        json.dumps(results)
    )
    assert results["status"] == "completed" and results["epochs_trained"] == 3
    assert results["run_dir"] == str((tmp_path / "notebook").resolve())
    assert (tmp_path / "notebook" / "csv" / "metrics.csv").is_file()  # logger=csv in the run dir
    for key in SAME:
        assert results[key] == cli[key], key
    # A metric that really moved: the MINT head learnt something in three epochs.
    assert results["membership"]["paper"]["mint"]["auc"] > 0.5
    assert not list(tmp_path.glob("outputs")) and not (tmp_path / "runs").exists()
