"""One aMINT training step two ways, timed side by side on this CPU.

- `--pair precision`: float32 against the same step under bf16 autocast, what
  `trainer.precision=32-true` and `bf16-mixed` run.
- `--pair conv`: the MINT head's 3x3 convolutions as `nn.Conv2d` computes them (over the zero
  padding too) against the head's own `SmallMapConv2d` (only the products that meet the map).
- `--pair adam`: Adam's default update on a CPU, a loop over the parameter tensors, against the
  fused one kernel that conf/optim/adam.yaml asks for (`fused: true`).

A step: the audited network's forward with its taps, the MINT head on them, cross-entropy on the
members plus the MINT loss, backward and an Adam step (fused, as a run's, but in `--pair adam`),
on a batch of 64 members and 64 external images (28x28 grey, as Fashion-MNIST); in float32 but
in `--pair precision` or with `--bf16`. The two ways alternate round by round in this one
process, so the shared machine's load hits them alike; the table gives each round's ratio and
the median.

    python experiments/step_pair.py [--pair precision|conv|adam] [--bf16] [--model mobilenet]
        [--head paper] [--taps middle] [--rounds 5] [--steps 4] [--threads 1] [--out FILE]

bf16 pays where the CPU multiplies bf16 natively (AVX512-BF16, AMX); elsewhere it may cost.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from torch import nn

from amint_pl.models.backbones import backbone_from_config
from amint_pl.models.mint_head import SmallMapConv2d, mint_head_from_config

CONF = Path(__file__).resolve().parents[1] / "conf"
NUM_CLASSES = 10
IMG_SIZE = 28


def build(model: str, head: str, taps: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The audited network and MINT head a run builds from these configs."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("run", [f"model={model}", f"mint/head={head}", "mint=active"])
    backbone = backbone_from_config(cfg.model, taps, NUM_CLASSES, 1, IMG_SIZE)
    mint_head = mint_head_from_config(cfg.mint.head, [t.shape for t in backbone.tap_info])
    return backbone, mint_head


def with_plain_convs(mint_head: nn.Module) -> nn.Module:
    """A copy of the head whose 3x3 convolutions are `nn.Conv2d`s with the same parameters."""
    plain = copy.deepcopy(mint_head)
    for module in list(plain.modules()):
        for name, child in module.named_children():
            if isinstance(child, SmallMapConv2d):
                conv = nn.Conv2d(child.in_channels, child.out_channels, 3, padding=1)
                conv.load_state_dict(child.state_dict())
                setattr(module, name, conv)
    return plain


def step_fn(backbone, mint_head, batch: int, bf16: bool, fused: bool = True):
    params = [*backbone.parameters(), *mint_head.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-4, fused=fused)
    x = torch.randn(batch, 1, IMG_SIZE, IMG_SIZE)
    y = torch.randint(0, NUM_CLASSES, (batch,))
    member = (torch.arange(batch) < batch // 2).float()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits, taps = backbone(x)
            mint_logits = mint_head(taps).view(-1)
        ce = F.cross_entropy(logits[: batch // 2].float(), y[: batch // 2])
        bce = F.binary_cross_entropy_with_logits(mint_logits.float(), member)
        (ce + bce).backward()
        optimizer.step()

    return step


def seconds_per_step(step, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pair", choices=("precision", "conv", "adam"), default="precision")
    parser.add_argument("--bf16", action="store_true", help="--pair conv|adam: bf16 autocast")
    parser.add_argument("--model", default="mobilenet")
    parser.add_argument("--head", default="paper", help="mint/head config: light | paper")
    parser.add_argument("--taps", default="middle", help="entry | middle | output")
    parser.add_argument("--batch", type=int, default=128, help="members + external per step")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per way and round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="also write the Markdown table here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    backbone, mint_head = build(args.model, args.head, args.taps)
    precision = "bf16 autocast" if args.bf16 else "float32"
    flags = "" if args.pair == "precision" else f" --pair {args.pair}" + " --bf16" * args.bf16
    if args.pair == "precision":
        title, names = "float32 against bf16 autocast", ("float32", "bf16")
        ways = [(mint_head, False, True), (mint_head, True, True)]
    elif args.pair == "conv":
        title = f"the head's 3x3 convolutions as nn.Conv2d against SmallMapConv2d, {precision}"
        names = ("nn.Conv2d", "SmallMapConv2d")
        ways = [(with_plain_convs(mint_head), args.bf16, True), (mint_head, args.bf16, True)]
    else:
        title = f"Adam's per-tensor loop against its fused kernel, {precision}"
        names = ("per-tensor Adam", "fused Adam")
        ways = [(mint_head, args.bf16, False), (mint_head, args.bf16, True)]
    steps = [step_fn(backbone, head, args.batch, bf16, fused) for head, bf16, fused in ways]
    for step in steps:  # warm-up: oneDNN builds its kernels on first use
        step()
    lines = [
        f"# One aMINT step: {title} ({args.model}, {args.head} head, {args.taps} taps)",
        "",
        f"`python experiments/step_pair.py{flags} --model {args.model} --head {args.head} "
        f"--taps {args.taps} --rounds {args.rounds} --steps {args.steps} --threads "
        f"{args.threads}`, {datetime.date.today()}, {platform.processor() or platform.machine()}, "
        f"{args.threads} thread(s), batch {args.batch} at {IMG_SIZE}x{IMG_SIZE}x1, torch "
        f"{torch.__version__}.",
        "",
        f"| round | {names[0]} s/step | {names[1]} s/step | {names[0]} / {names[1]} |",
        "|---:|---:|---:|---:|",
    ]
    ratios = []
    for n in range(1, args.rounds + 1):
        order = (0, 1) if n % 2 else (1, 0)
        times = {way: seconds_per_step(steps[way], args.steps) for way in order}
        ratios.append(times[0] / times[1])
        lines.append(f"| {n} | {times[0]:.3f} | {times[1]:.3f} | {ratios[-1]:.2f}x |")
        print(lines[-1], flush=True)
    lines += ["", f"Median {names[0]} / {names[1]}: **{statistics.median(ratios):.2f}x**."]
    text = "\n".join(lines) + "\n"
    print(lines[-1])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
