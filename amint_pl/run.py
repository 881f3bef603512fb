"""Hydra entry point: compose -> data, model, trainer -> fit -> evaluate -> report.

python -m amint_pl.run                                  # the embedded default (digits)
python -m amint_pl.run mint=passive trainer.max_epochs=5 seed=3
python -m amint_pl.run -m model=small_cnn,resnet18 mint=active,passive
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import platform
import secrets
import shutil
import sys
import time
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from amint_pl.errors import AmintError, ConfigError
from amint_pl.loggers import mint_label, run_choices
from amint_pl.status import PROGRESS_INTERVAL_S, RunStatus

# The run's story: Hydra's job logging sends it to the console and to <run dir>/run.log.
log = logging.getLogger("amint_pl.run")

# Run directories carry this: the process id and a random suffix, fixed for the whole process.
RUN_UID = f"{os.getpid()}-{secrets.token_hex(2)}"
# Cached: a sweep's workers (joblib, SLURM) get the launching process's value with the config,
# so all jobs of a sweep, and all ranks of a job, share one sweep directory.
OmegaConf.register_new_resolver("amint_uid", lambda: RUN_UID, replace=True, use_cache=True)

CONFIG_GROUPS = (
    "dataset",
    "model",
    "mint",
    "trainer",
    "logger",
    "paths",
    "experiment",
    "debug",
    "sweep",
)
# hydra/launcher options whose plugin comes with the `cluster` extra.
LAUNCHER_PLUGINS = {
    "joblib": "hydra_plugins.hydra_joblib_launcher",
    "submitit_slurm": "hydra_plugins.hydra_submitit_launcher",
    "submitit_local": "hydra_plugins.hydra_submitit_launcher",
}
# A run directory's own config and overrides, as Hydra wrote them when it started.
RUN_CONFIG = Path(".hydra") / "config.yaml"
RUN_OVERRIDES = Path(".hydra") / "overrides.yaml"
# Our conf/hydra/launcher files carry the plugins' names, so Hydra checks them against the
# plugins' schemas, and says so (a deprecation notice) in every process of a sweep.
warnings.filterwarnings("ignore", message=r"(?s).*is validated against ConfigStore schema")


def config_dir() -> Path:
    return Path(str(resources.files("amint_pl") / "conf"))


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def check_overrides(overrides: list[str]) -> None:
    """Refuse, before Hydra composes anything, a group option that does not exist or a run
    directory that already holds a run (nothing a user has is overwritten)."""
    given = dict(
        arg.lstrip("+~").partition("=")[::2]
        for arg in overrides
        if "=" in arg and not arg.startswith("-")
    )
    for group in CONFIG_GROUPS:
        if group not in given:
            continue
        for option in given[group].strip("[]").split(","):  # a sweep a,b or a list [a,b]
            if option in ("", "null") or (config_dir() / group / f"{option}.yaml").is_file():
                continue
            hint = " (or model.name=<any timm model name>)" if group == "model" else ""
            raise ConfigError(
                f"unknown {group} '{option}': choose one of {', '.join(group_options(group))}{hint}"
            )
    launcher = given.get("hydra/launcher", "")
    if (
        launcher in LAUNCHER_PLUGINS
        and importlib.util.find_spec(LAUNCHER_PLUGINS[launcher]) is None
    ):
        raise ConfigError(f'hydra/launcher={launcher} needs its plugin: pip install ".[cluster]"')
    run_dir = given.get("hydra.run.dir", "").strip("\"'")
    resuming = given.get("ckpt_path", "null") not in ("null", "")
    # DDP ranks > 0 re-run this command inside the run directory their rank 0 made: rank 0 checked.
    rank_zero = os.environ.get("LOCAL_RANK", "0") == "0"
    if (
        rank_zero
        and run_dir
        and not resuming
        and Path(run_dir).is_dir()
        and any(Path(run_dir).iterdir())
    ):
        raise ConfigError(
            f"{run_dir} already holds a run: pick a new hydra.run.dir, or resume it with ckpt_path=last"
        )
    if (
        rank_zero
        and given.get("ckpt_path") == "last"
        and not (run_dir and (Path(run_dir) / RUN_CONFIG).is_file())
    ):
        raise ConfigError(
            "ckpt_path=last resumes a run in its own directory: add hydra.run.dir=<the run directory> "
            f"(the one holding {RUN_CONFIG})"
        )


# What a resumed run rewrites: the earlier attempt's are kept in <run dir>/attempts/<n>/ first
# (csv/: Lightning's CSVLogger deletes an existing metrics.csv).
ATTEMPT_FILES = (
    "results.json",
    "scores.csv",
    "roc.png",
    "scores_hist.png",
    "training_curves.png",
    "csv",
)


def resumed_config_dir(overrides: list[str]) -> list[str]:
    """For a run resumed in place (hydra.run.dir=<dir> ckpt_path=...): the override that makes
    Hydra write the resumed config beside the run's own (.hydra/resumed-<time>) instead of over it."""
    given = dict(arg.partition("=")[::2] for arg in overrides if "=" in arg)
    if (
        not given.get("hydra.run.dir")
        or given.get("ckpt_path", "null") in ("null", "")
        or "hydra.output_subdir" in given
    ):
        return []
    return [f"hydra.output_subdir=.hydra/resumed-{time.strftime('%Y-%m-%d_%H-%M-%S')}_{RUN_UID}"]


def check_resume(cfg: DictConfig, output_dir: Path) -> None:
    """Before a run is resumed: refuse a config or checkpoint that cannot continue it. Nothing of
    the run is touched then: the config Hydra has just written for this attempt is removed."""
    from amint_pl.training.module import phases_of
    from amint_pl.validation import (
        check_checkpoint,
        check_resumable,
        check_same_experiment,
        validate_config,
    )

    try:
        validate_config(cfg)
        config = OmegaConf.to_container(cfg, resolve=True)
        if cfg.ckpt_path == "last":
            check_same_experiment(run_config(output_dir), config, "the run")
        for path in resume_plan(cfg.ckpt_path, output_dir, phases_of(cfg.mint.mode)).values():
            if path != SKIP_PHASE:
                checkpoint = read_checkpoint(path)
                check_checkpoint(checkpoint, path)
                check_resumable(checkpoint, config, "")
    except AmintError:
        attempt_config = output_dir / str(HydraConfig.get().output_subdir)
        if _is_rank_zero() and attempt_config.name.startswith("resumed-"):
            shutil.rmtree(attempt_config, ignore_errors=True)
        raise


def run_config(output_dir: Path) -> dict[str, Any]:
    """The resolved config a run was started with (<run dir>/.hydra/config.yaml)."""
    try:
        return OmegaConf.to_container(OmegaConf.load(output_dir / RUN_CONFIG), resolve=True)
    except Exception as err:
        raise ConfigError(
            f"{output_dir / RUN_CONFIG} cannot be read ({type(err).__name__}: {err}): resume a run "
            "directory that amint_pl wrote, as it left it"
        ) from err


def keep_earlier_attempt(output_dir: Path) -> None:
    """Move what an earlier attempt of a resumed run wrote to <run dir>/attempts/<n>/."""
    if not _is_rank_zero() or not any((output_dir / n).exists() for n in ATTEMPT_FILES):
        return
    attempts = output_dir / "attempts"
    done = [int(p.name) for p in attempts.glob("[0-9]*") if p.name.isdigit()]
    attempt = attempts / str(max(done, default=0) + 1)
    attempt.mkdir(parents=True)
    for name in ATTEMPT_FILES:
        if (output_dir / name).exists():
            (output_dir / name).rename(attempt / name)


def config_digest(cfg: DictConfig) -> str:
    """SHA-256 of the resolved experiment config, without paths and resume settings."""
    data = OmegaConf.to_container(cfg, resolve=True)
    for key in ("paths", "ckpt_path", "logger", "progress"):
        data.pop(key, None)
    return hashlib.sha256(
        OmegaConf.to_yaml(OmegaConf.create(data), sort_keys=True).encode()
    ).hexdigest()


def versions() -> dict[str, str]:
    import lightning
    import timm
    import torch
    import torchmetrics

    from amint_pl import __version__

    return {
        "amint_pl": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "timm": timm.__version__,
        "torchmetrics": torchmetrics.__version__,
        "hydra": hydra.__version__,
    }


# What a run does, in order: results.json of a run that stopped names the stage it was in.
STAGES = ("starting", "validating", "caching", "splitting", "training", "evaluating", "reporting")
# A developer's hook: with AMINT_PAUSE_AT_STAGE=<stage> a run waits at the start of that stage
# until a signal ends it (the tests stop runs there, one stage after another).
PAUSE_ENV = "AMINT_PAUSE_AT_STAGE"
# The running run's status.json (set by run_experiment; stages and epochs rewrite it).
_status: RunStatus | None = None


def _enter_stage(results: dict[str, Any], stage: str, **where: Any) -> None:
    results.update(stage=stage, **where)
    if _status is not None:
        _status.update(stage=stage, **where)  # later stages keep the last phase trained
    log.info("stage %s%s", stage, f" ({where['phase']})" if where.get("phase") else "")
    if os.environ.get(PAUSE_ENV) == stage and _is_rank_zero():
        print(f"paused at stage {stage} ({PAUSE_ENV})", file=sys.stderr, flush=True)
        while True:
            time.sleep(0.05)


class _StopOnSigterm:
    """While a run runs, SIGTERM (what schedulers send before they kill a job) raises Lightning's
    SIGTERMException wherever the run is, so that every stage ends through the failure path:
    results.json and the resume command. Inside `trainer.fit` Lightning's own handler runs first
    (it stops DDP processes) and then this one."""

    def __enter__(self) -> _StopOnSigterm:
        import signal
        import threading

        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._raise)
        return self

    @staticmethod
    def _raise(signum: int, frame: Any) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        raise SIGTERMException

    def __exit__(self, *exc: Any) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def run_experiment(cfg: DictConfig) -> dict[str, Any]:
    """Train and evaluate one experiment in the Hydra run directory; return results.json's content."""
    global _status
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    started = time.time()
    _status = RunStatus(output_dir, enabled=_is_rank_zero())
    _progress_off_terminal()
    logging.captureWarnings(True)  # warnings join the run's story in run.log
    # One story per run: DDP ranks > 0 (Hydra logs them into the same run.log) tell only problems.
    logging.getLogger("amint_pl").setLevel(logging.INFO if _is_rank_zero() else logging.WARNING)
    results: dict[str, Any] = {
        "status": "running",
        "run_dir": str(output_dir),
        "dataset": cfg.dataset.name,
        "model": cfg.model.name,
        "mint_mode": mint_label(cfg),
        "choices": run_choices(),
        "taps": cfg.mint.taps if isinstance(cfg.mint.taps, str) else list(cfg.mint.taps),
        "seed": cfg.seed,
    }
    with _StopOnSigterm():
        if cfg.get("ckpt_path") is not None:
            check_resume(cfg, output_dir)  # a refused resume leaves the run as it was
        try:
            _enter_stage(results, "starting")
            if cfg.get("ckpt_path") is not None:
                keep_earlier_attempt(output_dir)
            results.update(config_digest=config_digest(cfg), versions=versions())
            from amint_pl.distributed import JobProcesses
            from amint_pl.validation import validate_config

            _enter_stage(results, "validating")
            validate_config(cfg)  # before any data is decoded: one line that names the fix
            log.info(
                "run %s: %s, seed %s, up to %s epochs, batch size %s, lr %s",
                output_dir,
                " ".join(f"{g}={o}" for g, o in results["choices"].items()),
                cfg.seed,
                cfg.trainer.max_epochs,
                cfg.batch_size,
                cfg.optim.lr,
            )

            # Correct DDP inside a sweep too: this job's ranks only, nothing left for the next job.
            multirun = HydraConfig.get().mode == RunMode.MULTIRUN
            with JobProcesses(multirun, cfg.trainer.get("strategy", "auto")) as job:
                results.update(_train_and_evaluate(cfg, output_dir, job, results))
            results["status"] = "completed"
            for key in ("stage", "phase"):
                results.pop(key, None)
        except BaseException as err:
            # Lightning turns Ctrl+C into sys.exit(1): record the interrupt itself.
            plain_exit = type(err) is SystemExit and err.__context__ is not None
            cause = err.__context__ if plain_exit else err
            results.update(
                status="failed", error=f"{type(cause).__name__}: {str(cause) or 'interrupted'}"
            )
            if not isinstance(err, AmintError):  # a user's error: fix it and start a new run
                results["resume_with"] = f"hydra.run.dir={output_dir} ckpt_path=last"
            log.error(
                "failed at stage %s: %s%s",
                results.get("stage"),
                results["error"],
                f"; resume with {results['resume_with']}" if "resume_with" in results else "",
            )
            if isinstance(err, SystemExit) and not err.code:
                raise SystemExit(1) from err  # SIGTERM (Lightning's SIGTERMException): not 0
            raise
        finally:
            results["wall_time_s"] = round(time.time() - started, 2)
            _finish(cfg, output_dir, results)
    return results


def _is_rank_zero() -> bool:
    from lightning.pytorch.utilities import rank_zero_only

    return rank_zero_only.rank == 0


def _finish(cfg: DictConfig, output_dir: Path, results: dict[str, Any]) -> None:
    from amint_pl.evaluation.report import write_json

    if _is_rank_zero():
        write_json(output_dir / "results.json", results)
    if _status is not None:
        _status.update(
            state=results["status"],
            stage=results.get("stage"),  # where a failed run stopped
            error=results.get("error"),
            wall_time_s=results["wall_time_s"],
        )
    if "wandb" in (cfg.get("logger") or {}):
        _finish_wandb(exit_code=0 if results["status"] == "completed" else 1)


def _finish_wandb(exit_code: int) -> None:
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=exit_code)


def _load_splits(cfg: DictConfig, output_dir: Path, n_train: int, n_test: int):
    from amint_pl.data.splits import MembershipSplits, SplitSizes, build_splits
    from amint_pl.errors import SplitError

    path = output_dir / "splits.npz"
    if path.exists():
        splits = MembershipSplits.load(path)
        if splits.pool_sizes and splits.pool_sizes != {"train": n_train, "test": n_test}:
            raise SplitError(
                f"{path} was built for pools {splits.pool_sizes}, the data set now has {n_train}/{n_test}"
            )
        return splits
    splits = build_splits(
        n_train, n_test, SplitSizes(**OmegaConf.to_container(cfg.dataset.splits)), int(cfg.seed)
    )
    if _is_rank_zero():
        tmp = output_dir / "splits.tmp.npz"
        splits.save(tmp)
        tmp.replace(path)
    return splits


def _loggers(cfg: DictConfig) -> list[Any]:
    from amint_pl.loggers import build_loggers

    return build_loggers(cfg)


def _trainer(
    cfg: DictConfig,
    output_dir: Path,
    phase: str,
    monitor: str,
    loggers: list[Any],
    extra_callbacks: list[Any] | None = None,
    label: str | None = None,
):
    """The trainer of one phase; `label` names it in progress lines (default: the phase)."""
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from amint_pl.training.progress import ProgressReport

    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    if not sys.stdout.isatty():  # Rich's bar draws only on a terminal: plain lines instead
        kwargs["enable_progress_bar"] = False
    if phase == "mint_head":
        kwargs["max_epochs"] = int(cfg.mint.head_max_epochs)
    mode = str(cfg.mint.monitor_mode)
    folder = output_dir / "checkpoints" / phase
    # A resumed run retrains the epoch it was stopped in and writes that epoch's files again under
    # the same names (no -v1 copies): e.g. a best checkpoint saved just before the stop.
    best = ModelCheckpoint(
        dirpath=folder,
        filename="best-{epoch:03d}",
        monitor=monitor,
        mode=mode,
        save_top_k=1,
        enable_version_counter=False,
    )
    # last.ckpt at the end of every epoch (Lightning's save_last rewrites it only when the best
    # improves): a second callback that keeps the newest checkpoint, under one name. Lightning
    # runs checkpoint callbacks last and in this order, so it holds the epoch's early stopping and
    # best-checkpoint state too.
    last = ModelCheckpoint(
        dirpath=folder, filename=LAST_CHECKPOINT, save_top_k=1, enable_version_counter=False
    )
    callbacks = [
        best,
        last,
        EarlyStopping(monitor=monitor, mode=mode, patience=int(cfg.early_stopping_patience)),
        ProgressReport(
            label or phase,
            float(OmegaConf.select(cfg, "progress.interval_s", default=PROGRESS_INTERVAL_S)),
            _status,
        ),
        *(extra_callbacks or []),
    ]
    return L.Trainer(
        **kwargs,
        logger=loggers or False,
        callbacks=callbacks,
        default_root_dir=output_dir,
        use_distributed_sampler=False,  # our samplers shard by rank themselves
    )


SKIP_PHASE = "skip"
# checkpoints/<phase>/<LAST_CHECKPOINT>.ckpt: the state at the end of the newest finished epoch.
LAST_CHECKPOINT = "last"


def resume_plan(ckpt_path: Any, output_dir: Path, phases: tuple[str, ...]) -> dict[str, str]:
    """What each phase continues from (`ckpt_path`): a checkpoint, SKIP_PHASE, or nothing (absent).

    `last`: each phase's checkpoints/<phase>/last.ckpt in the run directory; each phase goes on to
    its max_epochs (a phase that early-stopped stays stopped); a phase without one (the run
    stopped before that phase finished an epoch) trains from its start. A file: the phase it was
    saved in continues from it; earlier phases are in its weights and are skipped.
    """
    if ckpt_path is None:
        return {}
    if ckpt_path == "last":
        found = {p: output_dir / "checkpoints" / p / f"{LAST_CHECKPOINT}.ckpt" for p in phases}
        return {p: str(f) for p, f in found.items() if f.is_file()}
    phase = checkpoint_progress(ckpt_path)["phase"]
    if phase not in phases:
        raise ConfigError(
            f"ckpt_path={ckpt_path} was saved in phase {phase!r}, not one of {', '.join(phases)}: "
            "give a checkpoint of a run with this mint mode"
        )
    start = phases.index(phase)
    return {**dict.fromkeys(phases[:start], SKIP_PHASE), phase: str(ckpt_path)}


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint loaded safely (weights_only), its tensors memory-mapped."""
    import torch

    from amint_pl.errors import CheckpointError

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({type(err).__name__}): give another ckpt_path"
        ) from err


def checkpoint_progress(path: str | Path) -> dict[str, Any]:
    """A checkpoint's phase, epoch, global step and whether early stopping ended it."""
    ckpt = read_checkpoint(path)
    stopped = any(
        name.startswith("EarlyStopping") and int(state.get("stopped_epoch", 0)) > 0
        for name, state in ckpt.get("callbacks", {}).items()
    )
    return {
        "phase": ckpt.get("amint_phase"),
        "epoch": int(ckpt.get("epoch", 0)),
        "global_step": int(ckpt.get("global_step", 0)),
        "stopped_early": stopped,
    }


def _set_aside_checkpoints(output_dir: Path, phases: tuple[str, ...]) -> None:
    """Move the checkpoints of phases that must train again to checkpoints/<phase>.superseded-<n>."""
    for phase in phases:
        folder = output_dir / "checkpoints" / phase
        if folder.is_dir():
            n = 1
            while folder.with_name(f"{phase}.superseded-{n}").exists():
                n += 1
            folder.rename(folder.with_name(f"{phase}.superseded-{n}"))


class _NotProgress(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        from amint_pl.status import PROGRESS_LOGGER

        return not record.name.startswith(PROGRESS_LOGGER)


def _progress_off_terminal() -> None:
    """On a terminal Rich draws the progress bar: progress lines go to run.log alone there."""
    for handler in logging.getLogger().handlers:
        stream = getattr(handler, "stream", None)
        on_terminal = not isinstance(handler, logging.FileHandler) and stream is not None
        if (
            on_terminal
            and hasattr(stream, "isatty")
            and stream.isatty()
            and not any(isinstance(f, _NotProgress) for f in handler.filters)
        ):
            handler.addFilter(_NotProgress())


def _quiet_lightning() -> None:
    """Lightning prints through its own handler; stop it printing each line twice under Hydra,
    and drop warnings that our deliberate choices trigger."""
    logging.getLogger("lightning.pytorch").propagate = False
    logging.getLogger("lightning.fabric").propagate = False
    for message in (
        ".*overridden `on_(before|after)_batch_transfer`.*",
        ".*custom batch sampler.*",
        ".*does not have many workers.*",
        ".*isinstance\\(treespec, LeafSpec\\).*",
        ".*litlogger.*",
        # Validation values are torchmetrics computed over all ranks: there is nothing to sync.
        ".*when logging on epoch level in distributed setting.*",
    ):
        warnings.filterwarnings("ignore", message=message)


def _train_and_evaluate(
    cfg: DictConfig, output_dir: Path, job: Any, results: dict[str, Any]
) -> dict[str, Any]:
    """Every stage after validation; `results` says which one the run is in."""
    import lightning as L
    import torch

    from amint_pl.data.benchmarks import benchmark_from_config
    from amint_pl.data.datamodule import MembershipDataModule
    from amint_pl.data.splits import PROTOCOLS
    from amint_pl.distributed import gather_predictions
    from amint_pl.evaluation.report import (
        audited_accuracy,
        membership_results,
        plot_roc,
        plot_score_hist,
        scored_samples,
        table_text,
        write_scores_csv,
    )
    from amint_pl.loggers import publish_results
    from amint_pl.training.module import AMINTModule
    from amint_pl.validation import check_checkpoint

    _quiet_lightning()
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    _enter_stage(results, "caching")
    benchmark = benchmark_from_config(cfg.dataset)
    _enter_stage(results, "splitting")
    splits = _load_splits(cfg, output_dir, len(benchmark.train), len(benchmark.test))
    log.info(
        "data %s: pools train %d, test %d; splits %s",
        cfg.dataset.name,
        len(benchmark.train),
        len(benchmark.test),
        ", ".join(f"{role} {len(idx)}" for role, idx in splits.indices.items()),
    )
    if cfg.attack.reference:  # bad settings or a stale cache stop before anything trains
        from amint_pl.evaluation.reference import check_reference_attack

        check_reference_attack(cfg, splits, output_dir)
    datamodule = MembershipDataModule(
        benchmark,
        splits,
        int(cfg.batch_size),
        int(cfg.eval_batch_size),
        int(cfg.seed),
        on_device=bool(cfg.dataset.get("on_device", False)),
    )
    protocols = [p for p, role in PROTOCOLS.items() if len(splits[f"{role}_calib"])]
    module = AMINTModule.for_benchmark(cfg, benchmark, protocols, splits.fingerprint())
    loggers = _loggers(cfg)
    best_checkpoints: dict[str, str] = {}
    trainer = None
    plan = resume_plan(cfg.get("ckpt_path"), output_dir, module.phases)
    for i, phase in enumerate(module.phases):
        _enter_stage(results, "training", phase=phase)
        module.set_phase(phase)
        monitor = "val/paper/mint_auc" if phase == "mint_head" else str(cfg.mint.monitor)
        trainer = _trainer(cfg, output_dir, phase, monitor, loggers, [job.shard_report])
        resume_from = plan.get(phase)
        if resume_from == SKIP_PHASE:
            continue
        progress = checkpoint_progress(resume_from) if resume_from else None
        if progress and progress["stopped_early"]:
            trainer.fit_loop.max_epochs = progress["epoch"] + 1  # restore it, train no further
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
        if progress and trainer.global_step > progress["global_step"]:
            # This phase trained on: later phases start again from its new weights.
            plan = {p: c for p, c in plan.items() if p not in module.phases[i + 1 :]}
            if _is_rank_zero():
                _set_aside_checkpoints(output_dir, module.phases[i + 1 :])
        best = (
            trainer.checkpoint_callback.best_model_path
            or trainer.checkpoint_callback.last_model_path
        )
        if best:
            state = torch.load(best, map_location="cpu", weights_only=True)
            check_checkpoint(state, best)
            module.load_state_dict(state["state_dict"])
            best_checkpoints[phase] = str(Path(best).relative_to(output_dir))
    results.pop("phase", None)
    _enter_stage(results, "evaluating")
    predictions = trainer.predict(module, datamodule=datamodule)
    # Under DDP each rank scored its shard: every rank gets them all (and the per-rank counts).
    samples = scored_samples(gather_predictions(predictions))
    distributed = job.shard_report.report()
    reference_attack_summary = None
    if cfg.attack.reference:  # the opt-in reference-model attack joins the scored methods
        from amint_pl.evaluation.reference import METHOD, reference_attack

        samples.scores[METHOD], reference_attack_summary = reference_attack(
            cfg,
            benchmark,
            splits,
            samples,
            module,
            output_dir,
            lambda ref_cfg, root: _trainer(
                ref_cfg, root, "audited", "val/aud_acc", [], label="reference"
            ),
        )
    membership = membership_results(
        samples, splits, int(cfg.bootstrap.resamples), float(cfg.bootstrap.confidence)
    )
    audited = audited_accuracy(samples)
    evaluation = {
        "audited": audited,
        "membership": membership,
        "split_fingerprint": splits.fingerprint(),
        "split_fingerprints": splits.fingerprints(),
        "split_sizes": {role: len(idx) for role, idx in splits.indices.items()},
        "tap_info": [
            {"index": t.index, "module": t.module, "shape": list(t.shape)}
            for t in module.backbone.tap_info
        ],
        "best_checkpoints": best_checkpoints,
        "epochs_trained": int(trainer.current_epoch),
        "training": datamodule.samples_used(
            module.phases, [p for p in module.phases if p != "audited"]
        ),
        "distributed": distributed,
    }
    if reference_attack_summary is not None:
        evaluation["reference_attack"] = reference_attack_summary
    _enter_stage(results, "reporting")
    if _is_rank_zero():
        title = f"{cfg.dataset.name} | {cfg.model.name} | mint={mint_label(cfg)} | taps={evaluation['tap_info'][0]['module']}"
        write_scores_csv(output_dir / "scores.csv", samples, splits)
        plot_roc(output_dir / "roc.png", samples, splits, membership, title)
        plot_score_hist(output_dir / "scores_hist.png", samples, title)
        summary = {f"test/aud_{k}": v for k, v in audited.items() if k.endswith("acc")}
        for protocol, methods in membership.items():
            for method, m in methods.items():
                for key in (
                    "auc",
                    "balanced_acc_calibrated",
                    "tpr_at_1%_fpr",
                    "tpr_at_0.1%_fpr",
                    "acc_at_0.5",
                ):
                    if m[key] is not None:
                        summary[f"test/{protocol}/{method}/{key}"] = m[key]
        publish_results(loggers, summary, membership, output_dir, trainer.global_step)
        if "wandb" in (cfg.get("logger") or {}):
            _finish_wandb(exit_code=0)  # its closing summary would otherwise follow the table
        table = table_text(
            {
                "dataset": cfg.dataset.name,
                "model": cfg.model.name,
                "mint_mode": mint_label(cfg),
                **evaluation,
            }
        )
        log.info("results:\n%s", table)
        written = [
            name
            for name in (*ATTEMPT_FILES, "splits.npz", "checkpoints", "wandb")
            if (output_dir / name).exists()
        ]
        log.info("run directory: %s (%s)", output_dir, ", ".join(written))
        if (output_dir / "wandb").is_dir() and any((output_dir / "wandb").glob("offline-run-*")):
            log.info(
                "W&B offline: wandb sync %s uploads it", output_dir / "wandb" / "offline-run-*"
            )
    return evaluation


@hydra.main(config_path="conf", config_name="run", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> dict[str, Any] | None:
    try:
        return run_experiment(cfg)
    except AmintError as err:
        print(f"error: {err}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            return None  # this job is recorded as failed in its results.json; the sweep goes on
        sys.exit(2)
    except Exception:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            import traceback

            traceback.print_exc()
            return None
        raise


def check_keys(args: list[str]) -> None:
    """Compose the config once with the plain overrides, so that a misspelt or undeclared key is
    one line naming the fix instead of Hydra's report (sweeps, -m, are composed by Hydra alone)."""
    if any(arg in ("-m", "--multirun") for arg in args):
        return
    overrides = [
        arg
        for arg in args
        if "=" in arg and not arg.startswith(("-", "hydra.", "hydra/", "+hydra", "~hydra"))
    ]
    if not overrides:
        return
    from hydra import compose, initialize_config_module
    from hydra.errors import ConfigCompositionException

    with initialize_config_module("amint_pl.conf", version_base="1.3"):
        try:
            compose("run", overrides=overrides)
        except ConfigCompositionException as err:
            cause = str(err.__cause__ or "").strip().splitlines()
            reason = " ".join([str(err).strip().splitlines()[0], *cause[:1]])
            raise ConfigError(
                f"{reason}: check the spelling (python -m amint_pl.run --cfg job prints every "
                "setting), or add a new key with a leading +"
            ) from err


def _override_key(arg: str) -> str:
    return arg.lstrip("+~").partition("=")[0]


def with_run_overrides(args: list[str]) -> list[str]:
    """For a resume in place (hydra.run.dir=<run> ckpt_path=...): the overrides the run was
    composed with (those of its newest attempt, .hydra/[resumed-*/]overrides.yaml), each one given
    now in its place. Other command lines come back as they are."""
    given = dict(arg.partition("=")[::2] for arg in args if "=" in arg)
    run_dir = Path(given.get("hydra.run.dir", "").strip("\"'") or "-")
    if (
        given.get("ckpt_path", "null") in ("null", "")
        or any(arg in ("-m", "--multirun") for arg in args)
        or not (run_dir / RUN_OVERRIDES).is_file()
    ):
        return args
    attempts = sorted(run_dir.glob(f"{RUN_OVERRIDES.parent}/resumed-*/{RUN_OVERRIDES.name}"))
    saved = [str(o) for o in OmegaConf.load(([run_dir / RUN_OVERRIDES, *attempts])[-1])]
    now = {_override_key(arg): arg for arg in args if "=" in arg}
    kept = [o for o in saved if _override_key(o) not in now]
    for arg in args:  # a key the run added with + is still added
        before = next((o for o in saved if _override_key(o) == _override_key(arg)), "")
        kept.append("+" + arg if before.startswith("+") and not arg.startswith("+") else arg)
    return kept


def with_timm_config(args: list[str]) -> list[str]:
    """`model.name=<timm name>` alone selects conf/model/timm.yaml (the default model's config
    holds small_cnn's own arguments), unless a model config or an experiment is chosen."""
    keys = {_override_key(arg) for arg in args if "=" in arg}
    names = [arg.partition("=")[2] for arg in args if _override_key(arg) == "model.name"]
    if not names or keys & {"model", "experiment"} or names == ["small_cnn"]:
        return args
    return ["model=timm", *args]


def main() -> None:
    """`python -m amint_pl.run [overrides]`: one experiment, or a sweep with -m."""
    try:
        args = with_timm_config(with_run_overrides(sys.argv[1:]))
        check_overrides(args)
        check_keys(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if args != sys.argv[1:]:
        print(f"overrides: {' '.join(args)}", file=sys.stderr)
    sys.argv[1:] = args + resumed_config_dir(args)
    _hydra_main()


if __name__ == "__main__":
    main()
