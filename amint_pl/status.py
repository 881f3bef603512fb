"""`status.json`: where a run is, for whoever watches it from outside (a person, a sweep's
aggregate). Rewritten atomically at each stage and epoch while the run runs (state `running`), and
once more when it ends (`completed`, or `failed` with the stage it stopped in).

Fields: state, stage, phase, epoch, max_epochs, step, eta_s, metrics (the epoch's), error, pid,
host, started and updated (ISO times), started_unix and updated_unix (seconds since the epoch).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"
# The logger of progress lines (training epochs, decoding data): run.log, and the console off a
# terminal.
PROGRESS_LOGGER = "amint_pl.progress"
# Seconds between progress lines within a long step (the run config's progress.interval_s).
PROGRESS_INTERVAL_S = 30.0
# A running run rewrites its status at least once an epoch: one silent this long has likely died.
STALE_AFTER_S = 600.0


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))


def duration(seconds: float | None) -> str:
    """Seconds as 1h02m, 3m05s or 12s ('?' when unknown)."""
    if seconds is None:
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def batch_progress(
    batches: int, total: int, samples: int, elapsed: float, unit: str = "batch"
) -> tuple[str, float | None]:
    """How far a loop over batches (or other units) is: 'batch n/N | S samples/s | elapsed T ETA
    T', and the ETA in seconds (None before the first one)."""
    eta = elapsed / batches * max(total - batches, 0) if batches else None
    rate = samples / elapsed if elapsed > 0 else 0
    timing = f"elapsed {duration(elapsed)} ETA {duration(eta)}"
    return f"{unit} {batches}/{total} | {rate:.0f} samples/s | {timing}", eta


class StderrProgress:
    """Lines on stderr saying how far a loop is, `<what>: <unit> n/N | samples/s | elapsed ETA`:
    one every interval_s seconds, and one after the last step once any was printed (None:
    silent)."""

    def __init__(self, what: str, total: int, interval_s: float | None, unit: str = "batch"):
        self.what, self.total, self.interval_s, self.unit = what, total, interval_s, unit
        self.started = self.last_line = time.monotonic()
        self.shown = False

    def step(self, done: int, samples: int) -> None:
        """`done` of the `total` steps finished, `samples` samples in them."""
        now = time.monotonic()
        due = self.interval_s is not None and now - self.last_line >= self.interval_s
        if due or (self.shown and done == self.total):
            line = batch_progress(done, self.total, samples, now - self.started, self.unit)[0]
            print(f"{self.what}: {line}", file=sys.stderr)
            self.last_line, self.shown = now, True


class RunStatus:
    """The status file of one run directory; `update` merges fields and rewrites it atomically.

    Args:
        run_dir: the run directory.
        enabled: False on the processes that must not write it (DDP ranks > 0).
    """

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.path = Path(run_dir) / STATUS_FILE
        self.enabled = enabled
        now = time.time()
        self.fields: dict[str, Any] = {
            "state": "running",
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": _iso(now),
            "started_unix": round(now, 3),
        }

    def update(self, **fields: Any) -> None:
        self.fields.update(fields)
        now = time.time()
        self.fields.update(updated=_iso(now), updated_unix=round(now, 3))
        if not self.enabled or not self.path.parent.is_dir():
            return
        tmp = self.path.with_name(f".{STATUS_FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.fields, indent=2, default=str) + "\n")
        tmp.replace(self.path)  # readers see the old file or the new one, never half of one


def read_status(run_dir: Path) -> dict[str, Any] | None:
    """A run directory's status.json, or None when it has none (or it cannot be read)."""
    try:
        status = json.loads((Path(run_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None


def is_stale(status: dict[str, Any], now: float | None = None) -> bool:
    """A status that says running but has not been rewritten for STALE_AFTER_S."""
    updated = status.get("updated_unix")
    if status.get("state") != "running" or not isinstance(updated, (int, float)):
        return False
    return (now if now is not None else time.time()) - updated > STALE_AFTER_S


def where(status: dict[str, Any]) -> str:
    """Where a run is, in a line: 'training audited epoch 2/5, ETA 1m30s, updated <time>'."""
    parts = [" ".join(str(status[k]) for k in ("stage", "phase") if status.get(k))]
    if status.get("epoch") is not None:
        parts.append(f"epoch {status['epoch']}/{status.get('max_epochs', '?')}")
    text = " ".join(p for p in parts if p)
    if status.get("state") == "running" and status.get("eta_s") is not None:
        text += f", ETA {duration(status['eta_s'])}"
    return f"{text}, updated {status.get('updated', '?')}".lstrip(", ")


# What a run does, in order: results.json of a run that stopped names the stage it was in.
STAGES = ("starting", "validating", "caching", "splitting", "training", "evaluating", "reporting")
# A developer's hook: with AMINT_PAUSE_AT_STAGE=<stage> a run waits at the start of that stage
# until a signal ends it (the tests stop runs there, one stage after another).
PAUSE_ENV = "AMINT_PAUSE_AT_STAGE"


class Stages:
    """Where a run is: `enter` records a stage (and e.g. its phase) in the run's results, its
    status.json and its log.

    Args:
        results: the run's results.json content, being built.
        status: the run's status file.
        rank_zero: whether this process is the global rank 0 (the only one that pauses).
    """

    def __init__(self, results: dict[str, Any], status: RunStatus, rank_zero: bool) -> None:
        self.results, self.status, self.rank_zero = results, status, rank_zero

    def enter(self, stage: str, **where: Any) -> None:
        import logging
        import sys

        self.results.update(stage=stage, **where)
        if "phase" not in where:  # results.json names a phase while one trains
            self.results.pop("phase", None)
        self.status.update(stage=stage, **where)  # later stages keep the last phase trained
        phase = f" ({where['phase']})" if where.get("phase") else ""
        logging.getLogger("amint_pl.run").info("stage %s%s", stage, phase)
        if os.environ.get(PAUSE_ENV) == stage and self.rank_zero:
            print(f"paused at stage {stage} ({PAUSE_ENV})", file=sys.stderr, flush=True)
            while True:
                time.sleep(0.05)

    def training(self, phase: str) -> None:
        """Enter the stage `training`, in `phase`."""
        self.enter("training", phase=phase)


class StopOnSigterm:
    """While a run runs, SIGTERM (what schedulers send before they kill a job) raises Lightning's
    SIGTERMException wherever the run is, so that every stage ends through the failure path:
    results.json and the resume command. Inside `trainer.fit` Lightning's own handler runs first
    (it stops DDP processes) and then this one."""

    def __enter__(self) -> StopOnSigterm:
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
