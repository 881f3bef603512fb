"""The reference-model attack: offline RMIA (Zarifzadeh et al., "Low-Cost High-Power Membership
Inference Attacks", ICML 2024). Opt-in: `attack.reference=true`.

The reference models (K models trained as `mint=off` trains the target, on data no scored sample
comes from: every x and every z is OUT for every one of them, RMIA's offline setting) are trained
or reused by `training/reference.py`; this module scores from their outputs.

Score of a sample x under the target model θ (higher = member):

    Pr(x|θ)   softmax probability of x's true label at temperature T: softmax(logits / T)[y]
              (T = 2, the RMIA authors' CIFAR-10 setting, keeps confident models' probabilities
              apart from 1)
    Pr(x)   = ((1 + a) * mean_k Pr(x|θ_k) + (1 - a)) / 2    (offline estimate of the IN/OUT mean)
    LR(x,z) = (Pr(x|θ) / Pr(x)) / (Pr(z|θ) / Pr(z))
    score   = share of z in Z with LR(x, z) > gamma
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from amint_pl.errors import ConfigError
from amint_pl.training.reference import ReferenceOutputs

METHOD = "rmia"


# ------------------------------------------------------------------------------------ the score
def check_rmia_settings(offline_a: float, gamma: float) -> None:
    """Raise ConfigError unless 0 <= offline_a < 1 and gamma > 0."""
    if not 0.0 <= offline_a < 1.0:
        raise ConfigError(f"attack.offline_a={offline_a} must lie in [0, 1)")
    if gamma <= 0:
        raise ConfigError(f"attack.gamma={gamma} must be positive")


def rmia_scores(
    target_x: np.ndarray,
    reference_x: np.ndarray,
    target_z: np.ndarray,
    reference_z: np.ndarray,
    offline_a: float,
    gamma: float,
) -> np.ndarray:
    """Offline RMIA score of each sample x.

    Args:
        target_x: (N,) Pr(x|θ), the target model's probability of each x's true label.
        reference_x: (N, K) the same under each reference model (all OUT for x).
        target_z: (M,) Pr(z|θ) of the population samples.
        reference_z: (M, K) the same under each reference model (all OUT for z).
        offline_a: the offline scaling a in [0, 1).
        gamma: the likelihood-ratio threshold (> 0).

    Returns:
        (N,) share of population samples z with LR(x, z) > gamma, in [0, 1].
    """
    check_rmia_settings(offline_a, gamma)
    target_x, target_z = np.asarray(target_x, float), np.asarray(target_z, float)
    reference_x = np.asarray(reference_x, float).reshape(len(target_x), -1)
    reference_z = np.asarray(reference_z, float).reshape(len(target_z), -1)
    if len(target_z) == 0:
        raise ValueError("RMIA needs population samples z")

    def ratio(target: np.ndarray, reference: np.ndarray) -> np.ndarray:
        marginal = 0.5 * ((1.0 + offline_a) * reference.mean(axis=1) + (1.0 - offline_a))
        return target / marginal

    ratio_x, ratio_z = ratio(target_x, reference_x), np.sort(ratio(target_z, reference_z))
    # LR(x, z) > gamma  <=>  ratio_z < ratio_x / gamma (ratios are positive): count by bisection.
    return np.searchsorted(ratio_z, ratio_x / gamma, side="left") / len(ratio_z)


def rmia_attack(
    outputs: ReferenceOutputs, attack: Mapping[str, Any]
) -> tuple[np.ndarray, dict[str, Any]]:
    """RMIA's score of each scored sample, and the attack's summary for results.json."""
    offline_a, gamma = float(attack["offline_a"]), float(attack["gamma"])
    scores = rmia_scores(
        outputs.target_x,
        outputs.reference_x,
        outputs.target_z,
        outputs.reference_z,
        offline_a,
        gamma,
    )
    summary = {"method": METHOD, **outputs.summary, "offline_a": offline_a, "gamma": gamma}
    return scores, summary
