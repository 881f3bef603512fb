"""Validation of the composed config: every setting it refuses, with the message that names the fix
(tests/e2e/test_validation.py: the entry point stops on them before data or training)."""

import re

import pytest
import torch
from omegaconf import OmegaConf

from amint_pl.errors import AmintError
from amint_pl.validation import validate_config, with_optim_group, with_timm_config
from tests.helpers import compose_config

# MNIST's files are absent here: an error about anything else proves nothing was decoded first.
NO_DATA = "dataset=mnist"


# Every setting validate_config refuses, on the really composed config (in process: fast).
REFUSED = [
    ("model.name=resnet_nope", "unknown model 'resnet_nope'"),
    ("mint.taps=[7]", "index 7 is out of range; this model has stages 0..2"),
    ("mint.taps=deep", "mint.taps='deep' is no preset"),
    ("dataset.name=nope", "unknown dataset 'nope'"),
    ("mint.mode=sometimes", "mint.mode='sometimes' is unknown"),
    ("mint.weighting=median", "mint.weighting=median: use fixed or initial"),
    ("progress.interval_s=0", "progress.interval_s=0 must be a number of seconds > 0"),
    ("+logger.mine.save_dir=x", "logger 'mine' has no _target_"),
    ("logger.csv._target_=nowhere.Logger", "cannot import nowhere.Logger"),
    ("batch_size=33", "batch_size=33 must be an even integer"),
    ("eval_batch_size=0", "eval_batch_size=0 must be a positive integer"),
    ("trainer.max_epochs=0", "trainer.max_epochs=0 must be a positive integer"),
    ("trainer.devices=0", "trainer.devices=0 must be a positive integer"),
    ("optim.lr=-0.1", "optim.lr=-0.1 must be a positive number"),
    ("optim.lr=0", "optim.lr=0 must be a positive number"),
    (
        "optim._target_=torch.optim.Lion",
        "optim._target_=torch.optim.Lion cannot be imported: use optim=<adam | adamw | sgd>",
    ),
    ("optim._target_=torch.nn.Linear", "optim._target_=torch.nn.Linear is no torch optimiser"),
    ("+optim.momentum=0.9", "optim: torch.optim.Adam cannot be built"),
    ("optim.weight_decay=-1", "optim.weight_decay=-1 must be a number >= 0"),
    ("optim.schedule=step", "optim.schedule=step: use optim.schedule=<constant | cosine>"),
    ("mint.clean_views=1", "mint.clean_views=1: use true or false"),
    ("mint.clean_views=true", "add dataset.augment=flip_crop (or drop mint.clean_views)"),
    ("mint.external_per_member=0", "mint.external_per_member=0 must be a number > 0"),
    ("mint.monitor=val/nope", "mint.monitor=val/nope is not logged by mint=active"),
    ("dataset.image_size=0", "dataset.image_size=0 must be a positive integer"),
    ("dataset.channels=2", "dataset.channels=2: use 1, 3 or null"),
    ("dataset.splits.external=0", "dataset.splits.external=0 must be a positive integer"),
    ("dataset.splits.calib_fraction=1.5", "calib_fraction in (0, 1)"),
    ("+dataset.splits.extra=1", "dataset.splits: "),
    ("ckpt_path=/no/such.ckpt", "ckpt_path=/no/such.ckpt is no file"),
    ("mint.memory.bands=-1", "mint.memory.bands=-1: use a whole number >= 1, or 0 (no memory)"),
    ("+mint.memory.size=3", "mint.memory.size is no memory setting"),
    ("mint.head.output_features=[memory]", "has 'memory' but the model has no membership memory"),
    ("seed=abc", "seed=abc must be an integer"),
]
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")


def _compose(*overrides):
    return compose_config("paths.output_dir=unused", *overrides)


@pytest.mark.parametrize(("override", "message"), REFUSED)
def test_validate_config_names_the_fix(override, message):
    with pytest.raises(AmintError, match=re.escape(message)):
        validate_config(_compose(NO_DATA, override))


@NO_GPU
@pytest.mark.parametrize(
    ("override", "fix"),
    [("trainer=gpu", "use trainer=cpu"), ("trainer=ddp", "use trainer=ddp_cpu")],
)
def test_a_gpu_trainer_without_a_gpu_names_the_cpu_one(override, fix):
    with pytest.raises(AmintError, match=f"torch sees no GPU here: {fix}"):
        validate_config(_compose(NO_DATA, override))


def test_model_name_alone_selects_the_timm_config():
    """The default model config carries small_cnn's own arguments: a timm name alone gets
    conf/model/timm.yaml, and builds."""
    overrides = with_timm_config(["model.name=convnext_atto", "dataset.image_size=32"])
    cfg = _compose(NO_DATA, *overrides)
    assert cfg.model.name == "convnext_atto" and cfg.model.kwargs == {}
    validate_config(cfg)
    # A model config or an experiment chosen with it is kept.
    for given in (["model=resnet18", "model.name=resnet34"], ["experiment=x", "model.name=y"]):
        assert with_timm_config(given) == given


@pytest.mark.parametrize(("optim", "built"), [("adam", "Adam"), ("adamw", "AdamW"), ("sgd", "SGD")])
def test_each_optimiser_is_built_from_its_config(optim, built):
    from amint_pl.training.module import AMINTModule

    # optim.name=<name>, the setting's earlier spelling, picks the same config group option.
    assert with_optim_group([f"optim.name={optim}", "optim.lr=0.5"]) == [
        f"optim={optim}",
        "optim.lr=0.5",
    ]
    cfg = _compose(*with_optim_group([f"optim.name={optim}", "optim.lr=0.5"]))
    validate_config(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    module = AMINTModule(config, 10, 1, [0.5], [0.25], ("paper",))
    optimiser = module.configure_optimizers()
    assert type(optimiser).__name__ == built and optimiser.defaults["lr"] == 0.5
    assert optimiser.param_groups[0]["params"] == module.audited_parameters() + list(
        module.mint_head.parameters()
    )
    if optim == "sgd":
        assert optimiser.defaults["momentum"] == 0.9 and optimiser.defaults["nesterov"]


@pytest.mark.parametrize("option", ["small_cnn", "resnet18", "vit_tiny", "mobilenetv3_small"])
def test_shipped_models_pass(option):
    validate_config(_compose(NO_DATA, f"model={option}", "mint=passive"))
