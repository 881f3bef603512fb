"""The experiment loggers (CSV, TensorBoard, W&B), built from `logger/*.yaml`, and the labels a run
is known by (its config group choices, its mint preset). `evaluation/publish.py` gives them each
run's results.

W&B gets the whole resolved config as the run config and, under `-m`, the sweep as its group, so
that a sweep's runs sit side by side on one dashboard.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from amint_pl import config_dir


def in_a_sweep() -> bool:
    """Whether this process runs a job of a Hydra sweep (`-m`)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def sweep_group() -> str | None:
    """Under `-m`: the sweep's name, the last two parts of its directory (date_time-uid by
    default); None for a single run."""
    from hydra.core.hydra_config import HydraConfig

    if not in_a_sweep():
        return None
    return "_".join(Path(str(HydraConfig.get().sweep.dir)).parts[-2:])


def run_choices(cfg: DictConfig | None = None) -> dict[str, str]:
    """The option the run chose in each config group (e.g. model: resnet50, mint: active_general):
    the running Hydra run's, else those of a config composed with its Hydra node
    (`compose(..., return_hydra_config=True)`), else none."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        choices = HydraConfig.get().runtime.choices
    else:
        choices = OmegaConf.select(cfg, "hydra.runtime.choices", default=None) if cfg else None
    choices = choices or {}
    return {g: str(o) for g, o in choices.items() if o is not None and not g.startswith("hydra")}


def _preset_mode(preset: str) -> str | None:
    """The mint.mode that conf/mint/<preset>.yaml sets, itself or through the presets it extends."""
    path = config_dir() / "mint" / f"{preset}.yaml"
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


def mint_label(cfg: DictConfig, choices: Mapping[str, str]) -> str:
    """`preset_label` of a run config and its `run_choices` (its mint.mode without a preset)."""
    return preset_label(str(cfg.mint.mode), choices.get("mint"))


def _wandb_kwargs(cfg: DictConfig, node: DictConfig, choices: Mapping[str, str]) -> dict[str, Any]:
    config = OmegaConf.to_container(cfg, resolve=True)
    config["choices"] = dict(choices)  # e.g. model=resnet50
    kwargs: dict[str, Any] = {"config": config}
    if node.get("group") is None:
        kwargs["group"] = sweep_group()
    # Named by the mint preset (active_general, not its mode active), unless set in the config.
    label, taps = mint_label(cfg, choices), cfg.mint.taps
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


def build_loggers(cfg: DictConfig, choices: Mapping[str, str]) -> list[Any]:
    """Instantiate every logger under `cfg.logger` (none: an empty list); `choices`: the run's
    config group options (`run_choices`), for W&B's run config and name."""
    import hydra

    loggers = []
    for node in (cfg.get("logger") or {}).values():
        if node is None:
            continue
        # validate_config checked every logger's _target_ (and TensorBoard's package).
        wandb = str(node["_target_"]).endswith("WandbLogger")
        extra = _wandb_kwargs(cfg, node, choices) if wandb else {}
        # Partial first: `config` would clash with instantiate's own first parameter.
        loggers.append(hydra.utils.instantiate(node, _partial_=True, _convert_="all")(**extra))
    return loggers


def finish_wandb(cfg: DictConfig, exit_code: int) -> None:
    """Close the run's W&B run (its closing summary prints then), if it logs to W&B."""
    if "wandb" not in (cfg.get("logger") or {}):
        return
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=exit_code)
