"""A checkpoint's model scoring uint8 images: the AMINTModule a checkpoint holds, its class logits and
MINT logits through its own preprocessing, and P(member) as the run's report computes it. Used by
`amint_pl.audit` and the studies that re-score a finished run."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from amint_pl.errors import CheckpointError, ConfigError
from amint_pl.status import StderrProgress

if TYPE_CHECKING:
    from pathlib import Path

    from amint_pl.data.audit_inputs import Samples
    from amint_pl.training.module import AMINTModule


def build_module(
    checkpoint: dict[str, Any], path: Path, device: str, head: bool = True
) -> AMINTModule:
    """The AMINTModule the checkpoint holds, in eval mode on `device`. `head`: refuse a model
    without a MINT head (a `mint=off` run); False takes it, the audited model alone (`score`
    then gives no MINT logits). The audited phase of a passive run, whose head is not trained
    yet, is refused either way."""
    from amint_pl.training.module import AMINTModule

    module = AMINTModule(**checkpoint["hyper_parameters"])
    phase = checkpoint["amint_phase"]
    if module.mint_head is None and head:
        raise ConfigError(
            f"{path} has no MINT head (its run used mint=off): audit a run trained with "
            "mint=active or mint=passive"
        )
    if phase == "audited" and module.mint_head is not None:
        raise ConfigError(
            f"{path} is from the audited-model phase of a passive run, before its MINT head was "
            "trained: audit a checkpoint from checkpoints/mint_head/"
        )
    module.set_phase(phase)
    try:
        module.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:  # e.g. a membership memory from before its hash changed
        reason = " ".join(str(err).split())[:200]
        raise CheckpointError(
            f"{path} does not fit the model this amint_pl builds from its config ({reason}): "
            "audit it with the amint_pl that wrote it, or train it again with this one"
        ) from err
    return module.to(device).eval()


def score(
    module: AMINTModule,
    samples: Samples,
    batch_size: int,
    progress_s: float | None = None,
    what: str = "scoring",
) -> tuple[np.ndarray, np.ndarray | None]:
    """(class logits float32 (N, K), MINT logits float32 (N,)) of the samples' uint8 images,
    through the module's own preprocessing, in batches (with their labels where known). A
    module without a MINT head gives its class logits and None.

    progress_s: see `StderrProgress`."""
    import torch

    device = next(module.parameters()).device
    images, labels = samples.images, samples.labels
    logits, mint_logits = [], []
    progress = StderrProgress(what, -(-len(images) // batch_size), progress_s)
    with torch.inference_mode():
        for n, start in enumerate(range(0, len(images), batch_size), 1):
            batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
            inputs = module.on_after_batch_transfer({"images": batch.to(device)}, 0)["inputs"]
            label = None
            if labels is not None:
                label = torch.from_numpy(labels[start : start + batch_size]).to(device)
            if module.mint_head is None:
                out = module.audited(inputs)[0]
            else:
                out, mint = module(inputs, label)
                mint_logits.append(mint.float().cpu())
            logits.append(out.float().cpu())
            progress.step(n, min(start + batch_size, len(images)))
    mint = torch.cat(mint_logits).numpy() if mint_logits else None
    return torch.cat(logits).numpy(), mint


def membership_probability(mint_logits: np.ndarray) -> np.ndarray:
    """P(member) as the run's report computes it."""
    import torch

    from amint_pl.models.outputs import member_probability

    return member_probability(torch.from_numpy(mint_logits)).numpy()
