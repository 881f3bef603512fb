"""What the model's outputs say about a sample, in double precision: the probability of its true
label (the LOSS attack's score, RMIA's Pr(x|θ), the calibration AUCs) and P(member) from the MINT
head's logit (validation, the report, audit)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def true_label_log_probability(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(true label) of each sample, i.e. minus its cross-entropy (the LOSS attack's score,
    Yeom et al.); exp() of it is that probability."""
    return -F.cross_entropy(logits.double(), labels, reduction="none")


def member_probability(mint_logits: torch.Tensor) -> torch.Tensor:
    """P(member) of each sample: the sigmoid of the MINT head's logit, in double precision (a
    float32 sigmoid ties confident scores)."""
    return torch.sigmoid(mint_logits.detach().double())
