"""BatchNorm layers that record the statistics of one forward and normalise another by them."""

import copy

import pytest
import torch
from torch import nn

from amint_pl.models.small_cnn import SmallCNN
from amint_pl.training.batch_statistics import batch_norms, recorded, replayable, replayed


def _network(momentum):
    torch.manual_seed(0)
    network = SmallCNN(10, 1, (8, 16))
    for layer in batch_norms(network):
        layer.momentum = momentum
    return network.train()


@pytest.mark.parametrize("momentum", [0.1, None])  # None: the cumulative average
def test_recording_changes_neither_the_forward_nor_the_running_statistics(momentum):
    """Over several steps a recording network computes, learns and keeps running statistics
    exactly as a plain one (its running buffers are stand-ins while a layer runs)."""
    plain, recording = _network(momentum), _network(momentum)
    optimisers = [torch.optim.SGD(n.parameters(), lr=0.1) for n in (plain, recording)]
    for step in range(4):
        torch.manual_seed(step)
        x, y = torch.randn(12, 1, 28, 28) * (1 + step), torch.randint(0, 10, (12,))
        expected = plain(x)
        with recorded(batch_norms(recording)) as statistics:
            got = recording(x)
        assert torch.equal(got, expected)
        for out, optimiser in zip((expected, got), optimisers, strict=True):
            optimiser.zero_grad()
            nn.functional.cross_entropy(out, y).backward()
            optimiser.step()
        assert len(statistics) == len(batch_norms(recording))
    for (name, a), (_, b) in zip(plain.named_buffers(), recording.named_buffers(), strict=True):
        assert torch.allclose(a.double(), b.double(), rtol=1e-6, atol=1e-7), name
    for (name, a), (_, b) in zip(
        plain.named_parameters(), recording.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), name


def test_a_replayed_forward_normalises_by_the_recorded_batch_and_updates_nothing():
    network = _network(0.1)
    members, external = torch.randn(16, 1, 28, 28), 3 + 2 * torch.randn(4, 1, 28, 28)
    with recorded(batch_norms(network)) as statistics:
        first = network(members)
    kept = copy.deepcopy(network.state_dict())
    with torch.no_grad(), replayed(statistics):
        again = network(members)  # the same rows: normalised as in the first forward
    with torch.no_grad(), replayed(statistics):
        apart = network(external)
    with torch.no_grad(), replayed(statistics):
        pair = network(external[:2])
    assert torch.allclose(again, first, atol=1e-5)
    assert torch.allclose(pair, apart[:2], atol=1e-5)  # row by row: the members' statistics
    # On their own batch statistics (training mode) the external rows come out otherwise.
    with torch.no_grad():
        assert not torch.allclose(copy.deepcopy(network)(external), apart, atol=1e-2)
    for name, value in network.state_dict().items():
        assert torch.equal(value, kept[name]), name  # no running statistic moved
    assert all(layer.training for layer in batch_norms(network))
    # Each layer ran once per recorded call: one more call has no statistics to replay.
    with torch.no_grad(), replayed(statistics):
        network(members)
        with pytest.raises(RuntimeError, match="ran more often"):
            network(members)


def test_only_layers_with_their_own_running_statistics_replay():
    assert replayable(batch_norms(_network(0.1)))
    assert not replayable([nn.BatchNorm2d(4, track_running_stats=False)])
    assert not replayable([nn.SyncBatchNorm(4)])
