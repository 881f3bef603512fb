"""Audited backbones: every architecture answers `(logits, taps) = model(x)` in one forward pass.

A backbone wraps a network that answers timm's calls (`feature_info`, `forward_intermediates`,
`forward_head`): any timm model, or our `SmallCNN`. Taps are indices into `feature_info` (the
network's stages), chosen by a preset (`entry`, `middle`, `output`) or explicitly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from amint_pl.errors import ConfigError
from amint_pl.models.small_cnn import SmallCNN

TAP_PRESETS = ("entry", "middle", "output")


@dataclass(frozen=True)
class TapInfo:
    """What a tap is: its stage index, module name, and shape (C, H, W) at the configured input."""

    index: int
    module: str
    shape: tuple[int, ...]

    @property
    def channels(self) -> int:
        return self.shape[0]


def default_tap_presets(n_stages: int) -> dict[str, list[int]]:
    """entry = the first stage, middle = the middle one, output = the last."""
    return {"entry": [0], "middle": [n_stages // 2], "output": [n_stages - 1]}


def resolve_taps(
    taps: str | Sequence[int], presets: Mapping[str, Sequence[int]], n_stages: int
) -> list[int]:
    """Turn a preset name or explicit stage indices into sorted, checked stage indices."""
    if isinstance(taps, str):
        if taps not in presets:
            raise ConfigError(
                f"mint.taps='{taps}' is no preset: use one of {', '.join(presets)} or a list of stage indices"
            )
        indices = list(presets[taps])
    else:
        indices = [int(i) for i in taps]
    if not indices:
        raise ConfigError("mint.taps is empty: name a preset or at least one stage index")
    bad = [i for i in indices if not 0 <= i < n_stages]
    if bad:
        raise ConfigError(
            f"mint.taps={indices}: index {bad[0]} is out of range; this model has stages 0..{n_stages - 1}"
        )
    return sorted(set(indices))


class Backbone(nn.Module):
    """The audited network with its taps: `forward(x) -> (class logits, [tap activations])`."""

    def __init__(
        self, network: nn.Module, tap_indices: Sequence[int], in_chans: int, img_size: int
    ) -> None:
        super().__init__()
        self.network = network
        self.tap_indices = list(tap_indices)
        self.tap_info = self._probe(in_chans, img_size)

    @property
    def stage_names(self) -> list[str]:
        return [str(info["module"]) for info in self.network.feature_info]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        final, taps = self.network.forward_intermediates(
            x, indices=self.tap_indices, intermediates_only=False
        )
        return self.network.forward_head(final), list(taps)

    @torch.no_grad()
    def _probe(self, in_chans: int, img_size: int) -> list[TapInfo]:
        was_training = self.training
        self.eval()
        _, taps = self(torch.zeros(1, in_chans, img_size, img_size))
        self.train(was_training)
        names = self.stage_names
        return [
            TapInfo(i, names[i], tuple(t.shape[1:]))
            for i, t in zip(self.tap_indices, taps, strict=True)
        ]


def create_network(
    name: str, num_classes: int, in_chans: int, img_size: int, **kwargs: object
) -> nn.Module:
    """Build the bare network: `small_cnn`, or any timm model name (from scratch)."""
    if name == "small_cnn":
        return SmallCNN(num_classes, in_chans, **kwargs)
    import timm

    if not timm.is_model(name):
        raise ConfigError(
            f"unknown model '{name}': use a config of conf/model or any timm model name (timm.list_models())"
        )
    return timm.create_model(
        name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs
    )


def build_backbone(
    name: str,
    num_classes: int,
    in_chans: int,
    img_size: int,
    taps: str | Sequence[int],
    tap_presets: Mapping[str, Sequence[int]] | None = None,
    network_kwargs: Mapping[str, object] | None = None,
) -> Backbone:
    """Build a backbone and resolve its taps.

    Args:
        name: `small_cnn` or a timm model name.
        num_classes, in_chans, img_size: what the network sees and predicts.
        taps: a preset name (`entry`, `middle`, `output`) or stage indices into `feature_info`.
        tap_presets: the model's own preset -> indices map; None uses first / middle / last stage.
        network_kwargs: extra arguments for the network's constructor.
    """
    network = create_network(name, num_classes, in_chans, img_size, **dict(network_kwargs or {}))
    n_stages = len(network.feature_info)
    presets = dict(tap_presets) if tap_presets else default_tap_presets(n_stages)
    return Backbone(network, resolve_taps(taps, presets, n_stages), in_chans, img_size)


def backbone_from_config(
    model_cfg: Mapping[str, Any],
    taps: str | Sequence[int],
    num_classes: int,
    in_chans: int,
    img_size: int,
) -> Backbone:
    """Build the backbone that a `conf/model/*.yaml` node describes, tapped at `taps` (mint.taps)."""
    return build_backbone(
        name=model_cfg["name"],
        num_classes=num_classes,
        in_chans=in_chans,
        img_size=img_size,
        taps=taps,
        tap_presets=model_cfg.get("tap_presets"),
        network_kwargs=model_cfg.get("kwargs"),
    )
