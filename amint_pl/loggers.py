"""The experiment loggers (CSV, TensorBoard, W&B): built from `logger/*.yaml`, and given each run's
results for dashboards: the summary metrics of both protocols and every method, the ROC and
score-histogram images, and a per-method table.

W&B gets the whole resolved config as the run config and, under `-m`, the sweep as its group, so
that a sweep's runs sit side by side on one dashboard.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from amint_pl.errors import ConfigError

# The per-method table: one row per (protocol, method), these metrics as columns.
TABLE_METRICS = (
    "auc",
    "acc_at_0.5",
    "balanced_acc_calibrated",
    "tpr_at_1%_fpr",
    "tpr_at_0.1%_fpr",
    "n_members",
    "n_nonmembers",
)
IMAGES = {"test/roc": "roc.png", "test/scores_hist": "scores_hist.png"}


def sweep_group() -> str | None:
    """Under `-m`: the sweep's name, the last two parts of its directory (date_time-uid by
    default); None for a single run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return "_".join(Path(str(HydraConfig.get().sweep.dir)).parts[-2:])


def run_choices() -> dict[str, str]:
    """The option the run chose in each config group (e.g. model: resnet50, mint: active_general);
    empty outside a Hydra run."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    choices = HydraConfig.get().runtime.choices
    return {g: str(o) for g, o in choices.items() if o is not None and not g.startswith("hydra")}


def _preset_mode(preset: str) -> str | None:
    """The mint.mode that conf/mint/<preset>.yaml sets, itself or through the presets it extends."""
    from importlib import resources

    path = resources.files("amint_pl") / "conf" / "mint" / f"{preset}.yaml"
    if not path.is_file():
        return None
    node = OmegaConf.create(path.read_text())
    if "mode" in node:
        return str(node.mode)
    bases = [d for d in node.get("defaults") or [] if isinstance(d, str) and d != "_self_"]
    return next((m for m in map(_preset_mode, reversed(bases)) if m), None)


def preset_label(mode: str, preset: str | None) -> str:
    """What a run's mint setting is called in results.json, titles, W&B and the aggregate: the
    mint preset it chose (active, active_general, passive, off), or its mint.mode when that was
    changed away from the preset's."""
    return preset if preset and _preset_mode(preset) == mode else mode


def mint_label(cfg: DictConfig) -> str:
    """`preset_label` of the running Hydra run (its mint.mode outside one)."""
    return preset_label(str(cfg.mint.mode), run_choices().get("mint"))


def _wandb_kwargs(cfg: DictConfig, node: DictConfig) -> dict[str, Any]:
    config = OmegaConf.to_container(cfg, resolve=True)
    config["choices"] = run_choices()  # e.g. model=resnet50
    kwargs: dict[str, Any] = {"config": config}
    if node.get("group") is None:
        kwargs["group"] = sweep_group()
    # Named by the mint preset (active_general, not its mode active), unless set in the config.
    label, taps = mint_label(cfg), cfg.mint.taps
    taps = taps if isinstance(taps, str) else "_".join(map(str, taps))
    defaults = {
        "name": f"{cfg.dataset.name}-{cfg.model.name}-{label}-taps_{taps}-seed{cfg.seed}",
        "tags": [str(cfg.dataset.name), str(cfg.model.name), f"mint_{label}", f"taps_{taps}"],
        "job_type": label,
    }
    kwargs.update({k: v for k, v in defaults.items() if node.get(k) is None})
    if node.get("offline") and node.get("settings") is None:
        import wandb

        # Offline, W&B's closing summary only repeats the results table (and buries it).
        kwargs["settings"] = wandb.Settings(quiet=True)
    return kwargs


def build_loggers(cfg: DictConfig) -> list[Any]:
    """Instantiate every logger under `cfg.logger` (none: an empty list)."""
    import hydra

    loggers = []
    for name, node in (cfg.get("logger") or {}).items():
        if node is None:
            continue
        target = str(node.get("_target_", ""))
        if not target:
            raise ConfigError(
                f"logger '{name}' has no _target_: use logger=csv, logger=wandb, "
                f"logger=tensorboard or logger=none"
            )
        extra: dict[str, Any] = {}
        if target.endswith("WandbLogger"):
            extra = _wandb_kwargs(cfg, node)
        elif target.endswith("TensorBoardLogger"):
            _check_tensorboard()
        # Partial first: `config` would clash with instantiate's own first parameter.
        loggers.append(hydra.utils.instantiate(node, _partial_=True, _convert_="all")(**extra))
    return loggers


def _check_tensorboard() -> None:
    from importlib.util import find_spec

    if find_spec("tensorboard") is None and find_spec("tensorboardX") is None:
        raise ConfigError(
            "logger=tensorboard needs TensorBoard: pip install tensorboard (or pick logger=csv)"
        )


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
