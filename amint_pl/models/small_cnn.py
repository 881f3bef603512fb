"""The embedded default's audited network: a small VGG-style CNN that answers timm's calls."""

from __future__ import annotations

import torch
from torch import nn


def _stage(in_chans: int, out_chans: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_chans, out_chans, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_chans),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_chans),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2, ceil_mode=True),
    )


class SmallCNN(nn.Module):
    """Stages of two 3x3 conv-BN-ReLU layers and a 2x2 max-pool, then average-pool and linear.

    Like a timm model it has `feature_info`, `forward_intermediates` and `forward_head`, so the
    same `Backbone` wrapper taps it.
    """

    def __init__(
        self,
        num_classes: int,
        in_chans: int = 3,
        widths: tuple[int, ...] = (32, 64, 128),
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        chans = [in_chans, *widths]
        self.stages = nn.ModuleList(_stage(chans[i], chans[i + 1]) for i in range(len(widths)))
        self.feature_info = [
            {"num_chs": w, "reduction": 2 ** (i + 1), "module": f"stages.{i}"}
            for i, w in enumerate(widths)
        ]
        self.num_features = widths[-1]
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward_intermediates(
        self, x: torch.Tensor, indices: list[int], intermediates_only: bool = False, **_: object
    ) -> tuple[torch.Tensor, list[torch.Tensor]] | list[torch.Tensor]:
        """Run every stage; return (final feature map, the feature maps of `indices`)."""
        wanted = set(indices)
        intermediates = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in wanted:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.pool(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        final, _ = self.forward_intermediates(x, [])
        return self.forward_head(final)
