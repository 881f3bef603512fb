"""The MINT head: reads the audited model's taps and outputs one membership logit."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn


def tap_branch(shape: Sequence[int], widths: Sequence[int]) -> nn.Sequential:
    """3x3 conv, ReLU, 2x2 max-pool (when the map is at least 2x2), 3x3 conv, ReLU, global max-pool."""
    channels, height, width = shape
    first, second = widths
    layers: list[nn.Module] = [nn.Conv2d(channels, first, 3, padding=1), nn.ReLU(inplace=True)]
    if min(height, width) >= 2:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.Conv2d(first, second, 3, padding=1), nn.ReLU(inplace=True)]
    layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)


class MINTHead(nn.Module):
    """One conv branch per tap, concatenated, Linear(->hidden), ReLU, Linear(->1).

    Args:
        tap_shapes: (C, H, W) of every tap, in the order the backbone returns them.
        conv_widths: the two conv widths of each branch (the paper used up to 1024/2048).
        hidden: the width of the MLP's hidden layer (the paper's 128).
        dropout: dropout before the last layer.
    """

    def __init__(
        self,
        tap_shapes: Sequence[Sequence[int]],
        conv_widths: Sequence[int] = (64, 64),
        hidden: int = 128,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(conv_widths) != 2:
            raise ValueError(f"conv_widths needs two widths, got {list(conv_widths)}")
        self.branches = nn.ModuleList(tap_branch(shape, conv_widths) for shape in tap_shapes)
        self.mlp = nn.Sequential(
            nn.Linear(conv_widths[1] * len(tap_shapes), hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )

    def forward(self, taps: Sequence[torch.Tensor]) -> torch.Tensor:
        """Return membership logits (B,) for the taps of one batch."""
        features = torch.cat(
            [branch(tap) for branch, tap in zip(self.branches, taps, strict=True)], dim=1
        )
        return self.mlp(features).squeeze(1)


def mint_head_from_config(
    head_cfg: Mapping[str, Any], tap_shapes: Sequence[Sequence[int]]
) -> nn.Module:
    """Build the MINT head that a `mint.head` config node describes, for taps of these shapes."""
    return MINTHead(
        tap_shapes,
        conv_widths=tuple(head_cfg.get("conv_widths", (64, 64))),
        hidden=int(head_cfg.get("hidden", 128)),
        dropout=float(head_cfg.get("dropout", 0.0)),
    )
