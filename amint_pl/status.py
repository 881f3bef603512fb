"""`status.json`: where a run is, for whoever watches it from outside (a person, a sweep's
aggregate). Rewritten atomically at each stage and epoch while the run runs (state `running`), and
once more when it ends (`completed`, or `failed` with the stage it stopped in).

Fields: state, stage, phase, epoch, max_epochs, step, eta_s, metrics (the epoch's), error, pid,
host, started and updated (ISO times) and updated_unix (seconds since the epoch).
"""

from __future__ import annotations

import json
import os
import socket
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


class RunStatus:
    """The status file of one run directory; `update` merges fields and rewrites it atomically.

    Args:
        run_dir: the run directory.
        enabled: False on the processes that must not write it (DDP ranks > 0).
    """

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.path = Path(run_dir) / STATUS_FILE
        self.enabled = enabled
        self.fields: dict[str, Any] = {
            "state": "running",
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": _iso(time.time()),
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
