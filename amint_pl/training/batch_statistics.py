"""A second forward normalised as the first: BatchNorm layers replay the batch statistics that they
computed in a first forward (in training mode), and update no running statistics.

The joint step uses it when only the members need the audited model's graph: the members forward
with it, on their own batch statistics (as they do without aMINT), and the external samples forward
without it, each BatchNorm layer normalising them by the members' mean and variance, as one forward
over the whole batch normalises every row alike.

The statistics cost nothing to record: while a layer runs, its running buffers are stand-ins that
it overwrites with the batch's statistics (momentum 1); its own buffers then take the update the
layer would have made (its momentum, or the cumulative average without one).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

Statistics = dict[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]


def batch_norms(module: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers of `module` (SyncBatchNorm included)."""
    return [m for m in module.modules() if isinstance(m, _BatchNorm)]


def replayable(norms: list[_BatchNorm]) -> bool:
    """Whether `recorded` can record these layers: each keeps running statistics and normalises
    by this process's batch alone (a SyncBatchNorm's statistics span every process)."""
    return all(
        layer.track_running_stats and not isinstance(layer, nn.SyncBatchNorm) for layer in norms
    )


@contextmanager
def recorded(norms: list[_BatchNorm]) -> Iterator[Statistics]:
    """Within: each of `norms` that runs in training mode records the batch mean and (biased)
    variance per channel that it normalises by, once per call, and updates its running statistics
    as it would have."""
    statistics: Statistics = {}
    own: dict[nn.Module, tuple] = {}

    def before(layer: nn.Module, args: tuple) -> None:
        if not layer.training:
            return
        buffers = layer._buffers
        mean, var = buffers["running_mean"], buffers["running_var"]
        own[layer] = (mean, var, layer.momentum)
        buffers["running_mean"], buffers["running_var"] = (
            torch.zeros_like(mean),
            torch.zeros_like(var),
        )
        layer.momentum = 1.0

    def after(layer: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if layer not in own:
            return
        mean, var, momentum = own.pop(layer)
        batch_mean, unbiased = layer._buffers["running_mean"], layer._buffers["running_var"]
        layer._buffers["running_mean"], layer._buffers["running_var"] = mean, var
        layer.momentum = momentum
        x = args[0]
        n = x.numel() // x.shape[1]
        statistics.setdefault(layer, []).append((batch_mean, unbiased * ((n - 1) / n)))
        factor = momentum if momentum is not None else 1.0 / float(layer.num_batches_tracked)
        with torch.no_grad():  # in double, as the layer's own update (to its last bit or so)
            for running, batch in ((mean, batch_mean), (var, unbiased)):
                running.copy_(factor * batch.double() + (1 - factor) * running.double())

    handles = [layer.register_forward_pre_hook(before) for layer in norms]
    handles += [layer.register_forward_hook(after) for layer in norms]
    try:
        yield statistics
    finally:
        for handle in handles:
            handle.remove()
        for layer, (mean, var, momentum) in own.items():  # a forward that raised midway
            layer._buffers["running_mean"], layer._buffers["running_var"] = mean, var
            layer.momentum = momentum


@contextmanager
def replayed(statistics: Statistics) -> Iterator[None]:
    """Within: each layer that recorded statistics normalises its n-th call by those of its n-th
    recorded call (in evaluation mode, the statistics in place of its running ones, which stay as
    they were)."""
    queues = {layer: list(calls) for layer, calls in statistics.items()}
    saved: dict[nn.Module, tuple] = {}

    def before(layer: nn.Module, args: tuple) -> None:
        if not queues[layer]:
            raise RuntimeError(
                f"{type(layer).__name__} ran more often than when its statistics were recorded"
            )
        mean, var = queues[layer].pop(0)
        buffers = layer._buffers
        saved[layer] = (layer.training, buffers["running_mean"], buffers["running_var"])
        layer.training = False
        buffers["running_mean"], buffers["running_var"] = mean, var

    def after(layer: nn.Module, args: tuple, output: torch.Tensor) -> None:
        training, mean, var = saved.pop(layer)
        layer.training = training
        layer._buffers["running_mean"], layer._buffers["running_var"] = mean, var

    handles = []
    for layer in queues:
        handles.append(layer.register_forward_pre_hook(before))
        handles.append(layer.register_forward_hook(after))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for layer, (training, mean, var) in saved.items():  # a forward that raised midway
            layer.training = training
            layer._buffers["running_mean"], layer._buffers["running_var"] = mean, var
