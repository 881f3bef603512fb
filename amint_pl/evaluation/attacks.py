"""Classic membership inference attacks, scored from the audited model's outputs alone.

Every score is oriented so that higher means "more likely a member".
- loss (Yeom et al., 2018): minus the cross-entropy of the true label;
- confidence (Salem et al., 2019): the highest softmax probability;
- entropy (Song & Mittal, 2021): minus the prediction entropy;
- modified_entropy (Song & Mittal, 2021): minus the modified entropy, which uses the true label.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from amint_pl.models.outputs import true_label_log_probability

CLASSIC_ATTACKS = ("loss", "confidence", "entropy", "modified_entropy")


def classic_attack_scores(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, np.ndarray]:
    """Scores of every classic attack for each sample: {attack name: (N,) array}."""
    logits = logits.double()
    log_p = F.log_softmax(logits, dim=1)
    p = log_p.exp()
    true = F.one_hot(labels, logits.shape[1]).bool()
    p_true = p[true]
    entropy = -(p * log_p).sum(1)
    eps = 1e-30
    # Mentr = -(1 - p_y) log p_y - sum_{i != y} p_i log(1 - p_i)
    log_one_minus = torch.log((1 - p).clamp_min(eps))
    m_entropy = -(1 - p_true) * torch.log(p_true.clamp_min(eps)) - (p * log_one_minus).masked_fill(
        true, 0
    ).sum(1)
    scores = {
        "loss": true_label_log_probability(logits, labels),
        "confidence": p.max(1).values,
        "entropy": -entropy,
        "modified_entropy": -m_entropy,
    }
    return {name: value.cpu().numpy() for name, value in scores.items()}
