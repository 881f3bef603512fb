"""The shipped config as Hydra composes it: the paper's recipe, the sweep presets, the paper's grid,
the launchers."""

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

import amint_pl.run  # noqa: F401  (registers the run-directory resolver)
from tests.helpers import CONF, compose_config


def test_paper_preset_is_the_papers_recipe():
    cfg = OmegaConf.to_container(compose_config("experiment=paper", "dataset=mnist"))
    assert cfg["optim"] == {
        "_target_": "torch.optim.Adam",
        "_partial_": True,
        "lr": 1.0e-4,
        "weight_decay": 0.0,
        "fused": True,
        "schedule": "constant",
    }
    assert cfg["batch_size"] == 128  # 64 members + 64 external samples per step
    assert cfg["dataset"]["augment"] == "none"
    mint = cfg["mint"]
    assert mint["mode"] == "active" and mint["weighting"] == "initial"
    assert mint["positive_fraction"] == 1.0 and mint["memory"]["bands"] == 0
    assert mint["head"]["conv_widths"] == [1024, 2048] and mint["head"]["hidden"] == 128
    splits = cfg["dataset"]["splits"]
    assert (splits["members"], splits["external"]) == (25000, 35000)
    # The Table 1 grid runs this very recipe.
    table1 = OmegaConf.to_container(compose_config("experiment=paper_table1"))
    assert {k: table1[k] for k in ("optim", "batch_size", "mint")} == {
        k: cfg[k] for k in ("optim", "batch_size", "mint")
    }


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONF / "sweep").glob("*.yaml")))
def test_sweep_presets_sweep_over_options_that_exist(preset):
    cfg = compose_config(f"+sweep={preset}", hydra=True)
    params = cfg.hydra.sweeper.params
    assert params, f"sweep/{preset}.yaml sweeps nothing"
    for key, values in params.items():
        for value in str(values).split(","):
            if key in ("dataset", "model", "mint"):
                assert (CONF / key / f"{value}.yaml").is_file(), f"{key}={value}"
            elif key == "mint.taps":
                assert value in ("entry", "middle", "output")


def test_paper_grid_is_data_sets_by_architectures_by_tap_setups():
    cfg = compose_config("+sweep=paper_grid", hydra=True)
    params = {k: str(v).split(",") for k, v in cfg.hydra.sweeper.params.items()}
    assert params["dataset"] == ["mnist", "cifar10", "gtsrb", "tiny_imagenet"]
    assert set(params["model"]) == {
        "mobilenet",
        "resnet50",
        "resnet101",
        "densenet121",
        "xception",
        "vit",
    }
    assert params["mint.taps"] == ["entry", "middle", "output"]


# Our launcher configs carry the plugins' names: Hydra validates them against their schemas.
@pytest.mark.filterwarnings("ignore:(?s).*is validated against ConfigStore schema")
def test_slurm_launcher_asks_one_task_per_gpu_so_slurm_starts_the_ddp_processes():
    overrides = [
        "hydra/launcher=submitit_slurm",
        "trainer=ddp",
        "trainer.devices=4",
        "trainer.num_nodes=2",
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("run", overrides=overrides, return_hydra_config=True)
        launcher = cfg.hydra.launcher
        assert launcher.tasks_per_node == launcher.gpus_per_node == 4
        assert launcher.nodes == 2
        assert type(instantiate(launcher)).__name__ == "SlurmLauncher"
        joblib = compose("run", overrides=["hydra/launcher=joblib"], return_hydra_config=True)
        assert type(instantiate(joblib.hydra.launcher)).__name__ == "JoblibLauncher"
