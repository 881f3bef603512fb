#!/usr/bin/env bash
# The paper's Table 1 grid (4 data sets x 6 architectures x 3 tap setups, aMINT, the paper's
# recipe), then the table with the paper's numbers beside ours. Extra arguments are Hydra
# overrides; a value replaces that key's list in the grid:
#
#   experiments/paper_table1.sh trainer=gpu                                  # all 72 runs, one GPU
#   experiments/paper_table1.sh dataset=mnist model=mobilenet,resnet50       # a slice
#   experiments/paper_table1.sh hydra/launcher=submitit_slurm trainer=gpu    # a SLURM cluster
#
# OUT=<dir> picks the sweep directory (default: runs/paper_table1/<date>_<time>).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$([ -x "$REPO/.venv/bin/python" ] && echo "$REPO/.venv/bin/python" || echo python3)}
OUT=${OUT:-runs/paper_table1/$(date +%Y-%m-%d_%H-%M-%S)}
"$PYTHON" -m amint_pl.run -m experiment=paper_table1 hydra.sweep.dir="$OUT" "$@"
"$PYTHON" -m amint_pl.aggregate "$OUT"
