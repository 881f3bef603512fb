"""Validation at the edge, before any data is decoded: the command line, then the composed config.

The command line (`command_line_overrides`, before Hydra starts): a config group option that
does not exist, a launcher whose plugin is missing, a run directory that already holds a run, a
resume without its run directory. While Hydra composes (`composition_errors`): a misspelt or
undeclared key, an override it cannot parse.

The run config (`validate_config`): everything a user can get wrong (data set, model and taps,
mint mode, loggers, split sizes, batch size, epochs, optimiser, monitor, attack, ckpt_path), with
one line naming the fix (`ConfigError`). It builds the backbone and MINT head on the `meta`
device, so taps are checked against the real model for the price of a shape pass. Split sizes
against the pools are checked by `build_splits` once the pools are known (for the embedded digits
right after loading), still before training. The builders trust what it checked.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from amint_pl import config_dir
from amint_pl.errors import AmintError, ConfigError
from amint_pl.training.resume import RUN_CONFIG, with_run_overrides

CONFIG_GROUPS = (
    "dataset",
    "model",
    "mint",
    "optim",
    "trainer",
    "logger",
    "paths",
    "experiment",
    "debug",
    "sweep",
)
# optim.schedule: the learning rate over a phase (AMINTModule.configure_optimizers).
LR_SCHEDULES = ("constant", "cosine")
# hydra/launcher options whose plugin comes with the `cluster` extra.
LAUNCHER_PLUGINS = {
    "joblib": "hydra_plugins.hydra_joblib_launcher",
    "submitit_slurm": "hydra_plugins.hydra_submitit_launcher",
    "submitit_local": "hydra_plugins.hydra_submitit_launcher",
}


# ---------------------------------------------------------------------------------------------
# The command line


def group_options(group: str) -> list[str]:
    """The options of a config group: conf/<group>/*.yaml."""
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def _override_key(arg: str) -> str:
    return arg.lstrip("+~").partition("=")[0]


def with_timm_config(args: list[str]) -> list[str]:
    """`model.name=<timm name>` alone selects conf/model/timm.yaml (the default model's config
    holds small_cnn's own arguments), unless a model config or an experiment is chosen."""
    keys = {_override_key(arg) for arg in args if "=" in arg}
    names = [arg.partition("=")[2] for arg in args if _override_key(arg) == "model.name"]
    if not names or keys & {"model", "experiment"} or names == ["small_cnn"]:
        return args
    return ["model=timm", *args]


def with_optim_group(args: list[str]) -> list[str]:
    """`optim.name=<adam | adamw | sgd>` (the setting's earlier spelling) is the optimiser's config
    group option: optim=<name>."""
    return [
        f"optim={arg.partition('=')[2]}" if arg.lstrip("+").startswith("optim.name=") else arg
        for arg in args
    ]


def check_overrides(overrides: list[str]) -> None:
    """Refuse, before Hydra composes anything, a group option that does not exist or a run
    directory that already holds a run (nothing a user has is overwritten)."""
    given = dict(
        arg.lstrip("+~").partition("=")[::2]
        for arg in overrides
        if "=" in arg and not arg.startswith("-")
    )
    for group in CONFIG_GROUPS:
        if group not in given:
            continue
        for option in given[group].strip("[]").split(","):  # a sweep a,b or a list [a,b]
            if option in ("", "null") or (config_dir() / group / f"{option}.yaml").is_file():
                continue
            hint = " (or model.name=<any timm model name>)" if group == "model" else ""
            raise ConfigError(
                f"unknown {group} '{option}': choose one of {', '.join(group_options(group))}{hint}"
            )
    launcher = given.get("hydra/launcher", "")
    if (
        launcher in LAUNCHER_PLUGINS
        and importlib.util.find_spec(LAUNCHER_PLUGINS[launcher]) is None
    ):
        raise ConfigError(f'hydra/launcher={launcher} needs its plugin: pip install ".[cluster]"')
    run_dir = given.get("hydra.run.dir", "").strip("\"'")
    resuming = given.get("ckpt_path", "null") not in ("null", "")
    # DDP ranks > 0 re-run this command inside the run directory their rank 0 made: rank 0 checked.
    rank_zero = os.environ.get("LOCAL_RANK", "0") == "0"
    if (
        rank_zero
        and run_dir
        and not resuming
        and Path(run_dir).is_dir()
        and any(Path(run_dir).iterdir())
    ):
        raise ConfigError(
            f"{run_dir} already holds a run: pick a new hydra.run.dir, or resume it with ckpt_path=last"
        )
    if (
        rank_zero
        and given.get("ckpt_path") == "last"
        and not (run_dir and (Path(run_dir) / RUN_CONFIG).is_file())
    ):
        raise ConfigError(
            "ckpt_path=last resumes a run in its own directory: add hydra.run.dir=<the run directory> "
            f"(the one holding {RUN_CONFIG})"
        )


@contextmanager
def composition_errors() -> Iterator[None]:
    """Hydra's report of an override it cannot apply (a misspelt or undeclared key, a value of
    the wrong type, an override it cannot parse), in a run or any job of a sweep, raised as one
    ConfigError line naming the fix. Hydra prints its own report unless HYDRA_FULL_ERROR=1 makes
    it raise: set while inside."""
    from hydra.errors import ConfigCompositionException, OverrideParseException

    full_error = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    except (ConfigCompositionException, OverrideParseException) as err:
        cause = str(err.__cause__ or "").strip().splitlines()
        reason = " ".join([str(err).strip().splitlines()[0], *cause[:1]])
        if isinstance(err, OverrideParseException):
            raise ConfigError(
                f"{reason}: write overrides as key=value, lists as 'key=[a,b]'"
            ) from err
        raise ConfigError(
            f"{reason}: check the spelling (python -m amint_pl.run --cfg job prints every "
            "setting), or add a new key with a leading +"
        ) from err
    finally:
        if full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR")
        else:
            os.environ["HYDRA_FULL_ERROR"] = full_error


def command_line_overrides(args: list[str]) -> list[str]:
    """The overrides Hydra gets for a command line, checked before Hydra starts (ConfigError naming
    the fix): a resume in place gets the run's own (`with_run_overrides`), `model.name=<timm name>`
    and `optim.name=` their config group options."""
    args = with_optim_group(with_timm_config(with_run_overrides(args)))
    check_overrides(args)
    return args


# ---------------------------------------------------------------------------------------------
# The run config


def _positive_int(value: Any, key: str, fix: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key}={value} must be a positive integer{fix}")
    return value


def _number(value: Any, key: str, low: float, inclusive: bool, fix: str) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (value == low and not inclusive):
        raise ConfigError(f"{key}={value} {fix}")
    return float(value)


def _check_dataset(dataset: Mapping[str, Any]) -> None:
    from amint_pl.data.benchmarks import READERS

    name = dataset.get("name")
    if name not in READERS:
        raise ConfigError(
            f"unknown dataset '{name}': choose one of {', '.join(sorted(READERS))} (dataset=<name>)"
        )
    _positive_int(
        dataset.get("image_size"), "dataset.image_size", " (the side to train at, e.g. 32)"
    )
    if dataset.get("channels") not in (None, 1, 3):
        raise ConfigError(
            f"dataset.channels={dataset.get('channels')}: use 1, 3 or null (the native channels)"
        )
    augment = dataset.get("augment", "none")
    if augment not in ("none", "flip_crop"):
        raise ConfigError(f"dataset.augment={augment}: use none or flip_crop")
    if dataset.get("num_classes") is not None:
        _positive_int(dataset["num_classes"], "dataset.num_classes", " or null (from the data)")


def _check_splits(splits: Mapping[str, Any], seed: int) -> None:
    """Sizes that need no pool: positive counts, fractions in range (build_splits' own checks,
    run on pools just large enough; the real pools are checked once known)."""
    from amint_pl.data.splits import SplitSizes, build_splits

    try:
        sizes = SplitSizes(**splits)
    except TypeError as err:
        raise ConfigError(
            f"dataset.splits: {err}; the keys are members, members_unseen_fraction, external, "
            "nonmembers_calib, nonmembers_eval, calib_fraction, population"
        ) from err
    for key in ("members", "external", "nonmembers_calib"):
        _positive_int(getattr(sizes, key), f"dataset.splits.{key}")
    if sizes.nonmembers_eval is not None:
        _positive_int(sizes.nonmembers_eval, "dataset.splits.nonmembers_eval", " or null (all)")
    if sizes.population is not None:
        _positive_int(sizes.population, "dataset.splits.population", " or null (the rest)")
    n_test = sizes.nonmembers_calib + (sizes.nonmembers_eval or 1)
    build_splits(sizes.members + sizes.external + (sizes.population or 0), n_test, sizes, seed)


def _check_model(cfg: Mapping[str, Any]) -> list[tuple[int, ...]]:
    """Build the backbone and head on the meta device (shapes only); return the tap shapes."""
    import torch

    from amint_pl.models.backbones import backbone_from_config
    from amint_pl.models.memory import memory_from_config
    from amint_pl.models.mint_head import mint_head_from_config

    dataset, mint = cfg["dataset"], cfg["mint"]
    channels = int(dataset.get("channels") or 3)
    size = int(dataset["image_size"])
    num_classes = int(dataset.get("num_classes") or 2)

    def build(device: str) -> list[tuple[int, ...]]:
        with torch.device(device):
            backbone = backbone_from_config(cfg["model"], mint["taps"], num_classes, channels, size)
            shapes = [tuple(t.shape) for t in backbone.tap_info]
            memory = memory_from_config(
                mint.get("memory"),
                (channels, size, size),
                num_classes,
                int(dataset["splits"]["members"]),
            )
            features = (mint.get("head") or {}).get("output_features") or ()
            if "memory" in features and memory is None and mint["mode"] != "off":
                raise ConfigError(
                    "mint.head.output_features has 'memory' but the model has no membership "
                    "memory: set mint.memory.bands (e.g. 16) or mint.memory.record=fingerprint, "
                    "or drop the feature"
                )
            if mint["mode"] != "off":
                mint_head_from_config(mint["head"], shapes, num_classes)
        return shapes

    try:
        try:
            return build("meta")
        except AmintError:
            raise
        except Exception:  # an op without a meta kernel: build it for real
            return build("cpu")
    except AmintError:
        raise
    except Exception as err:
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise ConfigError(
            f"model '{cfg['model'].get('name')}' with mint.taps={mint['taps']} cannot take "
            f"{channels}x{size}x{size} inputs ({reason}): change the model, dataset.image_size "
            "or mint.taps"
        ) from err


def _check_mint(cfg: Mapping[str, Any]) -> None:
    from amint_pl.training.losses import WEIGHTINGS
    from amint_pl.training.module import phases_of

    mint = cfg["mint"]
    phases = phases_of(str(mint.get("mode")))
    if mint.get("weighting") not in WEIGHTINGS:
        raise ConfigError(f"mint.weighting={mint.get('weighting')}: use {' or '.join(WEIGHTINGS)}")
    for key in ("w_aud", "w_mint"):
        _number(mint.get(key), f"mint.{key}", 0.0, True, "must be a number >= 0")
    if mint.get("monitor_mode") not in ("min", "max"):
        raise ConfigError(f"mint.monitor_mode={mint.get('monitor_mode')}: use max or min")
    if "mint_head" in phases:
        _positive_int(mint.get("head_max_epochs"), "mint.head_max_epochs")
    clean_views = mint.get("clean_views", False)
    if not isinstance(clean_views, bool):
        raise ConfigError(f"mint.clean_views={clean_views}: use true or false")
    if clean_views and cfg["dataset"].get("augment", "none") == "none":
        raise ConfigError(
            "mint.clean_views=true reads un-augmented images beside augmented ones: add "
            "dataset.augment=flip_crop (or drop mint.clean_views)"
        )
    _number(
        mint.get("external_per_member", 1.0),
        "mint.external_per_member",
        0.0,
        False,
        "must be a number > 0, e.g. 0.25 (a quarter as many external samples as members)",
    )
    # What the first phase logs on the calibration sets (the MINT head phase watches paper AUC).
    splits = cfg["dataset"]["splits"]
    protocols = ["paper"] + (["strict"] if float(splits["members_unseen_fraction"]) > 0 else [])
    monitors = ["val/aud_acc"] + [f"val/{p}/loss_auc" for p in protocols]
    if phases[0] == "joint":
        monitors += [f"val/{p}/mint_auc" for p in protocols]
    if mint.get("monitor") not in monitors:
        raise ConfigError(
            f"mint.monitor={mint.get('monitor')} is not logged by mint={mint['mode']}"
            f"{'' if 'strict' in protocols else ' without members_unseen'}: use one of "
            f"{', '.join(monitors)}"
        )


def _check_loggers(loggers: Mapping[str, Any] | None) -> None:
    from hydra.utils import get_class

    fix = f"use logger=<{' | '.join(group_options('logger'))}>"
    for name, node in (loggers or {}).items():
        if node is None:
            continue
        target = node.get("_target_") if isinstance(node, Mapping) else None
        if target is None:
            raise ConfigError(f"logger '{name}' has no _target_: {fix}")
        try:
            get_class(str(target))
        except Exception as err:
            raise ConfigError(f"logger '{name}': cannot import {target}: {fix}") from err
        tensorboard = ("tensorboard", "tensorboardX")
        if str(target).endswith("TensorBoardLogger") and not any(map(_installed, tensorboard)):
            raise ConfigError(
                "logger=tensorboard needs TensorBoard: pip install tensorboard (or pick logger=csv)"
            )


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def _check_training(cfg: Mapping[str, Any]) -> None:
    batch = cfg.get("batch_size")
    # batch_size is per device (run.yaml): each device's batch holds batch_size/2 members, so it
    # must split in two; the global batch (batch_size x devices) then always divides.
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 2 or batch % 2:
        raise ConfigError(
            f"batch_size={batch} must be an even integer >= 2 (per device: batch_size/2 "
            "members): use e.g. batch_size=32"
        )
    _positive_int(cfg.get("eval_batch_size"), "eval_batch_size")
    trainer = cfg.get("trainer") or {}
    _positive_int(trainer.get("max_epochs"), "trainer.max_epochs")
    _check_accelerator(trainer)
    devices = trainer.get("devices", "auto")
    if not (devices in ("auto", -1) or isinstance(devices, list | tuple)):
        _positive_int(devices, "trainer.devices", ", auto, or a list of device ids")
    if not isinstance(cfg.get("seed"), int) or isinstance(cfg.get("seed"), bool):
        raise ConfigError(f"seed={cfg.get('seed')} must be an integer")
    patience = cfg.get("early_stopping_patience")
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
        raise ConfigError(f"early_stopping_patience={patience} must be an integer >= 0")
    _check_optim(cfg.get("optim") or {})


def _check_optim(optim: Mapping[str, Any]) -> None:
    """conf/optim/*.yaml: a torch optimiser's class and settings, built once on a probe."""
    import torch
    from hydra.utils import get_class, instantiate

    fix = f"use optim=<{' | '.join(group_options('optim'))}>"
    optim = dict(optim)
    schedule = optim.pop("schedule", "constant")
    if schedule not in LR_SCHEDULES:
        raise ConfigError(
            f"optim.schedule={schedule}: use optim.schedule=<{' | '.join(LR_SCHEDULES)}>"
        )
    target = optim.get("_target_")
    try:
        optimiser = get_class(str(target))
    except Exception as err:
        raise ConfigError(f"optim._target_={target} cannot be imported: {fix}") from err
    if not (isinstance(optimiser, type) and issubclass(optimiser, torch.optim.Optimizer)):
        raise ConfigError(f"optim._target_={target} is no torch optimiser: {fix}")
    if optim.get("_partial_") is not True:
        raise ConfigError("optim._partial_ must be true (the parameters come per phase): " + fix)
    _number(
        optim.get("lr"), "optim.lr", 0.0, False, "must be a positive number, e.g. optim.lr=1e-3"
    )
    _number(
        optim.get("weight_decay", 0.0), "optim.weight_decay", 0.0, True, "must be a number >= 0"
    )
    try:
        instantiate(dict(optim))([torch.nn.Parameter(torch.zeros(1))])
    except Exception as err:
        reason = " ".join(str(err).split())[:160] or type(err).__name__
        raise ConfigError(f"optim: {target} cannot be built ({reason}): {fix}") from err


def _check_bootstrap(bootstrap: Mapping[str, Any]) -> None:
    resamples = bootstrap.get("resamples")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 0:
        raise ConfigError(
            f"bootstrap.resamples={resamples} must be an integer >= 0 (0: no intervals)"
        )
    confidence = bootstrap.get("confidence")
    if (
        isinstance(confidence, bool)
        or not isinstance(confidence, int | float)
        or not (0 < confidence < 1)
    ):
        raise ConfigError(f"bootstrap.confidence={confidence} must lie in (0, 1), e.g. 0.95")


def _check_attack(attack: Mapping[str, Any]) -> None:
    """The reference-model attack's settings (checked when it is on)."""
    if not attack.get("reference"):
        return
    from amint_pl.evaluation.reference import check_rmia_settings

    check_rmia_settings(float(attack["offline_a"]), float(attack["gamma"]))
    if float(attack["temperature"]) <= 0:
        raise ConfigError(f"attack.temperature={attack['temperature']} must be positive")
    _positive_int(attack.get("reference_models"), "attack.reference_models", " (K models)")
    fraction = attack.get("population_fraction")
    if not 0.0 < float(fraction) < 1.0:
        raise ConfigError(f"attack.population_fraction={fraction} must lie in (0, 1)")


def _check_progress(progress: Mapping[str, Any]) -> None:
    interval = progress.get("interval_s", 30)
    if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
        raise ConfigError(
            f"progress.interval_s={interval} must be a number of seconds > 0, e.g. 30"
        )


def _check_accelerator(trainer: Mapping[str, Any]) -> None:
    import torch

    accelerator = str(trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        cpu = "trainer=ddp_cpu" if trainer.get("strategy") == "ddp" else "trainer=cpu"
        raise ConfigError(
            f"trainer.accelerator={accelerator} but torch sees no GPU here: use {cpu}, or "
            "trainer=default (a GPU when there is one, else the CPU)"
        )


def _check_ckpt_path(ckpt_path: Any) -> None:
    if ckpt_path in (None, "last"):
        return
    if not Path(str(ckpt_path)).is_file():
        raise ConfigError(
            f"ckpt_path={ckpt_path} is no file: give a .ckpt of this run, or ckpt_path=last "
            "(with hydra.run.dir=<the run directory>)"
        )


def validate_config(cfg: Mapping[str, Any]) -> None:
    """Check a composed run config (a DictConfig or plain dict) before any data is decoded.

    Raises:
        ConfigError (or SplitError for split sizes): one line naming the fix.
    """
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    _check_dataset(cfg["dataset"])
    _check_training(cfg)
    _check_bootstrap(cfg.get("bootstrap") or {})
    _check_progress(cfg.get("progress") or {})
    _check_attack(cfg.get("attack") or {})
    _check_splits(cfg["dataset"]["splits"], int(cfg["seed"]))
    _check_mint(cfg)
    _check_loggers(cfg.get("logger"))
    _check_ckpt_path(cfg.get("ckpt_path"))
    _check_model(cfg)
