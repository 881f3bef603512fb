"""Whole training epochs of two runs side by side: each epoch's seconds and their ratio.

Starts `python -m amint_pl.run <common> <a>` and `python -m amint_pl.run <common> <b>` at the same
moment, one thread each, reads the epoch-end progress lines of each (an epoch ends after its
validation), and stops each run when it starts evaluating: what is timed is training. An epoch of
one run counts as side by side only if the other run was still training when it ended; give the
reference run more epochs than the other (as below) so that every epoch of the other has one
beside it. The table is printed and appended to --out (Markdown), with the command, the machine
and the load.

    OMP_NUM_THREADS=1 python experiments/epoch_pair.py \\
        --out experiments/results/generalizing/epoch_pair.md \\
        --common dataset=fashion_mnist dataset.splits.members=25000 \\
            dataset.splits.members_unseen_fraction=0.2 dataset.splits.external=35000 \\
            "model.kwargs.widths=[16,32,64]" seed=2 \\
        --a mint=off trainer.max_epochs=5 --b mint=active_fingerprint trainer.max_epochs=3

Each run writes into a folder of its own under --runs (a new temporary folder by default), its
log beside it (`a.log`, `b.log`).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

# An epoch's last progress line: "[<date> <time>,<ms>][amint_pl.progress][INFO] - <phase> epoch
# <n>/<N> step <k>/<k> | ..."; the run's "stage training" line starts the first epoch.
EPOCH_END = re.compile(
    r"^\[(\S+ \S+)\]\[amint_pl\.progress\]\[INFO\] - (\S+) epoch (\d+)/\d+ step (\d+)/(\d+) "
)
STAGE = re.compile(r"^\[(\S+ \S+)\]\[amint_pl\.run\]\[INFO\] - stage (\S+)")
POLL_S = 0.2


def stamp(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def epochs_of(log: str) -> tuple[float | None, list[float], float | None]:
    """(when training started, when each epoch ended, when evaluation started). An epoch's last
    step may be reported twice, by the interval's line before the validation and by the epoch's
    end after it: the last of its lines ends it."""
    started = evaluating = None
    ends: dict[tuple[str, str], float] = {}
    for line in log.splitlines():
        if stage := STAGE.match(line):
            if stage[2] == "training" and started is None:
                started = stamp(stage[1])
            elif stage[2] == "evaluating":
                evaluating = stamp(stage[1])
        elif (end := EPOCH_END.match(line)) and end[4] == end[5]:
            ends[end[2], end[3]] = stamp(end[1])
    return started, list(ends.values()), evaluating


def run_side_by_side(commands: dict[str, list[str]], runs: Path) -> dict[str, str]:
    """Start every command at once, stop each when it starts evaluating; their logs."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("WANDB_MODE", "disabled")
    procs, logs = {}, {}
    runs.mkdir(parents=True, exist_ok=True)
    for name, overrides in commands.items():
        folder = runs / name
        logs[name] = runs / f"{name}.log"
        cmd = [sys.executable, "-m", "amint_pl.run", *overrides, f"hydra.run.dir={folder}"]
        with logs[name].open("w") as log:
            procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    stopped: set[str] = set()
    while len(stopped) < len(procs):
        for name, proc in procs.items():
            if name in stopped:
                continue
            ended = proc.poll() is not None
            text = logs[name].read_text()
            if epochs_of(text)[2] is not None:
                if not ended:
                    proc.send_signal(signal.SIGTERM)
                stopped.add(name)
            elif ended:  # ended before it trained through
                for other in procs.values():
                    if other.poll() is None:
                        other.kill()
                        other.wait()
                tail = "\n".join(text.splitlines()[-3:])
                raise SystemExit(
                    f"error: run {name} ended (exit {proc.returncode}) before it trained "
                    f"through: fix its overrides; its log {logs[name]} ends:\n{tail}"
                )
        time.sleep(POLL_S)
    for proc in procs.values():
        proc.wait()
    return {name: log.read_text() for name, log in logs.items()}


def table(texts: dict[str, str]) -> list[str]:
    """Per epoch: each run's seconds, whether the other was still training, and b / a."""
    timing = {name: epochs_of(text) for name, text in texts.items()}
    seconds: dict[str, list[tuple[float, bool]]] = {}
    for name, (started, ends, _) in timing.items():
        others = [t[2] for other, t in timing.items() if other != name]
        previous, rows = started, []
        for end in ends:
            beside = all(other_end is not None and end <= other_end for other_end in others)
            rows.append((end - previous, beside))
            previous = end
        seconds[name] = rows
    a, b = seconds["a"], seconds["b"]
    lines = [
        "| epoch | a: s | b: s | b / a |",
        "|---|---:|---:|---:|",
    ]
    for k in range(max(len(a), len(b))):
        cells = []
        for rows in (a, b):
            if k < len(rows):
                value, beside = rows[k]
                cells.append(f"{value:.1f}" + ("" if beside else " (alone)"))
            else:
                cells.append("-")
        both = k < len(a) and k < len(b) and a[k][1] and b[k][1]
        ratio = f"{b[k][0] / a[k][0]:.2f}x" if both else "-"
        lines.append(f"| {k + 1} | {cells[0]} | {cells[1]} | {ratio} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--common", nargs="*", default=[], help="overrides of both runs")
    parser.add_argument("--a", nargs="*", default=[], help="the reference run's own overrides")
    parser.add_argument("--b", nargs="*", default=[], help="the other run's own overrides")
    parser.add_argument("--runs", type=Path, default=None, help="folder of the two runs")
    parser.add_argument("--out", type=Path, default=None, help="Markdown file to append to")
    args = parser.parse_args()
    base = [*args.common, "logger=csv", "trainer.enable_progress_bar=false"]
    commands = {"a": [*base, *args.a], "b": [*base, *args.b]}
    runs = args.runs or Path(tempfile.mkdtemp(prefix="epoch_pair_"))
    load_before = os.getloadavg()[0]
    texts = run_side_by_side(commands, runs)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    quoted = " ".join(shlex.quote(x) for x in args.common)
    lines = [
        f"## {time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, {os.cpu_count()} cores, load "
        f"average {load_before:.1f} at the start, {load} at the end (1, 5, 15 min)",
        "",
        f"`OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')} python "
        f"experiments/epoch_pair.py --common {quoted} --a {' '.join(args.a)} --b "
        f"{' '.join(args.b)}`",
        "",
        f"a: `{' '.join(args.a)}`; b: `{' '.join(args.b)}`. Seconds from the end of one epoch to "
        "the end of the next (validation included; the first from the start of training); "
        "(alone): the other run had stopped training by then.",
        "",
        *table(texts),
        "",
    ]
    print("\n".join(lines))
    if args.out is not None:
        with args.out.open("a") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
