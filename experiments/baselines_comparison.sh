#!/usr/bin/env bash
# aMINT against its baselines (passive MINT, the audited model alone; classic attacks and RMIA on
# each), one sweep, then the comparison table. Extra arguments are Hydra overrides:
#
#   experiments/baselines_comparison.sh                                        # digits, small_cnn
#   experiments/baselines_comparison.sh dataset=fashion_mnist seed=0,1,2
#   experiments/baselines_comparison.sh dataset=cifar10 model=resnet50 trainer=gpu
#
# OUT=<dir> picks the sweep directory (default: runs/baselines_comparison/<date>_<time>).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$([ -x "$REPO/.venv/bin/python" ] && echo "$REPO/.venv/bin/python" || echo python3)}
OUT=${OUT:-runs/baselines_comparison/$(date +%Y-%m-%d_%H-%M-%S)}
"$PYTHON" -m amint_pl.run -m experiment=baselines_comparison hydra.sweep.dir="$OUT" "$@"
"$PYTHON" -m amint_pl.aggregate "$OUT"
