"""The generalizing-aMINT mechanisms (issue 9): output features, positive subsets, the preset."""

import torch

from amint_pl.data.datamodule import ROLE_CODES
from amint_pl.models.mint_head import MINTHead, output_statistics
from amint_pl.training.module import role_positions
from tests.conftest import TINY, read_results

SEEN, UNSEEN, EXTERNAL = (ROLE_CODES[r] for r in ("members_seen", "members_unseen", "external"))


def test_positive_fraction_keeps_external_drops_unseen_and_rotates_with_the_epoch():
    role = torch.tensor([SEEN] * 2000 + [UNSEEN] * 200 + [EXTERNAL] * 2000)
    index = torch.arange(len(role))
    full = role_positions(role, index)["mint_index"]
    assert len(full) == 4000 and not (role[full] == UNSEEN).any()
    half = [role_positions(role, index, 0.5, salt)["mint_index"] for salt in (0, 1)]
    for chosen in half:
        seen = int((role[chosen] == SEEN).sum())
        assert 900 < seen < 1100  # about half of the seen members
        assert int((role[chosen] == EXTERNAL).sum()) == 2000
        assert not (role[chosen] == UNSEEN).any()
    assert not torch.equal(half[0], half[1])  # a new draw per salt (epoch)
    assert torch.equal(half[0], role_positions(role, index, 0.5, 0)["mint_index"])  # fixed per salt


def test_output_statistics_see_what_the_loss_attack_sees():
    logits = torch.tensor([[8.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([0, 0])
    features = output_statistics(logits, labels, ["loss", "probs", "entropy"])
    assert features.shape == (2, 1 + 3 + 1)
    assert features[0, 0] < features[1, 0]  # the confident, right sample has the lower log loss
    # Without labels the predicted class stands in: the same as labelling it correctly here.
    assert torch.allclose(output_statistics(logits, None, ["loss"]), features[:, :1])


def test_a_head_on_outputs_alone_and_the_gradient_stop():
    head = MINTHead([(4, 4, 4)], output_features=["loss", "probs"], num_classes=3, use_taps=False)
    logits = torch.randn(5, 3, requires_grad=True)
    head([torch.randn(5, 4, 4, 4)], logits, torch.zeros(5, dtype=torch.long)).sum().backward()
    assert logits.grad is None  # detach_outputs: the MINT loss reaches the backbone via taps only
    head = MINTHead([(4, 4, 4)], output_features=["loss"], num_classes=3, detach_outputs=False)
    logits = torch.randn(5, 3, requires_grad=True)
    head([torch.randn(5, 4, 4, 4)], logits, torch.zeros(5, dtype=torch.long)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_the_general_preset_runs_on_a_tiny_budget(run_amint):
    _, run_dir = run_amint(
        *TINY, "mint=active_general", "mint.positive_fraction=0.5", "mint.rotate_positives=true"
    )
    results = read_results(run_dir)
    assert results["status"] == "completed"
    assert {"paper", "strict"} <= set(results["membership"])
    assert 0.0 <= results["membership"]["strict"]["mint"]["auc"] <= 1.0
