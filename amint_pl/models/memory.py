"""The membership memory: a part of the audited model that keeps an imprint of every sample its
cross-entropy gradient touches, so that a MINT head can detect members it was never shown.

A normally trained classifier on Fashion-MNIST keeps little generic trace of its training
samples: at test accuracy ~0.89 the LOSS attack reaches AUC ~0.59 and a loss difference
calibrated on an early checkpoint ~0.62 (experiments/generalizing_amint/README.md). What the MINT
head learns about members it never saw as positives cannot exceed that trace. The memory makes
the trace by design. It hashes each input image with SimHash: `bands` codes of `bits` random
hyperplane signs over the image's fine detail (pooled to at most 32x32, minus its 3x3 local mean,
centred). It looks each code up in a table of `buckets` rows of class logits, sums the rows over
the bands and adds them (times `scale`) to the network's logits. The table starts at zero; only
the cross-entropy gradient of the samples the model trains on writes into it (the MINT gradient
does not: the head reads it detached, and with `mint.head.detach_outputs`, the default, the
class logits too). So every trained sample, MINT positive or not, leaves logits in the rows of
its own codes, and an image that was never trained on finds rows that nothing, or a random
collision, wrote.

It is in effect a record of the training inputs, kept by the model itself:
- It is part of the deployed classifier: its logits are in every prediction, and any training
  loop that optimises `model.parameters()` on cross-entropy writes into it.
- It records each sample as the data set holds it: under augmentation the network trains on the
  augmented view and the memory on the clean image (`AMINTModule.on_after_batch_transfer`). An
  image shifted or flipped before the audit hashes differently and shows no imprint; light noise
  and JPEG leave most codes intact.
- A developer who freezes or drops it keeps no record: like all of aMINT it audits a developer
  who trains with the auditor's recipe, including on data they did not declare.
- It is a membership record anyone holding the model can read (`memory_margin`): it makes the
  model less private on purpose, as aMINT does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from amint_pl.errors import ConfigError

# The settings (`mint.memory.*`) and their defaults when a memory is built.
DEFAULTS = {"bands": 16, "bits": 24, "buckets": 262144, "scale": 1.0, "seed": 0}
# The largest side the image is average-pooled to before hashing (keeps the projection small).
HASH_SIDE = 32
# splitmix64's increment and multipliers, as the int64 values of their 64-bit patterns.
_SPLITMIX = tuple(c - 2**64 for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def _shift_right(x: torch.Tensor, n: int) -> torch.Tensor:
    """The logical (unsigned) right shift of int64 values: torch's `>>` copies the sign bit."""
    return (x >> n) & ((1 << (64 - n)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's output function on int64 (the bits of uint64, wrapping around): a bijection
    of 64-bit words in which every input bit moves about half of the output bits. Integer
    arithmetic only, so the same on every device."""
    x = x + _SPLITMIX[0]
    x = (x ^ _shift_right(x, 30)) * _SPLITMIX[1]
    x = (x ^ _shift_right(x, 27)) * _SPLITMIX[2]
    return x ^ _shift_right(x, 31)


class MembershipMemory(nn.Module):
    """SimHash codes of the input image -> summed rows of a zero-initialised table of class logits.

    Args:
        in_shape: (C, H, W) of the preprocessed inputs.
        num_classes: the audited model's classes (the width of a row).
        bands: the number of hash codes per image (rows summed per image).
        bits: hyperplane signs per code (more bits: fewer collisions between different images,
            and less tolerance to small changes of the same image).
        buckets: rows in the table (the codes are hashed into them).
        scale: the factor on the memory's logits before they are added to the network's.
        seed: the seed of the random hyperplanes (fixed per model; stored in the state dict).
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        bands: int = DEFAULTS["bands"],
        bits: int = DEFAULTS["bits"],
        buckets: int = DEFAULTS["buckets"],
        scale: float = DEFAULTS["scale"],
        seed: int = DEFAULTS["seed"],
    ) -> None:
        super().__init__()
        channels, height, width = in_shape
        self.side = (min(height, HASH_SIDE), min(width, HASH_SIDE))
        self.bands, self.bits, self.buckets, self.scale = bands, bits, buckets, scale
        generator = torch.Generator().manual_seed(seed)
        dims = channels * self.side[0] * self.side[1]
        self.register_buffer("hyperplanes", torch.randn(dims, bands * bits, generator=generator))
        # One random salt per band, mixed into the code before hashing: each band hashes apart.
        self.register_buffer("band_salts", torch.randint(0, 2**62, (bands,), generator=generator))
        self.register_buffer("bit_values", 2 ** torch.arange(bits), persistent=False)
        self.table = nn.EmbeddingBag(buckets, num_classes, mode="sum")
        nn.init.zeros_(self.table.weight)

    def codes(self, inputs: torch.Tensor) -> torch.Tensor:
        """(B, bands) table rows of a batch of preprocessed images (B, C, H, W)."""
        # In float64: a float32 product's rounding depends on the batch's size and layout, and
        # a sign that flips between the training and the audit batch would change the code.
        x = inputs.double()
        if tuple(x.shape[-2:]) != self.side:
            x = F.adaptive_avg_pool2d(x, self.side)
        # The fine detail (the image minus its 3x3 local mean) sets one image apart from similar
        # ones: hashing the whole image let look-alike images of a class share codes.
        x = x - F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        x = x.flatten(1)
        x = x - x.mean(1, keepdim=True)
        return self.rows(x @ self.hyperplanes.double() > 0)

    def rows(self, signs: torch.Tensor) -> torch.Tensor:
        """(B, bands) table rows of (B, bands * bits) hyperplane signs: each band's code (its
        `bits` signs as a number), salted and mixed by splitmix64, modulo `buckets`. Every sign
        bit reaches every bit of the hash, so all `bits` count whatever the number of buckets."""
        signs = signs.long().view(len(signs), self.bands, self.bits)
        code = (signs * self.bit_values).sum(-1)
        return torch.remainder(splitmix64(code ^ self.band_salts), self.buckets)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """(B, num_classes) memory logits, already times `scale`."""
        return self.scale * self.table(self.codes(inputs))


def memory_margin(memory_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) the memory's logit of the label minus the mean of its logits: ~0 for an image the
    memory never trained on, positive for a trained one."""
    return memory_logits.gather(1, labels.view(-1, 1))[:, 0] - memory_logits.mean(1)


def memory_from_config(
    memory_cfg: Mapping[str, Any] | None, in_shape: tuple[int, int, int], num_classes: int
) -> MembershipMemory | None:
    """The memory a `mint.memory` config node describes; None when `bands` is 0 (the default)."""
    cfg = dict(memory_cfg or {})
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise ConfigError(
            f"mint.memory.{unknown[0]} is no memory setting: use {', '.join(DEFAULTS)}"
        )
    if not cfg.get("bands"):
        return None
    values = {**DEFAULTS, **cfg}
    bands, bits, buckets, scale = (values[k] for k in ("bands", "bits", "buckets", "scale"))
    if not isinstance(bands, int) or bands < 0:
        raise ConfigError(f"mint.memory.bands={bands}: use a whole number >= 1, or 0 (no memory)")
    if not isinstance(bits, int) or not 1 <= bits <= 30:
        raise ConfigError(f"mint.memory.bits={bits}: use a whole number from 1 to 30")
    if not isinstance(buckets, int) or buckets < 2:
        raise ConfigError(f"mint.memory.buckets={buckets}: use a whole number >= 2")
    if not isinstance(scale, int | float) or scale <= 0:
        raise ConfigError(f"mint.memory.scale={scale}: use a number > 0")
    return MembershipMemory(
        in_shape, num_classes, bands, bits, buckets, float(scale), int(values["seed"])
    )
