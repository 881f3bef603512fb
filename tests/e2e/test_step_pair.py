"""`experiments/step_pair.py`: one real aMINT step timed two ways (float32 and bf16 autocast; the
head's convolutions as `nn.Conv2d` and as `SmallMapConv2d`; Adam per tensor and fused), round by
round."""

import re
import subprocess
import sys

import pytest

from tests.helpers import REPO, process_env


@pytest.mark.parametrize(
    ("pair", "names"),
    [
        ([], ("float32", "bf16")),
        (["--pair", "conv", "--bf16"], ("nn.Conv2d", "SmallMapConv2d")),
        (["--pair", "adam"], ("per-tensor Adam", "fused Adam")),
    ],
)
def test_each_round_times_both_ways_and_the_table_gives_their_median_ratio(tmp_path, pair, names):
    out = tmp_path / "pair.md"
    proc = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "step_pair.py"), *pair,
         "--model", "small_cnn", "--head", "light", "--taps", "output",
         "--batch", "16", "--rounds", "3", "--steps", "1", "--out", str(out)],
        cwd=tmp_path, env=process_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    rows = [
        line.strip("| ").split(" | ") for line in text.splitlines() if re.match(r"^\| \d", line)
    ]
    assert [row[0] for row in rows] == ["1", "2", "3"]
    ratios = []
    for _, fp32, bf16, shown in rows:
        ratio = float(shown.rstrip("x"))
        assert float(fp32) > 0 and float(bf16) > 0
        # Each time is printed to 3 places and the ratio to 2: the ratio of the times as printed,
        # within their rounding.
        low = (float(fp32) - 5e-4) / (float(bf16) + 5e-4) - 5e-3
        high = (float(fp32) + 5e-4) / (float(bf16) - 5e-4) + 5e-3
        assert low <= ratio <= high, (fp32, bf16, shown)
        ratios.append(ratio)
    median = float(re.search(r"\*\*([\d.]+)x\*\*", text).group(1))
    assert abs(median - sorted(ratios)[1]) < 0.006
    assert f"| round | {names[0]} s/step | {names[1]} s/step | {names[0]} / {names[1]} |" in text
    assert f"Median {names[0]} / {names[1]}" in text
    assert (
        f"step_pair.py{' '.join(['', *pair])} --model small_cnn --head light --taps output" in text
    )
