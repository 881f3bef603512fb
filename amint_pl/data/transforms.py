"""Batched, on-device preprocessing: uint8 images -> normalised float, channels converted.

Runs on whole batches on the model's device (`on_after_batch_transfer`), never per sample in PIL.
The same module preprocesses audit inputs, so a checkpoint scores new images exactly as it trained.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# ITU-R BT.601 luma: how RGB data becomes grey for 1-channel models.
LUMA = (0.299, 0.587, 0.114)


def converted_stats(
    mean: Sequence[float], std: Sequence[float], native: int, channels: int
) -> tuple[list[float], list[float]]:
    """Mean and std after converting `native` channels to `channels` (1 <-> 3)."""
    mean, std = list(mean), list(std)
    if native == channels:
        return mean, std
    if native == 1 and channels == 3:
        return mean * 3, std * 3
    if native == 3 and channels == 1:
        return [sum(w * m for w, m in zip(LUMA, mean, strict=True))], [
            sum(w * s for w, s in zip(LUMA, std, strict=True))
        ]
    raise ValueError(f"cannot convert {native} channels to {channels}")


class BatchTransform(nn.Module):
    """uint8 (B, C_native, H, W) -> float (B, channels, H, W), normalised; optional augmentation.

    Args:
        mean, std: per native channel, in [0, 1] units.
        native_channels: the channels the data set stores.
        channels: the channels the model reads (1 <-> 3 conversion on the device).
        augment: `none`, or `flip_crop` (random horizontal flip + random translation by up to 1/8
            of the side, zero-padded), applied only in training.
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        native_channels: int,
        channels: int,
        augment: str = "none",
    ) -> None:
        super().__init__()
        if augment not in ("none", "flip_crop"):
            raise ValueError(f"augment must be 'none' or 'flip_crop', got {augment!r}")
        self.native_channels = native_channels
        self.channels = channels
        self.augment = augment
        mean_c, std_c = converted_stats(mean, std, native_channels, channels)
        self.register_buffer("mean", torch.tensor(mean_c).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std_c).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("luma", torch.tensor(LUMA).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor, train: bool = False) -> torch.Tensor:
        x = images.float().div_(255.0)
        if self.native_channels == 1 and self.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        elif self.native_channels == 3 and self.channels == 1:
            x = (x * self.luma).sum(dim=1, keepdim=True)
        x = (x - self.mean) / self.std
        if train and self.augment == "flip_crop":
            x = flip_crop(x)
        return x


def flip_crop(x: torch.Tensor) -> torch.Tensor:
    """Random horizontal flip and a random shift of up to 1/8 of the side, per sample."""
    batch, _, height, width = x.shape
    flip = torch.rand(batch, device=x.device) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    pad = max(1, height // 8)
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (batch,), device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (batch,), device=x.device)
    return _shift(padded, dy, dx, height, width)


def _shift(
    padded: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """Crop (height, width) windows from `padded` at per-sample offsets (dy, dx)."""
    batch = padded.shape[0]
    idx = torch.arange(batch, device=padded.device)
    rows = dy.view(-1, 1) + torch.arange(height, device=padded.device)  # (B, H)
    cols = dx.view(-1, 1) + torch.arange(width, device=padded.device)  # (B, W)
    return padded[
        idx.view(-1, 1, 1), :, rows.view(batch, height, 1), cols.view(batch, 1, width)
    ].permute(0, 3, 1, 2)
