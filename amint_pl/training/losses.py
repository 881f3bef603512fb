"""Loss weighting of the aMINT objective L = w_aud * CE + w_mint * BCE."""

from __future__ import annotations

import torch
from torch import nn

WEIGHTINGS = ("fixed", "initial")


class LossWeighting(nn.Module):
    """Combine the audited (CE) and MINT (BCE) terms.

    `fixed`: w_aud * CE + w_mint * BCE. `initial` (the paper's): each term is first divided by its
    value on the first training batch. Those first values live in a buffer, so a checkpoint keeps
    them and a resumed run divides by the same numbers.
    """

    def __init__(self, weighting: str, w_aud: float, w_mint: float) -> None:
        super().__init__()  # `weighting` is one of WEIGHTINGS (validate_config)
        self.weighting = weighting
        self.w_aud, self.w_mint = w_aud, w_mint
        # [CE, BCE] on the first batch; 0 = not seen yet.
        self.register_buffer("initial_losses", torch.zeros(2))

    def forward(self, ce: torch.Tensor | None, bce: torch.Tensor | None) -> torch.Tensor:
        """The weighted sum of the terms that are present (None = absent in this phase)."""
        total = None
        for slot, (term, weight) in enumerate(((ce, self.w_aud), (bce, self.w_mint))):
            if term is None:
                continue
            if self.weighting == "initial":
                scale = self.initial_losses[slot]
                # Without a host sync: set the scale where it is still 0, keep it elsewhere.
                scale = torch.where(scale > 0, scale, term.detach().clamp_min(1e-8))
                self.initial_losses[slot] = scale
                term = term / scale
            term = weight * term
            total = term if total is None else total + term
        if total is None:
            raise ValueError("no loss term in this step")
        return total
