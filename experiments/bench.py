"""The aMINT speed bench: our Lightning path against the limit, measured side by side in one process.

    python experiments/bench.py                       # CPU, small_cnn at 32x32 (`make bench`)
    python experiments/bench.py --quick               # a smoke test of seconds, tiny sizes
    python experiments/bench.py --device cuda --precision bf16-mixed --models resnet18,vit \\
        --channels-last --on-device                   # a GPU

What it measures, each as a ratio of two things run in the same process, interleaved (A B C,
C B A, A B C, ...; the ratio is the median of the per-repeat ratios of neighbours, so a burst of
load from other processes hits both sides of a pair alike):

(a) training throughput of AMINTModule + MembershipDataModule under a real `L.Trainer` against a
    minimal raw PyTorch loop doing identical work: the same backbone, MINT head, BatchTransform,
    loss weighting and Adam, over the same batches from the same sampler, from the same initial
    weights (the last losses of both are compared: `same_work` says they agree). Target >= 0.9.
(b) mint=active against mint=off on the same batches: what the MINT head costs per epoch of D.
(c) our data pipeline (uint8 pools in memory, one gather per batch, batched normalisation)
    against a torchvision Dataset + PIL transforms + DataLoader, 32x32. Target >= 3x.
(d) peak memory of every run: the process RSS high-water mark (reset before each run through
    /proc/self/clear_refs, so each run gets its own peak) and, on a GPU, CUDA max allocated.
Scaling: time and memory against the number of training samples and the number of taps.

It writes `<out>/bench-<machine>.json` and `<out>/bench-<machine>.md`: --out, by default
experiments/results/, and with --quick a scratch folder in the system's temporary directory.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import logging
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from amint_pl.data.benchmarks import Benchmark, Pool
from amint_pl.data.datamodule import (
    BalancedBatchSampler,
    IndexedSamples,
    MembershipDataModule,
    catalogue,
    external_count,
)
from amint_pl.data.splits import (
    ROLE_CODES,
    TRAIN_POOL_ROLES,
    MembershipSplits,
    SplitSizes,
    build_splits,
)
from amint_pl.data.transforms import BatchTransform
from amint_pl.models.backbones import backbone_from_config
from amint_pl.models.fingerprints import FingerprintMemory
from amint_pl.models.mint_head import mint_head_from_config
from amint_pl.record import versions
from amint_pl.training.losses import LossWeighting
from amint_pl.training.module import AMINTModule, mint_loss, role_positions
from amint_pl.training.phases import quiet_lightning

RESULTS = Path(__file__).resolve().parent / "results"
# --quick's figures are no measurement: they go to a scratch folder unless --out says otherwise.
SCRATCH = Path(tempfile.gettempdir()) / "amint_pl-bench"
EXTERNAL = ROLE_CODES["external"]
NUM_CLASSES, IMAGE_SIZE, CHANNELS = 10, 32, 3
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
TARGETS = {"lightning_vs_raw": 0.9, "pipeline": 3.0}
MIB = 2**20
# The members the membership memory's larger table is sized for: the paper's MNIST split.
MEMORY_MEMBERS = 25000


# ------------------------------------------------------------------------------------ settings
@dataclass
class Settings:
    """What one bench invocation runs (the command line, with --quick's tiny sizes applied)."""

    device: str = "cpu"
    precision: str = "32-true"
    models: tuple[str, ...] = ("small_cnn",)
    batch_size: int = 128
    steps: int = 16
    warmup: int = 4
    repeats: int = 5
    members: int = 4096  # D; as many external samples (E): an epoch is 2 * members images
    pipeline_epochs: int = 1
    pipeline_workers: tuple[int, ...] = (0, 2)
    scaling_samples: tuple[int, ...] = (1024, 2048, 4096)
    scaling_taps: tuple[tuple[int, ...], ...] = ((0,), (0, 1), (0, 1, 2))
    taps_repeats: int = 3
    channels_last: bool = False
    compile: bool = False
    on_device: bool = False
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default (the cores)
    fast_paths: bool = True
    seed: int = 0
    quick: bool = False
    machine: str = ""
    out: Path = RESULTS


def quick(settings: Settings) -> Settings:
    """--quick: every part runs, on sizes that take seconds (for the smoke test, not for figures)."""
    settings.batch_size, settings.steps, settings.warmup, settings.repeats = 16, 4, 1, 1
    settings.members, settings.pipeline_epochs, settings.pipeline_workers = 64, 1, (0,)
    settings.scaling_samples, settings.scaling_taps = (64, 128), ((0,), (0, 1))
    settings.taps_repeats, settings.fast_paths, settings.quick = 1, False, True
    return settings


# ------------------------------------------------------------------------------------ machine
def bare_trainer(device: torch.device, settings: Settings, **limits: Any) -> L.Trainer:
    """A Lightning trainer that only trains: one device, no logging, checkpoints or validation."""
    return L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision=settings.precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        use_distributed_sampler=False,
        **limits,
    )


def cpu_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def machine_info(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on, and how busy it was (`nice`, threads)."""
    cpu = platform.processor() or platform.machine()
    try:
        names = re.findall(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        cpu = names[0].strip() if names else cpu
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {
        "device": device.type,
        "gpu": gpu,
        "cpu": cpu,
        "cpu_cores": cpu_cores(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "platform": platform.platform(),
        "nice": os.nice(0),
    }


def machine_name(device: torch.device) -> str:
    """`cpu<cores>` on a CPU, the GPU's name on a GPU (e.g. `nvidia-h200`)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device).lower()
        return re.sub(r"[^a-z0-9]+", "-", name).strip("-")
    return f"cpu{cpu_cores()}"


def sync(device: torch.device) -> None:
    """Wait for the GPU's queued work (timing boundaries only); nothing on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------- memory
def _proc_status_kib(key: str) -> int | None:
    try:
        match = re.search(rf"{key}:\s+(\d+)", Path("/proc/self/status").read_text())
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _release_freed_memory() -> None:
    gc.collect()
    try:  # hand freed heap pages back to the OS, so a run's RSS growth is its own
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """The peak memory of the code inside `with`: RSS high-water mark and CUDA max allocated.

    The kernel's high-water mark (VmHWM) is reset to the current RSS on entry (`5` into
    /proc/self/clear_refs, Linux >= 4.0); without that, `peak_rss_mib` is None.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.figures: dict[str, float | None] = {}

    def __enter__(self) -> PeakMemory:
        _release_freed_memory()
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.can_reset = True
        except OSError:
            self.can_reset = False
        self.start_kib = _proc_status_kib("VmRSS")
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc: object) -> None:
        peak = _proc_status_kib("VmHWM") if self.can_reset else None
        self.figures = {
            "peak_rss_mib": None if peak is None else round(peak / 1024, 1),
            "rss_growth_mib": None
            if peak is None or self.start_kib is None
            else round((peak - self.start_kib) / 1024, 1),
        }
        if self.device.type == "cuda":
            self.figures["cuda_max_allocated_mib"] = round(
                torch.cuda.max_memory_allocated(self.device) / MIB, 1
            )


# --------------------------------------------------------------------------------------- data
def synthetic_benchmark(n_train: int, n_test: int, seed: int) -> Benchmark:
    """Random uint8 pools of shape (N, 3, 32, 32): what the pipeline and the models see of CIFAR."""
    rng = np.random.default_rng(seed)

    def pool(n: int) -> Pool:
        images = rng.integers(0, 256, (n, CHANNELS, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
        return Pool(images, rng.integers(0, NUM_CLASSES, n).astype(np.int64))

    return Benchmark("synthetic", pool(n_train), pool(n_test), NUM_CLASSES, MEAN, STD)


def data_for(members: int, seed: int) -> tuple[Benchmark, MembershipSplits]:
    """A benchmark with `members` members and as many external samples, and its splits."""
    calib = max(8, members // 8)
    benchmark = synthetic_benchmark(2 * members, 2 * calib, seed)
    sizes = SplitSizes(members, 0.1, members, calib, calib)
    return benchmark, build_splits(2 * members, 2 * calib, sizes, seed)


def run_config(
    settings: Settings,
    model: str,
    mode: str = "active",
    taps: Sequence[int] | None = None,
    members: int | None = None,
) -> dict[str, Any]:
    """The real composed run config (conf/), for this model, mint mode and the fast paths.
    `members`: the members the membership memory's table is sized for (default: the bench's)."""
    overrides = [
        "paths.output_dir=unused",
        "dataset=cifar10",  # 32x32, 3 channels, no augmentation; its files are never read
        f"model={model}",
        f"mint={mode}",
        f"batch_size={settings.batch_size}",
        f"trainer.precision={settings.precision}",
        f"model.channels_last={settings.channels_last}",
        f"model.compile={settings.compile}",
        f"dataset.on_device={settings.on_device}",
        f"dataset.splits.members={members or settings.members}",
    ]
    if taps is not None:
        overrides.append(f"mint.taps=[{','.join(str(t) for t in taps)}]")
    with initialize_config_module(config_module="amint_pl.conf", version_base="1.3"):
        cfg = compose(config_name="run", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True)


# ----------------------------------------------------------------------------- training runs
def stamp() -> tuple[float, float]:
    """(wall clock, this process's CPU time), in seconds."""
    return time.perf_counter(), time.process_time()


@dataclass
class Run:
    """One measured run. `steady_s`: steps warmup..steps-1, data loading included; `steady_cpu_s`:
    the CPU time this process spent in them (all its threads; DataLoader workers not counted)."""

    steady_s: float
    steady_cpu_s: float
    total_s: float  # the whole call: set-up, every step, tear-down
    images_per_step: int
    samples_per_step: int
    timed_steps: int
    last_loss: float
    memory: dict[str, float | None] = field(default_factory=dict)

    def figures(self) -> dict[str, float]:
        return {
            "samples_per_s": self.samples_per_step * self.timed_steps / self.steady_s,
            "images_per_s": self.images_per_step * self.timed_steps / self.steady_s,
            "ms_per_step": 1000 * self.steady_s / self.timed_steps,
            # robust to other processes on a shared CPU: time they take is not ours
            "samples_per_cpu_s": self.samples_per_step * self.timed_steps / self.steady_cpu_s,
            "total_s": self.total_s,
            **({"last_loss": self.last_loss} if math.isfinite(self.last_loss) else {}),
            **{k: v for k, v in self.memory.items() if v is not None},
        }


class StepClock(L.Callback):
    """Times the steps after `warmup` (from the end of step warmup-1 to the end of the last)."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup, self.device = warmup, device
        self.start = self.stop = (0.0, 0.0)
        self.last_loss = math.nan

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self.warmup:
            sync(self.device)
            self.start = stamp()
        if step == trainer.max_steps:
            sync(self.device)
            self.stop = stamp()
            self.last_loss = float(outputs["loss"])


def memory_size(memory: torch.nn.Module | None) -> int:
    """The numbers a membership memory keeps: the hashed record's table (parameters), the
    fingerprint record's banks (buffers, sized for its capacity)."""
    if memory is None:
        return 0
    return (
        memory.prints.numel()
        if isinstance(memory, FingerprintMemory)
        else memory.table.weight.numel()
    )


def fill_bank(memory: FingerprintMemory, members: int, seed: int) -> None:
    """Fill a fingerprint bank with `members` random fingerprints (random labels): the bank a run
    reads once those members are written (written straight into its buffers: random unit vectors
    have no twins to look for)."""
    generator = torch.Generator().manual_seed(seed)
    views, _, dims = memory.prints.shape
    prints = torch.randn(views, members, dims, generator=generator)
    memory.prints[:, :members] = F.normalize(prints - prints.mean(2, keepdim=True), dim=2)
    memory.labels[:members] = torch.randint(memory.num_classes, (members,), generator=generator)
    memory.count.fill_(members)


def parameter_count(cfg: dict[str, Any], benchmark: Benchmark) -> dict[str, int]:
    """The parameters of a config's model: the audited model's (the membership memory apart),
    the memory's numbers (`memory_size`) and the MINT head's."""
    module = AMINTModule(
        cfg, benchmark.num_classes, benchmark.channels, benchmark.mean, benchmark.std
    )
    memory = memory_size(module.memory)
    head = 0 if module.mint_head is None else sum(p.numel() for p in module.mint_head.parameters())
    network = sum(p.numel() for p in module.backbone.parameters())
    return {"network": network, "memory": memory, "mint_head": head}


def lightning_run(
    settings: Settings,
    cfg: dict[str, Any],
    data: tuple[Benchmark, MembershipSplits],
    device: torch.device,
    bank: int = 0,
) -> Run:
    """AMINTModule + MembershipDataModule fitted by a real L.Trainer for `settings.steps` steps.
    `bank`: with the fingerprint record, its bank holds that many other members from the start."""
    benchmark, splits = data
    torch.manual_seed(settings.seed)
    clock = StepClock(settings.warmup, device)
    with PeakMemory(device) as memory:
        started = time.perf_counter()
        module = AMINTModule(
            cfg, benchmark.num_classes, benchmark.channels, benchmark.mean, benchmark.std
        )
        if bank:
            fill_bank(module.memory, bank, settings.seed)
        datamodule = MembershipDataModule(
            benchmark,
            splits,
            settings.batch_size,
            settings.batch_size,
            settings.seed,
            on_device=settings.on_device,
            external_per_member=float(cfg["mint"]["external_per_member"]),
        )
        trainer = bare_trainer(device, settings, max_steps=settings.steps, callbacks=[clock])
        trainer.fit(module, datamodule=datamodule)
        total = time.perf_counter() - started
    # Images a step forwards: the members, and in `joint` the external samples beside them.
    half = settings.batch_size // 2
    external = external_count(half, float(cfg["mint"]["external_per_member"]))
    per_step = half + external if module.phase == "joint" else half
    return Run(
        clock.stop[0] - clock.start[0],
        clock.stop[1] - clock.start[1],
        total,
        per_step,
        settings.batch_size,
        settings.steps - settings.warmup,
        clock.last_loss,
        memory.figures,
    )


def raw_run(
    settings: Settings,
    cfg: dict[str, Any],
    data: tuple[Benchmark, MembershipSplits],
    device: torch.device,
) -> Run:
    """The limit: a minimal PyTorch loop doing the joint (aMINT) step of `lightning_run`.

    The same parts built in the same order from the same seed (so the same initial weights),
    the same sampler over the same catalogue, the same loss; no Trainer, no hooks, no logging.
    """
    benchmark, splits = data
    mint, model = cfg["mint"], cfg["model"]
    torch.manual_seed(settings.seed)
    with PeakMemory(device) as memory:
        started = time.perf_counter()
        transform = BatchTransform(benchmark.mean, benchmark.std, CHANNELS, CHANNELS).to(device)
        backbone = backbone_from_config(model, mint["taps"], NUM_CLASSES, CHANNELS, IMAGE_SIZE)
        head = mint_head_from_config(
            mint["head"], [t.shape for t in backbone.tap_info], NUM_CLASSES
        )
        weighting = LossWeighting(mint["weighting"], mint["w_aud"], mint["w_mint"])
        for part in (backbone, head, weighting):
            part.to(device).train()
            if settings.channels_last:
                part.to(memory_format=torch.channels_last)
            if settings.compile and part is not weighting:
                part.compile()
        # The run's optimiser (conf/optim/*.yaml), without the schedule the run steps per epoch.
        optim = {k: v for k, v in cfg["optim"].items() if k != "schedule"}
        optimizer = instantiate(optim)([*backbone.parameters(), *head.parameters()])
        samples = IndexedSamples(
            (benchmark.train, benchmark.test), *catalogue(splits, TRAIN_POOL_ROLES)
        )
        if settings.on_device and device.type == "cuda":
            samples.images = [t.to(device) for t in samples.images]
            samples.labels = [t.to(device) for t in samples.labels]
        roles = samples.role.numpy()
        sampler = BalancedBatchSampler(
            np.flatnonzero(roles != EXTERNAL),
            np.flatnonzero(roles == EXTERNAL),
            settings.batch_size,
            settings.seed,
            external_per_member=float(mint["external_per_member"]),
        )
        pin = device.type == "cuda" and samples.images[0].device.type == "cpu"
        loader = DataLoader(samples, batch_sampler=sampler, collate_fn=lambda b: b, pin_memory=pin)
        autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16)
            if settings.precision == "bf16-mixed"
            else nullcontext()
        )
        step, epoch, start, loss = 0, 0, (0.0, 0.0), None
        while step < settings.steps:
            sampler.set_epoch(epoch)
            for batch in loader:
                where = role_positions(batch["role"])
                members = where["member_index"].to(device, non_blocking=True)
                targets = where["mint_index"].to(device, non_blocking=True)
                role = batch["role"].to(device, non_blocking=True)
                labels = batch["labels"].to(device, non_blocking=True)
                inputs = transform(batch["images"].to(device, non_blocking=True), train=True)
                if settings.channels_last:
                    inputs = inputs.contiguous(memory_format=torch.channels_last)
                with autocast:
                    logits, taps = backbone(inputs)
                    ce = F.cross_entropy(
                        logits.index_select(0, members), labels.index_select(0, members)
                    )
                    # the MINT loss itself (class-balanced BCE) from its one definition
                    bce = mint_loss(head(taps, logits, labels), role, targets)
                    loss = weighting(ce, bce)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                step += 1
                if step == settings.warmup:
                    sync(device)
                    start = stamp()
                if step == settings.steps:
                    break
            epoch += 1
        sync(device)
        stop = stamp()
        total = stop[0] - started
    return Run(
        stop[0] - start[0],
        stop[1] - start[1],
        total,
        settings.batch_size,
        settings.batch_size,
        settings.steps - settings.warmup,
        float(loss.detach()),
        memory.figures,
    )


# ---------------------------------------------------------------------------- interleaving
def interleaved(
    variants: dict[str, Callable[[], Run]], repeats: int
) -> dict[str, list[dict[str, float]]]:
    """Run every variant `repeats` times, the order reversed every other repeat (A B C, C B A,
    A B C, ...): each variant runs next to its neighbours in every repeat, and as often early as
    late. Put the reference of a comparison next to what it is compared with."""
    names = list(variants)
    figures: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            figures[name].append(variants[name]().figures())
            print(
                f"  {name:<24} repeat {r + 1}/{repeats}: {figures[name][-1]['samples_per_s']:.0f} samples/s",
                flush=True,
            )
    return figures


def summary(runs: list[dict[str, float]]) -> dict[str, Any]:
    """Medians over the repeats, plus the spread of samples/s."""
    keys = runs[0].keys()
    out: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k in keys}
    rates = [r["samples_per_s"] for r in runs]
    out["samples_per_s_min"], out["samples_per_s_max"] = min(rates), max(rates)
    out["repeats"] = len(runs)
    return out


def paired_ratio(
    numerator: list[dict[str, float]], denominator: list[dict[str, float]], key: str
) -> float:
    """The median over repeats of numerator[key] / denominator[key] (pairs run back to back)."""
    return statistics.median(a[key] / b[key] for a, b in zip(numerator, denominator, strict=True))


def bench_model(settings: Settings, model: str, device: torch.device) -> dict[str, Any]:
    """(a) Lightning vs raw loop, (b) active vs off and the fast paths, for one model."""
    data = data_for(settings.members, settings.seed)
    active, off = run_config(settings, model, "active"), run_config(settings, model, "off")
    # The membership memory (mint=active_general): its table sized for the bench's members and
    # for the paper's 25,000 (the same batches: what a larger table costs a step). The fingerprint
    # record (mint=active_fingerprint) reads every member written so far: its bank sized for the
    # bench's members (holding what the run writes), and for 25,000 holding every other member
    # of the paper's split from the first step (as from its second epoch).
    general = {
        "general": run_config(settings, model, "active_general"),
        "general_25k": run_config(settings, model, "active_general", members=MEMORY_MEMBERS),
        "fingerprint": run_config(settings, model, "active_fingerprint"),
        "fingerprint_25k": run_config(
            settings, model, "active_fingerprint", members=MEMORY_MEMBERS
        ),
    }
    banks = {"fingerprint_25k": MEMORY_MEMBERS - settings.members}
    # Lightning active in the middle: next to both of its references in every repeat.
    variants: dict[str, Callable[[], Run]] = {
        "raw_active": lambda: raw_run(settings, active, data, device),
        "lightning_active": lambda: lightning_run(settings, active, data, device),
        "lightning_off": lambda: lightning_run(settings, off, data, device),
        **{
            f"lightning_{name}": lambda c=cfg, n=name: lightning_run(
                settings, c, data, device, banks.get(n, 0)
            )
            for name, cfg in general.items()
        },
    }
    fast = {}
    if settings.fast_paths and not settings.channels_last:
        fast["channels_last"] = Settings(**{**settings.__dict__, "channels_last": True})
    for name, fast_settings in fast.items():
        cfg = run_config(fast_settings, model, "active")
        variants[f"lightning_active_{name}"] = lambda s=fast_settings, c=cfg: lightning_run(
            s, c, data, device
        )
    runs = interleaved(variants, settings.repeats)
    lightning, raw = runs["lightning_active"], runs["raw_active"]
    losses = [
        abs(a["last_loss"] - b["last_loss"]) / abs(b["last_loss"])
        for a, b in zip(lightning, raw, strict=True)
    ]
    result: dict[str, Any] = {
        "lightning_vs_raw": {
            "lightning": summary(lightning),
            "raw": summary(raw),
            "ratio": paired_ratio(lightning, raw, "samples_per_s"),
            "cpu_time_ratio": paired_ratio(lightning, raw, "samples_per_cpu_s"),
            "target": TARGETS["lightning_vs_raw"],
            "last_loss_rel_diff": max(losses),
            "same_work": max(losses) < 1e-3,
        },
        "active_vs_off": {
            "active": summary(lightning),
            "off": summary(runs["lightning_off"]),
            # per epoch of D: an active step trains on B/2 members like an off step, but forwards
            # B images (members + external) and the MINT head
            "ratio": paired_ratio(lightning, runs["lightning_off"], "samples_per_s"),
            "cpu_time_ratio": paired_ratio(lightning, runs["lightning_off"], "samples_per_cpu_s"),
            "epoch_time_ratio": paired_ratio(runs["lightning_off"], lightning, "samples_per_s"),
        },
    }
    result["memory"] = {
        "parameters": {
            name: parameter_count(cfg, data[0])
            for name, cfg in {"active": active, **general}.items()
        },
        "members": {
            "general": settings.members,
            "general_25k": MEMORY_MEMBERS,
            "fingerprint": settings.members,
            "fingerprint_25k": MEMORY_MEMBERS,
        },
        **{
            name: {
                "on": summary(runs[f"lightning_{name}"]),
                "ratio": paired_ratio(runs[f"lightning_{name}"], lightning, "samples_per_s"),
                "cpu_time_ratio": paired_ratio(
                    runs[f"lightning_{name}"], lightning, "samples_per_cpu_s"
                ),
                # an epoch of D against mint=off's (mint.external_per_member: fewer external
                # samples a step cost less)
                "epoch_time_ratio_vs_off": paired_ratio(
                    runs["lightning_off"], runs[f"lightning_{name}"], "samples_per_s"
                ),
                "external_per_member": float(cfg["mint"]["external_per_member"]),
            }
            for name, cfg in general.items()
        },
    }
    if fast:
        result["fast_paths"] = {
            name: {
                "on": summary(runs[f"lightning_active_{name}"]),
                "ratio": paired_ratio(runs[f"lightning_active_{name}"], lightning, "samples_per_s"),
                "cpu_time_ratio": paired_ratio(
                    runs[f"lightning_active_{name}"], lightning, "samples_per_cpu_s"
                ),
            }
            for name in fast
        }
    return result


# ------------------------------------------------------------------------------- pipelines
def our_batches(
    settings: Settings, data: tuple[Benchmark, MembershipSplits], device: torch.device, augment: str
) -> Callable[[], Iterator[torch.Tensor]]:
    """Our training pipeline as the DataModule gives it: float batches, normalised, on `device`."""
    benchmark, splits = data
    datamodule = MembershipDataModule(
        benchmark, splits, settings.batch_size, settings.batch_size, settings.seed
    )
    samples = datamodule.training_set
    if settings.on_device and device.type == "cuda":  # as MembershipDataModule.setup does
        samples.images = [t.to(device) for t in samples.images]
        samples.labels = [t.to(device) for t in samples.labels]
    loader = datamodule.train_dataloader()
    if device.type == "cuda" and samples.images[0].device.type == "cpu":  # pinned, as in fit
        loader = DataLoader(
            samples,
            batch_sampler=loader.batch_sampler,
            collate_fn=loader.collate_fn,
            pin_memory=True,
        )
    transform = BatchTransform(benchmark.mean, benchmark.std, CHANNELS, CHANNELS, augment).to(
        device
    )

    def epoch() -> Iterator[torch.Tensor]:
        for batch in loader:
            yield transform(batch["images"].to(device, non_blocking=True), train=True)

    return epoch


def torchvision_batches(
    settings: Settings,
    data: tuple[Benchmark, MembershipSplits],
    device: torch.device,
    augment: str,
    workers: int,
) -> Callable[[], Iterator[torch.Tensor]]:
    """What users write otherwise: a torchvision Dataset of HWC uint8 arrays (as torchvision's
    CIFAR10 keeps them), PIL + transforms per sample, a shuffling DataLoader over D and E."""
    from PIL import Image
    from torchvision import transforms as T
    from torchvision.datasets import VisionDataset

    benchmark, splits = data
    index = np.concatenate([splits[role] for role in TRAIN_POOL_ROLES])

    class ArrayImages(VisionDataset):
        def __init__(self, transform: Callable) -> None:
            super().__init__(root=None, transform=transform)
            self.data = benchmark.train.images[index].transpose(0, 2, 3, 1).copy()
            self.targets = benchmark.train.labels[index].tolist()

        def __len__(self) -> int:
            return len(self.data)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            return self.transform(Image.fromarray(self.data[i])), self.targets[i]

    steps = [T.ToTensor(), T.Normalize(benchmark.mean, benchmark.std)]
    if augment == "flip_crop":  # the same augmentation as our flip_crop: pad 1/8 of the side
        steps = [
            T.RandomCrop(IMAGE_SIZE, padding=IMAGE_SIZE // 8),
            T.RandomHorizontalFlip(),
            *steps,
        ]
    loader = DataLoader(
        ArrayImages(T.Compose(steps)),
        batch_size=settings.batch_size,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
    )

    def epoch() -> Iterator[torch.Tensor]:
        for images, _ in loader:
            yield images.to(device, non_blocking=True)

    return epoch


def pipeline_run(
    make: Callable[[], Callable[[], Iterator[torch.Tensor]]],
    settings: Settings,
    device: torch.device,
) -> Run:
    """A few warm-up batches (they start persistent workers), then `pipeline_epochs` timed epochs."""
    with PeakMemory(device) as memory:
        started = time.perf_counter()
        epoch = make()
        for i, _ in enumerate(epoch()):
            if i == 3:
                break
        sync(device)
        start, samples, batches = stamp(), 0, 0
        for _ in range(settings.pipeline_epochs):
            for images in epoch():
                samples += len(images)
                batches += 1
        sync(device)
        stop = stamp()
    return Run(
        stop[0] - start[0],
        stop[1] - start[1],
        stop[0] - started,
        samples // batches,
        samples // batches,
        batches,
        math.nan,
        memory.figures,
    )


def bench_pipeline(settings: Settings, device: torch.device) -> dict[str, Any]:
    """(c): our pipeline against torchvision + PIL, plain and with flip + crop augmentation."""
    data = data_for(settings.members, settings.seed)
    result: dict[str, Any] = {
        "target": TARGETS["pipeline"],
        "samples_per_epoch": 2 * settings.members,
    }
    for augment in ("none", "flip_crop"):
        baselines = {
            f"torchvision_workers{w}": lambda a=augment, w=w: pipeline_run(
                lambda: torchvision_batches(settings, data, device, a, w), settings, device
            )
            for w in settings.pipeline_workers
        }
        ours = {
            "ours": lambda a=augment: pipeline_run(
                lambda: our_batches(settings, data, device, a), settings, device
            )
        }
        # ours between the first two baselines: next to both in every repeat
        order = list(baselines.items())
        runs = interleaved(dict(order[:1] + list(ours.items()) + order[1:]), settings.repeats)
        entry = {name: summary(r) for name, r in runs.items()}
        entry["ratios"] = {
            f"ours_vs_{name}": paired_ratio(runs["ours"], r, "samples_per_s")
            for name, r in runs.items()
            if name != "ours"
        }
        entry["ratio"] = min(entry["ratios"].values())  # against the fastest baseline
        result["plain" if augment == "none" else "augmented"] = entry
    return result


# --------------------------------------------------------------------------------- scaling
def bench_scaling(settings: Settings, model: str, device: torch.device) -> dict[str, Any]:
    """Time and memory against the number of training samples (a whole epoch, then scoring every
    sample as a run does) and against the number of taps (fixed steps)."""
    samples = []
    for n in settings.scaling_samples:
        cfg = run_config(settings, model, "active")
        with PeakMemory(device) as memory:
            started = time.perf_counter()
            data = data_for(n // 2, settings.seed)
            benchmark, splits = data
            torch.manual_seed(settings.seed)
            module = AMINTModule(cfg, NUM_CLASSES, CHANNELS, MEAN, STD)
            datamodule = MembershipDataModule(
                benchmark,
                splits,
                settings.batch_size,
                4 * settings.batch_size,
                settings.seed,
                on_device=settings.on_device,
            )
            setup_s = time.perf_counter() - started
            trainer = bare_trainer(device, settings, max_epochs=1)
            fit_start = time.perf_counter()
            trainer.fit(module, datamodule=datamodule)
            sync(device)
            predict_start = time.perf_counter()
            trainer.predict(module, datamodule=datamodule)
            sync(device)
            stop = time.perf_counter()
        scored = len(datamodule.scored_set)
        samples.append(
            {
                "training_samples": n,
                "scored_samples": scored,
                "pool_mib": round(
                    (benchmark.train.images.nbytes + benchmark.test.images.nbytes) / MIB, 1
                ),
                "setup_s": setup_s,
                "epoch_s": predict_start - fit_start,
                "epoch_us_per_sample": 1e6 * (predict_start - fit_start) / n,
                "predict_s": stop - predict_start,
                "predict_us_per_sample": 1e6 * (stop - predict_start) / scored,
                **{k: v for k, v in memory.figures.items() if v is not None},
            }
        )
        print(f"  scaling samples={n}: epoch {samples[-1]['epoch_s']:.1f} s", flush=True)
    data = data_for(settings.members, settings.seed)
    variants = {}
    for taps in settings.scaling_taps:
        cfg = run_config(settings, model, "active", taps)
        variants[f"taps_{'_'.join(map(str, taps))}"] = lambda c=cfg: lightning_run(
            settings, c, data, device
        )
    runs = interleaved(variants, settings.taps_repeats)
    taps_rows = []
    for taps, r in zip(settings.scaling_taps, runs.values(), strict=True):
        module = AMINTModule(
            run_config(settings, model, "active", taps), NUM_CLASSES, CHANNELS, MEAN, STD
        )
        taps_rows.append(
            {
                "taps": list(taps),
                "tap_shapes": [list(t.shape) for t in module.backbone.tap_info],
                "head_parameters": sum(p.numel() for p in module.mint_head.parameters()),
                **summary(r),
            }
        )
    return {"model": model, "samples": samples, "taps": taps_rows}


# ---------------------------------------------------------------------------------- report
def gpu_note(settings: Settings, device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        return {"measured": True, "gpu": torch.cuda.get_device_name(device)}
    return {
        "measured": False,
        "note": (
            "No GPU was lent to this measurement. On a GPU run: python experiments/bench.py "
            "--device cuda --precision bf16-mixed --models resnet18,vit --channels-last --on-device"
        ),
    }


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    """The results as Markdown: the headline table, then memory, scaling and the GPU note."""
    m, s = results["machine"], results["settings"]
    lines = [
        f"# Bench: {results['machine_name']}",
        "",
        f"`{results['command']}` on {results['date']}, {results['wall_s']:.0f} s.",
        f"Machine: {m['cpu']}, {m['cpu_cores']} cores, {m['torch_threads']} torch threads"
        + (f", GPU {m['gpu']}" if m["gpu"] else ", no GPU")
        + (f", niceness {m['nice']}" if m["nice"] else "")
        + f"; load average {results['load_average'][0]:.1f} at the start, "
        f"{results['load_average'][1]:.1f} at the end. {results['note']}",
        f"Settings: {s['precision']}, batch {s['batch_size']}, {s['steps'] - s['warmup']} timed steps "
        f"after {s['warmup']} warm-up steps, {s['repeats']} interleaved repeats (medians), "
        f"{s['members']} members + {s['members']} external samples, 32x32x3 uint8.",
        *(
            [
                f"Torch ran {m['torch_threads']} thread(s) on {m['cpu_cores']} cores (--threads): on "
                "a loaded CPU, threads that wait for each other at every operation measure the "
                "scheduler more than the code."
            ]
            if m["device"] == "cpu" and m["torch_threads"] < m["cpu_cores"]
            else []
        ),
        "",
        "Ratios: medians of the per-repeat ratios of wall-clock throughput; in the CPU-time "
        "column, of throughput per second of this process's CPU time (what other processes on a "
        "shared machine take does not count). A ratio pairs the runs of one repeat; the "
        "throughput columns are medians over all repeats, so they need not divide to it.",
        "",
        "| comparison | ours | reference | ratio | CPU-time ratio | target |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for model, r in results["models"].items():
        a, b = r["lightning_vs_raw"], r["active_vs_off"]
        lines.append(
            f"| (a) {model}: Lightning vs raw loop, samples/s | {_fmt(a['lightning']['samples_per_s'])} "
            f"| {_fmt(a['raw']['samples_per_s'])} | **{a['ratio']:.2f}** | {a['cpu_time_ratio']:.2f} "
            f"| >= {a['target']} |"
        )
        lines.append(
            f"| (b) {model}: mint=active vs mint=off, members/s | {_fmt(b['active']['samples_per_s'] / 2)} "
            f"| {_fmt(b['off']['samples_per_s'] / 2)} | **{b['ratio']:.2f}** (epoch x{b['epoch_time_ratio']:.2f}) "
            f"| {b['cpu_time_ratio']:.2f} | - |"
        )
        mem = r["memory"]
        for name in ("general", "general_25k", "fingerprint", "fingerprint_25k"):
            n = mem["parameters"][name]
            preset, kept = (
                name.split("_")[0],
                "parameters" if name.startswith("general") else "numbers",
            )
            lines.append(
                f"| (b) {model}: mint=active_{preset} (memory {n['memory'] / 1e6:.1f}M {kept}, "
                f"sized for {mem['members'][name]} members; "
                f"{mem[name]['external_per_member']:g} external per member) vs mint=active, "
                f"samples/s | {_fmt(mem[name]['on']['samples_per_s'])} "
                f"| {_fmt(a['lightning']['samples_per_s'])} | {mem[name]['ratio']:.2f} "
                f"(epoch x{mem[name]['epoch_time_ratio_vs_off']:.2f} of off) "
                f"| {mem[name]['cpu_time_ratio']:.2f} | - |"
            )
        for name, f in r.get("fast_paths", {}).items():
            lines.append(
                f"| {model}: {name} vs without, samples/s | {_fmt(f['on']['samples_per_s'])} "
                f"| {_fmt(a['lightning']['samples_per_s'])} | {f['ratio']:.2f} | {f['cpu_time_ratio']:.2f} | - |"
            )
    p = results["pipeline"]
    for kind in ("plain", "augmented"):
        entry = p[kind]
        for name, ratio in entry["ratios"].items():
            ref = name.removeprefix("ours_vs_")
            lines.append(
                f"| (c) pipeline {kind}, {ref.replace('_', ' ')}, samples/s | {_fmt(entry['ours']['samples_per_s'])} "
                f"| {_fmt(entry[ref]['samples_per_s'])} | **{ratio:.1f}** | - | >= {p['target']} |"
            )
    for model, r in results["models"].items():
        a = r["lightning_vs_raw"]
        lines += [
            "",
            f"A whole {model} run of {s['steps']} steps (set-up, steps, tear-down), medians: "
            f"Lightning {a['lightning']['total_s']:.2f} s, raw loop {a['raw']['total_s']:.2f} s.",
        ]
    lines += [
        "",
        "## (d) Peak memory of each run (RSS high-water mark, medians)",
        "",
        "The RSS of this process (DataLoader worker processes not counted), its high-water mark "
        "reset before each run; the growth is over the RSS at the start of the run, after freed "
        "memory was handed back to the OS.",
        "",
    ]
    lines += [
        "| run | peak RSS MiB | growth during the run MiB | CUDA max allocated MiB |",
        "|---|---:|---:|---:|",
    ]
    rows = []
    for model, r in results["models"].items():
        rows += [
            (f"{model} Lightning active", r["lightning_vs_raw"]["lightning"]),
            (f"{model} raw loop active", r["lightning_vs_raw"]["raw"]),
            (f"{model} Lightning off", r["active_vs_off"]["off"]),
        ]
    for kind in ("plain", "augmented"):
        rows += [
            (f"pipeline {kind}: {n}", v)
            for n, v in p[kind].items()
            if isinstance(v, dict) and "samples_per_s" in v
        ]
    for name, v in rows:
        lines.append(
            f"| {name} | {_fmt(v.get('peak_rss_mib'))} | {_fmt(v.get('rss_growth_mib'), 1)} "
            f"| {_fmt(v.get('cuda_max_allocated_mib'))} |"
        )
    sc = results["scaling"]
    lines += [
        "",
        f"## Scaling ({sc['model']}, mint=active)",
        "",
        "One epoch over D + E, then scoring every sample (`trainer.predict`), one run per size:",
        "",
        "| training samples | pools MiB | set-up s | epoch s | us/sample | predict s | us/sample | peak RSS MiB | growth MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in sc["samples"]:
        lines.append(
            f"| {row['training_samples']} | {row['pool_mib']} | {row['setup_s']:.2f} | {row['epoch_s']:.2f} "
            f"| {row['epoch_us_per_sample']:.0f} | {row['predict_s']:.2f} | {row['predict_us_per_sample']:.0f} "
            f"| {_fmt(row.get('peak_rss_mib'))} | {_fmt(row.get('rss_growth_mib'), 1)} |"
        )
    lines += [
        "",
        "Taps (fixed steps; medians of interleaved repeats):",
        "",
        "| taps | tap shapes | head parameters | samples/s | ms/step | growth MiB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in sc["taps"]:
        lines.append(
            f"| {row['taps']} | {row['tap_shapes']} | {row['head_parameters']:,} | {_fmt(row['samples_per_s'])} "
            f"| {row['ms_per_step']:.0f} | {_fmt(row.get('rss_growth_mib'), 1)} |"
        )
    g = results["gpu"]
    lines += ["", "## GPU", "", f"Measured on {g['gpu']}." if g["measured"] else g["note"], ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ main
def parse_args(argv: Sequence[str] | None = None) -> Settings:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of seconds")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--precision", default="32-true", help="32-true | bf16-mixed | 16-mixed")
    p.add_argument("--models", default="small_cnn", help="comma-separated conf/model names")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--steps", type=int, help="training steps per run (warm-up included)")
    p.add_argument("--warmup", type=int)
    p.add_argument("--repeats", type=int)
    p.add_argument("--members", type=int, help="D (and as many external samples)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--on-device", action="store_true", help="the pools on the GPU")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument(
        "--machine", default="", help="names the result files (default: cpu<cores> or the GPU)"
    )
    p.add_argument(
        "--out",
        type=Path,
        help=f"folder of the result files (default: {RESULTS}; with --quick {SCRATCH})",
    )
    args = p.parse_args(argv)
    settings = Settings(
        device=args.device,
        precision=args.precision,
        models=tuple(m for m in args.models.split(",") if m),
        channels_last=args.channels_last,
        compile=args.compile,
        on_device=args.on_device,
        threads=args.threads,
        machine=args.machine,
        out=args.out or (SCRATCH if args.quick else RESULTS),
    )
    if args.device == "cuda":  # a GPU: bigger batches and more steps than 2 CPU cores can take
        settings.batch_size, settings.steps, settings.warmup = 256, 60, 10
        settings.scaling_samples = (4096, 16384, 32768)
    if args.quick:
        quick(settings)
    for name in ("batch_size", "steps", "warmup", "repeats", "members"):
        if getattr(args, name) is not None:
            setattr(settings, name, getattr(args, name))
    if settings.warmup >= settings.steps:
        p.error(f"--warmup ({settings.warmup}) must be below --steps ({settings.steps})")
    return settings


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    settings = parse_args(argv)
    if settings.device == "cuda" and not torch.cuda.is_available():
        print(
            "error: --device cuda but torch sees no GPU: run on a GPU machine or drop --device",
            file=sys.stderr,
        )
        sys.exit(2)
    device = torch.device(settings.device)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    quiet_lightning()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings(
        "ignore", message=".*(max_epochs|does not have many workers|LeafSpec).*"
    )
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    cores = cpu_cores()
    if device.type == "cpu" and load_start > cores and torch.get_num_threads() > 1:
        print(
            f"warning: load average {load_start:.1f} on {cores} cores: torch's threads wait for "
            "each other while other processes hold the cores; --threads 1 measures more steadily",
            file=sys.stderr,
        )
    results: dict[str, Any] = {
        "machine_name": settings.machine or machine_name(device),
        "machine": machine_info(device),
        "command": "python experiments/bench.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "note": (
            "The machine was shared: other processes ran at the same time, so absolute figures "
            "are noisy; the ratios come from interleaved repeats in one process."
        ),
        "versions": versions(),
        "settings": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in settings.__dict__.items()
        },
        "models": {},
    }
    for model in settings.models:
        print(f"(a, b) {model}", flush=True)
        results["models"][model] = bench_model(settings, model, device)
    print("(c) pipelines", flush=True)
    results["pipeline"] = bench_pipeline(settings, device)
    print("scaling", flush=True)
    results["scaling"] = bench_scaling(settings, settings.models[0], device)
    results["gpu"] = gpu_note(settings, device)
    results["load_average"] = [load_start, os.getloadavg()[0]]
    results["wall_s"] = time.perf_counter() - started
    settings.out.mkdir(parents=True, exist_ok=True)
    stem = settings.out / f"bench-{results['machine_name']}"
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    stem.with_suffix(".md").write_text(table)
    print(table)
    print(f"wrote {stem}.json and {stem}.md")
    return results


if __name__ == "__main__":
    main()
