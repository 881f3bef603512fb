"""The MINT head: reads the audited model's taps and outputs one membership logit."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from amint_pl.errors import ConfigError

HEAD_KEYS = ("conv_widths", "token_width", "hidden", "dropout")


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


def token_branch(shape: Sequence[int], width: int) -> nn.Sequential:
    """A linear layer over all of a tap's values (a ViT block's (N, C) tokens), then ReLU."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), width), nn.ReLU(inplace=True))


class MINTHead(nn.Module):
    """One branch per tap, concatenated, Linear(->hidden), ReLU, Linear(->1).

    A (C, H, W) tap gets a conv branch (`tap_branch`); an (N, C) tap of tokens, or a (C,)
    vector, gets a linear branch (`token_branch`). Any number of taps, of any of these shapes.

    Args:
        tap_shapes: the shape of every tap without the batch dimension, in the backbone's order.
        conv_widths: the two conv widths of each conv branch (the paper: 1024, 2048).
        hidden: the width of the MLP's hidden layer (the paper's 128).
        dropout: dropout before the last layer.
        token_width: the output width of each linear (token) branch.
    """

    def __init__(
        self,
        tap_shapes: Sequence[Sequence[int]],
        conv_widths: Sequence[int] = (64, 64),
        hidden: int = 128,
        dropout: float = 0.0,
        token_width: int = 64,
    ) -> None:
        super().__init__()
        if len(conv_widths) != 2:
            raise ValueError(f"conv_widths needs two widths, got {list(conv_widths)}")
        if not tap_shapes:
            raise ValueError("the MINT head needs at least one tap")
        branches, features = [], 0
        for shape in tap_shapes:
            if len(shape) == 3:
                branches.append(tap_branch(shape, conv_widths))
                features += conv_widths[1]
            elif len(shape) in (1, 2):
                branches.append(token_branch(shape, token_width))
                features += token_width
            else:
                raise ValueError(
                    f"a tap of shape {tuple(shape)}: expected (C, H, W), (N, C) or (C,)"
                )
        self.branches = nn.ModuleList(branches)
        self.mlp = nn.Sequential(
            nn.Linear(features, hidden),
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
    """Build the MINT head that a `mint.head` config node (conf/mint/head/*.yaml) describes."""
    unknown = sorted(set(head_cfg) - set(HEAD_KEYS))
    if unknown:
        raise ConfigError(
            f"mint.head.{unknown[0]} is no head setting: use {', '.join(HEAD_KEYS)} (or mint/head=light|paper)"
        )
    conv_widths = tuple(int(w) for w in head_cfg.get("conv_widths", (64, 64)))
    if len(conv_widths) != 2:
        raise ConfigError(
            f"mint.head.conv_widths={list(conv_widths)}: give two widths, e.g. [64, 64]"
        )
    return MINTHead(
        [tuple(shape) for shape in tap_shapes],
        conv_widths=conv_widths,
        hidden=int(head_cfg.get("hidden", 128)),
        dropout=float(head_cfg.get("dropout", 0.0)),
        token_width=int(head_cfg.get("token_width", 64)),
    )
