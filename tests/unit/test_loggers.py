"""The W&B logger of a sweep's job, built from the shipped config and read back through wandb's public
`Run` (a real offline run, no mocks): the sweep as its group, the preset in its name, tags and job
type, the whole resolved config with the Hydra choices, and the summary of both protocols and
every method (tests/e2e/test_wandb.py: a real sweep's offline runs, images, table and TensorBoard)."""

import pytest
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from PIL import Image

from amint_pl.evaluation.metrics import REPORTED_METRICS
from amint_pl.evaluation.publish import IMAGES, publish_results, summary_metrics
from amint_pl.loggers import build_loggers, run_choices
from tests.helpers import TINY, compose_config


@pytest.fixture
def sweep_job(tmp_path):
    """The composed config of job 0 of a sweep (mint=active_general, seed=5), with Hydra's runtime
    config set as the launcher sets it in each job; Hydra's global state is cleared after."""
    sweep_dir = tmp_path / "multirun" / "2026-11-30" / "12-00-00_abc123"
    cfg = compose_config(
        *TINY,
        "logger=[wandb,tensorboard]",
        "mint=active_general",
        "seed=5",
        "hydra.mode=MULTIRUN",
        f"hydra.sweep.dir={sweep_dir}",
        f"paths.output_dir={sweep_dir / '0'}",
        hydra=True,
    )
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # a job's config, as Hydra hands it to the run
    try:
        yield cfg, sweep_dir
    finally:
        HydraConfig.instance().cfg = None


def test_a_sweeps_wandb_run_holds_group_name_tags_config_and_summary(sweep_job):
    cfg, sweep_dir = sweep_job
    output_dir = sweep_dir / "0"
    output_dir.mkdir(parents=True)
    for name in IMAGES.values():
        Image.new("RGB", (8, 8), (200, 10, 10)).save(output_dir / name)
    loggers = build_loggers(cfg, run_choices())
    (wandb_logger,) = [lg for lg in loggers if type(lg).__name__ == "WandbLogger"]
    run = wandb_logger.experiment
    try:
        assert run.offline and run.group == "2026-11-30_12-00-00_abc123"  # the sweep
        assert set(run.tags) == {"digits", "small_cnn", "mint_active_general", "taps_entry"}
        assert run.job_type == "active_general"
        assert run.name == "digits-small_cnn-active_general-taps_entry-seed5"
        # The whole resolved config, and the Hydra choices behind it.
        config = dict(run.config)
        assert config["mint"]["mode"] == "active" and config["seed"] == 5
        assert config["choices"]["mint"] == "active_general"
        membership = {
            protocol: {
                method: {
                    **{key: k / 10 + n / 100 for n, key in enumerate(REPORTED_METRICS)},
                    "n_members": 10,
                    "n_nonmembers": 12,
                }
                for k, method in enumerate(("mint", "loss"))
            }
            for protocol in ("paper", "strict")
        }
        summary = summary_metrics({"test_acc": 0.9}, membership)
        assert summary["test/strict/loss/auc"] == membership["strict"]["loss"]["auc"]
        publish_results(loggers, summary, membership, output_dir, step=7)
        for key, value in summary.items():
            assert run.summary[key] == value, key
    finally:
        run.finish()
    media = next((output_dir / "wandb").glob("offline-run-*")) / "files" / "media"
    assert list(media.glob("images/test/roc_*.png"))
    assert list(media.glob("images/test/scores_hist_*.png"))
    assert list(media.glob("table/test/membership_*.table.json"))
