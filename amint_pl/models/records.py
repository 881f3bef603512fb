"""What the membership memory's records share (memory.py: the hashed ones; fingerprints.py: the
one read by similarity): the views of an image they read, the view of a member cropped off-centre,
and the gathering of what every DDP process wrote."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def window(images: torch.Tensor, border: int, dy: int = 0, dx: int = 0) -> torch.Tensor:
    """The images' interior clear of `border` pixels on every side, shifted by (dy, dx) from the
    centre (|dy|, |dx| <= border)."""
    h, w = images.shape[-2:]
    return images[..., border + dy : h - border + dy, border + dx : w - border + dx]


def zoomed_out(images: torch.Tensor, share: float) -> torch.Tensor:
    """Images (B, C, h, w) shrunk to `share` of their side (bilinear, antialiased) and set back in
    the middle, the edge repeated around: a crop of `share` resized back returns to the scale of
    the image it was cut from, shifted by the crop's place, which the queried shifts find."""
    h, w = images.shape[-2:]
    small = (max(1, round(share * h)), max(1, round(share * w)))
    x = F.interpolate(images, size=small, mode="bilinear", antialias=True, align_corners=False)
    top, left = (h - small[0]) // 2, (w - small[1]) // 2
    pad = (left, w - small[1] - left, top, h - small[0] - top)
    return F.pad(x, pad, mode="replicate")


def cropped_back(images: torch.Tensor, share: float) -> torch.Tensor:
    """A crop of `share` of each side at (1, 1) (nearer the corner when the crop leaves less
    room), resized back (bilinear, antialiased): what a copy cropped off-centre looks like."""
    h, w = images.shape[-2:]
    small = (max(1, round(share * h)), max(1, round(share * w)))
    top, left = min(1, h - small[0]), min(1, w - small[1])
    part = images[..., top : top + small[0], left : left + small[1]]
    return F.interpolate(part, size=(h, w), mode="bilinear", antialias=True, align_corners=False)


def gather_rows(rows: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every process's (rows, values), concatenated, on every process."""
    world = torch.distributed.get_world_size()
    counts = [torch.zeros(1, dtype=torch.long, device=rows.device) for _ in range(world)]
    torch.distributed.all_gather(counts, torch.tensor([len(rows)], device=rows.device))
    most = int(max(c.item() for c in counts))
    padded_rows = torch.zeros(most, dtype=rows.dtype, device=rows.device)
    padded_values = torch.zeros(most, values.shape[1], dtype=values.dtype, device=values.device)
    padded_rows[: len(rows)], padded_values[: len(rows)] = rows, values
    all_rows = [torch.empty_like(padded_rows) for _ in range(world)]
    all_values = [torch.empty_like(padded_values) for _ in range(world)]
    torch.distributed.all_gather(all_rows, padded_rows)
    torch.distributed.all_gather(all_values, padded_values)
    n = [int(c.item()) for c in counts]
    return (
        torch.cat([r[:k] for r, k in zip(all_rows, n, strict=True)]),
        torch.cat([v[:k] for v, k in zip(all_values, n, strict=True)]),
    )
