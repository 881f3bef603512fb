"""The reference models of the reference-model attack (offline RMIA, scored by
`evaluation/reference.py`): their data, their recipe, training or reusing them, and their outputs.

Reference models: K copies of the audited network trained with the target's recipe as `mint=off`
trains it (same model config, optimiser, batch size, early stopping on `val/aud_acc`) on training
sets as large as the target's D, for as many optimiser steps as the target takes. Their data is the
`population` role, less a held-out slice Z (`attack.population_fraction`) that serves as RMIA's
population samples z; where the train pool leaves too few of them, the external pool E stands in.
No reference model sees a member of the target, a test-pool sample or a z.

Reference models are cached as `<run dir>/reference_models/ref<k>.ckpt` (or under
`attack.reference_dir`, which several runs may share) with the fingerprint of their training set
and a digest of their recipe, and reused when both match.
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from amint_pl.checkpoints import load_checkpoint, read_checkpoint
from amint_pl.data.splits import POOL_NAMES, ROLE_CODES, ROLES, MembershipSplits, fingerprint
from amint_pl.errors import CheckpointError, ConfigError
from amint_pl.models.outputs import true_label_log_probability

log = logging.getLogger(__name__)

CACHE_FORMAT = "amint_pl reference model v1"
# The recipe of a reference model: what its weights depend on besides its training half.
# (Paths, the device and the loggers are left out: a cache moves between machines.)
RECIPE_KEYS = ("model", "optim", "batch_size", "early_stopping_patience")
DATASET_KEYS_IGNORED = ("root", "cache_dir", "download", "on_device")


@dataclass
class ReferenceOutputs:
    """What RMIA scores from: Pr(.|θ) of the target and of each reference model, for the scored
    samples x and the population samples z, and how the reference models were made."""

    target_x: np.ndarray  # (N,)
    reference_x: np.ndarray  # (N, K)
    target_z: np.ndarray  # (M,)
    reference_z: np.ndarray  # (M, K)
    summary: dict[str, Any]


# ----------------------------------------------------------------------------- the data roles
def reference_data(splits: MembershipSplits, population_fraction: float) -> tuple[np.ndarray, str]:
    """The samples the reference models and RMIA's z come from, and which role they are.

    The `population` role (train-pool samples the target never touched) when it can give every
    reference model a training set as large as the target's D beside the z; else the external
    pool E, which a `mint=active` or `passive` target trained on as MINT negatives.
    """
    population = splits["population"]
    if len(population) - _n_population(len(population), population_fraction) > len(splits.members):
        return population, "population"
    return splits["external"], "external"


def _n_population(n: int, population_fraction: float) -> int:
    return max(1, int(round(n * population_fraction)))


def reference_roles(
    data: np.ndarray, k_models: int, population_fraction: float, seed: int, train_size: int
) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """Split the reference data into RMIA's population samples Z and K training sets.

    Each reference model trains on `train_size` samples (the target's |D|), or on all but one of
    the data left after Z when that is fewer; models 2p and 2p + 1 take disjoint sets of the same
    permutation when it holds two of them.

    Returns:
        (Z, [(training set of reference model k, the rest), ...]); the rest only fills the
        external side of its batches (a `mint=off` recipe never trains on it).
    """
    if k_models < 1:
        raise ConfigError(f"attack.reference_models={k_models}: train at least 1 reference model")
    if not 0.0 < population_fraction < 1.0:
        raise ConfigError(f"attack.population_fraction={population_fraction} must lie in (0, 1)")
    data = np.sort(np.asarray(data, dtype=np.int64))
    rng = np.random.default_rng([seed, 0x524D4941])  # "RMIA"
    order = rng.permutation(data)
    n_population = _n_population(len(data), population_fraction)
    population, rest = np.sort(order[:n_population]), order[n_population:]
    if len(rest) < 4:
        raise ConfigError(
            f"the reference data ({len(data)} samples) leaves {len(rest)} to train reference "
            "models on: raise dataset.splits.external or lower attack.population_fraction"
        )
    n = min(train_size, len(rest) - 1)
    sets = []
    for k in range(k_models):
        pair = np.random.default_rng([seed, 0x524D4941, k // 2]).permutation(rest)
        start = 0 if k % 2 == 0 else (n if 2 * n <= len(pair) else len(pair) - n)
        chosen = np.zeros(len(pair), dtype=bool)
        chosen[start : start + n] = True
        sets.append((np.sort(pair[chosen]), np.sort(pair[~chosen])))
    return population, sets


def reference_splits(
    splits: MembershipSplits, half: np.ndarray, other: np.ndarray
) -> MembershipSplits:
    """The roles a reference model trains with: members = its training set (a slice of it for
    validation), the rest only fills the external side of the batches (the audited phase never
    trains on it), the target's calibration non-members for model selection."""
    n_calib = max(1, int(round(len(half) * 0.1)))
    empty = np.zeros(0, dtype=np.int64)
    return MembershipSplits(
        {
            "members_seen": half,
            "members_unseen": empty,
            "external": other,
            "nonmembers_calib": splits["nonmembers_calib"],
            "nonmembers_eval": empty,
            "members_seen_calib": half[:n_calib],
            "members_unseen_calib": empty,
        },
        splits.seed,
        dict(splits.pool_sizes),
    )


def reference_config(cfg: DictConfig, target_members: int, train_size: int) -> DictConfig:
    """The run config as `mint=off` trains it: the reference models' recipe. A reference model
    with fewer training samples than the target's members trains for more epochs, so that it
    takes as many optimiser steps as the target."""
    ref = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    ref.mint.mode = "off"
    ref.mint.monitor = "val/aud_acc"
    ref.mint.monitor_mode = "max"
    half = int(cfg.batch_size) // 2
    steps = int(cfg.trainer.max_epochs) * math.ceil(target_members / half)
    ref.trainer.max_epochs = math.ceil(steps / math.ceil(train_size / half))
    return ref


def recipe_digest(cfg: DictConfig) -> str:
    """SHA-256 of what a reference model's weights depend on besides its data: the data set's
    settings, the model, the optimiser, the batch size, the epochs and early stopping."""
    data = OmegaConf.to_container(cfg, resolve=True)
    recipe = {key: data.get(key) for key in RECIPE_KEYS}
    recipe["dataset"] = {k: v for k, v in data["dataset"].items() if k not in DATASET_KEYS_IGNORED}
    recipe["max_epochs"] = data["trainer"].get("max_epochs")
    text = OmegaConf.to_yaml(OmegaConf.create(recipe), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- training, caching
def _keys(pool: np.ndarray, role: np.ndarray, index: np.ndarray) -> np.ndarray:
    return (
        pool.astype(np.int64) * (1 << 40)
        + role.astype(np.int64) * (1 << 32)
        + index.astype(np.int64)
    )


def _model_outputs(
    predictions: list[Mapping[str, torch.Tensor]], row_keys: np.ndarray, temperature: float
) -> tuple[np.ndarray, np.ndarray]:
    """(Pr(x|θ) at the temperature, whether θ classifies x right) of every scored row, in
    row_keys' order."""
    cat = {k: torch.cat([p[k].detach().cpu() for p in predictions]) for k in predictions[0]}
    keys = _keys(cat["pool"].numpy(), cat["role"].numpy(), cat["index"].numpy())
    logits = cat["logits"].double() / temperature
    probability = true_label_log_probability(logits, cat["labels"]).exp().numpy()
    correct = (cat["logits"].argmax(1) == cat["labels"]).numpy()
    order = np.argsort(keys, kind="stable")
    pos = np.searchsorted(keys[order], row_keys)
    if len(row_keys) and (pos.max() >= len(keys) or (keys[order][pos] != row_keys).any()):
        raise ValueError("a reference model did not score every sample")
    return probability[order][pos], correct[order][pos]


def _load_cached(path: Path, members_fingerprint: str, digest: str) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        cached = read_checkpoint(path, mmap=False)
    except CheckpointError as err:  # a partial or foreign file
        raise CheckpointError(
            f"{path} is not a readable reference model ({err.__cause__.__class__.__name__}): "
            "delete it to retrain"
        ) from err
    if (
        not isinstance(cached, dict)
        or cached.get("format") != CACHE_FORMAT
        or cached.get("members_fingerprint") != members_fingerprint
    ):
        raise CheckpointError(
            f"{path} was trained on other data (another seed or split): delete it, or point "
            "attack.reference_dir elsewhere, to retrain"
        )
    if cached.get("recipe_digest") != digest:
        raise CheckpointError(
            f"{path} was trained with another recipe (model, optimiser, epochs, batch size or "
            "data set settings): delete it, or point attack.reference_dir elsewhere, to retrain"
        )
    return cached


def _cache_dir(cfg: DictConfig, run_dir: Path) -> Path:
    reference_dir = cfg.attack.get("reference_dir")
    return Path(reference_dir).resolve() if reference_dir else run_dir / "reference_models"


def check_reference_models(
    cfg: DictConfig, splits: MembershipSplits, run_dir: Path
) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]], str]:
    """Check the reference data and any cached reference models before anything trains (the
    `attack` settings themselves are checked with the config, by `validate_config`).

    Returns:
        (RMIA's population samples Z, the training sets, the role they come from), as
        `reference_data` and `reference_roles` choose them.

    Raises:
        ConfigError: a reference data set too small to draw from.
        CheckpointError: a cached reference model of other data or another recipe.
    """
    attack = cfg.attack
    fraction = float(attack.population_fraction)
    data, source = reference_data(splits, fraction)
    population, sets = reference_roles(
        data, int(attack.reference_models), fraction, int(cfg.seed), len(splits.members)
    )
    digest = recipe_digest(reference_config(cfg, len(splits.members), len(sets[0][0])))
    for k, (half, _) in enumerate(sets):
        _load_cached(_cache_dir(cfg, run_dir) / f"ref{k}.ckpt", fingerprint(half), digest)
    return population, sets, source


def reference_model_outputs(
    cfg: DictConfig,
    benchmark: Any,
    splits: MembershipSplits,
    samples: Any,
    target: Any,
    run_dir: Path,
    make_trainer: Callable[[DictConfig, Path], Any],
) -> ReferenceOutputs:
    """Train (or reuse) the reference models; their outputs and the target's on every scored
    sample and on RMIA's population samples.

    Args:
        cfg: the run config (its `attack` node: reference_models, population_fraction, offline_a,
            gamma, reference_dir).
        benchmark: the data set's pools.
        splits: the target's membership splits.
        samples: the target's ScoredSamples (their rows are the rows scored).
        target: the trained target model (an AMINTModule).
        run_dir: the run directory (the default cache: run_dir/reference_models).
        make_trainer: (reference config, root dir) -> a Lightning Trainer with the run's recipe.

    Returns:
        what RMIA scores from, for each row of samples.
    """
    import lightning as L

    from amint_pl.data.datamodule import MembershipDataModule
    from amint_pl.distributed import gather_predictions
    from amint_pl.training.module import AMINTModule
    from amint_pl.training.phases import best_path

    attack = cfg.attack
    k_models = int(attack.reference_models)
    seed = int(cfg.seed)
    population, halves, source = check_reference_models(cfg, splits, run_dir)
    if source != "population":
        log.warning(
            "RMIA: the train pool leaves %d samples outside D and E, too few for reference "
            "models as large as the target's %d members: they and the z come from E%s; lower "
            "dataset.splits.external to make room",
            len(splits["population"]),
            len(splits.members),
            # Only an active target's MINT loss reaches the layers whose outputs RMIA reads.
            ", which the target trained on as MINT negatives" if cfg.mint.mode == "active" else "",
        )
    cache_dir = _cache_dir(cfg, run_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    ref_cfg = reference_config(cfg, len(splits.members), len(halves[0][0]))
    digest = recipe_digest(ref_cfg)
    on_device = bool(cfg.dataset.get("on_device", False))
    # The target's scored samples, and the z when they come from the population role.
    z_only = population if source == "population" else np.zeros(0, dtype=np.int64)
    scoring_splits = MembershipSplits(
        {**splits.indices, "population": z_only}, splits.seed, dict(splits.pool_sizes)
    )
    scored = MembershipDataModule(
        benchmark,
        scoring_splits,
        int(cfg.batch_size),
        int(cfg.eval_batch_size),
        seed,
        on_device=on_device,
        scored_roles=(*ROLES, "population"),
    )
    pool_code = {name: i for i, name in enumerate(POOL_NAMES)}
    sample_keys = _keys(
        np.array([pool_code[p] for p in samples.pool]),
        np.array([ROLE_CODES[r] for r in samples.role]),
        samples.index,
    )
    z_keys = _keys(
        np.full(len(population), pool_code["train"]),
        np.full(len(population), ROLE_CODES[source]),
        population,
    )
    row_keys = np.concatenate([sample_keys, z_keys])
    n_x = len(sample_keys)
    temperature = float(attack.temperature)

    def outputs(trainer: Any, model: Any) -> tuple[np.ndarray, np.ndarray]:
        # Under DDP each rank scores its shard: every rank gets them all.
        predictions = gather_predictions(trainer.predict(model, datamodule=scored))
        return _model_outputs(predictions, row_keys, temperature)

    started = time.time()
    reference_probability, reused, test_acc = [], [], []
    eval_rows = samples.role == "nonmembers_eval"
    for k, (half, other) in enumerate(halves):
        path = cache_dir / f"ref{k}.ckpt"
        members_fingerprint = fingerprint(half)
        ref_splits = reference_splits(splits, half, other)
        ref_seed = int(np.random.default_rng([seed, k]).integers(2**31 - 1))
        L.seed_everything(ref_seed, workers=True, verbose=False)
        module = AMINTModule.for_benchmark(ref_cfg, benchmark, ("paper",), ref_splits.fingerprint())
        module.membership_curves.plot_name = None
        work_dir = cache_dir / f"ref{k}.work"
        trainer = make_trainer(ref_cfg, work_dir)
        cached = _load_cached(path, members_fingerprint, digest)
        if cached is not None:
            log.info("reference model %d/%d: reusing %s", k + 1, k_models, path)
            module.load_state_dict(cached["state_dict"])
        else:
            log.info(
                "reference model %d/%d: training on %d %s samples for %d epochs (mint=off "
                "recipe) -> %s",
                k + 1,
                k_models,
                len(half),
                source,
                int(ref_cfg.trainer.max_epochs),
                path,
            )
            datamodule = MembershipDataModule(
                benchmark,
                ref_splits,
                int(cfg.batch_size),
                int(cfg.eval_batch_size),
                ref_seed,
                on_device=on_device,
            )
            trainer.fit(module, datamodule=datamodule)
            best = best_path(trainer)
            if best:
                module.load_state_dict(load_checkpoint(best)["state_dict"])
            if trainer.is_global_zero:
                tmp = path.with_suffix(".ckpt.tmp")
                torch.save(
                    {
                        "format": CACHE_FORMAT,
                        "state_dict": module.state_dict(),
                        "members_fingerprint": members_fingerprint,
                        "recipe_digest": digest,
                        "seed": ref_seed,
                    },
                    tmp,
                )
                tmp.replace(path)  # atomic: runs sharing the folder never read half a file
                shutil.rmtree(work_dir, ignore_errors=True)
        reused.append(cached is not None)
        probability, correct = outputs(trainer, module)
        reference_probability.append(probability)
        test_acc.append(float(correct[:n_x][eval_rows].mean()) if eval_rows.any() else math.nan)
    reference = np.stack(reference_probability, axis=1)
    target_outputs, _ = outputs(trainer, target)
    summary = {
        "reference_models": k_models,
        "reused": int(sum(reused)),
        "population_source": source,
        "population": len(population),
        "training_size": len(halves[0][0]),
        "target_members": len(splits.members),
        "epochs": int(ref_cfg.trainer.max_epochs),
        "temperature": temperature,
        "reference_dir": str(cache_dir),
        "reference_test_acc": test_acc,
        "wall_time_s": round(time.time() - started, 2),
    }
    return ReferenceOutputs(
        target_outputs[:n_x], reference[:n_x], target_outputs[n_x:], reference[n_x:], summary
    )
