"""A run's report: per-sample scores, metrics of every method in both protocols, files and plots.

Writes into the run directory: `scores.csv` (one row per scored sample), `results.json`,
`roc.png` (log-log ROC of every method, one panel per protocol) and `scores_hist.png`.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from amint_pl.data.splits import CALIB_SLICES, POOL_NAMES, PROTOCOLS, ROLE_NAMES, MembershipSplits
from amint_pl.evaluation.attacks import classic_attack_scores
from amint_pl.evaluation.metrics import membership_metrics, roc
from amint_pl.models.outputs import member_probability


@dataclass
class ScoredSamples:
    """One row per scored sample: where it comes from, its label, and every method's score."""

    pool: np.ndarray
    index: np.ndarray
    role: np.ndarray
    label: np.ndarray
    prediction: np.ndarray
    scores: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.index)

    @property
    def methods(self) -> list[str]:
        return list(self.scores)

    def rows_of(self, role: str, indices: np.ndarray) -> np.ndarray:
        """Row numbers of the given pool indices of a role (calibration slices: the role they are
        a slice of, with which they are scored)."""
        base = CALIB_SLICES.get(role, role)
        rows = np.flatnonzero(self.role == base)
        order = np.argsort(self.index[rows])
        sorted_index = self.index[rows][order]
        pos = np.searchsorted(sorted_index, indices)
        if len(indices) and (
            pos.max() >= len(sorted_index) or (sorted_index[pos] != indices).any()
        ):
            raise ValueError(f"some {role} samples were not scored")
        return rows[order][pos]


def scored_samples(predictions: Sequence[Mapping[str, torch.Tensor]]) -> ScoredSamples:
    """Join predict_step outputs into one table; duplicates (DDP padding) are dropped."""
    cat = {k: torch.cat([p[k].detach().cpu() for p in predictions]) for k in predictions[0]}
    key = cat["pool"] * (1 << 40) + cat["role"] * (1 << 32) + cat["index"]
    _, first = np.unique(key.numpy(), return_index=True)
    keep = torch.as_tensor(np.sort(first))
    cat = {k: v[keep] for k, v in cat.items()}
    scores: dict[str, np.ndarray] = {}
    if "mint_logits" in cat:
        scores["mint"] = member_probability(cat["mint_logits"]).numpy()
    scores.update(classic_attack_scores(cat["logits"], cat["labels"]))
    return ScoredSamples(
        pool=np.array([POOL_NAMES[i] for i in cat["pool"].tolist()]),
        index=cat["index"].numpy(),
        role=np.array([ROLE_NAMES[i] for i in cat["role"].tolist()]),
        label=cat["labels"].numpy(),
        prediction=cat["logits"].argmax(1).numpy(),
        scores=scores,
    )


def audited_accuracy(samples: ScoredSamples) -> dict[str, float | int]:
    """The audited model's accuracy on the reported non-members (test) and on its members (train)."""
    out: dict[str, float | int] = {}
    for name, roles in (
        ("test", ("nonmembers_eval",)),
        ("train", ("members_seen", "members_unseen")),
    ):
        mask = np.isin(samples.role, roles)
        out[f"{name}_acc"] = (
            float(np.mean(samples.prediction[mask] == samples.label[mask]))
            if mask.any()
            else math.nan
        )
        out[f"n_{name}"] = int(mask.sum())
    return out


def membership_results(
    samples: ScoredSamples,
    splits: MembershipSplits,
    resamples: int = 0,
    confidence: float = 0.95,
) -> dict[str, dict[str, Any]]:
    """{protocol: {method: metrics}} for every protocol with members, on every reported sample;
    with `resamples`, bootstrap confidence intervals (seeded with the splits' seed)."""
    results: dict[str, dict[str, Any]] = {}
    for protocol, role in PROTOCOLS.items():
        members, nonmembers = splits.reported(protocol)
        if len(members) == 0:
            continue
        calib_members, calib_nonmembers = splits.calibration(protocol)
        rows = {
            "members": samples.rows_of(role, members),
            "nonmembers": samples.rows_of("nonmembers_eval", nonmembers),
            "calib_members": samples.rows_of(f"{role}_calib", calib_members),
            "calib_nonmembers": samples.rows_of("nonmembers_calib", calib_nonmembers),
        }
        results[protocol] = {
            method: membership_metrics(
                score[rows["members"]],
                score[rows["nonmembers"]],
                score[rows["calib_members"]],
                score[rows["calib_nonmembers"]],
                probability=method == "mint",
                resamples=resamples,
                seed=splits.seed,
                confidence=confidence,
            )
            for method, score in samples.scores.items()
        }
    return results


def reported_mask(samples: ScoredSamples, splits: MembershipSplits, protocol: str) -> np.ndarray:
    """Which rows belong to a protocol's reported sets."""
    mask = np.zeros(len(samples), dtype=bool)
    if protocol in PROTOCOLS:
        members, nonmembers = splits.reported(protocol)
        if len(members):
            mask[samples.rows_of(PROTOCOLS[protocol], members)] = True
            mask[samples.rows_of("nonmembers_eval", nonmembers)] = True
    return mask


def write_scores_csv(path: Path, samples: ScoredSamples, splits: MembershipSplits) -> None:
    reported = {p: reported_mask(samples, splits, p) for p in PROTOCOLS}
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "pool",
                "index",
                "role",
                "label",
                "prediction",
                *(f"reported_{p}" for p in PROTOCOLS),
                *(f"score_{m}" for m in samples.methods),
            ]
        )
        for i in range(len(samples)):
            writer.writerow(
                [
                    samples.pool[i],
                    int(samples.index[i]),
                    samples.role[i],
                    int(samples.label[i]),
                    int(samples.prediction[i]),
                    *(int(reported[p][i]) for p in PROTOCOLS),
                    *(f"{samples.scores[m][i]:.6g}" for m in samples.methods),
                ]
            )


def write_report(
    output_dir: Path,
    samples: ScoredSamples,
    splits: MembershipSplits,
    membership: Mapping[str, Any],
    title: str,
) -> None:
    """scores.csv, roc.png and scores_hist.png into the run directory."""
    write_scores_csv(output_dir / "scores.csv", samples, splits)
    plot_roc(output_dir / "roc.png", samples, splits, membership, title)
    plot_score_hist(output_dir / "scores_hist.png", samples, title)


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """Write JSON atomically (a crash never leaves half a file)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_json_safe(dict(payload)), indent=2) + "\n")
    tmp.replace(path)


def _method_label(method: str) -> str:
    return {
        "mint": "MINT head",
        "loss": "LOSS (Yeom)",
        "confidence": "confidence (Salem)",
        "entropy": "entropy (Song)",
        "modified_entropy": "mod. entropy (Song)",
        "rmia": "RMIA (Zarifzadeh)",
    }.get(method, method)


def plot_roc(
    path: Path,
    samples: ScoredSamples,
    splits: MembershipSplits,
    membership: Mapping[str, Any],
    title: str,
) -> None:
    """Log-log ROC of every method, one panel per protocol."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    protocols = list(membership)
    width, height = 5.2 * max(len(protocols), 1), 4.8
    fig, axes = plt.subplots(1, max(len(protocols), 1), figsize=(width, height), squeeze=False)
    for ax, protocol in zip(axes[0], protocols, strict=False):
        members, nonmembers = splits.reported(protocol)
        m_rows = samples.rows_of(PROTOCOLS[protocol], members)
        n_rows = samples.rows_of("nonmembers_eval", nonmembers)
        floor = 1.0 / (10 * max(len(n_rows), 1))
        for method in samples.methods:
            fpr, tpr = roc(samples.scores[method][m_rows], samples.scores[method][n_rows])
            value = membership[protocol][method]["auc"]
            ax.plot(
                np.maximum(fpr, floor),
                np.maximum(tpr, floor),
                label=f"{_method_label(method)} (AUC {value:.3f})",
                lw=2 if method == "mint" else 1.2,
            )
        ax.plot([floor, 1], [floor, 1], "k--", lw=0.8, label="chance")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(floor, 1)
        ax.set_ylim(floor, 1.05)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(
            f"{protocol} protocol: {len(m_rows)} members vs {len(n_rows)} non-members", fontsize=9
        )
        # Decades only: a log axis's minor ticks cost more to draw than the curves.
        ax.xaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_minor_locator(NullLocator())
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=10)
    # Margins in inches, fixed: tight_layout would measure every tick label first.
    fig.subplots_adjust(
        left=0.75 / width,
        right=1 - 0.2 / width,
        bottom=0.6 / height,
        top=1 - 0.75 / height,
        wspace=0.25,
    )
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_score_hist(path: Path, samples: ScoredSamples, title: str) -> None:
    """Histograms of the main method's scores per role (MINT head, else the LOSS attack)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    method = "mint" if "mint" in samples.scores else "loss"
    score = samples.scores[method]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    finite = score[np.isfinite(score)]
    bins = (
        np.linspace(finite.min(), finite.max(), 41)
        if len(finite) and finite.min() < finite.max()
        else 40
    )
    for role in ("members_seen", "members_unseen", "external", "nonmembers_eval"):
        mask = samples.role == role
        if mask.any():
            ax.hist(
                score[mask],
                bins=bins,
                histtype="stepfilled",  # one patch a role, not one a bin: looks alike, draws faster
                alpha=0.45,
                density=True,
                label=f"{role} ({int(mask.sum())})",
            )
    ax.set_xlabel(f"{_method_label(method)} score (higher = member)")
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper center")  # "best" searches every bar
    fig.subplots_adjust(left=0.11, right=0.97, bottom=0.13, top=0.91)  # fixed, as plot_roc's
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fmt(value: Any, meaningful: bool = True, interval: Sequence[float] | None = None) -> str:
    if value is None:
        return "-"
    text = f"{value:.3f}"
    if interval is not None:  # compact: [.578, .661]
        low, high = (f"{x:.3f}".replace("0.", ".", 1) for x in interval)
        text += f" [{low}, {high}]"
    return text if meaningful else f"({text})"


def _table_caption(membership: Mapping[str, Any]) -> str:
    first = next((m for methods in membership.values() for m in methods.values()), {})
    lines = ["accuracies are balanced (mean of TPR and TNR); (x): fewer than 1/FPR non-members"]
    if first.get("resamples"):
        level = f"{100 * first['confidence']:g}%"
        lines.insert(0, f"[low, high]: {level} bootstrap interval, {first['resamples']} resamples")
    return "\n".join(lines)


def print_table(results: Mapping[str, Any]) -> None:
    """Print the end-of-run summary (`results_table`)."""
    from rich.console import Console

    Console(width=160).print(results_table(results))


def table_text(results: Mapping[str, Any]) -> str:
    """The end-of-run summary (`results_table`) as plain text, for a log."""
    import io

    from rich.console import Console

    console = Console(width=160, file=io.StringIO(), color_system=None)
    console.print(results_table(results))
    return console.file.getvalue().rstrip()


def results_table(results: Mapping[str, Any]) -> Any:
    """The end-of-run summary, a Rich table: audited accuracy and every method in both protocols."""
    from rich.markup import escape
    from rich.table import Table

    audited = results["audited"]
    table = Table(
        title=f"aMINT {results['mint_mode']} | {results['dataset']} | {results['model']} | audited test acc {audited['test_acc']:.3f}",
        caption=escape(_table_caption(results["membership"])),
    )
    for column in (
        "protocol",
        "method",
        "members / non-m.",
        "AUC",
        "bal. acc@0.5",
        "bal. acc (cal.)",
        "TPR@1%FPR",
        "TPR@0.1%FPR",
    ):
        left = column in ("protocol", "method")
        table.add_column(column, justify="left" if left else "right", no_wrap=not left)
    for protocol, methods in results["membership"].items():
        for method, m in methods.items():
            cells = [
                protocol,
                _method_label(method),
                f"{m['n_members']} / {m['n_nonmembers']}",
                _fmt(m["auc"], interval=m.get("auc_ci")),
                _fmt(m["acc_at_0.5"]),
                _fmt(m["balanced_acc_calibrated"]),
                *(
                    _fmt(m[key], m[f"{key}_meaningful"], m.get(f"{key}_ci"))
                    for key in ("tpr_at_1%_fpr", "tpr_at_0.1%_fpr")
                ),
            ]
            table.add_row(*(escape(cell) for cell in cells))
    return table
