"""The audited backbones and the MINT head, through the configs a user picks (`model=<name>`)."""

from __future__ import annotations

import copy
import functools
import re

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from amint_pl.errors import ConfigError
from amint_pl.models.backbones import (
    Backbone,
    backbone_from_config,
    build_backbone,
    resolve_patch_size,
)
from amint_pl.models.mint_head import MINTHead, SmallMapConv2d, mint_head_from_config
from tests.helpers import CONF, compose_config

PRESETS = ("entry", "middle", "output")
NUM_CLASSES = 10
SIZES = {28: 1, 32: 3, 64: 3}  # image size -> channels: MNIST, CIFAR, GTSRB / Tiny ImageNet

# The documented tap shapes (entry, middle, output) of every model config at each input size;
# conf/model/<name>.yaml documents the 32x32 ones.
EXPECTED_TAPS = {
    "densenet121": {
        28: ((256, 7, 7), (512, 4, 4), (1024, 1, 1)),
        32: ((256, 8, 8), (512, 4, 4), (1024, 1, 1)),
        64: ((256, 16, 16), (512, 8, 8), (1024, 2, 2)),
    },
    "mobilenet": {
        28: ((64, 14, 14), (256, 4, 4), (1024, 1, 1)),
        32: ((64, 16, 16), (256, 4, 4), (1024, 1, 1)),
        64: ((64, 32, 32), (256, 8, 8), (1024, 2, 2)),
    },
    "mobilenetv3": {
        28: ((16, 14, 14), (40, 4, 4), (960, 1, 1)),
        32: ((16, 16, 16), (40, 4, 4), (960, 1, 1)),
        64: ((16, 32, 32), (40, 8, 8), (960, 2, 2)),
    },
    "mobilenetv3_small": {
        28: ((16, 7, 7), (24, 4, 4), (576, 1, 1)),
        32: ((16, 8, 8), (24, 4, 4), (576, 1, 1)),
        64: ((16, 16, 16), (24, 8, 8), (576, 2, 2)),
    },
    "resnet101": {
        28: ((256, 7, 7), (512, 4, 4), (2048, 1, 1)),
        32: ((256, 8, 8), (512, 4, 4), (2048, 1, 1)),
        64: ((256, 16, 16), (512, 8, 8), (2048, 2, 2)),
    },
    "resnet18": {
        28: ((64, 7, 7), (128, 4, 4), (512, 1, 1)),
        32: ((64, 8, 8), (128, 4, 4), (512, 1, 1)),
        64: ((64, 16, 16), (128, 8, 8), (512, 2, 2)),
    },
    "resnet50": {
        28: ((256, 7, 7), (512, 4, 4), (2048, 1, 1)),
        32: ((256, 8, 8), (512, 4, 4), (2048, 1, 1)),
        64: ((256, 16, 16), (512, 8, 8), (2048, 2, 2)),
    },
    "small_cnn": {
        28: ((32, 14, 14), (64, 7, 7), (128, 4, 4)),
        32: ((32, 16, 16), (64, 8, 8), (128, 4, 4)),
        64: ((32, 32, 32), (64, 16, 16), (128, 8, 8)),
    },
    "vgg11": {
        28: ((64, 28, 28), (512, 4, 4), (512, 1, 1)),
        32: ((64, 32, 32), (512, 4, 4), (512, 1, 1)),
        64: ((64, 64, 64), (512, 8, 8), (512, 2, 2)),
    },
    "vgg16": {
        28: ((64, 28, 28), (512, 4, 4), (512, 1, 1)),
        32: ((64, 32, 32), (512, 4, 4), (512, 1, 1)),
        64: ((64, 64, 64), (512, 8, 8), (512, 2, 2)),
    },
    "vit": {
        28: ((49, 64), (49, 64), (49, 64)),
        32: ((64, 64), (64, 64), (64, 64)),
        64: ((256, 64), (256, 64), (256, 64)),
    },
    "vit_small": {
        28: ((49, 384), (49, 384), (49, 384)),
        32: ((64, 384), (64, 384), (64, 384)),
        64: ((64, 384), (64, 384), (64, 384)),
    },
    "vit_tiny": {
        28: ((49, 192), (49, 192), (49, 192)),
        32: ((64, 192), (64, 192), (64, 192)),
        64: ((64, 192), (64, 192), (64, 192)),
    },
    "xception": {
        28: ((128, 6, 6), (256, 3, 3), (2048, 1, 1)),
        32: ((128, 7, 7), (256, 4, 4), (2048, 1, 1)),
        64: ((128, 15, 15), (256, 8, 8), (2048, 2, 2)),
    },
}
MODELS = sorted(EXPECTED_TAPS)
# Seconds a forward and backward pass each on a CPU: the full suite only (make test).
LARGE = {"densenet121", "resnet50", "resnet101", "vgg16", "vit_small", "xception"}
MODEL_PARAMS = [pytest.param(m, marks=pytest.mark.slow) if m in LARGE else m for m in MODELS]


@functools.cache
def model_config(name: str) -> dict:
    """The `model` node as the LightningModule gets it: composed by Hydra, as a dict."""
    return OmegaConf.to_container(compose_config(f"model={name}").model, resolve=True)


def all_preset_taps(model_cfg: dict) -> list[int]:
    return sorted({i for indices in model_cfg["tap_presets"].values() for i in indices})


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: with several processes sharing 2 cores, OpenMP threads only spin-wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


_built: dict[str, Backbone] = {}  # 32x32 backbones, handed from the shape test to the step test


def test_every_model_config_is_tested():
    configs = {path.stem for path in (CONF / "model").glob("*.yaml")} - {"timm"}
    assert configs == set(MODELS)


@pytest.mark.parametrize("size", sorted(SIZES))
@pytest.mark.parametrize("name", MODEL_PARAMS)
def test_logits_and_taps_have_the_documented_shapes(name: str, size: int):
    torch.manual_seed(0)
    model_cfg = model_config(name)
    taps = all_preset_taps(model_cfg)
    backbone = backbone_from_config(model_cfg, taps, NUM_CLASSES, SIZES[size], size)
    with torch.no_grad():
        logits, activations = backbone(torch.randn(2, SIZES[size], size, size))

    assert logits.shape == (2, NUM_CLASSES)
    shapes = {i: tuple(a.shape[1:]) for i, a in zip(taps, activations, strict=True)}
    assert shapes == {info.index: info.shape for info in backbone.tap_info}
    expected = dict(zip(PRESETS, EXPECTED_TAPS[name][size], strict=True))
    assert {p: shapes[model_cfg["tap_presets"][p][0]] for p in PRESETS} == expected
    if size == 32:
        _built[name] = backbone


DOC_LINE = re.compile(r"^#\s+(entry|middle|output)\s+->\s+(\d+)\s+(\S+)\s+\(([\d, ]+)\)", re.M)
SMALL_STEM_LINE = re.compile(r"^# With small_stem: true: (.*)$", re.M)


@pytest.mark.parametrize("name", MODEL_PARAMS)
def test_yaml_documents_the_32x32_taps(name: str):
    """Each conf/model yaml's comment names the stage, module and 32x32 shape of every preset."""
    text = (CONF / "model" / f"{name}.yaml").read_text()
    documented = {
        preset: (int(index), module, tuple(int(v) for v in shape.split(",")))
        for preset, index, module, shape in DOC_LINE.findall(text)
    }
    model_cfg = model_config(name)
    names = [s["module"] for s in _stage_list(name)]
    actual = {
        p: (i, names[i], EXPECTED_TAPS[name][32][k])
        for k, p in enumerate(PRESETS)
        for i in model_cfg["tap_presets"][p]
    }
    assert documented == actual
    small_stem = SMALL_STEM_LINE.search(text)
    assert (small_stem is not None) == ("small_stem" in model_cfg)
    if small_stem:
        backbone = backbone_from_config(
            {**model_cfg, "small_stem": True}, all_preset_taps(model_cfg), NUM_CLASSES, 3, 32
        )
        shapes = {info.index: info.shape for info in backbone.tap_info}
        line = ", ".join(f"{p} {shapes[model_cfg['tap_presets'][p][0]]}" for p in PRESETS)
        assert small_stem.group(1) == line


def _stage_list(name: str) -> list[dict]:
    backbone = _built.get(name) or backbone_from_config(
        model_config(name), "output", NUM_CLASSES, 3, 32
    )
    return [dict(s) for s in backbone.network.feature_info]


def active_step(backbone: Backbone, head: nn.Module, size: int = 32, in_chans: int = 3):
    """One aMINT step as the method takes it: one pass over members + external samples.

    Returns the MINT loss's gradients (None: not reached) on the tapped stages' parameters and
    on the first conv (the stem), by name.
    """
    x = torch.randn(2, in_chans, size, size)
    labels = torch.tensor([3, 7])
    is_member = torch.tensor([1.0, 0.0])
    members = is_member.bool()
    logits, taps = backbone(x)
    aud_loss = F.cross_entropy(logits[members], labels[members])
    mint_loss = F.binary_cross_entropy_with_logits(head(taps), is_member)
    tapped = {
        f"{stage}.{n}": p
        for stage in {info.module for info in backbone.tap_info}
        for n, p in backbone.network.get_submodule(stage).named_parameters()
    }
    first_conv = next(
        (n, p) for n, p in backbone.network.named_parameters() if p.ndim == 4
    )  # the stem: every tap depends on it
    tapped.setdefault(*first_conv)
    mint_grads = torch.autograd.grad(
        mint_loss, list(tapped.values()), retain_graph=True, allow_unused=True
    )
    optimizer = torch.optim.Adam([*backbone.parameters(), *head.parameters()], lr=1e-3)
    optimizer.zero_grad()
    (aud_loss + mint_loss).backward()
    optimizer.step()
    return dict(zip(tapped, mint_grads, strict=True))


@pytest.mark.parametrize("name", MODEL_PARAMS)
def test_active_step_reaches_head_and_tapped_stages(name: str):
    """entry + middle + output tapped at once: every parameter gets a gradient, and the MINT
    loss alone reaches every parameter of the tapped stages and moves the stem (stages that
    timm initialises to zero, ResNet's last BN of each block, pass zero at step one)."""
    torch.manual_seed(0)
    model_cfg = model_config(name)
    backbone = _built.pop(name, None) or backbone_from_config(
        model_cfg, all_preset_taps(model_cfg), NUM_CLASSES, 3, 32
    )
    backbone.train()
    head_cfg = OmegaConf.to_container(compose_config("mint=active").mint.head)
    head = mint_head_from_config(head_cfg, [info.shape for info in backbone.tap_info])

    mint_grads = active_step(backbone, head)

    for part in (head, backbone):
        missing = [n for n, p in part.named_parameters() if p.grad is None]
        assert not missing, f"no gradient: {missing[:5]}"
        assert all(torch.isfinite(p.grad).all() for p in part.parameters())
    assert all(p.grad.abs().sum() > 0 for p in head.parameters())
    unreached = [n for n, g in mint_grads.items() if g is None]
    assert not unreached, f"the MINT loss does not reach {unreached[:5]}"
    stem = next(n for n, p in backbone.network.named_parameters() if p.ndim == 4)
    assert mint_grads[stem].abs().sum() > 0


def test_hooks_give_the_same_taps_as_forward_intermediates():
    torch.manual_seed(0)
    model_cfg = model_config("resnet18")
    taps = all_preset_taps(model_cfg)
    direct = backbone_from_config(model_cfg, taps, NUM_CLASSES, 3, 32).eval()
    hooked = backbone_from_config(
        {**model_cfg, "tap_method": "hooks"}, taps, NUM_CLASSES, 3, 32
    ).eval()
    hooked.load_state_dict(direct.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits, activations = direct(x)
        hooked_logits, hooked_activations = hooked(x)
        copied_logits, _ = copy.deepcopy(hooked)(x)
    assert hooked.uses_hooks and not direct.uses_hooks
    torch.testing.assert_close(hooked_logits, logits)
    torch.testing.assert_close(copied_logits, logits)
    for a, b in zip(hooked_activations, activations, strict=True):
        torch.testing.assert_close(a, b)
    assert not any(m._forward_hooks for m in hooked.modules())  # hooks live for one call only


class PlainNet(nn.Module):
    """A network with stages but no forward_intermediates: it is tapped by forward hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.body = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, NUM_CLASSES)
        self.feature_info = [
            {"num_chs": 8, "reduction": 2, "module": "stem"},
            {"num_chs": 16, "reduction": 4, "module": "body"},
        ]
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.fc(self.body(self.stem(x)).mean((2, 3)))


def test_network_without_forward_intermediates_is_tapped_by_hooks_in_one_pass():
    network = PlainNet()
    backbone = Backbone(network, [0, 1], in_chans=3, img_size=32)
    assert backbone.uses_hooks
    assert [info.shape for info in backbone.tap_info] == [(8, 16, 16), (16, 8, 8)]
    network.calls = 0
    logits, taps = backbone(torch.randn(2, 3, 32, 32))
    assert network.calls == 1
    assert logits.shape == (2, NUM_CLASSES) and [t.shape[1] for t in taps] == [8, 16]


def test_vit_tap_format_grid_gives_token_grids_for_the_conv_head():
    model_cfg = {**model_config("vit"), "tap_format": "grid"}
    backbone = backbone_from_config(model_cfg, "middle", NUM_CLASSES, 3, 32)
    assert [info.shape for info in backbone.tap_info] == [(64, 8, 8)]  # embedding 64, patch 4
    head = mint_head_from_config({}, [info.shape for info in backbone.tap_info])
    assert isinstance(head.branches[0][0], nn.Conv2d)
    assert head(backbone(torch.randn(2, 3, 32, 32))[1]).shape == (2,)


@pytest.mark.parametrize(
    ("img_size", "patch"), [(28, 4), (32, 4), (64, 8), (224, 28), (100, 10), (8, 1)]
)
def test_auto_patch_size_aims_at_an_8x8_token_grid(img_size: int, patch: int):
    assert resolve_patch_size("auto", img_size) == patch
    assert resolve_patch_size(16, img_size) == 16


def test_any_timm_model_by_name_with_default_presets():
    model_cfg = OmegaConf.to_container(
        compose_config("model=timm", "model.name=resnet10t").model, resolve=True
    )
    backbone = backbone_from_config(model_cfg, "output", NUM_CLASSES, 3, 32)
    assert [(i.index, i.module, i.shape) for i in backbone.tap_info] == [(4, "layer4", (512, 1, 1))]
    backbone = backbone_from_config(model_cfg, [1, 3], NUM_CLASSES, 3, 32)
    assert [i.module for i in backbone.tap_info] == ["layer1", "layer3"]


def test_vgg_compact_classifier_is_small():
    model_cfg = model_config("vgg11")
    backbone = backbone_from_config(model_cfg, "output", NUM_CLASSES, 3, 32)
    params = sum(p.numel() for p in backbone.parameters())
    assert 9e6 < params < 10e6  # the conv body (9.2M) + 0.5M; timm's own head alone is 119M
    assert backbone.network.pre_logits.fc1.kernel_size == (1, 1)


@pytest.mark.parametrize(
    ("model_cfg", "taps", "message"),
    [
        ({"name": "resnet_nonsense"}, "entry", "unknown model 'resnet_nonsense'"),
        ({"name": "???"}, "entry", "model.name is not set"),
        ({"name": "resnet18", "tap_presets": None}, "begin", "mint.taps='begin' is no preset"),
        ({"name": "resnet18"}, [7], "index 7 is out of range; this model has stages 0..4"),
        ({"name": "resnet18"}, [], "mint.taps is empty"),
        ({"name": "resnet18", "kwargs": {"widths": [8]}}, "entry", "fix model.kwargs"),
        ({"name": "convnext_atto", "small_stem": True}, "entry", "model.small_stem=false"),
        ({"name": "resnet18", "classifier_width": 64}, "entry", "for VGG only"),
        ({"name": "resnet18", "tap_format": "tokens"}, "entry", "use grid"),
        ({"name": "resnet18", "tap_method": "magic"}, "entry", "model.tap_method='magic'"),
        ({"name": "vit_amint"}, "entry", "built for 224x224 images, the data are 32x32"),
    ],
)
def test_bad_model_configs_name_the_fix(model_cfg: dict, taps, message: str):
    with pytest.raises(ConfigError, match=re.escape(message)):
        backbone_from_config(model_cfg, taps, NUM_CLASSES, 3, 32)


def test_small_stem_keeps_more_positions_and_updates_strides():
    backbone = build_backbone("resnet18", NUM_CLASSES, 3, 32, taps=[1, 4], small_stem=True)
    assert [info.shape for info in backbone.tap_info] == [(64, 32, 32), (512, 4, 4)]
    assert [s["reduction"] for s in backbone.network.feature_info] == [1, 1, 2, 4, 8]


def test_mint_head_takes_any_number_of_taps_of_any_shape():
    shapes = [(64, 8, 8), (16, 1, 1), (49, 192), (32,)]
    head = MINTHead(shapes, conv_widths=(8, 16), hidden=32, token_width=4)
    taps = [torch.randn(3, *shape) for shape in shapes]
    assert head(taps).shape == (3,)
    assert head.mlp[0].in_features == 16 + 16 + 4 + 4


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (3, 3), (1, 5), (2, 4), (4, 4), (7, 5)])
def test_the_heads_small_map_convolution_equals_a_3x3_convolution_and_its_gradients(size):
    torch.manual_seed(0)
    small, conv = SmallMapConv2d(6, 10), nn.Conv2d(6, 10, 3, padding=1)
    conv.load_state_dict(small.state_dict())  # the same parameters, the same checkpoint keys
    x = torch.randn(4, 6, *size)
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = small(ours)
    grad = torch.randn_like(out)
    out.backward(grad)
    conv(theirs).backward(grad)
    torch.testing.assert_close(out, conv(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(small.weight.grad, conv.weight.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(small.bias.grad, conv.bias.grad, rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, reference = small(x), conv(x)
    assert low.dtype == reference.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), reference.float(), rtol=0.02, atol=0.02)


def test_a_head_that_reads_the_memory_alone_needs_no_class_logits_of_labelled_samples():
    torch.manual_seed(0)
    logits, memory, labels = torch.randn(5, 10), torch.randn(5, 10), torch.arange(5)
    alone = MINTHead([], output_features=["memory"], num_classes=10, use_taps=False)
    assert not alone.reads_network
    assert torch.equal(alone([], None, labels, memory), alone([], logits, labels, memory))
    with pytest.raises(ValueError, match="need the class logits"):
        alone([], None, None, memory)  # an unlabelled sample's label is its predicted class
    both = MINTHead([], output_features=["loss", "memory"], num_classes=10, use_taps=False)
    assert both.reads_network
    with pytest.raises(ValueError, match="need the class logits"):
        both([], None, labels, memory)


def test_head_presets_compose_for_every_mint_mode():
    for mode in ("active", "passive", "off"):
        assert compose_config(f"mint={mode}").mint.head.conv_widths == [64, 64]
    paper = OmegaConf.to_container(compose_config("mint=passive", "mint/head=paper").mint.head)
    assert paper["conv_widths"] == [1024, 2048] and paper["hidden"] == 128
    head = mint_head_from_config(paper, [(64, 8, 8), (64, 64)])
    assert head.branches[0][3].out_channels == 2048  # conv(1024), ReLU, max-pool, conv(2048)
    assert head.branches[1][1].out_features == 2048  # the linear layer over 64 tokens x 64
    assert head.mlp[0].out_features == 128


def test_bad_head_configs_name_the_fix():
    with pytest.raises(ConfigError, match="mint.head.width is no head setting"):
        mint_head_from_config({"width": 3}, [(8, 4, 4)])
    with pytest.raises(ConfigError, match="give two widths"):
        mint_head_from_config({"conv_widths": [8]}, [(8, 4, 4)])


@pytest.mark.parametrize("name", ["mobilenet", "mobilenetv3", "mobilenetv3_small"])
def test_efficientnet_family_starts_with_small_logits(name: str):
    # timm's own classifier init gives logits of std ~4 at 10 classes (cross-entropy ~7).
    model_cfg = compose_config(f"model={name}").model
    torch.manual_seed(0)
    backbone = backbone_from_config(model_cfg, "entry", 10, 1, 28)
    with torch.no_grad():
        logits, _ = backbone.train()(torch.randn(64, 1, 28, 28))
    assert float(logits.std()) < 1.0
