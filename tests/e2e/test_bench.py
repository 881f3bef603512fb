"""`experiments/bench.py --quick`: every comparison runs and the results file carries its ratios.

Timings on a shared CPU are noise at these sizes, so only the shape of the results is asserted:
the ratios exist and are finite and positive, and the two sides of (a) did identical work.
"""

import json
import math
import subprocess
import sys

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "experiments" / "bench.py"),
            "--quick",
            "--threads",
            "1",
            "--machine",
            "smoke",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "bench-smoke.json").read_text())


def _ratio(value):
    assert isinstance(value, float) and math.isfinite(value) and value > 0, value
    return value


def test_quick_bench_reports_every_ratio(quick_bench):
    _, results = quick_bench
    model = results["models"]["small_cnn"]
    _ratio(model["lightning_vs_raw"]["ratio"])
    assert model["lightning_vs_raw"]["target"] == 0.9
    _ratio(model["active_vs_off"]["ratio"])
    _ratio(model["active_vs_off"]["epoch_time_ratio"])
    # The membership memory's cost: a step with it, its table sized for the bench's members and
    # for 25,000 (16 bands of 2**19 rows of 10 logits), against mint=active without it; the
    # fingerprint record's banks (2 views of 507 numbers at 32x32x3 per member) likewise.
    memory = model["memory"]
    for name in ("general", "general_25k", "fingerprint", "fingerprint_25k"):
        _ratio(memory[name]["ratio"])
        _ratio(memory[name]["epoch_time_ratio_vs_off"])
        assert memory[name]["external_per_member"] == 0.25
    parameters = memory["parameters"]
    assert parameters["active"]["memory"] == 0
    assert parameters["general"]["memory"] == 16 * 2048 * 10  # 64 members: 2**11 rows per band
    assert parameters["general_25k"]["memory"] == 16 * 2**19 * 10
    assert parameters["fingerprint"]["memory"] == 2 * 64 * 507
    assert parameters["fingerprint_25k"]["memory"] == 2 * 25000 * 507
    for name in ("general", "fingerprint"):
        assert parameters[name]["network"] == parameters["active"]["network"] > 0
    for kind in ("plain", "augmented"):
        _ratio(results["pipeline"][kind]["ratio"])
        assert set(results["pipeline"][kind]["ratios"]) == {"ours_vs_torchvision_workers0"}
    assert results["pipeline"]["target"] == 3.0


def test_lightning_and_raw_loop_do_identical_work(quick_bench):
    # Same weights, batches and loss: the last losses of both sides agree.
    _, results = quick_bench
    check = results["models"]["small_cnn"]["lightning_vs_raw"]
    assert check["same_work"] and check["last_loss_rel_diff"] < 1e-3


def test_quick_bench_records_memory_scaling_and_the_machine(quick_bench):
    out, results = quick_bench
    lightning = results["models"]["small_cnn"]["lightning_vs_raw"]["lightning"]
    assert lightning["peak_rss_mib"] > 0
    sizes = [row["training_samples"] for row in results["scaling"]["samples"]]
    assert sizes == [64, 128]
    assert [row["taps"] for row in results["scaling"]["taps"]] == [[0], [0, 1]]
    assert results["machine"]["torch_threads"] == 1 and results["gpu"]["measured"] is False
    assert "--device cuda" in results["gpu"]["note"]
    table = (out / "bench-smoke.md").read_text()
    assert (
        "mint=active_general (memory 83.9M parameters, sized for 25000 members; "
        "0.25 external per member)" in table
    )
    assert "mint=active_fingerprint (memory 25.4M numbers, sized for 25000 members;" in table
    assert "Lightning vs raw loop" in table and "| (c) pipeline plain" in table
