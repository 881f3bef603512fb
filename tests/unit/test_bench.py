"""The bench's settings: channels_last trains like the default, compile modes, and where --quick
writes (tests/e2e/test_bench.py: `experiments/bench.py --quick` itself)."""

import sys
from pathlib import Path

import pytest
import torch

from amint_pl.data.datamodule import MembershipDataModule
from amint_pl.errors import ConfigError
from amint_pl.training.module import AMINTModule, compile_mode
from tests.helpers import REPO

sys.path.insert(0, str(REPO / "experiments"))
import bench  # noqa: E402  (experiments/ is no package)


def _one_step_loss(**model: bool) -> tuple[float, AMINTModule]:
    """The loss of one real optimisation step on the bench's synthetic 32x32 data, from seed 0."""
    settings = bench.Settings(batch_size=16, members=32)
    cfg = bench.run_config(settings, "small_cnn", "active")
    cfg["model"].update(model)
    benchmark, splits = bench.data_for(settings.members, 0)
    torch.manual_seed(0)
    module = AMINTModule(cfg, benchmark.num_classes, 3, benchmark.mean, benchmark.std)
    datamodule = MembershipDataModule(benchmark, splits, 16, 16, 0)
    batch = next(iter(datamodule.train_dataloader()))
    batch = module.on_after_batch_transfer(module.on_before_batch_transfer(batch, 0), 0)
    optimizer = module.configure_optimizers()
    loss = module.training_step(batch, 0)
    loss.backward()
    optimizer.step()
    return float(loss.detach()), module


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_channels_last_trains_like_the_default():
    plain, _ = _one_step_loss()
    fast, module = _one_step_loss(channels_last=True)
    assert fast == pytest.approx(plain, rel=1e-4)
    first_conv = module.backbone.network.stages[0][0].weight
    assert first_conv.is_contiguous(memory_format=torch.channels_last)


def test_an_unknown_compile_mode_names_the_choices():
    assert compile_mode(False) is None and compile_mode(True) == "default"
    with pytest.raises(ConfigError, match=r"model.compile='fastest' is unknown: use false, true"):
        compile_mode("fastest")


def test_quick_figures_go_to_a_scratch_folder_unless_told():
    """--quick never overwrites the measured experiments/results/bench-<machine>.*."""
    assert bench.parse_args([]).out == bench.RESULTS
    assert bench.parse_args(["--quick"]).out == bench.SCRATCH
    assert not bench.SCRATCH.is_relative_to(REPO)
    assert bench.parse_args(["--quick", "--out", "x"]).out == Path("x")
