"""A run's results for the dashboards: every logger gets the summary metrics of both protocols and
every method, the ROC and score-histogram images, and a per-method table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from amint_pl.evaluation.metrics import REPORTED_METRICS

# The per-method table: one row per (protocol, method), these metrics as columns.
TABLE_METRICS = (*REPORTED_METRICS, "n_members", "n_nonmembers")
IMAGES = {"test/roc": "roc.png", "test/scores_hist": "scores_hist.png"}


def summary_metrics(
    audited: Mapping[str, Any], membership: Mapping[str, Mapping[str, Mapping[str, Any]]]
) -> dict[str, float]:
    """The run's summary: test/aud_<accuracy> and test/<protocol>/<method>/<metric>."""
    summary = {f"test/aud_{k}": v for k, v in audited.items() if k.endswith("acc")}
    for protocol, methods in membership.items():
        for method, m in methods.items():
            for key in REPORTED_METRICS:
                if m[key] is not None:
                    summary[f"test/{protocol}/{method}/{key}"] = m[key]
    return summary


def membership_table(membership: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[list[Any]]:
    """Rows [protocol, method, *TABLE_METRICS] of every protocol and method."""
    return [
        [protocol, method, *(m.get(key) for key in TABLE_METRICS)]
        for protocol, methods in membership.items()
        for method, m in methods.items()
    ]


def publish_results(
    loggers: Sequence[Any],
    summary: Mapping[str, float],
    membership: Mapping[str, Any],
    output_dir: Path,
    step: int,
) -> None:
    """Give every logger the run's results: `summary` (test/<protocol>/<method>/<metric>, ...) as
    metrics (and as the W&B run summary), the plots as images, the per-method table."""
    columns = ["protocol", "method", *TABLE_METRICS]
    rows = membership_table(membership)
    images = {
        key: output_dir / name for key, name in IMAGES.items() if (output_dir / name).is_file()
    }
    for logger in loggers:
        logger.log_metrics(dict(summary), step=step)
        kind = type(logger).__name__
        if kind == "WandbLogger":
            logger.experiment.summary.update(dict(summary))
            for key, path in images.items():
                logger.log_image(key=key, images=[str(path)], step=step)
            logger.log_table(key="test/membership", columns=columns, data=rows, step=step)
        elif kind == "TensorBoardLogger":
            _tensorboard_extras(logger, columns, rows, images, step)
        logger.save()


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _tensorboard_extras(
    logger: Any, columns: list[str], rows: list[list[Any]], images: dict[str, Path], step: int
) -> None:
    import matplotlib.image

    writer = logger.experiment
    for key, path in images.items():
        writer.add_image(key, matplotlib.image.imread(path)[..., :3], step, dataformats="HWC")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    writer.add_text("test/membership", "\n".join(lines), step)
