"""One aMINT training step in float32 against the same step under bf16 autocast, on this CPU.

A step is what `trainer.precision=32-true` and `bf16-mixed` run: the audited network's forward
with its taps, the MINT head on them, cross-entropy on the members plus the MINT loss, backward
and an Adam step, on a batch of 64 members and 64 external images (28x28 grey, as Fashion-MNIST).
The two precisions alternate round by round in this one process, so the shared machine's load
hits them alike; the table gives each round's ratio and the median.

    python experiments/precision_pair.py [--model mobilenet] [--head paper] [--taps middle]
        [--rounds 5] [--steps 4] [--threads 1] [--out FILE]

bf16 pays where the CPU multiplies bf16 natively (AVX512-BF16, AMX); elsewhere it may cost.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from amint_pl.models.backbones import backbone_from_config
from amint_pl.models.mint_head import mint_head_from_config

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


def step_fn(backbone, mint_head, batch: int, bf16: bool):
    params = [*backbone.parameters(), *mint_head.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-4)
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
    parser.add_argument("--model", default="mobilenet")
    parser.add_argument("--head", default="paper", help="mint/head config: light | paper")
    parser.add_argument("--taps", default="middle", help="entry | middle | output")
    parser.add_argument("--batch", type=int, default=128, help="members + external per step")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per precision and round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="also write the Markdown table here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    backbone, mint_head = build(args.model, args.head, args.taps)
    steps = {bf16: step_fn(backbone, mint_head, args.batch, bf16) for bf16 in (False, True)}
    for step in steps.values():  # warm-up: oneDNN builds its kernels on first use
        step()
    lines = [
        f"# One aMINT step: float32 against bf16 autocast ({args.model}, {args.head} head, "
        f"{args.taps} taps)",
        "",
        f"`python experiments/precision_pair.py --model {args.model} --head {args.head} --taps "
        f"{args.taps} --rounds {args.rounds} --steps {args.steps} --threads {args.threads}`, "
        f"{datetime.date.today()}, {platform.processor() or platform.machine()}, "
        f"{args.threads} thread(s), batch {args.batch} at {IMG_SIZE}x{IMG_SIZE}x1, torch "
        f"{torch.__version__}.",
        "",
        "| round | float32 s/step | bf16 s/step | float32 / bf16 |",
        "|---:|---:|---:|---:|",
    ]
    ratios = []
    for n in range(1, args.rounds + 1):
        order = (False, True) if n % 2 else (True, False)
        times = {bf16: seconds_per_step(steps[bf16], args.steps) for bf16 in order}
        ratios.append(times[False] / times[True])
        lines.append(f"| {n} | {times[False]:.3f} | {times[True]:.3f} | {ratios[-1]:.2f}x |")
        print(lines[-1], flush=True)
    lines += ["", f"Median float32 / bf16: **{statistics.median(ratios):.2f}x**."]
    text = "\n".join(lines) + "\n"
    print(lines[-1])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
