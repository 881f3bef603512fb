"""The classic attacks (LOSS, confidence, entropy, modified entropy) on outputs with a known answer,
and the membership curves that the MINT head and the LOSS attack draw during training."""

import csv
import math

import pytest
import torch
from sklearn.metrics import roc_auc_score

from amint_pl.data.benchmarks import benchmark_from_config
from amint_pl.data.datamodule import MembershipDataModule
from amint_pl.data.splits import SplitSizes, build_splits
from amint_pl.evaluation.attacks import CLASSIC_ATTACKS, classic_attack_scores
from amint_pl.evaluation.metrics import membership_metrics
from amint_pl.models.outputs import true_label_log_probability
from amint_pl.training.module import CALIB_MEMBERS, CALIB_NONMEMBERS, AMINTModule
from tests.helpers import config_dict


def _logits(probabilities):
    """Logits whose softmax is exactly the given rows of probabilities."""
    return torch.log(torch.tensor(probabilities, dtype=torch.float64))


def test_each_score_matches_its_formula():
    # p = (0.5, 0.25, 0.25); true label 0, then 1.
    s = classic_attack_scores(_logits([[0.5, 0.25, 0.25]] * 2), torch.tensor([0, 1]))
    assert s["loss"] == pytest.approx([math.log(0.5), math.log(0.25)])
    assert s["confidence"] == pytest.approx([0.5, 0.5])
    entropy = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert s["entropy"] == pytest.approx([-entropy, -entropy])
    # Song & Mittal: Mentr = -(1 - p_y) log p_y - sum_{i != y} p_i log(1 - p_i)
    m0 = -(0.5 * math.log(0.5)) - 2 * 0.25 * math.log(0.75)
    m1 = -(0.75 * math.log(0.25)) - (0.5 * math.log(0.5) + 0.25 * math.log(0.75))
    assert s["modified_entropy"] == pytest.approx([-m0, -m1])
    assert set(s) == set(CLASSIC_ATTACKS)
    assert true_label_log_probability(
        _logits([[0.5, 0.25, 0.25]]), torch.tensor([2])
    ).exp().item() == (pytest.approx(0.25))


def test_known_aucs_tell_the_attacks_apart():
    """Members: right and confident, p = (0.9, 0.05, 0.05). Non-members: half right but unsure,
    (0.6, 0.2, 0.2); half confidently wrong, (0.05, 0.9, 0.05). The label-blind attacks
    (confidence, entropy) mistake the wrong half for members: AUC 0.5 * 1 + 0.5 * 0.5 = 0.75; the
    label-aware ones (LOSS, modified entropy) separate everything: AUC 1."""
    n = 50
    members = classic_attack_scores(_logits([[0.9, 0.05, 0.05]] * n), torch.zeros(n, dtype=int))
    nonmembers = classic_attack_scores(
        _logits([[0.6, 0.2, 0.2]] * (n // 2) + [[0.05, 0.9, 0.05]] * (n // 2)),
        torch.zeros(n, dtype=int),
    )
    expected = {"loss": 1.0, "confidence": 0.75, "entropy": 0.75, "modified_entropy": 1.0}
    for attack, auc in expected.items():
        m = membership_metrics(members[attack], nonmembers[attack])
        assert m["auc"] == pytest.approx(auc), attack


# ------------------------------------------------------------------------ membership curves


def test_membership_curves_are_logged_each_epoch_and_plotted(tmp_path):
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    cfg = config_dict("mint=active")
    benchmark = benchmark_from_config(cfg["dataset"])
    splits = build_splits(
        len(benchmark.train), len(benchmark.test), SplitSizes(120, 0.25, 120, 80), seed=0
    )
    L.seed_everything(0, verbose=False)
    module = AMINTModule(
        cfg, benchmark.num_classes, benchmark.channels, benchmark.mean, benchmark.std
    )
    datamodule = MembershipDataModule(benchmark, splits, 64, 256, seed=0)
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=CSVLogger(tmp_path, name="csv", version=""),
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    trainer.fit(module, datamodule=datamodule)

    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/paper/loss_auc")]
    assert [int(r["epoch"]) for r in rows] == [0, 1]  # one row per epoch, no sanity check
    for key in ("val/aud_acc", "val/paper/mint_auc", "val/strict/mint_auc", "val/strict/loss_auc"):
        assert all(0.0 <= float(r[key]) <= 1.0 for r in rows), key
    png = tmp_path / "training_curves.png"
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"

    # The last epoch's logged AUCs are those of the final model on the calibration sets.
    module.eval()
    outputs = {"loss": [], "mint": [], "role": []}
    with torch.no_grad():
        for batch in datamodule.val_dataloader():
            batch = module.on_after_batch_transfer(batch, 0)
            logits, mint_logits = module(batch["inputs"])
            outputs["loss"].append(true_label_log_probability(logits, batch["labels"]))
            outputs["mint"].append(mint_logits.double())
            outputs["role"].append(batch["role"])
    loss, mint, role = (torch.cat(outputs[k]).numpy() for k in ("loss", "mint", "role"))
    for protocol in ("paper", "strict"):
        keep = (role == CALIB_MEMBERS[protocol]) | (role == CALIB_NONMEMBERS)
        target = role[keep] == CALIB_MEMBERS[protocol]
        for method, score in (("loss", loss), ("mint", mint)):
            logged = float(rows[-1][f"val/{protocol}/{method}_auc"])
            assert logged == pytest.approx(roc_auc_score(target, score[keep]), abs=1e-6)
