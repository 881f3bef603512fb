"""The MINT head: reads the audited model's taps and outputs one membership logit."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from amint_pl.errors import ConfigError
from amint_pl.models.memory import memory_margin

HEAD_KEYS = (
    "conv_widths",
    "token_width",
    "hidden",
    "dropout",
    "output_features",
    "tap_features",
    "detach_outputs",
    "lr",
)
# Statistics of the audited model's outputs that the head may read beside its taps
# (`mint.head.output_features`), each on a log scale where membership shows:
# loss: log CE of the true label; probs: the sorted log-probabilities; entropy: log entropy;
# memory: the membership memory's margin at the label (needs `mint.memory`, models/memory.py).
OUTPUT_FEATURES = ("loss", "probs", "entropy", "memory")
# The features read at the sample's label (an unlabelled sample's is its predicted class).
LABELLED_FEATURES = ("loss", "memory")


def need_logits(names: Sequence[str]) -> bool:
    """Whether the output features `names` of labelled samples need the class logits: all but
    the memory's."""
    return any(name != "memory" for name in names)


def output_statistics(
    logits: torch.Tensor | None,
    labels: torch.Tensor | None,
    names: Sequence[str],
    memory_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, k) features of the audited model's outputs, in the order of `names`.

    `labels` None (an audit of unlabelled images) uses the predicted class as the label.
    `memory_logits` are the membership memory's (B, classes) logits, for the `memory` feature.
    `logits` may be None where the labels are given and `memory` is the only feature.
    """
    if logits is None:
        if labels is None or need_logits(names):
            raise ValueError(f"the output features {list(names)} need the class logits: pass them")
        log_p = None
    else:
        log_p = torch.log_softmax(logits.float(), dim=1)
    if labels is None:
        labels = log_p.argmax(1)
    columns = []
    for name in names:
        if name == "loss":
            loss = -log_p.gather(1, labels.view(-1, 1))
            columns.append(torch.log(loss + 1e-6))
        elif name == "probs":
            columns.append(log_p.sort(dim=1, descending=True).values.clamp_min(-20.0))
        elif name == "entropy":
            entropy = -(log_p.exp() * log_p).sum(1, keepdim=True)
            columns.append(torch.log(entropy + 1e-6))
        elif name == "memory":
            if memory_logits is None:
                raise ValueError("the memory feature needs the membership memory's logits")
            columns.append(25.0 * memory_margin(memory_logits.float(), labels)[:, None])
        else:
            raise ValueError(f"unknown output feature {name!r}: use {', '.join(OUTPUT_FEATURES)}")
    return torch.cat(columns, dim=1) / 5.0  # roughly unit scale


def output_feature_width(names: Sequence[str], num_classes: int) -> int:
    return sum(num_classes if name == "probs" else 1 for name in names)


class SmallMapConv2d(nn.Conv2d):
    """A 3x3 convolution with padding 1 that, on a map of at most `SMALL_MAP` positions, computes
    only the products whose kernel position falls inside the map.

    On a 2x2 map a 3x3 kernel meets the map at 16 of the 36 (output position, kernel position)
    pairs, on a 1x1 map at 1 of 9: the rest multiply the zero padding. Here each kernel position
    is one matrix product over the output positions it reaches (a shifted 1x1 convolution), so
    the result equals `nn.Conv2d`'s up to the order of the sums, with the same parameters (and
    the same state dict). Larger maps take `nn.Conv2d`'s own path.
    """

    SMALL_MAP = 9

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, channels, height, width = x.shape
        if height * width > self.SMALL_MAP:
            return super().forward(x)
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        # (kernel position, in, out): one contiguous matrix per kernel position; one cast.
        kernels = self.weight.to(dtype).permute(2, 3, 1, 0).reshape(9, channels, -1).unbind(0)
        rows = x.to(dtype).permute(0, 2, 3, 1)  # (N, H, W, C)
        out = None
        for position, kernel in enumerate(kernels):
            dy, dx = position // 3 - 1, position % 3 - 1
            top, bottom = max(0, -dy), min(height, height - dy)
            left, right = max(0, -dx), min(width, width - dx)
            if top >= bottom or left >= right:
                continue  # this kernel position meets only padding
            part = rows[:, top + dy : bottom + dy, left + dx : right + dx] @ kernel
            # Summed in float32, as a convolution accumulates, and rounded to `dtype` once.
            part = nn.functional.pad(
                part.float(), (0, 0, left, width - right, top, height - bottom)
            )
            out = part if out is None else out + part
        return (out + self.bias).to(dtype).permute(0, 3, 1, 2)


def tap_branch(shape: Sequence[int], widths: Sequence[int]) -> nn.Sequential:
    """3x3 conv, ReLU, 2x2 max-pool (when the map is at least 2x2), 3x3 conv, ReLU, global max-pool."""
    channels, height, width = shape
    first, second = widths
    layers: list[nn.Module] = [SmallMapConv2d(channels, first), nn.ReLU(inplace=True)]
    if min(height, width) >= 2:
        layers.append(nn.MaxPool2d(2))
    layers += [SmallMapConv2d(first, second), nn.ReLU(inplace=True)]
    layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)


def token_branch(shape: Sequence[int], width: int) -> nn.Sequential:
    """A linear layer over all of a tap's values (a ViT block's (N, C) tokens), then ReLU."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), width), nn.ReLU(inplace=True))


class MINTHead(nn.Module):
    """One branch per tap, concatenated, Linear(->hidden), ReLU, Linear(->1).

    A (C, H, W) tap gets a conv branch (`tap_branch`); an (N, C) tap of tokens, or a (C,)
    vector, gets a linear branch (`token_branch`). Any number of taps, of any of these shapes.
    Optionally the head also reads statistics of the audited model's outputs
    (`output_statistics`), concatenated with the branches' features; with `use_taps=False` it
    reads those statistics alone.

    Args:
        tap_shapes: the shape of every tap without the batch dimension, in the backbone's order.
        conv_widths: the two conv widths of each conv branch (the paper: 1024, 2048).
        hidden: the width of the MLP's hidden layer (the paper's 128).
        dropout: dropout before the last layer.
        token_width: the output width of each linear (token) branch.
        output_features: names from OUTPUT_FEATURES the head reads beside its taps.
        num_classes: the audited model's classes (sizes the `probs` feature).
        use_taps: read the taps (False: output statistics only).
        detach_outputs: stop the MINT gradient at the output statistics, so that it reaches the
            backbone through the taps only (it would otherwise push external samples' loss up).
    """

    def __init__(
        self,
        tap_shapes: Sequence[Sequence[int]],
        conv_widths: Sequence[int] = (64, 64),
        hidden: int = 128,
        dropout: float = 0.0,
        token_width: int = 64,
        output_features: Sequence[str] = (),
        num_classes: int = 0,
        use_taps: bool = True,
        detach_outputs: bool = True,
    ) -> None:
        super().__init__()
        if len(conv_widths) != 2:
            raise ValueError(f"conv_widths needs two widths, got {list(conv_widths)}")
        if not tap_shapes and use_taps:
            raise ValueError("the MINT head needs at least one tap")
        self.output_features = tuple(output_features)
        self.use_taps = use_taps
        self.detach_outputs = detach_outputs
        if not use_taps and not self.output_features:
            raise ValueError("a MINT head without taps needs output features")
        branches, features = [], output_feature_width(self.output_features, num_classes)
        for shape in tap_shapes if use_taps else ():
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

    @property
    def reads_network(self) -> bool:
        """Whether the head reads the audited network (its taps or its class logits) and not
        the membership memory alone: a labelled sample's `memory` feature needs no logits."""
        return self.use_taps or need_logits(self.output_features)

    def forward(
        self,
        taps: Sequence[torch.Tensor],
        logits: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        memory_logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return membership logits (B,) for the taps (and class logits, labels, the membership
        memory's logits) of one batch."""
        parts = (
            [branch(tap) for branch, tap in zip(self.branches, taps, strict=True)]
            if self.use_taps
            else []
        )
        if self.output_features:
            if logits is not None and self.detach_outputs:
                logits = logits.detach()
            if memory_logits is not None:
                memory_logits = memory_logits.detach()  # the memory learns from CE alone
            parts.append(output_statistics(logits, labels, self.output_features, memory_logits))
        return self.mlp(torch.cat(parts, dim=1)).squeeze(1)


def mint_head_from_config(
    head_cfg: Mapping[str, Any], tap_shapes: Sequence[Sequence[int]], num_classes: int = 0
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
        output_features=_output_features(head_cfg.get("output_features") or ()),
        num_classes=num_classes,
        use_taps=bool(head_cfg.get("tap_features", True)),
        detach_outputs=bool(head_cfg.get("detach_outputs", True)),
    )


def _output_features(names: Sequence[str]) -> tuple[str, ...]:
    unknown = [n for n in names if n not in OUTPUT_FEATURES]
    if unknown:
        raise ConfigError(
            f"mint.head.output_features: '{unknown[0]}' is unknown: use any of {', '.join(OUTPUT_FEATURES)}"
        )
    return tuple(str(n) for n in names)
