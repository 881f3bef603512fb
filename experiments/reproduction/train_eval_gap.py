"""Train-mode vs eval-mode accuracy of an audited model: where a recipe loses its accuracy.

Trains the real `AMINTModule` (a composed run config, the real balanced sampler, drawn anew each
epoch) in a plain loop on a small split, and after each epoch measures the audited accuracy on the
same members and on test images in three ways:

- `train`: BatchNorm in training mode (batch statistics), batches as in training (half members,
  half external samples), running statistics left untouched;
- `eval`: the model as it is evaluated and audited (running statistics);
- `recal`: eval mode after re-estimating the running statistics exactly (a cumulative average
  over one pass of the training batches): what is left of the gap is not the estimate's fault.

    OMP_NUM_THREADS=1 python experiments/reproduction/train_eval_gap.py model=mobilenet \
        --members 2000 --external 2000 --epochs 4 [mint=off optim.lr=1e-3 ...]

Any further argument is a Hydra override of the run config. Prints one line per epoch.
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from torch import nn

from amint_pl.data.benchmarks import benchmark_from_config
from amint_pl.data.datamodule import IndexedSamples, MembershipDataModule
from amint_pl.data.splits import ROLE_CODES, SplitSizes, build_splits
from amint_pl.training.module import AMINTModule


def compose_config(overrides: list[str]) -> dict:
    with initialize_config_module(config_module="amint_pl.conf", version_base="1.3"):
        cfg = compose(config_name="run", overrides=["paths.output_dir=unused", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


def norm_layers(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def prepared(module: AMINTModule, batch: dict) -> dict:
    batch = module.on_before_batch_transfer(dict(batch), 0)
    return module.on_after_batch_transfer(batch, 0)


@torch.no_grad()
def accuracy(
    module: AMINTModule, batches: list[dict], roles: tuple[int, ...], train: bool
) -> float:
    """Audited accuracy on the samples of `roles` in `batches`; `train`: batch statistics."""
    saved = copy.deepcopy(
        [(m.running_mean, m.running_var, m.num_batches_tracked) for m in norm_layers(module)]
    )
    module.train(train)
    correct = total = 0
    for batch in batches:
        batch = prepared(module, batch)
        logits, _, _ = module.audited(batch["inputs"])
        keep = torch.isin(batch["role"], torch.tensor(roles))
        correct += int((logits.argmax(1)[keep] == batch["labels"][keep]).sum())
        total += int(keep.sum())
    for m, (mean, var, n) in zip(norm_layers(module), saved, strict=True):
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)
        m.num_batches_tracked.copy_(n)
    module.train()
    return correct / max(total, 1)


@torch.no_grad()
def recalibrated(module: AMINTModule, batches: list[dict]) -> AMINTModule:
    """A copy whose BatchNorm running statistics are the exact average over `batches`."""
    copy_ = copy.deepcopy(module)
    for m in norm_layers(copy_):
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    copy_.train()
    for batch in batches:
        copy_.audited(prepared(copy_, batch)["inputs"])
    return copy_


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=2000)
    parser.add_argument("--external", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scored", type=int, default=512, help="members and test images scored")
    parser.add_argument("--score-every", type=int, default=1, help="score every N epochs")
    parser.add_argument("--fixed-batches", action="store_true", help="the same batches every epoch")
    parser.add_argument(
        "--timm-classifier-init",
        action="store_true",
        help="an EfficientNet/MobileNet classifier as timm initialises it (what amint_pl replaces)",
    )
    args, overrides = parser.parse_known_args()
    cfg = compose_config(["dataset=fashion_mnist", *overrides])
    torch.manual_seed(args.seed)
    benchmark = benchmark_from_config(cfg["dataset"])
    sizes = SplitSizes(args.members, 0.0, args.external, 100, args.scored, calib_fraction=0.05)
    splits = build_splits(len(benchmark.train), len(benchmark.test), sizes, args.seed)
    dm = MembershipDataModule(benchmark, splits, int(cfg["batch_size"]), 512, args.seed)
    module = AMINTModule(
        cfg, benchmark.num_classes, benchmark.channels, benchmark.mean, benchmark.std
    )
    if args.timm_classifier_init:
        from timm.models._efficientnet_builder import _init_weight_goog

        _init_weight_goog(module.backbone.network.get_classifier())
    module.set_phase(module.phases[0])
    optimizer = module.configure_optimizers()
    loader = dm.train_dataloader()
    sampler = loader.batch_sampler
    # Scored batches: the first 1000 members with as many external samples, as training mixes
    # them; and test images.
    sampler.set_epoch(10_000)
    scored = [b for _, b in zip(range(max(1, args.scored // sampler.half)), loader, strict=False)]
    test_set = IndexedSamples(
        (benchmark.train, benchmark.test),
        np.ones(len(splits["nonmembers_eval"]), dtype=int),
        splits["nonmembers_eval"],
        np.full(len(splits["nonmembers_eval"]), ROLE_CODES["nonmembers_eval"]),
    )
    tests = [
        test_set.__getitems__(range(i, min(i + 128, len(test_set))))
        for i in range(0, len(test_set), 128)
    ]
    members = (ROLE_CODES["members_seen"], ROLE_CODES["members_unseen"])
    nonmember = (ROLE_CODES["nonmembers_eval"],)
    print(f"config: {' '.join(overrides)} | members {args.members} external {args.external}")
    print("epoch  ce     | members: train  eval  recal | test: train  eval  recal | s")
    started = time.time()
    ce: list[float] = []
    module.log = lambda name, value, **_: (
        ce.append(float(value.detach())) if name == "train/ce" else None
    )
    for epoch in range(args.epochs):
        sampler.set_epoch(0 if args.fixed_batches else epoch)
        module.train()
        module.on_train_epoch_start()
        ce.clear()
        for step, batch in enumerate(loader):
            module.on_train_batch_start(batch, step)
            optimizer.zero_grad()
            batch = prepared(module, batch)
            loss = module.training_step(batch, step)
            loss.backward()
            optimizer.step()
        if (epoch + 1) % args.score_every and epoch + 1 < args.epochs:
            print(f"{epoch + 1:5d}  {np.mean(ce):.3f}", flush=True)
            continue
        recal = recalibrated(module, [b for _, b in zip(range(16), loader, strict=False)])
        rows = [
            accuracy(module, scored, members, True),
            accuracy(module, scored, members, False),
            accuracy(recal, scored, members, False),
            # test images in training mode: each batch's own statistics, with training's mix
            accuracy(
                module, [_mixed(t, s) for t, s in zip(tests, scored, strict=False)], nonmember, True
            ),
            accuracy(module, tests, nonmember, False),
            accuracy(recal, tests, nonmember, False),
        ]
        print(
            f"{epoch + 1:5d}  {np.mean(ce):.3f}  |  {rows[0]:.3f}  {rows[1]:.3f}  {rows[2]:.3f}  |"
            f"  {rows[3]:.3f}  {rows[4]:.3f}  {rows[5]:.3f}  | {time.time() - started:.0f}",
            flush=True,
        )


def _mixed(test: dict, scored: dict) -> dict:
    """Test images in place of a scored batch's members: half test, half external samples."""
    half = int((scored["role"] != ROLE_CODES["external"]).sum())
    n = min(half, len(test["labels"]))
    out = {}
    for key in ("images", "labels", "role", "index", "pool"):
        external = scored[key][scored["role"] == ROLE_CODES["external"]]
        out[key] = torch.cat([test[key][:n], external[:n]])
    return out


if __name__ == "__main__":
    main()
