"""Audited backbones: every architecture answers `(logits, taps) = model(x)` in one forward pass.

A backbone wraps a network that answers timm's calls (`feature_info`, `forward_intermediates`,
`forward_head`): any timm model, or our `SmallCNN`. Taps are indices into `feature_info` (the
network's stages), chosen by a preset (`entry`, `middle`, `output`) or explicitly. A network
without `forward_intermediates` is tapped by forward hooks on the modules `feature_info` names,
still in the one pass that gives the logits.

Small images, set from the model config:
- `small_stem`: 3x3 stride-1 first conv and no stem max-pool (ResNet, DenseNet, MobileNet,
  legacy Xception), so a 32x32 image keeps 4x-16x more positions in every stage.
- `patch_size` (ViT family): the model is built for the data set's `img_size`; `auto` picks the
  divisor of `img_size` nearest `img_size / 8` (an 8x8 token grid).
- `classifier_width` (VGG): a 1x1-conv pre-logits block of this width instead of timm's 7x7,
  4096-wide one (119M parameters, whatever the input size).
- 2x2 stride-2 pools round up (`ceil_mode`), so odd maps (28x28 inputs) keep their last row
  instead of vanishing; even sizes are unchanged.

From scratch at a few classes: the EfficientNet/MobileNet family's classifier starts as timm's
other CNNs do (`small_initial_logits`), not with logits of std ~4.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from amint_pl.errors import ConfigError
from amint_pl.models.small_cnn import SmallCNN

__all__ = [
    "TAP_PRESETS",
    "Backbone",
    "TapInfo",
    "backbone_from_config",
    "build_backbone",
    "create_network",
    "resolve_patch_size",
    "resolve_taps",
    "small_initial_logits",
    "use_small_stem",
    "vit_amint",
]

TAP_PRESETS = ("entry", "middle", "output")
# The aMINT paper's small ViT: patch 4, embedding 64, depth 12, 8 heads. The paper says no more;
# the rest follows the Keras ViT example such models come from: MLP ratio 2 (transformer units
# [2*64, 64]), no class token; average-pooled tokens and a linear classifier stand in for the
# example's flatten + 2048/1024 MLP.
PAPER_VIT = {
    "patch_size": 4,
    "embed_dim": 64,
    "depth": 12,
    "num_heads": 8,
    "mlp_ratio": 2.0,
    "class_token": False,
    "global_pool": "avg",
}
TAP_FORMATS = ("grid", "tokens")
TAP_METHODS = ("auto", "intermediates", "hooks")


@dataclass(frozen=True)
class TapInfo:
    """What a tap is: its stage index, module name, and shape at the configured input.

    The shape is (C, H, W) for a feature map or a token grid, (N, C) for ViT tokens.
    """

    index: int
    module: str
    shape: tuple[int, ...]

    @property
    def channels(self) -> int:
        return self.shape[0] if len(self.shape) != 2 else self.shape[1]


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
    elif isinstance(taps, int):
        indices = [taps]
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


def stages_of(network: nn.Module) -> list[dict[str, Any]]:
    """The network's stages: `feature_info` as a list of dicts (num_chs, reduction, module)."""
    info = getattr(network, "feature_info", None)
    if info is None:
        raise ConfigError(
            f"{type(network).__name__} has no feature_info, so it has no stages to tap: use a timm model"
        )
    return list(getattr(info, "info", info))


def _capture(store: dict[int, torch.Tensor], index: int, _module, _inputs, output) -> None:
    store[index] = output


class Backbone(nn.Module):
    """The audited network with its taps: `forward(x) -> (class logits, [tap activations])`.

    Args:
        network: a timm-style network (`feature_info`, and `forward_intermediates` +
            `forward_head`, or else any `forward` that runs the modules `feature_info` names).
        tap_indices: stage indices into `feature_info`.
        in_chans, img_size: the input the taps are probed at (their shapes go to `tap_info`).
        tap_format: `grid` (B, C, H, W) or, for ViTs, `tokens` (B, N, C) patch tokens.
        tap_method: `intermediates`, `hooks`, or `auto` (intermediates when the network has them).
    """

    def __init__(
        self,
        network: nn.Module,
        tap_indices: Sequence[int],
        in_chans: int,
        img_size: int,
        tap_format: str = "grid",
        tap_method: str = "auto",
    ) -> None:
        super().__init__()
        if tap_format not in TAP_FORMATS:
            raise ConfigError(
                f"model.tap_format='{tap_format}': use one of {', '.join(TAP_FORMATS)}"
            )
        if tap_method not in TAP_METHODS:
            raise ConfigError(
                f"model.tap_method='{tap_method}': use one of {', '.join(TAP_METHODS)}"
            )
        has_intermediates = hasattr(network, "forward_intermediates")
        if tap_method == "intermediates" and not has_intermediates:
            raise ConfigError(
                f"{type(network).__name__} has no forward_intermediates: set model.tap_method=hooks"
            )
        if tap_format == "tokens" and not hasattr(network, "patch_embed"):
            raise ConfigError(
                f"model.tap_format=tokens needs a ViT; {type(network).__name__} gives feature maps: use grid"
            )
        self.network = network
        self.tap_indices = list(tap_indices)
        self.tap_format = tap_format
        self.uses_hooks = tap_method == "hooks" or not has_intermediates
        if self.uses_hooks and tap_format == "tokens":
            raise ConfigError(
                "model.tap_format=tokens needs model.tap_method=intermediates or auto"
            )
        self.tap_info = self._probe(in_chans, img_size)

    @property
    def stage_names(self) -> list[str]:
        return [str(stage["module"]) for stage in stages_of(self.network)]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self.uses_hooks:
            return self._forward_hooked(x)
        fmt = {"output_fmt": "NLC"} if self.tap_format == "tokens" else {}
        final, taps = self.network.forward_intermediates(
            x, indices=self.tap_indices, intermediates_only=False, **fmt
        )
        return self.network.forward_head(final), list(taps)

    def _forward_hooked(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        # Hooks live only for this call: nothing to go stale on copy, pickling or DDP wrapping.
        captured: dict[int, torch.Tensor] = {}
        names = self.stage_names
        handles = [
            self.network.get_submodule(names[i]).register_forward_hook(
                partial(_capture, captured, i)
            )
            for i in self.tap_indices
        ]
        try:
            logits = self.network(x)
        finally:
            for handle in handles:
                handle.remove()
        missing = [names[i] for i in self.tap_indices if i not in captured]
        if missing:
            raise RuntimeError(f"the forward pass never ran the tapped module(s) {missing}")
        return logits, [captured[i] for i in self.tap_indices]

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


def resolve_patch_size(patch_size: int | str, img_size: int) -> int:
    """`auto`: the divisor of img_size nearest img_size / 8 (ties: the larger); else the integer."""
    if patch_size != "auto":
        return int(patch_size)
    target = img_size / 8
    divisors = [d for d in range(1, img_size + 1) if img_size % d == 0]
    return min(divisors, key=lambda d: (abs(d - target), -d))


def _scale_reductions(network: nn.Module, divisors: Sequence[int]) -> None:
    for stage, divisor in zip(stages_of(network), divisors, strict=True):
        stage["reduction"] = max(1, stage["reduction"] // divisor)


def _small_stem_conv(old: nn.Conv2d) -> nn.Conv2d:
    """A 3x3 stride-1 conv in place of a 7x7 stride-2 one, initialised as timm's CNNs are."""
    conv = nn.Conv2d(old.in_channels, old.out_channels, 3, 1, 1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def use_small_stem(network: nn.Module) -> None:
    """Give the network a small-image stem in place: 3x3 stride-1 first conv, no stem max-pool."""
    from timm.models.densenet import DenseNet
    from timm.models.efficientnet import EfficientNet
    from timm.models.mobilenetv3 import MobileNetV3
    from timm.models.resnet import ResNet
    from timm.models.xception import Xception

    n_stages = len(stages_of(network))
    if isinstance(network, ResNet):
        if isinstance(network.conv1, nn.Conv2d):
            network.conv1 = _small_stem_conv(network.conv1)
        else:  # deep stem (resnet*d): a stack of 3x3 convs; the first one stops striding
            network.conv1[0].stride = (1, 1)
        network.maxpool = nn.Identity()
        _scale_reductions(network, [2] + [4] * (n_stages - 1))
    elif isinstance(network, DenseNet):
        conv0 = network.features.conv0
        if conv0.kernel_size == (7, 7):
            network.features.conv0 = _small_stem_conv(conv0)
        else:
            conv0.stride = (1, 1)
        network.features.pool0 = nn.Identity()
        _scale_reductions(network, [2] + [4] * (n_stages - 1))
    elif isinstance(network, MobileNetV3 | EfficientNet):  # timm's MobileNet v1 is an EfficientNet
        network.conv_stem.stride = (1, 1)
        _scale_reductions(network, [2] * n_stages)
    elif isinstance(network, Xception):
        network.conv1.stride = (1, 1)
        _scale_reductions(network, [2] * n_stages)
    else:
        raise ConfigError(
            f"model.small_stem=true is not available for {type(network).__name__}: "
            "use a ResNet, DenseNet, MobileNet/EfficientNet or legacy_xception, or model.small_stem=false"
        )


def small_initial_logits(network: nn.Module) -> None:
    """Give an EfficientNet/MobileNet classifier PyTorch's default Linear init, in place.

    timm draws their classifier from U(+-1/sqrt(num_classes)), sized for 1000 classes: at 10 the
    initial logits have std ~4 and the cross-entropy starts near 7, not ln 10; from scratch the
    network then memorises its members before it generalises (experiments/reproduction/README.md).
    U(+-1/sqrt(num_features)) is what timm's ResNet, DenseNet and Xception classifiers get.
    """
    from timm.models.efficientnet import EfficientNet
    from timm.models.mobilenetv3 import MobileNetV3

    classifier = getattr(network, "classifier", None)
    if isinstance(network, EfficientNet | MobileNetV3) and isinstance(classifier, nn.Linear):
        classifier.reset_parameters()


def use_compact_vgg_classifier(network: nn.Module, width: int) -> None:
    """Replace a timm VGG's 7x7, 4096-wide pre-logits block by 1x1 convs of `width` channels."""
    from timm.layers import ClassifierHead
    from timm.models.vgg import VGG, ConvMlp

    if not isinstance(network, VGG):
        raise ConfigError(
            f"model.classifier_width is for VGG only, not {type(network).__name__}: set it to null"
        )
    drop_rate = network.head.drop.p
    network.pre_logits = ConvMlp(network.num_features, width, kernel_size=1, drop_rate=drop_rate)
    network.head = ClassifierHead(width, network.num_classes, pool_type="avg", drop_rate=drop_rate)
    network.head_hidden_size = width
    for module in (*network.pre_logits.modules(), *network.head.modules()):  # timm VGG's own init
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0, 0.01)
            nn.init.zeros_(module.bias)


def ceil_halving_pools(network: nn.Module) -> None:
    """Let 2x2 stride-2 pools round up: odd maps keep their last row; even sizes are unchanged."""
    for module in network.modules():
        if not isinstance(module, nn.MaxPool2d | nn.AvgPool2d):
            continue
        halving = _pair(module.kernel_size) == _pair(module.stride) == (2, 2)
        if halving and _pair(module.padding) == (0, 0):
            module.ceil_mode = True


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def vit_amint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """timm entry point `vit_amint`: the paper's small ViT (`PAPER_VIT`), kwargs override it."""
    from timm.models.vision_transformer import VisionTransformer

    if pretrained:
        raise ValueError("vit_amint has no pretrained weights: it trains from scratch")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    return VisionTransformer(**{**PAPER_VIT, **kwargs})


def _register_timm_models() -> None:
    """Make our own architectures timm names, so `model.name` tells them apart in results."""
    import timm
    from timm.models import register_model

    if not timm.is_model("vit_amint"):
        register_model(vit_amint)


def create_network(
    name: str,
    num_classes: int,
    in_chans: int,
    img_size: int,
    *,
    small_stem: bool = False,
    patch_size: int | str | None = None,
    classifier_width: int | None = None,
    **kwargs: object,
) -> nn.Module:
    """Build the bare network: `small_cnn`, or any timm model name (from scratch).

    Args:
        name: `small_cnn` or a timm model name.
        num_classes, in_chans, img_size: what the network sees and predicts.
        small_stem: a 3x3 stride-1 stem without max-pool (see `use_small_stem`).
        patch_size: ViT family only: build for `img_size` with this patch size (`auto`: 8x8 grid).
        classifier_width: VGG only: width of the compact 1x1-conv pre-logits block.
        kwargs: passed to the constructor (`timm.create_model`).
    """
    if name == "small_cnn":
        if small_stem or patch_size is not None or classifier_width is not None:
            raise ConfigError(
                "small_cnn has no stem, patches or VGG classifier to change: drop model.small_stem/patch_size/classifier_width"
            )
        return SmallCNN(num_classes, in_chans, **kwargs)
    import timm

    _register_timm_models()
    if name in (None, "", "???"):
        raise ConfigError("model.name is not set: give a timm model name, e.g. model.name=resnet34")
    if not timm.is_model(name):
        raise ConfigError(
            f"unknown model '{name}': use a config of conf/model or any timm model name (timm.list_models())"
        )
    if patch_size is not None:
        kwargs = {
            "img_size": img_size,
            "patch_size": resolve_patch_size(patch_size, img_size),
            **kwargs,
        }
    if classifier_width is not None and timm.models.model_entrypoint(name).__module__.endswith(
        ".vgg"
    ):
        # timm's 119M-parameter pre-logits block is replaced below: build it 1 channel wide
        kwargs = {"mlp_ratio": 1 / 4096, **kwargs}
    try:
        network = timm.create_model(
            name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs
        )
    except TypeError as error:  # a keyword the model's constructor does not take
        raise ConfigError(
            f"timm model '{name}' rejects its arguments {sorted(kwargs)}: {error}; fix model.kwargs"
        ) from error
    embed = getattr(network, "patch_embed", None)
    built_for = tuple(getattr(embed, "img_size", None) or ())
    if (
        patch_size is None
        and getattr(embed, "strict_img_size", False)
        and built_for != (img_size,) * 2
    ):
        raise ConfigError(
            f"'{name}' is built for {built_for[0]}x{built_for[1]} images, the data are "
            f"{img_size}x{img_size}: set model.patch_size=auto (or an integer)"
        )
    ceil_halving_pools(network)
    small_initial_logits(network)
    if small_stem:
        use_small_stem(network)
    if classifier_width is not None:
        use_compact_vgg_classifier(network, int(classifier_width))
    return network


def build_backbone(
    name: str,
    num_classes: int,
    in_chans: int,
    img_size: int,
    taps: str | Sequence[int],
    tap_presets: Mapping[str, Sequence[int]] | None = None,
    network_kwargs: Mapping[str, object] | None = None,
    *,
    small_stem: bool = False,
    patch_size: int | str | None = None,
    classifier_width: int | None = None,
    tap_format: str = "grid",
    tap_method: str = "auto",
) -> Backbone:
    """Build a backbone and resolve its taps.

    Args:
        name: `small_cnn` or a timm model name.
        num_classes, in_chans, img_size: what the network sees and predicts.
        taps: a preset name (`entry`, `middle`, `output`) or stage indices into `feature_info`.
        tap_presets: the model's own preset -> indices map; None uses first / middle / last stage.
        network_kwargs: extra arguments for the network's constructor.
        small_stem, patch_size, classifier_width: small-image choices (see `create_network`).
        tap_format, tap_method: how taps come out and how they are taken (see `Backbone`).
    """
    network = create_network(
        name,
        num_classes,
        in_chans,
        img_size,
        small_stem=small_stem,
        patch_size=patch_size,
        classifier_width=classifier_width,
        **dict(network_kwargs or {}),
    )
    n_stages = len(stages_of(network))
    presets = dict(tap_presets) if tap_presets else default_tap_presets(n_stages)
    return Backbone(
        network,
        resolve_taps(taps, presets, n_stages),
        in_chans,
        img_size,
        tap_format=tap_format,
        tap_method=tap_method,
    )


def backbone_from_config(
    model_cfg: Mapping[str, Any],
    taps: str | Sequence[int],
    num_classes: int,
    in_chans: int,
    img_size: int,
) -> Backbone:
    """Build the backbone that a `conf/model/*.yaml` node describes, tapped at `taps` (mint.taps).

    Keys: `name`, `kwargs`, `tap_presets`, and optionally `small_stem`, `patch_size`,
    `classifier_width`, `tap_format`, `tap_method` (see `build_backbone`).
    """
    return build_backbone(
        name=model_cfg["name"],
        num_classes=num_classes,
        in_chans=in_chans,
        img_size=img_size,
        taps=taps,
        tap_presets=model_cfg.get("tap_presets"),
        network_kwargs=model_cfg.get("kwargs"),
        small_stem=bool(model_cfg.get("small_stem") or False),
        patch_size=model_cfg.get("patch_size"),
        classifier_width=model_cfg.get("classifier_width"),
        tap_format=model_cfg.get("tap_format") or "grid",
        tap_method=model_cfg.get("tap_method") or "auto",
    )
