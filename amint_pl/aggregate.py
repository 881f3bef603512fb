"""`python -m amint_pl.aggregate <sweep dir | run dirs...> [--out DIR]`: one comparison table.

Reads every run below the given directories (its `results.json`; a run directory with `.hydra/`
and no results.json is an unfinished run: `running`, with where it is, when its `status.json` is
fresh, `stale` when that has not been rewritten for 10 minutes) and writes, into --out (default: the one directory
given, else the current directory):

- `aggregate.csv`: one row per run and method (data set, model, tap setup, mint mode, method) with
  the MINT accuracy (calibrated balanced accuracy, and accuracy at 0.5 for the MINT head), AUC and
  TPR at 1% FPR in the paper protocol, the strict protocol's AUC, the audited model's test
  accuracy, and the paper's published numbers beside them; failed and unfinished runs are rows too,
  with their status and error;
  and the 95% bootstrap intervals of AUC and TPR at 1% FPR;
- `aggregate_seeds.csv`: runs that differ only by their seed reduced to mean and standard
  deviation, with the number of seeds;
- `aggregate.md`: both as Markdown (printed too), failed and unfinished runs listed apart;
- `aggregate_heatmap.png`: AUC and TPR at 1% FPR of every method of every completed run.

Methods: `amint` (the MINT head of a mint=active run), `passive_mint` (of a mint=passive run),
`rmia`, and the classic attacks `loss`, `confidence`, `entropy`, `modified_entropy` (each scored on
the audited model of its own run: the `mint` column says how that model was trained).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from amint_pl.errors import AmintError, ConfigError

# The published figures (copied from the paper; see experiments/reference/README.md).
DEFAULT_REFERENCE_DIR = Path(__file__).resolve().parents[1] / "experiments" / "reference"
METHOD_ORDER = (
    "amint",
    "passive_mint",
    "rmia",
    "loss",
    "confidence",
    "entropy",
    "modified_entropy",
)
# Our method names -> the paper's (paper_baselines.csv) for the classic attacks.
PAPER_ATTACKS = {"confidence": "salem_mia", "loss": "yeom_loss_mia", "entropy": "song_entropy_mia"}
TAP_SETUPS = ("entry", "middle", "output")
COLUMNS = (
    "dataset",
    "model",
    "taps",
    "mint_mode",
    "method",
    "seed",
    "status",
    "mint_acc",
    "acc_at_0.5",
    "auc",
    "tpr_at_1%_fpr",
    "tpr_at_1%_fpr_meaningful",
    "strict_auc",
    "aud_acc",
    "paper_mint_acc",
    "paper_aud_acc",
    "auc_ci_low",
    "auc_ci_high",
    "tpr_at_1%_fpr_ci_low",
    "tpr_at_1%_fpr_ci_high",
    "n_members",
    "n_nonmembers",
    "recipe",
    "run_dir",
    "error",
    "progress",
)
# What the seeds of one recipe are reduced to (mean and standard deviation).
SEED_METRICS = ("mint_acc", "acc_at_0.5", "auc", "tpr_at_1%_fpr", "strict_auc", "aud_acc")
SEED_KEYS = ("dataset", "model", "taps", "mint_mode", "method", "recipe")
SEED_COLUMNS = (
    *SEED_KEYS,
    "n_seeds",
    "seeds",
    *(f"{m}_{stat}" for m in SEED_METRICS for stat in ("mean", "std")),
    "paper_mint_acc",
    "paper_aud_acc",
)
# Config keys that do not change what a run measures: left out of its recipe.
NOT_RECIPE = ("seed", "paths", "ckpt_path", "logger", "hydra", "progress")


def paper_model(name: str) -> str | None:
    """The paper's name for one of our models (a timm name), or None when the paper has none."""
    name = name.lower()
    if name.startswith("mobilenetv1"):
        return "mobilenet"
    if name in ("resnet50", "resnet101", "densenet121"):
        return name
    if name == "legacy_xception":  # Chollet's Xception, the paper's (conf/model/xception.yaml)
        return "xception"
    if name == "vit_amint":  # the paper's ViT (patch 4, dim 64, depth 12); not vit_tiny/vit_small
        return "vit"
    return None


def _taps_label(taps: Any) -> str:
    if isinstance(taps, str):
        return taps
    if isinstance(taps, Sequence):
        return "[" + ",".join(str(t) for t in taps) + "]"
    return "" if taps is None else str(taps)


@dataclass
class PaperFigures:
    """The paper's Table 1 and its baselines, keyed the way our rows look them up."""

    table1: dict[tuple[str, str, str], dict[str, float]] = field(default_factory=dict)
    baselines: dict[tuple[str, str, str], dict[str, float]] = field(default_factory=dict)

    @classmethod
    def load(cls, directory: Path | None) -> PaperFigures:
        """Read paper_table1.csv and paper_baselines.csv from a directory (missing: no figures)."""
        figures = cls()
        if directory is None:
            return figures
        for name, target, key in (
            ("paper_table1.csv", figures.table1, ("dataset", "setup", "model")),
            ("paper_baselines.csv", figures.baselines, ("dataset", "model", "method")),
        ):
            path = Path(directory) / name
            if not path.is_file():
                continue
            with open(path, newline="") as f:
                lines = [line for line in f if not line.startswith("#")]
            for row in csv.DictReader(lines):
                target[tuple(row[k] for k in key)] = {
                    k: float(v) for k, v in row.items() if k not in key and _is_number(v)
                }
        return figures

    def lookup(
        self, dataset: str, model: str, taps: str, method: str
    ) -> tuple[float | None, float | None]:
        """(the paper's MINT/attack accuracy, the paper's audited accuracy) for one of our rows."""
        model_name = paper_model(model)
        if model_name is None:
            return None, None
        if method == "amint" and taps in TAP_SETUPS:
            row = self.table1.get((dataset, taps, model_name))
            if row is None and taps == "entry":
                row = self.baselines.get((dataset, model_name, "amint"))
                if row is not None:
                    return row.get("mint_acc"), row.get("aud_with")
            if row is not None:
                return row.get("mint_acc"), row.get("aud_acc")
        if method == "passive_mint" and taps == "entry":
            row = self.baselines.get((dataset, model_name, "passive_mint"))
            if row is not None:
                return row.get("mint_acc"), row.get("aud_without")
        if method in PAPER_ATTACKS:
            row = self.baselines.get((dataset, model_name, PAPER_ATTACKS[method]))
            if row is not None:
                return row.get("mint_acc"), None
        return None, None


def _is_number(text: str | None) -> bool:
    try:
        float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True


# ------------------------------------------------------------------------------- finding runs
def find_runs(paths: Iterable[Path]) -> list[Path]:
    """Every run directory below the given paths: those holding results.json or .hydra/."""
    found: set[Path] = set()
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"{path} does not exist: give a sweep directory or run directories")
        for candidate in (path / "results.json", *path.rglob("results.json")):
            if candidate.is_file():
                found.add(candidate.parent.resolve())
        for candidate in (path / ".hydra" / "config.yaml", *path.rglob("config.yaml")):
            if candidate.is_file() and candidate.parent.name == ".hydra":
                found.add(candidate.parent.parent.resolve())
    return sorted(found)


def _config_of(run_dir: Path) -> dict[str, Any]:
    """The composed config of an unfinished run (what it was asked to do), best effort."""
    from omegaconf import OmegaConf

    from amint_pl.loggers import preset_label

    try:
        cfg = OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "config.yaml"))
    except Exception:
        return {}
    try:
        hydra_cfg = OmegaConf.load(run_dir / ".hydra" / "hydra.yaml")
        preset = OmegaConf.select(hydra_cfg, "hydra.runtime.choices.mint")
    except Exception:
        preset = None
    return {
        "dataset": (cfg.get("dataset") or {}).get("name", ""),
        "model": (cfg.get("model") or {}).get("name", ""),
        "taps": _taps_label((cfg.get("mint") or {}).get("taps", "")),
        "mint_mode": preset_label(str((cfg.get("mint") or {}).get("mode", "")), preset),
        "seed": cfg.get("seed", ""),
    }


def recipe_of(run_dir: Path) -> str:
    """A short digest of the run's composed config without its seed (and paths, loggers):
    runs with equal recipes differ only by their seed. Empty when the config cannot be read."""
    import hashlib

    try:
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "config.yaml"))
    except Exception:
        return ""
    for key in NOT_RECIPE:
        cfg.pop(key, None)
    text = json.dumps(cfg, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _method_name(method: str, mint_mode: str) -> str:
    if method != "mint":
        return method
    return {"active": "amint", "passive": "passive_mint"}.get(mint_mode, f"mint_{mint_mode}")


def _progress_of(run_dir: Path) -> dict[str, Any]:
    """Status and progress of a run without results.json, from its status.json: `running` (with
    where it is), `stale` (not rewritten for STALE_AFTER_S: likely killed), or `unfinished`."""
    from amint_pl.status import STALE_AFTER_S, is_stale, read_status, where

    status = read_status(run_dir)
    if status is None:
        return {"status": "unfinished", "error": "no results.json"}
    if is_stale(status):
        quiet_min = STALE_AFTER_S / 60
        return {
            "status": "stale",
            "error": f"no results.json, status.json not rewritten for {quiet_min:g}+ min "
            f"(pid {status.get('pid')} on {status.get('host')}): {where(status)}",
        }
    state = str(status.get("state", "unfinished"))
    return {
        "status": "running" if state == "running" else "unfinished",
        "progress": where(status),
        "error": "" if state == "running" else f"no results.json; status.json says {state}",
    }


def rows_of_run(run_dir: Path, figures: PaperFigures) -> list[dict[str, Any]]:
    """The table rows of one run: one per method when it completed, one status row otherwise."""
    path = run_dir / "results.json"
    base: dict[str, Any] = {"run_dir": str(run_dir)}
    if not path.exists():
        return [{**base, **_config_of(run_dir), **_progress_of(run_dir)}]
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        return [{**base, **_config_of(run_dir), "status": "unreadable", "error": f"{path}: {err}"}]
    base.update(
        dataset=results.get("dataset", ""),
        model=results.get("model", ""),
        taps=_taps_label(results.get("taps")),
        mint_mode=results.get("mint_mode", ""),
        seed=results.get("seed", ""),
        status=results.get("status", "unknown"),
    )
    membership = results.get("membership") or {}
    if base["status"] != "completed" or "paper" not in membership:
        error = results.get("error") or ("still running" if base["status"] == "running" else "")
        if base["status"] == "completed":
            base["status"], error = "incomplete", "no paper-protocol results"
        return [{**base, "error": error}]
    audited = (results.get("audited") or {}).get("test_acc")
    strict = membership.get("strict") or {}
    base["recipe"] = recipe_of(run_dir)
    rows = []
    for method, m in membership["paper"].items():
        name = _method_name(method, base["mint_mode"])
        paper_acc, paper_aud = figures.lookup(base["dataset"], base["model"], base["taps"], name)
        auc_ci, tpr_ci = m.get("auc_ci") or (None, None), m.get("tpr_at_1%_fpr_ci") or (None, None)
        rows.append(
            {
                **base,
                "method": name,
                "auc_ci_low": auc_ci[0],
                "auc_ci_high": auc_ci[1],
                "tpr_at_1%_fpr_ci_low": tpr_ci[0],
                "tpr_at_1%_fpr_ci_high": tpr_ci[1],
                "n_members": m.get("n_members"),
                "n_nonmembers": m.get("n_nonmembers"),
                "mint_acc": m.get("balanced_acc_calibrated"),
                "acc_at_0.5": m.get("acc_at_0.5"),
                "auc": m.get("auc"),
                "tpr_at_1%_fpr": m.get("tpr_at_1%_fpr"),
                "tpr_at_1%_fpr_meaningful": m.get("tpr_at_1%_fpr_meaningful"),
                "strict_auc": (strict.get(method) or {}).get("auc"),
                "aud_acc": audited,
                "paper_mint_acc": paper_acc,
                "paper_aud_acc": paper_aud,
                "error": "",
            }
        )
    return rows


def _sort_key(row: Mapping[str, Any]) -> tuple:
    method = row.get("method") or ""
    order = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    return (
        str(row.get("dataset", "")),
        str(row.get("model", "")),
        str(row.get("taps", "")),
        str(row.get("mint_mode", "")),
        str(row.get("seed", "")),
        str(row.get("run_dir", "")),
        order,
        method,
    )


def aggregate(
    paths: Sequence[Path], reference_dir: Path | None = DEFAULT_REFERENCE_DIR
) -> list[dict[str, Any]]:
    """Rows of every run below the given paths (completed: one per method), sorted.

    Raises:
        ConfigError: a path does not exist, or no run lies below the paths.
    """
    runs = find_runs(paths)
    if not runs:
        raise ConfigError(
            f"no runs below {', '.join(str(p) for p in paths)}: give a sweep directory "
            "(multirun/...) or run directories (each holds results.json or .hydra/)"
        )
    figures = PaperFigures.load(reference_dir)
    rows = [row for run in runs for row in rows_of_run(run, figures)]
    return sorted(rows, key=_sort_key)


def over_seeds(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Completed runs that differ only by their seed (same recipe), per method: the mean and the
    standard deviation (ddof 1; 0 for one seed) of each metric, with the number of seeds."""
    import numpy as np

    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in rows:
        if r.get("status") == "completed":
            groups.setdefault(tuple(r.get(k) for k in SEED_KEYS), []).append(r)
    reduced = []
    for key, members in groups.items():
        row: dict[str, Any] = dict(zip(SEED_KEYS, key, strict=True))
        row["n_seeds"] = len(members)
        row["seeds"] = " ".join(str(s) for s in sorted(str(m.get("seed")) for m in members))
        for metric in SEED_METRICS:
            values = np.array([float(m[metric]) for m in members if m.get(metric) is not None])
            row[f"{metric}_mean"] = float(values.mean()) if len(values) else None
            row[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        row["paper_mint_acc"] = members[0].get("paper_mint_acc")
        row["paper_aud_acc"] = members[0].get("paper_aud_acc")
        reduced.append(row)
    return sorted(reduced, key=_sort_key)


# ------------------------------------------------------------------------------------ writing
def write_csv(
    path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] = COLUMNS
) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row.get(k)) for k in columns})


def _csv_value(value: Any) -> Any:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return value


def _fmt(value: Any, meaningful: Any = True) -> str:
    if value is None or value == "" or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    text = f"{float(value):.3f}"
    return text if meaningful is not False else f"({text})"


def _interval(row: Mapping[str, Any], key: str) -> str:
    low, high = row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high")
    if low in (None, "") or high in (None, ""):
        return ""
    return f" [{float(low):.3f}, {float(high):.3f}]"


def _mean_std(row: Mapping[str, Any], metric: str) -> str:
    mean = row.get(f"{metric}_mean")
    if mean is None:
        return "-"
    return f"{mean:.3f} ± {row[f'{metric}_std']:.3f}"


def _seeds_markdown(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = [
        f"## Over seeds: {len(rows)} recipes and methods, mean ± standard deviation",
        "",
        "Runs that differ only by their seed, reduced per method (n: the number of seeds; "
        "± 0.000 with one seed).",
        "",
        "| dataset | model | taps | mint | method | n | MINT acc (cal.) | AUC | TPR@1%FPR "
        "| strict AUC | audited acc | paper MINT acc |",
        "|" + "---|" * 5 + "---:|" * 7,
    ]
    for r in rows:
        cells = [str(r[k]) for k in ("dataset", "model", "taps", "mint_mode", "method")]
        cells.append(str(r["n_seeds"]))
        cells += [
            _mean_std(r, m) for m in ("mint_acc", "auc", "tpr_at_1%_fpr", "strict_auc", "aud_acc")
        ]
        cells.append(_fmt(r.get("paper_mint_acc")))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The table as Markdown: completed runs by method, the same over seeds, then failed and
    unfinished runs."""
    done = [r for r in rows if r.get("status") == "completed"]
    other = [r for r in rows if r.get("status") != "completed"]
    lines = [
        "| dataset | model | taps | mint | method | MINT acc (cal.) | acc@0.5 | AUC | TPR@1%FPR "
        "| strict AUC | audited acc | paper MINT acc | paper audited acc |",
        "|" + "---|" * 5 + "---:|" * 8,
    ]
    for r in done:
        lines.append(
            "| "
            + " | ".join(
                [
                    str(r["dataset"]),
                    str(r["model"]),
                    str(r["taps"]),
                    str(r["mint_mode"]),
                    str(r["method"]),
                    _fmt(r.get("mint_acc")),
                    _fmt(r.get("acc_at_0.5")),
                    _fmt(r.get("auc")) + _interval(r, "auc"),
                    _fmt(r.get("tpr_at_1%_fpr"), r.get("tpr_at_1%_fpr_meaningful"))
                    + _interval(r, "tpr_at_1%_fpr"),
                    _fmt(r.get("strict_auc")),
                    _fmt(r.get("aud_acc")),
                    _fmt(r.get("paper_mint_acc")),
                    _fmt(r.get("paper_aud_acc")),
                ]
            )
            + " |"
        )
    text = [
        f"## Membership inference: {len({r['run_dir'] for r in done})} completed runs",
        "",
        "Paper protocol (members = samples the MINT head was trained on) unless marked strict. "
        "Every member of the protocol's role and every test non-member is scored; accuracies "
        "are balanced (the mean of TPR and TNR). MINT acc (cal.): balanced accuracy at the "
        "threshold calibrated on the calibration sets; [low, high]: the bootstrap interval "
        "(bootstrap.confidence, 95% by default); "
        "(x): fewer than 100 non-members, too few to measure 1% FPR. Paper columns: the "
        "published accuracy (threshold 0.5) for the same data set, model and tap setup.",
        "",
        *lines,
    ]
    seeds = over_seeds(rows)
    if any(r["n_seeds"] > 1 for r in seeds):
        text += ["", *_seeds_markdown(seeds)]
    if other:
        text += [
            "",
            f"## Failed, unfinished or running runs: {len(other)}",
            "",
            "| status | dataset | model | taps | mint | run directory | error or progress |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in other:
            error = str(r.get("error") or r.get("progress") or "")
            error = error.replace("|", "\\|").replace("\n", " ")
            text.append(
                f"| {r.get('status', '')} | {r.get('dataset', '')} | {r.get('model', '')} | "
                f"{_taps_label(r.get('taps', ''))} | {r.get('mint_mode', '')} | {r['run_dir']} | "
                f"{error} |"
            )
    return "\n".join(text) + "\n"


def plot_heatmap(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """AUC and TPR at 1% FPR (paper protocol) of every method (columns) of every completed run
    (rows: data set | model | taps | mint mode | seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    done = [r for r in rows if r.get("status") == "completed"]
    methods = [m for m in METHOD_ORDER if any(r["method"] == m for r in done)]
    methods += sorted({r["method"] for r in done} - set(methods))
    runs = list(dict.fromkeys(r["run_dir"] for r in done))
    labels = {}
    for r in done:
        labels[r["run_dir"]] = (
            f"{r['dataset']} | {r['model']} | {r['taps']} | mint={r['mint_mode']} | seed {r['seed']}"
        )
    fig, axes = plt.subplots(
        1,
        2,
        figsize=(3.5 + 1.4 * max(len(methods), 1), max(3.0, 1.6 + 0.4 * max(len(runs), 1))),
        squeeze=False,
    )
    for ax, (key, title) in zip(
        axes[0], (("auc", "AUC"), ("tpr_at_1%_fpr", "TPR at 1% FPR")), strict=True
    ):
        grid = np.full((len(runs), len(methods)), np.nan)
        for r in done:
            value = r.get(key)
            if value is not None:
                grid[runs.index(r["run_dir"]), methods.index(r["method"])] = float(value)
        image = ax.imshow(
            grid, cmap="viridis", vmin=0.5 if key == "auc" else 0.0, vmax=1.0, aspect="auto"
        )
        for i in range(len(runs)):
            for j in range(len(methods)):
                if np.isfinite(grid[i, j]):
                    ax.text(
                        j,
                        i,
                        f"{grid[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if grid[i, j] < (0.75 if key == "auc" else 0.5) else "black",
                    )
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(runs)), [labels[r] for r in runs], fontsize=7)
        ax.set_title(f"{title} (paper protocol)", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.04)
    for ax in axes[0][1:]:
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


class SweepOutcome(Callback):
    """A Hydra callback (conf/hydra/default.yaml): once every job of a sweep has run, the sweep
    exits with code 1 when any job did not complete, saying how many."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        jobs = find_runs([sweep_dir]) if sweep_dir.is_dir() else []
        failed = [job for job in jobs if _status(job) != "completed"]
        if failed:
            print(
                f"error: {len(failed)} of {len(jobs)} jobs of the sweep failed (their results.json "
                f"say why; python -m amint_pl.aggregate {sweep_dir} lists them)",
                file=sys.stderr,
            )
            raise SystemExit(1)


def _status(run_dir: Path) -> str:
    try:
        return str(json.loads((run_dir / "results.json").read_text()).get("status"))
    except (OSError, ValueError):
        return "unfinished"


def write_outputs(rows: Sequence[Mapping[str, Any]], out: Path) -> str:
    """Write aggregate.csv, aggregate.md and aggregate_heatmap.png into out; return the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "aggregate.csv", rows)
    write_csv(out / "aggregate_seeds.csv", over_seeds(rows), SEED_COLUMNS)
    text = markdown(rows)
    (out / "aggregate.md").write_text(text)
    if any(r.get("status") == "completed" for r in rows):
        plot_heatmap(out / "aggregate_heatmap.png", rows)
    return text


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m amint_pl.aggregate <dirs...> [--out DIR] [--reference DIR]`."""
    parser = argparse.ArgumentParser(
        prog="python -m amint_pl.aggregate",
        description="One table (CSV, Markdown, heatmap) of every run below the given directories, "
        "the paper's numbers beside ours.",
    )
    parser.add_argument("dirs", nargs="+", type=Path, help="sweep directories or run directories")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write aggregate.{csv,md} and aggregate_heatmap.png "
        "(default: the one directory given, else the current directory)",
    )
    parser.add_argument(
        "--reference",
        type=Path,
        default=DEFAULT_REFERENCE_DIR,
        help="directory of paper_table1.csv and paper_baselines.csv (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        reference = args.reference
        if reference != DEFAULT_REFERENCE_DIR and not reference.is_dir():
            raise ConfigError(f"--reference {reference} is not a directory of the paper's CSVs")
        rows = aggregate(args.dirs, reference if reference.is_dir() else None)
        out = args.out or (args.dirs[0] if len(args.dirs) == 1 else Path(os.getcwd()))
        text = write_outputs(rows, out)
    except AmintError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(text)
    names = ("aggregate.csv", "aggregate_seeds.csv", "aggregate.md", "aggregate_heatmap.png")
    written = [out / n for n in names]
    print("written: " + ", ".join(str(p) for p in written if p.exists()))


if __name__ == "__main__":
    main()
