"""Checkpoints: reading, sealing and checking, for the run, resume, audit and the reference models.

`seal_checkpoint` adds the amint_pl version and a SHA-256 digest of the weights and of the config
that rebuilds the model; `check_checkpoint` refuses a file without them or whose digest no longer
matches (`CheckpointError`); `check_resumable` refuses to resume a run with a config that would
change its result. `read_checkpoint` loads any checkpoint safely (weights_only), `load_checkpoint`
also checks that amint_pl wrote it, unchanged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from amint_pl.errors import CheckpointError, ConfigError

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


def read_checkpoint(path: str | Path, mmap: bool = True) -> dict[str, Any]:
    """A checkpoint loaded safely (weights_only) on the CPU, its tensors memory-mapped."""
    import torch

    if not Path(path).is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist: give a .ckpt from a run's checkpoints/<phase>/"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:
        reason = " ".join(str(err).split())[:160] or type(err).__name__
        raise CheckpointError(
            f"{path} is not a checkpoint amint_pl wrote (it does not load as plain weights: "
            f"{reason}): use a checkpoint from an amint_pl run's checkpoints/ folder"
        ) from err


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint amint_pl wrote and nobody changed since (else CheckpointError)."""
    checkpoint = read_checkpoint(path)
    check_checkpoint(checkpoint, path)
    return checkpoint


def checkpoint_progress(path: str | Path) -> dict[str, Any]:
    """A checkpoint's phase, epoch, global step, whether early stopping ended it, and whether it
    holds the whole training state (`resumable`: a last.ckpt, not a weights-only best-*.ckpt)."""
    ckpt = read_checkpoint(path)
    stopped = any(
        name.startswith("EarlyStopping") and int(state.get("stopped_epoch", 0)) > 0
        for name, state in ckpt.get("callbacks", {}).items()
    )
    return {
        "phase": ckpt.get("amint_phase"),
        "epoch": int(ckpt.get("epoch", 0)),
        "global_step": int(ckpt.get("global_step", 0)),
        "stopped_early": stopped,
        "resumable": "optimizer_states" in ckpt,
    }


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


def _normalised(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


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
