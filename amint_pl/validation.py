"""Validation at the edge: a run's config before any data is decoded, and checkpoints on load.

`validate_config` checks everything a user can get wrong on the command line (data set, model and
taps, mint mode, loggers, split sizes, batch size, epochs, optimiser, monitor, ckpt_path) and
raises `ConfigError` with one line naming the fix. It builds the backbone and MINT head on the
`meta` device, so taps are checked against the real model for the price of a shape pass.
Split sizes against the pools are checked by `build_splits` once the pools are known (for the
embedded digits right after loading), still before training.

Checkpoints: `seal_checkpoint` adds the amint_pl version and a SHA-256 digest of the weights and of
the config that rebuilds the model; `check_checkpoint` refuses a file without them or whose digest
no longer matches (`CheckpointError`), and `check_resumable` refuses to resume a run with a
config that would change its result.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from amint_pl.errors import AmintError, CheckpointError, ConfigError

# What `seal_checkpoint` adds to a checkpoint.
VERSION_KEY = "amint_pl_version"
DIGEST_KEY = "amint_digest"
# Checkpoint entries the digest covers besides the weights and the hyper-parameters.
SEALED_KEYS = (VERSION_KEY, "amint_phase", "amint_split_fingerprint")
# Config keys a resumed run may change: where files live, what is logged and shown, and how
# long it trains. Anything else would make the resumed run differ from the one it continues, so it
# is refused, even what changes numbers only in their last digits (trainer.accelerator,
# trainer.deterministic, eval_batch_size: the batches that score samples) and the evaluation
# (attack: the resumed results.json would not be the uninterrupted run's).
RESUMABLE_KEYS = (
    "trainer.max_epochs",
    "mint.head_max_epochs",
    "early_stopping_patience",
    "ckpt_path",
    "paths",
    "logger",
    "trainer.enable_progress_bar",
    "progress",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "dataset.root",
    "dataset.cache_dir",
    "dataset.test_root",
    "dataset.download",
)


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
                    "memory: set mint.memory.bands (e.g. 16) or drop the feature"
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
    from importlib import resources

    from hydra.utils import get_class

    shipped = sorted(
        p.name[: -len(".yaml")]
        for p in (resources.files("amint_pl") / "conf" / "logger").iterdir()
        if p.name.endswith(".yaml")
    )
    fix = f"use logger=<{' | '.join(shipped)}>"
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


def _check_training(cfg: Mapping[str, Any]) -> None:
    from amint_pl.training.module import OPTIMIZERS

    batch = cfg.get("batch_size")
    # batch_size is per device (run.yaml): each device's batch is half members, half external,
    # so it must split in two; the global batch (batch_size x devices) then always divides.
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 2 or batch % 2:
        raise ConfigError(
            f"batch_size={batch} must be an even integer >= 2 (per device: half members, half "
            "external samples): use e.g. batch_size=32"
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
    optim = cfg.get("optim") or {}
    if optim.get("name") not in OPTIMIZERS:
        raise ConfigError(f"optim.name={optim.get('name')}: use one of {', '.join(OPTIMIZERS)}")
    _number(
        optim.get("lr"), "optim.lr", 0.0, False, "must be a positive number, e.g. optim.lr=1e-3"
    )
    _number(
        optim.get("weight_decay", 0.0), "optim.weight_decay", 0.0, True, "must be a number >= 0"
    )


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
    _check_splits(cfg["dataset"]["splits"], int(cfg["seed"]))
    _check_mint(cfg)
    _check_loggers(cfg.get("logger"))
    _check_ckpt_path(cfg.get("ckpt_path"))
    _check_model(cfg)


# ---------------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_digest(checkpoint: Mapping[str, Any]) -> str:
    """SHA-256 of a checkpoint's weights, hyper-parameters (the config that rebuilds the model),
    phase, split fingerprint and amint_pl version."""
    import torch

    digest = hashlib.sha256()
    for key in SEALED_KEYS:
        digest.update(f"{key}={checkpoint.get(key)!r}\n".encode())
    hparams = json.dumps(checkpoint["hyper_parameters"], sort_keys=True, default=str)
    digest.update(hparams.encode())
    for name, value in sorted(checkpoint["state_dict"].items()):
        if not isinstance(value, torch.Tensor):
            digest.update(f"{name}={value!r}\n".encode())
            continue
        tensor = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tensor.dtype}:{tuple(value.shape)}\n".encode())
        digest.update(tensor.view(torch.uint8).numpy())
    return digest.hexdigest()


def seal_checkpoint(checkpoint: dict[str, Any]) -> None:
    """Mark a checkpoint as amint_pl's: its version and the digest that `check_checkpoint` checks."""
    from amint_pl import __version__

    checkpoint[VERSION_KEY] = __version__
    checkpoint[DIGEST_KEY] = checkpoint_digest(checkpoint)


def check_checkpoint(checkpoint: Any, source: str | Path) -> None:
    """Refuse a checkpoint amint_pl did not write, or one changed since (CheckpointError)."""
    required = (VERSION_KEY, DIGEST_KEY, "state_dict", "hyper_parameters", "amint_phase")
    if not isinstance(checkpoint, Mapping) or any(k not in checkpoint for k in required):
        raise CheckpointError(
            f"{source} was not written by amint_pl (it has no {DIGEST_KEY}): use a checkpoint "
            "from an amint_pl run's checkpoints/ folder"
        )
    try:
        digest = checkpoint_digest(checkpoint)
    except Exception as err:
        raise CheckpointError(
            f"{source} is not a readable amint_pl checkpoint ({type(err).__name__}: {err}): use "
            "a checkpoint from an amint_pl run's checkpoints/ folder"
        ) from err
    if digest != checkpoint[DIGEST_KEY]:
        raise CheckpointError(
            f"{source} was changed after amint_pl wrote it (its weights or config no longer match "
            "its digest): use the run's original checkpoint"
        )


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, Mapping):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def check_same_experiment(saved: Mapping[str, Any], config: Mapping[str, Any], source: str) -> None:
    """Refuse to resume with a config that differs from `saved` (the config `source` was trained
    with) outside `RESUMABLE_KEYS`: ConfigError naming the first difference and what may change."""
    before, now = _flatten(saved), _flatten(config)

    def resumable(key: str) -> bool:
        return any(key == k or key.startswith(f"{k}.") for k in RESUMABLE_KEYS)

    changed = sorted(
        k
        for k in set(before) | set(now)
        if not resumable(k) and _normalised(before.get(k)) != _normalised(now.get(k))
    )
    if changed:
        key = changed[0]
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise ConfigError(
            f"ckpt_path: {source} was trained with {key}={before.get(key)!r}, not "
            f"{now.get(key)!r}{more}: resume with the run's own settings (give only what changes; "
            f"a resume may change {', '.join(RESUMABLE_KEYS)})"
        )


def check_resumable(
    checkpoint: Mapping[str, Any], config: Mapping[str, Any], split_fingerprint: str
) -> None:
    """Refuse to resume from a checkpoint trained on other splits or with a config that differs
    outside `RESUMABLE_KEYS` (ConfigError naming the first difference)."""
    saved_fingerprint = checkpoint.get("amint_split_fingerprint")
    if split_fingerprint and saved_fingerprint != split_fingerprint:
        raise ConfigError(
            "ckpt_path: the checkpoint was trained on other membership splits than this run's "
            "splits.npz: resume it in its own run directory (hydra.run.dir=<that run>)"
        )
    saved = checkpoint["hyper_parameters"].get("config", {})
    check_same_experiment(saved, config, "the run")


def _normalised(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
