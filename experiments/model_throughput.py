"""Parameters, taps and CPU training throughput of every model config at 32x32.

For each `conf/model/*.yaml` (composed by Hydra, built by `backbone_from_config` as a run builds
it), prints: parameters, the tap shape of each preset, and images/s of forward + backward
- of the audited network alone (cross-entropy),
- of one aMINT step (the same plus the light MINT head on the entry taps, CE + BCE),
- of the audited network with `small_stem: true`, where the model has that choice.

All models are measured in one run, one after the other, so that a shared machine's load hits
them alike. Usage:

    nice python experiments/model_throughput.py [--batch 32] [--seconds 2] [--threads N] [--out FILE]

The small-stem variant runs a quarter of the batch (its steps cost 4-16x more).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from amint_pl.models.backbones import backbone_from_config
from amint_pl.models.mint_head import mint_head_from_config

CONF = Path(__file__).resolve().parents[1] / "conf"
PRESETS = ("entry", "middle", "output")
NUM_CLASSES = 10
IMG_SIZE = 32


def images_per_second(step, batch: int, seconds: float) -> float:
    """Run `step` once to warm up, then until `seconds` have passed (at least once more)."""
    step()
    done, start = 0, time.perf_counter()
    while done < 1 or time.perf_counter() - start < seconds:
        step()
        done += 1
    return done * batch / (time.perf_counter() - start)


def audited_step(backbone, batch: int):
    x = torch.randn(batch, 3, IMG_SIZE, IMG_SIZE)
    y = torch.randint(0, NUM_CLASSES, (batch,))

    def step() -> None:
        backbone.zero_grad(set_to_none=True)
        logits, _ = backbone(x)
        F.cross_entropy(logits, y).backward()

    return step


def active_step(backbone, head, batch: int):
    x = torch.randn(batch, 3, IMG_SIZE, IMG_SIZE)
    y = torch.randint(0, NUM_CLASSES, (batch,))
    is_member = (torch.arange(batch) < batch // 2).float()
    members = is_member.bool()

    def step() -> None:
        backbone.zero_grad(set_to_none=True)
        head.zero_grad(set_to_none=True)
        logits, taps = backbone(x)
        loss = F.cross_entropy(logits[members], y[members])
        loss = loss + F.binary_cross_entropy_with_logits(head(taps), is_member)
        loss.backward()

    return step


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


def measure(name: str, model_cfg: dict, head_cfgs: dict, batch: int, seconds: float) -> dict:
    taps = sorted({i for indices in model_cfg["tap_presets"].values() for i in indices})
    backbone = backbone_from_config(model_cfg, taps, NUM_CLASSES, 3, IMG_SIZE).train()
    by_index = {info.index: info for info in backbone.tap_info}
    preset_taps = {p: by_index[model_cfg["tap_presets"][p][0]] for p in PRESETS}
    row = {
        "model": name,
        "timm": model_cfg["name"],
        "params": count(backbone),
        **{p: f"{t.module} {shape_text(t.shape)}" for p, t in preset_taps.items()},
    }
    entry_shapes = [preset_taps["entry"].shape]
    row["head_light"] = count(mint_head_from_config(head_cfgs["light"], entry_shapes))
    row["head_paper"] = count(mint_head_from_config(head_cfgs["paper"], entry_shapes))

    entry_backbone = backbone_from_config(model_cfg, "entry", NUM_CLASSES, 3, IMG_SIZE).train()
    row["fwd_bwd"] = images_per_second(audited_step(entry_backbone, batch), batch, seconds)
    head = mint_head_from_config(head_cfgs["light"], [i.shape for i in entry_backbone.tap_info])
    row["active"] = images_per_second(active_step(entry_backbone, head, batch), batch, seconds)
    if "small_stem" in model_cfg:
        small = backbone_from_config(
            {**model_cfg, "small_stem": True}, "entry", NUM_CLASSES, 3, IMG_SIZE
        ).train()
        small_batch = max(1, batch // 4)
        row["small_stem"] = images_per_second(
            audited_step(small, small_batch), small_batch, seconds
        )
    return row


def markdown(rows: list[dict], header: str) -> str:
    lines = [
        header,
        "",
        "| model | timm model | params | entry tap | middle tap | output tap "
        "| MINT head params light / paper (entry) | fwd+bwd img/s | aMINT step img/s "
        "| small stem fwd+bwd img/s |",
        "|---|---|---:|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        small = (
            f"{r['small_stem']:.1f} ({r['fwd_bwd'] / r['small_stem']:.1f}x slower)"
            if "small_stem" in r
            else "n/a"
        )
        lines.append(
            f"| {r['model']} | `{r['timm']}` | {r['params'] / 1e6:.2f}M | {r['entry']} "
            f"| {r['middle']} | {r['output']} | {r['head_light'] / 1e6:.2f}M / "
            f"{r['head_paper'] / 1e6:.1f}M | {r['fwd_bwd']:.1f} | {r['active']:.1f} | {small} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per measurement")
    parser.add_argument("--models", nargs="*", help="model configs (default: all but timm)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    parser.add_argument("--out", type=Path, help="also write the Markdown table here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    names = args.models or sorted(
        p.stem for p in (CONF / "model").glob("*.yaml") if p.stem != "timm"
    )
    torch.manual_seed(0)
    rows = []
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    with initialize_config_module(config_module="amint_pl.conf", version_base="1.3"):
        head_cfgs = {
            preset: OmegaConf.to_container(
                compose(config_name="run", overrides=[f"mint/head={preset}"]).mint.head
            )
            for preset in ("light", "paper")
        }
        for name in names:
            cfg = compose(config_name="run", overrides=[f"model={name}"])
            row = measure(
                name,
                OmegaConf.to_container(cfg.model, resolve=True),
                head_cfgs,
                args.batch,
                args.seconds,
            )
            rows.append(row)
            print(
                f"{name:18s} {row['params'] / 1e6:7.2f}M  fwd+bwd {row['fwd_bwd']:7.1f} img/s  "
                f"aMINT {row['active']:7.1f} img/s  small stem {row.get('small_stem', float('nan')):7.1f} img/s",
                flush=True,
            )
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor()
    )
    header = (
        f"Measured {datetime.date.today()} by `nice python experiments/model_throughput.py "
        f"--batch {args.batch} --seconds {args.seconds}"
        f"{f' --threads {args.threads}' if args.threads else ''}` in {time.perf_counter() - started:.0f} s: "
        f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}, "
        f"torch threads: {torch.get_num_threads()}, {IMG_SIZE}x{IMG_SIZE}x3 inputs, batch {args.batch}, "
        f"{NUM_CLASSES} classes (the small-stem column: batch {max(1, args.batch // 4)}), "
        f"train mode; load average {load_before:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end. Tap shapes are C x H x W (N x C for ViT tokens); "
        "img/s counts forward + backward (no optimiser step); the aMINT step adds the light MINT "
        "head on the entry taps. The machine is shared with other jobs, so the figures are "
        "noisy: compare rows with each other, not with other machines."
    )
    table = markdown(rows, header)
    print()
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("# Models on CPU at 32x32\n\n" + table)


if __name__ == "__main__":
    main()
